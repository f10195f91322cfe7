"""SSO across a tenant's unrelated domains, through a running gateway, and its attacks:
replay, expiry, another tenant's domain, another domain of the same tenant, tampering.

acme owns acme.test (its login host) and acme-wiki.test; globex owns globex.test.
Each `Browser` keeps the cookies of one host, as a real browser keeps host-only ones.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.config.model import (
    Config,
    ListenAddress,
    PasswordsConfig,
    RouteConfig,
    ServerConfig,
    SessionsConfig,
    TenantConfig,
)
from gateway.extensions import default_extensions
from gateway.identity.passwords import PasswordHasher
from gateway.sso import SqlSsoCodes, SsoCodes
from gateway.stores import User, new_id, open_database, open_stores
from tests.conftest import REDIS_URL
from tests.integration.browser import Browser, hidden
from tests.integration.conftest import StartGateway
from tests.slow_stores import GatedUsers

PASSWORD = "correct horse battery staple"
CHEAP = PasswordsConfig(time_cost=1, memory_cost=8, parallelism=1)
POLICY = "version: 1\ndefault: one_factor\n"


def two_tenants(tmp_path: Path, upstream_url: str, **acme: object) -> Config:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)

    def tenant(tenant_id: str, domains: tuple[str, ...], **extra: object) -> TenantConfig:
        return TenantConfig(
            id=tenant_id,
            name=tenant_id.title(),
            domains=domains,
            policies=(policy,),
            routes=tuple(RouteConfig(host=d, upstream=upstream_url) for d in domains),
            **extra,  # type: ignore[arg-type]
        )

    return Config(
        source=tmp_path / "config.yaml",
        tenants=(
            tenant("acme", ("acme.test", "acme-wiki.test"), login_host="acme.test", **acme),
            tenant("globex", ("globex.test",)),
        ),
        server=dataclasses.replace(
            ServerConfig(), listen=(ListenAddress("127.0.0.1", 0),), dev_mode=True
        ),
        storage=f"sqlite:///{tmp_path / 'authgate.db'}",
        passwords=CHEAP,
    )


async def add_user(config: Config, tenant: str, username: str) -> User:
    stores = await open_stores(config)
    try:
        user = User(
            id=new_id(),
            tenant=tenant,
            username=username,
            email=None,
            display_name=None,
            groups=(),
            roles=(),
            disabled=False,
            password_hash=await PasswordHasher(CHEAP).hash(PASSWORD),
            created=0.0,
            updated=0.0,
        )
        await stores.users.create(user)
        return user
    finally:
        await stores.close()


@dataclasses.dataclass
class Site:
    base: str
    client: aiohttp.ClientSession

    def browser(self, host: str) -> Browser:
        return Browser(self.base, self.client, host=host)


@pytest.fixture(params=["storage", pytest.param("redis", marks=pytest.mark.redis)])
async def site(
    tmp_path: Path,
    upstream: TestServer,
    start_gateway: StartGateway,
    client: aiohttp.ClientSession,
    request: pytest.FixtureRequest,
) -> Site:
    """Sessions, and so the hand-off codes, in the database or in Redis."""
    config = two_tenants(tmp_path, str(upstream.make_url("")))
    if request.param == "redis":
        prefix = request.getfixturevalue("redis_prefix")
        config = dataclasses.replace(
            config, sessions=SessionsConfig(store=REDIS_URL, redis_prefix=prefix)
        )
    base = await start_gateway(config, tuple(default_extensions()))
    await add_user(config, "acme", "alice")
    await add_user(config, "globex", "bob")
    return Site(base, client)


def local(location: str) -> tuple[str, str]:
    """(host, path?query) of an absolute redirect."""
    parts = urlsplit(location)
    return parts.hostname or "", parts.path + (f"?{parts.query}" if parts.query else "")


async def sign_in(browser: Browser, location: str, username: str = "alice") -> str:
    """Fill the login form at `location` on the browser's host; returns the redirect."""
    resp, page = await browser.request("GET", location)
    assert resp.status == 200, page
    form = {
        "csrf_token": hidden(page, "csrf_token"),
        "rd": hidden(page, "rd"),
        "username": username,
        "password": PASSWORD,
    }
    resp, _ = await browser.request(
        "POST", "/.authgate/login", data=form, Origin=f"http://{browser.host}"
    )
    assert resp.status == 303
    return resp.headers["Location"]


async def sso_code_for_wiki(site: Site) -> tuple[Browser, str]:
    """Sign in on the login host and come back with a callback URL for acme-wiki.test."""
    main, wiki = site.browser("acme.test"), site.browser("acme-wiki.test")
    resp, _ = await wiki.request("GET", "/page?x=1")
    assert resp.status == 302
    resp, _ = await wiki.request("GET", resp.headers["Location"])
    assert resp.status == 302  # no form on the wiki: off to the login host
    host, authorize = local(resp.headers["Location"])
    assert host == "acme.test" and authorize.startswith("/.authgate/sso/authorize?rd=")
    resp, _ = await main.request("GET", authorize)
    assert resp.status == 302  # not signed in there yet
    after = await sign_in(main, resp.headers["Location"])
    _, back = local(after) if after.startswith("http") else ("acme.test", after)
    resp, _ = await main.request("GET", back)
    assert resp.status == 302
    host, callback = local(resp.headers["Location"])
    assert host == "acme-wiki.test" and callback.startswith("/.authgate/sso/callback?code=")
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    return wiki, callback


