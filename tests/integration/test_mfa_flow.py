"""Step-up to a second factor through a running gateway with the real extensions.

TOTP codes come from pyotp, as an authenticator app would make them. The upstream
must see `otp` in the JWT's amr after a step-up, and never anything when a step is
skipped, a code replayed, or a pre-step-up cookie replayed.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import jwt
import pyotp
import pytest
from aiohttp.test_utils import TestServer

from gateway.config.model import Config, MfaConfig, SessionsConfig
from gateway.extensions import default_extensions
from gateway.mfa import open_second_factors
from gateway.regulation import Regulator
from gateway.secretbox import load_secret_box
from gateway.stores import open_stores
from tests.integration.browser import Browser, hidden
from tests.integration.conftest import StartGateway, make_config
from tests.integration.test_identity_flow import CHEAP, Backend, add_alice, echo_headers, sign_in

POLICY = """
version: 1
default: deny
rules:
  - name: admin
    paths: ["/admin/**"]
    action: two_factor
  - name: members
    action: one_factor
"""
ORIGIN = "http://app.test"
ALL_MFA_METHODS = ("totp", "webauthn", "backup_codes")


def configure(
    tmp_path: Path, upstream: TestServer, backend: Backend | None = None, **mfa: str
) -> Config:
    config = make_config(
        tmp_path, str(upstream.make_url("")), policy=POLICY, trusted_proxies=("127.0.0.0/8",)
    )
    storage = backend.storage if backend else f"sqlite:///{tmp_path / 'authgate.db'}"
    sessions = backend.sessions if backend else "storage"
    # Backup codes are opt-in per tenant (tenants[].mfa_methods); these tests use them.
    tenant = dataclasses.replace(config.tenants[0], mfa_methods=ALL_MFA_METHODS)
    return dataclasses.replace(
        config,
        tenants=(tenant,),
        storage=storage,
        sessions=SessionsConfig(store=sessions, redis_prefix=backend.prefix if backend else "x:"),
        passwords=CHEAP,
        mfa=MfaConfig(**mfa),  # type: ignore[arg-type]
    )


async def enrol_totp(config: Config, user_id: str) -> str:
    """A confirmed TOTP device for the user, as if enrolled earlier; returns its seed."""
    stores = await open_stores(config)
    try:
        factors = open_second_factors(
            config,
            stores.credentials,
            None,
            Regulator(stores.limiter, config.regulation),
            load_secret_box(config),  # type: ignore[arg-type]
        )
        enrolment = await factors.totp.start("acme", user_id, "alice", "phone")
        assert enrolment is not None
        await stores.credentials.confirm_totp(user_id, enrolment.device.id, 1)
        return enrolment.secret
    finally:
        await stores.close()


async def backup_codes(config: Config, user_id: str) -> tuple[str, ...]:
    stores = await open_stores(config)
    try:
        factors = open_second_factors(
            config,
            stores.credentials,
            None,
            Regulator(stores.limiter, config.regulation),
            load_secret_box(config),  # type: ignore[arg-type]
        )
        return await factors.backup_codes.regenerate("acme", user_id)
    finally:
        await stores.close()


async def signed_in_at_prompt(browser: Browser, target: str = "/admin/x") -> tuple[str, str]:
    """Sign in with the password, follow to the MFA prompt; returns (prompt page, rd)."""
    resp = await sign_in(browser, target)
    assert resp.status == 303
    resp, _ = await browser.request("GET", target)
    assert resp.status == 302
    location = resp.headers["Location"]
    assert location.startswith("/.authgate/mfa?rd=")
    rd = parse_qs(urlsplit(location).query)["rd"][0]
    resp, page = await browser.request("GET", location)
    assert resp.status == 200
    return page, rd


def amr_seen_upstream(body: str) -> list[str]:
    token = echo_headers(body)["x-authgate-jwt"]
    return list(jwt.decode(token, options={"verify_signature": False})["amr"])


async def post_code(browser: Browser, page: str, step: str, code: str) -> aiohttp.ClientResponse:
    form = {"csrf_token": hidden(page, "csrf_token"), "rd": hidden(page, "rd"), "code": code}
    resp, _ = await browser.request("POST", f"/.authgate/mfa/{step}", data=form, Origin=ORIGIN)
    return resp


@pytest.fixture(
    params=[("sqlite", "sql"), pytest.param(("postgres", "redis"), marks=pytest.mark.postgres)],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param[0] == "sqlite":
        return Backend(f"sqlite:///{tmp_path / 'authgate.db'}", "storage")
    prefix = request.getfixturevalue("redis_prefix")  # this test's own keys (counters too)
    return Backend(request.getfixturevalue("postgres_clean"), "redis://127.0.0.1:6379/0", prefix)


async def test_totp_step_up_reaches_the_upstream_with_otp_in_amr_and_a_code_works_once(
    tmp_path: Path,
    upstream: TestServer,
    start_gateway: StartGateway,
    client: aiohttp.ClientSession,
    backend: Backend,
) -> None:
    config = configure(tmp_path, upstream, backend)
    alice, _ = await add_alice(config)
    secret = await enrol_totp(config, alice.id)
    base = await start_gateway(config, tuple(default_extensions()))
    browser = Browser(base, client)

    page, rd = await signed_in_at_prompt(browser)
    assert 'action="/.authgate/mfa/totp"' in page
    before = browser.cookies["authgate_session"]
    code = pyotp.TOTP(secret).now()
    resp = await post_code(browser, page, "totp", code)
    assert resp.status == 303
    assert resp.headers["Location"] == rd == "http://app.test/admin/x"
    assert browser.cookies["authgate_session"] != before  # rotated

    resp, body = await browser.request("GET", "/admin/x")
    assert resp.status == 200
    assert sorted(amr_seen_upstream(body)) == ["otp", "pwd"]

    # The pre-step-up cookie was rotated away: replayed, it reaches nothing.
    thief = Browser(base, client, cookies={"authgate_session": before})
    resp, _ = await thief.request("GET", "/admin/x")
    assert resp.status == 302
    assert resp.headers["Location"].startswith("/.authgate/login?")

    # The same code again, from another sign-in within its window: refused.
    other = Browser(base, client)
    page, _ = await signed_in_at_prompt(other)
    resp = await post_code(other, page, "totp", code)
    assert resp.status == 401
    resp, _ = await other.request("GET", "/admin/x")
    assert resp.status == 302
    assert resp.headers["Location"].startswith("/.authgate/mfa?")


async def test_first_prompt_enrols_a_device_then_continues_with_backup_codes_shown_once(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    config = configure(tmp_path, upstream)
    await add_alice(config)
    base = await start_gateway(config, tuple(default_extensions()))
    browser = Browser(base, client)

    page, rd = await signed_in_at_prompt(browser)
    assert "<svg" in page
    secret_match = re.search(r'<code class="ag-secret">([A-Z2-7]+)</code>', page)
    assert secret_match
    secret = secret_match.group(1)
    form = {
        "csrf_token": hidden(page, "csrf_token"),
        "rd": hidden(page, "rd"),
        "device": hidden(page, "device"),
        "name": "my phone",
        "code": "000000" if pyotp.TOTP(secret).now() != "000000" else "111111",
    }
    resp, page2 = await browser.request("POST", "/.authgate/mfa/enrol", data=form, Origin=ORIGIN)
    assert resp.status == 401  # a wrong code activates nothing
    form["csrf_token"] = hidden(page2, "csrf_token")
    form["code"] = pyotp.TOTP(secret).now()
    resp, codes_page = await browser.request(
        "POST", "/.authgate/mfa/enrol", data=form, Origin=ORIGIN
    )
    assert resp.status == 200
    codes = re.findall(r"<code>([A-Z2-7]{5}-[A-Z2-7]{5})</code>", codes_page)
    assert len(codes) == 10
    assert rd in codes_page

    resp, body = await browser.request("GET", "/admin/x")
    assert resp.status == 200
    assert "otp" in amr_seen_upstream(body)

    # "Once": with a device enrolled, the enrolment step is closed.
    other = Browser(base, client)
    page, _ = await signed_in_at_prompt(other)
    assert "ag-secret" not in page
    form["csrf_token"] = hidden(page, "csrf_token")
    resp, _ = await other.request("POST", "/.authgate/mfa/enrol", data=form, Origin=ORIGIN)
    assert resp.status == 403
    resp, _ = await other.request("GET", "/admin/x")
    assert resp.status == 302


async def test_enrollment_deny_answers_403_to_a_user_without_factors(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    config = configure(tmp_path, upstream, enrollment="deny")
    await add_alice(config)
    base = await start_gateway(config, tuple(default_extensions()))
    browser = Browser(base, client)
    await sign_in(browser, "/admin/x")
    resp, page = await browser.request("GET", "/.authgate/mfa?rd=http%3A%2F%2Fapp.test%2Fadmin%2Fx")
    assert resp.status == 403
    assert "has none yet" in page


async def test_a_backup_code_steps_up_once(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    config = configure(tmp_path, upstream)
    alice, _ = await add_alice(config)
    await enrol_totp(config, alice.id)
    codes = await backup_codes(config, alice.id)
    base = await start_gateway(config, tuple(default_extensions()))

    browser = Browser(base, client)
    page, _ = await signed_in_at_prompt(browser)
    resp = await post_code(browser, page, "backup", codes[3].lower())
    assert resp.status == 303
    resp, body = await browser.request("GET", "/admin/x")
    assert resp.status == 200
    assert "otp" in amr_seen_upstream(body)

    other = Browser(base, client)
    page, _ = await signed_in_at_prompt(other)
    resp = await post_code(other, page, "backup", codes[3])
    assert resp.status == 401
    resp, _ = await other.request("GET", "/admin/x")
    assert resp.status == 302


async def test_a_later_step_called_directly_gets_nothing(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    config = configure(tmp_path, upstream)
    alice, _ = await add_alice(config)
    secret = await enrol_totp(config, alice.id)
    base = await start_gateway(config, tuple(default_extensions()))

    # No session at all: a correct code is worth nothing.
    stranger = Browser(base, client)
    resp, _ = await stranger.request(
        "POST", "/.authgate/mfa/totp", data={"code": pyotp.TOTP(secret).now()}, Origin=ORIGIN
    )
    assert resp.status == 403
    assert "authgate_session" not in stranger.cookies

    browser = Browser(base, client)
    page, _ = await signed_in_at_prompt(browser)
    token = hidden(page, "csrf_token")
    # A session but no token, a token but a foreign Origin: refused, code not spent.
    code = pyotp.TOTP(secret).now()
    resp, _ = await browser.request(
        "POST", "/.authgate/mfa/totp", data={"code": code}, Origin=ORIGIN
    )
    assert resp.status == 403
    resp, _ = await browser.request(
        "POST",
        "/.authgate/mfa/totp",
        data={"code": code, "csrf_token": token},
        Origin="http://evil.test",
    )
    assert resp.status == 403
    # A token minted for another session does not carry over.
    other = Browser(base, client)
    other_page, _ = await signed_in_at_prompt(other)
    resp, _ = await browser.request(
        "POST",
        "/.authgate/mfa/totp",
        data={"code": code, "csrf_token": hidden(other_page, "csrf_token")},
        Origin=ORIGIN,
    )
    assert resp.status == 403
    resp, _ = await browser.request("GET", "/admin/x")
    assert resp.status == 302
    # The code was never spent by the refused posts.
    resp = await post_code(browser, page, "totp", code)
    assert resp.status == 303


async def test_wrong_codes_are_limited_with_retry_after(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    config = configure(tmp_path, upstream)
    alice, _ = await add_alice(config)
    secret = await enrol_totp(config, alice.id)
    base = await start_gateway(config, tuple(default_extensions()))
    browser = Browser(base, client)
    page, _ = await signed_in_at_prompt(browser)
    wrong = "000000" if pyotp.TOTP(secret).now() != "000000" else "111111"
    statuses = [(await post_code(browser, page, "totp", wrong)).status for _ in range(4)]
    assert statuses[:3] == [401, 401, 401]
    resp = await post_code(browser, page, "totp", pyotp.TOTP(secret).now())
    assert resp.status == 429
    assert int(resp.headers["Retry-After"]) > 0
