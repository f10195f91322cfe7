"""Per-tenant feature switches through a running gateway: a login method or second
factor the tenant does not offer (`tenants[].login_methods`, `mfa_methods`) is neither
shown nor accepted when posted to directly."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import aiohttp
import pyotp
from aiohttp.test_utils import TestServer

from gateway.config.model import Config
from gateway.extensions import default_extensions
from tests.integration.browser import Browser, hidden
from tests.integration.conftest import StartGateway
from tests.integration.test_identity_flow import PASSWORD, add_alice, sign_in
from tests.integration.test_mfa_flow import (
    ORIGIN,
    backup_codes,
    configure,
    enrol_totp,
    signed_in_at_prompt,
)

# Every test on aiohttp's server alone and on the fast path (conftest.py).
BOTH_PATHS = True

ACCOUNT = "/.authgate/account"


def offering(config: Config, **methods: tuple[str, ...]) -> Config:
    tenant = dataclasses.replace(config.tenants[0], **methods)  # type: ignore[arg-type]
    return dataclasses.replace(config, tenants=(tenant,))


async def test_a_passkey_only_tenant_has_no_password_form_and_refuses_a_posted_password(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    config = offering(configure(tmp_path, upstream), login_methods=("passkey",))
    await add_alice(config)
    browser = Browser(await start_gateway(config, tuple(default_extensions())), client)
    resp, page = await browser.request("GET", "/.authgate/login")
    assert resp.status == 200
    assert 'name="password"' not in page and "/.authgate/login/passkey" in page
    form = {"csrf_token": hidden(page, "csrf_token"), "rd": "", "username": "alice"}
    resp, _ = await browser.request(
        "POST", "/.authgate/login", data={**form, "password": PASSWORD}, Origin=ORIGIN
    )
    assert resp.status == 404
    assert "authgate_session" not in browser.cookies


async def test_a_password_only_tenant_has_no_passkey_button_and_refuses_passkey_posts(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    config = offering(configure(tmp_path, upstream), login_methods=("password",))
    browser = Browser(await start_gateway(config, tuple(default_extensions())), client)
    _, page = await browser.request("GET", "/.authgate/login")
    assert 'name="password"' in page and "/.authgate/login/passkey" not in page
    resp, _ = await browser.request(
        "POST",
        "/.authgate/login/passkey",
        data={"csrf_token": hidden(page, "csrf_token"), "rd": ""},
        Origin=ORIGIN,
        Accept="application/json",
    )
    assert resp.status == 404


async def test_backup_codes_are_offered_only_when_the_tenant_lists_them(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    config = offering(configure(tmp_path, upstream), mfa_methods=("totp", "webauthn"))
    alice, _ = await add_alice(config)
    secret = await enrol_totp(config, alice.id)
    codes = await backup_codes(config, alice.id)
    browser = Browser(await start_gateway(config, tuple(default_extensions())), client)
    page, rd = await signed_in_at_prompt(browser)
    assert "/.authgate/mfa/totp" in page and "/.authgate/mfa/backup" not in page
    form = {"csrf_token": hidden(page, "csrf_token"), "rd": rd, "code": codes[0]}
    resp, _ = await browser.request("POST", "/.authgate/mfa/backup", data=form, Origin=ORIGIN)
    assert resp.status == 404
    form["code"] = pyotp.TOTP(secret).now()
    resp, _ = await browser.request("POST", "/.authgate/mfa/totp", data=form, Origin=ORIGIN)
    assert resp.status == 303  # the offered method still works

    _, page = await browser.request("GET", ACCOUNT)
    assert "Backup codes" not in page and "Add an authenticator app" in page
    form = {"csrf_token": hidden(page, "csrf_token"), "action": "codes-regenerate"}
    resp, _ = await browser.request("POST", ACCOUNT, data=form, Origin=ORIGIN)
    assert resp.status == 404


async def test_a_webauthn_only_tenant_neither_shows_nor_accepts_totp(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    config = offering(configure(tmp_path, upstream), mfa_methods=("webauthn",))
    alice, _ = await add_alice(config)
    secret = await enrol_totp(config, alice.id)
    browser = Browser(await start_gateway(config, tuple(default_extensions())), client)
    assert (await sign_in(browser, "/members/x")).status == 303
    resp, page = await browser.request("GET", "/.authgate/mfa?rd=/admin/x")
    assert resp.status == 403  # the TOTP device is not usable here, and no enrolment of one
    assert "/.authgate/mfa/totp" not in page

    _, page = await browser.request("GET", ACCOUNT)
    assert "Add an authenticator app" not in page and "(authenticator app)" not in page
    assert "Add a security key or passkey" in page
    token = hidden(page, "csrf_token")
    form = {"csrf_token": token, "rd": "", "code": pyotp.TOTP(secret).now()}
    resp, _ = await browser.request("POST", "/.authgate/mfa/totp", data=form, Origin=ORIGIN)
    assert resp.status == 404
    resp, _ = await browser.request("GET", "/admin/x")
    assert resp.status == 302  # no step-up happened
    for action in ("totp-add", "totp-confirm"):
        form = {"csrf_token": token, "action": action}
        resp, _ = await browser.request("POST", ACCOUNT, data=form, Origin=ORIGIN)
        assert resp.status == 404, action
