"""PostgreSQL migrations: applied by `migrate`, required at open, safe to run concurrently."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest

from gateway.stores.base import SchemaOutdated
from gateway.stores.migrations import available
from gateway.stores.postgres import migrate, open_postgres
from tests.conftest import PG_ADMIN_URL, PG_HOST

pytestmark = pytest.mark.postgres


@pytest.fixture
async def empty_database(postgres_server_url: str) -> AsyncIterator[str]:
    """A brand-new database of this test alone."""
    name = f"authgate_test_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(PG_ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@{PG_HOST}:5432/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_opening_an_unmigrated_database_says_to_run_migrate(empty_database: str) -> None:
    with pytest.raises(SchemaOutdated, match="authgate migrate"):
        await open_postgres(empty_database)


async def test_migrate_applies_everything_once(empty_database: str) -> None:
    names = [m.name for m in available("postgres")]
    assert await migrate(empty_database) == names
    assert await migrate(empty_database) == []
    db = await open_postgres(empty_database)
    try:
        assert await db.ping()
    finally:
        await db.close()


async def test_instances_migrating_at_once_apply_each_migration_once(
    empty_database: str,
) -> None:
    results = await asyncio.gather(*(migrate(empty_database) for _ in range(4)))
    applied = [name for result in results for name in result]
    assert applied == [m.name for m in available("postgres")]
