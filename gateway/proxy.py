"""Forwarding an allowed request to its upstream: HTTP streamed both ways, and WebSockets.

Bodies are never buffered: the request body is handed to the upstream client as a
stream and the response is written back chunk by chunk as it arrives, so a 1 GiB
transfer costs a few buffers of memory. The path sent upstream is the canonical
path the policy decided on, re-encoded for the wire (SECURITY.md invariant 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NamedTuple

import aiohttp
from aiohttp import WSMsgType, web
from aiohttp.web_request import BaseRequest
from multidict import CIMultiDict
from yarl import URL

from gateway.config.model import RouteConfig
from gateway.forwarding import BODILESS_STATUSES, RESPONSE_HOP_BY_HOP, dropped_names, union
from gateway.request_log import note_streamed, note_upstream
from gateway.request_view import RequestView
from gateway.upstream_client import (
    ConnectionWatch,
    Origin,
    RequestBody,
    UpstreamClient,
    UpstreamResponse,
    UpstreamUnreachable,
    encode_head,
)

log = logging.getLogger("authgate.proxy")

# Headers the upstream client would otherwise invent; the upstream should see what
# the client sent, not what aiohttp would have sent.
_SKIP_AUTO_HEADERS = ("User-Agent", "Accept-Encoding", "Accept", "Content-Type")


# Responses up to this size with a Content-Length are read whole and written at once
# (fewer writes, no streaming machinery); larger or unsized ones stream.
SMALL_BODY = 65536

# Methods whose bodiless requests still say `Content-Length: 0` (some servers answer
# 411 Length Required otherwise).
_BODY_EXPECTED = frozenset({"POST", "PUT", "PATCH"})
_NO_LENGTH = frozenset({"content-length"})
# The gateway answers `Expect: 100-continue` itself; the upstream gets the body at once.
_EXPECT = frozenset({"expect"})


def _wants_continue(request: BaseRequest) -> bool:
    expect = request.headers.get("Expect")
    return expect is not None and expect.lower() == "100-continue" and request.version >= (1, 1)


class UpstreamError(Exception):
    """The upstream could not be reached (→ 502) or did not answer in time (→ 504)."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(reason)


class Forwarded(NamedTuple):
    """What the gateway knows about the request, for X-Forwarded-* and the upstream URL.
    (A tuple: one is made per forwarded request, and a frozen dataclass costs three
    times as much to make.)"""

    wire_path: str  # canonical path, percent-encoded for the request line
    query: str  # raw query string, without '?'
    host_header: str  # the client's Host (validated)
    proto: str  # http | https, as the client used it
    forwarded_for: str  # the X-Forwarded-For value to send
    drop: frozenset[str]  # request headers never forwarded (lowercase): hop-by-hop, ours
    identity: CIMultiDict[str] | None = None  # identity headers to add (ours)
    strip: frozenset[str] = frozenset()  # further request headers to drop (credentials)


@dataclass(frozen=True)
class UpstreamTarget:
    """A route's upstream, parsed once."""

    origin: str  # scheme://host:port
    base_path: str  # "" or "/base" (no trailing slash)
    host_header: str  # host[:port] as the upstream expects it
    address: Origin  # where the lean client connects
    connect_timeout: float
    read_timeout: float
    pool: UpstreamPool

    @classmethod
    def from_route(cls, route: RouteConfig, pool: UpstreamPool) -> UpstreamTarget:
        url = URL(route.upstream)
        default_port = {"http": 80, "https": 443}.get(url.scheme)
        port = url.port
        host = url.raw_host or ""
        hostport = host if port in (None, default_port) else f"{host}:{port}"
        if ":" in host and not host.startswith("["):
            hostport = f"[{host}]" if port in (None, default_port) else f"[{host}]:{port}"
        return cls(
            origin=f"{url.scheme}://{hostport}",
            base_path=url.raw_path.rstrip("/"),
            host_header=hostport,
            address=pool.origin(url.scheme, host, port),
            connect_timeout=route.connect_timeout,
            read_timeout=route.read_timeout,
            pool=pool,
        )

    @property
    def session(self) -> aiohttp.ClientSession:
        """aiohttp's client, for WebSockets (plain HTTP goes through the lean client)."""
        return self.pool.session(self.connect_timeout, self.read_timeout)

    def request_target(self, wire_path: str, query: str) -> str:
        target = f"{self.base_path}{wire_path}"
        return f"{target}?{query}" if query else target

    def url(self, wire_path: str, query: str, *, websocket: bool = False) -> URL:
        origin = self.origin
        if websocket:
            origin = "ws" + origin[4:] if origin.startswith("http:") else "wss" + origin[5:]
        return URL(origin + self.request_target(wire_path, query), encoded=True)


