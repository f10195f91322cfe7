"""Versioned schema migrations: numbered SQL files applied in order, each once.

Files live in `gateway/migrations/<dialect>/NNNN_name.sql`. Applied versions are
recorded in `schema_migrations(version, applied_at)`. All pending files are
applied in one transaction, so a failed upgrade leaves the schema as it was.
PostgreSQL takes an advisory lock first, so instances migrating at once queue
up instead of racing; SQLite gets the same from `BEGIN IMMEDIATE`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import resources
from typing import Literal

import aiosqlite
import asyncpg

Dialect = Literal["sqlite", "postgres"]

# Any constant works; it only has to be the same for every authgate instance.
ADVISORY_LOCK_KEY = 0x61757468_67617465  # "authgate"

_CREATE_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations"
    " (version INTEGER PRIMARY KEY, applied_at {time_type} NOT NULL)"
)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str  # file name, e.g. "0001_initial.sql"
    sql: str


def available(dialect: Dialect) -> tuple[Migration, ...]:
    """Every migration shipped for this dialect, in version order."""
    folder = resources.files("gateway.migrations").joinpath(dialect)
    found: list[Migration] = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append(Migration(version, entry.name, entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    return tuple(found)


def latest_version(dialect: Dialect) -> int:
    shipped = available(dialect)
    return shipped[-1].version if shipped else 0


async def sqlite_version(conn: aiosqlite.Connection) -> int:
    """The schema version of an SQLite database (0 when never migrated)."""
    async with conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
    ) as cursor:
        if await cursor.fetchone() is None:
            return 0
    async with conn.execute("SELECT MAX(version) FROM schema_migrations") as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row is not None and row[0] is not None else 0


async def migrate_sqlite(conn: aiosqlite.Connection) -> list[Migration]:
    """Apply pending migrations; returns those applied. `conn` must be in autocommit
    mode (isolation_level=None) so the explicit transaction here is the only one."""
    await conn.execute("BEGIN IMMEDIATE")
    try:
        await conn.execute(_CREATE_TABLE.format(time_type="REAL"))
        current = await sqlite_version(conn)
        pending = [m for m in available("sqlite") if m.version > current]
        for migration in pending:
            # executescript() would COMMIT first; run statements one by one instead.
            for statement in _statements(migration.sql):
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                (migration.version, time.time()),
            )
        await conn.execute("COMMIT")
    except BaseException:
        await conn.execute("ROLLBACK")
        raise
    return pending


async def postgres_version(conn: asyncpg.Connection) -> int:
    """The schema version of a PostgreSQL database (0 when never migrated)."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return 0
    value = await conn.fetchval("SELECT MAX(version) FROM schema_migrations")
    return int(value) if value is not None else 0


async def migrate_postgres(conn: asyncpg.Connection) -> list[Migration]:
    """Apply pending migrations under an advisory lock; returns those applied."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", ADVISORY_LOCK_KEY)
        await conn.execute(_CREATE_TABLE.format(time_type="DOUBLE PRECISION"))
        current = await postgres_version(conn)
        pending = [m for m in available("postgres") if m.version > current]
        for migration in pending:
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
                migration.version,
                time.time(),
            )
    return pending


def _statements(script: str) -> list[str]:
    """Split a migration into statements. Our SQL files keep ';' out of literals
    and comments, which keeps this split honest."""
    lines = [line for line in script.splitlines() if not line.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
