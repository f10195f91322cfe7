"""`sessions.store` URLs for Redis, parsed once into a `RedisTarget`.

Accepted forms (`rediss…` = the same over TLS):

- `redis://[[user]:password@]host[:port][/db]` — one server (redis-py's own URL form,
  so its query options work too, such as `?ssl_ca_certs=/path/ca.pem` for a server
  whose certificate a private CA signed);
- `redis+sentinel://[[user]:password@]host:port[,host:port…]/service_name[/db]` —
  ask the Sentinels for the current master of `service_name`; the credentials are
  the master's; `?sentinel_password=…` when the Sentinels themselves want one;
- `redis+cluster://[[user]:password@]host:port[,host:port…]` — a Redis Cluster;
  the nodes listed are only seeds (the rest is discovered); no db (Cluster has only 0).

Over TLS, certificates are always verified: against the system's CAs, or against
`?ssl_ca_certs=/path/ca.pem` (every form accepts it; for Sentinel it serves the
Sentinels and the master alike).

`?wait_replicas=N`: a revocation (logout, "log out everywhere", a user disabled) is
answered as done only once N replicas have it, or after REPLICA_WAIT_MS (then with a
warning): Redis replicates asynchronously, and a master that dies before its replicas
have a deletion would bring the session back with the replica it fails over to.
Default 1 with Sentinel (which always fails over to a replica); 0 with one server or a
Cluster, where replicas are optional (set it to 1 when each master has one).

IPv6 hosts are written in brackets: `[::1]:6379`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from urllib.parse import parse_qs, unquote

from gateway import replica_wait
from gateway.errors import StoreUnavailable

DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379


class RedisMode(Enum):
    STANDALONE = "standalone"
    SENTINEL = "sentinel"
    CLUSTER = "cluster"


@dataclass(frozen=True)
class RedisTarget:
    """Where Redis is and how to log in; secrets are kept out of `repr`."""

    mode: RedisMode
    url: str = field(repr=False)  # the URL as written (standalone connects with it)
    nodes: tuple[tuple[str, int], ...]
    tls: bool = False
    service_name: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)
    ca_certs: str | None = None  # a PEM file of CAs to verify TLS servers with
    wait_replicas: int = 0  # replicas that must have a revocation before it is done


class RedisUrlError(StoreUnavailable):
    """The URL cannot name a Redis deployment (a config error, reported at start)."""


_SCHEMES: dict[str, tuple[RedisMode, bool]] = {
    "redis": (RedisMode.STANDALONE, False),
    "rediss": (RedisMode.STANDALONE, True),
    "redis+sentinel": (RedisMode.SENTINEL, False),
    "rediss+sentinel": (RedisMode.SENTINEL, True),
    "redis+cluster": (RedisMode.CLUSTER, False),
    "rediss+cluster": (RedisMode.CLUSTER, True),
}


def is_redis_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in _SCHEMES and "://" in url


def parse_redis_url(url: str) -> RedisTarget:
    """The target a URL names; RedisUrlError says what is wrong (never echoing a password)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        raise RedisUrlError(
            "sessions.store: expected redis://, rediss://, redis+sentinel:// or redis+cluster://"
        )
    mode, tls = _SCHEMES[scheme.lower()]
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username, password = _credentials(userinfo) if at else (None, None)
    default_port = DEFAULT_SENTINEL_PORT if mode is RedisMode.SENTINEL else DEFAULT_PORT
    nodes = tuple(_node(part, default_port) for part in hosts.split(",")) if hosts else ()
    if not nodes:
        raise RedisUrlError(f"sessions.store: no host in the {scheme}:// URL")
    segments = [unquote(s) for s in path.split("/") if s]
    options = parse_qs(query)
    ca_certs = options.get("ssl_ca_certs", [None])[0]
    replicas = _wait_replicas(options, 1 if mode is RedisMode.SENTINEL else 0)
    if mode is RedisMode.STANDALONE:
        if len(nodes) != 1:
            raise RedisUrlError(
                "sessions.store: one host in redis:// (use redis+sentinel:// or redis+cluster://)"
            )
        db = _db(segments[0]) if segments else 0
        return RedisTarget(
            mode, url, nodes, tls, None, db, username, password, None, ca_certs, replicas
        )
    if mode is RedisMode.CLUSTER:
        if segments and segments != ["0"]:
            raise RedisUrlError("sessions.store: Redis Cluster has only database 0")
        return RedisTarget(
            mode, url, nodes, tls, None, 0, username, password, None, ca_certs, replicas
        )
    if not segments or len(segments) > 2:
        raise RedisUrlError(
            "sessions.store: redis+sentinel://host:port[,host:port…]/service_name[/db]"
        )
    db = _db(segments[1]) if len(segments) == 2 else 0
    sentinel_password = options.get("sentinel_password", [None])[0]
    return RedisTarget(
        mode,
        url,
        nodes,
        tls,
        segments[0],
        db,
        username,
        password,
        sentinel_password,
        ca_certs,
        replicas,
    )


def _wait_replicas(options: dict[str, list[str]], default: int) -> int:
    try:
        return replica_wait.wait_replicas(options.get(replica_wait.OPTION), default)
    except ValueError as exc:
        raise RedisUrlError(f"sessions.store: {exc}") from None


def for_redis_py(url: str) -> str:
    """A `redis://` URL without the options that are authgate's own (redis-py reads the
    URL itself and would take them for connection settings)."""
    return replica_wait.without_option(url)


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    user, colon, password = userinfo.partition(":")
    if not colon:
        # `redis://secret@host` is redis-py's shorthand for a password without a user.
        return None, unquote(user) or None
    return (unquote(user) or None), (unquote(password) or None)


def _node(text: str, default_port: int) -> tuple[str, int]:
    text = text.strip()
    if text.startswith("["):
        host, _, tail = text[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else ""
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise RedisUrlError("sessions.store: an empty host in the Redis URL")
    try:
        port = int(port_text) if port_text else default_port
    except ValueError:
        raise RedisUrlError(f"sessions.store: bad port {port_text!r} for {host}") from None
    if not 0 < port < 65536:
        raise RedisUrlError(f"sessions.store: bad port {port} for {host}")
    return host, port


def _db(text: str) -> int:
    if not text.isdigit():
        raise RedisUrlError(f"sessions.store: database must be a number, not {text!r}")
    return int(text)