async def test_sso_carries_a_sign_in_to_another_domain_of_the_tenant(site: Site) -> None:
    wiki, callback = await sso_code_for_wiki(site)
    resp, _ = await wiki.request("GET", callback)
    assert resp.status == 302
    assert resp.headers["Location"] == "http://acme-wiki.test/page?x=1"
    cookie = next(c for c in wiki.last_set_cookies if c.startswith("authgate_session="))
    assert "Domain" not in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    resp, body = await wiki.request("GET", "/page?x=1")
    assert resp.status == 200
    assert '"remote-user", "alice"' in body.lower()


async def test_an_sso_code_works_once(site: Site) -> None:
    wiki, callback = await sso_code_for_wiki(site)
    assert (await wiki.request("GET", callback))[0].status == 302
    replay = site.browser("acme-wiki.test")
    resp, page = await replay.request("GET", callback)
    assert resp.status == 403
    assert "expired or was already used" in page
    assert "authgate_session" not in replay.cookies


async def test_an_sso_code_is_refused_on_another_tenants_domain(site: Site) -> None:
    _, callback = await sso_code_for_wiki(site)
    globex = site.browser("globex.test")
    resp, _ = await globex.request("GET", callback)
    assert resp.status == 403
    assert "authgate_session" not in globex.cookies


async def test_an_sso_code_is_refused_on_another_domain_of_the_same_tenant(site: Site) -> None:
    wiki, callback = await sso_code_for_wiki(site)
    main = site.browser("acme.test")
    resp, _ = await main.request("GET", callback)
    assert resp.status == 403
    # Presenting it in the wrong place burned it: the rightful domain cannot use it now.
    assert (await wiki.request("GET", callback))[0].status == 403


async def test_a_tampered_sso_code_is_refused(site: Site) -> None:
    wiki, callback = await sso_code_for_wiki(site)
    code = parse_qs(urlsplit(callback).query)["code"][0]
    flipped = code[:-1] + ("A" if code[-1] != "A" else "B")
    for bad in (flipped, code[:-1], code + "A", "", "../../x"):
        tampered = callback.replace(code, bad)
        assert (await wiki.request("GET", tampered))[0].status == 403, bad
    assert (await wiki.request("GET", callback))[0].status == 302  # the real one still works


async def test_a_signed_in_login_host_hands_over_without_a_form(site: Site) -> None:
    main = site.browser("acme.test")
    # A second visit: the login host session exists, authorize answers with a code at once.
    first = site.browser("acme.test")
    after = await sign_in(first, "/.authgate/login")
    assert after == "http://acme.test/"
    resp, _ = await first.request(
        "GET", "/.authgate/sso/authorize?rd=http%3A%2F%2Facme-wiki.test%2F"
    )
    assert resp.status == 302 and "/.authgate/sso/callback?code=" in resp.headers["Location"]
    # …and refuses to hand a session to a host of another tenant: rd falls back home.
    resp, _ = await first.request("GET", "/.authgate/sso/authorize?rd=http%3A%2F%2Fglobex.test%2F")
    assert resp.status == 302 and resp.headers["Location"] == "http://acme.test/"
    assert main.cookies == {}


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_an_sso_code_expires_within_a_minute(tmp_path: Path, upstream: TestServer) -> None:
    config = two_tenants(tmp_path, str(upstream.make_url("")))
    user = await add_user(config, "acme", "alice")
    clock = Clock()
    stores = await open_stores(config, clock=clock)
    db = await open_database(config)
    try:
        from gateway.stores import SessionRecord

        source = SessionRecord(
            id_hash="a" * 64,
            tenant="acme",
            user_id=user.id,
            amr=("pwd",),
            auth_time=clock.now,
            created=clock.now,
            last_seen=clock.now,
            expires=clock.now + 3600,
        )
        await stores.sessions.create(source)
        sso = SsoCodes(SqlSsoCodes(db), stores.sessions, stores.users, now=clock)
        fresh = await sso.issue(source, "acme-wiki.test")
        stale = await sso.issue(source, "acme-wiki.test")
        clock.now += 59
        redeemed = await sso.redeem(fresh, "acme", "acme-wiki.test")
        assert redeemed is not None
        assert redeemed.record.user_id == user.id and redeemed.record.id_hash != source.id_hash
        assert redeemed.record.auth_time == source.auth_time  # not a fresh sign-in
        assert redeemed.record.expires == source.expires  # never outlives its source
        clock.now += 2  # 61 s after issue
        assert await sso.redeem(stale, "acme", "acme-wiki.test") is None
        with pytest.raises(ValueError):
            SsoCodes(SqlSsoCodes(db), stores.sessions, stores.users, ttl=600)
    finally:
        await db.close()
        await stores.close()


async def test_a_hand_off_racing_log_out_everywhere_leaves_no_session(
    tmp_path: Path, upstream: TestServer
) -> None:
    # "Log out everywhere" lands after the redeem read the (live) source session and
    # before it created the child: the child must not survive it.
    import asyncio

    from gateway.sessions import SessionManager

    config = two_tenants(tmp_path, str(upstream.make_url("")))
    user = await add_user(config, "acme", "alice")
    stores = await open_stores(config)
    db = await open_database(config)
    users = GatedUsers(stores.users, armed=True)

    try:
        sessions = SessionManager(stores.sessions, stores.users, stores.events, config.sessions)
        _, source = await sessions.create(user, ("pwd",), ip=None, user_agent=None)
        sso = SsoCodes(SqlSsoCodes(db), stores.sessions, users)  # type: ignore[arg-type]
        code = await sso.issue(source, "acme-wiki.test")
        redeeming = asyncio.ensure_future(sso.redeem(code, "acme", "acme-wiki.test"))
        await asyncio.wait_for(users.entered.wait(), 5)
        assert await sessions.revoke_user("acme", user.id) == 1
        users.gate.set()
        assert await redeeming is None
        assert await stores.sessions.list_user("acme", user.id) == []
    finally:
        await db.close()
        await stores.close()
