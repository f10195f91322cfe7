"""SQLite transactions end, whatever ends the code inside them: an error, a failed
COMMIT, or a cancellation (a client that went away) while BEGIN still waited for the
write lock. A transaction left open would hold the lock for the life of the worker."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.stores.sqlite import SqliteDatabase, migrate, open_sqlite


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[tuple[SqliteDatabase, Path]]:
    path = tmp_path / "a.db"
    await migrate(path)
    db = await open_sqlite(path)
    await db.execute("CREATE TABLE t (x INTEGER)")
    yield db, path
    await db.close()


def outside_writer_can_write(path: Path) -> bool:
    conn = sqlite3.connect(path, timeout=0.2, isolation_level=None)
    try:
        conn.execute("INSERT INTO t VALUES (1)")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        conn.close()


async def test_a_transaction_cancelled_while_begin_waits_does_not_keep_the_lock(
    database: tuple[SqliteDatabase, Path],
) -> None:
    db, path = database
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # another process is writing

    async def write() -> None:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO t VALUES (2)")

    waiting = asyncio.ensure_future(write())
    await asyncio.sleep(0.3)  # BEGIN waits for the lock (busy timeout 5 s)
    waiting.cancel()
    await asyncio.sleep(0.1)
    holder.execute("COMMIT")  # the queued BEGIN now gets the lock, then the ROLLBACK runs
    holder.close()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert outside_writer_can_write(path), "the cancelled transaction still holds the lock"
    async with db.transaction() as tx:  # and this worker can write again
        await tx.execute("INSERT INTO t VALUES (3)")
    assert [tuple(r) for r in await db.fetch("SELECT x FROM t ORDER BY x")] == [(1,), (3,)]


async def test_an_error_inside_rolls_back(database: tuple[SqliteDatabase, Path]) -> None:
    db, path = database
    with pytest.raises(RuntimeError):
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO t VALUES (5)")
            raise RuntimeError("boom")
    assert await db.fetch("SELECT x FROM t") == []
    assert outside_writer_can_write(path)


async def test_a_write_waiting_for_the_file_lock_holds_no_read_up(
    database: tuple[SqliteDatabase, Path],
) -> None:
    # Another worker is writing; this one's write (an audit row, say) waits up to the
    # busy timeout for the file's write lock. Its reads — session loads — go on.
    db, path = database
    await db.execute("INSERT INTO t VALUES (7)")
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    waiting = asyncio.ensure_future(db.execute("INSERT INTO t VALUES (8)"))
    try:
        await asyncio.sleep(0.2)
        assert not waiting.done()
        row = await asyncio.wait_for(db.fetchone("SELECT x FROM t"), 2)
        assert row is not None and tuple(row) == (7,)
    finally:
        holder.execute("COMMIT")
        holder.close()
        await waiting
    assert [tuple(r) for r in await db.fetch("SELECT x FROM t ORDER BY x")] == [(7,), (8,)]


async def test_a_read_never_sees_a_transaction_before_it_commits(
    database: tuple[SqliteDatabase, Path],
) -> None:
    db, _ = database
    inside, release = asyncio.Event(), asyncio.Event()

    async def write() -> None:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO t VALUES (9)")
            inside.set()
            await release.wait()

    writing = asyncio.ensure_future(write())
    await inside.wait()
    assert await db.fetch("SELECT x FROM t") == []  # not committed yet
    release.set()
    await writing
    assert [tuple(r) for r in await db.fetch("SELECT x FROM t")] == [(9,)]
