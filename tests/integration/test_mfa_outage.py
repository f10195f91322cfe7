"""Second factors while the database is down (sessions in Redis, devices in PostgreSQL):
a code that could not be checked is no guess. Counted, the tries a user makes during an
outage banned them from the second factor once the database was back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pyotp
import pytest
from aiohttp.test_utils import TestServer

from gateway.extensions import default_extensions
from gateway.stores import migrate_storage
from tests.integration.browser import Browser
from tests.integration.conftest import StartGateway
from tests.integration.servers import PostgresServer, start_postgres
from tests.integration.test_identity_flow import Backend, add_alice
from tests.integration.test_mfa_flow import configure, enrol_totp, post_code, signed_in_at_prompt

# Every test on aiohttp's server alone and on the fast path (conftest.py).
BOTH_PATHS = True

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    server = start_postgres()
    yield server
    server.remove()


async def test_codes_tried_while_the_database_is_down_do_not_ban_the_user(
    tmp_path: Path,
    upstream: TestServer,
    postgres: PostgresServer,
    redis_prefix: str,
    start_gateway: StartGateway,
    client: aiohttp.ClientSession,
) -> None:
    config = configure(
        tmp_path, upstream, Backend(postgres.url, "redis://127.0.0.1:6379/0", redis_prefix)
    )
    await migrate_storage(config)
    alice, _ = await add_alice(config)
    totp = pyotp.TOTP(await enrol_totp(config, alice.id))
    base = await start_gateway(config, tuple(default_extensions()))
    browser = Browser(base, client)
    page, _ = await signed_in_at_prompt(browser)

    postgres.stop()
    try:
        # More tries than regulation.max_retries (3): each a 503, none a ban.
        statuses = [(await post_code(browser, page, "totp", totp.now())).status for _ in range(5)]
    finally:
        postgres.start()
    assert statuses == [503] * 5
    # Back (after the store's circuit breaker lets a probe through): the right code steps
    # up; a ban would answer 429.
    deadline = time.monotonic() + 15
    while (status := (await post_code(browser, page, "totp", totp.now())).status) == 503:
        assert time.monotonic() < deadline, "the database never came back"
        await asyncio.sleep(0.2)
    assert status == 303, "the user was banned by tries that checked nothing"
