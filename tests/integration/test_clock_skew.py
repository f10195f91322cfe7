"""Two `authgate serve` instances on one PostgreSQL and one Redis, one of them on a host
whose clock runs 90 s ahead (Debian's libfaketime; its monotonic clock is shifted too,
see `skewed_env`). Issue #8: what one instance stamps, the other compares with its clock.

Instance 0 keeps the real time, instance 1 is 90 s ahead. Sessions have a 20 s idle
timeout (so that 90 s of skew exceeds it plus the once-a-minute touch), failed sign-ins
ban after 3 in a 60 s window (so the two clocks fall in different windows). TOTP is not
driven here (the factors take the same shared clock: gateway.mfa.open_second_factors).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
import yaml
from aiohttp.test_utils import TestServer

from gateway.config.loader import load_config
from gateway.secretbox import load_secret_box
from gateway.signing import PUBLISH_AHEAD, rotate_keys
from gateway.stores.postgres import open_postgres
from gateway.stores.sql import SqlApiKeyStore, SqlKeyStore
from tests.integration.browser import Browser, hidden
from tests.integration.test_instances_behind_nginx import (
    APP,
    LOGIN_PATH,
    LOGOUT_PATH,
    PASSWORD,
    Deployment,
    Instance,
    instance_config,
    stop,
    wait_ready,
)
from tests.unit.deploy.tools import free_port

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
SKEW = 90  # seconds instance 1 runs ahead
IDLE = 20  # sessions.idle_timeout, seconds
RETRIES = 3


def skewed_env(env: dict[str, str]) -> dict[str, str]:
    return {
        **env,
        "LD_PRELOAD": str(FAKETIME_LIB),
        "FAKETIME": f"+{SKEW}s",
        # Not FAKETIME_DONT_FAKE_MONOTONIC: with it, libfaketime's clock_nanosleep fails
        # (EINVAL from time.sleep). Shifting the monotonic clock by a constant is harmless.
    }


async def add_signing_keys(config: Path, env: dict[str, str]) -> tuple[str, str]:
    """A key made long ago, and a rotation made PUBLISH_AHEAD - 40 s ago: the new key
    comes of age in 40 s on the real clock (but had, 50 s ago, on a clock 90 s ahead)."""
    loaded = load_config(config, env)
    db = await open_postgres(env["AUTHGATE_STORAGE"])
    try:
        keys, box = SqlKeyStore(db), load_secret_box(loaded)
        now = time.time()
        old = await rotate_keys(keys, box, now=now - 3 * PUBLISH_AHEAD)
        new = await rotate_keys(keys, box, now=now - PUBLISH_AHEAD + 40)
        return old.kid, new.kid
    finally:
        await db.close()


@pytest.fixture
async def pair(
    tmp_path: Path, upstream: TestServer, postgres_clean: str, redis_prefix: str
) -> AsyncIterator[tuple[Deployment, tuple[str, str]]]:
    if not FAKETIME_LIB.exists():
        pytest.skip("libfaketime is not installed (apt-get install faketime)")
    assert upstream.port is not None
    key_file = tmp_path / "encryption.key"
    key_file.write_text(secrets.token_urlsafe(48) + "\n")
    key_file.chmod(0o600)
    instances = []
    for number in range(2):
        directory = tmp_path / f"authgate-{number}"
        port = free_port()
        path = instance_config(directory, port, upstream.port, redis_prefix, key_file)
        config: dict[str, Any] = yaml.safe_load(path.read_text())
        config["sessions"]["idle_timeout"] = f"{IDLE}s"
        config["regulation"] = {"max_retries": RETRIES, "find_time": "60s", "ban_time": "300s"}
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        instances.append(Instance(number, port, path, directory / "authgate.log"))
    env = {**os.environ, "AUTHGATE_STORAGE": postgres_clean}
    dep = Deployment("", instances, env)
    try:
        await dep.cli("migrate")
        kids = await add_signing_keys(instances[0].config, env)
        await dep.cli(
            "user",
            "add",
            "alice",
            "--email",
            "alice@example.test",
            "--password-stdin",
            stdin=PASSWORD + "\n",
        )
        for instance in instances:
            with instance.log.open("wb") as log:
                instance.process = subprocess.Popen(
                    [sys.executable, "-m", "gateway", "serve", "-c", str(instance.config)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=skewed_env(env) if instance.number == 1 else env,
                    start_new_session=True,
                )
        async with aiohttp.ClientSession() as client:
            for instance in instances:
                await wait_ready(instance, client)
        yield dep, kids
    finally:
        for instance in instances:
            stop(instance.process)


def browser(dep: Deployment, number: int, client: aiohttp.ClientSession) -> Browser:
    return Browser(dep.instances[number].base, client, host=APP)


async def sign_in(b: Browser, password: str = PASSWORD, *, post_to: Browser | None = None) -> int:
    """The login form from `b`, posted to `post_to` (default `b`): its status."""
    resp, page = await b.request("GET", f"{LOGIN_PATH}?rd=/members/x")
    assert resp.status == 200, page[:300]
    form = {"csrf_token": hidden(page, "csrf_token"), "rd": hidden(page, "rd")}
    form |= {"username": "alice", "password": password}
    if post_to is not None:
        post_to.cookies = dict(b.cookies)  # the pre-session cookie the token is bound to
        b = post_to
    resp, _ = await b.request("POST", LOGIN_PATH, data=form, Origin=f"http://{APP}")
    return resp.status


async def as_alice(b: Browser, cookie: str, path: str) -> tuple[int, dict[str, str]]:
    """Status, and the headers the upstream saw."""
    b.cookies = {"authgate_session": cookie}
    resp, body = await b.request("GET", path, Accept="application/json")
    if resp.status != 200:
        return resp.status, {}
    return 200, {str(k): str(v) for k, v in json.loads(body)["headers"]}


async def test_an_instance_ninety_seconds_ahead_agrees_with_the_others(
    pair: tuple[Deployment, tuple[str, str]],
) -> None:
    dep, (old_kid, new_kid) = pair
    # No cookie jar: each Browser sends exactly its own cookies.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as client:
        real, ahead = browser(dep, 0, client), browser(dep, 1, client)

        # The skewed instance measured its offset to Redis and says so.
        async with client.get(f"{ahead.base}/.authgate/metrics", headers={"Host": APP}) as r:
            metrics = await r.text()
        offsets = [
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("authgate_clock_offset_seconds{") and 'reference="redis"' in line
        ]
        assert offsets and all(-SKEW - 5 < o < -SKEW + 5 for o in offsets), metrics[-3000:]
        assert "off the redis server's" in dep.instances[1].log.read_text()

        # A session made on either instance is good on the other: the one ahead does not
        # find it idle (20 s + the minute of touch slack < 90 s) and revoke it.
        # The login form of one is good on the other (its CSRF token is not "from the
        # future" there).
        for made_on, used_on in ((real, ahead), (ahead, real)):
            assert await sign_in(used_on, post_to=made_on) == 303
            cookie = made_on.cookies["authgate_session"]
            for i in range(2):
                for b in (used_on, made_on):
                    status, seen = await as_alice(b, cookie, f"/members/s{i}")
                    assert status == 200, (b.base, status)
                    assert seen["Remote-User"] == "alice"

        # JWTs from the instance ahead verify on the real clock with no leeway, and are
        # signed with the key that every instance signs with (the new one is not of age).
        jwks = jwt.PyJWKSet.from_dict(
            await (
                await client.get(f"{real.base}/.authgate/jwks.json", headers={"Host": APP})
            ).json()
        )
        kids = set()
        for b in (ahead, real):
            status, seen = await as_alice(b, cookie, "/members/jwt")
            token = seen["X-Authgate-Jwt"]
            kid = jwt.get_unverified_header(token)["kid"]
            kids.add(kid)
            claims = jwt.decode(
                token, jwks[kid].key, algorithms=["ES256"], options={"verify_aud": False}
            )
            assert claims["iat"] <= time.time() + 1
        assert kids == {old_kid}, f"old {old_kid}, new {new_kid}"

        # Signing out on the instance ahead ends the session on both.
        ahead.cookies = {"authgate_session": cookie}
        resp, page = await ahead.request("GET", LOGOUT_PATH)
        assert resp.status == 200
        token = hidden(page, "csrf_token")
        resp, _ = await ahead.request(
            "POST", LOGOUT_PATH, data={"csrf_token": token}, Origin=f"http://{APP}"
        )
        assert resp.status == 200, resp.status  # "signed out"
        deadline = time.monotonic() + 5
        while (await as_alice(real, cookie, "/members/after"))[0] == 200:
            assert time.monotonic() < deadline, "the revocation did not reach instance 0"
            await asyncio.sleep(0.2)
        assert (await as_alice(ahead, cookie, "/members/after"))[0] == 401

        # Wrong passwords alternating between the two count in one window: the fourth is
        # refused, whichever instance it reaches (the clocks' windows once differed).
        statuses = [await sign_in(b, "wrong") for b in (real, ahead, real, ahead)]
        assert 429 not in statuses[:RETRIES], statuses
        assert statuses[RETRIES] == 429, statuses
        for b in (real, ahead):  # and the ban holds on both, right password or not
            assert await sign_in(b) == 429


async def test_an_api_key_made_from_a_host_ahead_expires_on_the_stores_clock(
    tmp_path: Path, postgres_clean: str, redis_prefix: str
) -> None:
    """`authgate apikey create --expires 60s` run where the clock is 90 s ahead: the
    gateways compare the expiry with the store's clock, so it must be stamped on it
    (it lived 150 s; from a host behind, it would be born expired)."""
    if not FAKETIME_LIB.exists():
        pytest.skip("libfaketime is not installed (apt-get install faketime)")
    key_file = tmp_path / "encryption.key"
    key_file.write_text(secrets.token_urlsafe(48) + "\n")
    config = instance_config(tmp_path / "cli", free_port(), free_port(), redis_prefix, key_file)
    env = {**os.environ, "AUTHGATE_STORAGE": postgres_clean}

    def authgate(*args: str, environment: dict[str, str], stdin: str = "") -> str:
        done = subprocess.run(
            [sys.executable, "-m", "gateway", *args, "-c", str(config)],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            env=environment,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    authgate("migrate", environment=env)
    authgate("user", "add", "carol", "--password-stdin", environment=env, stdin=PASSWORD + "\n")
    authgate(
        "apikey", "create", "--user", "carol", "--name", "ci", "--expires", "60s",
        environment=skewed_env(env),
    )  # fmt: skip
    db = await open_postgres(postgres_clean)
    try:
        tenant = load_config(config, env).tenants[0].id
        (key,) = await SqlApiKeyStore(db).list(tenant)
    finally:
        await db.close()
    assert key.expires is not None
    lives = key.expires - time.time()
    assert 50 < lives <= 61, f"a 60 s key lives {lives:.0f} s on the store's clock"
