"""The fast path (`server.fast_path`): plain allowed requests served without aiohttp's
server machinery.

Per client connection, llhttp (httptools, the parser the upstream client uses) reads
each request head. A request the fast path understands whole — `GET`, HTTP/1.1 kept
alive, no body, no upgrade, no expectation, one Host, an origin-form target, every
field within the server's limits and acceptable to aiohttp's parser, alone in what has
arrived — is resolved by the pipeline itself (canonicalize, tenant, route, credentials,
decide: `Pipeline.resolve`) and, when allowed, forwarded by the same upstream client
with the same header rules; the answer is written straight to the socket, as aiohttp
would write it, with back-pressure.

Everything else — a reserved path, a refusal or a challenge, a body, a WebSocket, a
head llhttp refuses, pipelined requests — is handed over, unanswered, with every byte of
it, to aiohttp's `RequestHandler`, which serves that connection from then on exactly as
without the fast path (and decides that request again). So the fast path forwards only
what `resolve` allowed, and every refusal and challenge is the full server's. One
reserved path is answered here: a forward-auth check (`HeadersOnly`), which reads
nothing but the request's line, headers and peer. Besides, it answers the pipeline's
own error pages, encoded here: `Pipeline.failure`'s
when deciding raised (400 for a path canonicalisation refuses, 503 for a store that
cannot answer, 500 otherwise; handed over, the store would be asked twice), and
`Pipeline.error`'s when the upstream failed or the request could not be forwarded
safely (502, 504, 500; the request is never sent twice).

An allowed request's decision is kept for a moment: the same bytes from the same peer,
arriving again, are forwarded on it without being parsed or decided
(`gateway/reuse.py`). So is a forward-auth check's pass or way to sign in: the same
check again is given that answer, with the current Date.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, cast

import httptools
from aiohttp import hdrs, web
from aiohttp.http_parser import SINGLETON_HEADERS, HttpRequestParser
from aiohttp.web_protocol import RequestHandler
from multidict import CIMultiDict, CIMultiDictProxy, istr

from gateway.answer_bytes import RelayedHead, Sent, cut_by_error, page_head, relayed_head
from gateway.canonical import peer_is_trusted
from gateway.config.model import ListenAddress, TenantConfig
from gateway.pipeline import Allowed, HeadersOnly, Pipeline, next_request_id
from gateway.proxy import (
    UpstreamError,
    UpstreamTarget,
    exchange,
    read_whole,
    upstream_request_headers,
)
from gateway.request_log import RequestRecord, current, note_streamed
from gateway.reuse import (
    MAX_PLANNED,
    PLAN_SECONDS,
    Decided,
    GivenAgain,
    KeptAnswer,
    Plan,
    PlanKey,
    Plans,
    ReusedExchange,
    ServedAgain,
    split_head,
)
from gateway.upstream_client import UpstreamResponse, UpstreamUnreachable, encode_head

log = logging.getLogger("authgate.fast_path")

# Request headers that make a request more than the fast path serves.
# (Sec-WebSocket-Key1: an old WebSocket handshake with an 8-byte body nobody declares;
# aiohttp refuses it.)
_NOT_PLAIN = frozenset(
    {
        b"content-length",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
        b"http2-settings",
        b"sec-websocket-key1",
    }
)
# Fields aiohttp's parser refuses to see twice (a 400): such requests are its to answer.
_SINGLETONS = frozenset(name.encode() for name in SINGLETON_HEADERS)
# What a field's name says, looked up once per field (most say nothing): True, one of
# _SINGLETONS; False, not plain (a name in both is not plain).
_FIELD_KINDS = {name: True for name in _SINGLETONS} | {name: False for name in _NOT_PLAIN}
# Names aiohttp's parser spells its own way (`accept` reaches the upstream as `Accept`),
# so that the upstream reads the same bytes from either path.
_KNOWN_NAMES = {
    str(name).lower().encode(): str(name) for name in vars(hdrs).values() if isinstance(name, istr)
}
# A field's name as it came: its lowercase, its kind (_FIELD_KINDS) and how aiohttp's
# parser spells it. Made once per name (a browser sends the same few on every request);
# names come from clients, so at most _NAMES_LIMIT are kept, none longer than
# _NAME_KEPT_BYTES (llhttp hands over a name of any length whole: 1,024 names of 64 KB
# would hold 190 MB).
_NAMES_SEEN: dict[bytes, tuple[bytes, bool | None, str]] = {}
_NAMES_LIMIT = 1024
_NAME_KEPT_BYTES = 64
# Heads of forward-auth passes kept per worker, by their identity headers (all forgotten
# when there would be more): about 1.5 KB each with a JWT.
_PASSES_LIMIT = 1024


def _name_seen(name: bytes) -> tuple[bytes, bool | None, str]:
    lower = name.lower()
    seen = (
        lower,
        _FIELD_KINDS.get(lower),
        _KNOWN_NAMES.get(lower) or name.decode("utf-8", "surrogateescape"),
    )
    if len(_NAMES_SEEN) < _NAMES_LIMIT and len(name) <= _NAME_KEPT_BYTES:
        _NAMES_SEEN[name] = seen
    return seen


# More than this many header fields, or head bytes arrived without a whole request:
# the full server decides (and enforces its own limits, with its own 4xx).
_MAX_FIELDS = 100
_MAX_BUFFERED = 65536


class FastRequest:
    """What the pipeline reads of a request (`gateway.pipeline.RequestView`)."""

    __slots__ = ("headers", "method", "raw_path", "remote", "secure")

    def __init__(
        self,
        method: str,
        raw_path: str,
        headers: CIMultiDictProxy[str],
        remote: str | None,
        secure: bool,
    ) -> None:
        self.method = method
        self.raw_path = raw_path
        self.headers = headers
        self.remote = remote
        self.secure = secure

    def __setitem__(self, key: Any, value: Any) -> None:
        # The pipeline notes the decided context for the challenge hook; a fast request
        # never meets one (a request not allowed is handed over and decided again; a
        # forward-auth check answers without the hook), so there is nothing to keep.
        pass


class FastConnection(asyncio.Protocol):
    """One client connection, until it is handed over to aiohttp."""

    def __init__(self, server: FastServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.remote: str | None = None
        self.secure = False
        self._parser = httptools.HttpRequestParser(self)
        self._max_field = server.max_field
        self._chunks: list[bytes] = []  # every byte since the last answered request
        self._buffered = 0
        # The request being served: a task, or one served on a decision made before.
        self.serving: asyncio.Task[None] | ServedAgain | None = None
        self._answer_pending = False  # answered, but the client has not taken it yet
        self._plans: dict[PlanKey, Decided] | None = None  # the worker's, when it reuses
        self.idle_since = server.loop.time()
        self._paused = False  # the transport's write buffer is over its high mark
        self._write_ready: asyncio.Future[None] | None = None  # made by drain() alone
        self._early: list[bytes] = []  # bytes that came while a request was served
        self._early_size = 0
        self._reset()

    def _reset(self) -> None:
        self._messages = 0
        self._head_done = False
        self._complete = False
        self._plain = True
        self._url = b""
        self._fields: list[tuple[str, str]] = []
        self._singletons: set[bytes] = set()
        self._last_name = 0  # the length of the previous field's name

    # -- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, tuple) else None
        self.secure = transport.get_extra_info("sslcontext") is not None
        if self.server.reusing:
            self._plans = self.server.plans.by_key
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        if self.serving is not None:
            self.serving.cancel()  # the client is gone: so is its request (499)
        if self._write_ready is not None and not self._write_ready.done():
            # Only drain() makes it, and it is awaiting it: the exception is seen.
            self._write_ready.set_exception(ConnectionResetError("the client went away"))

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._write_ready is not None and not self._write_ready.done():
            self._write_ready.set_result(None)
        self._write_ready = None
        if self._answer_pending:
            self._answer_pending = False
            self.answered()

    def data_received(self, data: bytes) -> None:
        if self.serving is not None:
            # The next request, sent before this one's answer (pipelining), is read
            # once it is answered. Reading goes on meanwhile so that a client that
            # leaves is noticed (its request is cancelled, as aiohttp's are); one that
            # sends too much is paused.
            self._early.append(data)
            self._early_size += len(data)
            if self._early_size > _MAX_BUFFERED and self.transport is not None:
                self.transport.pause_reading()
            return
        if not self._chunks and self._plans is not None:
            # At the start of a request: bytes that were one whole plain request, from
            # this peer, decided moments ago, are served on that decision (forwarded,
            # or a forward-auth check given its kept answer).
            key = (self.remote, self.secure, data)
            decided = self._plans.get(key)
            if decided is not None:
                if self.server.loop.time() < decided.until and decided.still_valid():
                    self.server.reuse(self, decided)
                    return
                self.server.plans.discard(key)
        self._chunks.append(data)
        self._buffered += len(data)
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            # The full server answers what llhttp refused, and serves upgrades.
            self.hand_over()
            return
        if (
            self._messages > 1
            # Not ours: handed over at once, not when the body is in (a client that
            # expects 100-continue sends none until it is told to).
            or (self._head_done and not self._plain)
            or (not self._complete and self._buffered > _MAX_BUFFERED)
        ):
            self.hand_over()
        elif self._complete:
            self._start()

    # -- llhttp callbacks ---------------------------------------------------------

    def on_message_begin(self) -> None:
        self._messages += 1

    def on_url(self, url: bytes) -> None:
        self._url += url
        # The whole request line counts against the limit: "GET ", the target, " HTTP/1.1".
        if len(self._url) + 13 > self.server.max_line:
            self._plain = False

    def on_header(self, name: bytes, value: bytes) -> None:
        seen = _NAMES_SEEN.get(name)
        lower, kind, spelled = _name_seen(name) if seen is None else seen
        if kind is not None:
            if not kind:
                self._plain = False
            elif lower in self._singletons:
                self._plain = False  # aiohttp refuses it (400): let it
            else:
                self._singletons.add(lower)
        # aiohttp's limit, on the field as it came (trailing blanks included); and as
        # aiohttp 3.14 also counts it: a name with the previous field's name, which it
        # has not let go of yet (unless a read ends inside the new name)
        size = len(name)
        if (
            size + len(value) > self._max_field
            or self._last_name + size > self._max_field
            or b"\x00" in value
        ):
            self._plain = False
        self._last_name = size
        # llhttp leaves the blanks after a value on it; aiohttp strips them (RFC 9110 §5.5)
        self._fields.append((spelled, value.rstrip(b" \t").decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        # Read here: llhttp forgets them once the message is complete.
        self._head_done = True
        parser = self._parser
        self._plain = (
            self._plain
            and b"host" in self._singletons
            and len(self._fields) <= _MAX_FIELDS
            and self._url[:1] == b"/"
            and parser.get_method() == b"GET"
            and parser.get_http_version() == "1.1"
            and parser.should_keep_alive()
            and not parser.should_upgrade()
        )

    def on_message_complete(self) -> None:
        self._complete = True

    # -- serving ------------------------------------------------------------------

    def _start(self) -> None:
        if self.server.stopping:  # not begun, so not answered: the client may retry
            self.abort()
            return
        request = FastRequest(
            "GET",
            self._url.decode("utf-8", "surrogateescape"),
            CIMultiDictProxy(CIMultiDict(self._fields)),
            self.remote,
            self.secure,
        )
        raw = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self.serving = self.server.loop.create_task(self.server.serve(self, request, raw))

    def answered_once_taken(self) -> None:
        """`answered`, once the client has taken what was written (back-pressure)."""
        if self._paused and self.transport is not None and not self.transport.is_closing():
            self._answer_pending = True
        else:
            self.answered()

    def answered(self) -> None:
        """The request is answered: read the next one, or close when told to."""
        serving, self.serving = self.serving, None
        if isinstance(serving, ServedAgain):
            # Recorded now, and a stop waits no longer. Nothing to reset: its bytes
            # were never kept nor parsed (data_received).
            serving.taken()
        else:
            self._chunks.clear()
            self._buffered = 0
            self._reset()
        self.idle_since = self.server.loop.time()
        if self.transport is None or self.transport.is_closing():
            return
        if self.server.stopping:
            self.transport.close()
            return
        self.transport.resume_reading()
        if not self._early:  # (the usual case: no list is made for nothing)
            return
        early, self._early, self._early_size = self._early, [], 0
        for data in early:
            protocol = cast(asyncio.Protocol, self.transport.get_protocol())
            if protocol is not self:  # handed over meanwhile: the rest is aiohttp's
                protocol.data_received(data)
            elif self.serving is not None:  # the next request is being served
                self._early.append(data)
                self._early_size += len(data)
            else:
                self.data_received(data)

    def hand_over(self, begun: tuple[float, str] | None = None) -> None:
        """From now on aiohttp serves this connection, starting with every byte that
        arrived since the last answer (none of which has been acted on). `begun`: when
        the first of them began here and the request id it was given, which aiohttp's
        pass keeps (one request, timed and logged once)."""
        transport = self.transport
        self.server.connections.discard(self)
        self.server.handed_over.inc()
        self.serving = None
        if transport is None or transport.is_closing():
            return
        data = b"".join(self._chunks) + b"".join(self._early)
        self._chunks.clear()
        self._early.clear()
        handler = self.server.full_server()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if begun is not None:
            self.server.pipeline.begun[transport] = begun
        # Ours to undo (paused for _early), before aiohttp reads: its own pause must hold.
        transport.resume_reading()
        if data:
            handler.data_received(data)
        if self.server.stopping:
            # Handed over during a stop: aiohttp answers it, then closes; stop() waits.
            handler.close()
            self.server.late.add(handler)

    def write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("the client went away")
        self.transport.write(data)

    async def drain(self) -> None:
        """Until the client has taken enough of what was written (back-pressure)."""
        if not self._paused:
            return
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("the client went away")
        if self._write_ready is None:
            self._write_ready = self.server.loop.create_future()
        await self._write_ready

    def abort(self) -> None:
        """Cut the connection now, whatever is still unsent."""
        if self.transport is not None:
            self.transport.abort()


# Heads aiohttp's reader refuses that httptools before 0.6.4 (its llhttp 8) accepted:
# read more leniently than aiohttp, the fast path would forward what aiohttp refuses.
LENIENT_HEADS = (
    ("a folded field", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: one\r\n two\r\n\r\n"),
    ("a space before the colon", b"GET / HTTP/1.1\r\nHost : a\r\n\r\n"),
    ("a bare LF ending the head", b"GET / HTTP/1.1\r\nHost: a\r\n\n"),
)


def _refuses(head: bytes) -> bool:
    try:
        httptools.HttpRequestParser(object()).feed_data(head)
    except httptools.HttpParserError:
        return True
    return False


def unavailable_reason() -> str | None:
    """Why the fast path cannot run here, or None. Both readers must be llhttp and read
    alike: aiohttp's pure-Python parser refuses things llhttp accepts (two spaces in the
    request line), and an old httptools accepts things aiohttp's llhttp refuses."""
    if HttpRequestParser.__module__ != "aiohttp._http_parser":
        return "aiohttp runs without its C parser (AIOHTTP_NO_EXTENSIONS?)"
    lenient = [name for name, head in LENIENT_HEADS if not _refuses(head)]
    if lenient:
        return (
            f"httptools {httptools.__version__} accepts requests aiohttp refuses"
            f" ({', '.join(lenient)}): upgrade it to 0.6.4 or later"
        )
    return None


