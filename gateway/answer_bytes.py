"""Answers written to a client socket as aiohttp's server writes them, for the fast
path (`gateway/fast_path.py`) and its reused decisions (`gateway/reuse.py`)."""

from __future__ import annotations

from http import HTTPStatus
from typing import NamedTuple

from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE
from multidict import CIMultiDict

from gateway.forwarding import BODILESS_STATUSES, RESPONSE_HOP_BY_HOP, tokens_of
from gateway.proxy import SMALL_BODY, UpstreamError, answer_head
from gateway.upstream_client import UpstreamResponse, has_control

_PHRASES = {status.value: status.phrase for status in HTTPStatus}
_DROPPED = frozenset(name.encode("ascii") for name in RESPONSE_HOP_BY_HOP)
# Whether a `Connection` value names more than `_DROPPED`: at most 256 values kept, none
# longer than 128 bytes (values come from upstreams, and a head may be large).
_NAMES_MORE: dict[bytes, bool] = {}
_NAMES_MORE_KEPT_BYTES = 128
_UNSAFE_HEAD = "the upstream's answer head cannot be forwarded safely"


class Sent(NamedTuple):
    """What the access log and metrics read of an answer the fast path wrote. Never
    changed once made: a remembered answer's one Sent stands for every relay of it."""

    status: int
    content_length: int | None  # a streamed answer's bytes are noted as they go
    # The connection was cut short after the request went upstream: recorded with the
    # status the client got (or 500), as aiohttp's server records it, but the
    # connection is not read on.
    cut: bool = False


def cut_by_error() -> Sent:
    """An unexpected error after the request went upstream: nothing is sent twice, the
    connection is cut, and it is recorded as aiohttp's server records a handler's error."""
    return Sent(500, None, cut=True)


class RelayedHead(NamedTuple):
    """An upstream's answer head as the fast path relays it: its framing, and its
    end-to-end headers already as the bytes the client gets, checked. (A tuple: made
    on every relayed answer.)"""

    status: int
    phrase: str
    lines: bytes  # b"Name: value\r\n" for each end-to-end header, in order
    length: int | None  # the body's length, when the upstream framed it by one
    no_body: bool  # none whatever the headers say (HEAD, 204, 304)
    typed: bool  # it names its Content-Type
    dated: bool  # it brings its own Date: its bytes are the same whenever rewritten
    named: bool  # it names its Server

    @property
    def small(self) -> bool:
        """Read whole and written at once with the head."""
        return self.length is not None and not self.no_body and self.length <= SMALL_BODY

    def head(self, length: int | None) -> bytes:
        """The client's head for a body of `length` bytes (None: in chunks), as
        `response_head` writes it."""
        status = self.status
        parts = [f"HTTP/1.1 {status} {self.phrase}\r\n".encode(), self.lines]
        if status not in BODILESS_STATUSES:
            if length is None:
                parts.append(b"Transfer-Encoding: chunked\r\n")
            else:
                parts.append(b"Content-Length: %d\r\n" % length)
            if length != 0 and not self.typed:
                parts.append(b"Content-Type: application/octet-stream\r\n")
        elif status == 304 and length is not None:
            parts.append(b"Content-Length: %d\r\n" % length)
        if not self.dated:
            parts.append(f"Date: {rfc822_formatted_time()}\r\n".encode())
        if not self.named:
            parts.append(_SERVER_LINE)
        parts.append(b"\r\n")
        return b"".join(parts)

    def whole(self, body: bytes) -> tuple[bytes, Sent]:
        """The head and all of `body`, as written now (this second's Date), and what
        the access log and metrics read of it."""
        return self.head(len(body)) + body, Sent(self.status, len(body))


_SERVER_LINE = f"Server: {SERVER_SOFTWARE}\r\n".encode()


