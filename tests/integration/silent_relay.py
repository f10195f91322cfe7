"""A TCP relay to one server that can go silent: a network partition or a dead NAT
entry, which drops bytes without closing anything (no FIN, no RST)."""

from __future__ import annotations

import asyncio
import contextlib


class SilentRelay:
    """Relays 127.0.0.1:`port` to `target`. `silence()` makes every connection open at
    that moment swallow what it carries, both ways, and stay open; connections opened
    afterwards pass as before."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._open: list[dict[str, bool]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    def silence(self) -> None:
        for state in self._open:
            state["silent"] = True

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(*self._target)
        self.connections += 1
        state = {"silent": False}
        self._open.append(state)
        for reader, writer in ((client_r, server_w), (server_r, client_w)):
            task = asyncio.create_task(self._pump(reader, writer, state))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pump(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: dict[str, bool]
    ) -> None:
        try:
            while data := await reader.read(65536):
                if not state["silent"]:
                    writer.write(data)
                    await writer.drain()
        finally:
            writer.close()
