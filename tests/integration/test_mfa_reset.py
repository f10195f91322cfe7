"""`authgate user reset-mfa NAME`: every second factor and backup code gone, sessions ended."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.mfa import open_second_factors
from gateway.regulation import Regulator
from gateway.secretbox import load_secret_box
from gateway.stores import SessionRecord, open_stores
from gateway.stores.credentials import BackupCodeCount
from tests.unit.cli.test_store_commands import config_file, run

__all__ = ["config_file"]  # the fixture, imported for pytest


def test_reset_mfa_removes_factors_and_codes_and_ends_sessions(
    config_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run(config_file, "user", "add", "alice", "--no-password") == 0
    assert run(config_file, "user", "add", "bob", "--no-password") == 0
    config = load_config(config_file, {})

    async def seed() -> tuple[str, str]:
        stores = await open_stores(config)
        try:
            factors = open_second_factors(
                config,
                stores.credentials,
                None,
                Regulator(stores.limiter, config.regulation),
                load_secret_box(config),  # type: ignore[arg-type]
            )
            ids = []
            for name in ("alice", "bob"):
                user = await stores.users.get_by_username("acme", name)
                assert user is not None
                ids.append(user.id)
                await factors.totp.start("acme", user.id, name, "phone")
                await factors.backup_codes.regenerate("acme", user.id)
                now = time.time()
                await stores.sessions.create(
                    SessionRecord(
                        id_hash=f"{name}-session",
                        tenant="acme",
                        user_id=user.id,
                        amr=("pwd", "otp"),
                        auth_time=now,
                        created=now,
                        last_seen=now,
                        expires=now + 3600,
                    )
                )
            return ids[0], ids[1]
        finally:
            await stores.close()

    alice_id, bob_id = asyncio.run(seed())
    capsys.readouterr()
    assert run(config_file, "user", "reset-mfa", "ALICE") == 0
    out = capsys.readouterr().out
    assert "removed 1 TOTP device(s)" in out and "10 backup code(s)" in out
    assert "ended 1 session(s)" in out

    async def check() -> None:
        stores = await open_stores(config)
        try:
            assert await stores.credentials.list_totp(alice_id) == []
            assert await stores.credentials.count_backup_codes(alice_id) == BackupCodeCount(0, 0)
            assert await stores.sessions.list_user("acme", alice_id) == []
            assert len(await stores.credentials.list_totp(bob_id)) == 1
            assert len(await stores.sessions.list_user("acme", bob_id)) == 1
        finally:
            await stores.close()

    asyncio.run(check())
    assert run(config_file, "user", "reset-mfa", "nobody") == 2
