"""Where a browser may be sent after login: return URLs that stay home (SECURITY.md invariant 4).

`safe_return_url` accepts a return URL (`rd`) only when it is an absolute http(s) URL,
or a path-absolute one resolved against the current origin, whose canonical host the
gateway protects for the tenant at hand; anything else yields the caller's default.

The rule is "refuse what could be read two ways": Python's `urlsplit` and a browser's
WHATWG parser disagree on backslashes, tabs/newlines, leading/trailing whitespace,
missing or extra slashes after the scheme and numeric hosts, so every such form is
refused outright rather than interpreted, and the host `urlsplit` saw is cross-checked
against the host a browser would see. The URL returned is rebuilt from its parts
(lowercase scheme, canonical host, default port dropped, canonical path) so it is
always absolute: a relative `Location` such as `//evil.com` can never come out.

Pure functions, no aiohttp; the caller hands in the `rd` query value as decoded once by
the framework, the origin of the current request and a host predicate for the tenant:

    safe_return_url(
        request.query.get("rd"),
        is_protected_host=lambda h: tenant_index.tenant_for_host(h) is tenant,
        default=tenant.default_url or f"{origin}/",
        current_origin=origin,
    )
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import SplitResult, quote, unquote_to_bytes, urlsplit

from gateway.canonical import canonical_host, canonical_path, wire_path
from gateway.errors import BadRequest

__all__ = ["MAX_RETURN_URL", "Origin", "login_url", "origin_of", "safe_return_url"]

MAX_RETURN_URL = 2048
"""Longer return URLs are refused: no legitimate page needs more, and it bounds the work."""

_DEFAULT_PORTS = {"http": 80, "https": 443}
# Scheme, then exactly "//", then an authority that does not start with another slash.
# `https:evil.com`, `https:/evil.com` and `https:///evil.com` are all read by browsers as
# host evil.com but by urlsplit as a path, so only the one unambiguous spelling passes.
_ABSOLUTE = re.compile(r"(?i:https?)://[^/]")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_PORT = re.compile(r"[0-9]{1,5}")
# Characters kept literally in the query and fragment of the rebuilt URL: printable ASCII
# but for what browsers encode there themselves (space, `"`, `<`, `>`, backtick); `%`
# stays because every escape was checked. Non-ASCII is encoded as UTF-8.
_QUERY_SAFE = "!#$%&'()*+,-./:;=?@[]^_{|}~"
# Percent-decoding rounds inspected for hidden controls: `%250d` is a CR to anything
# that decodes twice. Beyond a few rounds the URL is refused anyway (see `_controls_hidden`).
_DECODE_ROUNDS = 4
# What WHATWG removes or trims before parsing (and urlsplit too, since 3.11.4): refused,
# never silently dropped, so both parsers and every log line see the same string.
_C0_OR_SPACE = re.compile(r"[\x00-\x20\x7f]")
# Encoded spaces are ordinary (`?q=a%20b`); encoded controls are not.
_ENCODED_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Origin:
    """A web origin with a canonical host: scheme, host (`canonical_host` form) and port."""

    scheme: str  # "http" or "https"
    host: str
    port: int

    def __str__(self) -> str:
        """The serialisation browsers send in `Origin`: default ports left out."""
        if self.port == _DEFAULT_PORTS[self.scheme]:
            return f"{self.scheme}://{self.host}"
        return f"{self.scheme}://{self.host}:{self.port}"


def safe_return_url(
    rd: str | None,
    *,
    is_protected_host: Callable[[str], bool],
    default: str,
    current_origin: str | None = None,
) -> str:
    """`rd` normalised when it leads to a host protected for this tenant, else `default`.

    Accepted: `http(s)://host[:port][/path][?query][#fragment]` with no userinfo, and,
    when `current_origin` (`scheme://host[:port]` of the request) is given, a path
    starting with exactly one `/`. The host handed to `is_protected_host` is canonical
    (lowercase, no port, no trailing dot, IDNA A-labels, IPv6 as `[addr]`). Never raises
    for any `rd`; `default` is returned as given, so it must be trusted.
    """
    if not rd or len(rd) > MAX_RETURN_URL:
        return default
    if rd[0] == "/":
        if len(rd) > 1 and rd[1] in "/\\":
            return default  # protocol-relative: `//evil.com`, `/\evil.com`
        if current_origin is None:
            return default
        base = origin_of(current_origin, bare=True)
        if base is None:
            return default
        rd = f"{base}{rd}"
    url = _parse_unambiguous(rd)
    if url is None:
        return default
    location = _rebuild(url)
    if location is None or not is_protected_host(location.host):
        return default
    return location.url


def login_url(prefix: str, rd: str | None) -> str:
    """The login page under the reserved `prefix`, carrying `rd` fully percent-encoded.

    Every reserved character of `rd` is encoded (`safe=""`), so its `?`, `&` and `#`
    stay inside the one `rd` parameter whatever they contain.
    """
    base = f"{prefix.rstrip('/')}/login"
    if not rd:
        return base
    return f"{base}?rd={quote(rd, safe='')}"


def origin_of(url: str, *, bare: bool = False, max_length: int = MAX_RETURN_URL) -> Origin | None:
    """The origin of an absolute http(s) URL without userinfo, or None.

    With `bare=True` the text must be an origin and nothing else (`scheme://host[:port]`,
    as in an `Origin` header); otherwise a path, query and fragment may follow (a
    `Referer`). Every refusal of `_parse_unambiguous` applies, and text longer than
    `max_length` is refused.
    """
    if len(url) > max_length:
        return None
    parts = _parse_unambiguous(url)
    if parts is None:
        return None
    if bare and (parts.path or "?" in url or "#" in url):
        return None
    try:
        return _authority_origin(parts.scheme.lower(), parts.netloc)
    except BadRequest:
        return None


# --- parsing ---------------------------------------------------------------------------


def _parse_unambiguous(url: str) -> SplitResult | None:
    """`urlsplit(url)` when a browser would read the same scheme and authority, else None."""
    if _C0_OR_SPACE.search(url) or "\\" in url:
        return None  # tabs/newlines are dropped and `\` is `/` to a browser, not to urlsplit
    if not url.isascii() and not _plain_unicode(url):
        return None
    if not _ABSOLUTE.match(url):
        return None
    if _BAD_ESCAPE.search(url) or _controls_hidden(url):
        return None
    try:
        parts = urlsplit(url)
    except ValueError:  # bad IPv6 brackets, NFKC characters that turn into delimiters
        return None
    if not parts.netloc or "@" in parts.netloc:
        return None  # userinfo of any kind: `good.com@evil.com`, `good.com:443@evil.com`
    if _browser_authority(url) != parts.netloc:
        return None
    return parts


def _plain_unicode(url: str) -> bool:
    # Non-ASCII letters are fine (IDN hosts, raw UTF-8 paths); invisible and control
    # characters (C1 controls, zero-width joiners, bidi overrides, exotic spaces) hide
    # what the URL says from the person who reads it, and some parsers strip them.
    return not any(unicodedata.category(c)[0] in "CZ" for c in url if not c.isascii())


def _controls_hidden(url: str) -> bool:
    # A CR/LF/TAB/NUL (or C1 control) that appears after one or more decodings
    # (`%0d%0a`, `%250a`) is refused everywhere, query and fragment included: a consumer
    # that decodes once more must not find a header break or a character a browser
    # strips. Bytes, not text, so escapes of invalid UTF-8 (`%ff`) cannot raise here.
    data = url.encode("utf-8", "surrogatepass")
    for _ in range(_DECODE_ROUNDS):
        if b"%" not in data:
            return False
        decoded = unquote_to_bytes(data)
        if decoded == data:
            return False
        if _ENCODED_CONTROL.search(decoded):
            return True
        if any(unicodedata.category(c) == "Cc" for c in decoded.decode("utf-8", "ignore")):
            return True
        data = decoded
    return unquote_to_bytes(data) != data  # still decoding after many rounds: refused


def _browser_authority(url: str) -> str | None:
    """The authority (userinfo included) a WHATWG parser reads from an http(s) URL.

    A model of the "special authority" states: after `scheme:` any run of `/` and `\\`
    is skipped, and the authority ends at the first `/`, `\\`, `?` or `#`. Leading and
    trailing C0/space and inner tab/LF/CR are removed first, as browsers do.
    """
    text = url.strip("".join(map(chr, range(0x21))))
    text = text.replace("\t", "").replace("\n", "").replace("\r", "")
    scheme, colon, rest = text.partition(":")
    if not colon or not _SCHEME.fullmatch(scheme) or scheme.lower() not in _DEFAULT_PORTS:
        return None
    rest = rest.lstrip("/\\")
    end = len(rest)
    for delimiter in "/\\?#":
        found = rest.find(delimiter)
        if found != -1:
            end = min(end, found)
    return rest[:end]


def _authority_origin(scheme: str, authority: str) -> Origin:
    """Scheme plus `host[:port]` as an `Origin`; `BadRequest` for userinfo or garbage."""
    if "@" in authority:
        raise BadRequest("authority: userinfo is not allowed")
    host, port_text = _split_port(authority)
    port = _DEFAULT_PORTS[scheme]
    if port_text:
        if not _PORT.fullmatch(port_text) or not 0 < int(port_text) <= 65535:
            raise BadRequest("authority: invalid port")
        port = int(port_text)
    return Origin(scheme, canonical_host(host), port)


def _split_port(authority: str) -> tuple[str, str]:
    if authority.startswith("["):
        close = authority.find("]")
        if close == -1:
            raise BadRequest("authority: unclosed IPv6 literal")
        host, rest = authority[: close + 1], authority[close + 1 :]
        if rest and not rest.startswith(":"):
            raise BadRequest("authority: junk after IPv6 literal")
        return host, rest[1:]
    host, _, port = authority.partition(":")
    return host, port


# --- rebuilding ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Location:
    host: str  # canonical, for the tenant check
    url: str  # the normalised absolute URL


def _rebuild(parts: SplitResult) -> _Location | None:
    try:
        origin = _authority_origin(parts.scheme.lower(), parts.netloc)
        # The path goes through the same canonicalisation as request paths: encoded `/`
        # and `\`, double encoding, dot segments and doubled slashes are refused or
        # resolved, so the path sent to the browser is the one the gateway will accept.
        path = wire_path(canonical_path(parts.path or "/", path_parameters="strip"))
    except BadRequest:
        return None
    url = f"{origin}{path}"
    try:
        if parts.query:
            url += "?" + quote(parts.query, safe=_QUERY_SAFE)
        if parts.fragment:
            url += "#" + quote(parts.fragment, safe=_QUERY_SAFE)
    except UnicodeEncodeError:  # lone surrogates
        return None
    return _Location(origin.host, url)
