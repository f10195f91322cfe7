"""A read-only YAML users file: its users sign in; its mistakes are located; it is never written."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway import runtime
from gateway.config.model import PasswordsConfig, TenantConfig
from gateway.errors import ConfigError
from gateway.extensions import default_extensions
from gateway.identity.passwords import PasswordHasher
from gateway.stores import Stores
from gateway.users_file import load_users_file
from tests.integration.browser import Browser, hidden
from tests.integration.conftest import StartGateway, make_config

CHEAP = PasswordsConfig(time_cost=1, memory_cost=8, parallelism=1)


async def test_a_user_from_the_file_signs_in_and_is_forwarded(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway
) -> None:
    # hashed with other parameters than the config's: a rehash is due but must not write
    password_hash = await PasswordHasher(PasswordsConfig(time_cost=2, memory_cost=16)).hash("pw")
    users = tmp_path / "users.yaml"
    users.write_text(
        "users:\n"
        "  carol:\n"
        f"    password: '{password_hash}'\n"
        "    email: carol@acme.test\n"
        "    groups: [ops]\n"
    )
    before = users.read_text()
    config = make_config(
        tmp_path, str(upstream.make_url("")), policy="version: 1\ndefault: one_factor\n"
    )
    tenant = dataclasses.replace(config.tenants[0], users_file=users)
    config = dataclasses.replace(config, tenants=(tenant,), passwords=CHEAP)
    base = await start_gateway(config, tuple(default_extensions()))
    async with aiohttp.ClientSession() as client:
        browser = Browser(base, client)
        resp, page = await browser.request("GET", "/.authgate/login")
        form = {
            "csrf_token": hidden(page, "csrf_token"),
            "rd": "/x",
            "username": "Carol",
            "password": "pw",
        }
        resp, _ = await browser.request(
            "POST", "/.authgate/login", data=form, Origin="http://app.test"
        )
        assert resp.status == 303
        resp, body = await browser.request("GET", "/x", Accept="application/json")
        assert resp.status == 200
        assert '["Remote-User", "carol"]' in body
        assert '["Remote-Groups", "ops"]' in body
    assert users.read_text() == before

    # Disabled in the file, while the gateway runs: the session is refused within
    # moments (the file is watched), not at the next restart.
    users.write_text(before + "    disabled: true\n")
    async with aiohttp.ClientSession() as client:
        cookie = {"Cookie": f"authgate_session={browser.cookies['authgate_session']}"}
        for _ in range(60):
            async with client.get(
                f"{base}/x", headers={"Host": "app.test", "Accept": "application/json", **cookie}
            ) as resp:
                if resp.status != 200:
                    break
            await asyncio.sleep(0.1)
        assert resp.status == 401, "a user disabled in the users file still passes"


async def test_a_user_disabled_while_the_gateway_starts_cannot_sign_in(
    tmp_path: Path,
    upstream: TestServer,
    start_gateway: StartGateway,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The users files are read before the rest of the runtime opens (sessions, keys,
    the database); a user disabled in between must still be seen, not taken as the state
    the watcher starts from."""
    password_hash = await PasswordHasher(CHEAP).hash("pw")
    users = tmp_path / "users.yaml"
    enabled = f"users:\n  carol:\n    password: '{password_hash}'\n"
    users.write_text(enabled)
    read_users_files = runtime.with_users_files

    def read_then_disable(stores: Stores, tenants: tuple[TenantConfig, ...]) -> Stores:
        layered = read_users_files(stores, tenants)
        users.write_text(enabled + "    disabled: true\n")  # the operator, at that moment
        return layered

    monkeypatch.setattr(runtime, "with_users_files", read_then_disable)
    config = make_config(
        tmp_path, str(upstream.make_url("")), policy="version: 1\ndefault: one_factor\n"
    )
    tenant = dataclasses.replace(config.tenants[0], users_file=users)
    config = dataclasses.replace(config, tenants=(tenant,), passwords=CHEAP)
    base = await start_gateway(config, tuple(default_extensions()))
    await asyncio.sleep(1.5)  # the watcher polls every 0.5 s
    async with aiohttp.ClientSession() as client:
        browser = Browser(base, client)
        _, page = await browser.request("GET", "/.authgate/login")
        form = {"csrf_token": hidden(page, "csrf_token"), "rd": "/x"}
        resp, _ = await browser.request(
            "POST",
            "/.authgate/login",
            data={**form, "username": "carol", "password": "pw"},
            Origin="http://app.test",
        )
        assert resp.status != 303, "a user disabled in the users file signed in"


def test_mistakes_name_file_line_and_key(tmp_path: Path) -> None:
    users = tmp_path / "users.yaml"
    users.write_text("users:\n  dave:\n    password: plain-text\n    emial: d@x\n")
    with pytest.raises(ConfigError) as caught:
        load_users_file(users, "acme")
    messages = [str(p) for p in caught.value.problems]
    assert f"{users}:4: users.dave.emial: unknown key" in messages
    assert any(
        m.startswith(f"{users}:3: users.dave.password: expected an argon2 hash") for m in messages
    )


def test_hash_password_prints_an_argon2id_hash() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "user", "hash-password", "--password-stdin"],
        input="a password\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.startswith("$argon2id$")
    assert "a password" not in result.stdout
