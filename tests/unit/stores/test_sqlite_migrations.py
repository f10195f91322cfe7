"""SQLite is created and migrated at open; migrations are numbered and paired per dialect."""

from __future__ import annotations

from pathlib import Path

import aiosqlite

from gateway.stores.migrations import available, latest_version, migrate_sqlite, sqlite_version
from gateway.stores.sqlite import open_sqlite, path_from_url


def test_both_dialects_ship_the_same_migration_versions() -> None:
    sqlite = [m.version for m in available("sqlite")]
    assert sqlite == [m.version for m in available("postgres")]
    assert sqlite == list(range(1, len(sqlite) + 1))


async def test_open_creates_and_migrates_a_new_file(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "authgate.db"
    db = await open_sqlite(path)
    try:
        assert await db.ping()
        row = await db.fetchone("PRAGMA journal_mode")
        assert row is not None and row[0] == "wal"
    finally:
        await db.close()
    async with aiosqlite.connect(path, isolation_level=None) as conn:
        assert await sqlite_version(conn) == latest_version("sqlite")
        assert await migrate_sqlite(conn) == []  # reopening applies nothing


async def test_reopening_keeps_the_data(tmp_path: Path) -> None:
    db = await open_sqlite(tmp_path / "a.db")
    await db.execute("INSERT INTO bans (key, until) VALUES (?, ?)", "k", 1.0)
    await db.close()
    db = await open_sqlite(tmp_path / "a.db")
    try:
        assert await db.fetch("SELECT key FROM bans") == [("k",)]
    finally:
        await db.close()


def test_sqlite_urls_resolve_against_the_config_folder(tmp_path: Path) -> None:
    assert path_from_url("sqlite:////var/lib/a.db", tmp_path) == Path("/var/lib/a.db")
    assert path_from_url("sqlite:///a.db", tmp_path) == tmp_path / "a.db"
