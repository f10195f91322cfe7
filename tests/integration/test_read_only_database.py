"""A database that turns read-only under open connections (a primary fenced for a
switchover) while a user signs in whose password hash is due an upgrade: the upgrade is a
write, and its failure must not turn a correct sign-in into a 503 (sessions live in Redis)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.config.model import PasswordsConfig, SessionsConfig
from gateway.extensions import default_extensions
from gateway.stores import migrate_storage
from tests.conftest import REDIS_URL
from tests.integration.browser import Browser, hidden
from tests.integration.conftest import StartGateway, make_config
from tests.integration.servers import PostgresServer, start_postgres
from tests.integration.users import PASSWORD, create_user

# Every test on aiohttp's server alone and on the fast path (conftest.py).
BOTH_PATHS = True

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

# Dearer than the hash the user was created with (tests.integration.users.CHEAP): a
# correct sign-in rehashes the password with these and writes it back.
UPGRADED = PasswordsConfig(time_cost=2, memory_cost=8, parallelism=1)


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    server = start_postgres()
    yield server
    server.remove()


async def test_a_correct_password_signs_in_when_its_rehash_cannot_be_written(
    tmp_path: Path,
    upstream: TestServer,
    postgres: PostgresServer,
    redis_prefix: str,
    start_gateway: StartGateway,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = dataclasses.replace(
        make_config(tmp_path, str(upstream.make_url("")), policy="version: 1\ndefault: deny\n"),
        storage=postgres.url,
        sessions=SessionsConfig(store=REDIS_URL, redis_prefix=redis_prefix),
        passwords=UPGRADED,
    )
    await migrate_storage(config)
    await create_user(config, "alice")
    base = await start_gateway(config, tuple(default_extensions()))
    async with aiohttp.ClientSession() as client:
        browser = Browser(base, client)
        _, page = await browser.request("GET", "/.authgate/login")
        form = {"csrf_token": hidden(page, "csrf_token"), "rd": "/x"}
        postgres.sql("ALTER SYSTEM SET default_transaction_read_only = on")
        postgres.sql("SELECT pg_reload_conf()")
        resp, body = await browser.request(
            "POST",
            "/.authgate/login",
            data={**form, "username": "alice", "password": PASSWORD},
            Origin="http://app.test",
        )
    assert resp.status == 303, body
    assert "authgate_session" in browser.cookies
    assert "kept the old password hash" in caplog.text
