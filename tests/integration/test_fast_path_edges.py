"""The fast path at its edges, found by the second review: pipelined floods after a
hand-over, hand-overs during a stop, answers still unsent when a connection is closed,
TCP keepalive, bytes sent while an answer is written; each against real gateways, most
compared with aiohttp's server."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from aiohttp.test_utils import TestServer
from aiohttp.web_request import BaseRequest

from gateway.pipeline import Identity
from gateway.request_log import current_request_id
from gateway.server import GatewayServer
from tests.integration import test_fast_path
from tests.integration.conftest import make_config
from tests.integration.test_fast_path import (
    POLICY,
    Pair,
    both,
    fast_path_counts,
    non_reading_client,
    one_by_one,
    read_all,
    scrape,
    split_answers,
    value_of,
)
from tests.integration.upstream_app import RELEASE

# The fixtures of test_fast_path: two gateways alike but for the fast path.
pair = test_fast_path.pair
start_fast_and_full = test_fast_path.start_fast_and_full
# On uvloop and on asyncio's loop, as test_fast_path (see there).
pytestmark = test_fast_path.pytestmark
event_loop_policy = test_fast_path.event_loop_policy


async def start(
    tmp_path: Path, name: str, upstream_url: str, fast: bool, extensions=(), **server: object
) -> tuple[GatewayServer, str, int]:
    folder = tmp_path / name
    folder.mkdir()
    gateway = GatewayServer(
        make_config(folder, upstream_url, policy=POLICY, fast_path=fast, **server), extensions
    )
    await gateway.start()
    host, port = gateway.addresses[0]
    return gateway, host, port


# --- F1: hand_over() resumes reading that aiohttp has just paused -----------------------

FLOOD = b"GET /echo/f HTTP/1.1\r\nHost: app.test\r\n\r\n"


async def accepted_before_stall(host: str, port: int, cap: int) -> int:
    """Pipeline a held request plus 40 more in one piece (more than aiohttp queues: it
    pauses reading), then keep sending pipelined requests: how many bytes the gateway
    takes before the client's sends stall (up to `cap`)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    sock.setblocking(False)
    await loop.sock_connect(sock, (host, port))
    first = b"GET /stream HTTP/1.1\r\nHost: app.test\r\n\r\n" + FLOOD * 40
    try:
        await loop.sock_sendall(sock, first)
        await asyncio.sleep(0.3)
        block = FLOOD * (65536 // len(FLOOD))
        sent = len(first)
        while sent < cap:
            try:
                await asyncio.wait_for(loop.sock_sendall(sock, block), 1.0)
            except TimeoutError:
                break
            sent += len(block)
        return sent
    finally:
        sock.close()


async def test_f1_pipelined_flood_after_hand_over_is_not_read_without_bound(
    upstream: TestServer, start_fast_and_full: Callable[..., Awaitable[Pair]]
) -> None:
    upstream.app[RELEASE].clear()
    gateways = await start_fast_and_full(str(upstream.make_url("")))
    taken = {}
    try:
        for name, address in (("full", gateways.full), ("fast", gateways.fast)):
            host, port = address.rsplit(":", 1)
            taken[name] = await accepted_before_stall(host, int(port), cap=8 << 20)
    finally:
        upstream.app[RELEASE].set()
    assert taken["full"] < 4 << 20, taken
    assert taken["fast"] < 4 << 20, taken  # it read on and on: aiohttp's pause undone


# --- F2: a request handed over during a stop escapes the drain ----------------------------


async def test_f2_a_request_handed_over_during_a_stop_is_drained_and_closed(
    upstream: TestServer, tmp_path: Path
) -> None:
    calls = 0

    async def slow(request: object, tenant: object, route: object) -> Identity:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.5)
        return Identity(principal=None)

    def install(server: GatewayServer) -> None:
        server.hooks.identify = slow

    seen = {}
    for fast in (False, True):
        gateway, host, port = await start(
            tmp_path, f"g{fast}", str(upstream.make_url("")), fast, (install,)
        )
        reader, writer = await asyncio.open_connection(host, port)
        try:
            calls = 0
            writer.write(
                b"GET /private/x HTTP/1.1\r\nHost: app.test\r\nAccept: application/json\r\n\r\n"
            )
            await writer.drain()
            await asyncio.sleep(0.1)  # being resolved
            stopping = asyncio.ensure_future(gateway.stop())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            stopped_before_answer = stopping.done()
            _, closed = await read_all(reader)
            again = b""
            if not closed:  # still open after the stop: does anything still answer?
                writer.write(b"GET /echo/after HTTP/1.1\r\nHost: app.test\r\n\r\n")
                await writer.drain()
                await asyncio.wait_for(stopping, 5)
                try:
                    again = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
                except (TimeoutError, asyncio.IncompleteReadError):
                    again = b""
            await asyncio.wait_for(stopping, 5)
            seen["fast" if fast else "full"] = (
                head[:12],
                closed,
                again[:12],
                calls,
                stopped_before_answer,
            )
        finally:
            writer.close()
    assert seen["full"] == (b"HTTP/1.1 401", True, b"", 1, False), seen
    # calls: 2 on the fast path (resolved there, then again by aiohttp), by design
    assert seen["fast"][:3] + seen["fast"][4:] == seen["full"][:3] + seen["full"][4:], seen


