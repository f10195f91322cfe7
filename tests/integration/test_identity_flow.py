"""Issue 4 end to end, through a running gateway with the real extensions, on every backend.

anonymous → 302 to login with rd → sign in → back to the original URL → the upstream
sees who it is (headers and a JWT it verifies with our JWKS) → logout kills the cookie
→ an API key works and is never forwarded → forward-auth answers for a session.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import jwt
import pytest
from aiohttp.test_utils import TestServer

import gateway.runtime as gateway_runtime
from gateway.config.model import Config, PasswordsConfig, SessionsConfig
from gateway.extensions import default_extensions
from gateway.identity.passwords import PasswordHasher
from gateway.secretbox import SecretBox
from gateway.signing import rotate_keys
from gateway.stores import User, new_id, open_stores
from tests.integration.browser import Browser, hidden
from tests.integration.conftest import StartGateway, make_config
from tests.integration.users import store_api_key

# Every test here runs on aiohttp's server and on the fast path (conftest).
BOTH_PATHS = True

POLICY = """
version: 1
default: deny
rules:
  - name: public
    paths: ["/public/**"]
    action: bypass
  - name: members
    action: one_factor
"""
PASSWORD = "correct horse battery staple"
CHEAP = PasswordsConfig(time_cost=1, memory_cost=8, parallelism=1)


@dataclass(frozen=True)
class Backend:
    storage: str
    sessions: str
    prefix: str = "authgate:"  # Redis key prefix: a test's own, so counters never leak


@pytest.fixture(
    params=[("sqlite", "sql"), ("postgres", "sql"), ("sqlite", "redis"), ("postgres", "redis")],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    storage_kind, session_kind = request.param
    storage = (
        f"sqlite:///{tmp_path / 'authgate.db'}"
        if storage_kind == "sqlite"
        else request.getfixturevalue("postgres_clean")
    )
    if session_kind == "redis":
        return Backend(storage, "redis://127.0.0.1:6379/0", request.getfixturevalue("redis_prefix"))
    return Backend(storage, "storage")


def configure(tmp_path: Path, upstream: TestServer, backend: Backend, **server: object) -> Config:
    config = make_config(
        tmp_path,
        str(upstream.make_url("")),
        policy=POLICY,
        trusted_proxies=("127.0.0.0/8",),
        **server,
    )
    return dataclasses.replace(
        config,
        storage=backend.storage,
        sessions=SessionsConfig(store=backend.sessions, redis_prefix=backend.prefix),
        passwords=CHEAP,
    )


async def add_alice(config: Config) -> tuple[User, str]:
    """Alice with a password, and an API key of hers; returns the user and the key."""
    stores = await open_stores(config)
    try:
        hasher = PasswordHasher(CHEAP)
        alice = User(
            id=new_id(),
            tenant="acme",
            username="alice",
            email="alice@acme.test",
            display_name="Alice Example",
            groups=("staff", "wiki"),
            roles=(),
            disabled=False,
            password_hash=await hasher.hash(PASSWORD),
            created=0.0,
            updated=0.0,
        )
        await stores.users.create(alice)
        key, _ = await store_api_key(stores, alice)
        return alice, key
    finally:
        await stores.close()


async def sign_in(browser: Browser, target: str) -> aiohttp.ClientResponse:
    resp, _ = await browser.request("GET", target)
    assert resp.status == 302
    location = resp.headers["Location"]
    assert location.startswith("/.authgate/login?rd=")
    rd = parse_qs(urlsplit(location).query)["rd"][0]
    assert rd == f"http://app.test{target}"
    resp, page = await browser.request("GET", location)
    assert resp.status == 200
    assert "Sign in" in page
    form = {
        "csrf_token": hidden(page, "csrf_token"),
        "rd": hidden(page, "rd"),
        "username": "alice",
        "password": PASSWORD,
    }
    resp, _ = await browser.request("POST", "/.authgate/login", data=form, Origin="http://app.test")
    return resp


def echo_headers(body: str) -> dict[str, str]:
    import json

    return {k.lower(): v for k, v in json.loads(body)["headers"]}


async def test_sign_in_identity_headers_logout_api_key_and_forward_auth(
    tmp_path: Path,
    upstream: TestServer,
    start_gateway: StartGateway,
    backend: Backend,
    client: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    config = configure(tmp_path, upstream, backend)
    _, api_key = await add_alice(config)
    base = await start_gateway(config, tuple(default_extensions()))
    browser = Browser(base, client)

    # anonymous: public passes, the rest goes to the interstitial (API clients: 401)
    resp, _ = await browser.request("GET", "/public/x")
    assert resp.status == 200
    async with client.get(
        f"{base}/members/x", headers={"Host": "app.test", "Accept": "application/json"}
    ) as api:
        assert api.status == 401
        assert "WWW-Authenticate" in api.headers

    # sign in; the session cookie is new, HttpOnly, SameSite=Lax (dev mode: not Secure)
    resp = await sign_in(browser, "/members/page?a=1")
    assert resp.status == 303
    assert resp.headers["Location"] == "http://app.test/members/page?a=1"
    session_cookie = next(c for c in browser.last_set_cookies if c.startswith("authgate_session="))
    assert "HttpOnly" in session_cookie
    assert "SameSite=Lax" in session_cookie
    first_session = browser.cookies["authgate_session"]

    # the upstream sees alice (not the forged admin), and a JWT it can verify
    resp, body = await browser.request(
        "GET", "/members/page?a=1", **{"Remote-User": "admin", "remote-groups": "admins"}
    )
    assert resp.status == 200
    seen = echo_headers(body)
    assert seen["remote-user"] == "alice"
    assert seen["remote-email"] == "alice@acme.test"
    assert seen["remote-name"] == "Alice Example"
    assert seen["remote-groups"] == "staff,wiki"
    assert "authgate_session" not in seen.get("cookie", "")
    jwks_resp, jwks_body = await browser.request("GET", "/.authgate/jwks.json")
    assert jwks_resp.status == 200
    # Just after start the keys were read this instant: a full max-age (signing.py).
    assert jwks_resp.headers["Cache-Control"] in ("public, max-age=300", "public, max-age=299")
    keys = {k["kid"]: k for k in __import__("json").loads(jwks_body)["keys"]}
    token = seen["x-authgate-jwt"]
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(
        token,
        jwt.PyJWK(keys[header["kid"]]).key,
        algorithms=["ES256"],
        audience="app.test",
        issuer="authgate",
    )
    assert claims["sub"] == "alice"
    assert claims["groups"] == ["staff", "wiki"]
    assert claims["amr"] == ["pwd"]

    # forward-auth for the same browser: 200 with identity headers
    async with client.get(
        f"{base}/.authgate/verify",
        headers={
            "X-Original-URL": "https://app.test/members/x",
            "Cookie": f"authgate_session={first_session}; theme=dark",
        },
    ) as verify:
        assert verify.status == 200
        assert verify.headers["Remote-User"] == "alice"
        assert "Cookie" not in verify.headers  # identity only, never the request's cookies

    # signing in again gives a new id (no fixation), and the old one stops working
    resp = await sign_in_again(browser)
    assert browser.cookies["authgate_session"] != first_session

    # logout: the cookie is cleared and the old value refused from then on
    resp, page = await browser.request("GET", "/.authgate/logout")
    assert resp.status == 200
    current = browser.cookies["authgate_session"]
    resp, _ = await browser.request(
        "POST",
        "/.authgate/logout",
        data={"csrf_token": hidden(page, "csrf_token")},
        Origin="http://app.test",
    )
    assert resp.status == 200
    assert "authgate_session" not in browser.cookies
    for stale in (current, first_session):
        async with client.get(
            f"{base}/members/x",
            headers={
                "Host": "app.test",
                "Accept": "application/json",
                "Cookie": f"authgate_session={stale}",
            },
        ) as after:
            assert after.status == 401

    # an API key authenticates as alice and is not forwarded
    async with client.get(
        f"{base}/members/api",
        headers={"Host": "app.test", "Authorization": f"Bearer {api_key}"},
    ) as api:
        assert api.status == 200
        seen = echo_headers(await api.text())
    assert seen["remote-user"] == "alice"
    assert "authorization" not in seen
    async with client.get(
        f"{base}/members/api",
        headers={"Host": "app.test", "Authorization": "Bearer agk_" + "x" * 43},
    ) as api:
        assert api.status == 401

    # nothing secret reached a log line
    for secret in (PASSWORD, api_key, first_session, current):
        assert secret not in caplog.text


async def sign_in_again(browser: Browser) -> aiohttp.ClientResponse:
    resp, page = await browser.request("GET", "/.authgate/login")
    form = {
        "csrf_token": hidden(page, "csrf_token"),
        "rd": "",
        "username": "alice",
        "password": PASSWORD,
    }
    resp, _ = await browser.request("POST", "/.authgate/login", data=form, Origin="http://app.test")
    assert resp.status == 303
    return resp


async def test_an_instance_that_cannot_open_the_key_replacing_a_withdrawn_one_fails_closed(
    tmp_path: Path,
    upstream: TestServer,
    start_gateway: StartGateway,
    client: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A leak: the operator withdraws the keys under a new encryption key. A gateway
    still configured with the old one cannot open the replacement: it must stop
    signing with the withdrawn key (a 500, never a pass with a forgeable JWT) and stop
    serving it in its JWKS (a 503), while anonymous requests to bypass routes pass."""
    monkeypatch.setattr(gateway_runtime, "REFRESH_INTERVAL", 0.2)
    config = configure(tmp_path, upstream, Backend(f"sqlite:///{tmp_path / 'a.db'}", "storage"))
    await add_alice(config)
    base = await start_gateway(config, tuple(default_extensions()))
    browser = Browser(base, client)
    await sign_in(browser, "/members/x")
    resp, body = await browser.request("GET", "/members/x")
    assert resp.status == 200 and "x-authgate-jwt" in echo_headers(body)

    stores = await open_stores(config)
    try:
        await rotate_keys(
            stores.keys,
            SecretBox("a new encryption key, 32+ chars!"),
            now=time.time(),
            withdraw=True,
        )
    finally:
        await stores.close()

    deadline = time.monotonic() + 5
    while True:
        resp, body = await browser.request("GET", "/members/x")
        if resp.status != 200 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert resp.status == 500
    assert "x-authgate-jwt" not in body.lower()
    jwks, _ = await browser.request("GET", "/.authgate/jwks.json")
    assert jwks.status == 503
    assert jwks.headers["Cache-Control"] == "no-store"
    async with aiohttp.ClientSession() as anonymous:  # no session: no JWT to sign
        async with anonymous.get(f"{base}/public/x", headers={"Host": "app.test"}) as public:
            assert public.status == 200