def relayed_head(upstream: UpstreamResponse, method: str) -> RelayedHead:
    """What `answer_head` and then `response_head` make of an upstream's answer, in one
    pass over its header bytes instead of through text and a multidict. A head with
    bytes beyond ASCII, or whose `Connection` names more than the usual, takes that way
    itself. Raises UpstreamError (502) for an answer that cannot be forwarded whole."""
    length_value: bytes | None = None
    transfer_coded = False
    connection: list[bytes] | None = None
    parts: list[bytes] = []
    typed = dated = named = False
    for name, value in upstream.raw_headers:
        low = name.lower()
        if low in _DROPPED:
            if low == b"content-length":
                if length_value is None:
                    length_value = value
            elif low == b"transfer-encoding":
                transfer_coded = True
            elif low == b"connection":
                connection = [value] if connection is None else [*connection, value]
            continue
        parts += (name, b": ", value, b"\r\n")
        if low == b"content-type":
            typed = True
        elif low == b"date":
            dated = True
        elif low == b"server":
            named = True
    lines = b"".join(parts)
    if not lines.isascii() or (connection is not None and _names_more(connection)):
        return _relayed_as_text(upstream, method)
    if has_control(lines, len(parts) // 4 - 1):
        raise UpstreamError(502, _UNSAFE_HEAD)
    length = None
    if length_value is not None and length_value.isdigit() and not transfer_coded:
        length = int(length_value)
    status = upstream.status
    return RelayedHead(
        status,
        upstream.reason or _PHRASES.get(status, ""),
        lines,
        length,
        method == "HEAD" or status in BODILESS_STATUSES,
        typed,
        dated,
        named,
    )


def _names_more(connection: list[bytes]) -> bool:
    """Whether these `Connection` values name a header beyond those always dropped
    ("keep-alive" does not; "close" does, as `answer_head` reads it): each distinct
    value is parsed once."""
    key = b",".join(connection)
    found = _NAMES_MORE.get(key)
    if found is None:
        tokens = tokens_of([key.decode("latin-1")])
        found = not tokens <= RESPONSE_HOP_BY_HOP
        if len(_NAMES_MORE) < 256 and len(key) <= _NAMES_MORE_KEPT_BYTES:
            _NAMES_MORE[key] = found
    return found


def _relayed_as_text(upstream: UpstreamResponse, method: str) -> RelayedHead:
    """A head with bytes beyond ASCII, or whose `Connection` names more: through
    `answer_head`, which drops what `Connection` names and leaves out a value that is
    not UTF-8 (refusing the answer when that value protects the page)."""
    answer = answer_head(upstream, method)
    return _from_text(answer.status, answer.reason, answer.headers, answer.length, answer.no_body)


def _from_text(
    status: int,
    reason: str | None,
    headers: CIMultiDict[str],
    length: int | None,
    no_body: bool,
) -> RelayedHead:
    """End-to-end headers as text, encoded and checked (UpstreamError, 502, for any
    that cannot be written safely)."""
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    try:
        encoded = lines.encode("utf-8")
    except UnicodeEncodeError:  # a name that was not UTF-8
        raise UpstreamError(502, _UNSAFE_HEAD) from None
    if has_control(encoded, len(headers) - 1):
        raise UpstreamError(502, _UNSAFE_HEAD)
    return RelayedHead(
        status=status,
        phrase=reason if reason is not None else _PHRASES.get(status, ""),
        lines=encoded,
        length=length,
        no_body=no_body,
        typed="Content-Type" in headers,
        dated="Date" in headers,
        named="Server" in headers,
    )


def page_head(
    status: int, reason: str | None, headers: CIMultiDict[str], length: int | None
) -> RelayedHead:
    """One of our own pages' heads, encoded and checked, framed as a relayed answer is
    (`RelayedHead.head`: the same Content-Type default, Date and Server), so that a
    client cannot tell the two paths apart. `length`: a Content-Length, else a body in
    chunks."""
    return _from_text(status, reason, headers, length, status in BODILESS_STATUSES)


def response_head(
    status: int, reason: str | None, headers: CIMultiDict[str], length: int | None
) -> bytes:
    """The status line and headers as aiohttp's server writes them for one of our own
    pages (`page_head`), with today's Date."""
    return page_head(status, reason, headers, length).head(length)
