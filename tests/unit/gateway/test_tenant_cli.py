"""`authgate tenant …` on an SQLite config: add, list, domains, branding, routes, remove."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest

from gateway.cli import common_options
from gateway.cli import tenant as tenant_cli

CONFIG = """
storage: sqlite:///authgate.db
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
    monkeypatch.chdir(tmp_path)
    return path


def run(config_file: Path, *argv: str) -> int:
    common = common_options()
    parser = argparse.ArgumentParser(parents=[common])
    tenant_cli.register(parser.add_subparsers(dest="command"), common)
    args = parser.parse_args(["-c", str(config_file), "tenant", *argv])
    return int(args.func(args))


def test_a_tenant_is_added_configured_and_listed(
    config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "logo.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    assert run(config_file, "add", "globex", "--name", "Globex", "--domain", "globex.test") == 0
    assert run(config_file, "domain", "add", "globex", "globex-wiki.test") == 0
    assert (
        run(config_file, "branding", "globex", "--primary-color", "#00AA55", "--logo", "logo.svg")
        == 0
    )
    assert run(config_file, "set", "globex", "--login-methods", "password", "--signup") == 0
    assert (
        run(
            config_file,
            "route",
            "add",
            "globex",
            "--host",
            "globex-wiki.test",
            "--upstream",
            "http://127.0.0.1:9",
        )
        == 0
    )
    capsys.readouterr()
    assert run(config_file, "list", "--json") == 0
    rows = {row["id"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["acme"]["source"] == "config"
    assert rows["globex"] == {
        "id": "globex",
        "name": "Globex",
        "source": "database",
        "domains": ["globex.test", "globex-wiki.test"],
        "problems": [],
    }


def test_conflicts_and_bad_values_exit_2_with_a_message(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(config_file, "add", "globex", "--domain", "acme.test") == 2
    assert (
        'acme.test belongs to both tenant "acme" (config) and tenant "globex"'
        in capsys.readouterr().err
    )
    assert run(config_file, "add", "globex", "--domain", "globex.test") == 0
    assert run(config_file, "add", "initech", "--domain", "globex.test") == 2
    assert 'tenant "globex" (database)' in capsys.readouterr().err
    assert run(config_file, "branding", "globex", "--primary-color", "red") == 2
    assert "primary_color" in capsys.readouterr().err
    assert run(config_file, "domain", "add", "nobody", "x.test") == 2
    assert run(config_file, "remove", "globex") == 0
    assert run(config_file, "remove", "globex") == 2


def test_removing_a_tenant_ends_its_sessions_and_api_keys(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Were the id used again, they would otherwise be valid once more.
    import asyncio
    import time

    from gateway.config import load_config
    from gateway.stores import ApiKey, SessionRecord, User, new_id, open_stores
    from gateway.stores.ids import api_key_display_prefix, hash_api_key, new_api_key

    assert run(config_file, "add", "globex", "--domain", "globex.test") == 0
    config = load_config(config_file)
    user = User(new_id(), "globex", "gina", None, None, ("admin",), (), False, None, 0.0, 0.0)
    key = new_api_key()
    now = time.time()
    session = SessionRecord("b" * 64, "globex", user.id, ("pwd",), now, now, now, now + 3600)

    async def seed() -> None:
        stores = await open_stores(config)
        try:
            await stores.users.create(user)
            await stores.sessions.create(session)
            await stores.apikeys.create(
                ApiKey(new_id(), "globex", user.id, "ci", api_key_display_prefix(key),
                       hash_api_key(key), now, None)
            )  # fmt: skip
        finally:
            await stores.close()

    async def left() -> tuple[bool, bool]:
        stores = await open_stores(config)
        try:
            stored_key = await stores.apikeys.get_by_hash(hash_api_key(key))
            alive = await stores.sessions.get(session.id_hash) is not None
            return alive, stored_key is not None and not stored_key.revoked
        finally:
            await stores.close()

    asyncio.run(seed())
    assert asyncio.run(left()) == (True, True)
    assert run(config_file, "remove", "globex") == 0
    assert "ended 1 session(s), revoked 1 API key(s)" in capsys.readouterr().out
    assert asyncio.run(left()) == (False, False)
