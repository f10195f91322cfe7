"""Parsers for single config values: each takes the raw YAML value and its context and
returns the typed value or raises `Invalid` with what was expected.

Messages describe the expectation and, for values that may hold credentials (storage
URLs, secrets), never repeat the value itself.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway import replica_wait
from gateway.config.durations import parse_duration
from gateway.config.fields import Ctx, Invalid, Parser, Reported, did_you_mean
from gateway.config.model import IPNetwork, ListenAddress
from gateway.cpu_affinity import AUTO, NONE, parse_cpu_list
from policies.source import line_of

# --- scalars -------------------------------------------------------------------------


def boolean(value: Any, ctx: Ctx) -> bool:
    if not isinstance(value, bool):
        raise Invalid("expected true or false")
    return value


def integer(minimum: int | None = None, maximum: int | None = None) -> Parser:
    def parse(value: Any, ctx: Ctx) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(_range_text("an integer", minimum, maximum))
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise Invalid(_range_text("an integer", minimum, maximum))
        return value

    return parse


def positive_number(value: Any, ctx: Ctx) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise Invalid("expected a number greater than 0")
    return float(value)


def _range_text(what: str, minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f"expected {what} from {minimum} to {maximum}"
    if minimum is not None:
        return f"expected {what} of at least {minimum}"
    return f"expected {what}"


def text(value: Any, ctx: Ctx) -> str:
    """A non-empty string (no surrounding whitespace trimmed: what you write is what you get)."""
    if not isinstance(value, str) or not value.strip():
        raise Invalid("expected a non-empty string")
    return value


def secret_text(value: Any, ctx: Ctx) -> str:
    """Like `text`, for secrets: a wrong value is described, never shown."""
    if not isinstance(value, str) or not value.strip():
        raise Invalid("expected a non-empty string (the value is not shown: it is a secret)")
    return value


def optional(parse: Parser) -> Parser:
    """`null` is allowed and means "not set"."""

    def parse_optional(value: Any, ctx: Ctx) -> Any:
        return None if value is None else parse(value, ctx)

    return parse_optional


def choice(*options: str) -> Parser:
    def parse(value: Any, ctx: Ctx) -> str:
        if not isinstance(value, str) or value not in options:
            hint = did_you_mean(value, options) if isinstance(value, str) else ""
            raise Invalid(f"expected one of: {', '.join(options)}{hint}")
        return value

    return parse


def duration(positive: bool = False) -> Parser:
    """Seconds from `90s`/`15m`/`12h`/`30d` (or plain seconds); `positive` refuses 0."""

    def parse(value: Any, ctx: Ctx) -> float:
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise Invalid(str(exc)) from None
        if positive and seconds <= 0:
            raise Invalid("expected a duration greater than 0, like 90s, 15m, 12h or 30d")
        return seconds

    return parse


# --- lists -----------------------------------------------------------------------------


def list_of(item: Parser, what: str, *, non_empty: bool = False, scalar_ok: bool = False) -> Parser:
    """A YAML list whose items `item` parses; each bad item is reported at its own line.

    `scalar_ok` also accepts a single item written without a list. Duplicates are refused:
    a repeated entry is always a slip in a security config.
    """

    def parse(value: Any, ctx: Ctx) -> tuple[Any, ...]:
        if scalar_ok and not isinstance(value, list | tuple):
            return (item(value, ctx),)
        if not isinstance(value, list | tuple) or (non_empty and not value):
            raise Invalid(f"expected a list of {what}" + (" (at least one)" if value == [] else ""))
        out: list[Any] = []
        failed = False
        for i, raw in enumerate(value):
            ictx = ctx.at(f"[{i}]", line_of(value, i))
            try:
                parsed = item(raw, ictx)
            except Invalid as exc:
                ictx.report(exc.message)
                failed = True
                continue
            except Reported:
                failed = True
                continue
            if parsed in out:
                ictx.report(f"listed twice (also [{out.index(parsed)}])")
                failed = True
                continue
            out.append(parsed)
        if failed:
            raise Reported
        return tuple(out)

    return parse


def subset(options: Sequence[str], what: str, *, non_empty: bool) -> Parser:
    return list_of(choice(*options), what, non_empty=non_empty)


# --- network ---------------------------------------------------------------------------

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def host_name(value: Any, ctx: Ctx, *, wildcard: bool = True) -> str:
    """A canonical host name: lowercase, IDNA-encoded, no trailing dot; `*.x.y` if allowed."""
    if not isinstance(value, str) or not value:
        raise Invalid("expected a host name")
    name = value.lower()
    if "://" in name:
        raise Invalid("expected a host name, not a URL (drop the scheme)")
    if "/" in name:
        raise Invalid("expected a host name without a path")
    if ":" in name:
        raise Invalid("expected a host name without a port")
    name = name.removesuffix(".")
    prefix = ""
    if wildcard and name.startswith("*."):
        prefix, name = "*.", name[2:]
    if "*" in name:
        hint = "only as the whole first label (*.example.com)" if wildcard else "not here"
        raise Invalid(f"a wildcard is allowed {hint}")
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise Invalid("not a valid international host name") from None
    if not name or len(name) > 253 or not all(_LABEL.fullmatch(p) for p in name.split(".")):
        raise Invalid("not a valid host name")
    return prefix + name


def exact_host_name(value: Any, ctx: Ctx) -> str:
    return host_name(value, ctx, wildcard=False)


def host_covers(pattern: str, host: str) -> bool:
    """True when tenant domain `pattern` covers `host` (itself exact or `*.` wildcard)."""
    if pattern == host:
        return True
    if pattern.startswith("*."):
        suffix = pattern[1:]  # ".acme.test"
        return host.endswith(suffix) and len(host) > len(suffix)
    return False


_LISTEN_HINT = 'expected "host:port", like 127.0.0.1:8080 or [::1]:8080'


def listen_address(value: Any, ctx: Ctx) -> ListenAddress:
    if not isinstance(value, str):
        raise Invalid(_LISTEN_HINT)
    if value.startswith("["):
        match = re.fullmatch(r"\[([^\]]+)\]:(\d+)", value)
        if match is None:
            raise Invalid(_LISTEN_HINT)
        host, port_text = match.groups()
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise Invalid(f"not an IPv6 address in brackets; {_LISTEN_HINT}") from None
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep or not host:
            raise Invalid(_LISTEN_HINT)
        if ":" in host:
            raise Invalid("an IPv6 address goes in brackets, like [::1]:8080")
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            host = exact_host_name(host, ctx)
    if not port_text.isdigit() or int(port_text) > 65535:
        raise Invalid("expected a port from 0 to 65535 after the colon")
    return ListenAddress(host, int(port_text))


def workers(value: Any, ctx: Ctx) -> int | None:
    if value == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise Invalid('expected "auto" or an integer of at least 1')
    return value


def cpu_affinity(value: Any, ctx: Ctx) -> str | tuple[int, ...]:
    """Either word ("none", "auto"), a list of CPU numbers, or the kernel's "0-3,6"."""
    cpus: tuple[int, ...]
    if isinstance(value, list):
        cpus = list_of(integer(0, MAX_CPU), "CPU numbers", non_empty=True)(value, ctx)
        return cpus
    if value in (NONE, AUTO):
        return str(value)
    expected = 'expected "none", "auto" or CPU numbers (a list, or "0-3,6")'
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise Invalid(expected)
    try:
        cpus = parse_cpu_list(value, MAX_CPU)
    except ValueError:
        raise Invalid(f"{expected}, each from 0 to {MAX_CPU}") from None
    if len(set(cpus)) != len(cpus):
        raise Invalid("a CPU is listed twice")
    return cpus


