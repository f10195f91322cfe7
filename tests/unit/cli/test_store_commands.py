"""`authgate migrate|user|sessions|apikey` end to end on an SQLite config."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import time
from pathlib import Path

import pytest

from gateway.cli import apikey as apikey_cli
from gateway.cli import common_options
from gateway.cli import migrate as migrate_cli
from gateway.cli import sessions as sessions_cli
from gateway.cli import user as user_cli
from gateway.config import load_config
from gateway.sessions import fingerprint
from gateway.stores import SessionRecord, open_stores
from gateway.stores.ids import hash_api_key, hash_session_id, new_session_id

CONFIG = """
storage: sqlite:///authgate.db
passwords: {time_cost: 1, memory_cost: 8, parallelism: 1}
tenants:
  - id: acme
    name: Acme
    domains: [acme.test]
"""


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    for name in list(os.environ):
        if name.startswith("AUTHGATE_"):
            monkeypatch.delenv(name)
    return path


def run(
    config_file: Path,
    *argv: str,
    stdin: str = "",
    monkeypatch: pytest.MonkeyPatch | None = None,
) -> int:
    common = common_options()
    parser = argparse.ArgumentParser(parents=[common])
    sub = parser.add_subparsers(dest="command")
    for module in (migrate_cli, user_cli, sessions_cli, apikey_cli):
        module.register(sub, common)
    args = parser.parse_args(["-c", str(config_file), *argv])
    if monkeypatch is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return int(args.func(args))


def test_migrate_reports_what_it_did_then_up_to_date(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(config_file, "migrate") == 0
    assert "applied 0001_initial.sql" in capsys.readouterr().out
    assert run(config_file, "migrate") == 0
    assert capsys.readouterr().out.strip() == "up to date"


def test_user_add_list_disable_and_passwd(
    config_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code = run(
        config_file,
        "user", "add", "Alice", "--email", "alice@acme.test", "--name", "Alice Liddell",
        "--groups", "staff, wiki", "--roles", "editor", "--password-stdin",
        stdin="s3cret pass\n", monkeypatch=monkeypatch,
    )  # fmt: skip
    assert code == 0
    assert run(config_file, "user", "list", "--json") == 0
    out = capsys.readouterr().out
    listed = json.loads(out[out.index("[") :])
    assert listed[0]["username"] == "Alice"
    assert listed[0]["groups"] == ["staff", "wiki"]
    assert "s3cret" not in out and "argon2" not in out

    code = run(config_file, "user", "add", "alice", "--password-stdin",
               stdin="x\n", monkeypatch=monkeypatch)  # fmt: skip
    assert code == 2  # usernames are unique case-insensitively

    code = run(config_file, "user", "passwd", "ALICE", stdin="new pass\n", monkeypatch=monkeypatch)
    assert code == 0
    assert run(config_file, "user", "disable", "alice") == 0

    async def check() -> None:
        from gateway.identity.passwords import PasswordHasher

        config = load_config(config_file, {})
        stores = await open_stores(config)
        try:
            user = await stores.users.get_by_username("acme", "alice")
            assert user is not None and user.disabled and user.password_hash is not None
            assert await PasswordHasher(config.passwords).verify(user.password_hash, "new pass")
        finally:
            await stores.close()

    asyncio.run(check())


def test_an_unknown_tenant_is_bad_input(config_file: Path) -> None:
    assert run(config_file, "user", "list", "--tenant", "globex") == 2


def test_sessions_list_and_revoke_by_prefix_and_by_user(
    config_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run(config_file, "user", "add", "bob", "--no-password")
    config = load_config(config_file, {})

    async def make_sessions() -> list[str]:
        stores = await open_stores(config)
        try:
            user = await stores.users.get_by_username("acme", "bob")
            assert user is not None
            hashes = []
            now = time.time()
            for _ in range(3):
                h = hash_session_id(new_session_id())
                hashes.append(h)
                await stores.sessions.create(
                    SessionRecord(h, "acme", user.id, ("pwd",), now, now, now, now + 600)
                )
            return hashes
        finally:
            await stores.close()

    hashes = asyncio.run(make_sessions())
    capsys.readouterr()
    assert run(config_file, "sessions", "list", "--user", "bob") == 0
    assert capsys.readouterr().out.count("bob") == 3
    assert run(config_file, "sessions", "revoke", hashes[0][:12]) == 0
    assert run(config_file, "sessions", "revoke", "abc") == 2  # too short to name one
    assert run(config_file, "sessions", "revoke", "--user", "bob") == 0
    assert "revoked 2 session(s)" in capsys.readouterr().out

    async def revocations() -> list[tuple[str | None, str | None, str | None]]:
        stores = await open_stores(config)
        try:
            rows = await stores.audit.search(event="session_revoked")
            return sorted(((r.user, r.session_fp, r.outcome) for r in rows), key=str)
        finally:
            await stores.close()

    assert asyncio.run(revocations()) == sorted(
        [("bob", None, "everywhere"), ("bob", fingerprint(hashes[0]), "ok")], key=str
    )


def test_apikey_is_printed_once_and_stored_hashed(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(config_file, "user", "add", "ci-bot", "--no-password")
    capsys.readouterr()
    assert run(config_file, "apikey", "create", "--user", "ci-bot", "--name", "ci",
               "--expires", "90d") == 0  # fmt: skip
    key = capsys.readouterr().out.strip()
    assert key.startswith("agk_") and len(key) == 47

    assert run(config_file, "apikey", "list") == 0
    listing = capsys.readouterr().out
    assert key not in listing and key[:12] in listing and "active" in listing
    key_id = listing.split("\t", 1)[0]

    assert run(config_file, "apikey", "revoke", key_id) == 0

    async def check() -> None:
        stores = await open_stores(load_config(config_file, {}))
        try:
            stored = await stores.apikeys.get_by_hash(hash_api_key(key))
            assert stored is not None and stored.revoked
            assert stored.expires is not None and stored.expires > time.time() + 89 * 86400
        finally:
            await stores.close()

    asyncio.run(check())
    for f in config_file.parent.glob("authgate.db*"):
        assert key.encode() not in f.read_bytes()


def test_passwd_ends_the_users_sessions_unless_told_to_keep_them(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A reset is what an operator does when a password leaked: whoever used it is out.
    from gateway.config.model import SessionsConfig
    from gateway.sessions import SessionManager

    code = run(config_file, "user", "add", "bob", "--password-stdin",
               stdin="old pass\n", monkeypatch=monkeypatch)  # fmt: skip
    assert code == 0

    async def new_session() -> str:
        config = load_config(config_file, {})
        stores = await open_stores(config)
        try:
            user = await stores.users.get_by_username("acme", "bob")
            assert user is not None
            manager = SessionManager(
                stores.sessions, stores.users, stores.events, SessionsConfig(cache_ttl=0.0)
            )
            session_id, _ = await manager.create(user, ("pwd",), ip=None, user_agent=None)
            return session_id
        finally:
            await stores.close()

    async def alive(session_id: str) -> bool:
        config = load_config(config_file, {})
        stores = await open_stores(config)
        try:
            manager = SessionManager(
                stores.sessions, stores.users, stores.events, SessionsConfig(cache_ttl=0.0)
            )
            return await manager.load(session_id, "acme") is not None
        finally:
            await stores.close()

    kept = asyncio.run(new_session())
    code = run(config_file, "user", "passwd", "bob", "--keep-sessions",
               stdin="new pass\n", monkeypatch=monkeypatch)  # fmt: skip
    assert code == 0 and asyncio.run(alive(kept))
    code = run(config_file, "user", "passwd", "bob", stdin="newer pass\n", monkeypatch=monkeypatch)
    assert code == 0 and not asyncio.run(alive(kept))


def test_a_users_file_user_is_reached_by_the_session_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.users_file import file_user_id

    (tmp_path / "users.yaml").write_text("users:\n  carol:\n    groups: [ops]\n")
    config_file = tmp_path / "config.yaml"
    config_file.write_text(CONFIG + "    users_file: users.yaml\n")
    now = time.time()
    record = SessionRecord(
        "c" * 64, "acme", file_user_id("acme", "carol"), ("pwd",), now, now, now, now + 3600
    )

    async def seed() -> bool:
        stores = await open_stores(load_config(config_file, {}))
        try:
            if await stores.sessions.get(record.id_hash) is None:
                await stores.sessions.create(record)
                return True
            return False
        finally:
            await stores.close()

    assert asyncio.run(seed())
    assert run(config_file, "sessions", "revoke", "--user", "carol") == 0
    assert "revoked 1 session" in capsys.readouterr().out
    assert asyncio.run(seed())  # it was gone: created again
    assert run(config_file, "user", "disable", "carol") == 2  # read-only: edit the file
    assert "read-only" in capsys.readouterr().err