class UpstreamPool:
    """The upstream clients of one worker: the lean HTTP/1.1 client (its own keep-alive
    pool) for requests, and aiohttp ClientSessions, one per distinct (connect, read)
    timeout pair, for WebSockets. Both are made on first use, inside the event loop."""

    def __init__(self, watch: ConnectionWatch | None = None) -> None:
        self._watch = watch
        self._client: UpstreamClient | None = None
        self._connector: aiohttp.TCPConnector | None = None
        self._sessions: dict[tuple[float, float], aiohttp.ClientSession] = {}
        self._origins: dict[tuple[str, str, int | None], Origin] = {}

    @property
    def client(self) -> UpstreamClient:
        if self._client is None:
            self._client = UpstreamClient(keepalive_timeout=30.0, watch=self._watch)
        return self._client

    def origin(self, scheme: str, host: str, port: int | None) -> Origin:
        """One Origin (and TLS context) per distinct upstream address."""
        key = (scheme, host, port)
        found = self._origins.get(key)
        if found is None:
            found = self._origins[key] = Origin.parse(scheme, host, port)
        return found

    def session(self, connect_timeout: float, read_timeout: float) -> aiohttp.ClientSession:
        key = (connect_timeout, read_timeout)
        found = self._sessions.get(key)
        if found is None:
            if self._connector is None:
                self._connector = aiohttp.TCPConnector(
                    limit=0, keepalive_timeout=30, enable_cleanup_closed=False, ttl_dns_cache=60
                )
            found = self._sessions[key] = aiohttp.ClientSession(
                connector=self._connector,
                connector_owner=False,
                auto_decompress=False,
                skip_auto_headers=_SKIP_AUTO_HEADERS,
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=connect_timeout, sock_read=read_timeout
                ),
            )
        return found

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
        for session in self._sessions.values():
            await session.close()
        if self._connector is not None:
            await self._connector.close()


def upstream_request_headers(
    request: RequestView,
    target: UpstreamTarget,
    route: RouteConfig,
    fwd: Forwarded,
    also_drop: frozenset[str] = frozenset(),
) -> list[tuple[str, str]]:
    """The headers sent upstream, in order: the client's end-to-end ones (minus those
    carrying credentials and `also_drop`), then ours: Host, X-Forwarded-*, identity."""
    strip = union(fwd.strip, also_drop) if also_drop else fwd.strip
    dropped = dropped_names(request.headers, fwd.drop, strip)
    # No name with an underscore: WSGI, CGI and others read `Remote_User` as the
    # `Remote-User` we set (nginx and Apache drop them by default for this reason).
    headers = [
        (name, value)
        for name, value in request.headers.items()
        if "_" not in name and name.lower() not in dropped
    ]
    headers.append(("Host", fwd.host_header if route.preserve_host else target.host_header))
    headers.append(("X-Forwarded-For", fwd.forwarded_for))
    headers.append(("X-Forwarded-Proto", fwd.proto))
    headers.append(("X-Forwarded-Host", fwd.host_header))
    if fwd.identity:
        headers.extend(fwd.identity.items())
    return headers


