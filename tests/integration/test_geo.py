"""Issue 7 acceptance with the real GeoLite2 data (maxminddb-geolite2): country rules
on the client address a trusted proxy reports, and a sign-in from London followed by
one from Tokyo ten minutes later, which must step up and leave both places in the
audit log. 2.16.37.1 is in London (GB), 1.1.64.1 in Tokyo (JP) in that snapshot.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.cli import main
from gateway.config.model import Config, GeoipConfig
from gateway.extensions import default_extensions
from gateway.server import GatewayServer
from geoip import geolite2_database_path
from policies import PolicyError
from tests.integration.browser import Browser, hidden
from tests.integration.conftest import make_config
from tests.integration.users import CHEAP, PASSWORD, create_user

LONDON = "2.16.37.1"
TOKYO = "1.1.64.1"
POLICY = """
version: 1
default: deny
rules:
  - name: no-japan
    countries: [JP]
    action: deny
  - name: members
    action: one_factor
"""

GEOLITE2 = geolite2_database_path()
pytestmark = pytest.mark.skipif(GEOLITE2 is None, reason="maxminddb-geolite2 not installed")


def configure(tmp_path: Path, upstream: TestServer, policy: str = POLICY) -> Config:
    config = make_config(
        tmp_path, str(upstream.make_url("")), policy=policy, trusted_proxies=("127.0.0.0/8",)
    )
    return dataclasses.replace(
        config, passwords=CHEAP, geoip=GeoipConfig(database=GEOLITE2, on_new_country="notify")
    )


async def add_alice(config: Config) -> None:
    await create_user(config, "alice")


@pytest.fixture
async def gateway(tmp_path: Path, upstream: TestServer) -> AsyncIterator[tuple[GatewayServer, str]]:
    config = configure(tmp_path, upstream)
    await add_alice(config)
    server = GatewayServer(config, tuple(default_extensions()))
    await server.start()
    host, port = server.addresses[0]
    yield server, f"http://{host}:{port}"
    await server.stop()


async def sign_in(browser: Browser, ip: str) -> aiohttp.ClientResponse:
    xff = {"X-Forwarded-For": ip}
    _, page = await browser.request("GET", "/.authgate/login?rd=http://app.test/x", **xff)
    form = {
        "csrf_token": hidden(page, "csrf_token"),
        "rd": hidden(page, "rd"),
        "username": "alice",
        "password": PASSWORD,
    }
    resp, _ = await browser.request(
        "POST", "/.authgate/login", data=form, Origin="http://app.test", **xff
    )
    return resp


async def test_country_rules_see_the_client_address_from_the_trusted_proxy(
    gateway: tuple[GatewayServer, str], client: aiohttp.ClientSession
) -> None:
    _, base = gateway
    browser = Browser(base, client)
    resp, _ = await browser.request("GET", "/x", **{"X-Forwarded-For": TOKYO})
    assert resp.status == 403
    resp, _ = await browser.request("GET", "/x", **{"X-Forwarded-For": LONDON})
    assert resp.status == 302  # to the login page: the country rule did not hold


async def test_london_then_tokyo_ten_minutes_later_steps_up_and_audits_both_places(
    gateway: tuple[GatewayServer, str], client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    server, base = gateway
    assert server.runtime is not None

    resp = await sign_in(Browser(base, client), LONDON)
    assert resp.status == 303
    assert resp.headers["Location"] == "http://app.test/x"

    # the London sign-in happened ten minutes ago
    with sqlite3.connect(tmp_path / "authgate.db") as db:
        db.execute("UPDATE sign_in_last SET time = time - 600")

    tokyo = Browser(base, client)
    resp = await sign_in(tokyo, TOKYO)
    assert resp.status == 303
    location = urlsplit(resp.headers["Location"])
    assert location.path == "/.authgate/mfa"
    assert parse_qs(location.query)["rd"] == ["http://app.test/x"]

    # skipping the second factor gets nothing: the session owes it first
    resp, body = await tokyo.request("GET", "/x", **{"X-Forwarded-For": LONDON})
    assert resp.status == 302
    assert urlsplit(resp.headers["Location"]).path == "/.authgate/mfa"
    resp, body = await tokyo.request(
        "GET", "/x", Accept="application/json", **{"X-Forwarded-For": LONDON}
    )
    assert resp.status == 401
    assert "alice" not in body

    await server.runtime.audit.flush()
    rows = await server.runtime.stores.audit.search(tenant="acme", event="impossible_travel")
    assert len(rows) == 1
    row = rows[0]
    assert (row.user, row.ip, row.country, row.outcome) == ("alice", TOKYO, "JP", "step_up")
    details = json.loads(row.details)
    assert details["from_country"] == "GB"
    assert details["from_ip"] == LONDON
    assert details["to_country"] == "JP"
    assert details["to_ip"] == TOKYO
    assert details["distance_km"] > 9000
    new_country = await server.runtime.stores.audit.search(tenant="acme", event="new_country")
    assert [r.country for r in new_country] == ["JP"]
    logins = await server.runtime.stores.audit.search(tenant="acme", event="login_success")
    assert [(r.country, r.outcome) for r in logins] == [("JP", "step_up"), ("GB", "ok")]


async def test_deny_refuses_an_impossible_sign_in_with_a_page(
    tmp_path: Path, upstream: TestServer, client: aiohttp.ClientSession
) -> None:
    config = configure(tmp_path, upstream)
    config = dataclasses.replace(
        config, geoip=dataclasses.replace(config.geoip, on_impossible_travel="deny")
    )
    await add_alice(config)
    server = GatewayServer(config, tuple(default_extensions()))
    await server.start()
    try:
        host, port = server.addresses[0]
        base = f"http://{host}:{port}"
        assert (await sign_in(Browser(base, client), LONDON)).status == 303
        resp = await sign_in(Browser(base, client), TOKYO)
        assert resp.status == 403
        assert not any(
            c.startswith("authgate_session=") for c in resp.headers.getall("Set-Cookie", [])
        )
    finally:
        await server.stop()


def test_a_country_rule_without_a_geoip_database_is_a_start_up_error(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path, "http://127.0.0.1:9", policy=POLICY)
    with pytest.raises(PolicyError) as caught:
        GatewayServer(config)
    (problem,) = caught.value.problems
    assert problem.file.endswith("policy.yaml")
    assert problem.line == 5
    assert "geoip.database" in problem.message


def test_policy_explain_resolves_the_country_of_ip(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "policy.yaml").write_text(POLICY)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(
        f"geoip:\n  database: {GEOLITE2}\n"
        "tenants:\n  - id: acme\n    name: Acme\n    domains: [app.test]\n"
        "    policies: [policy.yaml]\n"
    )
    argv = ["policy", "explain", "-c", str(config_file), "http://app.test/x"]
    assert main([*argv, "--ip", TOKYO]) == 0
    out = capsys.readouterr()
    assert "no-japan" in out.out
    assert "JP" in out.err
    assert main([*argv, "--ip", LONDON]) == 0
    assert "members" in capsys.readouterr().out
