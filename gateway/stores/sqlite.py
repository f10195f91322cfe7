"""SQLite behind the `Database` interface: the embedded, zero-set-up default.

Two aiosqlite connections per process, in WAL mode (readers never block the
writer, nor the writer readers) with a busy timeout (several worker processes
share the file): one for writes, where an asyncio lock keeps a transaction's
statements from interleaving with other tasks' statements, and a read-only one
for reads outside transactions. The schema is created and migrated
automatically at open.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import aiosqlite

from gateway.errors import StoreUnavailable
from gateway.stores.base import AlreadyExists
from gateway.stores.database import Row, nested_transaction
from gateway.stores.migrations import migrate_sqlite

T = TypeVar("T")

BUSY_TIMEOUT_MS = 5000


async def _guard(operation: Callable[[], Awaitable[T]]) -> T:
    """Run a driver call, translating its errors to ours (fail closed)."""
    try:
        return await operation()
    except sqlite3.IntegrityError as exc:
        raise AlreadyExists(str(exc)) from exc
    except (sqlite3.Error, ValueError, OSError) as exc:
        # ValueError: aiosqlite's "no active connection" after close.
        raise StoreUnavailable(f"sqlite: {exc}") from exc


class _Connection:
    """Statements on the shared connection, with the caller holding (or not needing) the lock."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: object) -> int:
        async def run() -> int:
            async with self._conn.execute(sql, args) as cursor:
                return cursor.rowcount

        return await _guard(run)

    async def fetch(self, sql: str, *args: object) -> list[Row]:
        async def run() -> list[Row]:
            async with self._conn.execute(sql, args) as cursor:
                return list(await cursor.fetchall())

        return await _guard(run)

    async def fetchone(self, sql: str, *args: object) -> Row | None:
        async def run() -> Row | None:
            async with self._conn.execute(sql, args) as cursor:
                row = await cursor.fetchone()
                return row

        return await _guard(run)


class _Transaction(_Connection):
    """A view of the connection inside BEGIN IMMEDIATE … COMMIT (lock already held)."""

    @asynccontextmanager
    async def transaction(self, *, replicated: bool = False) -> AsyncIterator[_Transaction]:
        nested_transaction(replicated)
        yield self  # a nested transaction joins the one already open

    async def lock(self, name: str) -> None:
        """BEGIN IMMEDIATE took the database's write lock: no other writer runs now."""

    async def execute_replicated(self, sql: str, *args: object) -> int:
        raise RuntimeError("Database.execute_replicated() waits for a commit: not in a transaction")

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        """The owner closes the database, not a transaction."""


@functools.lru_cache(maxsize=512)
def _is_read(sql: str) -> bool:
    """A plain SELECT; `INSERT/UPDATE … RETURNING` come through fetch too (writes)."""
    return sql.lstrip()[:6].upper() == "SELECT"