# --- F3: stop() aborts a connection whose answer is still being flushed -------------------


async def body_bytes_during_stop(gateway: GatewayServer, host: str, port: int, size: int) -> int:
    loop = asyncio.get_running_loop()
    sock = await non_reading_client(f"{host}:{port}")
    received = bytearray()
    try:
        await loop.sock_sendall(
            sock, b"GET /download?bytes=%d HTTP/1.1\r\nHost: app.test\r\n\r\n" % size
        )
        await asyncio.sleep(0.3)  # not read: the gateway waits in drain()
        stopping = asyncio.ensure_future(gateway.stop())
        await asyncio.sleep(0.1)
        # slow at the end: the last bytes are still buffered when it is answered
        received += await receive_all(sock, 3.0, 4096, slow_after=size - (5 << 20))
        await asyncio.wait_for(stopping, 5)
    finally:
        sock.close()
    _, _, body = bytes(received).partition(b"\r\n\r\n")
    return len(body)


async def test_f3_a_stop_lets_a_slow_reader_have_the_whole_answer(
    upstream: TestServer, tmp_path: Path
) -> None:
    size = 12_000_000  # more than the kernel's socket buffers hold (4 MB + 6 MB)
    got = {}
    for fast in (False, True):
        gateway, host, port = await start(tmp_path, f"s{fast}", str(upstream.make_url("")), fast)
        got["fast" if fast else "full"] = await body_bytes_during_stop(gateway, host, port, size)
    assert got == {"full": size, "fast": size}, got


# --- item 1: what arrives while a request is served, in pieces ----------------------------

PIECES = {
    "a whole GET, then one in two pieces": [
        b"GET /echo/1 HTTP/1.1\r\nHost: app.test\r\n\r\n",
        b"GET /echo/2 HTTP/1.1\r\nHo",
        b"st: app.test\r\n\r\n",
    ],
    "a GET, then a POST (handed over mid-replay)": [
        b"GET /echo/1 HTTP/1.1\r\nHost: app.test\r\n\r\n",
        b"POST /echo/2 HTTP/1.1\r\nHost: app.test\r\nContent-Length: 2\r\n\r\n",
        b"hi",
        b"GET /echo/3 HTTP/1.1\r\nHost: app.test\r\n\r\n",
    ],
    "a head in three pieces, then a denied GET": [
        b"GET /echo/1 HT",
        b"TP/1.1\r\nHost: app",
        b".test\r\n\r\n",
        b"GET /admin/x HTTP/1.1\r\nHost: app.test\r\n\r\n",
        b"GET /echo/4 HTTP/1.1\r\nHost: app.test\r\n\r\n",
    ],
    "over 64 KB of GETs (reading paused)": [FLOOD * 900, FLOOD * 900],
}


@pytest.mark.parametrize("name", list(PIECES))
async def test_pieces_sent_during_an_answer_are_answered_alike(
    pair: Pair, upstream: TestServer, name: str
) -> None:
    pieces = PIECES[name]

    async def run(address: str) -> tuple[list[bytes], bool]:
        upstream.app[RELEASE].clear()
        host, port = address.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(b"GET /stream HTTP/1.1\r\nHost: app.test\r\n\r\n")
            received = await asyncio.wait_for(reader.readuntil(b"first\n"), 5)
            for piece in pieces:
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0.05)
            upstream.app[RELEASE].set()
            rest, closed = await read_all(reader)
            return split_answers(received + rest), closed
        finally:
            writer.close()

    full = await run(pair.full)
    fast = await run(pair.fast)
    assert len(full[0]) == b"".join(pieces).count(b" HTTP/1.1\r\n") + 1
    assert fast == full


