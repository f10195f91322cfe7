"""WebAuthn through a running gateway with the real extensions and a software
authenticator: register on the account page, sign in with the passkey alone, step up
with it on /mfa; replays, wrong origins and other users' keys get nothing."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.config.model import Config, SessionsConfig
from gateway.extensions import default_extensions
from tests.conftest import REDIS_URL
from tests.integration.browser import Browser, hidden
from tests.integration.conftest import StartGateway, make_config
from tests.integration.soft_authenticator import SoftAuthenticator
from tests.integration.users import CHEAP, PASSWORD, create_user

POLICY = """
version: 1
default: deny
rules:
  - name: secure
    paths: ["/secure/**"]
    action: two_factor
  - name: members
    action: one_factor
"""
ORIGIN = "http://app.test"
P = "/.authgate"


async def add_user(config: Config, username: str) -> None:
    await create_user(config, username, display_name=username.title())


@dataclasses.dataclass
class Site:
    base: str
    client: aiohttp.ClientSession

    def browser(self) -> Browser:
        return Browser(self.base, self.client)


@pytest.fixture(params=["storage", pytest.param("redis", marks=pytest.mark.redis)])
async def site(
    tmp_path: Path,
    upstream: TestServer,
    start_gateway: StartGateway,
    request: pytest.FixtureRequest,
) -> Site:
    """A gateway with sessions, and so the WebAuthn challenges, in the database or in
    Redis (each a single-use code store of its own)."""
    config = dataclasses.replace(
        make_config(tmp_path, str(upstream.make_url("")), policy=POLICY), passwords=CHEAP
    )
    if request.param == "redis":
        prefix = request.getfixturevalue("redis_prefix")
        config = dataclasses.replace(
            config, sessions=SessionsConfig(store=REDIS_URL, redis_prefix=prefix)
        )
    await add_user(config, "alice")
    await add_user(config, "bob")
    base = await start_gateway(config, tuple(default_extensions()))
    async with aiohttp.ClientSession() as client:
        yield Site(base, client)


async def sign_in(browser: Browser, username: str) -> None:
    _, page = await browser.request("GET", f"{P}/login")
    resp, _ = await browser.request(
        "POST",
        f"{P}/login",
        data={
            "csrf_token": hidden(page, "csrf_token"),
            "rd": "",
            "username": username,
            "password": PASSWORD,
        },
        Origin=ORIGIN,
    )
    assert resp.status == 303


async def post_json(
    browser: Browser, path: str, body: dict[str, Any], origin: str = ORIGIN
) -> tuple[int, dict[str, Any]]:
    resp, text = await browser.request(
        "POST",
        path,
        data=json.dumps(body),  # type: ignore[arg-type]
        Origin=origin,
        Accept="application/json",
        **{"Content-Type": "application/json"},
    )
    return resp.status, json.loads(text) if text else {}


async def register(browser: Browser, authenticator: SoftAuthenticator, name: str) -> int:
    _, page = await browser.request("GET", f"{P}/account")
    token = hidden(page, "csrf_token")
    resp, options = await browser.request(
        "POST",
        f"{P}/account/webauthn/options",
        data={"csrf_token": token},
        Origin=ORIGIN,
        Accept="application/json",
    )
    assert resp.status == 200, options
    credential = authenticator.create(options, ORIGIN)
    status, _ = await post_json(
        browser,
        f"{P}/account/webauthn/register",
        {"csrf_token": token, "name": name, "credential": credential},
    )
    return status


async def passkey_options(browser: Browser) -> tuple[str, str]:
    """The login page's token and fresh passwordless options."""
    _, page = await browser.request("GET", f"{P}/login")
    token = hidden(page, "csrf_token")
    resp, options = await browser.request(
        "POST",
        f"{P}/login/passkey",
        data={"csrf_token": token, "rd": ""},
        Origin=ORIGIN,
        Accept="application/json",
    )
    assert resp.status == 200, options
    return token, options


async def upstream_user(browser: Browser, path: str) -> str | None:
    resp, body = await browser.request("GET", path)
    if resp.status != 200:
        return None
    headers = {k.lower(): v for k, v in json.loads(body)["headers"]}
    return headers.get("remote-user")


async def test_register_on_the_account_page_then_sign_in_with_the_passkey_alone(
    site: Site,
) -> None:
    authenticator = SoftAuthenticator()
    alice = site.browser()
    await sign_in(alice, "alice")
    assert await register(alice, authenticator, "Laptop") == 200
    _, page = await alice.request("GET", f"{P}/account")
    assert "Laptop (security key or passkey)" in page

    visitor = site.browser()
    _, login_page = await visitor.request("GET", f"{P}/login")
    assert 'action="/.authgate/login/passkey"' in login_page
    assert 'autocomplete="username webauthn"' in login_page
    token, options = await passkey_options(visitor)
    status, answer = await post_json(
        visitor,
        f"{P}/login/passkey/verify",
        {"csrf_token": token, "rd": "", "credential": authenticator.get(options, ORIGIN)},
    )
    assert status == 200, answer
    assert answer["redirect"] == f"{ORIGIN}/"
    # A passkey with user verification is two factors: hwk + user.
    assert await upstream_user(visitor, "/secure/x") == "alice"


async def test_a_passkey_without_user_verification_is_one_factor(site: Site) -> None:
    authenticator = SoftAuthenticator(user_verifying=False)
    alice = site.browser()
    await sign_in(alice, "alice")
    assert await register(alice, authenticator, "Key") == 200
    visitor = site.browser()
    token, options = await passkey_options(visitor)
    status, _ = await post_json(
        visitor,
        f"{P}/login/passkey/verify",
        {"csrf_token": token, "rd": "", "credential": authenticator.get(options, ORIGIN)},
    )
    assert status == 200
    assert await upstream_user(visitor, "/members/") == "alice"
    assert await upstream_user(visitor, "/secure/x") is None


