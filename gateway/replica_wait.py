"""`?wait_replicas=N` in a store's URL: how many replicas must have a revocation (a
logout, "log out everywhere", a user disabled, an API key revoked) before it is
answered as done, so that a failover to a replica cannot bring it back. The option is
authgate's own: it is taken out of the URL before the driver reads it."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

MAX_REPLICAS = 16
# How long a revocation waits for its replicas; past it, it is answered with a warning
# (it holds unless the primary fails before they have it).
REPLICA_WAIT_MS = 500
OPTION = "wait_replicas"


def wait_replicas(values: list[str] | None, default: int) -> int:
    """The option's value (the last one given), or `default`; ValueError if not 0 to 16
    (its message names the option; the caller names the setting)."""
    if not values:
        return default
    text = values[-1]
    if not text.isdigit() or int(text) > MAX_REPLICAS:
        raise ValueError(f"{OPTION} must be 0 to {MAX_REPLICAS}, not {text!r}")
    return int(text)


def of_url(url: str, default: int) -> int:
    """The option in `url`'s query, or `default`; ValueError as `wait_replicas`."""
    return wait_replicas(parse_qs(urlsplit(url).query).get(OPTION), default)


def without_option(url: str) -> str:
    """`url` without `wait_replicas` (a driver would take it for a connection setting)."""
    base, sep, query = url.partition("?")
    if not sep:
        return url
    kept = [part for part in query.split("&") if part.split("=", 1)[0] != OPTION]
    return f"{base}?{'&'.join(kept)}" if kept else base


# By store: revocations answered without the replicas asked for having them, in this
# process (read by gateway.metrics: an alert, where the log line is only a line).
unconfirmed: dict[str, int] = {}


def note_unconfirmed(store: str) -> None:
    unconfirmed[store] = unconfirmed.get(store, 0) + 1
