"""The fast path (`server.fast_path`) against aiohttp's server: the same bytes in, the
same bytes out.

Two gateways on one config, one with the fast path, in front of the same upstreams. Each
case is a run of raw bytes a client might send (well formed, malformed, smuggling
attempts, pipelined, cut in pieces); both gateways get it on a fresh connection, and
what comes back must be equal but for the Date header and request ids. Then seeded
random requests, built from the pieces the cases use, do the same. The fast path's own
counter shows it served the plain requests itself (so the comparison is not between
aiohttp and aiohttp), and its other behaviours are tested through a real socket:
upstream errors, streamed answers, back-pressure, idle and slow clients, shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import re
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httptools
import pytest
import uvloop
from aiohttp.test_utils import TestServer

from gateway.config.model import RouteConfig, TenantConfig
from gateway.errors import StoreUnavailable
from gateway.fast_path import LENIENT_HEADS
from gateway.pipeline import Identify, Identity
from gateway.request_view import RequestView
from gateway.server import GatewayServer
from tests.integration.conftest import make_config, user_from_cookie
from tests.integration.upstream_app import RELEASE

# Production runs on uvloop (gateway/runtime's policy), the other tests on asyncio's
# loop: this file runs on both, transports differing as they do (pause, abort,
# set_protocol). (pytest-asyncio calls overriding this fixture deprecated, in favour of
# a loop-factory hook that would apply to every test; until that can be scoped to a
# module, this is the narrow way.)
pytestmark = pytest.mark.filterwarnings('ignore:Overriding the "event_loop_policy" fixture')


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    if request.param == "uvloop":
        return uvloop.EventLoopPolicy()
    return asyncio.DefaultEventLoopPolicy()


POLICY = """
version: 1
default: deny
rules:
  - name: admin area
    paths: ["/admin/**"]
    action: deny
  - name: signed in only
    paths: ["/private/**"]
    action: one_factor
  - name: everything else
    action: bypass
