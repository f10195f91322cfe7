"""`authgate bans list|clear` and `authgate audit search` against a real SQLite storage."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from gateway.audit import Event, record_now
from gateway.cli import main
from gateway.config import load_config
from gateway.regulation import Attempt, Regulator
from gateway.stores import open_stores


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    (tmp_path / "policy.yaml").write_text("version: 1\ndefault: deny\n")
    path = tmp_path / "config.yaml"
    path.write_text(
        "regulation: {max_retries: 1}\n"
        "tenants:\n  - id: acme\n    name: Acme\n    domains: [app.test]\n"
        "    policies: [policy.yaml]\n"
    )
    return path


async def _fail_once(config_file: Path) -> bool:
    config = load_config(config_file)
    stores = await open_stores(config)
    try:
        regulator = Regulator(stores.limiter, config.regulation)
        attempt = await regulator.attempt("acme", "Mallory", "203.0.113.9")
        await regulator.failed("acme", "Mallory", "203.0.113.9", attempt)
        return (await regulator.attempt("acme", "mallory", "198.51.100.1")).banned
    finally:
        await stores.close()


async def _try_again(config_file: Path) -> Attempt:
    config = load_config(config_file)
    stores = await open_stores(config)
    try:
        return await Regulator(stores.limiter, config.regulation).attempt(
            "acme", "mallory", "198.51.100.1"
        )
    finally:
        await stores.close()


async def _seed_audit(config_file: Path) -> None:
    stores = await open_stores(load_config(config_file))
    try:
        await record_now(stores.audit, Event.USER_CREATED, tenant="acme", user="alice")
        await record_now(stores.audit, Event.USER_DISABLED, tenant="acme", user="alice")
        await record_now(stores.audit, Event.USER_CREATED, tenant="acme", user="bob")
    finally:
        await stores.close()


def test_bans_list_and_clear(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert asyncio.run(_fail_once(config_file))
    assert main(["bans", "list", "-c", str(config_file), "--json"]) == 0
    keys = sorted(b["key"] for b in json.loads(capsys.readouterr().out))
    assert keys == ["ip:acme:203.0.113.9", "user:acme:mallory"]

    assert main(["bans", "clear", "-c", str(config_file), "user:acme:mallory"]) == 0
    assert main(["bans", "clear", "-c", str(config_file), "user:acme:mallory"]) == 1
    capsys.readouterr()
    assert main(["bans", "list", "-c", str(config_file)]) == 0
    out = capsys.readouterr().out
    assert "ip:acme:203.0.113.9" in out and "user:acme" not in out

    # the user's ban is gone and its counter starts afresh (the IP's ban is another key)
    again = asyncio.run(_try_again(config_file))
    assert again.allowed and again.user_count == 1
    assert main(["bans", "clear", "-c", str(config_file)]) == 0
    assert "lifted 1 ban(s)" in capsys.readouterr().out


def test_audit_search_filters_by_user_event_and_age(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(_seed_audit(config_file))
    base = ["audit", "search", "-c", str(config_file)]

    assert main([*base, "--user", "alice", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["event"] for r in rows] == ["user_disabled", "user_created"]
    assert rows[0]["user_agent"] == "authgate-cli"

    assert main([*base, "--event", "user_created", "--since", "1h"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all("user_created" in line for line in lines)

    assert main([*base, "--since", "soon"]) == 2
