"""A lean HTTP/1.1 client for upstreams: a keep-alive pool, bodies streamed both ways,
and a read timeout counted from the last byte that moved either way.

Why not aiohttp's ClientSession (which WebSockets still use): per proxied request it
builds a ClientRequest, runs its header and cookie machinery, and arms several timers;
on the bypass-route benchmark that was about a third of authgate's CPU per request.
This client does only what a reverse proxy needs: write a head we have already
filtered, parse the answer with llhttp (httptools, the parser uvicorn uses), hand the
body over as it arrives with back-pressure, and reuse the connection when the answer
was read to its end.

Errors are two: `UpstreamUnreachable` (→ 502) and `TimeoutError` (→ 504).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import ssl
from collections.abc import AsyncIterator, Callable, Container, Iterable
from typing import NamedTuple, Protocol, cast

import httptools
from aiohttp import StreamReader
from multidict import CIMultiDict

from gateway.forwarding import tokens_of, with_tokens

log = logging.getLogger("authgate.proxy")

# An upstream that sends more head than this is broken or hostile; it gets a 502.
MAX_HEAD_BYTES = 65536
# Past this many buffered body bytes the upstream socket stops being read until the
# client has taken some (a 1 GiB download costs a few buffers, not a GiB).
HIGH_WATER = 262144
LOW_WATER = 65536
# More 1xx answers than this before the real one: the upstream is broken.
MAX_INTERIM = 16
# The largest answer kept whole as `one_read` (it stays referenced while the connection
# waits in the pool: a big one would hold its bytes for nothing).
ONE_READ_KEPT = 4096
# Methods a request may be sent again on a fresh connection when a kept-alive one
# turns out to have been closed by the upstream (RFC 9110 §9.2.2).
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class UpstreamUnreachable(Exception):
    """No connection, a broken answer, or the upstream hung up: the caller says 502."""


class _Disconnected(UpstreamUnreachable):
    """The connection closed before a byte of the answer came (maybe safe to retry)."""


class Origin(NamedTuple):
    """Where to connect: one keep-alive pool per origin. A tuple, not a dataclass: it
    keys the idle pools on every pooled request, and a tuple hashes in C (a frozen
    dataclass's `__hash__` is Python, called twice a request)."""

    host: str
    port: int
    tls: ssl.SSLContext | None = None

    @classmethod
    def parse(cls, scheme: str, host: str, port: int | None) -> Origin:
        if scheme == "https":
            return cls(host, port or 443, ssl.create_default_context())
        return cls(host, port or 80, None)


class ConnectionWatch(Protocol):
    """Told of every upstream connection opened and closed (the metrics)."""

    def opened(self) -> None: ...

    def closed(self) -> None: ...


class _Unwatched:
    def opened(self) -> None:
        pass

    def closed(self) -> None:
        pass


class _Connection(asyncio.Protocol):
    """One upstream connection; carries one exchange at a time."""

    def __init__(self, pool: UpstreamClient, origin: Origin) -> None:
        self.pool = pool
        self.origin = origin
        self._loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._counted = False  # told the watch it opened, and not yet that it closed
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._timer: asyncio.TimerHandle | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._write_ready: asyncio.Future[None] | None = None
        self._paused_writing = False
        self._paused_reading = False
        self._failure: BaseException | None = None
        # Told of every step of the answer instead of a waiting coroutine (the fast
        # path's reused decisions drive an exchange from callbacks, with no task).
        self.listener: Callable[[], None] | None = None
        self._fed = True  # (so that start sets every field below)
        self.start(head_only=False)

    # -- the exchange -------------------------------------------------------------

    def start(self, *, head_only: bool) -> None:
        """Ready for the next exchange. The parser is reused: a connection is only
        reused after a complete answer, where llhttp starts afresh (HEAD answers, which
        it cannot frame, end theirs)."""
        self._last_progress = self._loop.time()  # the last byte read, or body byte sent
        if self._paused_reading and self.transport is not None:
            self._paused_reading = False
            self.transport.resume_reading()
        self.head_only = head_only
        self._woken = False
        self.started = False  # a byte of the answer has arrived
        self.head_done = False
        self.complete = False
        # The whole answer, when it came in one read and nothing else did (reuse.py
        # relays an answer it has seen before without reading it again).
        self.one_read: bytes | None = None
        # Set by reuse.py for one exchange: answers whose very bytes, read from the start
        # of a message, were parsed before into one whole final keep-alive answer. The
        # same bytes again are taken as that without parsing them (llhttp ends where it
        # began, at the start of a message, either way).
        self.known_answers: Container[bytes] | None = None
        self.keep_alive = True  # (also changed by close and failures, not only by llhttp)
        if not self._fed:
            # The last answer was a known one, never parsed: the fields below, which only
            # llhttp's callbacks change, are still as the last start set them. (Only a
            # reusable connection is started again: no failure, no body left.)
            return
        self._fed = False
        self.status = 0
        self.reason = b""
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._interim = False
        self._interims = 0
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0

    # -- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not registered as asyncio.Transport subclasses.
        self.transport = cast(asyncio.Transport, transport)
        self._counted = True
        self.pool.watch.opened()

    def uncount(self) -> None:
        """Tell the watch this connection is gone, once, whoever notices first:
        uvloop closes a connection whose `create_connection` was cancelled after
        `connection_made` without ever calling `connection_lost`."""
        if self._counted:
            self._counted = False
            self.pool.watch.closed()

    def abandon(self) -> None:
        """A connection made for a `create_connection` that did not return (cancelled)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self.uncount()

    def data_received(self, data: bytes) -> None:
        self._last_progress = self._loop.time()
        if self.complete or self._failure is not None:
            # Bytes nobody asked for (after a complete answer, or an idle connection):
            # the upstream is out of step; never read them as the next answer.
            self._fail(UpstreamUnreachable("the upstream sent bytes out of turn"))
            self._tell()
            return
        first = not self.started
        self.started = True
        if (
            first
            and self.known_answers is not None
            and len(data) <= ONE_READ_KEPT  # (no hash of a big read for nothing)
            and data in self.known_answers
        ):
            self.head_done = self.complete = True
            self.one_read = data
            # Never fed to llhttp, so nothing to wait for before telling (_wake, _tell).
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            elif self.listener is not None:
                self.listener()
            return
        self._fed = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamUnreachable("the upstream switched protocols unasked"))
        except httptools.HttpParserError as exc:
            # What our callbacks raise comes back wrapped (HttpParserCallbackError).
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, _OutOfTurn):
                self._fail(UpstreamUnreachable("the upstream sent bytes out of turn"))
            elif isinstance(cause, _HeadTooLarge):
                self._fail(UpstreamUnreachable("the upstream's response head is too large"))
            else:
                self._fail(UpstreamUnreachable(f"the upstream's answer is not HTTP/1.1: {exc}"))
        if first and self.complete and self._failure is None and len(data) <= ONE_READ_KEPT:
            self.one_read = data
        self._tell()

    def eof_received(self) -> bool | None:
        self._ended()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        self._ended()
        if self._write_ready is not None and not self._write_ready.done():
            self._write_ready.set_exception(UpstreamUnreachable("the upstream hung up"))
        self.uncount()

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        if self._write_ready is not None and not self._write_ready.done():
            self._write_ready.set_result(None)

    def _ended(self) -> None:
        """The upstream closed its side: an answer delimited by the close is complete."""
        if self.complete or self._failure is not None:
            return
        if self.head_done and not self._framed():
            self.complete = True
            self.keep_alive = False
            self._wake()
        elif self.started:
            self._fail(UpstreamUnreachable("the upstream hung up mid-answer"))
        else:
            self._fail(_Disconnected("the upstream closed the connection"))
        self._tell()

    def _framed(self) -> bool:
        """Whether the answer says how long it is (else the close ends it): a
        Content-Length, or `chunked` as the last transfer coding (RFC 9112 §6.3)."""
        codings = b""
        for name, value in self.raw_headers:
            lower = name.lower()
            if lower == b"content-length":
                return True
            if lower == b"transfer-encoding":
                codings = value
        return codings.rsplit(b",", 1)[-1].strip().lower() == b"chunked"

    # -- llhttp callbacks ---------------------------------------------------------

    def on_message_begin(self) -> None:
        # A second answer in the same packet as the first: llhttp would parse it into
        # this exchange (and the pool would hand its rest to the next client).
        if self.complete:
            raise _OutOfTurn
        if self._interims > MAX_INTERIM:
            raise _HeadTooLarge

    def on_status(self, status: bytes) -> None:
        self.reason += status
        self._count(len(status))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        self.raw_headers.append((name, value))

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            raise _HeadTooLarge

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            # An interim answer (100 Continue, 103 Early Hints): not the response.
            self._interim = True
            return
        self.status = status
        self.head_done = True
        self.keep_alive = self._parser.should_keep_alive()
        if self.head_only:
            # llhttp cannot be told a HEAD answer has no body; the exchange ends here
            # and the connection is not reused: its parser would wait for the body, and
            # a body the upstream sends anyway would be read as the next request's
            # answer, perhaps another user's. HEAD is rare; one connection is cheap.
            self.complete = True
            self.keep_alive = False
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.head_only:
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._paused_reading and self.transport:
            self._paused_reading = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            # The head budget (MAX_HEAD_BYTES) covers the interim answers too, and there
            # may be MAX_INTERIM of them: a stream of 1xx cannot keep a request forever.
            self._interim = False
            self._interims += 1
            self.reason = b""
            self.raw_headers = []
            return
        self.complete = True
        self._wake()

    # -- waiting ------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        elif self.listener is not None:
            # Told once llhttp has returned, not from inside its callback: what the
            # listener does (end the exchange, pool the connection, start the next one
            # on it) must not happen while this packet is still being parsed.
            self._woken = True

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc
        self.keep_alive = False
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.close()
        self._woken = self.listener is not None

    @property
    def failure(self) -> BaseException | None:
        """Why the exchange failed, if it did."""
        return self._failure

    def closed_before_answering(self) -> bool:
        """Closed by the upstream while idle, before a byte of the answer: a request
        that cannot do a thing twice may be sent again on a fresh connection."""
        return isinstance(self._failure, _Disconnected)

    def idle_for(self) -> float:
        """Seconds since the last byte of the answer (or since the request was sent)."""
        return self._loop.time() - self._last_progress

    def _tell(self) -> None:
        """Tell the listener, if any, that the exchange moved on (outside llhttp)."""
        if self._woken:
            self._woken = False
            if self.listener is not None:
                self.listener()

    async def _wait(self, limit: float) -> None:
        """Until something arrives; TimeoutError when nothing has for `limit` s."""
        if self._failure is not None:
            raise self._failure
        waiter = self._waiter = self._loop.create_future()
        self._timer = self._loop.call_later(limit, self._check_timeout, waiter, limit)
        try:
            await waiter
        finally:
            self._timer.cancel()
            self._waiter = None

    def _check_timeout(self, waiter: asyncio.Future[None], timeout: float) -> None:
        if waiter.done():
            return
        idle = self._loop.time() - self._last_progress
        if idle >= timeout:
            waiter.set_exception(TimeoutError())
        else:  # bytes moved meanwhile: the clock restarts from then
            self._timer = self._loop.call_later(
                timeout - idle, self._check_timeout, waiter, timeout
            )

    async def read_head(self, limit: float) -> None:
        while not self.head_done:
            await self._wait(limit)

    async def read_chunk(self, limit: float) -> bytes:
        """The next piece of the body, b"" at its end."""
        while not self._chunks:
            if self.complete:
                return b""
            await self._wait(limit)
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._paused_reading and self._buffered <= LOW_WATER and self.transport:
            self._paused_reading = False
            self.transport.resume_reading()
        return chunk

    async def read_body(self, limit: float) -> bytes:
        while not self.complete:
            await self._wait(limit)
        return self.take_body()

    def take_body(self) -> bytes:
        """The body of a complete answer, all of it (read_body's end, for a caller
        told of completion by the listener)."""
        assert self.complete
        body = b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        return body

    # -- writing ------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._failure is not None:
            raise self._failure
        assert self.transport is not None
        self.transport.write(data)

    def progressed(self) -> None:
        """Request body bytes went out: the read timeout counts from now."""
        self._last_progress = self._loop.time()

    async def drain(self) -> None:
        if self._paused_writing and not self.closed:
            self._write_ready = self._loop.create_future()
            await self._write_ready

    def body_sent(self, sending: asyncio.Task[None]) -> None:
        """A streamed request body that broke off (the client went away) leaves the
        upstream waiting for the rest: end the exchange now, not at the read timeout."""
        if sending.cancelled():
            return
        if sending.exception() is not None:
            self._fail(UpstreamUnreachable("the request body broke off"))

    # -- reuse --------------------------------------------------------------------

    def release(self) -> None:
        """Pool this connection when its answer was read to the end; else close it."""
        if self.reusable():
            self.pool.keep(self)
        else:
            self.close()
            self.pool.forget(self)

    def reusable(self) -> bool:
        # Paused or holding unread bytes, a pooled connection would hand whatever the
        # upstream sent meanwhile to the next client: such a connection is closed.
        return (
            not self._paused_reading
            and not self._chunks
            and self.complete
            and self.keep_alive
            and self._failure is None
            and not self.closed
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def close(self) -> None:
        self.keep_alive = False
        if self.transport is not None:
            self.transport.close()


class _HeadTooLarge(Exception):
    pass


class _OutOfTurn(Exception):
    pass


class UpstreamResponse:
    """An upstream's answer: status and headers at once, the body as it comes.

    Use as an async context manager: on leaving, the connection returns to the pool
    when the answer was read to its end, and is closed otherwise."""

    def __init__(
        self, conn: _Connection, read_timeout: float, sending: asyncio.Task[None] | None
    ) -> None:
        self._conn = conn
        self._read_timeout = read_timeout
        self._sending = sending
        self.status = conn.status
        # Only a printable ASCII reason is passed on: aiohttp's writer refuses control
        # characters (a 500) and would re-encode other bytes; "" means the standard one.
        self.reason = conn.reason.decode("ascii") if _PRINTABLE.fullmatch(conn.reason) else ""
        self.raw_headers = conn.raw_headers

    def headers(self, drop: frozenset[str]) -> CIMultiDict[str]:
        """The headers not in `drop` (lowercase) nor named by `Connection`, in order."""
        connection = [
            v.decode("latin-1") for k, v in self.raw_headers if k.lower() == b"connection"
        ]
        dropped = with_tokens(drop, tokens_of(connection)) if connection else drop
        out: CIMultiDict[str] = CIMultiDict()
        for key, value in self.raw_headers:
            name = key.decode("utf-8", "surrogateescape")
            if name.lower() in dropped:
                continue
            try:
                text = value.decode("utf-8")
            except UnicodeDecodeError:
                # aiohttp's writer would silently drop the undecodable bytes, and a
                # value with bytes missing can mean something else (a Location, a
                # Set-Cookie): the header is left out whole, and said so. Without a
                # protective header the page would be less safe than the upstream
                # meant: that answer is not forwarded at all (502).
                if name.lower() in PROTECTIVE:
                    raise UpstreamUnreachable(
                        f"the upstream's {name} header is not UTF-8 and cannot be forwarded"
                    ) from None
                _unwritable(name)
                continue
            out.add(name, text)
        return out

    async def read(self) -> bytes:
        return await self._conn.read_body(self._read_timeout)

    def take_body(self) -> bytes:
        """The whole body of an answer that is complete (its connection said so)."""
        return self._conn.take_body()

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        while chunk := await self._conn.read_chunk(self._read_timeout):
            yield chunk

    async def __aenter__(self) -> UpstreamResponse:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.release()

    async def release(self) -> None:
        self.finish()

    def finish(self) -> None:
        """Pool the connection when its answer was read to the end; else close it."""
        sending = self._sending
        conn = self._conn
        if sending is not None and not sending.done():
            # The upstream answered before taking the whole request body; that
            # connection's framing is lost.
            sending.cancel()
            conn.close()
        conn.release()


RequestBody = bytes | StreamReader | None


# Response headers whose loss would leave the browser less protected than the upstream
# asked for: an answer carrying one we cannot forward whole is not forwarded.
PROTECTIVE = frozenset(
    {
        "content-security-policy",
        "strict-transport-security",
        "x-frame-options",
        "x-content-type-options",
        "referrer-policy",
        "permissions-policy",
        "cross-origin-opener-policy",
        "cross-origin-embedder-policy",
        "cross-origin-resource-policy",
    }
)
_PRINTABLE = re.compile(rb"[\t\x20-\x7e]*")

_WARNED: set[str] = set()


def _unwritable(name: str) -> None:
    """Warn once per header name and process (bounded: names come from upstreams)."""
    key = name.lower()
    if key in _WARNED or len(_WARNED) >= 256:
        return
    _WARNED.add(key)
    log.warning(
        "an upstream response header is not UTF-8 and was left out (warned once per name)",
        extra={"header": name},
    )


class UpstreamClient:
    """Keep-alive connections to every upstream, reused last-in first-out."""

    def __init__(
        self,
        keepalive_timeout: float = 30.0,
        max_idle_per_origin: int = 512,
        watch: ConnectionWatch | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.watch: ConnectionWatch = watch if watch is not None else _Unwatched()
        self.keepalive_timeout = keepalive_timeout
        self.max_idle_per_origin = max_idle_per_origin
        self._idle: dict[Origin, list[_Connection]] = {}
        self._busy: set[_Connection] = set()
        self._sweeper: asyncio.TimerHandle | None = None

    def keep(self, conn: _Connection) -> None:
        self._busy.discard(conn)
        idle = self._idle.get(conn.origin)
        if idle is None:  # (not setdefault: that would make a list every time)
            idle = self._idle[conn.origin] = []
        if len(idle) >= self.max_idle_per_origin:
            conn.close()
            return
        conn.idle_since = self.loop.time()
        idle.append(conn)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self.keepalive_timeout, self._sweep)

    def forget(self, conn: _Connection) -> None:
        self._busy.discard(conn)
        idle = self._idle.get(conn.origin)
        if idle and conn in idle:
            idle.remove(conn)

    def _sweep(self) -> None:
        self._sweeper = None
        horizon = self.loop.time() - self.keepalive_timeout
        pending = False
        for idle in self._idle.values():
            for conn in [c for c in idle if c.idle_since <= horizon]:
                idle.remove(conn)
                conn.close()
            pending = pending or bool(idle)
        if pending:
            self._sweeper = self.loop.call_later(self.keepalive_timeout, self._sweep)

    async def _connect(self, origin: Origin, limit: float) -> _Connection:
        made: list[_Connection] = []

        def factory() -> _Connection:
            made.append(_Connection(self, origin))
            return made[-1]

        try:
            async with asyncio.timeout(limit):
                _, conn = await self.loop.create_connection(
                    factory, origin.host, origin.port, ssl=origin.tls
                )
        except BaseException as exc:
            for abandoned in made:  # a timeout or a cancelled request, after the connect
                abandoned.abandon()
            if isinstance(exc, TimeoutError):
                raise  # an OSError too, but a 504, not a 502
            if isinstance(exc, (OSError, ssl.SSLError)):
                raise UpstreamUnreachable(f"cannot connect: {exc}") from exc
            raise
        return conn

    def _idle_connection(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        horizon = self.loop.time() - self.keepalive_timeout
        while idle:
            conn = idle.pop()
            if conn.reusable() and conn.idle_since > horizon:
                return conn
            conn.close()
        return None

    def begin(self, origin: Origin, head: bytes) -> _Connection | None:
        """Send a bodiless GET's `head` on an idle kept-alive connection, now; None when
        there is none (then `request` connects). The caller reads the answer through
        the connection's `listener` and ends the exchange with `UpstreamResponse.finish`."""
        conn = self._idle_connection(origin)
        if conn is None:
            return None
        self._busy.add(conn)
        conn.start(head_only=False)
        conn.write(head)
        return conn

    async def request(
        self,
        origin: Origin,
        method: str,
        head: bytes,
        body: RequestBody,
        *,
        chunked: bool,
        connect_timeout: float,
        read_timeout: float,
    ) -> UpstreamResponse:
        """Send `head` (request line and headers, already encoded) and the body; return
        once the answer's head has come. `chunked`: frame a streamed body in chunks."""
        conn = self._idle_connection(origin)
        if conn is not None:
            try:
                return await self._exchange(conn, method, head, body, chunked, read_timeout)
            except _Disconnected:
                # Closed by the upstream while idle. Sent again only when that cannot
                # do a thing twice and the body can still be replayed.
                if method not in IDEMPOTENT or isinstance(body, StreamReader):
                    raise
        conn = await self._connect(origin, connect_timeout)
        return await self._exchange(conn, method, head, body, chunked, read_timeout)

    async def _exchange(
        self,
        conn: _Connection,
        method: str,
        head: bytes,
        body: RequestBody,
        chunked: bool,
        read_timeout: float,
    ) -> UpstreamResponse:
        self._busy.add(conn)
        conn.start(head_only=method == "HEAD")
        sending: asyncio.Task[None] | None = None
        try:
            if isinstance(body, StreamReader):
                conn.write(head)
                sending = asyncio.ensure_future(_send_stream(conn, body, chunked))
                sending.add_done_callback(conn.body_sent)
            elif body:
                conn.write(head + body)
            else:
                conn.write(head)
            await conn.read_head(read_timeout)
        except BaseException:
            if sending is not None:
                sending.cancel()
            conn.close()
            self._busy.discard(conn)
            raise
        return UpstreamResponse(conn, read_timeout, sending)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        for conn in list(self._busy):
            conn.close()
        self._busy.clear()


async def _send_stream(conn: _Connection, body: StreamReader, chunked: bool) -> None:
    """Copy a streamed request body upstream, pausing while the upstream is slow."""
    while chunk := await body.readany():
        conn.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
        await conn.drain()
        conn.progressed()  # an upload that moves is not an upstream that hangs
    if chunked:
        conn.write(b"0\r\n\r\n")


# Control characters other than HTAB (and the CR LF we put between lines ourselves):
# never in a header value we write, never in the request target (RFC 9110 §5.5). A
# table for bytes.translate marking them 0 and every other byte 1: one pass in C, about
# five times faster than a regex over a head of a kilobyte (most of it a JWT). UTF-8
# never puts an ASCII byte inside a longer character, so the encoded head is checked.
_CONTROL_TABLE = bytes(
    0 if (byte < 0x20 and byte not in (0x09, 0x0A, 0x0D)) or byte == 0x7F else 1
    for byte in range(256)
)


def encode_head(method: str, target: str, headers: Iterable[tuple[str, str]]) -> bytes:
    """The request line and headers as bytes; ValueError when any part would break the
    framing (a control character in a value, a space, tab or '#' in the target)
    instead of smuggling."""
    lines = [f"{method} {target} HTTP/1.1"]
    lines.extend([f"{name}: {value}" for name, value in headers])
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")
    if has_control(head, len(lines)) or " " in target or "\t" in target or "#" in target:
        raise ValueError("a request header or the target contains a control character")
    return head


def has_control(head: bytes, lines: int) -> bool:
    """Whether a head of `lines` lines joined by CR LF (and ended by an empty line)
    holds a control character or a CR or LF of its own: one pass of a table and two
    counts, cheaper than checking every value."""
    return (
        head.translate(_CONTROL_TABLE).find(0) != -1
        or head.count(b"\n") != lines + 1
        or head.count(b"\r") != lines + 1
    )
