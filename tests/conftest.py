"""Shared fixtures: real PostgreSQL and Redis on loopback, isolated per test run.

PostgreSQL: a fresh database `authgate_test_<random>` (created from the `test`
database on 127.0.0.1:5432 as user `postgres`), migrated once, dropped at the end.
Redis: 127.0.0.1:6379, every test under its own random key prefix; the run's
keys are deleted at the end. When a service is unreachable the tests that need
it skip with the reason, except under CI=true, where they fail: CI must never
pass by silently not testing a backend.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import asyncpg
import pytest
import redis.asyncio as aioredis

PG_HOST = os.environ.get("AUTHGATE_TEST_PG_HOST", "127.0.0.1")
PG_ADMIN_URL = f"postgresql://postgres@{PG_HOST}:5432/test"
REDIS_URL = os.environ.get("AUTHGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


T = TypeVar("T")


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run set-up code to completion from sync code, even while an event loop runs
    (session fixtures are first requested from inside async tests)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def service_unavailable(service: str, reason: object) -> None:
    """Skip (locally) or fail (under CI=true) a test whose service cannot be reached."""
    message = f"{service} unreachable: {reason}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} (CI=true: backends must not be skipped)")
    pytest.skip(message)


async def _create_database(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_URL, timeout=3)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _drop_database(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_URL, timeout=3)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """URL of an empty, unmigrated database of this test run (dropped at the end)."""
    name = f"authgate_test_{secrets.token_hex(6)}"
    try:
        run_sync(_create_database(name))
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        service_unavailable("PostgreSQL", exc)
    try:
        yield f"postgresql://postgres@{PG_HOST}:5432/{name}"
    finally:
        run_sync(_drop_database(name))


@pytest.fixture(scope="session")
def postgres_url(postgres_server_url: str) -> str:
    """URL of this run's database, migrated to the latest schema."""
    from gateway.stores.postgres import migrate

    run_sync(migrate(postgres_server_url))
    return postgres_server_url


async def _truncate_all(postgres_url: str) -> None:
    conn = await asyncpg.connect(postgres_url)
    try:
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            " AND tablename <> 'schema_migrations'"
        )
        names = ", ".join(f'"{row[0]}"' for row in tables)
        if names:
            await conn.execute(f"TRUNCATE {names} RESTART IDENTITY")
    finally:
        await conn.close()


@pytest.fixture
def postgres_clean(postgres_url: str) -> str:
    """The migrated database with every table emptied, for a test that counts rows.
    (A sync fixture, so async fixtures may request it with getfixturevalue.)"""
    run_sync(_truncate_all(postgres_url))
    return postgres_url


async def _delete_prefix(url: str, prefix: str) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        async for key in client.scan_iter(match=f"{prefix}*", count=1000):
            await client.delete(key)
    finally:
        await client.aclose()


@pytest.fixture(scope="session")
def redis_run_prefix() -> Iterator[str]:
    """Key prefix of this test run in Redis; everything under it is deleted at the end."""
    prefix = f"authgate_test_{secrets.token_hex(6)}:"

    async def check() -> None:
        client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
        try:
            await client.ping()
        finally:
            await client.aclose()

    try:
        run_sync(check())
    except (TimeoutError, OSError, aioredis.RedisError) as exc:
        service_unavailable("Redis", exc)
    yield prefix
    run_sync(_delete_prefix(REDIS_URL, prefix))


@pytest.fixture
async def redis_client(redis_run_prefix: str) -> AsyncIterator[aioredis.Redis]:
    """A client for the test Redis (decode_responses=True)."""
    client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
def redis_prefix(redis_run_prefix: str) -> str:
    """A key prefix of this test alone, under the run's prefix."""
    return f"{redis_run_prefix}{secrets.token_hex(4)}:"
