"""Second factors are audited, counted and regulated through the real gateway.

A TOTP device enrolled on the account page, a wrong code and a step-up leave
`mfa_enrolled`, `mfa_failure`, `mfa_success` rows (method in details, never a
code); revoking a session leaves `session_revoked`; the sign-in counters move.
Code guesses go through the same Regulator as passwords: a ban shows in
`Regulator.list_bans()` (what `authgate bans list` prints), and a correct
password does not give a thief fresh code guesses.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pyotp
import pytest
from aiohttp.test_utils import TestServer

from gateway.config.model import Config
from gateway.extensions import default_extensions
from gateway.server import GatewayServer
from gateway.stores import AuditEvent
from tests.integration.browser import Browser, hidden
from tests.integration.test_identity_flow import add_alice, sign_in
from tests.integration.test_mfa_flow import ORIGIN, configure, enrol_totp, post_code

ACCOUNT = "/.authgate/account"


@pytest.fixture
async def server(tmp_path: Path, upstream: TestServer) -> AsyncIterator[GatewayServer]:
    config = configure(tmp_path, upstream)
    await add_alice(config)
    gateway = GatewayServer(config, tuple(default_extensions()))
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()


def base_of(server: GatewayServer) -> str:
    host, port = server.addresses[0]
    return f"http://{host}:{port}"


async def act(browser: Browser, action: str, **fields: str) -> tuple[aiohttp.ClientResponse, str]:
    _, page = await browser.request("GET", ACCOUNT)
    form = {"csrf_token": hidden(page, "csrf_token"), "action": action, **fields}
    return await browser.request("POST", ACCOUNT, data=form, Origin=ORIGIN)


async def enrol_on_account_page(browser: Browser) -> tuple[str, tuple[str, ...]]:
    """Add a TOTP device on the account page; returns its seed and the backup codes shown."""
    resp, page = await act(browser, "totp-add")
    assert resp.status == 200
    found = re.search(r'<code class="ag-secret">([A-Z2-7]+)</code>', page)
    assert found
    secret = found.group(1)
    form = {
        "csrf_token": hidden(page, "csrf_token"),
        "action": "totp-confirm",
        "device": hidden(page, "device"),
        "name": "phone",
        "code": pyotp.TOTP(secret).now(),
    }
    resp, codes_page = await browser.request("POST", ACCOUNT, data=form, Origin=ORIGIN)
    assert resp.status == 200
    codes = tuple(re.findall(r"<code>([A-Z2-7]{5}-[A-Z2-7]{5})</code>", codes_page))
    assert len(codes) == 10
    return secret, codes


def wrong_code(secret: str) -> str:
    totp = pyotp.TOTP(secret)
    used = {totp.at(time.time() + drift) for drift in (-30, 0, 30)}
    return next(c for c in ("000000", "111111", "222222", "333333") if c not in used)


async def rows(server: GatewayServer) -> list[AuditEvent]:
    assert server.runtime is not None
    await server.runtime.audit.flush()
    return await server.runtime.stores.audit.search(limit=1000)


def sign_ins(server: GatewayServer, method: str, result: str) -> float:
    assert server.runtime is not None
    server.runtime.metrics.flush()
    text = server.runtime.metrics.exposition().decode()
    pattern = (
        rf'^authgate_sign_in_attempts_total\{{[^}}]*method="{method}"[^}}]*'
        rf'result="{result}"[^}}]*tenant="acme"[^}}]*\}} ([0-9.e+]+)$'
    )
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def test_enrolment_a_wrong_code_and_a_step_up_are_audited_and_counted(
    server: GatewayServer, client: aiohttp.ClientSession
) -> None:
    base = base_of(server)
    browser = Browser(base, client)
    assert (await sign_in(browser, "/members/x")).status == 303
    secret, codes = await enrol_on_account_page(browser)

    other = Browser(base, client)
    assert (await sign_in(other, "/members/x")).status == 303
    resp, _ = await other.request("GET", "/admin/x")
    resp, prompt = await other.request("GET", resp.headers["Location"])
    assert (await post_code(other, prompt, "totp", wrong_code(secret))).status == 401
    next_code = pyotp.TOTP(secret).at(time.time() + 30)  # the enrolment spent this step's code
    assert (await post_code(other, prompt, "totp", next_code)).status == 303

    # The first browser signs the second out from the account page.
    _, page = await browser.request("GET", ACCOUNT)
    resp, _ = await act(browser, "totp-rename", device=hidden(page, "device"), name="x")
    assert resp.status == 303  # needs the step-up first
    resp, prompt = await browser.request("GET", resp.headers["Location"])
    assert (await post_code(browser, prompt, "backup", codes[0])).status == 303
    _, page = await browser.request("GET", ACCOUNT)
    others = re.findall(r'name="session" value="([0-9a-f]+)"', page)
    assert len(others) == 1
    resp, _ = await act(browser, "session-revoke", session=others[0])
    assert resp.headers["Location"].endswith("?m=revoked")

    found = await rows(server)
    by_event: dict[str, list[AuditEvent]] = {}
    for row in found:
        by_event.setdefault(row.event, []).append(row)
    enrolled = {json.loads(r.details)["method"] for r in by_event["mfa_enrolled"]}
    assert enrolled == {"totp", "backup_codes"}
    failure = by_event["mfa_failure"]
    assert [json.loads(r.details)["method"] for r in failure] == ["totp"]
    assert failure[0].user == "alice" and failure[0].outcome == "wrong"
    assert failure[0].session_fp and failure[0].ip
    successes = sorted(json.loads(r.details)["method"] for r in by_event["mfa_success"])
    assert successes == ["backup_code", "totp"]  # an enrolment on the account page is no step-up
    revoked = by_event["session_revoked"]
    assert len(revoked) == 1 and json.loads(revoked[0].details)["session"] == others[0]

    everything = json.dumps([dataclasses.asdict(r) for r in found])
    for secret_text in (secret, next_code, *codes, codes[0].replace("-", "")):
        assert secret_text not in everything

    assert sign_ins(server, "totp", "failure") == 1
    assert sign_ins(server, "totp", "success") == 1
    assert sign_ins(server, "backup_code", "success") == 1


async def test_code_guesses_are_banned_by_the_regulator_and_a_password_does_not_reset_them(
    server: GatewayServer, client: aiohttp.ClientSession
) -> None:
    assert server.runtime is not None
    config: Config = server.runtime.config
    alice = await server.runtime.stores.users.get_by_username("acme", "alice")
    assert alice is not None
    secret = await enrol_totp(config, alice.id)
    wrong = wrong_code(secret)
    base = base_of(server)
    limit = config.regulation.max_retries

    async def prompt_page() -> tuple[Browser, str]:
        browser = Browser(base, client)
        assert (await sign_in(browser, "/members/x")).status == 303
        resp, _ = await browser.request("GET", "/admin/x")
        _, page = await browser.request("GET", resp.headers["Location"])
        return browser, page

    # limit - 1 wrong codes, a fresh password sign-in, one more wrong code: banned.
    browser, page = await prompt_page()
    for _ in range(limit - 1):
        assert (await post_code(browser, page, "totp", wrong)).status == 401
    browser, page = await prompt_page()
    assert (await post_code(browser, page, "totp", wrong)).status == 401
    resp = await post_code(browser, page, "totp", pyotp.TOTP(secret).now())
    assert resp.status == 429
    assert int(resp.headers["Retry-After"]) > 0

    bans = {ban.key for ban in await server.runtime.regulator.list_bans()}
    assert "mfa:acme:alice" in bans
    assert "user:acme:alice" not in bans  # the password counter is a separate scope
    assert sign_ins(server, "totp", "banned") == 1
    banned = [r for r in await rows(server) if r.event == "mfa_failure" and r.outcome == "banned"]
    assert len(banned) == 1