MAX_CPU = 4095


def network(value: Any, ctx: Ctx) -> IPNetwork:
    if not isinstance(value, str):
        raise Invalid("expected a network in CIDR notation, like 10.0.0.0/8 or 2001:db8::/32")
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        raise Invalid(f"expected a network in CIDR notation: {exc}") from None


def http_url(value: Any, ctx: Ctx) -> str:
    """An absolute http(s) URL with a host, no credentials and no fragment."""
    hint = "expected an http:// or https:// URL with a host"
    if not isinstance(value, str):
        raise Invalid(hint)
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise Invalid(f"{hint} (the port is not valid)") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid(hint)
    if "@" in parts.netloc:
        raise Invalid(f"{hint}, without user@ (credentials do not belong in this URL)")
    if parts.fragment or value.endswith("#"):
        raise Invalid(f"{hint}, without a #fragment")
    if any(c.isspace() or ord(c) < 0x20 for c in value):
        raise Invalid(f"{hint}, without spaces or control characters")
    return value


def upstream_url(value: Any, ctx: Ctx) -> str:
    url = http_url(value, ctx)
    if urlsplit(url).query:
        raise Invalid("expected an http:// or https:// URL without a ?query")
    return url


# --- paths inside URLs -----------------------------------------------------------------

_SEGMENT = re.compile(r"[A-Za-z0-9._~-]+")


