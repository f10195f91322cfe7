"""Where the gateway keeps state, chosen by URL in the config (DESIGN section 7).

`storage` (users, API keys, signing keys, audit; and by default sessions, rate
limits and events): `sqlite:////abs/path.db` or `postgresql://…`.
`sessions.store`: `storage`, or a Redis URL (`redis://`, `rediss://`,
`redis+sentinel://`, `redis+cluster://`; see `redis_urls`) for sessions, rate
limits and revocation events shared by many instances.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gateway.config.model import Config
from gateway.errors import StoreUnavailable
from gateway.stores import breaker, redis_urls
from gateway.stores import postgres as postgres_backend
from gateway.stores import redis as redis_backend
from gateway.stores import sqlite as sqlite_backend
from gateway.stores.base import (
    REVOCATIONS,
    SESSION_USED,
    AlreadyExists,
    ApiKey,
    ApiKeyStore,
    AuditEvent,
    AuditLog,
    Ban,
    EventBus,
    KeyStore,
    NotFound,
    RateLimiter,
    SchemaOutdated,
    SessionRecord,
    SessionStore,
    SigningKey,
    Subscription,
    User,
    UserStore,
    api_key_revoked,
    new_id,
    normalize_username,
    session_revoked,
    session_used,
    user_sessions_revoked,
)
from gateway.stores.credentials import CredentialStore, SqlCredentialStore
from gateway.stores.database import Database
from gateway.stores.postgres import open_postgres
from gateway.stores.sql import (
    SqlApiKeyStore,
    SqlAuditLog,
    SqlEventBus,
    SqlKeyStore,
    SqlRateLimiter,
    SqlSessionStore,
    SqlUserStore,
)
from gateway.stores.sqlite import open_sqlite, path_from_url
from gateway.stores.sso_codes import SsoCodeStore

__all__ = [
    "REVOCATIONS",
    "SESSION_USED",
    "AlreadyExists",
    "ApiKey",
    "ApiKeyStore",
    "AuditEvent",
    "AuditLog",
    "Ban",
    "CredentialStore",
    "EventBus",
    "KeyStore",
    "NotFound",
    "RateLimiter",
    "SchemaOutdated",
    "SessionRecord",
    "SessionStore",
    "SigningKey",
    "Stores",
    "Subscription",
    "User",
    "UserStore",
    "api_key_revoked",
    "migrate_storage",
    "new_id",
    "normalize_username",
    "open_database",
    "open_stores",
    "session_revoked",
    "session_used",
    "user_sessions_revoked",
]

Clock = Callable[[], float]


@dataclass(frozen=True)
class Stores:
    users: UserStore
    sessions: SessionStore
    apikeys: ApiKeyStore
    keys: KeyStore
    audit: AuditLog
    limiter: RateLimiter
    events: EventBus
    credentials: CredentialStore
    _pings: tuple[Callable[[], Awaitable[bool]], ...]
    _closers: tuple[Callable[[], Awaitable[None]], ...]
    # The clock every instance shares (gateway.clock): which server, and how to read it.
    time_reference: str = "local"
    time_source: Callable[[], Awaitable[float]] | None = None  # None: the local clock
    # Single-use codes beside the sessions when they are in Redis (None: the database's,
    # which the runtime opens on a connection of its own).
    sso_codes: SsoCodeStore | None = None

    async def ping(self) -> bool:
        """Readiness: every backing server answers."""
        for ping in self._pings:
            if not await ping():
                return False
        return True

    async def close(self) -> None:
        for close in self._closers:
            await close()


async def open_database(config: Config) -> Database:
    """The `storage` database, migrated (SQLite) or checked for migration (PostgreSQL).
    First the `stores` section's breaker numbers, for every breaker made from now on
    (this database's, then Redis's)."""
    settings = config.stores
    breaker.configure(
        threshold=settings.breaker_threshold,
        window=settings.breaker_window,
        cool_off=settings.breaker_cool_off,
        max_cool_off=settings.breaker_max_cool_off,
    )
    url = config.storage
    if url.startswith("sqlite:///"):
        return await open_sqlite(path_from_url(url, config.source.parent))
    if url.startswith(("postgresql://", "postgres://")):
        return await open_postgres(url)
    raise StoreUnavailable(f"storage: unsupported URL scheme in {url.split(':', 1)[0]!r}")


async def migrate_storage(config: Config) -> list[str]:
    """Apply pending migrations to the `storage` database; returns the files applied."""
    url = config.storage
    if url.startswith("sqlite:///"):
        return await sqlite_backend.migrate(path_from_url(url, config.source.parent))
    if url.startswith(("postgresql://", "postgres://")):
        return await postgres_backend.migrate(url)
    raise StoreUnavailable(f"storage: unsupported URL scheme in {url.split(':', 1)[0]!r}")


TimeSource = Callable[[], Awaitable[float]]


def redis_source(client: Any) -> TimeSource:
    """Redis `TIME`: (seconds, microseconds) on the server (a master, for Sentinel)."""

    async def read() -> float:
        # Through the stores' own guard: a deadline, and StoreUnavailable on failure.
        answer = await redis_backend.guard(lambda: client.time(), redis_backend.breaker_of(client))
        if isinstance(answer, dict):  # a Cluster client may answer per node: take one
            answer = next(iter(answer.values()))
        seconds, micros = answer
        return int(seconds) + int(micros) / 1e6

    return read


def postgres_source(fetchone: Callable[..., Awaitable[Any]]) -> TimeSource:
    """PostgreSQL's wall clock now (not `now()`, which is the transaction's start)."""

    async def read() -> float:
        row = await fetchone("SELECT EXTRACT(EPOCH FROM clock_timestamp())")
        if row is None:
            raise RuntimeError("PostgreSQL gave no time")
        return float(row[0])

    return read


async def open_stores(config: Config, *, clock: Clock = time.time) -> Stores:
    """Open every store the config names. Raises StoreUnavailable (or its subclass
    SchemaOutdated) when a backend cannot be reached or is not ready."""
    db = await open_database(config)
    session_url = config.sessions.store
    if session_url == "storage":
        on_postgres = isinstance(db, postgres_backend.PostgresDatabase)
        return Stores(
            users=SqlUserStore(db),
            sessions=SqlSessionStore(db, clock),
            apikeys=SqlApiKeyStore(db),
            keys=SqlKeyStore(db),
            audit=SqlAuditLog(db),
            limiter=SqlRateLimiter(db, clock),
            events=SqlEventBus(db, clock),
            credentials=SqlCredentialStore(db),
            _pings=(db.ping,),
            _closers=(db.close,),
            time_reference="postgresql" if on_postgres else "local",
            time_source=postgres_source(db.fetchone) if on_postgres else None,
        )
    if not redis_urls.is_redis_url(session_url):
        await db.close()
        raise StoreUnavailable(
            "sessions.store: expected 'storage' or a redis://, rediss://,"
            " redis+sentinel:// or redis+cluster:// URL"
        )
    try:
        handle = redis_backend.open_redis(session_url)
    except StoreUnavailable:
        await db.close()
        raise
    if not await handle.ping():
        await handle.close()
        await db.close()
        raise StoreUnavailable("sessions.store: Redis does not answer")
    await handle.warn_if_evicting()
    handle.follow_failovers()
    client = handle.client
    prefix = config.sessions.redis_prefix

    async def redis_ping() -> bool:
        return await handle.ping()

    return Stores(
        users=SqlUserStore(db),
        sessions=redis_backend.RedisSessionStore(
            client, prefix, clock=clock, wait_replicas=handle.target.wait_replicas
        ),
        apikeys=SqlApiKeyStore(db),
        keys=SqlKeyStore(db),
        audit=SqlAuditLog(db),
        limiter=redis_backend.RedisRateLimiter(client, prefix, clock=clock),
        events=redis_backend.RedisEventBus(
            client, prefix, new_pubsub=handle.pubsub, attempts=len(handle.target.nodes)
        ),
        credentials=SqlCredentialStore(db),
        _pings=(db.ping, redis_ping),
        _closers=(handle.close, db.close),
        time_reference="redis",
        time_source=redis_source(client),
        sso_codes=redis_backend.RedisSsoCodeStore(
            client, prefix, wait_replicas=handle.target.wait_replicas
        ),
    )