async def test_replayed_wrong_origin_and_wrong_rp_assertions_get_no_session(
    site: Site,
) -> None:
    authenticator = SoftAuthenticator()
    alice = site.browser()
    await sign_in(alice, "alice")
    assert await register(alice, authenticator, "Key") == 200

    visitor = site.browser()
    token, options = await passkey_options(visitor)
    body = {"csrf_token": token, "rd": "", "credential": authenticator.get(options, ORIGIN)}
    assert (await post_json(visitor, f"{P}/login/passkey/verify", body))[0] == 200
    status, _ = await post_json(visitor, f"{P}/login/passkey/verify", body)
    assert status in (401, 403)

    for tamper in ({"origin": "http://evil.test"}, {"rp_id": "evil.test"}):
        stranger = site.browser()
        token, options = await passkey_options(stranger)
        origin = str(tamper.pop("origin", ORIGIN))
        credential = authenticator.get(
            options, origin, credential=authenticator.credentials[0], **tamper
        )
        status, _ = await post_json(
            stranger,
            f"{P}/login/passkey/verify",
            {"csrf_token": token, "rd": "", "credential": credential},
        )
        assert status == 401
        assert "authgate_session" not in stranger.cookies


async def test_a_cloned_authenticator_is_refused(site: Site) -> None:
    authenticator = SoftAuthenticator()
    alice = site.browser()
    await sign_in(alice, "alice")
    assert await register(alice, authenticator, "Key") == 200
    for expected in (200, 401):
        visitor = site.browser()
        token, options = await passkey_options(visitor)
        credential = authenticator.get(options, ORIGIN, sign_count=5)
        status, _ = await post_json(
            visitor,
            f"{P}/login/passkey/verify",
            {"csrf_token": token, "rd": "", "credential": credential},
        )
        assert status == expected


async def test_step_up_with_a_security_key_on_the_mfa_page(site: Site) -> None:
    authenticator = SoftAuthenticator()
    alice = site.browser()
    await sign_in(alice, "alice")
    assert await register(alice, authenticator, "Key") == 200

    later = site.browser()
    await sign_in(later, "alice")
    resp, _ = await later.request("GET", "/secure/x")
    assert resp.status == 302
    assert resp.headers["Location"].startswith(f"{P}/mfa?rd=")
    _, page = await later.request("GET", resp.headers["Location"])
    assert "data-ag-verify" in page
    token = hidden(page, "csrf_token")
    pre_mfa_cookie = later.cookies["authgate_session"]
    resp, options = await later.request(
        "POST",
        f"{P}/mfa/webauthn/options",
        data={"csrf_token": token},
        Origin=ORIGIN,
        Accept="application/json",
    )
    assert resp.status == 200
    assert json.loads(options)["allowCredentials"]
    status, answer = await post_json(
        later,
        f"{P}/mfa/webauthn",
        {
            "csrf_token": token,
            "rd": f"{ORIGIN}/secure/x",
            "credential": authenticator.get(options, ORIGIN),
        },
    )
    assert status == 200, answer
    assert answer["redirect"] == f"{ORIGIN}/secure/x"
    assert later.cookies["authgate_session"] != pre_mfa_cookie
    assert await upstream_user(later, "/secure/x") == "alice"
    # The cookie from before the step-up is worth nothing now.
    stale = site.browser()
    stale.cookies["authgate_session"] = pre_mfa_cookie
    assert await upstream_user(stale, "/members/") is None


async def test_another_users_key_cannot_step_up(site: Site) -> None:
    bobs_key = SoftAuthenticator()
    bob = site.browser()
    await sign_in(bob, "bob")
    assert await register(bob, bobs_key, "Bob's key") == 200
    alice_key = SoftAuthenticator()
    alice = site.browser()
    await sign_in(alice, "alice")
    assert await register(alice, alice_key, "Alice's key") == 200

    later = site.browser()
    await sign_in(later, "alice")
    _, page = await later.request("GET", f"{P}/mfa?rd=")
    token = hidden(page, "csrf_token")
    _, options = await later.request(
        "POST",
        f"{P}/mfa/webauthn/options",
        data={"csrf_token": token},
        Origin=ORIGIN,
        Accept="application/json",
    )
    opened = {**json.loads(options), "allowCredentials": []}
    opened["rpId"] = "app.test"
    status, _ = await post_json(
        later,
        f"{P}/mfa/webauthn",
        {"csrf_token": token, "rd": "", "credential": bobs_key.get(opened, ORIGIN)},
    )
    assert status == 401
    assert await upstream_user(later, "/secure/x") is None


async def test_registration_needs_the_session_token_and_our_origin(site: Site) -> None:
    alice = site.browser()
    await sign_in(alice, "alice")
    _, page = await alice.request("GET", f"{P}/account")
    token = hidden(page, "csrf_token")
    for data, origin in (
        ({"csrf_token": "nope"}, ORIGIN),
        ({"csrf_token": token}, "http://evil.test"),
    ):
        resp, _ = await alice.request(
            "POST", f"{P}/account/webauthn/options", data=data, Origin=origin
        )
        assert resp.status == 403
    anonymous = site.browser()
    resp, _ = await anonymous.request(
        "POST", f"{P}/account/webauthn/options", data={"csrf_token": token}, Origin=ORIGIN
    )
    assert resp.status == 401
