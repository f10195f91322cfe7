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

import asyncio
import signal
from collections import deque
from typing import cast

import httptools

from benchmarks._harness import proxy_main, reuseport_socket


class _Messages(asyncio.Protocol):
    """A connection that collects the raw bytes of each whole message llhttp finds."""

    def __init__(self, parser: httptools.HttpRequestParser | httptools.HttpResponseParser):
        self.transport: asyncio.Transport | None = None
        self.parser = parser
        self.chunks: list[bytes] = []
        self.complete = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def on_message_complete(self) -> None:
        self.complete = True

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.broken()
            return
        if self.complete:
            self.complete = False
            message = b"".join(self.chunks)
            self.chunks.clear()
            self.whole(message)

    def whole(self, message: bytes) -> None:
        raise NotImplementedError

    def broken(self) -> None:
        raise NotImplementedError


class _Upstream(_Messages):
    """One kept-alive connection to the upstream; relays one answer at a time."""

    def __init__(self, pool: _Pool) -> None:
        super().__init__(httptools.HttpResponseParser(self))
        self.pool = pool
        self.client: _Client | None = None

    def send(self, client: _Client, request: bytes) -> None:
        assert self.transport is not None
        self.client = client
        self.transport.write(request)

    def whole(self, message: bytes) -> None:
        client, self.client = self.client, None
        self.pool.idle.append(self)
        if client is not None:
            client.answer(message)

    def broken(self) -> None:
        self._fail()

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


class _Client(_Messages):
    """One client connection: relays each complete request to the pool."""

    def __init__(self, pool: _Pool) -> None:
        super().__init__(httptools.HttpRequestParser(self))
        self.pool = pool

    def whole(self, message: bytes) -> None:
        assert self.transport is not None
        self.transport.pause_reading()  # one request in flight per connection
        self.pool.send(self, message)

    def broken(self) -> None:
        self.close()

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


def main() -> None:
    proxy_main("The Python floor of a reverse proxy.", _serve)


if __name__ == "__main__":
    main()