def reserved_prefix(value: Any, ctx: Ctx) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise Invalid('expected a path starting with "/", like /.authgate')
    if value == "/":
        raise Invalid('cannot be "/": it would reserve every path')
    if value.endswith("/"):
        raise Invalid('expected no trailing "/", like /.authgate')
    segments = value[1:].split("/")
    if not all(_SEGMENT.fullmatch(s) for s in segments):
        raise Invalid("may contain only letters, digits and . _ ~ - between single slashes")
    if any(s in (".", "..") for s in segments):
        raise Invalid('must not contain "." or ".." segments')
    return value


def route_path(value: Any, ctx: Ctx) -> str:
    """A path prefix as canonical request paths look: no dot segments, `//`, `%`, `?`, `#`."""
    if not isinstance(value, str) or not value.startswith("/"):
        raise Invalid('expected a path starting with "/"')
    segments = value[1:].split("/")
    if value != "/" and ("" in segments[:-1] or any(s in (".", "..") for s in segments)):
        raise Invalid('expected a plain path: no "//", "." or ".." segments')
    if any(c in value for c in "?#%;\\") or any(c.isspace() or ord(c) < 0x20 for c in value):
        raise Invalid("expected a plain path: no ?, #, %, ;, backslash or spaces")
    return value


# --- storage ---------------------------------------------------------------------------

_STORAGE_HINT = (
    "expected sqlite:///relative.db, sqlite:////absolute.db or postgresql://user@host:5432/db"
)


def storage_url(value: Any, ctx: Ctx) -> str:
    """SQLite with its path made absolute, or a PostgreSQL URL (never echoed: it may hold
    a password)."""
    if not isinstance(value, str) or not value:
        raise Invalid(_STORAGE_HINT)
    scheme, sep, rest = value.partition("://")
    scheme = scheme.lower()
    if scheme == "sqlite" and sep:
        if not rest.startswith("/") or len(rest) < 2:
            raise Invalid(_STORAGE_HINT)
        file_part, _, query = rest[1:].partition("?")
        if file_part == ":memory:":
            return value
        path = ctx.where.resolve(file_part)
        return f"sqlite:///{path}" + (f"?{query}" if query else "")
    if scheme in ("postgresql", "postgres") and sep:
        try:
            replica_wait.of_url(value, 0)
        except ValueError as exc:
            raise Invalid(str(exc)) from None
        return value
    raise Invalid(_STORAGE_HINT)


def session_store(value: Any, ctx: Ctx) -> str:
    # (also redis+cluster://; the wording is pinned by tests/unit/config/test_config_problems.py)
    hint = 'expected "storage" or a redis://, rediss:// or redis+sentinel:// URL'
    if not isinstance(value, str):
        raise Invalid(hint)
    if value == "storage":
        return value
    scheme, sep, _ = value.partition("://")
    schemes = ("redis", "rediss", "redis+sentinel", "rediss+sentinel")
    if scheme.lower() not in (*schemes, "redis+cluster", "rediss+cluster") or not sep:
        raise Invalid(hint)
    if not urlsplit(value).netloc:
        raise Invalid(f"{hint} with a host")
    return value


# --- files -----------------------------------------------------------------------------


def existing_path(kind: str = "file") -> Parser:
    """A path relative to the config file's folder, made absolute; it must exist now."""

    def parse(value: Any, ctx: Ctx) -> Path:
        if not isinstance(value, str) or not value:
            raise Invalid("expected a file path" if kind == "file" else "expected a folder path")
        path = ctx.where.resolve(value)
        if not path.exists():
            raise Invalid(f"{kind} not found: {path}")
        if kind == "file" and not path.is_file():
            raise Invalid(f"not a file: {path}")
        if kind == "folder" and not path.is_dir():
            raise Invalid(f"not a folder: {path}")
        return path

    return parse