"""

# How long to listen for more: fewer answers than requests sent, silence this long means
# the gateway has said all it will (generous, for a slow CI machine); as many answers as
# requests, a close is waited for this much longer.
IDLE = 1.0
GRACE = 0.2
REQUEST_ID = re.compile(rb"\b[0-9a-f]{24}\b")


@dataclass
class Pair:
    """The addresses of two gateways alike but for the fast path."""

    full: str
    fast: str


@contextlib.asynccontextmanager
async def started_pair(
    tmp_path: Path, upstream: TestServer, identify: Identify | None = None, **config: Any
) -> AsyncIterator[Pair]:
    """Two gateways on one config (`make_config`'s options) but for the fast path, with
    `identify` as their session layer when given."""
    servers: list[GatewayServer] = []
    url = str(upstream.make_url(""))
    addresses = []
    try:
        for name, fast_path in (("full", False), ("fast", True)):
            (tmp_path / name).mkdir()
            server = GatewayServer(
                make_config(tmp_path / name, url, policy=POLICY, fast_path=fast_path, **config)
            )
            if identify is not None:
                server.hooks.identify = identify
            await server.start()
            servers.append(server)
            host, port = server.addresses[0]
            addresses.append(f"{host}:{port}")
        yield Pair(*addresses)
    finally:
        for server in servers:
            await server.stop()


@pytest.fixture
async def pair(tmp_path: Path, upstream: TestServer) -> AsyncIterator[Pair]:
    async with started_pair(tmp_path, upstream) as started:
        yield started


@dataclass
class Heard:
    """What came back on one connection, normalised, plus whether it was closed."""

    answers: list[bytes] = field(default_factory=list)
    closed: bool = False


WAIT = b""  # in a list of pieces: wait for the answer so far before sending on


async def send(address: str, pieces: list[bytes], pause: float = 0.0) -> Heard:
    """Send `pieces` (with `pause` between them; at WAIT, once the answers to what was
    sent so far are in) on a fresh connection; collect every byte until the gateway
    closes or has answered everything (or falls silent); split into answers."""
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    heard = Heard()
    received = b""
    requests = 0
    try:
        for piece in pieces:
            if piece is WAIT:
                received, heard.closed = await read_all(reader, received, requests)
                if heard.closed:
                    break
                continue
            requests += piece.count(b" HTTP/")
            writer.write(piece)
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)
        if not heard.closed:
            received, heard.closed = await read_all(reader, received, requests)
    finally:
        writer.close()
    heard.answers = split_answers(received)
    return heard


async def read_all(
    reader: asyncio.StreamReader, received: bytes = b"", answers: int | None = None
) -> tuple[bytes, bool]:
    """`received` and every byte after it until the connection closes (True), or until
    it holds `answers` whole answers and no close follows within GRACE, or it falls
    silent for IDLE (False)."""
    buffer = bytearray(received)
    while True:
        complete = answers is not None and answers > 0 and whole_answers(buffer) >= answers
        try:
            data = await asyncio.wait_for(reader.read(65536), GRACE if complete else IDLE)
        except TimeoutError:
            return bytes(buffer), False
        if not data:
            return bytes(buffer), True
        buffer += data


def whole_answers(data: bytes | bytearray) -> int:
    """How many whole answers `data` holds (answers to HEAD are not told apart)."""
    count = 0

    class Counter:
        def on_message_complete(self) -> None:
            nonlocal count
            count += 1

    with contextlib.suppress(httptools.HttpParserError, httptools.HttpParserUpgrade):
        httptools.HttpResponseParser(Counter()).feed_data(bytes(data))
    return count


def split_answers(data: bytes) -> list[bytes]:
    """The answers in `data`, each with Date dropped and request ids blanked; what does
    not parse is kept as it is."""
    answers: list[bytes] = []

    class Collector:
        def __init__(self) -> None:
            self.lines: list[bytes] = []
            self.body = b""

        def on_status(self, status: bytes) -> None:
            self.lines.append(b"status " + status)

        def on_header(self, name: bytes, value: bytes) -> None:
            if name.lower() != b"date":
                self.lines.append(name + b": " + value)

        def on_body(self, body: bytes) -> None:
            self.body += body

        def on_message_complete(self) -> None:
            code = parser.get_status_code()
            head = b"%d\n" % code + b"\n".join(self.lines)
            answers.append(REQUEST_ID.sub(b"<id>", head + b"\n\n" + self.body))
            self.lines, self.body = [], b""

    collector = Collector()
    parser = httptools.HttpResponseParser(collector)
    try:
        parser.feed_data(data)
    except httptools.HttpParserUpgrade as upgrade:  # 101: the rest is the new protocol's
        answers.append(b"upgraded: " + data[upgrade.args[0] :])
    except httptools.HttpParserError:
        answers.append(b"unparsable: " + REQUEST_ID.sub(b"<id>", data))
    return answers


async def both(pair: Pair, pieces: list[bytes], pause: float = 0.0) -> tuple[Heard, Heard]:
    return await asyncio.gather(send(pair.full, pieces, pause), send(pair.fast, pieces, pause))


async def scrape(address: str) -> str:
    """The gateway's metrics, as Prometheus text."""
    async with (
        aiohttp.ClientSession() as client,
        client.get(f"http://{address}/.authgate/metrics") as resp,
    ):
        return await resp.text()


def value_of(text: str, name: str) -> float:
    """A sample's value in Prometheus text (name with its labels); 0 when absent."""
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


async def metric(address: str, name: str) -> float:
    return value_of(await scrape(address), name)


async def fast_path_counts(pair: Pair) -> dict[str, float]:
    """`authgate_fast_path_requests_total` of the fast gateway, by outcome (one scrape)."""
    text = await scrape(pair.fast)
    return {
        outcome: value_of(text, f'authgate_fast_path_requests_total{{outcome="{outcome}"}}')
        for outcome in ("served", "handed_over")
    }


GET = b"GET /echo/a HTTP/1.1\r\nHost: app.test\r\n\r\n"

# (name, what is sent, whether the fast path should answer at least one request itself:
# forward it, or refuse it with the pipeline's 400 page)
CASES: list[tuple[str, list[bytes], bool]] = [
    ("plain", [GET], True),
    (
        "query and escapes",
        [b"GET /echo/caf%C3%A9?q=%2F&x=1 HTTP/1.1\r\nHost: app.test\r\n\r\n"],
        True,
    ),
    ("two on one connection, one after the other", [GET, WAIT, GET], True),
    ("dot segments", [b"GET /x/%2e%2e/echo/b HTTP/1.1\r\nHost: app.test\r\n\r\n"], True),
    ("double slashes", [b"GET //echo//b HTTP/1.1\r\nHost: app.test\r\n\r\n"], True),
    (
        "dot-dot into the denied area",
        [b"GET /echo/../admin/x HTTP/1.1\r\nHost: app.test\r\n\r\n"],
        False,
    ),
    ("encoded slash", [b"GET /echo%2f..%2fadmin HTTP/1.1\r\nHost: app.test\r\n\r\n"], True),
    ("path parameter", [b"GET /admin;x/y HTTP/1.1\r\nHost: app.test\r\n\r\n"], True),
    ("denied", [b"GET /admin/users HTTP/1.1\r\nHost: app.test\r\n\r\n"], False),
    (
        "needs a sign-in",
        [b"GET /private/x HTTP/1.1\r\nHost: app.test\r\nAccept: text/html\r\n\r\n"],
        False,
    ),
    ("unknown host", [b"GET /echo HTTP/1.1\r\nHost: other.test\r\n\r\n"], False),
    ("host with a port and upper case", [b"GET /echo HTTP/1.1\r\nHost: APP.test:80\r\n\r\n"], True),
    ("reserved prefix", [b"GET /.authgate/health HTTP/1.1\r\nHost: app.test\r\n\r\n"], False),
    (
        "reserved prefix, escaped",
        [b"GET /%2Eauthgate/health HTTP/1.1\r\nHost: app.test\r\n\r\n"],
        False,
    ),
    ("no Host", [b"GET /echo HTTP/1.1\r\n\r\n"], False),
    ("two Hosts", [b"GET /echo HTTP/1.1\r\nHost: app.test\r\nHost: evil.test\r\n\r\n"], False),
    (
        "two User-Agents",
        [(b"GET /echo HTTP/1.1\r\nHost: app.test\r\nUser-Agent: a\r\nUser-Agent: b\r\n\r\n")],
        False,
    ),
    (
        "repeated headers keep their order",
        [
            (
                b"GET /echo HTTP/1.1\r\n"
                b"Host: app.test\r\n"
                b"X-M: 1\r\n"
                b"x-m: 2\r\n"
                b"Cookie: a=1\r\n"
                b"Cookie: b=2\r\n"
                b"\r\n"
            )
        ],
        True,
    ),
    (
        "forged identity and forwarding headers",
        [
            (
                b"GET /echo HTTP/1.1\r\n"
                b"Host: app.test\r\n"
                b"Remote-User: admin\r\n"
                b"X-Forwarded-For: 6.6.6.6\r\n"
                b"X-Forwarded-Host: evil\r\n"
                b"Forwarded: for=1.2.3.4\r\n"
                b"X-Request-Id: mine\r\n"
                b"Remote_User: admin\r\n"
                b"\r\n"
            )
        ],
        True,
    ),
    (
        "hop-by-hop named by Connection",
        [
            (
                b"GET /echo HTTP/1.1\r\n"
                b"Host: app.test\r\n"
                b"Connection: keep-alive, X-Secret\r\n"
                b"X-Secret: 1\r\n"
                b"Keep-Alive: 5\r\n"
                b"TE: trailers\r\n"
                b"\r\n"
            )
        ],
        True,
    ),
    (
        "blanks around values",
        [b"GET /echo HTTP/1.1\r\nHost: app.test\r\nX-A:   padded  \t \r\nX-B:\r\n\r\n"],
        True,
    ),
    (
        "bytes that are not ASCII",
        [b"GET /echo HTTP/1.1\r\nHost: app.test\r\nX-Name: caf\xc3\xa9 \xff\xfe\r\n\r\n"],
        True,
    ),
    (
        "Connection: close",
        [b"GET /echo HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"],
        False,
    ),
    ("HTTP/1.0", [b"GET /echo HTTP/1.0\r\nHost: app.test\r\n\r\n"], False),
    (
        "HTTP/1.0 kept alive",
        [b"GET /echo HTTP/1.0\r\nHost: app.test\r\nConnection: keep-alive\r\n\r\n"],
        False,
    ),
    ("HEAD", [b"HEAD /echo HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"], False),
    (
        "POST with a body",
        [b"POST /echo HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\n\r\nhello"],
        False,
    ),
    (
        "POST, chunked",
        [
            (
                b"POST /echo HTTP/1.1\r\n"
                b"Host: app.test\r\n"
                b"Transfer-Encoding: chunked\r\n"
                b"\r\n"
                b"5\r\n"
                b"hello\r\n"
                b"0\r\n"
                b"\r\n"
            )
        ],
        False,
    ),
    (
        "GET with Content-Length: 0",
        [b"GET /echo HTTP/1.1\r\nHost: app.test\r\nContent-Length: 0\r\n\r\n"],
        False,
    ),
    (
        "GET with a body that is a request",
        [
            (
                b"GET /echo HTTP/1.1\r\n"
                b"Host: app.test\r\n"
                b"Content-Length: 44\r\n"
                b"\r\n"
                b"GET /admin/x HTTP/1.1\r\n"
                b"Host: app.test\r\n"
                b"\r\n"
            )
        ],
        False,
    ),
    (
        "CL and TE together",
        [
            (
                b"GET /echo HTTP/1.1\r\n"
                b"Host: app.test\r\n"
                b"Content-Length: 4\r\n"
                b"Transfer-Encoding: chunked\r\n"
                b"\r\n"
                b"0\r\n"
                b"\r\n"
                b"GET /admin/x HTTP/1.1\r\n"
                b"Host: app.test\r\n"
                b"\r\n"
            )
        ],
        False,
    ),
    (
        "TE with a twist",
        [b"GET /echo HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: xchunked\r\n\r\n"],
        False,
    ),
    (
        "TE with a blank before the colon",
        [(b"GET /echo HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n")],
        False,
    ),
    (
        "two Content-Lengths",
        [
            (
                b"GET /echo HTTP/1.1\r\n"
                b"Host: app.test\r\n"
                b"Content-Length: 0\r\n"
                b"Content-Length: 5\r\n"
                b"\r\n"
                b"hello"
            )
        ],
        False,
    ),
    (
        "pipelined, in one write",
        [GET + b"GET /admin/x HTTP/1.1\r\nHost: app.test\r\n\r\n" + GET],
        False,
    ),
    ("pipelined, the second cut short", [GET + b"GET /echo/b HTTP/1.1\r\nHost: app"], False),
    ("a request a byte at a time", [bytes([b]) for b in GET], True),
    ("a head in two pieces", [GET[:20], GET[20:]], True),
    (
        "folded header line",
        [b"GET /echo HTTP/1.1\r\nHost: app.test\r\nX-A: one\r\n two\r\n\r\n"],
        False,
    ),
    ("bare LF line ends", [b"GET /echo HTTP/1.1\nHost: app.test\n\n"], False),
    ("CR without LF", [b"GET /echo HTTP/1.1\rHost: app.test\r\n\r\n"], False),
    ("NUL in a value", [b"GET /echo HTTP/1.1\r\nHost: app.test\r\nX-A: a\x00b\r\n\r\n"], False),
    (
        "control character in a value",
        [b"GET /echo HTTP/1.1\r\nHost: app.test\r\nX-A: a\x07b\r\n\r\n"],
        False,
    ),
    ("space in the target", [b"GET /echo x HTTP/1.1\r\nHost: app.test\r\n\r\n"], False),
    ("fragment in the target", [b"GET /echo#frag HTTP/1.1\r\nHost: app.test\r\n\r\n"], True),
    (
        "absolute-form target",
        [b"GET http://app.test/echo HTTP/1.1\r\nHost: app.test\r\n\r\n"],
        False,
    ),
    ("asterisk target", [b"OPTIONS * HTTP/1.1\r\nHost: app.test\r\n\r\n"], False),
    ("lower-case method", [b"get /echo HTTP/1.1\r\nHost: app.test\r\n\r\n"], False),
    ("unknown method", [b"BREW /echo HTTP/1.1\r\nHost: app.test\r\n\r\n"], False),
    ("HTTP/2 preface", [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"], False),
    ("version 1.2", [b"GET /echo HTTP/1.2\r\nHost: app.test\r\n\r\n"], False),
    (
        "upgrade to WebSocket",
        [
            (
                b"GET /ws HTTP/1.1\r\n"
                b"Host: app.test\r\n"
                b"Connection: Upgrade\r\n"
                b"Upgrade: websocket\r\n"
                b"Sec-WebSocket-Version: 13\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"\r\n"
            )
        ],
        False,
    ),
    (
        "upgrade to h2c",
        [
            (
                b"GET /echo HTTP/1.1\r\n"
                b"Host: app.test\r\n"
                b"Connection: Upgrade, HTTP2-Settings\r\n"
                b"Upgrade: h2c\r\n"
                b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n"
                b"\r\n"
            )
        ],
        False,
    ),
    (
        "Expect on a GET",
        [b"GET /echo HTTP/1.1\r\nHost: app.test\r\nExpect: 100-continue\r\n\r\n"],
        False,
    ),
    ("empty lines before the request", [b"\r\n\r\n" + GET], True),
    ("a long target", [b"GET /echo/" + b"a" * 8170 + b" HTTP/1.1\r\nHost: app.test\r\n\r\n"], True),
    (
        "a target over the limit",
        [b"GET /echo/" + b"a" * 8200 + b" HTTP/1.1\r\nHost: app.test\r\n\r\n"],
        False,
    ),
    (
        "a field at the limit",
        [b"GET /echo HTTP/1.1\r\nHost: app.test\r\nX-Big: " + b"b" * 8180 + b"\r\n\r\n"],
        True,
    ),
    (
        "a field over the limit",
        [b"GET /echo HTTP/1.1\r\nHost: app.test\r\nX-Big: " + b"b" * 8190 + b"\r\n\r\n"],
        False,
    ),
    (
        # aiohttp counts a name with the previous field's name: refused (400), so the
        # fast path must not forward it (found by a differential fuzzer)
        "a long name after Host",
        [b"GET /echo HTTP/1.1\r\nHost: app.test\r\nX-" + b"n" * 8185 + b": v\r\n\r\n"],
        False,
    ),
    (
        "two long names, together over the limit",
        [
            b"GET /echo HTTP/1.1\r\nHost: app.test\r\nP"
            + b"p" * 3999
            + b": 1\r\nN"
            + b"n" * 4190
            + b": 2\r\n\r\n"
        ],
        False,
    ),
    (
        "two long names, together at the limit",
        [
            b"GET /echo HTTP/1.1\r\nHost: app.test\r\nP"
            + b"p" * 3999
            + b": 1\r\nN"
            + b"n" * 4189
            + b": 2\r\n\r\n"
        ],
        True,
    ),
    (
        "a hundred fields",
        [
            b"GET /echo HTTP/1.1\r\nHost: app.test\r\n"
            + b"".join(b"X-%d: v\r\n" % i for i in range(99))
            + b"\r\n"
        ],
        True,
    ),
    (
        "a hundred and one fields",
        [
            b"GET /echo HTTP/1.1\r\nHost: app.test\r\n"
            + b"".join(b"X-%d: v\r\n" % i for i in range(100))
            + b"\r\n"
        ],
        False,
    ),
    (
        "many fields",
        [
            b"GET /echo HTTP/1.1\r\nHost: app.test\r\n"
            + b"".join(b"X-%d: v\r\n" % i for i in range(130))
            + b"\r\n"
        ],
        False,
    ),
    (
        "an old WebSocket handshake, its body undeclared",
        [
            (
                b"GET /echo HTTP/1.1\r\n"
                b"Host: app.test\r\n"
                b"Sec-WebSocket-Key1: 4 @1  46546xW%0l 1 5\r\n"
                b"\r\n"
            )
        ],
        False,
    ),
    (
        "names in lower case",
        [
            (
                b"GET /echo HTTP/1.1\r\n"
                b"host: app.test\r\n"
                b"accept: */*\r\n"
                b"user-agent: u\r\n"
                b"x-own: 1\r\n"
                b"\r\n"
            )
        ],
        True,
    ),
    ("not HTTP at all", [b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"], False),
    (
        "forward-auth from a peer that is not a trusted proxy",
        [
            b"GET /.authgate/verify HTTP/1.1\r\nHost: app.test\r\n"
            b"X-Original-URL: https://app.test/echo/a\r\n\r\n"
        ],
        True,
    ),
]


async def answered_alike(
    pair: Pair, sent: list[bytes]
) -> tuple[dict[str, float], Heard, dict[str, float]]:
    """`sent` to both gateways, whose answers (and whether they closed) must be equal:
    the fast one's counts before, what the full one answered, the counts after."""
    before = await fast_path_counts(pair)
    full, fast = await both(pair, sent)
    assert fast.answers == full.answers
    assert fast.closed == full.closed
    return before, full, await fast_path_counts(pair)


@pytest.mark.parametrize(
    ("sent", "served_fast"), [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES]
)
async def test_every_case_is_answered_alike_on_both_paths(
    pair: Pair, sent: list[bytes], served_fast: bool
) -> None:
    before, full, after = await answered_alike(pair, sent)
    # The metrics request itself is handed over: it is on a reserved path.
    served = after["served"] - before["served"]
    assert (served > 0) == served_fast
    # The same bytes twice more, from the same peer: decided again and kept, then reused
    # (gateway/reuse.py), and the answers must still be the full server's.
    for _ in range(2):
        again = await send(pair.fast, sent)
        assert (again.answers, again.closed) == (full.answers, full.closed)
    if not served_fast:  # (that it is reused where it can be: the generated requests)
        assert await metric(pair.fast, "authgate_fast_path_reused_decisions_total") == 0


async def test_the_previous_name_is_counted_within_one_request_only(pair: Pair) -> None:
    # A request ending with a long name, then one beginning with a long name, on one
    # connection: together over the limit, yet each alone is plain, and both are served
    # (aiohttp forgets the last name at the end of a message too).
    first = b"GET /echo/a HTTP/1.1\r\nHost: app.test\r\nX-" + b"n" * 5000 + b": v\r\n\r\n"
    second = b"GET /echo/b HTTP/1.1\r\nY-" + b"n" * 4000 + b": v\r\nHost: app.test\r\n\r\n"
    before, full, after = await answered_alike(pair, [first, WAIT, second])
    assert len(full.answers) == 2
    assert after["served"] - before["served"] == 2
    assert after["handed_over"] - before["handed_over"] == 1  # (the scrape itself)


async def user_or_a_bad_name(
    request: RequestView, tenant: TenantConfig, route: RouteConfig | None
) -> Identity:
    """`user_from_cookie`, and the user `ctl` has a name no header can carry."""
    identity = await user_from_cookie(request, tenant, route)
    if identity.principal is not None and identity.principal.user == "ctl":
        assert identity.upstream_headers is not None
        identity.upstream_headers["Remote-Name"] = "Ana\x1b"
    return identity


@pytest.fixture
async def trusted_pair(tmp_path: Path, upstream: TestServer) -> AsyncIterator[Pair]:
    """As `pair`, behind a trusted proxy (forward-auth), with a session layer that
    signs in by a cookie."""
    trusted = ("127.0.0.0/8",)
    async with started_pair(
        tmp_path, upstream, user_or_a_bad_name, trusted_proxies=trusted
    ) as started:
        yield started


VERIFY = b"GET /.authgate/verify HTTP/1.1\r\nHost: authgate.internal\r\n"
# (name, what is sent): every one answered by the fast path itself
FORWARD_AUTH_CASES: list[tuple[str, list[bytes]]] = [
    ("nginx, a public page", [VERIFY + b"X-Original-URL: https://app.test/echo/a\r\n\r\n"]),
    (
        "nginx, signed in",
        [
            VERIFY + b"X-Original-URL: https://app.test/private/x?q=1\r\n"
            b"X-Original-Method: POST\r\nCookie: a=b; test_user=alice\r\n\r\n"
        ],
    ),
    ("nginx, not signed in", [VERIFY + b"X-Original-URL: https://app.test/private/x\r\n\r\n"]),
    ("nginx, denied", [VERIFY + b"X-Original-URL: https://app.test/admin/x\r\n\r\n"]),
    ("nginx, unknown host", [VERIFY + b"X-Original-URL: https://other.test/echo\r\n\r\n"]),
    (
        "nginx, a path that leaves its segment",
        [VERIFY + b"X-Original-URL: https://app.test/echo/%2e%2e/private/x\r\n\r\n"],
    ),
    (
        "traefik, a browser not signed in",
        [
            VERIFY + b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: app.test\r\n"
            b"X-Forwarded-Uri: /private/page?a=1\r\nX-Forwarded-Method: GET\r\n"
            b"Accept: text/html\r\n\r\n"
        ],
    ),
    (
        "traefik, an API client not signed in",
        [
            VERIFY + b"X-Forwarded-Host: app.test\r\nX-Forwarded-Uri: /private/page\r\n"
            b"Accept: application/json\r\n\r\n"
        ],
    ),
    (
        "a description given twice",
        [
            VERIFY + b"X-Original-URL: https://app.test/echo\r\n"
            b"X-Original-URL: https://app.test/admin\r\n\r\n"
        ],
    ),
    (
        "two descriptions mixed",
        [VERIFY + b"X-Original-URL: https://app.test/echo\r\nX-Forwarded-Uri: /admin\r\n\r\n"],
    ),
    ("no description", [VERIFY + b"\r\n"]),
    (
        "the proxy's request id",
        [VERIFY + b"X-Request-Id: proxy-7\r\nX-Original-URL: https://app.test/echo\r\n\r\n"],
    ),
    (
        "two on one connection",
        [
            VERIFY + b"X-Original-URL: https://app.test/private/x\r\nCookie: test_user=bob\r\n\r\n",
            WAIT,
            VERIFY + b"X-Original-URL: https://app.test/private/x\r\n\r\n",
        ],
    ),
]


@pytest.mark.parametrize(
    "sent", [c[1] for c in FORWARD_AUTH_CASES], ids=[c[0] for c in FORWARD_AUTH_CASES]
)
async def test_forward_auth_is_answered_by_the_fast_path_as_by_aiohttp(
    trusted_pair: Pair, sent: list[bytes]
) -> None:
    before, _, after = await answered_alike(trusted_pair, sent)
    requests = sum(piece.count(b" HTTP/") for piece in sent)
    assert after["served"] - before["served"] == requests
    assert after["handed_over"] - before["handed_over"] == 1  # the metrics request


async def test_a_forward_auth_answer_that_cannot_be_written_is_the_pipelines_500(
    trusted_pair: Pair,
) -> None:
    """aiohttp's server refuses to write a header with a control character and closes
    the connection; the fast path answers the pipeline's 500 page, fails closed all the
    same, and serves the connection on (it used to leave it hanging)."""
    bad = VERIFY + b"X-Original-URL: https://app.test/private/x\r\nCookie: test_user=ctl\r\n\r\n"
    good = VERIFY + b"X-Original-URL: https://app.test/private/x\r\nCookie: test_user=bob\r\n\r\n"
    full, fast = await both(trusted_pair, [bad, WAIT, bad, WAIT, good])
    assert full.answers == [] and full.closed
    # (the second time too: a pass's head is kept per identity, never a refused one)
    assert [answer.split(b"\n", 1)[0] for answer in fast.answers] == [b"500", b"500", b"200"]
    assert b"Ana" not in fast.answers[0]


async def test_each_identity_passes_with_its_own_headers(trusted_pair: Pair) -> None:
    """A pass's head is made once per set of identity headers (`page_parts`): checks by
    two users about URLs of their own, one at a time on one connection, each get their
    own, as aiohttp's server writes them, from the fast path."""
    checks = []
    for number in range(3):
        for user in (b"alice", b"bob"):
            url = b"https://app.test/private/%d" % number
            cookie = b"test_user=" + user
            checks += [VERIFY + b"X-Original-URL: " + url + b"\r\nCookie: " + cookie + b"\r\n\r\n"]
            checks += [WAIT]  # as a proxy asks: each answered before the next is sent
    before, full, after = await answered_alike(trusted_pair, checks)
    assert after["served"] - before["served"] == 6
    users = [re.search(rb"Remote-User: (\w+)", answer) for answer in full.answers]
    assert [found.group(1) for found in users if found] == [b"alice", b"bob"] * 3


async def test_heads_an_old_httptools_would_forward_are_refused_on_both_paths(
    pair: Pair,
) -> None:
    # The fast path's start-up check (unavailable_reason) turns on these heads: they
    # must be ones aiohttp refuses, and the installed httptools must refuse them too.
    for name, head in LENIENT_HEADS:
        sent = head.replace(b" a\r\n", b" app.test\r\n")
        full, fast = await both(pair, [sent])
        assert full.answers and full.answers[0].startswith(b"400\n"), (name, full.answers)
        assert fast.answers == full.answers, name


async def test_a_case_cut_into_pieces_with_pauses_is_answered_alike(pair: Pair) -> None:
    raw = b"GET /echo/slow HTTP/1.1\r\nHost: app.test\r\nX-A: 1\r\n\r\n"
    full, fast = await both(pair, [raw[:7], raw[7:30], raw[30:]], pause=0.05)
    assert fast.answers == full.answers and len(full.answers) == 1


# --- generated requests ----------------------------------------------------------

METHODS = [b"GET"] * 6 + [b"HEAD", b"POST", b"DELETE", b"get", b"G ET"]
VERSIONS = [b"HTTP/1.1"] * 8 + [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 ", b"HTTP/1"]
SEGMENTS = [
    b"echo",
    b"echo",
    b"admin",
    b"private",
    b".",
    b"..",
    b"%2e%2e",
    b"%2E",
    b"",
    b"a;b",
    b"%2f",
    b"%5c",
    b"caf%C3%A9",
    b"%00",
    b"%25",
    b"x y",
    b"\xc3\xa9",
    b"~u",
    b".authgate",
]
QUERIES = [b"", b"", b"?a=1", b"?a=%2F&b", b"?", b"?x#y"]
HOSTS = [b"Host: app.test"] * 6 + [b"Host: other.test", b"Host: app.test:80", b"Host: ", b""]
FIELDS = [
    b"Connection: keep-alive",
    b"Connection: X-Drop",
    b"X-Drop: secret",
    b"Cookie: a=1; authgate_session=forged",
    b"Authorization: Basic eDp5",
    b"Remote-User: admin",
    b"X-Forwarded-For: 1.2.3.4",
    b"X-Request-Id: chosen",
    b"Accept: application/json",
    b"Accept: text/html",
    b"X-Spaces:   a  ",
    b"X-Empty:",
    b"X_Under: 1",
    b"X-Bin: \xff",
    b"User-Agent: ua",
    b"X-Tab:\tv\t",
]
RISKY = [
    b"Host: app.test",
    b"Connection: close",
    b"Content-Length: 0",
    b"Content-Length: 3",
    b"Transfer-Encoding: chunked",
    b"Expect: 100-continue",
    b"Upgrade: websocket",
    b"Authorization: Bearer agk_forged",
    b"Bad Name: x",
    b"User-Agent: another",
]
ENDS = [b"\r\n"] * 12 + [b"\n"]


def generated_request(rng: random.Random) -> bytes:
    """Half of them plain but for their fields and path, so that the fast path meets many."""
    plain = rng.random() < 0.5
    method = b"GET" if plain else rng.choice(METHODS)
    segments = SEGMENTS[:10] if plain else SEGMENTS
    path = b"/" + b"/".join(rng.choice(segments) for _ in range(rng.randint(1, 4)))
    end = b"\r\n" if plain else rng.choice(ENDS)
    version = b"HTTP/1.1" if plain else rng.choice(VERSIONS)
    lines = [method + b" " + path + rng.choice(QUERIES) + b" " + version]
    fields = [b"Host: app.test"] if plain else [h for h in [rng.choice(HOSTS)] if h]
    fields += rng.sample(FIELDS, rng.randint(0, 4))
    if rng.random() < 0.3:
        fields.append(rng.choice(RISKY))
    rng.shuffle(fields)
    lines += fields
    body = b""
    if any(line.startswith(b"Content-Length: 3") for line in lines):
        body = b"abc"
    elif any(line.startswith(b"Transfer-Encoding") for line in lines):
        body = b"3\r\nabc\r\n0\r\n\r\n"
    return end.join(lines) + end + end + body


async def test_generated_requests_are_answered_alike_on_both_paths(pair: Pair) -> None:
    rng = random.Random(8)
    before = await fast_path_counts(pair)
    cases = [generated_request(rng) for _ in range(200)]
    sent = [[request] if rng.random() < 0.8 else [request, WAIT, GET] for request in cases]
    for batch in range(0, len(sent), 10):  # ten at a time: each waits for silence
        heard = await asyncio.gather(*(both(pair, pieces) for pieces in sent[batch : batch + 10]))
        for pieces, (full, fast) in zip(sent[batch : batch + 10], heard, strict=True):
            assert (fast.answers, fast.closed) == (full.answers, full.closed), pieces
        # Twice more, from the same peer: decided again and kept (the bytes came a second
        # time), then reused where the fast path made the decision (gateway/reuse.py).
        for _ in range(2):
            again = await asyncio.gather(*(send(pair.fast, p) for p in sent[batch : batch + 10]))
            for pieces, (full, _), heard_again in zip(
                sent[batch : batch + 10], heard, again, strict=True
            ):
                assert (heard_again.answers, heard_again.closed) == (
                    full.answers,
                    full.closed,
                ), pieces
    after = await fast_path_counts(pair)
    assert after["served"] - before["served"] >= 20  # the fast path was really there
    assert await metric(pair.fast, "authgate_fast_path_reused_decisions_total") >= 20


# --- what only the fast path does ------------------------------------------------


async def test_answers_of_every_shape_arrive_alike(pair: Pair) -> None:
    """Streamed (chunked, and sized over the small-body bound), event streams, and
    answers the upstream shapes: through the fast path as through aiohttp."""
    for path in (
        b"/download?bytes=300000",
        b"/download?bytes=0",
        b"/sse",
        b"/headers-out",
    ):
        raw = b"GET " + path + b" HTTP/1.1\r\nHost: app.test\r\n\r\n"
        full, fast = await both(pair, [raw])
        assert fast.answers == full.answers and len(full.answers) == 1, path


async def test_a_streamed_answer_is_relayed_as_it_comes(pair: Pair, upstream: TestServer) -> None:
    host, port = pair.fast.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"GET /stream HTTP/1.1\r\nHost: app.test\r\n\r\n")
        first = await asyncio.wait_for(reader.readuntil(b"first\n"), 5)
        assert b"Transfer-Encoding: chunked" in first
        upstream.app[RELEASE].set()
        rest = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)
        assert b"more 2" in rest
    finally:
        writer.close()
    assert (await fast_path_counts(pair))["served"] >= 1


@pytest.mark.parametrize(
    ("accept", "status"), [(b"application/json", b"502"), (b"text/html", b"502")]
)
async def test_a_dead_upstream_gets_the_pipelines_page(
    start_fast_and_full: Callable[..., Awaitable[Pair]], accept: bytes, status: bytes
) -> None:
    dead = await start_fast_and_full("http://127.0.0.1:9")  # the discard port: refused
    raw = b"GET /x HTTP/1.1\r\nHost: app.test\r\nAccept: " + accept + b"\r\n\r\n"
    full, fast = await both(dead, [raw, WAIT, GET])
    assert [a[:3] for a in full.answers] == [status, status]
    assert fast.answers == full.answers
    assert (await fast_path_counts(dead))["served"] == 2


async def test_a_hung_upstream_gets_the_pipelines_504(
    upstream: TestServer, start_fast_and_full: Callable[..., Awaitable[Pair]]
) -> None:
    hung = await start_fast_and_full(str(upstream.make_url("")), route={"read_timeout": 0.3})
    raw = b"GET /hang HTTP/1.1\r\nHost: app.test\r\nAccept: application/json\r\n\r\n"
    full, fast = await both(hung, [raw])
    assert [a[:3] for a in full.answers] == [b"504"]
    assert fast.answers == full.answers
    assert (await fast_path_counts(hung))["served"] == 1


@pytest.fixture
async def start_fast_and_full(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Pair]]]:
    servers: list[GatewayServer] = []

    async def start(upstream_url: str, **server: object) -> Pair:
        addresses = []
        for name, fast in (("full", False), ("fast", True)):
            folder = tmp_path / f"{name}{len(servers)}"
            folder.mkdir()
            gateway = GatewayServer(
                make_config(folder, upstream_url, policy=POLICY, fast_path=fast, **server)
            )
            await gateway.start()
            servers.append(gateway)
            host, port = gateway.addresses[0]
            addresses.append(f"{host}:{port}")
        return Pair(addresses[0], addresses[1])

    yield start
    for gateway in servers:
        await gateway.stop()


async def test_a_client_that_leaves_cancels_its_request_upstream(
    upstream: TestServer, start_fast_and_full: Callable[..., Awaitable[Pair]]
) -> None:
    gateways = await start_fast_and_full(str(upstream.make_url("")))
    host, port = gateways.fast.rsplit(":", 1)
    for number in range(1, 4):
        _, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /hang HTTP/1.1\r\nHost: app.test\r\n\r\n")
        await writer.drain()
        opened = "authgate_upstream_connections_opened_total"
        for _ in range(100):  # until the request is upstream, hanging there
            if await metric(gateways.fast, opened) == number:
                break
            await asyncio.sleep(0.05)
        assert await metric(gateways.fast, opened) == number
        writer.close()
    # The three upstream connections the hung requests held are closed, not kept.
    for _ in range(50):
        if await metric(gateways.fast, "authgate_upstream_connections") == 0:
            break
        await asyncio.sleep(0.1)
    assert await metric(gateways.fast, "authgate_upstream_connections") == 0
    assert await metric(gateways.fast, "authgate_upstream_connections_opened_total") == 3
    requests = await metric(
        gateways.fast,
        'authgate_requests_total{decision="ALLOW",route="app.test/",status="499",tenant="acme"}',
    )
    assert requests == 3, [
        line
        for line in (await scrape(gateways.fast)).splitlines()
        if line.startswith("authgate_requests_total")
    ]


async def test_an_answer_the_upstream_breaks_off_is_recorded_alike_on_both_paths(
    start_fast_and_full: Callable[..., Awaitable[Pair]],
) -> None:
    # The head (a 200) reached the client, then the upstream died: the client got a
    # 200 cut short, and both paths record that, not a 499 (the client did not leave).
    async def dies_mid_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 70000)
        await writer.drain()
        writer.transport.abort()

    dying = await asyncio.start_server(dies_mid_body, "127.0.0.1", 0)
    port = dying.sockets[0].getsockname()[1]
    try:
        gateways = await start_fast_and_full(f"http://127.0.0.1:{port}")
        recorded = {}
        for name, address in (("full", gateways.full), ("fast", gateways.fast)):
            heard = await send(address, [b"GET /big HTTP/1.1\r\nHost: app.test\r\n\r\n"])
            assert heard.closed and not heard.answers, name  # cut short: no whole answer
            statuses = {
                line.split('status="')[1].split('"')[0]
                for line in (await scrape(address)).splitlines()
                if line.startswith("authgate_requests_total{") and not line.endswith(" 0.0")
            }
            recorded[name] = statuses
        assert recorded == {"full": {"200"}, "fast": {"200"}}, recorded
    finally:
        dying.close()
        await dying.wait_closed()


async def test_a_client_too_slow_to_send_its_head_is_dropped(
    upstream: TestServer, start_fast_and_full: Callable[..., Awaitable[Pair]]
) -> None:
    gateways = await start_fast_and_full(str(upstream.make_url("")), client_timeout=1.0)
    host, port = gateways.fast.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    started = asyncio.get_running_loop().time()
    try:
        writer.write(b"GET /echo HTTP/1.1\r\nHost: app.test\r\n")  # and never the end
        for _ in range(10):  # bytes keep coming: the head still has to end in time
            writer.write(b"X-Drip: 1\r\n")
            await asyncio.sleep(0.1)
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()
    assert asyncio.get_running_loop().time() - started < 3.5


async def test_an_idle_kept_alive_connection_is_closed_and_a_busy_one_is_not(
    upstream: TestServer, start_fast_and_full: Callable[..., Awaitable[Pair]]
) -> None:
    gateways = await start_fast_and_full(
        str(upstream.make_url("")), keepalive_timeout=1.0, route={"read_timeout": 5.0}
    )
    host, port = gateways.fast.rsplit(":", 1)
    idle_reader, idle_writer = await asyncio.open_connection(host, int(port))
    busy_reader, busy_writer = await asyncio.open_connection(host, int(port))
    try:
        idle_writer.write(GET)
        await idle_reader.readuntil(b'"chunked": false}')
        # A request that takes longer than the idle bound is not cut by it.
        busy_writer.write(b"GET /stream HTTP/1.1\r\nHost: app.test\r\n\r\n")
        await busy_reader.readuntil(b"first\n")
        assert await asyncio.wait_for(idle_reader.read(), 4) == b""
        upstream.app[RELEASE].set()
        assert b"more 2" in await asyncio.wait_for(busy_reader.readuntil(b"0\r\n\r\n"), 5)
    finally:
        idle_writer.close()
        busy_writer.close()


async def test_a_stop_lets_the_request_being_served_finish(
    upstream: TestServer, tmp_path: Path
) -> None:
    gateway = GatewayServer(
        make_config(tmp_path, str(upstream.make_url("")), policy=POLICY, fast_path=True)
    )
    await gateway.start()
    host, port = gateway.addresses[0]
    reader, writer = await asyncio.open_connection(host, port)
    idle_reader, idle_writer = await asyncio.open_connection(host, port)
    try:
        writer.write(b"GET /stream HTTP/1.1\r\nHost: app.test\r\n\r\n")
        await reader.readuntil(b"first\n")
        stopping = asyncio.ensure_future(gateway.stop())
        await asyncio.sleep(0.2)
        assert not stopping.done()
        # Idle connections are closed at once, and no new one is accepted.
        assert await asyncio.wait_for(idle_reader.read(), 2) == b""
        with pytest.raises(OSError):
            await asyncio.open_connection(host, port)
        upstream.app[RELEASE].set()
        rest = await asyncio.wait_for(reader.read(), 5)  # the whole answer, then the close
        assert rest.endswith(b"more 2\n\r\n0\r\n\r\n")
        await asyncio.wait_for(stopping, 5)
    finally:
        writer.close()
        idle_writer.close()


@pytest.mark.parametrize(
    "following",
    [
        b"GET /echo/next HTTP/1.1\r\nHost: app.test\r\n\r\n",
        b"POST /echo/next HTTP/1.1\r\nHost: app.test\r\nContent-Length: 2\r\n\r\nhi",
        (
            b"GET /echo/next HTTP/1.1\r\n"
            b"Host: app.test\r\n"
            b"\r\n"
            b"GET /admin/x HTTP/1.1\r\n"
            b"Host: app.test\r\n"
            b"\r\n"
        ),
    ],
    ids=["a plain GET", "a POST", "two more in one piece"],
)
async def test_requests_sent_before_the_answer_are_answered_after_it_in_order(
    pair: Pair, upstream: TestServer, following: bytes
) -> None:
    first = b"GET /stream HTTP/1.1\r\nHost: app.test\r\n\r\n"

    async def run(address: str) -> list[bytes]:
        upstream.app[RELEASE].clear()
        host, port = address.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(first)
            received = await asyncio.wait_for(reader.readuntil(b"first\n"), 5)
            writer.write(following)  # while the first answer is still coming
            await writer.drain()
            await asyncio.sleep(0.2)
            upstream.app[RELEASE].set()
            everything, _ = await read_all(reader, received, following.count(b" HTTP/") + 1)
            return split_answers(everything)
        finally:
            writer.close()

    full = await run(pair.full)
    fast = await run(pair.fast)
    assert fast == full
    assert full[0].startswith(b"200") and b"more 2" in full[0]
    assert len(full) == following.count(b"HTTP/1.1") + 1


async def test_a_store_that_fails_is_asked_once_per_request(
    upstream: TestServer, tmp_path: Path
) -> None:
    """Answered on the fast path itself (the pipeline's 503), not handed over to be
    resolved a second time: a failing store costs a request one store deadline, and
    counts once towards the breaker."""
    calls = 0

    async def failing(request: object, tenant: object, route: object) -> Identity:
        nonlocal calls
        calls += 1
        raise StoreUnavailable("the session store timed out")

    def install(server: GatewayServer) -> None:
        server.hooks.identify = failing

    answers = []
    for fast in (False, True):
        folder = tmp_path / str(fast)
        folder.mkdir()
        config = make_config(folder, str(upstream.make_url("")), policy=POLICY, fast_path=fast)
        gateway = GatewayServer(config, (install,))
        await gateway.start()
        try:
            host, port = gateway.addresses[0]
            calls = 0
            heard = await send(
                f"{host}:{port}",
                [b"GET /echo HTTP/1.1\r\nHost: app.test\r\nAccept: application/json\r\n\r\n"],
            )
            answers.append((heard.answers, heard.closed, calls))
        finally:
            await gateway.stop()
    full, fast = answers
    assert full[0][0].startswith(b"503")
    assert fast == full
    assert fast[2] == 1


async def one_by_one(
    address: str,
    sock: socket.socket,
    until: Callable[[int], bool],
    request: bytes = b"GET /download?bytes=60000 HTTP/1.1\r\nHost: app.test\r\n\r\n",
) -> tuple[int, bool]:
    """Send `request` on `sock`, reading none of the answers, each once the one before
    was answered (so that each is read on its own, not handed over as pipelined), until
    `until(sent)` or one is not answered within two seconds. How many were sent, and
    whether the last one is still unanswered."""
    loop = asyncio.get_running_loop()
    before = await metric(address, ANSWERED)
    sent = 0
    while not until(sent):
        await loop.sock_sendall(sock, request)
        sent += 1
        for _ in range(40):
            if await metric(address, ANSWERED) - before == sent:
                break
            await asyncio.sleep(0.05)
        else:
            return sent, True  # not answered: the gateway waits for the client to read
    return sent, False


async def fill_until_stalled(address: str, sock: socket.socket, limit: int = 200) -> int:
    """60 KB downloads one by one until the gateway stops answering (or `limit`)."""
    sent, _ = await one_by_one(address, sock, lambda sent: sent >= limit)
    return sent


async def non_reading_client(address: str) -> socket.socket:
    host, port = address.rsplit(":", 1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    return sock


ANSWERED = 'authgate_requests_total{decision="ALLOW",route="app.test/",status="200",tenant="acme"}'


async def test_a_client_that_does_not_read_stops_being_read(pair: Pair) -> None:
    """Back-pressure: answers a client does not take are not piled up in the gateway.
    Once the socket buffers are full, a request is not answered until the client
    reads, as on aiohttp's server. Then all of them are."""
    loop = asyncio.get_running_loop()
    for address in (pair.full, pair.fast):
        sock = await non_reading_client(address)
        try:
            before = await metric(address, ANSWERED)
            sent = await fill_until_stalled(address, sock)
            assert sent < 150, address  # 60 KB answers: a few MB of socket buffers
            received = 0
            while received < sent * 60000:  # the bodies, at least
                data = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 5)
                assert data
                received += len(data)
            assert await metric(address, ANSWERED) - before == sent
        finally:
            sock.close()


async def test_a_paused_client_that_resets_leaves_nothing_unretrieved(pair: Pair) -> None:
    loop = asyncio.get_running_loop()
    seen: list[dict[str, object]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: seen.append(context))
    try:
        sock = await non_reading_client(pair.fast)
        await fill_until_stalled(pair.fast, sock, limit=120)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # a reset, with the gateway's writes paused
        await asyncio.sleep(0.3)
        gc.collect()
        await asyncio.sleep(0.1)
    finally:
        loop.set_exception_handler(previous)
    assert not seen, [context.get("message") for context in seen]


async def test_an_answer_never_taken_is_recorded_as_cut_short(pair: Pair) -> None:
    """A client that stops reading, then resets: on the fast path the answer it never
    took is a 499, whether its decision was made or reused (found by review: a reused
    one was a 200). (aiohttp's server records an answer once it has it to write: a
    200 there.)"""
    cut = ANSWERED.replace('status="200"', 'status="499"')
    sock = await non_reading_client(pair.fast)
    sent = await fill_until_stalled(pair.fast, sock, limit=120)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    for _ in range(40):
        if await metric(pair.fast, cut) == 1:
            break
        await asyncio.sleep(0.05)
    assert (await metric(pair.fast, ANSWERED), await metric(pair.fast, cut)) == (sent - 1, 1)
    # Decided twice (kept the second time), then reused, the last one cut short.
    assert await metric(pair.fast, "authgate_fast_path_reused_decisions_total") == sent - 3


async def test_without_aiohttps_c_parser_everything_is_served_by_aiohttp(
    upstream: TestServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(
        "gateway.server.fast_path_unavailable",
        lambda: "aiohttp runs without its C parser (AIOHTTP_NO_EXTENSIONS?)",
    )
    gateway = GatewayServer(
        make_config(tmp_path, str(upstream.make_url("")), policy=POLICY, fast_path=True)
    )
    await gateway.start()
    try:
        host, port = gateway.addresses[0]
        heard = await send(f"{host}:{port}", [GET])
        assert heard.answers[0].startswith(b"200")
        counts = await fast_path_counts(Pair(f"{host}:{port}", f"{host}:{port}"))
        assert counts == {"served": 0.0, "handed_over": 0.0}
        assert "the fast path is off: aiohttp runs without its C parser" in caplog.text
    finally:
        await gateway.stop()
