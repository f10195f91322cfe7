"""Acceptance for issue 6 in a real browser (headless Chromium over DevTools).

Two tenants on two domains: each login page shows its own name, logo and primary
colour (read back with getComputedStyle); screenshots of both go to the README
(`AUTHGATE_SCREENSHOTS=1` writes them to docs/screenshots/). Then, in the same
browser: alice of acme signs in, is nobody on globex's domain, and SSO carries her
sign-in to acme's other domain through the strict CSP (form-action) and SameSite=Lax.

Real host names reach the gateway through `--host-resolver-rules`. Without
chromium the test is skipped, except under CI=true, where that is a failure.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from gateway.config.model import Branding
from gateway.extensions import default_extensions
from login_ui.theme import parse_hex, theme_for
from tests.e2e.cdp import Tab, chromium_tab, find_chromium
from tests.integration.conftest import StartGateway
from tests.integration.test_sso import PASSWORD, add_user, two_tenants

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "docs" / "screenshots"
HOSTS = ("acme.test", "acme-wiki.test", "globex.test")

LOGO = """<svg xmlns="http://www.w3.org/2000/svg" width="160" height="40" viewBox="0 0 160 40">
<rect width="40" height="40" rx="8" fill="{color}"/>
<text x="50" y="27" font-family="sans-serif" font-size="20" fill="#111">{name}</text>
</svg>"""

BRANDS = {
    "acme": ("Acme Corp", "#FF6B6B"),
    "globex": ("Globex", "#0F766E"),
}


def rgb(hex_color: str) -> str:
    value = parse_hex(hex_color).lstrip("#")
    r, g, b = (int(value[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgb({r}, {g}, {b})"


@pytest.fixture
def chromium() -> str:
    found = find_chromium()
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is required under CI (.ci/run installs Debian's chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return found


@pytest.fixture
async def gateway(tmp_path: Path, upstream: TestServer, start_gateway: StartGateway) -> str:
    """The gateway's port; acme (two domains, SSO) and globex, each with name, logo, colour."""
    config = two_tenants(tmp_path, str(upstream.make_url("")))
    tenants = []
    for tenant in config.tenants:
        name, color = BRANDS[tenant.id]
        logo = tmp_path / f"{tenant.id}.svg"
        logo.write_text(LOGO.format(color=color, name=name))
        branding = Branding(logo=str(logo), primary_color=color)
        tenants.append(dataclasses.replace(tenant, name=name, branding=branding))
    config = dataclasses.replace(config, tenants=tuple(tenants))
    base = await start_gateway(config, tuple(default_extensions()))
    await add_user(config, "acme", "alice")
    return base.rsplit(":", 1)[1]


@pytest.fixture
async def tab(chromium: str) -> AsyncIterator[Tab]:
    rules = [f"MAP {host} 127.0.0.1" for host in HOSTS]
    async with chromium_tab(chromium, host_rules=rules) as opened:
        yield opened


LOOK = """(() => {
  const button = document.querySelector('.ag-form .ag-button');
  const logo = document.querySelector('img.ag-logo');
  return JSON.stringify({
    title: document.title,
    subtitle: document.querySelector('.ag-subtitle')?.textContent ?? null,
    button: getComputedStyle(button).backgroundColor,
    buttonText: getComputedStyle(button).color,
    logoSrc: logo ? new URL(logo.src).pathname : null,
    logoAlt: logo ? logo.alt : null,
    logoLoaded: logo ? logo.complete && logo.naturalWidth > 0 : false,
    sheets: [...document.styleSheets].map(s => new URL(s.href).host),
  });
})()"""


async def test_each_tenant_login_page_has_its_own_name_logo_and_colour(
    tab: Tab, gateway: str, tmp_path: Path
) -> None:
    for tenant_id, host in (("acme", "acme.test"), ("globex", "globex.test")):
        name, color = BRANDS[tenant_id]
        await tab.navigate(f"http://{host}:{gateway}/.authgate/login")
        look = json.loads(await tab.evaluate(LOOK))
        theme = theme_for(color)
        assert look["button"] == rgb(theme.button_background), tenant_id
        assert look["buttonText"] == rgb(theme.button_text), tenant_id
        assert look["logoSrc"] == f"/.authgate/assets/{tenant_id}/logo.svg"
        assert look["logoLoaded"], f"{tenant_id}: the logo did not load (CSP or asset route)"
        assert look["logoAlt"] == name
        assert name in look["title"] and look["subtitle"] == f"to continue to {name}"
        # Every stylesheet is our own: nothing is fetched from anywhere else.
        assert set(look["sheets"]) == {f"{host}:{gateway}"}
        shot = tmp_path / f"login-{tenant_id}.png"
        await tab.screenshot(shot)
        assert shot.stat().st_size > 5000
        if os.environ.get("AUTHGATE_SCREENSHOTS") == "1":
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, SCREENSHOTS / f"login-{tenant_id}.png")
    acme = theme_for(BRANDS["acme"][1]).button_background
    assert acme != theme_for(BRANDS["globex"][1]).button_background


SIGN_IN = """(() => {{
  document.querySelector('#ag-username').value = {username};
  document.querySelector('#ag-password').value = {password};
  document.querySelector('.ag-form').submit();
}})()"""


async def sign_in(tab: Tab, username: str) -> None:
    await tab.evaluate(
        SIGN_IN.format(username=json.dumps(username), password=json.dumps(PASSWORD))
    )
    await tab.wait_for("Page.loadEventFired")


async def test_a_tenant_session_is_worthless_on_another_tenants_domain_and_sso_crosses_domains(
    tab: Tab, gateway: str
) -> None:
    # alice of acme is not a user on globex's domain.
    await tab.navigate(f"http://globex.test:{gateway}/private")
    assert "/.authgate/login" in await tab.evaluate("location.pathname")
    await sign_in(tab, "alice")
    assert await tab.evaluate("location.pathname") == "/.authgate/login"
    assert "Incorrect username or password" in await tab.evaluate("document.body.innerText")

    # She signs in on acme.test and reaches the app there.
    await tab.navigate(f"http://acme.test:{gateway}/home")
    await sign_in(tab, "alice")
    assert await tab.evaluate("location.href") == f"http://acme.test:{gateway}/home"
    assert '"alice"' in await tab.evaluate("document.body.innerText")

    # Her acme session gets her nothing on globex.test.
    await tab.navigate(f"http://globex.test:{gateway}/private")
    assert await tab.evaluate("location.pathname") == "/.authgate/login"

    # On acme-wiki.test (no shared cookie) SSO signs her in without a form.
    await tab.navigate(f"http://acme-wiki.test:{gateway}/wiki?page=1")
    assert await tab.evaluate("location.href") == f"http://acme-wiki.test:{gateway}/wiki?page=1"
    assert '"alice"' in await tab.evaluate("document.body.innerText")


async def test_sso_after_a_sign_in_on_the_login_host_passes_the_csp(
    tab: Tab, gateway: str
) -> None:
    # Straight to the wiki: login host form, then the POST's redirects end on the wiki.
    await tab.navigate(f"http://acme-wiki.test:{gateway}/wiki")
    assert await tab.evaluate("location.host") == f"acme.test:{gateway}"
    await sign_in(tab, "alice")
    assert await tab.evaluate("location.href") == f"http://acme-wiki.test:{gateway}/wiki"
    assert '"alice"' in await tab.evaluate("document.body.innerText")