async def forward_http(
    request: BaseRequest,
    target: UpstreamTarget,
    route: RouteConfig,
    fwd: Forwarded,
) -> web.StreamResponse:
    """Send the request upstream and stream the answer back; raises UpstreamError."""
    method = request.method
    body: RequestBody = None
    chunked = False
    if request.body_exists:
        headers = upstream_request_headers(request, target, route, fwd, _EXPECT)
        if _wants_continue(request):
            # The request is allowed: let the client send its body now (as nginx does),
            # instead of making it wait for a `100 Continue` that nobody would send.
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        length = request.content_length
        if length is not None and length <= SMALL_BODY:
            body = await request.read()  # small: sent with the head in one write
        else:
            body = request.content
            if length is None:
                headers.append(("Transfer-Encoding", "chunked"))
                chunked = True
    else:
        headers = upstream_request_headers(request, target, route, fwd, _NO_LENGTH)
        if method in _BODY_EXPECTED:
            headers.append(("Content-Length", "0"))
    try:
        head = encode_head(method, target.request_target(fwd.wire_path, fwd.query), headers)
    except ValueError:
        raise UpstreamError(500, "a request header could not be forwarded safely") from None
    upstream = await exchange(target, method, head, body, chunked)
    async with upstream:
        answer = answer_head(upstream, method)
        if answer.small:
            # A small body whose size is known: read it and answer in one write, head
            # and body together. Nothing has been sent yet, so a stall is still a 504.
            return web.Response(
                status=answer.status,
                reason=answer.reason,
                body=await read_whole(upstream),
                headers=answer.headers,
            )
        response = web.StreamResponse(status=answer.status, reason=answer.reason)
        response.headers.extend(answer.headers)
        if answer.length is not None:
            response.content_length = answer.length
        elif not answer.no_body:
            response.enable_chunked_encoding()
        written = 0
        try:
            await response.prepare(request)
            async for chunk in upstream.iter_chunks():
                await response.write(chunk)
                written += len(chunk)
        except TimeoutError:
            # Headers are gone already: all we can do is cut the connection short.
            log.warning("upstream stalled mid-response; closing client connection")
            _abort(request)
            return response
        except (UpstreamUnreachable, ConnectionResetError):
            _abort(request)
            return response
        finally:
            note_streamed(written)
        await response.write_eof()
        return response


async def exchange(
    target: UpstreamTarget, method: str, head: bytes, body: RequestBody, chunked: bool
) -> UpstreamResponse:
    """Send the request upstream; its answer once the head has come. UpstreamError
    when there is none: 504 when it took too long, 502 when it could not be had."""
    sent = time.perf_counter()
    try:
        upstream = await target.pool.client.request(
            target.address,
            method,
            head,
            body,
            chunked=chunked,
            connect_timeout=target.connect_timeout,
            read_timeout=target.read_timeout,
        )
    except TimeoutError:
        raise UpstreamError(504, "the upstream did not answer in time") from None
    except UpstreamUnreachable as exc:
        raise UpstreamError(502, "the upstream could not be reached") from exc
    note_upstream(time.perf_counter() - sent)  # time to the upstream's response headers
    return upstream


class AnswerHead(NamedTuple):
    """What of an upstream's answer head goes back to the client, and how its body is
    framed there. (A tuple: made on every forwarded request.)"""

    status: int
    reason: str | None  # None: the standard phrase
    headers: CIMultiDict[str]  # end-to-end headers only; the framing ones are ours
    length: int | None  # the body's length, when the upstream framed it by one
    no_body: bool  # the answer has none whatever its headers say (HEAD, 204, 304)

    @property
    def small(self) -> bool:
        """Read whole and written at once with the head."""
        return self.length is not None and not self.no_body and self.length <= SMALL_BODY


def answer_head(upstream: UpstreamResponse, method: str) -> AnswerHead:
    """Raises UpstreamError (502) for an answer that cannot be forwarded whole."""
    try:
        headers = upstream.headers(RESPONSE_HOP_BY_HOP)
    except UpstreamUnreachable as exc:  # a protective header we cannot forward whole
        raise UpstreamError(502, str(exc)) from exc
    length_value: bytes | None = None
    transfer_coded = False
    for name, value in upstream.raw_headers:  # one pass for both
        lower = name.lower()
        if lower == b"content-length":
            if length_value is None:
                length_value = value
        elif lower == b"transfer-encoding":
            transfer_coded = True
    length = None
    if length_value is not None and length_value.isdigit() and not transfer_coded:
        length = int(length_value)
    status = upstream.status
    return AnswerHead(
        status=status,
        reason=upstream.reason or None,
        headers=headers,
        length=length,
        no_body=method == "HEAD" or status in BODILESS_STATUSES,
    )


