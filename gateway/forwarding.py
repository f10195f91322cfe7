"""Which headers cross the gateway, and how X-Forwarded-* are written (RFC 9110 §7.6.1).

Tables are built once; the per-request work is one pass over the incoming headers.
"""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

# Answers that never have a body, whatever their headers say (RFC 9110 §15.2, §15.3.5,
# §15.4.5): interim ones, 204 and 304. (A HEAD request's answer has none either.)
BODILESS_STATUSES = frozenset((*range(100, 200), 204, 304))

# Hop-by-hop: meaningful only for one connection, never forwarded (RFC 9110 §7.6.1,
# plus the historic Proxy-Connection and Keep-Alive). Upgrade is re-added by the
# WebSocket path itself when a route allows it.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "proxy-connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    }
)

# Set by us from what we know; a client's own values are believed only from trusted
# proxies (and then merged by the caller), never copied blindly.
FORWARDING = frozenset(
    {
        "host",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-forwarded-method",
        "x-forwarded-uri",
        "x-original-url",
        "x-original-uri",
        "x-real-ip",
        "forwarded",
        # What a client could use to make the app serve another path or method than
        # the one decided on (old Symfony and Zend route on X-Rewrite-URL; frameworks
        # honour method overrides), or believe another client address.
        "x-rewrite-url",
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
        "x-forwarded-server",
        "x-client-ip",
        "true-client-ip",
        "cf-connecting-ip",
        "x-cluster-client-ip",
    }
)

# Response headers aiohttp writes itself from the body we stream.
RESPONSE_HOP_BY_HOP = HOP_BY_HOP | {"content-length"}


_TOKENS_CACHE: dict[str, frozenset[str]] = {}


def connection_tokens(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> frozenset[str]:
    """Header names listed in `Connection` (each one is hop-by-hop for this message)."""
    return tokens_of(headers.getall("Connection", []))


def tokens_of(values: list[str]) -> frozenset[str]:
    """The lowercase names listed in these `Connection` header values."""
    if not values:
        return frozenset()
    if len(values) == 1:
        # Almost always "keep-alive" or "close": parse each distinct value once.
        found = _TOKENS_CACHE.get(values[0])
        if found is None:
            found = _parse_tokens(values)
            if len(_TOKENS_CACHE) < 256:
                _TOKENS_CACHE[values[0]] = found
        return found
    return _parse_tokens(values)


def _parse_tokens(values: list[str]) -> frozenset[str]:
    return frozenset(
        token.strip().lower() for value in values for token in value.split(",") if token.strip()
    )


_UNIONS: dict[tuple[frozenset[str], frozenset[str]], frozenset[str]] = {}


def union(a: frozenset[str], b: frozenset[str]) -> frozenset[str]:
    """`a | b`, made once per distinct pair (the pipeline passes the same few sets)."""
    found = _UNIONS.get((a, b))
    if found is None:
        found = a | b
        if len(_UNIONS) < 256:
            _UNIONS[(a, b)] = found
    return found


def dropped_names(
    headers: CIMultiDictProxy[str] | CIMultiDict[str],
    drop: frozenset[str],
    also_drop: frozenset[str] = frozenset(),
) -> frozenset[str]:
    """The lowercase names not to copy from `headers`: `drop`, `also_drop`, and those
    named by its `Connection` header."""
    dropped = union(drop, also_drop) if also_drop else drop
    if "Connection" in headers:
        dropped = with_tokens(dropped, connection_tokens(headers))
    return dropped


def with_tokens(dropped: frozenset[str], tokens: frozenset[str]) -> frozenset[str]:
    """`dropped` plus the `Connection` tokens (no new set when they are in it already)."""
    return dropped if tokens <= dropped else dropped | tokens
