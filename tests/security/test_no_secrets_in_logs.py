"""SECURITY.md invariant 10: no password, session id, API key, CSRF token, JWT,
TOTP seed or code in any log line or audit row, after a full scenario through the
real gateway: failed sign-ins, a ban, a sign-in, requests with the session and with
an API key, a denial, a TOTP enrolment on the account page, a wrong code and a
step-up, a policy reload and a logout. Every log record of every logger is captured
at DEBUG.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pyotp
import pytest
from aiohttp.test_utils import TestServer

from gateway.config.model import PasswordsConfig, RegulationConfig
from gateway.extensions import default_extensions
from gateway.identity.passwords import PasswordHasher
from gateway.logs import JsonFormatter
from gateway.server import GatewayServer
from gateway.stores import ApiKey, User, new_id, open_stores
from gateway.stores.ids import api_key_display_prefix, hash_api_key, new_api_key
from tests.integration.browser import Browser, hidden
from tests.integration.conftest import make_config
from tests.integration.conftest import upstream as upstream  # the fixture

POLICY = """
version: 1
default: deny
rules:
  - name: admin-off-limits
    paths: ["/admin/**"]
    action: deny
  - name: members
    action: one_factor
"""
PASSWORD = "Tr0ub4dor&3-very-secret"
WRONG = "hunter2-wrong-guess"
CHEAP = PasswordsConfig(time_cost=1, memory_cost=8, parallelism=1)


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_no_secret_reaches_a_log_line_or_an_audit_row(
    tmp_path: Path,
    upstream: TestServer,
    client: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    config = make_config(
        tmp_path, str(upstream.make_url("")), policy=POLICY, trusted_proxies=("127.0.0.0/8",)
    )
    config = dataclasses.replace(
        config, passwords=CHEAP, regulation=RegulationConfig(max_retries=2, ban_time=60.0)
    )
    stores = await open_stores(config)
    api_key = new_api_key()
    try:
        alice = User(
            id=new_id(),
            tenant="acme",
            username="alice",
            email="alice@acme.test",
            display_name="Alice",
            groups=(),
            roles=(),
            disabled=False,
            password_hash=await PasswordHasher(CHEAP).hash(PASSWORD),
            created=0.0,
            updated=0.0,
        )
        await stores.users.create(alice)
        await stores.apikeys.create(
            ApiKey(
                id=new_id(),
                tenant="acme",
                user_id=alice.id,
                name="ci",
                prefix=api_key_display_prefix(api_key),
                key_hash=hash_api_key(api_key),
                created=0.0,
                expires=None,
            )
        )
    finally:
        await stores.close()

    server = GatewayServer(config, tuple(default_extensions()))
    await server.start()
    try:
        host, port = server.addresses[0]
        browser = Browser(f"http://{host}:{port}", client)
        _, page = await browser.request("GET", "/.authgate/login")
        csrf = hidden(page, "csrf_token")

        async def post_login(username: str, password: str, ip: str) -> int:
            resp, _ = await browser.request(
                "POST",
                "/.authgate/login",
                data={"csrf_token": csrf, "rd": "", "username": username, "password": password},
                Origin="http://app.test",
                **{"X-Forwarded-For": ip},
            )
            return resp.status

        # failures, for alice and for somebody who does not exist, up to a ban
        assert await post_login("alice", WRONG, "203.0.113.5") == 401
        assert await post_login("nobody", WRONG, "203.0.113.6") == 401
        assert await post_login("nobody", PASSWORD, "203.0.113.7") == 401
        assert await post_login("nobody", WRONG, "203.0.113.8") == 429
        # a sign-in, requests with the session, a denial
        assert await post_login("alice", PASSWORD, "198.51.100.20") == 303
        session_id = browser.cookies["authgate_session"]
        resp, _ = await browser.request("GET", "/page")
        assert resp.status == 200
        resp, _ = await browser.request("GET", "/admin/x")
        assert resp.status == 403
        # the API key, good and forged
        for key in (api_key, api_key[:-4] + "AAAA"):
            async with client.get(
                f"http://{host}:{port}/page",
                headers={"Host": "app.test", "Authorization": f"Bearer {key}"},
            ) as api:
                assert api.status in (200, 401)
        upstream_jwt = await _jwt_seen_upstream(browser)
        totp_secret, totp_codes = await _enrol_and_step_up(browser, f"http://{host}:{port}", client)
        server.reload()
        # logout
        _, page = await browser.request("GET", "/.authgate/logout")
        resp, _ = await browser.request(
            "POST",
            "/.authgate/logout",
            data={"csrf_token": hidden(page, "csrf_token"), "rd": ""},
            Origin="http://app.test",
        )
        assert resp.status == 200
        assert server.runtime is not None
        await server.runtime.audit.flush()
        rows = await server.runtime.stores.audit.search(limit=1000)
    finally:
        await server.stop()

    events = {row.event for row in rows}
    assert {
        "login_failure",
        "banned",
        "login_success",
        "access_denied",
        "policy_reloaded",
        "logout",
        "mfa_enrolled",
        "mfa_failure",
        "mfa_success",
    } <= events

    formatter = JsonFormatter()
    texts = [formatter.format(record) for record in caplog.records]
    texts += [json.dumps(dataclasses.asdict(row)) for row in rows]
    assert any('"audit_event": "login_success"' in t for t in texts)  # the scan sees audit lines
    secrets_ = {
        "password": PASSWORD,
        "wrong password": WRONG,
        "session id": session_id,
        "API key": api_key,
        "API key body": api_key[len(api_key_display_prefix(api_key)) :],
        "CSRF token": csrf,
        "identity JWT": upstream_jwt,
        "TOTP seed": totp_secret,
    }
    for name, secret in secrets_.items():
        leaks = [t for t in texts if secret in t]
        assert not leaks, f"the {name} leaked into: {leaks[0][:300]}"
    # Six digits also occur inside timestamps: a code counts only standing alone.
    for code in totp_codes:
        leaks = [t for t in texts if re.search(rf"(?<![0-9.]){code}(?![0-9])", t)]
        assert not leaks, f"the TOTP code {code} leaked into: {leaks[0][:300]}"


async def _enrol_and_step_up(
    browser: Browser, base: str, client: aiohttp.ClientSession
) -> tuple[str, tuple[str, ...]]:
    """A TOTP device added on the account page, then another sign-in steps up with a
    wrong code and a right one; returns the seed and every code typed."""
    account = "/.authgate/account"
    _, page = await browser.request("GET", account)
    form = {"csrf_token": hidden(page, "csrf_token"), "action": "totp-add"}
    resp, page = await browser.request("POST", account, data=form, Origin="http://app.test")
    found = re.search(r'<code class="ag-secret">([A-Z2-7]+)</code>', page)
    assert resp.status == 200 and found
    totp = pyotp.TOTP(found.group(1))
    enrol_code = totp.now()
    form = {
        "csrf_token": hidden(page, "csrf_token"),
        "action": "totp-confirm",
        "device": hidden(page, "device"),
        "name": "phone",
        "code": enrol_code,
    }
    resp, page = await browser.request("POST", account, data=form, Origin="http://app.test")
    # The first factor comes with backup codes, shown once (then the account page).
    assert resp.status == 200 and 'class="ag-codes"' in page

    other = Browser(base, client)
    _, page = await other.request("GET", "/.authgate/login")
    form = {"csrf_token": hidden(page, "csrf_token"), "rd": "", "username": "alice"}
    resp, _ = await other.request(
        "POST",
        "/.authgate/login",
        data={**form, "password": PASSWORD},
        Origin="http://app.test",
        **{"X-Forwarded-For": "198.51.100.20"},
    )
    assert resp.status == 303
    _, prompt = await other.request("GET", "/.authgate/mfa?rd=/page")
    used = {totp.at(time.time() + drift) for drift in (-30, 0, 30)}
    wrong = next(c for c in ("000000", "111111", "222222") if c not in used)
    step_code = totp.at(time.time() + 30)  # this step's code went to the enrolment
    statuses = []
    for code in (wrong, step_code):
        resp, _ = await other.request(
            "POST",
            "/.authgate/mfa/totp",
            data={"csrf_token": hidden(prompt, "csrf_token"), "rd": "/page", "code": code},
            Origin="http://app.test",
        )
        statuses.append(resp.status)
    assert statuses == [401, 303]
    return found.group(1), (enrol_code, wrong, step_code)


async def _jwt_seen_upstream(browser: Browser) -> str:
    resp, body = await browser.request("GET", "/page")
    assert resp.status == 200
    headers = {k.lower(): v for k, v in json.loads(body)["headers"]}
    token = headers["x-authgate-jwt"]
    assert token.count(".") == 2
    return token