def url_or_file(value: Any, ctx: Ctx) -> str:
    """An http(s) URL as given, or an existing file's absolute path (logos, favicons)."""
    if isinstance(value, str) and value.lower().startswith(("http://", "https://")):
        return http_url(value, ctx)
    if isinstance(value, str) and "://" in value:
        raise Invalid("expected an http(s) URL or a file path")
    return str(existing_path("file")(value, ctx))


# --- branding --------------------------------------------------------------------------


def color(value: Any, ctx: Ctx) -> str:
    if value is None:
        raise Invalid('expected a color like "#2563EB" (quote it: # starts a YAML comment)')
    if not isinstance(value, str) or not re.fullmatch(r"#(?:[0-9A-Fa-f]{3}){1,2}", value):
        raise Invalid('expected a color like "#2563EB" or "#26E"')
    return value


def css_length(value: Any, ctx: Ctx) -> str:
    if value == 0:
        return "0"
    if not isinstance(value, str) or not re.fullmatch(r"0|\d+(?:\.\d+)?(?:px|rem|em|%)", value):
        raise Invalid("expected a CSS length like 8px, 0.5rem or 0")
    return value


def css_text(value: Any, ctx: Ctx) -> str:
    """Text that is pasted into generated CSS: refuse what could end the declaration."""
    checked = text(value, ctx)
    if any(c in checked for c in ";{}<>\\") or any(ord(c) < 0x20 for c in checked):
        raise Invalid("must not contain ; { } < > backslashes or control characters (CSS)")
    return checked


def email(value: Any, ctx: Ctx) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", value):
        raise Invalid("expected an email address")
    return value


def link_target(value: Any, ctx: Ctx) -> str:
    """A footer link: an http(s) URL, a mailto: address or a path on the same host."""
    if isinstance(value, str) and value.startswith("mailto:"):
        email(value.removeprefix("mailto:"), ctx)
        return value
    if isinstance(value, str) and value.startswith("/") and not value.startswith("//"):
        return value
    if isinstance(value, str) and "://" in value:
        return http_url(value, ctx)
    raise Invalid("expected an http(s) URL, a mailto: address or a path starting with /")


# --- identity --------------------------------------------------------------------------

IDENTITY_PRESETS = ("default", "authelia", "oauth2-proxy", "authentik", "none")
IDENTITY_CLAIMS = ("user", "email", "name", "groups", "jwt")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def header_name(value: Any, ctx: Ctx) -> str:
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise Invalid("expected an HTTP header name, like Remote-User")
    return value


def identity_headers(value: Any, ctx: Ctx) -> str | tuple[tuple[str, str], ...]:
    """A preset name, or a mapping of claim to header name (then returned as pairs)."""
    if isinstance(value, str):
        preset: str = choice(*IDENTITY_PRESETS)(value, ctx)
        return preset
    if not isinstance(value, dict) or not value:
        raise Invalid(
            f"expected one of {', '.join(IDENTITY_PRESETS)} or a mapping of claim to header name"
        )
    pairs: list[tuple[str, str]] = []
    failed = False
    seen: dict[str, str] = {}
    for claim, header in value.items():
        kctx = ctx.at(f".{claim}", line_of(value, claim))
        try:
            if claim not in IDENTITY_CLAIMS:
                raise Invalid(
                    f"unknown claim{did_you_mean(str(claim), IDENTITY_CLAIMS)};"
                    f" claims are {', '.join(IDENTITY_CLAIMS)}"
                )
            name = header_name(header, kctx)
            if name.lower() in seen:
                raise Invalid(f"header {name} is already used for {seen[name.lower()]}")
        except Invalid as exc:
            kctx.report(exc.message)
            failed = True
            continue
        seen[name.lower()] = claim
        pairs.append((claim, name))
    if failed:
        raise Reported
    return tuple(pairs)


def tenant_id(value: Any, ctx: Ctx) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", value):
        raise Invalid(
            "expected up to 63 lowercase letters, digits and -, starting with a letter or digit"
        )
    return value
