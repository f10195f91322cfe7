"""A passkey in a real headless Chromium: its virtual authenticator (CDP `WebAuthn`)
registers a passkey on the account page after a password sign-in; after signing out,
"Sign in with a passkey" on the login page reaches the upstream as that user.

The tenant's domain is `localhost`: WebAuthn needs a secure context, and
http://localhost is one (an arbitrary http host is not).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from gateway.config.model import PasswordsConfig
from gateway.extensions import default_extensions
from gateway.identity.passwords import PasswordHasher
from gateway.stores import User, new_id, open_stores
from tests.e2e.cdp import Tab, chromium_tab, find_chromium
from tests.integration.conftest import StartGateway, make_config

POLICY = """
version: 1
default: deny
rules:
  - name: members
    action: one_factor
"""
PASSWORD = "correct horse battery staple"
CHEAP = PasswordsConfig(time_cost=1, memory_cost=8, parallelism=1)
WAIT = 15.0


@pytest.fixture
def chromium() -> str:
    found = find_chromium()
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is required under CI (.ci/run installs Debian's chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return found


@pytest.fixture
async def origin(tmp_path: Path, upstream: TestServer, start_gateway: StartGateway) -> str:
    config = dataclasses.replace(
        make_config(tmp_path, str(upstream.make_url("")), policy=POLICY, hosts=("localhost",)),
        passwords=CHEAP,
    )
    stores = await open_stores(config)
    try:
        await stores.users.create(
            User(
                id=new_id(),
                tenant="acme",
                username="alice",
                email="alice@example.test",
                display_name="Alice",
                groups=(),
                roles=(),
                disabled=False,
                password_hash=await PasswordHasher(CHEAP).hash(PASSWORD),
                created=0.0,
                updated=0.0,
            )
        )
    finally:
        await stores.close()
    base = await start_gateway(config, tuple(default_extensions()))
    return f"http://localhost:{base.rsplit(':', 1)[1]}"


@pytest.fixture
async def tab(chromium: str) -> AsyncIterator[Tab]:
    async with chromium_tab(chromium) as opened:
        yield opened


async def until(tab: Tab, expression: str) -> Any:
    """Poll a JavaScript expression until it is truthy (pages change after fetches)."""
    deadline = asyncio.get_running_loop().time() + WAIT
    while True:
        try:
            value = await tab.evaluate(expression)
        except RuntimeError:
            value = None  # the page was navigating
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            text = await tab.evaluate("document.body && document.body.innerText")
            raise AssertionError(f"timed out waiting for {expression!r}; page: {text!r}")
        await asyncio.sleep(0.1)


async def test_register_a_passkey_on_the_account_page_then_sign_in_with_it(
    tab: Tab, origin: str
) -> None:
    await tab.send("WebAuthn.enable")
    added = await tab.send(
        "WebAuthn.addVirtualAuthenticator",
        options={
            "protocol": "ctap2",
            "transport": "internal",
            "hasResidentKey": True,
            "hasUserVerification": True,
            "isUserVerified": True,
            "automaticPresenceSimulation": True,
        },
    )
    authenticator = added["authenticatorId"]

    # A password sign-in, then the account page.
    await tab.navigate(f"{origin}/.authgate/login")
    await tab.evaluate(
        "document.querySelector('#ag-username').value = 'alice';"
        f"document.querySelector('#ag-password').value = {json.dumps(PASSWORD)};"
        "document.querySelector('form.ag-form').submit()"
    )
    await until(tab, "location.pathname === '/' && document.readyState === 'complete'")
    await tab.navigate(f"{origin}/.authgate/account")
    await until(tab, "!document.querySelector('form[data-ag-register]').hidden")
    await tab.evaluate(
        "document.querySelector('#ag-key-name').value = 'Chromium passkey';"
        "document.querySelector('[data-ag-add-passkey]').click()"
    )
    await until(tab, "document.body.innerText.includes('Chromium passkey (security key')")
    credentials = await tab.send("WebAuthn.getCredentials", authenticatorId=authenticator)
    [credential] = credentials["credentials"]
    assert credential["isResidentCredential"]
    assert credential["rpId"] == "localhost"

    # Sign out.
    await tab.navigate(f"{origin}/.authgate/logout")
    await tab.evaluate("document.querySelector('form[action$=\"/logout\"]').submit()")
    # Wait for the answer to the POST: navigating on at once could cancel it unsent.
    await until(tab, "document.title.startsWith('Signed out')")
    await tab.navigate(f"{origin}/members/")
    assert await until(tab, "location.pathname === '/.authgate/login' && location.href")

    # Sign in with the passkey alone, and reach the upstream as alice.
    await until(tab, "document.querySelector('form.ag-passkey button') !== null")
    await tab.evaluate("document.querySelector('form.ag-passkey button').click()")
    body = await until(tab, "location.pathname === '/members/' && document.body.innerText")
    headers = {k.lower(): v for k, v in json.loads(body)["headers"]}
    assert headers["remote-user"] == "alice"
    after = await tab.send("WebAuthn.getCredentials", authenticatorId=authenticator)
    assert after["credentials"][0]["signCount"] >= 1
