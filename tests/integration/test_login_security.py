"""The sign-in form under attack: enumeration, CSRF, cross-origin posts, open redirects."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.extensions import default_extensions
from tests.integration.browser import Browser, hidden
from tests.integration.conftest import StartGateway, make_config
from tests.integration.users import CHEAP, PASSWORD, create_user

POLICY = "version: 1\ndefault: one_factor\n"


@pytest.fixture
async def browser(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway
) -> AsyncIterator[Browser]:
    config = dataclasses.replace(
        make_config(tmp_path, str(upstream.make_url("")), policy=POLICY, dev_mode=False),
        passwords=CHEAP,
    )
    await create_user(config, "alice")
    await create_user(config, "mallory", disabled=True)
    base = await start_gateway(config, tuple(default_extensions()))
    async with aiohttp.ClientSession() as client:
        yield Browser(base, client)


async def login_form(browser: Browser, rd: str = "") -> dict[str, str]:
    resp, page = await browser.request("GET", "/.authgate/login")
    assert resp.status == 200
    return {"csrf_token": hidden(page, "csrf_token"), "rd": rd}


async def post_login(
    browser: Browser, form: dict[str, str], **headers: str
) -> tuple[aiohttp.ClientResponse, str]:
    headers.setdefault("Origin", "http://app.test")
    return await browser.request("POST", "/.authgate/login", data=form, **headers)


def normalised(page: str) -> str:
    """The page minus what legitimately differs per response (token, typed username)."""
    page = re.sub(r'name="csrf_token" value="[^"]*"', "", page)
    page = re.sub(r'id="ag-username"[^>]*>', "", page)
    return re.sub(r"<code>[0-9a-f]{24}</code>", "", page)


async def test_unknown_user_and_wrong_password_look_the_same(browser: Browser) -> None:
    pages = []
    for username in ("alice", "nobody-here", "mallory"):
        form = await login_form(browser)
        resp, page = await post_login(
            browser, {**form, "username": username, "password": "wrong" * 3}
        )
        assert resp.status == 401
        assert "Incorrect username or password." in page
        pages.append(normalised(page))
    assert pages[0] == pages[1] == pages[2]
    assert "authgate_session" not in browser.cookies


async def test_disabled_user_cannot_sign_in_even_with_the_right_password(
    browser: Browser,
) -> None:
    form = await login_form(browser)
    resp, _ = await post_login(browser, {**form, "username": "mallory", "password": PASSWORD})
    assert resp.status == 401
    assert "authgate_session" not in browser.cookies


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.test"},
        {"Origin": "null"},
        {"Origin": "https://app.test"},  # other scheme: other origin
        {"Origin": "", "Referer": "http://evil.test/page"},
    ],
)
async def test_cross_origin_posts_are_refused(browser: Browser, headers: dict[str, str]) -> None:
    form = await login_form(browser)
    resp, _ = await post_login(
        browser, {**form, "username": "alice", "password": PASSWORD}, **headers
    )
    assert resp.status == 403
    assert "authgate_session" not in browser.cookies


async def test_missing_or_foreign_csrf_token_is_refused(browser: Browser) -> None:
    form = await login_form(browser)
    for token in ("", "v1.1.x.y", form["csrf_token"] + "x"):
        resp, _ = await post_login(
            browser, {**form, "csrf_token": token, "username": "alice", "password": PASSWORD}
        )
        assert resp.status == 403
    # a token minted for another pre-session (another browser) does not transfer
    browser.cookies["authgate_csrf"] = "another-browser-presession-value-0123456789"
    resp, _ = await post_login(browser, {**form, "username": "alice", "password": PASSWORD})
    assert resp.status == 403
    assert "authgate_session" not in browser.cookies


@pytest.mark.parametrize(
    ("rd", "landing"),
    [
        ("http://app.test/deep/page?x=1", "http://app.test/deep/page?x=1"),
        ("/relative/page", "http://app.test/relative/page"),
        ("https://evil.test/", "http://app.test/"),
        ("//evil.test/", "http://app.test/"),
        ("/\\evil.test", "http://app.test/"),
        ("https://app.test@evil.test/", "http://app.test/"),
        ("https://app.test.evil.test/", "http://app.test/"),
        ("javascript:alert(1)", "http://app.test/"),
        ("http://app.test/%0d%0aSet-Cookie:x=1", "http://app.test/"),
    ],
)
async def test_return_address_stays_home(browser: Browser, rd: str, landing: str) -> None:
    form = await login_form(browser, rd)
    resp, _ = await post_login(browser, {**form, "username": "alice", "password": PASSWORD})
    assert resp.status == 303
    assert resp.headers["Location"] == landing


async def test_session_cookie_is_secure_httponly_lax_and_new(browser: Browser) -> None:
    form = await login_form(browser)
    presession = browser.cookies["authgate_csrf"]
    resp, _ = await post_login(browser, {**form, "username": "alice", "password": PASSWORD})
    assert resp.status == 303
    cookie = next(c for c in browser.last_set_cookies if c.startswith("authgate_session="))
    attributes = {part.strip().lower() for part in cookie.split(";")}
    assert {"secure", "httponly", "samesite=lax", "path=/"} <= attributes
    session = browser.cookies["authgate_session"]
    assert len(session) >= 43  # 256 bits, url-safe base64
    assert session != presession
    # the pre-session value used for the sign-in was replaced (a planted one dies)
    assert browser.cookies["authgate_csrf"] != presession
    hsts = resp.headers.get("Strict-Transport-Security")
    assert hsts is None or "max-age" in hsts


async def test_our_pages_carry_the_strict_security_headers(browser: Browser) -> None:
    resp, _ = await browser.request("GET", "/.authgate/login")
    csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["Strict-Transport-Security"].startswith("max-age=")
    assert resp.headers["Cache-Control"] == "no-store"


async def test_an_oversized_form_is_refused_without_reading_it_all(browser: Browser) -> None:
    form = await login_form(browser)
    resp, _ = await post_login(
        browser, {**form, "username": "alice", "password": "x" * (2 * 1024 * 1024)}
    )
    assert resp.status == 400
    assert "authgate_session" not in browser.cookies


async def test_an_oversized_form_to_any_page_is_a_4xx_never_a_500(browser: Browser) -> None:
    big = {"csrf_token": "x", "code": "1" * (2 * 1024 * 1024)}
    origin = {"Origin": "http://app.test"}
    resp, _ = await browser.request("POST", "/.authgate/login/passkey", data=big, **origin)
    assert 400 <= resp.status < 500, resp.status
    form = await login_form(browser)
    resp, _ = await post_login(browser, {**form, "username": "alice", "password": PASSWORD})
    assert resp.status == 303  # signed in: the MFA and account pages read forms too
    for path in ("/.authgate/mfa/totp", "/.authgate/account"):
        resp, _ = await browser.request("POST", path, data=big, **origin)
        assert 400 <= resp.status < 500, (path, resp.status)
