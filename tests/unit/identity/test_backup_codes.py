"""Backup codes: ten, single use, keyed hashes, forgiving input."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.identity.backup_codes import BackupCodes, normalize_backup_code
from gateway.stores.credentials import SqlCredentialStore
from gateway.stores.sqlite import open_sqlite


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqlCredentialStore]:
    db = await open_sqlite(tmp_path / "a.db")
    yield SqlCredentialStore(db)
    await db.close()


async def test_ten_distinct_codes_each_usable_once(store: SqlCredentialStore) -> None:
    codes = BackupCodes(store, b"k" * 32)
    issued = await codes.regenerate("acme", "u1")
    assert len(set(issued)) == 10
    assert await codes.use("u1", issued[0].lower().replace("-", " "))
    assert not await codes.use("u1", issued[0])
    assert (await codes.remaining("u1")).unused == 9


async def test_codes_are_stored_only_as_keyed_hashes(store: SqlCredentialStore) -> None:
    issued = await BackupCodes(store, b"k" * 32).regenerate("acme", "u1")
    # Another key (another installation, or a thief with only the database) gets nothing.
    assert not await BackupCodes(store, b"x" * 32).use("u1", issued[0])
    # Nor does another user.
    assert not await BackupCodes(store, b"k" * 32).use("u2", issued[0])


@pytest.mark.parametrize("raw", ["", "ABCDE-FGHI", "ABCDE-FGHI1", "ABCDE-FGHIJK"])
def test_malformed_codes_are_not_looked_up(raw: str) -> None:
    assert normalize_backup_code(raw) is None
