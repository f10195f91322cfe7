"""Answers written to a client socket as aiohttp's server writes them, for the fast
path (`gateway/fast_path.py`) and its reused decisions (`gateway/reuse.py`)."""

from __future__ import annotations

from http import HTTPStatus
from typing import NamedTuple

from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE
from multidict import CIMultiDict

from gateway.forwarding import BODILESS_STATUSES
from gateway.proxy import UpstreamError
from gateway.upstream_client import has_control

_PHRASES = {status.value: status.phrase for status in HTTPStatus}


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


def response_head(
    status: int, reason: str | None, headers: CIMultiDict[str], length: int | None
) -> bytes:
    """The status line and headers as aiohttp's server writes them for a proxied answer
    (the same Content-Type default, Date and Server), so that a client cannot tell the
    two paths apart. `length`: a Content-Length, else a body in chunks."""
    phrase = reason if reason is not None else _PHRASES.get(status, "")
    lines = [f"HTTP/1.1 {status} {phrase}"]
    lines.extend(f"{name}: {value}" for name, value in headers.items())
    if status not in BODILESS_STATUSES:
        if length is None:
            lines.append("Transfer-Encoding: chunked")
        else:
            lines.append(f"Content-Length: {length}")
        if length != 0 and "Content-Type" not in headers:
            lines.append("Content-Type: application/octet-stream")
    elif status == 304 and length is not None:
        lines.append(f"Content-Length: {length}")
    if "Date" not in headers:
        lines.append(f"Date: {rfc822_formatted_time()}")
    if "Server" not in headers:
        lines.append(f"Server: {SERVER_SOFTWARE}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")
    if has_control(head, len(lines)):
        raise UpstreamError(502, "the upstream's answer head cannot be forwarded safely")
    return head
