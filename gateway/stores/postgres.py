"""PostgreSQL behind the `Database` interface (asyncpg pool): for many instances.

The schema is changed only by `authgate migrate`; opening checks the version and
refuses an older schema with a message saying what to run, rather than failing
later on a missing column in the middle of a login.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg

from gateway.errors import StoreUnavailable
from gateway.stores.base import AlreadyExists, SchemaOutdated
from gateway.stores.database import Row
from gateway.stores.migrations import latest_version, migrate_postgres, postgres_version

T = TypeVar("T")

CONNECT_TIMEOUT = 5.0
COMMAND_TIMEOUT = 5.0  # a store that cannot answer in 5 s is treated as down

_DRIVER_ERRORS = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
)


async def _guard(operation: Callable[[], Awaitable[T]]) -> T:
    """Run a driver call, translating its errors to ours (fail closed). The deadline
    covers waiting for a pooled connection too: against a hung server, requests would
    otherwise queue behind the pool's ten connections for many times the timeout."""
    try:
        async with asyncio.timeout(COMMAND_TIMEOUT):
            return await operation()
    except asyncpg.UniqueViolationError as exc:
        raise AlreadyExists(str(exc)) from exc
    except _DRIVER_ERRORS as exc:
        raise StoreUnavailable(f"postgresql: {type(exc).__name__}: {exc}") from exc


@functools.lru_cache(maxsize=512)
def _numbered(sql: str) -> str:
    """`?` placeholders → `$1, $2, …` (our SQL never has a literal '?')."""
    counter = iter(range(1, 1000))
    return re.sub(r"\?", lambda _: f"${next(counter)}", sql)


def _rowcount(status: str) -> int:
    """asyncpg reports 'UPDATE 3' / 'INSERT 0 1'; the last number is the row count."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


class _Connection:
    """Statements on one pooled connection (inside a transaction)."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: object) -> int:
        status = await _guard(lambda: self._conn.execute(_numbered(sql), *args))
        return _rowcount(str(status))

    async def fetch(self, sql: str, *args: object) -> list[Row]:
        return list(await _guard(lambda: self._conn.fetch(_numbered(sql), *args)))

    async def fetchone(self, sql: str, *args: object) -> Row | None:
        row: Row | None = await _guard(lambda: self._conn.fetchrow(_numbered(sql), *args))
        return row

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_Connection]:
        yield self  # a nested transaction joins the one already open

    async def lock(self, name: str) -> None:
        await self.execute("SELECT pg_advisory_xact_lock(hashtext(?))", name)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        """The owner closes the database, not a transaction."""


class PostgresDatabase:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def execute(self, sql: str, *args: object) -> int:
        status = await _guard(lambda: self._pool.execute(_numbered(sql), *args))
        return _rowcount(str(status))

    async def fetch(self, sql: str, *args: object) -> list[Row]:
        return list(await _guard(lambda: self._pool.fetch(_numbered(sql), *args)))

    async def fetchone(self, sql: str, *args: object) -> Row | None:
        row: Row | None = await _guard(lambda: self._pool.fetchrow(_numbered(sql), *args))
        return row

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_Connection]:
        try:
            async with self._pool.acquire(timeout=COMMAND_TIMEOUT) as conn, conn.transaction():
                yield _Connection(conn)
        except _DRIVER_ERRORS as exc:
            raise StoreUnavailable(f"postgresql: {type(exc).__name__}: {exc}") from exc

    async def lock(self, name: str) -> None:
        raise RuntimeError("Database.lock() holds only inside a transaction")

    async def ping(self) -> bool:
        try:
            await self.fetchone("SELECT 1")
        except StoreUnavailable:
            return False
        return True

    async def close(self) -> None:
        await self._pool.close()


async def connect(url: str) -> asyncpg.Connection:
    """One plain connection (for `authgate migrate`)."""
    try:
        return await asyncpg.connect(url, timeout=CONNECT_TIMEOUT)
    except _DRIVER_ERRORS as exc:
        raise StoreUnavailable(f"postgresql: cannot connect: {exc}") from exc


async def migrate(url: str) -> list[str]:
    """Apply pending migrations; returns the names of the files applied."""
    conn = await connect(url)
    try:
        applied = await _guard(lambda: migrate_postgres(conn))
    finally:
        await conn.close()
    return [m.name for m in applied]


async def open_postgres(url: str, *, min_size: int = 1, max_size: int = 10) -> PostgresDatabase:
    """A pool on `url`, refusing a schema older than this code (`SchemaOutdated`)."""
    try:
        pool = await asyncpg.create_pool(
            url,
            min_size=min_size,
            max_size=max_size,
            timeout=CONNECT_TIMEOUT,
            command_timeout=COMMAND_TIMEOUT,
        )
    except _DRIVER_ERRORS as exc:
        raise StoreUnavailable(f"postgresql: cannot connect: {exc}") from exc
    try:
        async with pool.acquire() as conn:
            have = await _guard(lambda: postgres_version(conn))
        need = latest_version("postgres")
        if have < need:
            raise SchemaOutdated(
                f"the PostgreSQL schema is at version {have}, this authgate needs {need}:"
                " run `authgate migrate`"
            )
    except BaseException:
        await pool.close()
        raise
    return PostgresDatabase(pool)