# --- item 5: bytes that are not UTF-8, odd spellings: the upstream reads the same ---------


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /echo/x?q=%FF&r=%C3%A9 HTTP/1.1\r\nHost: app.test\r\nX-Latin: caf\xe9\r\n"
        b"x-custom-NAME: v\r\naccept-ENCODING: gzip\r\nX-Utf: \xc3\xa9 \t\r\n"
        b"Cookie: a=1\r\nCOOKIE: b=2\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n",
        b"GET /echo/x HTTP/1.1\r\nHost: app.test\r\nX-Bad: \xff\xfe\x80\r\nX-Empty:\r\n"
        b"X-Obs: \x80 x\r\nUser-Agent: \xe9\r\n\r\n",
        b"GET /echo/%C3%A9/%c3%a9 HTTP/1.1\r\nHost: APP.test:80\r\n\r\n",
    ],
)
async def test_odd_bytes_reach_the_upstream_alike(pair: Pair, raw: bytes) -> None:
    before = (await fast_path_counts(pair))["served"]
    full, fast = await both(pair, [raw])
    assert fast.answers == full.answers
    assert (await fast_path_counts(pair))["served"] == before + 1


# --- item 4: a stop with a pipelined request waiting ---------------------------------------


async def test_a_stop_with_a_pipelined_request_waiting(
    upstream: TestServer, tmp_path: Path
) -> None:
    seen = {}
    for fast in (False, True):
        upstream.app[RELEASE].clear()
        gateway, host, port = await start(tmp_path, f"p{fast}", str(upstream.make_url("")), fast)
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(b"GET /stream HTTP/1.1\r\nHost: app.test\r\n\r\n")
            received = await asyncio.wait_for(reader.readuntil(b"first\n"), 5)
            writer.write(b"GET /echo/next HTTP/1.1\r\nHost: app.test\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.1)
            stopping = asyncio.ensure_future(gateway.stop())
            await asyncio.sleep(0.1)
            upstream.app[RELEASE].set()
            rest, closed = await read_all(reader)
            await asyncio.wait_for(stopping, 5)
            seen["fast" if fast else "full"] = (
                [a[:3] for a in split_answers(received + rest)],
                closed,
            )
        finally:
            writer.close()
    assert seen["fast"] == seen["full"], seen


# --- F3 (idle variant): stop() aborts an idle connection whose last answer is unsent -------

SMALL = b"GET /download?bytes=50000 HTTP/1.1\r\nHost: app.test\r\n\r\n"


async def send_until(
    sock: socket.socket,
    host: str,
    port: int,
    done: Callable[[int], bool],
) -> int:
    """Send SMALL one at a time (each once the one before is answered) until done(sent)."""
    sent, stalled = await one_by_one(f"{host}:{port}", sock, done, SMALL)
    assert not stalled, f"request {sent} not answered"
    return sent


async def receive_all(
    sock: socket.socket, idle: float, size: int = 65536, slow_after: int | None = None
) -> bytes:
    """Every byte until the gateway closes, resets or is silent for `idle` s; read
    slowly once `slow_after` bytes are in."""
    loop = asyncio.get_running_loop()
    received = bytearray()
    while True:
        try:
            data = await asyncio.wait_for(loop.sock_recv(sock, size), idle)
        except (TimeoutError, ConnectionResetError):
            return bytes(received)
        if not data:
            return bytes(received)
        received += data
        if slow_after is not None and len(received) > slow_after:
            await asyncio.sleep(0.001)


async def complete_answers(sock: socket.socket) -> int:
    received = await receive_all(sock, 2.0)
    return sum(1 for a in split_answers(received) if a.startswith(b"200"))


async def test_f3_idle_connection_with_an_unsent_answer_is_not_cut_by_stop(
    upstream: TestServer, tmp_path: Path
) -> None:
    result = {}
    sent_on_fast = 0
    for fast in (True, False):
        gateway, host, port = await start(tmp_path, f"i{fast}", str(upstream.make_url("")), fast)
        sock = await non_reading_client(f"{host}:{port}")
        try:
            if fast:

                def pending(sent: int, conns: set[Any] = gateway._fast.connections) -> bool:  # type: ignore[union-attr]
                    # its last answer partly unsent, and idle
                    return sent > 0 and any(
                        c.serving is None and c.transport.get_write_buffer_size() > 0 for c in conns
                    )

                sent_on_fast = await send_until(sock, host, port, pending)
            else:
                await send_until(sock, host, port, lambda sent, target=sent_on_fast: sent >= target)
            await gateway.stop()
            result["fast" if fast else "full"] = await complete_answers(sock)
        finally:
            sock.close()
    assert result == {"full": sent_on_fast, "fast": sent_on_fast}, result


async def test_f3_sweeper_does_not_cut_an_idle_connection_whose_answer_is_unsent(
    upstream: TestServer, tmp_path: Path
) -> None:
    gateway, host, port = await start(
        tmp_path, "sweep", str(upstream.make_url("")), True, keepalive_timeout=1.0
    )
    sock = await non_reading_client(f"{host}:{port}")
    try:
        conns = gateway._fast.connections  # type: ignore[union-attr]

        def pending(sent: int) -> bool:
            return sent > 0 and any(
                c.serving is None and c.transport.get_write_buffer_size() > 0 for c in conns
            )

        sent = await send_until(sock, host, port, pending)
        await asyncio.sleep(2.5)  # idle past keepalive_timeout: the sweeper closes it
        assert await complete_answers(sock) == sent
    finally:
        sock.close()
        await gateway.stop()


async def test_tcp_keepalive_is_set_as_aiohttp_sets_it(
    upstream: TestServer, tmp_path: Path
) -> None:
    seen = {}
    for fast in (False, True):
        gateway, host, port = await start(tmp_path, f"k{fast}", str(upstream.make_url("")), fast)
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(b"GET /echo/k HTTP/1.1\r\nHost: app.test\r\n\r\n")
            await reader.readuntil(b'"chunked": false}')
            client_port = writer.get_extra_info("sockname")[1]
            found = None
            if fast:
                for c in gateway._fast.connections:  # type: ignore[union-attr]
                    sock = c.transport.get_extra_info("socket")
                    if sock.getpeername()[1] == client_port:
                        found = sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
            else:
                for handler in gateway._runner.server.connections:  # type: ignore[union-attr]
                    sock = handler.transport.get_extra_info("socket")
                    if sock.getpeername()[1] == client_port:
                        found = sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
            seen["fast" if fast else "full"] = found
        finally:
            writer.close()
            await gateway.stop()
    # Both found (a lookup that found nothing would compare None with None), and alike.
    assert seen == {"full": 1, "fast": 1}, seen


# --- a request handed over is one request: timed from its start, under one id ----------


async def test_a_request_handed_over_is_timed_from_its_start_and_logged_under_one_id(
    upstream: TestServer, tmp_path: Path
) -> None:
    # Refused, so handed to aiohttp, which decides it again: the client waits for both
    # passes (2 x 0.3 s), and the one request must be recorded as that, with the id the
    # first pass logged under.
    ids: list[str | None] = []

    async def slow(request: Any, tenant: object, route: object) -> Identity:
        await asyncio.sleep(0.3)
        ids.append(current_request_id())  # what its log lines are tagged with
        return Identity(principal=None)

    def install(server: GatewayServer) -> None:
        server.hooks.identify = slow

    gateway, host, port = await start(tmp_path, "g", str(upstream.make_url("")), True, (install,))
    try:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(
            b"GET /private/x HTTP/1.1\r\nHost: app.test\r\nAccept: application/json\r\n\r\n"
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        body = await asyncio.wait_for(reader.readexactly(length), 5)
        writer.close()
        assert head.startswith(b"HTTP/1.1 401")
        text = await scrape(f"{host}:{port}")
        name = 'authgate_request_duration_seconds_sum{route="app.test/",tenant="acme"}'
        assert value_of(text, name) >= 0.55, text
        assert len(ids) == 2 and ids[0] == ids[1] and ids[0] is not None, ids
        assert ids[0].encode() in body  # the id the answer gives is that one too
    finally:
        await gateway.stop()


async def test_a_request_whose_client_has_gone_is_looked_up_without_error(
    upstream: TestServer, tmp_path: Path
) -> None:
    # aiohttp's request has no transport once its client has gone; with requests begun
    # on the fast path pending, looking it up must not fail (a weak map cannot hold None).
    gateway, _, _ = await start(tmp_path, "g", str(upstream.make_url("")), True)
    try:
        pipeline = gateway.pipeline
        assert pipeline is not None
        connection = asyncio.Event()  # stands for a transport: a weak map can hold it
        pipeline.begun[connection] = (1.0, "rid")
        gone = cast(BaseRequest, SimpleNamespace(transport=None))
        assert pipeline._begun_on_fast_path(gone) is None
        here = cast(BaseRequest, SimpleNamespace(transport=connection))
        assert pipeline._begun_on_fast_path(here) == (1.0, "rid")
        assert not pipeline.begun  # taken once
    finally:
        await gateway.stop()
