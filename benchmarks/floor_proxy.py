"""The Python floor: the least CPU any Python reverse proxy on uvloop spends per request.

`python -m benchmarks.floor_proxy --port P --upstream http://127.0.0.1:U --workers N`

Not a proxy anyone should run: it is the yardstick that says what no Python gateway
can beat on this machine. Per worker, on uvloop: one `asyncio.Protocol` per client
connection, llhttp (`httptools`, C) finding where each request ends, the request's
bytes relayed unchanged to a pooled keep-alive upstream connection, llhttp finding where
the answer ends, and its bytes relayed unchanged back. No header is read, rewritten,
added or dropped; no request object, no routing, no policy, no logging. Anything a real
gateway does (authgate or the minimal aiohttp proxy) costs CPU on top of this, so when
this floor reaches some fraction of nginx's req/s, no Python proxy reaches more.

It handles what wrk sends (one request at a time per connection, bodiless or sized
bodies); anything else closes the connection.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections import deque
from typing import cast

import httptools

from benchmarks._harness import install_uvloop, reuseport_socket, run_forked_workers


class _Upstream(asyncio.Protocol):
    """One kept-alive connection to the upstream; relays one answer at a time."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.client: _Client | None = None
        self.chunks: list[bytes] = []
        self.done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def send(self, client: _Client, request: bytes) -> None:
        assert self.transport is not None
        self.client = client
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail()
            return
        if self.done:
            self.done = False
            client, self.client = self.client, None
            answer = b"".join(self.chunks)
            self.chunks.clear()
            self.pool.idle.append(self)
            if client is not None:
                client.answer(answer)

    def on_message_complete(self) -> None:
        self.done = True

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail()

    def _fail(self) -> None:
        if self in self.pool.idle:
            self.pool.idle.remove(self)
        client, self.client = self.client, None
        if client is not None:
            client.close()
        if self.transport is not None:
            self.transport.close()


class _Pool:
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.idle: deque[_Upstream] = deque()
        self.connecting: set[asyncio.Task[None]] = set()

    def send(self, client: _Client, request: bytes) -> None:
        if self.idle:
            self.idle.pop().send(client, request)
        else:
            task = asyncio.ensure_future(self._connect_and_send(client, request))
            self.connecting.add(task)
            task.add_done_callback(self.connecting.discard)

    async def _connect_and_send(self, client: _Client, request: bytes) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await loop.create_connection(
                lambda: _Upstream(self), self.host, self.port
            )
        except OSError:
            client.close()
            return
        upstream.send(client, request)


class _Client(asyncio.Protocol):
    """One client connection: relays each complete request to the pool."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.chunks: list[bytes] = []
        self.complete = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.close()
            return
        if self.complete:
            self.complete = False
            request = b"".join(self.chunks)
            self.chunks.clear()
            assert self.transport is not None
            self.transport.pause_reading()  # one request in flight per connection
            self.pool.send(self, request)

    def on_message_complete(self) -> None:
        self.complete = True

    def answer(self, response: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(response)
        self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def _serve(port: int, upstream: str) -> None:
    host, _, upstream_port = upstream.removeprefix("http://").rstrip("/").partition(":")
    pool = _Pool(host, int(upstream_port or 80))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    server = await loop.create_server(lambda: _Client(pool), sock=reuseport_socket(port))
    try:
        await stop.wait()
    finally:
        server.close()


def _worker(port: int, upstream: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    install_uvloop()
    asyncio.run(_serve(port, upstream))


def main() -> None:
    parser = argparse.ArgumentParser(description="The Python floor of a reverse proxy.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="http://host:port")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    run_forked_workers(_worker, (args.port, args.upstream), args.workers)


if __name__ == "__main__":
    main()
