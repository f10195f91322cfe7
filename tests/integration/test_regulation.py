"""Issue 7 acceptance: concurrent wrong passwords on two workers ban after exactly
max_retries, the ban holds on every worker, and it ends after ban_time.

Two GatewayServer instances share one storage (SQLite file; and Redis for the
counters), as two workers or two instances would.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.config.model import Config, RegulationConfig, SessionsConfig
from gateway.extensions import default_extensions
from tests.integration.browser import Browser, hidden
from tests.integration.conftest import StartGateway, make_config
from tests.integration.users import CHEAP, PASSWORD, create_user

POLICY = """
version: 1
default: deny
rules:
  - name: members
    action: one_factor
"""
MAX_RETRIES = 3
BAN_TIME = 2.0


def configure(
    tmp_path: Path, upstream: TestServer, sessions: str, redis_prefix: str = "authgate:"
) -> Config:
    config = make_config(
        tmp_path, str(upstream.make_url("")), policy=POLICY, trusted_proxies=("127.0.0.0/8",)
    )
    return dataclasses.replace(
        config,
        sessions=SessionsConfig(store=sessions, redis_prefix=redis_prefix),
        passwords=CHEAP,
        # A day-long window: a burst never straddles a window boundary in practice.
        regulation=RegulationConfig(max_retries=MAX_RETRIES, find_time=86400.0, ban_time=BAN_TIME),
    )


@pytest.fixture(params=["sql", "redis"])
def sessions_store(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(sessions.store, redis_prefix): with Redis, keys of this test alone, so no counter
    from another test or an earlier run (the window is a day long) is ever counted."""
    if request.param == "redis":
        return "redis://127.0.0.1:6379/0", request.getfixturevalue("redis_prefix")
    return "storage", "authgate:"


class LoginForm:
    """A login page's CSRF token and pre-session cookie, reused for many POSTs."""

    def __init__(self, browser: Browser, page: str) -> None:
        self.browser = browser
        self.token = hidden(page, "csrf_token")

    async def post(
        self, base: str, username: str, password: str, ip: str
    ) -> tuple[int, dict[str, str]]:
        worker = Browser(base, self.browser.client, cookies=dict(self.browser.cookies))
        resp, _ = await worker.request(
            "POST",
            "/.authgate/login",
            data={"csrf_token": self.token, "rd": "", "username": username, "password": password},
            Origin="http://app.test",
            **{"X-Forwarded-For": ip},
        )
        return resp.status, dict(resp.headers)


async def test_concurrent_wrong_passwords_on_two_workers_ban_after_exactly_max_retries(
    tmp_path: Path,
    upstream: TestServer,
    start_gateway: StartGateway,
    client: aiohttp.ClientSession,
    sessions_store: tuple[str, str],
) -> None:
    config = configure(tmp_path, upstream, *sessions_store)
    # Unique per run: Redis counters outlive the test's SQLite file.
    username = f"victim-{secrets.token_hex(4)}"
    ip = f"2001:db8::{secrets.token_hex(2)}:{secrets.token_hex(2)}"
    await create_user(config, username)
    workers = [
        await start_gateway(config, tuple(default_extensions())),
        await start_gateway(config, tuple(default_extensions())),
    ]
    browser = Browser(workers[0], client)
    resp, page = await browser.request("GET", "/.authgate/login")
    assert resp.status == 200
    form = LoginForm(browser, page)

    results = await asyncio.gather(
        *(form.post(workers[i % 2], username, f"wrong-{i}", ip) for i in range(20))
    )
    statuses = sorted(status for status, _ in results)
    assert statuses.count(401) == MAX_RETRIES  # exactly this many passwords were checked
    assert statuses.count(429) == 20 - MAX_RETRIES
    assert all(int(h["Retry-After"]) >= 1 for s, h in results if s == 429)

    # the ban holds on every worker, even for the right password
    for base in workers:
        status, headers = await form.post(base, username, PASSWORD, ip)
        assert status == 429
        assert 1 <= int(headers["Retry-After"]) <= BAN_TIME + 1

    # and ends after ban_time
    await asyncio.sleep(BAN_TIME + 0.3)
    status, _ = await form.post(workers[1], username, PASSWORD, ip)
    assert status == 303


async def test_a_ban_looks_the_same_for_an_unknown_user(
    tmp_path: Path,
    upstream: TestServer,
    start_gateway: StartGateway,
    client: aiohttp.ClientSession,
) -> None:
    config = configure(tmp_path, upstream, "storage")
    known = f"known-{secrets.token_hex(4)}"
    await create_user(config, known)
    base = await start_gateway(config, tuple(default_extensions()))
    browser = Browser(base, client)
    _, page = await browser.request("GET", "/.authgate/login")
    form = LoginForm(browser, page)

    answers: dict[str, list[int]] = {}
    for n, username in enumerate((known, f"ghost-{secrets.token_hex(4)}")):
        ip = f"198.51.100.{n + 1}"
        answers[username] = [
            (await form.post(base, username, "nope", ip))[0] for _ in range(MAX_RETRIES + 2)
        ]
    first, second = answers.values()
    assert first == second == [401] * MAX_RETRIES + [429, 429]


async def test_a_success_clears_the_users_counter(
    tmp_path: Path,
    upstream: TestServer,
    start_gateway: StartGateway,
    client: aiohttp.ClientSession,
) -> None:
    config = configure(tmp_path, upstream, "storage")
    username = f"forgetful-{secrets.token_hex(4)}"
    await create_user(config, username)
    base = await start_gateway(config, tuple(default_extensions()))
    browser = Browser(base, client)
    _, page = await browser.request("GET", "/.authgate/login")
    form = LoginForm(browser, page)

    # two misses, a success, two misses again from other addresses: never banned
    for ip in ("192.0.2.1", "192.0.2.2"):
        assert (await form.post(base, username, "nope", ip))[0] == 401
    assert (await form.post(base, username, PASSWORD, "192.0.2.3"))[0] == 303
    for ip in ("192.0.2.4", "192.0.2.5"):
        assert (await form.post(base, username, "nope", ip))[0] == 401
    assert (await form.post(base, username, PASSWORD, "192.0.2.6"))[0] == 303