async def read_whole(upstream: UpstreamResponse) -> bytes:
    """The rest of a small answer's body; UpstreamError (504, 502) when it does not come."""
    try:
        return await upstream.read()
    except TimeoutError:
        raise UpstreamError(504, "the upstream did not answer in time") from None
    except UpstreamUnreachable as exc:
        raise UpstreamError(502, "the upstream broke off its answer") from exc


def _abort(request: BaseRequest) -> None:
    transport = request.transport
    if transport is not None:
        transport.close()


def is_websocket_upgrade(request: BaseRequest) -> bool:
    if request.method != "GET":
        return False
    upgrade = request.headers.get("Upgrade", "").lower()
    return upgrade == "websocket" and "upgrade" in request.headers.get("Connection", "").lower()


_WS_OWN_HEADERS = frozenset(
    {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "sec-websocket-accept",
    }
)


async def forward_websocket(
    request: BaseRequest,
    target: UpstreamTarget,
    route: RouteConfig,
    fwd: Forwarded,
    still_allowed: Callable[[], Awaitable[bool]] | None = None,
    recheck: float = 5.0,
) -> web.StreamResponse:
    """Open the upstream WebSocket first, then accept the client's and pump both ways.

    A socket can live for hours: every `recheck` seconds `still_allowed` decides on it
    again, and one that is no longer allowed (session revoked, user disabled, policy
    tightened, the store down) is closed on both sides (1008 to the client)."""
    headers = CIMultiDict(upstream_request_headers(request, target, route, fwd, _WS_OWN_HEADERS))
    protocols = tuple(
        p.strip()
        for value in request.headers.getall("Sec-WebSocket-Protocol", ())
        for p in value.split(",")
        if p.strip()
    )
    try:
        upstream = await target.session.ws_connect(
            target.url(fwd.wire_path, fwd.query, websocket=True),
            headers=headers,
            protocols=protocols,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10),
            autoclose=False,
            autoping=True,
            max_msg_size=0,
        )
    except TimeoutError:
        raise UpstreamError(504, "the upstream did not answer in time") from None
    except aiohttp.WSServerHandshakeError as exc:
        raise UpstreamError(502, f"the upstream refused the WebSocket ({exc.status})") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamError(502, "the upstream could not be reached") from exc

    downstream = web.WebSocketResponse(
        protocols=(upstream.protocol,) if upstream.protocol else (),
        autoclose=False,
        autoping=True,
        max_msg_size=0,
    )
    await downstream.prepare(request)

    async def pump(
        source: aiohttp.ClientWebSocketResponse | web.WebSocketResponse,
        sink: aiohttp.ClientWebSocketResponse | web.WebSocketResponse,
    ) -> None:
        async for msg in source:
            if msg.type is WSMsgType.TEXT:
                await sink.send_str(msg.data)
            elif msg.type is WSMsgType.BINARY:
                await sink.send_bytes(msg.data)
            elif msg.type is WSMsgType.CLOSE:
                break
        if not sink.closed:
            code = source.close_code or aiohttp.WSCloseCode.OK
            message = msg.extra.encode() if msg.type is WSMsgType.CLOSE and msg.extra else b""
            await sink.close(code=code, message=message)

    async def watch(still_allowed: Callable[[], Awaitable[bool]]) -> None:
        while True:
            await asyncio.sleep(recheck)
            if not await still_allowed():
                return

    to_upstream = asyncio.ensure_future(pump(downstream, upstream))
    to_client = asyncio.ensure_future(pump(upstream, downstream))
    tasks = [to_upstream, to_client]
    watcher = asyncio.ensure_future(watch(still_allowed)) if still_allowed is not None else None
    if watcher is not None:
        tasks.append(watcher)
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if watcher is not None and watcher in done and not downstream.closed:
            log.info("closing a WebSocket whose request is no longer allowed")
            await downstream.close(
                code=aiohttp.WSCloseCode.POLICY_VIOLATION, message=b"access revoked"
            )
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if not upstream.closed:
            await upstream.close()
        if not downstream.closed:
            await downstream.close()
    return downstream
