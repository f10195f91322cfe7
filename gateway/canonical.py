"""Request canonicalisation: one form of host, path and client IP for policy and upstream alike.

SECURITY.md invariants 1 and 2 live here. The policy decides on the canonical path
and exactly that path, re-encoded by `wire_path`, goes upstream; anything that could
be read two ways (encoded `/`, backslashes, NUL, `;` parameters, invalid UTF-8) is
refused with `BadRequest` instead of being guessed at. Pure functions, no aiohttp:
the caller hands in the raw strings (`request.raw_path.split("?", 1)[0]`, the Host
header, `request.remote`, the X-Forwarded-For values).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from functools import lru_cache
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Literal
from urllib.parse import quote, unquote_to_bytes

from gateway.errors import BadRequest

try:  # UTS46 mapping (fullwidth letters, ideographic dots) when the package is present;
    import idna as _idna  # it is, as a dependency of yarl/aiohttp.
except ImportError:  # pragma: no cover - the stdlib IDNA 2003 codec is the fallback
    _idna = None  # type: ignore[assignment]

__all__ = [
    "PathParameters",
    "canonical_host",
    "canonical_path",
    "client_ip",
    "forwarded_for_value",
    "peer_is_trusted",
    "wire_path",
]

PathParameters = Literal["reject", "strip"]
IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

# --- host -------------------------------------------------------------------------------

# Underscores are not LDH, but internal names (docker compose services) use them and they
# delimit nothing, so they are accepted; everything that could delimit is not.
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
# Characters a raw ASCII host may hold before the port is split off; `[`/`]` for IPv6.
_HOST_CHARS = re.compile(r"[A-Za-z0-9._:\[\]-]+")
_IPV6_LITERAL = re.compile(r"\[([0-9A-Fa-f:.]+)\](?::([0-9]*))?")
_PORT = re.compile(r"[0-9]{0,5}")
# A last label that is all digits or hex (`0x7f`) makes resolvers and browsers read the
# host as an IPv4 address (`127.1`, `0x7f.0.0.1`, `017700000001`): only dotted quads pass.
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
_MAX_HOST = 253


# A process sees few distinct hosts and peers, over and over: remember the answers
# (bounded, so a flood of distinct values only costs the uncached time). Refusals
# raise and are never cached.
@lru_cache(maxsize=1024)
def canonical_host(raw: str) -> str:
    """Lowercase host without port or trailing dot, IDNA A-labels, IPv6 as `[addr]`.

    Accepts a Host / :authority / X-Forwarded-Host value; raises `BadRequest` for
    anything that is not a plain host name or IP literal (userinfo, paths, spaces, `%`…).
    """
    if not raw:
        raise BadRequest("host: empty")
    if raw[0] == "[":
        return _canonical_ipv6_host(raw)
    if raw.isascii():
        if not _HOST_CHARS.fullmatch(raw):
            raise BadRequest("host: contains a character that is not allowed in a host name")
        host = _strip_port(raw).lower()
    else:
        host = _idna_host(_strip_port(raw))
    if host.endswith("."):
        host = host[:-1]
    if len(host) > _MAX_HOST:
        raise BadRequest("host: longer than 253 characters")
    if not _HOSTNAME.fullmatch(host):
        raise BadRequest("host: not a valid host name (empty label, label over 63, bad char)")
    last = host.rpartition(".")[2]
    if _NUMERIC_LABEL.fullmatch(last):
        try:
            return str(IPv4Address(host))
        except ValueError:
            raise BadRequest("host: numeric host that is not a dotted-quad IPv4 address") from None
    return host


def _strip_port(raw: str) -> str:
    host, colon, port = raw.rpartition(":")
    if not colon:
        return raw
    if ":" in host:
        raise BadRequest("host: IPv6 address without brackets")
    _check_port(port)
    return host


def _check_port(port: str) -> None:
    # RFC 9110 allows an empty port (`host:`); anything else must be a real port number.
    if not _PORT.fullmatch(port) or (port and int(port) > 65535):
        raise BadRequest("host: invalid port")


def _canonical_ipv6_host(raw: str) -> str:
    match = _IPV6_LITERAL.fullmatch(raw)
    if match is None:
        raise BadRequest("host: malformed IPv6 literal")
    if match.group(2) is not None:
        _check_port(match.group(2))
    try:
        address = IPv6Address(match.group(1))
    except ValueError:
        raise BadRequest("host: malformed IPv6 literal") from None
    return f"[{address.compressed}]"


def _idna_host(host: str) -> str:
    # The ASCII-only grammar check in canonical_host runs on the result, so whatever a
    # mapping produces must still be a plain LDH name to pass.
    try:
        if _idna is not None:
            mapped = _idna.uts46_remap(host, std3_rules=True, transitional=False)
            return ".".join(
                label if label.isascii() else _idna.alabel(label).decode("ascii")
                for label in mapped.split(".")
            )
        return host.encode("idna").decode("ascii").lower()  # pragma: no cover
    except (UnicodeError, ValueError):
        raise BadRequest("host: not a valid internationalised domain name") from None


# --- path -------------------------------------------------------------------------------

# pchar minus `%` and `;`: a path made only of these, with no empty, `.` or `..` segment,
# is already canonical and already safe on the wire, so it is returned untouched.
_SAFE = r"A-Za-z0-9._~!$&'()*+,=:@\-"
_FAST_PATH = re.compile(rf"(?:/(?!\.\.?(?:/|\Z))[{_SAFE}]+)*/?")
_WIRE_SAFE = re.compile(rf"[{_SAFE}/]*")
_WIRE_QUOTE_SAFE = "/:@!$&'()*+,=~"  # quote() always keeps A-Za-z0-9_.-~

_RAW_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_FORBIDDEN_ESCAPE = re.compile(r"%(?:([01][0-9A-Fa-f]|7[Ff])|(2[Ff])|(5[Cc])|(3[Bb]))")
# C1 controls (U+0080-U+009F) can only arrive UTF-8 encoded; they are controls all the same.
_DECODED_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_PARAMETER = re.compile(r";[^/]*")
# What is still an escape after one decoding was encoded twice (%252e): an upstream
# that decodes again would see another path than the one decided on. Refused.
_STILL_ESCAPED = re.compile(r"%[0-9A-Fa-f]{2}")
_DELIMITERS = "/.\\;%?#:@"


def split_target(raw: str) -> tuple[str, str]:
    """A request target's raw path and raw query, or `BadRequest`: a target never
    carries a fragment, in its path or in its query (aiohttp's raw_path keeps one)."""
    if "#" in raw:
        raise BadRequest("target: '#' fragment in the request target")
    path, _, query = raw.partition("?")
    return path, query


def canonical_path(raw: str, *, path_parameters: PathParameters = "reject") -> str:
    """The one decoded form of a request path, or `BadRequest`.

    `raw` is the path as sent, without the query. Percent-escapes are decoded exactly
    once; encoded `/` and `\\`, any backslash, controls, malformed escapes, invalid
    UTF-8 and (in "reject" mode) `;` are refused; empty segments collapse; dot
    segments are removed after decoding and never climb above the root.
    """
    if path_parameters not in ("reject", "strip"):
        raise ValueError(f"path_parameters must be 'reject' or 'strip', not {path_parameters!r}")
    if not raw.startswith("/"):
        raise BadRequest("path: must start with '/' (no absolute-form or relative targets)")
    if raw.isascii() and _FAST_PATH.fullmatch(raw):
        return raw
    if "\\" in raw:
        raise BadRequest("path: backslash is not allowed")
    if "#" in raw:  # aiohttp's raw_path keeps a fragment; a request target may not have one
        raise BadRequest("path: '#' fragment in the request target")
    if "?" in raw:  # the caller splits the query off; a '?' here would become part of the path
        raise BadRequest("path: unexpected '?' (the query must be split off first)")
    if _RAW_CONTROL.search(raw):
        raise BadRequest("path: control character")
    if ";" in raw and path_parameters == "reject":
        raise BadRequest("path: ';' parameters are not allowed")
    if "%" in raw:
        decoded = _decode_once(raw)
    else:
        try:
            raw.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates from a surrogateescape'd request line
            raise BadRequest("path: invalid UTF-8") from None
        decoded = raw
    if _DECODED_CONTROL.search(decoded):
        raise BadRequest("path: control character")
    if not decoded.isascii():
        _check_compatibility_forms(decoded)
    if ";" in decoded:  # only raw `;` get here (`%3B` was refused), so "strip" mode
        decoded = _PARAMETER.sub("", decoded)
    return _remove_dot_segments(decoded)


def _decode_once(raw: str) -> str:
    if _BAD_ESCAPE.search(raw):
        raise BadRequest("path: malformed percent-escape")
    forbidden = _FORBIDDEN_ESCAPE.search(raw)
    if forbidden is not None:
        if forbidden.group(1):
            raise BadRequest("path: encoded control character")
        if forbidden.group(2):
            raise BadRequest("path: encoded '/' (%2F) is not allowed")
        if forbidden.group(3):
            raise BadRequest("path: encoded backslash (%5C) is not allowed")
        raise BadRequest("path: encoded ';' (%3B) is not allowed")
    try:
        # Strict UTF-8 refuses overlong forms (%C0%AE), encoded surrogates and stray bytes.
        decoded = unquote_to_bytes(raw).decode("utf-8")
    except UnicodeError:
        raise BadRequest("path: invalid UTF-8") from None
    if "%" in decoded and _STILL_ESCAPED.search(decoded):
        raise BadRequest("path: double percent-encoding is not allowed")
    return decoded


def _check_compatibility_forms(decoded: str) -> None:
    # Upstreams that apply NFKC or "best fit" mapping would turn U+FF0F into `/` or U+2025 into
    # `..` after we decided; refuse characters whose compatibility form adds a delimiter.
    normal = unicodedata.normalize("NFKC", decoded)
    if normal != decoded and any(normal.count(c) != decoded.count(c) for c in _DELIMITERS):
        raise BadRequest("path: Unicode character that normalises to a delimiter ('/', '.', …)")


def _remove_dot_segments(path: str) -> str:
    # RFC 3986 5.2.4 on decoded segments, plus collapsing empty segments; a path that
    # ends in `/`, `/.` or `/..` keeps its trailing slash, as in the RFC.
    segments = path.split("/")
    out: list[str] = []
    for segment in segments[1:]:
        if segment == ".." and out:
            out.pop()
        elif segment not in ("", ".", ".."):
            out.append(segment)
    if not out:
        return "/"
    trailing = "/" if segments[-1] in ("", ".", "..") else ""
    return "/" + "/".join(out) + trailing


def wire_path(canonical: str) -> str:
    """`canonical` percent-encoded for the upstream request line; inverse of `canonical_path`.

    Keeps RFC 3986 pchar and `/` literal (except `%` and `;`) and encodes everything else,
    non-ASCII as UTF-8, so the upstream decodes it to exactly the path that was decided on.
    """
    if canonical.isascii() and _WIRE_SAFE.fullmatch(canonical):
        return canonical
    return quote(canonical, safe=_WIRE_QUOTE_SAFE)


# --- client IP ----------------------------------------------------------------------------

_HOST_PORT_V4 = re.compile(r"([0-9.]+):[0-9]{1,5}")
_BRACKETED_V6 = re.compile(r"\[([^\]]+)\](?::[0-9]{1,5})?")


def client_ip(
    peer: str | None,
    forwarded_for: Sequence[str],
    trusted: Sequence[IPNetwork],
) -> IPAddress | None:
    """The client address: the peer, unless the peer is a trusted proxy.

    Behind trusted proxies X-Forwarded-For is walked from the right, skipping trusted
    hops, and the first untrusted address is the client (uvicorn, nginx realip
    recursive). Garbage stops the walk at the last trusted hop: fail safe, never raise.
    """
    address = _parse_address(peer) if peer is not None else None
    if address is None or not _is_trusted(address, trusted):
        return address
    for value in reversed(forwarded_for):
        for entry in reversed(value.split(",")):
            hop = _parse_address(entry.strip())
            if hop is None:
                return address
            address = hop
            if not _is_trusted(hop, trusted):
                return hop
    return address  # every hop trusted: the leftmost one is as close to the client as we get


def peer_is_trusted(peer: str | None, trusted: Sequence[IPNetwork]) -> bool:
    """Whether the peer is a configured proxy, parsed exactly as `client_ip` parses it."""
    if not trusted:
        return False
    address = _parse_address(peer) if peer is not None else None
    return address is not None and _is_trusted(address, trusted)


def forwarded_for_value(existing: Sequence[str], peer: str, peer_trusted: bool) -> str:
    """X-Forwarded-For for the upstream: the trusted chain plus the peer, or just the peer.

    A chain sent by an untrusted client is dropped, never passed on as if we vouched for it.
    """
    if not peer_trusted:
        return peer
    chain = [value.strip() for value in existing if value.strip()]
    chain.append(peer)
    return ", ".join(chain)


def _is_trusted(address: IPAddress, trusted: Sequence[IPNetwork]) -> bool:
    # `in` is False (not an error) across IP versions.
    return any(address in network for network in trusted)


@lru_cache(maxsize=4096)
def _parse_address(entry: str) -> IPAddress | None:
    """An address from an XFF entry or peer: bare, `v4:port`, `[v6]` or `[v6]:port`."""
    text = entry
    if text.startswith("["):
        match = _BRACKETED_V6.fullmatch(text)
        if match is None:
            return None
        text = match.group(1)
    else:
        match = _HOST_PORT_V4.fullmatch(text)
        if match is not None:
            text = match.group(1)
    try:
        address = ip_address(text)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