class FastServer:
    """One worker's fast path: its listening sockets and connections."""

    def __init__(
        self,
        pipeline: Pipeline,
        full_server: Callable[[], RequestHandler],
        *,
        max_line: int,
        max_field: int,
        idle_timeout: float,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.pipeline = pipeline
        self.full_server = full_server
        self.max_line = max_line
        self.max_field = max_field
        self.idle_timeout = idle_timeout
        self.connections: set[FastConnection] = set()
        self.served = pipeline.metrics.fast_path_served
        self.handed_over = pipeline.metrics.fast_path_handed_over
        self.reused = pipeline.metrics.fast_path_reused
        # Decisions are reused (gateway/reuse.py) unless requests are traced: a span is
        # begun and ended in a request's own task.
        self.reusing = pipeline.observer.tracer is None
        self.plans = Plans()
        # Forward-auth passes' heads, by their headers (`page_parts`).
        self._passes: dict[tuple[str, tuple[tuple[str, str], ...]], RelayedHead] = {}
        self.stopping = False
        self._servers: list[asyncio.Server] = []
        self.late: set[RequestHandler] = set()
        self._sweeper: asyncio.TimerHandle | None = None

    async def listen(
        self, sockets: Iterable[socket.socket] | None, addresses: Iterable[ListenAddress]
    ) -> None:
        """Serve on `sockets` (given by the supervisor), else bind `addresses` as aiohttp's
        TCPSite would. Raises (with nothing left listening) when one cannot be had."""
        try:
            if sockets is not None:
                for sock in sockets:
                    self._servers.append(await self.loop.create_server(self._connect, sock=sock))
            else:
                for address in addresses:
                    self._servers.append(
                        await self.loop.create_server(
                            self._connect, address.host, address.port, reuse_port=True
                        )
                    )
        except BaseException:
            for server in self._servers:
                server.close()
            raise
        self._sweeper = self.loop.call_later(1.0, self._sweep)

    def _connect(self) -> FastConnection:
        return FastConnection(self)

    @property
    def sockets(self) -> list[socket.socket]:
        return [sock for server in self._servers for sock in server.sockets]

    def _sweep(self) -> None:
        """Close connections idle too long, or slow to send a whole head (slowloris):
        the same bound as aiohttp's, counted from the last answer. Time out reused
        exchanges. Re-armed first: nothing one connection does may end the sweeping
        (reused exchanges' read timeouts depend on it)."""
        self._sweeper = self.loop.call_later(1.0, self._sweep)
        horizon = self.loop.time() - self.idle_timeout
        for conn in list(self.connections):
            try:
                serving = conn.serving
                if serving is None:
                    if conn.idle_since <= horizon and conn.transport is not None:
                        conn.transport.close()
                elif isinstance(serving, ServedAgain):
                    serving.check_time()  # its read timeout (it has no timer of its own)
            except Exception:
                log.exception("unhandled error sweeping a fast-path connection")
                conn.abort()
        self.plans.forget_expired(self.loop.time())

    async def stop(self, grace: float) -> None:
        """Stop accepting; close idle connections; let requests being served finish
        (for up to `grace` seconds), then close what is left."""
        self.stopping = True
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            if conn.serving is None and conn.transport is not None:
                conn.transport.close()  # flushes what is still unsent, as aiohttp does
        deadline = self.loop.time() + grace
        try:
            busy = [
                c.serving if isinstance(c.serving, asyncio.Task) else c.serving.finished()
                for c in self.connections
                if c.serving is not None
            ]
            if busy:
                await asyncio.wait(busy, timeout=grace)
            if self.late:
                left = max(deadline - self.loop.time(), 0.0)
                await asyncio.gather(*(h.shutdown(left) for h in list(self.late)))
        finally:
            # Swept until now: the read timeouts of reused exchanges still being answered.
            if self._sweeper is not None:
                self._sweeper.cancel()
        for conn in list(self.connections):
            if (
                conn.serving is not None
                or conn.transport is None
                or not conn.transport.is_closing()
            ):
                conn.abort()
        # (From Python 3.12 this also waits for the connections handed to aiohttp, which
        # the runner drains alongside: bounded all the same.)
        closing = [asyncio.ensure_future(server.wait_closed()) for server in self._servers]
        if closing:
            await asyncio.wait(closing, timeout=max(deadline - self.loop.time(), 0.1))
            for waiting in closing:
                waiting.cancel()

    async def serve(self, conn: FastConnection, request: FastRequest, raw: bytes) -> None:
        pipeline = self.pipeline
        started = time.perf_counter()
        peer = request.remote
        peer_trusted = peer_is_trusted(peer, pipeline.trusted_proxies)
        request_id = pipeline.request_id(request, peer_trusted)
        token = pipeline.observer.start(request_id, "GET", started)
        generation = self.plans.generation
        sent: Sent | None = None
        handing_over = False
        try:
            answered: tuple[RelayedHead, bytes] | None = None
            reusable: Callable[[], bool] | None = None
            try:
                outcome = await pipeline.resolve(
                    request, peer, peer_trusted, request_id, final=False
                )
                if isinstance(outcome, HeadersOnly):  # (a forward-auth check)
                    page, reusable = await outcome.check(request)
                    # Encoded here: a page that cannot be written is the pipeline's 500.
                    answered = self.page_parts(page)
            except Exception as exc:
                # A bad request, a store that cannot answer, a bug: the pipeline's own
                # answer, given here (handed over, the store would be asked twice).
                sent = await self._write_page(conn, pipeline.failure(request, exc, request_id))
            else:
                given = peer_trusted and request.headers.get("X-Request-Id") == request_id
                if isinstance(outcome, Allowed):
                    head = self._head(request, outcome)
                    if outcome.reusable is not None and self.reusing:
                        try:
                            self._plan(
                                conn, request, raw, outcome, head, request_id, given, generation
                            )
                        except Exception:  # a plan is an optimisation: never the answer's end
                            log.exception("could not keep a decision for reuse")
                    sent = await self._answer(
                        conn,
                        request,
                        outcome.tenant,
                        request_id,
                        self._forward(conn, head, outcome),
                    )
                elif answered is not None:
                    if reusable is not None and self.reusing:
                        try:
                            self._keep(conn, raw, answered, reusable, request_id, given, generation)
                        except Exception:  # (as a plan: never the answer's end)
                            log.exception("could not keep an answer for reuse")
                    relayed, body = answered
                    sent = await self._write(conn, *relayed.whole(body))
                else:
                    handing_over = True
        except ConnectionResetError:
            conn.abort()  # the client went away while its answer was written
        finally:
            # Cancelled (the client went away): recorded as 499, as the full server does.
            if handing_over:
                pipeline.observer.discard(token)
            else:
                pipeline.observer.finish(token, sent)
        if handing_over:
            conn.hand_over((started, request_id))
        else:
            self._served(conn, sent)

    def _served(self, conn: FastConnection, sent: Sent | None) -> bool:
        """Whether it was answered whole (the connection reads on), else cut short."""
        if sent is None or sent.cut:
            conn.serving = None  # the connection is closed
            return False
        self.served.inc()
        conn.answered()
        return True

    def _head(self, request: FastRequest, allowed: Allowed) -> bytes | None:
        """The request head sent upstream; None when it cannot be sent safely."""
        target, fwd = allowed.target, allowed.forwarded
        # No Content-Length to drop, as the full path does for a GET: a plain request
        # has none (_NOT_PLAIN hands such a request over).
        headers = upstream_request_headers(request, target, allowed.route, fwd)
        try:
            return encode_head("GET", target.request_target(fwd.wire_path, fwd.query), headers)
        except ValueError:
            return None

    def _plan(
        self,
        conn: FastConnection,
        request: FastRequest,
        raw: bytes,
        allowed: Allowed,
        head: bytes | None,
        request_id: str,
        given: bool,
        generation: int,
    ) -> None:
        """Keep the decision for the same bytes from the same peer (gateway/reuse.py)."""
        record = current()
        still_valid = allowed.reusable
        if head is None or record is None or still_valid is None or len(raw) > MAX_PLANNED:
            return
        key = (conn.remote, conn.secure, raw)
        if not self.plans.seen_before(key, generation):  # kept only for bytes that come again
            return
        parts = split_head(head, request_id)
        if parts is None:
            return
        plan = Plan(
            request,
            parts,
            request_id if given else None,
            allowed.target,
            record,
            self.loop.time() + PLAN_SECONDS,
            still_valid,
        )
        self.plans.keep(key, plan, generation)

    def _keep(
        self,
        conn: FastConnection,
        raw: bytes,
        answered: tuple[RelayedHead, bytes],
        still_valid: Callable[[], bool],
        request_id: str,
        given: bool,
        generation: int,
    ) -> None:
        """Keep a forward-auth check's answer for the same bytes from the same peer, as
        a plan is kept (gateway/reuse.py). Never one that names its request id."""
        record = current()
        relayed, body = answered
        if record is None or len(raw) > MAX_PLANNED:
            return
        marker = request_id.encode()
        if marker in relayed.lines or marker in body:
            return
        key = (conn.remote, conn.secure, raw)
        if not self.plans.seen_before(key, generation):  # kept only for bytes that come again
            return
        kept = KeptAnswer(
            relayed,
            body,
            request_id if given else None,
            record,
            self.loop.time() + PLAN_SECONDS,
            still_valid,
        )
        self.plans.keep(key, kept, generation)

    async def _answer(
        self,
        conn: FastConnection,
        request: FastRequest,
        tenant: TenantConfig | None,
        request_id: str,
        forwarding: Awaitable[Sent],
    ) -> Sent:
        try:
            return await forwarding
        except UpstreamError as exc:
            page = self.pipeline.error(request, exc.status, tenant, exc.reason, request_id)
            return await self._write_page(conn, page)
        except ConnectionResetError:
            raise
        except Exception:
            # After the request went upstream nothing is sent twice: the connection is
            # cut, as when an answer breaks off.
            log.exception("unhandled error on the fast path", extra={"request_id": request_id})
            conn.abort()
            return cut_by_error()

    async def _forward(self, conn: FastConnection, head: bytes | None, allowed: Allowed) -> Sent:
        """Forward the request and write the answer (`cut` when it broke off after its
        head was written)."""
        if head is None:
            raise UpstreamError(500, "a request header could not be forwarded safely")
        return await self._send(conn, allowed.target, head)

    async def _send(self, conn: FastConnection, target: UpstreamTarget, head: bytes) -> Sent:
        return await self._relay(conn, await exchange(target, "GET", head, None, False))

    # -- reused decisions (gateway/reuse.py) --------------------------------------

    def reuse(self, conn: FastConnection, decided: Decided) -> None:
        """Serve the request a decision was made for, on that decision: forward it
        (a plan), or give the answer kept for it (a forward-auth check)."""
        if self.stopping:  # not begun, so not answered: the client may retry
            conn.abort()
            return
        request_id = decided.given_id or next_request_id()
        record = decided.record(request_id, time.perf_counter())
        if isinstance(decided, KeptAnswer):
            given = GivenAgain(self, conn, record)
            conn.serving = given
            given.give(decided)
            return
        plan = cast(Plan, decided)
        head = b"".join((plan.head_before, request_id.encode(), plan.head_after))
        upstream = plan.upstreams.begin(plan.target.address, head)
        if upstream is None:  # no idle connection: one is made, in a task
            conn.serving = self.loop.create_task(self.reused_in_task(conn, plan, record, head))
        else:
            conn.serving = ReusedExchange(self, conn, plan, record, head, upstream)

    async def reused_in_task(
        self,
        conn: FastConnection,
        plan: Plan,
        record: RequestRecord,
        sending: bytes | UpstreamResponse,
    ) -> None:
        """A reused decision's request, from sending its `head` on a new connection
        (or relaying a `response` already begun), as `serve` forwards."""
        observer = self.pipeline.observer
        token = observer.adopt(record)
        sent: Sent | None = None
        try:
            if isinstance(sending, bytes):
                forwarding = self._send(conn, plan.target, sending)
            else:
                forwarding = self._relay(conn, sending)
            sent = await self._answer(
                conn, plan.request, plan.tenant, record.request_id, forwarding
            )
        except ConnectionResetError:
            conn.abort()
        finally:
            observer.finish(token, sent)
        if self._served(conn, sent):
            self.reused.inc()

    async def _relay(self, conn: FastConnection, upstream: UpstreamResponse) -> Sent:
        """Write the upstream's answer to the client. When it breaks off after its head
        was written, the connection is cut, and the answer recorded with the status the
        client got and the bytes it got, as on aiohttp's server."""
        async with upstream:
            answer = relayed_head(upstream, "GET")
            if answer.small:
                data, sent = answer.whole(await read_whole(upstream))
                conn.write(data)
                await conn.drain()
                return sent
            conn.write(answer.head(answer.length))
            chunked = answer.length is None and not answer.no_body
            written = 0
            try:
                async for chunk in upstream.iter_chunks():
                    conn.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                    written += len(chunk)
                    await conn.drain()
            except TimeoutError:
                # The head is gone already: all that is left is to cut the connection.
                log.warning("upstream stalled mid-response; closing client connection")
                conn.abort()
                return Sent(answer.status, answer.length, cut=True)
            except UpstreamUnreachable:
                conn.abort()
                return Sent(answer.status, answer.length, cut=True)
            finally:
                note_streamed(written)
            if chunked:
                conn.write(b"0\r\n\r\n")
            await conn.drain()
            return Sent(answer.status, answer.length)

    def page_parts(self, page: web.Response) -> tuple[RelayedHead, bytes]:
        """One of the pipeline's own pages (an error, a forward-auth answer): its head,
        checked, and its body, to be written as aiohttp would. ValueError for what this
        does not write as aiohttp would (cookies, a body that is not bytes, chunks,
        compression), or a header that cannot be written safely (UpstreamError, a
        ValueError): never a page that differs."""
        body = page.body
        if page.cookies or page.chunked or page.compression:
            raise ValueError("a page with cookies, chunks or compression")
        if body is None:
            body = b""
        elif not isinstance(body, bytes):
            raise ValueError("a page whose body is not bytes")
        if page.status == 200 and not body:
            # A forward-auth pass: the same identity headers for every URL a session
            # checks, so its head is made once per set of them (the Date is written
            # when it is sent).
            key = (page.reason, tuple(page.headers.items()))
            head = self._passes.get(key)
            if head is None:
                head = self._page_head(page, body)
                if len(self._passes) >= _PASSES_LIMIT:
                    self._passes.clear()
                self._passes[key] = head
            return head, body
        return self._page_head(page, body), body

    @staticmethod
    def _page_head(page: web.Response, body: bytes) -> RelayedHead:
        headers = CIMultiDict(page.headers)
        headers.popall("Content-Length", None)
        return page_head(page.status, page.reason, headers, len(body))

    def page_bytes(self, page: web.Response) -> tuple[bytes, Sent]:
        """A page's bytes as aiohttp would write them now (`page_parts`)."""
        head, body = self.page_parts(page)
        return head.whole(body)

    async def _write_page(self, conn: FastConnection, page: web.Response) -> Sent:
        return await self._write(conn, *self.page_bytes(page))

    async def _write(self, conn: FastConnection, data: bytes, sent: Sent) -> Sent:
        conn.write(data)
        await conn.drain()
        return sent