class SqliteDatabase:
    """Writes (and a transaction's reads) on one connection, in turn under a lock; other
    reads, when `reader` is given, on a second, read-only connection without the lock.
    In WAL mode a reader never waits for a writer: a write waiting for the file's write
    lock (another worker is writing, up to the busy timeout) holds no read up, and a
    read never sees another task's transaction before it commits."""

    def __init__(self, conn: aiosqlite.Connection, reader: aiosqlite.Connection | None = None):
        self._conn = conn
        self._reader_conn = reader
        self._direct = _Connection(conn)
        self._reader = _Connection(reader) if reader is not None else None
        self._lock = asyncio.Lock()

    async def execute(self, sql: str, *args: object) -> int:
        async with self._lock:
            return await self._direct.execute(sql, *args)

    async def fetch(self, sql: str, *args: object) -> list[Row]:
        if self._reader is not None and _is_read(sql):
            return await self._reader.fetch(sql, *args)
        async with self._lock:
            return await self._direct.fetch(sql, *args)

    async def fetchone(self, sql: str, *args: object) -> Row | None:
        if self._reader is not None and _is_read(sql):
            return await self._reader.fetchone(sql, *args)
        async with self._lock:
            return await self._direct.fetchone(sql, *args)

    @asynccontextmanager
    async def transaction(self, *, replicated: bool = False) -> AsyncIterator[_Transaction]:
        # `replicated`: one file on one host, nothing to wait for.
        async with self._lock:
            try:
                await _guard(lambda: self._conn.execute("BEGIN IMMEDIATE"))
                yield _Transaction(self._conn)
                await _guard(lambda: self._conn.execute("COMMIT"))
            except BaseException:
                # Whatever ended it — an error, a failed COMMIT, or a cancellation (a
                # client gone) while BEGIN still waited for the lock in aiosqlite's
                # thread, which then takes it anyway — a ROLLBACK is queued behind it, so
                # the write lock is never left held for the life of the worker.
                await asyncio.shield(self._rollback())
                raise

    async def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error, ValueError):  # no transaction open: fine
            await self._conn.execute("ROLLBACK")

    async def lock(self, name: str) -> None:
        raise RuntimeError("Database.lock() holds only inside a transaction")

    async def execute_replicated(self, sql: str, *args: object) -> int:
        """One file on one host: there is no replica to wait for."""
        return await self.execute(sql, *args)

    async def ping(self) -> bool:
        try:
            await self.fetchone("SELECT 1")
        except StoreUnavailable:
            return False
        return True

    async def close(self) -> None:
        if self._reader_conn is not None:
            await self._reader_conn.close()
        await self._conn.close()


def path_from_url(url: str, base: Path) -> Path:
    """`sqlite:////abs/x.db` → /abs/x.db; `sqlite:///x.db` → base/x.db."""
    if not url.startswith("sqlite:///"):
        raise ValueError(f"not an sqlite URL: {url!r}")
    path = Path(url[len("sqlite:///") :])
    return path if path.is_absolute() else base / path


async def migrate(path: Path) -> list[str]:
    """Apply pending migrations to the file (creating it); returns the files applied."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        async with aiosqlite.connect(path, isolation_level=None) as conn:
            await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            await use_wal(conn)
            return [m.name for m in await migrate_sqlite(conn)]
    except (sqlite3.Error, OSError) as exc:
        raise StoreUnavailable(f"sqlite: cannot migrate {path}: {exc}") from exc


async def use_wal(conn: aiosqlite.Connection) -> None:
    """Switch the file to WAL (it stays so). Changing the journal mode needs the file to
    itself and SQLite does not wait for that (busy_timeout does not apply), so workers
    starting together retry briefly; a file already in WAL needs no change at all."""
    async with conn.execute("PRAGMA journal_mode") as cursor:
        row = await cursor.fetchone()
    if row is not None and str(row[0]).lower() == "wal":
        return
    for _ in range(100):
        try:
            await conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise
            await asyncio.sleep(0.05)
    await conn.execute("PRAGMA journal_mode = WAL")


async def open_sqlite(path: Path) -> SqliteDatabase:
    """Open (creating if needed) and migrate the database file at `path`."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = await aiosqlite.connect(path, isolation_level=None)
    except (sqlite3.Error, OSError) as exc:
        raise StoreUnavailable(f"sqlite: cannot open {path}: {exc}") from exc
    try:
        await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        await use_wal(conn)
        await conn.execute("PRAGMA synchronous = NORMAL")  # durable enough with WAL
        await migrate_sqlite(conn)
        reader = await _open_reader(path)
    except sqlite3.Error as exc:
        await conn.close()
        raise StoreUnavailable(f"sqlite: cannot prepare {path}: {exc}") from exc
    except BaseException:
        await conn.close()
        raise
    return SqliteDatabase(conn, reader)


async def _open_reader(path: Path) -> aiosqlite.Connection:
    reader = await aiosqlite.connect(path, isolation_level=None)
    try:
        await reader.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        await reader.execute("PRAGMA query_only = ON")
    except BaseException:
        await reader.close()
        raise
    return reader
