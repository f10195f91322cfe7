"""Every store protocol's fixture, parametrised over every backend that implements it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway.sso import SqlSsoCodes
from gateway.stores.database import Database
from gateway.stores.postgres import open_postgres
from gateway.stores.redis import (
    RedisEventBus,
    RedisRateLimiter,
    RedisSessionStore,
    RedisSsoCodeStore,
)
from gateway.stores.sql import (
    SqlApiKeyStore,
    SqlAuditLog,
    SqlEventBus,
    SqlKeyStore,
    SqlRateLimiter,
    SqlSessionStore,
    SqlUserStore,
)
from gateway.stores.sqlite import open_sqlite
from tests.conftest import REDIS_URL

SQL_BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
ALL_BACKENDS = [*SQL_BACKENDS, pytest.param("redis", marks=pytest.mark.redis)]


async def _open_sql(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    if request.param == "sqlite":
        return await open_sqlite(tmp_path / "authgate.db")
    url = request.getfixturevalue("postgres_clean")
    return await open_postgres(url, max_size=60)


@pytest.fixture(params=SQL_BACKENDS)
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    db = await _open_sql(request, tmp_path)
    yield db
    await db.close()


@pytest.fixture
def users(database: Database) -> SqlUserStore:
    return SqlUserStore(database)


@pytest.fixture
def apikeys(database: Database) -> SqlApiKeyStore:
    return SqlApiKeyStore(database)


@pytest.fixture
def signing_keys(database: Database) -> SqlKeyStore:
    return SqlKeyStore(database)


@pytest.fixture
def audit(database: Database) -> SqlAuditLog:
    return SqlAuditLog(database)


class Backend:
    """One backend of the session-side stores, able to open a second connection."""

    def __init__(self, name: str, db: Database | None, client: aioredis.Redis | None, prefix: str):
        self.name = name
        self.db = db
        self.client = client
        self.prefix = prefix

    def sessions(self) -> SqlSessionStore | RedisSessionStore:
        if self.client is not None:
            return RedisSessionStore(self.client, self.prefix)
        assert self.db is not None
        return SqlSessionStore(self.db)

    def limiter(self, clock: Callable[[], float] = time.time) -> SqlRateLimiter | RedisRateLimiter:
        if self.client is not None:
            return RedisRateLimiter(self.client, self.prefix, clock)
        assert self.db is not None
        return SqlRateLimiter(self.db, clock)

    def sso_codes(self) -> SqlSsoCodes | RedisSsoCodeStore:
        if self.client is not None:
            return RedisSsoCodeStore(self.client, self.prefix, 0)
        assert self.db is not None
        return SqlSsoCodes(self.db)

    def events(self, db: Database | None = None) -> SqlEventBus | RedisEventBus:
        if self.client is not None:
            return RedisEventBus(self.client, self.prefix)
        assert (db or self.db) is not None
        return SqlEventBus(db or self.db, poll_interval=0.05)  # type: ignore[arg-type]


@pytest.fixture(params=ALL_BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "redis":
        prefix = request.getfixturevalue("redis_prefix")
        client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
        yield Backend("redis", None, client, prefix)
        await client.aclose()
        return
    db = await _open_sql(request, tmp_path)
    yield Backend(request.param, db, None, "")
    await db.close()


@pytest.fixture
async def second_database_or_none(
    backend: Backend, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Database | None]:
    """Another connection to the backend's database, as another process would hold
    (None for Redis, whose subscribers always get a connection of their own)."""
    if backend.name == "redis":
        yield None
        return
    if backend.name == "sqlite":
        db = await open_sqlite(tmp_path / "authgate.db")
    else:
        db = await open_postgres(request.getfixturevalue("postgres_url"))
    yield db
    await db.close()
