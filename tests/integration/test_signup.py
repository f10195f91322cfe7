"""Self-service sign-up (`tenants[].signup`) through a running gateway: off by default
(404), a form guarded like the login page, a user with no groups or roles, signed in
at once, and a taken username refused."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer

from gateway.config.model import Config
from gateway.extensions import default_extensions
from gateway.stores import open_stores
from tests.integration.browser import Browser, hidden
from tests.integration.conftest import StartGateway
from tests.integration.test_identity_flow import add_alice, echo_headers
from tests.integration.test_mfa_flow import ORIGIN, configure

SIGNUP = "/.authgate/signup"
NEW_PASSWORD = "a long new password"


def with_signup(config: Config, **changes: object) -> Config:
    tenant = dataclasses.replace(config.tenants[0], signup=True, **changes)  # type: ignore[arg-type]
    return dataclasses.replace(config, tenants=(tenant,))


def filled(page: str, username: str = "Bob", **fields: str) -> dict[str, str]:
    return {
        "csrf_token": hidden(page, "csrf_token"),
        "rd": hidden(page, "rd"),
        "username": username,
        "email": "bob@example.test",
        "password": NEW_PASSWORD,
        "password2": NEW_PASSWORD,
        **fields,
    }


async def test_signup_is_off_by_default(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    browser = Browser(
        await start_gateway(configure(tmp_path, upstream), tuple(default_extensions())), client
    )
    for method in ("GET", "POST"):
        resp, _ = await browser.request(method, SIGNUP, Origin=ORIGIN)
        assert resp.status == 404, method


async def test_a_new_user_signs_up_and_is_signed_in_without_groups_or_roles(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    config = with_signup(configure(tmp_path, upstream))
    base = await start_gateway(config, tuple(default_extensions()))
    browser = Browser(base, client)
    resp, page = await browser.request("GET", f"{SIGNUP}?rd=http://app.test/members/x")
    assert resp.status == 200 and "Create an account" in page
    resp, _ = await browser.request("POST", SIGNUP, data=filled(page), Origin=ORIGIN)
    assert resp.status == 303
    assert resp.headers["Location"] == "http://app.test/members/x"
    resp, body = await browser.request("GET", "/members/x")
    assert resp.status == 200
    headers = echo_headers(body)
    assert headers["remote-user"] == "Bob" and headers.get("remote-groups", "") == ""

    stores = await open_stores(config)
    try:
        bob = await stores.users.get_by_username("acme", "bob")
        assert bob is not None
        assert (bob.email, bob.groups, bob.roles, bob.disabled) == (
            "bob@example.test",
            (),
            (),
            False,
        )
        assert bob.password_hash and NEW_PASSWORD not in bob.password_hash
        rows = await stores.audit.search(event="user_created")
    finally:
        await stores.close()
    assert [(r.user, json.loads(r.details)) for r in rows] == [("Bob", {"via": "signup"})]


async def test_the_form_needs_its_token_our_origin_and_a_free_username(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    config = with_signup(configure(tmp_path, upstream))
    await add_alice(config)
    browser = Browser(await start_gateway(config, tuple(default_extensions())), client)
    _, page = await browser.request("GET", SIGNUP)
    resp, _ = await browser.request("POST", SIGNUP, data=filled(page), Origin="http://evil.test")
    assert resp.status == 403
    resp, _ = await browser.request(
        "POST", SIGNUP, data=filled(page, csrf_token="forged"), Origin=ORIGIN
    )
    assert resp.status == 403
    resp, again = await browser.request("POST", SIGNUP, data=filled(page, "ALICE"), Origin=ORIGIN)
    assert resp.status == 409 and "taken" in again
    resp, again = await browser.request(
        "POST", SIGNUP, data=filled(page, password2="something else"), Origin=ORIGIN
    )
    assert resp.status == 400 and "differ" in again
    resp, again = await browser.request(
        "POST", SIGNUP, data=filled(page, "has space"), Origin=ORIGIN
    )
    assert resp.status == 400
    assert "authgate_session" not in browser.cookies


async def test_no_signup_where_the_tenant_offers_no_password(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    config = with_signup(configure(tmp_path, upstream), login_methods=("passkey",))
    browser = Browser(await start_gateway(config, tuple(default_extensions())), client)
    resp, _ = await browser.request("GET", SIGNUP)
    assert resp.status == 404
