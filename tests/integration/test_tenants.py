"""Tenants through a running gateway: a database tenant served without a restart,
branded error pages with the security headers, a neutral page for unknown hosts,
tenant isolation of users and sessions, and the cookie domain on sign-in and sign-out."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer

from gateway.config.model import Branding, RouteConfig
from gateway.extensions import default_extensions
from gateway.stores import open_database
from gateway.tenant_store import Setting, TenantStore
from tests.integration.browser import Browser, hidden
from tests.integration.conftest import StartGateway
from tests.integration.test_sso import Site, add_user, sign_in, two_tenants

# Every test here runs on aiohttp's server and on the fast path (conftest).
BOTH_PATHS = True


async def test_a_database_tenant_is_served_without_a_restart(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway
) -> None:
    config = two_tenants(tmp_path, str(upstream.make_url("")))
    base = await start_gateway(config, tuple(default_extensions()))
    policy = tmp_path / "open.yaml"
    policy.write_text("version: 1\ndefault: bypass\n")
    async with aiohttp.ClientSession() as client:
        initech = Browser(base, client, host="initech.test")
        resp, page = await initech.request("GET", "/")
        assert resp.status == 421 and "Acme" not in page and "Globex" not in page
        db = await open_database(config)
        try:
            store = TenantStore(db, config.tenants)
            await store.add("initech", "Initech", ["initech.test"])
            await store.add_route(
                "initech", RouteConfig(host="initech.test", upstream=str(upstream.make_url("")))
            )
            await store.configure("initech", [Setting("policies", (str(policy),))])
        finally:
            await db.close()
        # The SQL event bus polls; the refresher also polls every few seconds.
        for _ in range(100):
            resp, _ = await initech.request("GET", "/hello")
            if resp.status == 200:
                break
            await asyncio.sleep(0.1)
        assert resp.status == 200
        resp, page = await initech.request("GET", "/.authgate/login")
        assert resp.status == 200 and "Initech" in page


async def test_error_pages_carry_the_tenant_look_and_the_security_headers(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway
) -> None:
    config = two_tenants(tmp_path, str(upstream.make_url("")))
    acme = dataclasses.replace(
        config.tenants[0], name="Acme Corp", branding=Branding(primary_color="#FF6B6B")
    )
    config = dataclasses.replace(config, tenants=(acme, config.tenants[1]))
    base = await start_gateway(config, tuple(default_extensions()))
    async with aiohttp.ClientSession() as client:
        browser = Browser(base, client, host="acme.test")
        for path, status in (("/.authgate/nothing", 404),):
            resp, page = await browser.request("GET", path)
            assert resp.status == status
            assert "Acme Corp" in page and "/.authgate/theme.css" in page
            csp = resp.headers["Content-Security-Policy"]
            assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
            assert resp.headers["X-Frame-Options"] == "DENY"
            assert resp.headers["Referrer-Policy"] == "same-origin"
            assert "Strict-Transport-Security" not in resp.headers  # dev mode: plain http
        stranger = Browser(base, client, host="unknown.test")
        resp, page = await stranger.request("GET", "/")
        assert resp.status == 421
        assert "Acme" not in page and "Globex" not in page and "ag-neutral" in page
        assert "default-src 'self'" in resp.headers["Content-Security-Policy"]


async def test_a_user_of_one_tenant_cannot_sign_in_on_another_and_sessions_stay_home(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway
) -> None:
    config = two_tenants(tmp_path, str(upstream.make_url("")))
    base = await start_gateway(config, tuple(default_extensions()))
    await add_user(config, "acme", "alice")
    async with aiohttp.ClientSession() as client:
        site = Site(base, client)
        globex = site.browser("globex.test")
        resp, page = await globex.request("GET", "/.authgate/login")
        form = {
            "csrf_token": hidden(page, "csrf_token"),
            "rd": "",
            "username": "alice",
            "password": "correct horse battery staple",
        }
        resp, page = await globex.request(
            "POST", "/.authgate/login", data=form, Origin="http://globex.test"
        )
        assert resp.status == 401 and "Incorrect username or password" in page
        acme = site.browser("acme.test")
        await sign_in(acme, "/.authgate/login")
        assert (await acme.request("GET", "/x"))[0].status == 200
        # The acme cookie, replayed on globex's domain, is nobody there.
        globex.cookies["authgate_session"] = acme.cookies["authgate_session"]
        resp, _ = await globex.request("GET", "/x")
        assert resp.status == 302 and "/.authgate/login" in resp.headers["Location"]


async def test_a_parent_cookie_domain_is_set_and_cleared_with_the_same_domain(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway
) -> None:
    config = two_tenants(tmp_path, str(upstream.make_url("")), cookie_domain="acme.test")
    base = await start_gateway(config, tuple(default_extensions()))
    await add_user(config, "acme", "alice")
    async with aiohttp.ClientSession() as client:
        site = Site(base, client)
        main = site.browser("acme.test")
        await sign_in(main, "/.authgate/login")
        cookie = next(c for c in main.last_set_cookies if c.startswith("authgate_session="))
        assert "Domain=acme.test" in cookie
        resp, page = await main.request("GET", "/.authgate/logout")
        resp, _ = await main.request(
            "POST",
            "/.authgate/logout",
            data={"csrf_token": hidden(page, "csrf_token")},
            Origin="http://acme.test",
        )
        assert resp.status == 200
        cleared = next(c for c in main.last_set_cookies if c.startswith("authgate_session="))
        assert "Domain=acme.test" in cleared and "Max-Age=0" in cleared
