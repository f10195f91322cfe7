"""The Python floor relays each request and its own answer, over kept-alive connections.

Real sockets: an aiohttp upstream, the floor proxy's protocol on the running loop, and
raw HTTP/1.1 from a client that keeps its connection open between requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from benchmarks._harness import LOOPBACK, free_port, reuseport_socket
from benchmarks.floor_proxy import _Client, _Pool


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[int, set[tuple[str, int]]]]:
    peers: set[tuple[str, int]] = set()

    async def echo(request: web.Request) -> web.Response:
        assert request.transport is not None
        peers.add(request.transport.get_extra_info("peername"))
        body = await request.read()
        return web.Response(text=f"{request.method} {request.path_qs} {len(body)}")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, LOOPBACK, port).start()
    yield port, peers
    await runner.cleanup()


async def exchange(writer: asyncio.StreamWriter, reader: asyncio.StreamReader, raw: bytes) -> str:
    writer.write(raw)
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return (await reader.readexactly(length)).decode()


async def test_each_request_gets_its_own_answer_over_one_upstream_connection(
    upstream: tuple[int, set[tuple[str, int]]],
) -> None:
    upstream_port, peers = upstream
    loop = asyncio.get_running_loop()
    pool = _Pool(LOOPBACK, upstream_port)
    port = free_port()
    server = await loop.create_server(lambda: _Client(pool), sock=reuseport_socket(port))
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        host = f"Host: {LOOPBACK}\r\n"
        first = await exchange(writer, reader, f"GET /a?x=1 HTTP/1.1\r\n{host}\r\n".encode())
        posted = await exchange(
            writer,
            reader,
            f"POST /b HTTP/1.1\r\n{host}Content-Length: 5\r\n\r\nhello".encode(),
        )
        third = await exchange(writer, reader, f"GET /c HTTP/1.1\r\n{host}\r\n".encode())
    finally:
        writer.close()
        server.close()
        for kept in pool.idle:
            assert kept.transport is not None
            kept.transport.close()
    assert (first, posted, third) == ("GET /a?x=1 0", "POST /b 5", "GET /c 0")
    assert len(peers) == 1  # the upstream connection was kept alive and reused
