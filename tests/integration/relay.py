"""A TCP relay to one server, on an event loop of its own in a thread (a stall of the
test's loop does not stall the network): it can add a round-trip delay to every reply,
it can go silent like a network partition or a dead NAT entry, dropping bytes
without closing anything (no FIN, no RST), and it can cut a connection just as a reply
comes back (the server did the work; the client never hears of it)."""

from __future__ import annotations

import asyncio
import contextlib
import threading


class Relay:
    """Relays 127.0.0.1:`port` to `target`, replies `delay` seconds late. `silence()`
    makes every connection open at that moment swallow what it carries, both ways, and
    stay open; connections opened afterwards pass as before."""

    def __init__(self, target: tuple[str, int], *, delay: float = 0.0) -> None:
        self._target, self._delay = target, delay
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._tasks: set[asyncio.Task[None]] = set()
        self._open: list[dict[str, bool]] = []
        self.port = 0
        self.connections = 0
        self._cut_next: bytes | None = None

    def start(self) -> int:
        self._thread.start()
        if not self._ready.wait(5):
            raise RuntimeError("the relay did not start")
        return self.port

    def set_delay(self, delay: float) -> None:
        """Replies from now on come `delay` seconds late (open connections too)."""
        self._delay = delay

    def silence(self) -> None:
        def silence_all() -> None:
            for state in self._open:
                state["silent"] = True

        done = threading.Event()
        self._loop.call_soon_threadsafe(lambda: (silence_all(), done.set()))
        done.wait(5)

    def cut_at_next_reply(self, starting_with: bytes = b"") -> None:
        """The next reply from the server (on any connection) that starts with
        `starting_with` is dropped and its connection closed both ways: the server did
        the work, the client never hears of it."""

        def arm() -> None:
            self._cut_next = starting_with

        done = threading.Event()
        self._loop.call_soon_threadsafe(lambda: (arm(), done.set()))
        done.wait(5)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._accept, "127.0.0.1", 0))
        self.port = int(server.sockets[0].getsockname()[1])
        self._ready.set()
        self._loop.run_forever()
        server.close()
        for task in list(self._tasks):
            task.cancel()
        self._loop.run_until_complete(
            asyncio.gather(*self._tasks, server.wait_closed(), return_exceptions=True)
        )
        self._loop.close()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(*self._target)
        self.connections += 1
        state = {"silent": False}
        self._open.append(state)
        for task in (
            asyncio.ensure_future(self._pump(client_r, server_w, state, 0.0)),
            asyncio.ensure_future(self._pump(server_r, client_w, state, None, also_close=server_w)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        state: dict[str, bool],
        delay: float | None,
        also_close: asyncio.StreamWriter | None = None,
    ) -> None:
        """Carry bytes one way; `also_close` (given for replies) is the other way's
        writer, closed too when a reply is cut. `delay` None: the relay's, as it is now."""
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if state["silent"]:
                    continue
                cut = self._cut_next
                if also_close is not None and cut is not None and data.startswith(cut):
                    self._cut_next = None
                    also_close.close()
                    break
                wait = self._delay if delay is None else delay
                if wait:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
        writer.close()
