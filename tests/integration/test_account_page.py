"""`{prefix}/account` through a running gateway: profile, factors, codes, password, sessions."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import aiohttp
import pyotp
import pytest
from aiohttp.test_utils import TestServer

from gateway.config.model import Config, SessionsConfig
from gateway.extensions import default_extensions
from login_ui.account import describe_user_agent
from tests.integration.browser import Browser, hidden
from tests.integration.conftest import StartGateway
from tests.integration.test_identity_flow import add_alice, sign_in
from tests.integration.test_mfa_flow import ORIGIN, configure, post_code

ACCOUNT = "/.authgate/account"


async def signed_in(base: str, client: aiohttp.ClientSession, ua: str = "test") -> Browser:
    browser = Browser(base, client)
    resp = await sign_in(browser, "/members/x")
    assert resp.status == 303
    return browser


async def act(browser: Browser, action: str, **fields: str) -> tuple[aiohttp.ClientResponse, str]:
    _, page = await browser.request("GET", ACCOUNT)
    form = {"csrf_token": hidden(page, "csrf_token"), "action": action, **fields}
    return await browser.request("POST", ACCOUNT, data=form, Origin=ORIGIN)


async def started(
    tmp_path: Path, upstream: TestServer, start: StartGateway, **sessions: float
) -> tuple[str, Config]:
    config = configure(tmp_path, upstream)
    if sessions:
        config = dataclasses.replace(config, sessions=SessionsConfig(**sessions))  # type: ignore[arg-type]
    await add_alice(config)
    return await start(config, tuple(default_extensions())), config


async def test_the_account_page_needs_a_session_and_shows_the_profile(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    base, _ = await started(tmp_path, upstream, start_gateway)
    resp, _ = await Browser(base, client).request("GET", ACCOUNT)
    assert resp.status == 302
    assert resp.headers["Location"].startswith("/.authgate/login?rd=")
    browser = await signed_in(base, client)
    resp, page = await browser.request(
        "GET", ACCOUNT, **{"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/130.0"}
    )
    assert resp.status == 200
    for text in ("alice", "alice@acme.test", "Alice Example", "staff, wiki", "(this device)"):
        assert text in page
    # A POST without the session's token changes nothing.
    resp, _ = await browser.request("POST", ACCOUNT, data={"action": "everywhere"}, Origin=ORIGIN)
    assert resp.status == 403


async def test_add_a_totp_device_then_manage_factors_only_after_stepping_up(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    base, _ = await started(tmp_path, upstream, start_gateway)
    browser = await signed_in(base, client)
    resp, page = await act(browser, "totp-add")
    assert resp.status == 200 and "<svg" in page
    found = re.search(r'<code class="ag-secret">([A-Z2-7]+)</code>', page)
    assert found
    form = {
        "csrf_token": hidden(page, "csrf_token"),
        "action": "totp-confirm",
        "device": hidden(page, "device"),
        "name": "work phone",
        "code": pyotp.TOTP(found.group(1)).now(),
    }
    resp, codes_page = await browser.request("POST", ACCOUNT, data=form, Origin=ORIGIN)
    assert resp.status == 200
    codes = re.findall(r"<code>([A-Z2-7]{5}-[A-Z2-7]{5})</code>", codes_page)
    assert len(codes) == 10
    _, page = await browser.request("GET", ACCOUNT)
    assert "work phone (authenticator app)" in page and "10 of 10 unused" in page
    device = re.search(r'name="device" value="([0-9a-f]{32})"', page)
    assert device

    # With a factor enrolled, a password-only session may not touch factors.
    resp, _ = await act(browser, "totp-remove", device=device.group(1))
    assert resp.status == 303
    assert resp.headers["Location"].startswith("/.authgate/mfa?rd=")
    resp, prompt = await browser.request("GET", resp.headers["Location"])
    resp = await post_code(browser, prompt, "backup", codes[0])
    assert resp.status == 303
    assert resp.headers["Location"] == "http://app.test/.authgate/account"

    resp, _ = await act(browser, "totp-rename", device=device.group(1), name="old phone")
    assert resp.headers["Location"].endswith("?m=renamed")
    _, page = await browser.request("GET", ACCOUNT)
    assert "old phone (authenticator app)" in page and "9 of 10 unused" in page
    resp, _ = await act(browser, "codes-regenerate")
    assert resp.status == 200
    resp, _ = await act(browser, "totp-remove", device=device.group(1))
    assert resp.headers["Location"].endswith("?m=removed")
    _, page = await browser.request("GET", ACCOUNT)
    assert "old phone" not in page and "10 of 10 unused" in page


async def test_password_change_rehashes_and_signs_out_the_other_sessions(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    base, _ = await started(tmp_path, upstream, start_gateway)
    other = await signed_in(base, client)
    browser = await signed_in(base, client)
    resp, _ = await act(browser, "password", new_password="a new passphrase", new_password2="typo")
    assert resp.headers["Location"].endswith("?m=mismatch")
    resp, _ = await act(
        browser, "password", new_password="a new passphrase", new_password2="a new passphrase"
    )
    assert resp.headers["Location"].endswith("?m=password")
    resp, _ = await browser.request("GET", "/members/x")
    assert resp.status == 200
    resp, _ = await other.request("GET", "/members/x")
    assert resp.status == 302
    # The new password signs in, the old one no longer does.
    fresh = Browser(base, client)
    _, page = await fresh.request("GET", "/.authgate/login")
    form = {
        "csrf_token": hidden(page, "csrf_token"),
        "rd": "",
        "username": "alice",
        "password": "a new passphrase",
    }
    resp, _ = await fresh.request("POST", "/.authgate/login", data=form, Origin=ORIGIN)
    assert resp.status == 303


async def test_sessions_are_revocable_one_by_one_and_everywhere(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    base, _ = await started(tmp_path, upstream, start_gateway)
    other = await signed_in(base, client)
    browser = await signed_in(base, client)
    _, page = await browser.request("GET", ACCOUNT)
    fp = re.search(r'name="session" value="([0-9a-f]{12})"', page)
    assert fp
    resp, _ = await act(browser, "session-revoke", session=fp.group(1))
    assert resp.headers["Location"].endswith("?m=revoked")
    resp, _ = await other.request("GET", "/members/x")
    assert resp.status == 302
    resp, _ = await browser.request("GET", "/members/x")
    assert resp.status == 200
    resp, _ = await act(browser, "everywhere")
    assert resp.status == 303
    assert "authgate_session" not in browser.cookies
    resp, _ = await browser.request("GET", "/members/x")
    assert resp.status == 302


async def test_sensitive_changes_need_a_fresh_sign_in(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    base, _ = await started(tmp_path, upstream, start_gateway, fresh_for=0.0)
    browser = await signed_in(base, client)
    for action in ("password", "totp-add", "codes-regenerate"):
        resp, _ = await act(browser, action, new_password="x" * 12, new_password2="x" * 12)
        assert resp.status == 303
        assert resp.headers["Location"].endswith("&reauth=1")


@pytest.mark.parametrize(
    ("ua", "shown"),
    [
        (
            "Mozilla/5.0 (X11; Linux x86_64; rv:130.0) Gecko/20100101 Firefox/130.0",
            "Firefox on Linux",
        ),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
            " Chrome/128.0 Safari/537.36 Edg/128.0",
            "Edge on Windows",
        ),
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15"
            " (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1",
            "Safari on iPhone",
        ),
        ("curl/8.5.0", "curl"),
        (None, "Unknown browser"),
    ],
)
def test_device_names(ua: str | None, shown: str) -> None:
    assert describe_user_agent(ua) == shown
