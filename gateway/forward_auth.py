"""Forward-auth at `{prefix}/verify`, for nginx `auth_request`, Traefik `forwardAuth`
and Caddy `forward_auth`: the proxy in front asks, we decide, it forwards.

The original request is described by headers, so they are believed only from
`server.trusted_proxies` (SECURITY.md invariant 2); anyone else is refused. The
original URL goes through the same canonicalisation as a proxied request, so
forward-auth decides on exactly what the proxy in front will forward.
"""

from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import quote, urlsplit

from aiohttp import web

from gateway.canonical import canonical_host, canonical_path, split_target
from gateway.errors import BadRequest
from gateway.request_view import RequestView

_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)


class OriginalRequest(NamedTuple):
    """The request the proxy in front is asking about, canonicalised. (A tuple: made on
    every check, at a third of a frozen dataclass's cost.)"""

    proto: str
    host_header: str  # as the client sent it (validated)
    host: str  # canonical
    path: str  # canonical
    query: str
    method: str
    redirect_capable: bool  # Traefik/Caddy may answer the browser with our 302; nginx may not

    @property
    def url(self) -> str:
        query = f"?{self.query}" if self.query else ""
        return f"{self.proto}://{self.host_header}{self.raw_path}{query}"

    @property
    def raw_path(self) -> str:
        from gateway.canonical import wire_path

        return wire_path(self.path)


# One family or the other, never both: Traefik and Caddy copy the client's own headers
# to the verify request and set only X-Forwarded-*, so a client-sent X-Original-URL
# beside them would choose what is decided on while the proxy forwards something else.
_ORIGINAL = ("X-Original-URL", "X-Original-Method")
_FORWARDED = ("X-Forwarded-Uri", "X-Forwarded-Method", "X-Forwarded-Host", "X-Forwarded-Proto")
_FAMILIES = (*_ORIGINAL, *_FORWARDED)
# Anything urlsplit would quietly drop or cut (a fragment, tabs, controls): refused.
_UNSAFE_URL = re.compile(r"[\x00-\x20\x7f#]")


def original_request(request: RequestView, path_parameters: str) -> OriginalRequest:
    """Read X-Original-URL/-Method (nginx), else X-Forwarded-Proto/-Host/-Uri/-Method
    (Traefik, Caddy): one family, each header once, or 400."""
    headers = request.headers
    present = [name for name in _FAMILIES if name in headers]  # (most checks send one)
    for name in present:
        if len(headers.getall(name)) > 1:
            raise BadRequest(f"forward-auth: {name} more than once")
    nginx_style = "X-Original-URL" in present or "X-Original-Method" in present
    if nginx_style and ("X-Forwarded-Uri" in present or "X-Forwarded-Method" in present):
        raise BadRequest("forward-auth: X-Original-* and X-Forwarded-Uri/-Method together")
    method = (
        headers.get("X-Original-Method" if nginx_style else "X-Forwarded-Method") or "GET"
    ).upper()
    if method not in _METHODS:
        raise BadRequest("forward-auth: unknown method")
    original = headers.get("X-Original-URL")
    if nginx_style and not original:
        raise BadRequest("forward-auth: X-Original-Method without X-Original-URL")
    if original:
        if _UNSAFE_URL.search(original):
            raise BadRequest("forward-auth: X-Original-URL has a fragment or a control character")
        parts = urlsplit(original)
        if parts.scheme not in ("http", "https") or not parts.netloc or "@" in parts.netloc:
            raise BadRequest("forward-auth: X-Original-URL must be an absolute http(s) URL")
        proto, host_header, raw_path, query = parts.scheme, parts.netloc, parts.path, parts.query
        redirect_capable = False
    else:
        host_header = headers.get("X-Forwarded-Host", "")
        uri = headers.get("X-Forwarded-Uri", "")
        if not host_header or not uri:
            raise BadRequest("forward-auth: send X-Original-URL, or X-Forwarded-Host and -Uri")
        proto = headers.get("X-Forwarded-Proto", "https").lower()
        if proto not in ("http", "https"):
            raise BadRequest("forward-auth: X-Forwarded-Proto must be http or https")
        raw_path, query = split_target(uri)
        redirect_capable = True
    return OriginalRequest(
        proto=proto,
        host_header=host_header,
        host=canonical_host(host_header),
        path=canonical_path(raw_path or "/", path_parameters=path_parameters),  # type: ignore[arg-type]
        query=query,
        method=method,
        redirect_capable=redirect_capable,
    )


def login_redirect(original: OriginalRequest, prefix: str) -> web.Response:
    """302 to the interstitial on the original host, coming back to the original URL."""
    location = (
        f"{original.proto}://{original.host_header}{prefix}/login?rd={quote(original.url, safe='')}"
    )
    return web.Response(status=302, headers={"Location": location, "Cache-Control": "no-store"})
