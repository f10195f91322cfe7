"""Redis out of memory, for real (issue 8): a private redis-server is filled up to its
`maxmemory` and the gateway in front of it is used over HTTP.

With `noeviction` Redis refuses writes (`OOM command not allowed…`) and still serves
reads and deletions. What must hold then: a sign-in is a clean 503 and leaves nothing
behind; the brute-force counters cannot be skipped (no password is checked that was
not counted); a session that needs no write goes on working; logout still revokes;
and everything comes back by itself once memory is freed. With a policy that evicts,
the gateway says at start that bans and counters may silently disappear."""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
import redis.exceptions
from aiohttp.test_utils import TestServer

from gateway.config.model import Config, RegulationConfig, SessionsConfig
from gateway.errors import StoreUnavailable
from gateway.extensions import default_extensions
from gateway.sessions import TOUCH_INTERVAL, SessionManager
from gateway.stores import SessionRecord, User, open_stores
from gateway.stores.ids import hash_session_id, new_session_id
from gateway.stores.redis import RedisRateLimiter, RedisSessionStore
from tests.integration.browser import Browser, hidden
from tests.integration.conftest import StartGateway, make_config
from tests.integration.servers import RedisServer, redis_cli, start_cluster, start_redis
from tests.integration.users import CHEAP, PASSWORD, create_user
from tests.polling import until

pytestmark = pytest.mark.redis

POLICY = """
version: 1
default: deny
rules:
  - name: members
    action: one_factor
"""
PREFIX = "authgate:"
MAX_RETRIES = 3
FILLER = "x" * 4096


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = start_redis(options=("--maxmemory-policy", "noeviction"))
    yield server
    server.stop(kill=True)


@pytest.fixture
async def admin(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A connection of the test's own to the private Redis (to fill it, look into it)."""
    connection = aioredis.Redis(port=redis_server.port, decode_responses=True)
    yield connection
    await connection.aclose()


def configure(tmp_path: Path, upstream: TestServer, redis_url: str) -> Config:
    config = make_config(tmp_path, str(upstream.make_url("")), policy=POLICY)
    return dataclasses.replace(
        config,
        # cache_ttl=0: every request asks Redis, so what it refuses shows at once
        sessions=SessionsConfig(store=redis_url, redis_prefix=PREFIX, cache_ttl=0.0),
        passwords=CHEAP,
        regulation=RegulationConfig(max_retries=MAX_RETRIES, find_time=600.0, ban_time=60.0),
    )


async def used_memory(admin: aioredis.Redis) -> int:
    return int((await admin.info("memory"))["used_memory"])


async def fill_to_the_limit(admin: aioredis.Redis) -> int:
    """Set `maxmemory` a little above what is used, then write filler keys (no TTL, as
    an application sharing the Redis would) until Redis refuses: it is full. Returns
    how many were written.

    Right at the limit a write may pass again once a buffer is freed; the limit is then
    set a little under what is used, so every write is refused until memory is freed."""
    await admin.config_set("maxmemory", await used_memory(admin) + 512 * 1024)
    for n in range(10_000):
        try:
            await admin.set(f"filler:{n}", FILLER)
        except redis.exceptions.OutOfMemoryError:
            await admin.config_set("maxmemory", await used_memory(admin) - 64 * 1024)
            return n
    raise AssertionError("Redis never refused a write")


async def refused_for_memory(admin: aioredis.Redis) -> int:
    """How many commands Redis has refused for want of memory (OOM errors it replied)."""
    stats = await admin.info("errorstats")
    return int(stats.get("errorstat_OOM", {}).get("count", 0))


async def keys(admin: aioredis.Redis, pattern: str) -> set[str]:
    return {key async for key in admin.scan_iter(match=PREFIX + pattern, count=1000)}


async def stored_session(config: Config, user: User, *, idle_for: float) -> str:
    """A session written straight into the store, last seen `idle_for` seconds ago."""
    now = time.time()
    session_id = new_session_id()
    record = SessionRecord(
        id_hash=hash_session_id(session_id),
        tenant=user.tenant,
        user_id=user.id,
        amr=("pwd",),
        auth_time=now - idle_for,
        created=now - idle_for,
        last_seen=now - idle_for,
        expires=now + 3600,
        ip="127.0.0.1",
        user_agent="test",
        country=None,
        remember=False,
        data=(),
    )
    stores = await open_stores(config)
    try:
        await stores.sessions.create(record)
    finally:
        await stores.close()
    return session_id


async def page(client: aiohttp.ClientSession, base: str, path: str, cookie: str) -> int:
    headers = {"Host": "app.test", "Accept": "text/html", "Cookie": f"authgate_session={cookie}"}
    async with client.get(base + path, headers=headers, allow_redirects=False) as resp:
        return resp.status


class SignIn:
    """The login form of one browser: GET once, then POST as often as needed."""

    def __init__(self, browser: Browser, form_page: str) -> None:
        self.browser = browser
        self.token = hidden(form_page, "csrf_token")

    @classmethod
    async def open(cls, base: str, client: aiohttp.ClientSession) -> SignIn:
        browser = Browser(base, client)
        resp, body = await browser.request("GET", "/.authgate/login")
        assert resp.status == 200
        return cls(browser, body)

    async def post(
        self, username: str, password: str, accept: str = "text/html"
    ) -> tuple[aiohttp.ClientResponse, str]:
        form = {"csrf_token": self.token, "rd": "", "username": username, "password": password}
        return await self.browser.request(
            "POST", "/.authgate/login", data=form, Origin="http://app.test", Accept=accept
        )


async def log_out(base: str, client: aiohttp.ClientSession, cookie: str) -> int:
    browser = Browser(base, client, cookies={"authgate_session": cookie})
    resp, body = await browser.request("GET", "/.authgate/logout")
    if resp.status != 200:
        return resp.status
    form = {"csrf_token": hidden(body, "csrf_token")}
    resp, _ = await browser.request(
        "POST", "/.authgate/logout", data=form, Origin="http://app.test"
    )
    return resp.status


async def test_a_full_redis_refuses_sign_ins_cleanly_keeps_sessions_and_logout_and_recovers(
    tmp_path: Path,
    upstream: TestServer,
    redis_server: RedisServer,
    admin: aioredis.Redis,
    start_gateway: StartGateway,
    client: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = configure(tmp_path, upstream, redis_server.url)
    username = f"oom-{secrets.token_hex(4)}"
    user = await create_user(config, username)
    base = await start_gateway(config, tuple(default_extensions()))
    # Sessions: two fresh ones (no write due), two whose once-a-minute write is due.
    fresh, fresh_to_log_out = [await stored_session(config, user, idle_for=1) for _ in "ab"]
    idle, idle_to_log_out = [
        await stored_session(config, user, idle_for=TOUCH_INTERVAL + 5) for _ in "ab"
    ]
    signing_in = await SignIn.open(base, client)  # the page itself writes nothing to Redis

    filler = await fill_to_the_limit(admin)
    assert filler > 0
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        await admin.set("one-more", "x")
    sessions_before = await keys(admin, "s:*")
    counters_before = await keys(admin, "rl:*")

    # Sign-in: a branded 503 (HTML) or a JSON 503, never a 500, never a session. The right
    # password does not get in either: its attempt could not be counted.
    for password in (PASSWORD, "wrong", "wrong", "wrong", "wrong", PASSWORD):
        resp, body = await signing_in.post(username, password)
        assert resp.status == 503, body
        assert "text/html" in resp.headers["Content-Type"]
        assert "<html" in body.lower() and "Traceback" not in body
        assert "authgate_session" not in signing_in.browser.cookies
    resp, body = await signing_in.post(username, PASSWORD, accept="application/json")
    assert resp.status == 503
    assert resp.headers["Content-Type"].startswith("application/json")
    assert '"status": 503' in body
    assert await keys(admin, "s:*") == sessions_before, "no session half-exists"
    assert await keys(admin, "rl:*") == counters_before
    assert await page(client, base, "/.authgate/health", "") == 200, "the worker is up"
    # What an operator reads: a full Redis, not just "unavailable".
    refusals = [r.getMessage() for r in caplog.records if r.name == "authgate.pipeline"]
    assert refusals and all("(OutOfMemoryError)" in message for message in refusals)

    # A session that needs only reads goes on working, and so does one whose
    # once-a-minute write is due: it was just read, and its revocation would be a
    # deletion, which a full Redis still makes. It is served unrefreshed (its use noted
    # in the worker), and the operator is told once, not at every request.
    idle_key = PREFIX + "s:" + hash_session_id(idle)
    last_seen = await admin.hget(idle_key, "last_seen")
    assert last_seen is not None
    assert await page(client, base, "/members/x", fresh) == 200
    refused_before = await refused_for_memory(admin)
    for _ in range(3):
        assert await page(client, base, "/members/x", idle) == 200
    assert await admin.hget(idle_key, "last_seen") == last_seen, "nothing was written"
    # Its use is noted in the worker: the refused write is not tried on every request
    # (with cache_ttl 0, each one reads the session, and would find the write due).
    assert await refused_for_memory(admin) - refused_before == 1
    full = [r for r in caplog.records if "session store is full" in r.getMessage()]
    assert len(full) == 1

    # Logout is a deletion, which a full Redis still does: it works for both kinds.
    for cookie in (fresh_to_log_out, idle_to_log_out):
        assert await log_out(base, client, cookie) == 200
        assert await admin.exists(PREFIX + "s:" + hash_session_id(cookie)) == 0
        assert await page(client, base, "/members/x", cookie) == 302  # to the login page

    # Memory freed: everything comes back by itself, nothing restarted.
    await admin.config_set("maxmemory", 0)
    assert await page(client, base, "/members/x", idle) == 200
    # The seven refused attempts counted nothing (past max_retries they would have
    # banned): a wrong password is checked again, and the right one signs in.
    resp, _ = await signing_in.post(username, "wrong")
    assert resp.status == 401
    resp, _ = await signing_in.post(username, PASSWORD)
    assert resp.status == 303
    signed_in = signing_in.browser.cookies["authgate_session"]
    assert await page(client, base, "/members/x", signed_in) == 200


async def test_a_use_a_full_redis_refused_to_write_reaches_every_process(
    tmp_path: Path, upstream: TestServer, redis_server: RedisServer, admin: aioredis.Redis
) -> None:
    # Two processes over one full Redis, each with its own connections and pub/sub. A's
    # write of a session's last use is refused; B, whose clock is 100 s on (by then the
    # stored last use is past the idle timeout), must read A's use and serve the session,
    # not idle it out (which deletes it, a full Redis still deleting).
    config = configure(tmp_path, upstream, redis_server.url)
    settings = dataclasses.replace(config.sessions, cache_ttl=2.0, idle_timeout=60.0)
    user = await create_user(config, f"used-{secrets.token_hex(4)}")
    stores_a, stores_b = await open_stores(config), await open_stores(config)
    later = time.time() + 100.0
    a = SessionManager(stores_a.sessions, stores_a.users, stores_a.events, settings)
    b = SessionManager(
        stores_b.sessions, stores_b.users, stores_b.events, settings, now=lambda: later
    )
    try:
        await a.start()
        await b.start()
        # Last used 65 s ago: A finds its write due (not yet idled out: 60 + 60 s).
        session_id = await stored_session(config, user, idle_for=TOUCH_INTERVAL + 5)
        id_hash = hash_session_id(session_id)
        await fill_to_the_limit(admin)
        refused = await refused_for_memory(admin)
        assert await a.load(session_id, user.tenant) is not None  # its write refused
        assert await refused_for_memory(admin) == refused + 1
        await until(lambda: id_hash in b._unwritten, "A's message of the use", 10)
        assert await b.load(session_id, user.tenant) is not None, "B idled out a session in use"
        assert await admin.exists(PREFIX + "s:" + id_hash) == 1
    finally:
        for manager in (a, b):
            await manager.stop()
        await stores_a.close()
        await stores_b.close()


async def test_a_full_redis_leaves_no_half_session_and_no_uncounted_attempt(
    redis_server: RedisServer, admin: aioredis.Redis
) -> None:
    # The stores themselves, under what the gateway test cannot reach over HTTP (there
    # the regulator refuses first): creating or rotating a session, banning.
    sessions = RedisSessionStore(admin, PREFIX)
    limiter = RedisRateLimiter(admin, PREFIX)
    now = time.time()
    old = SessionRecord(
        "old", "acme", "u1", ("pwd",), now, now, now, now + 600, None, None, None, False, ()
    )
    await sessions.create(old)
    await limiter.hit("user:acme:alice", 600)
    await limiter.ban("ip:acme:192.0.2.9", 600)
    before = await keys(admin, "*")

    await fill_to_the_limit(admin)
    new = dataclasses.replace(old, id_hash="new")
    with pytest.raises(StoreUnavailable, match="OutOfMemoryError"):
        await sessions.create(dataclasses.replace(old, id_hash="other"))
    with pytest.raises(StoreUnavailable, match="OutOfMemoryError"):
        await sessions.rotate("old", new)
    with pytest.raises(StoreUnavailable, match="OutOfMemoryError"):
        await limiter.hit("user:acme:alice", 600)
    with pytest.raises(StoreUnavailable, match="OutOfMemoryError"):
        await limiter.ban("user:acme:alice", 600)
    assert await keys(admin, "*") == before, "nothing written, not even an index entry"
    assert await sessions.get("old") is not None
    assert await limiter.banned_until("ip:acme:192.0.2.9") is not None  # reads still work

    # Deletions still work: a revocation and lifting a ban.
    assert await sessions.revoke("old")
    await limiter.clear("ip:acme:192.0.2.9")
    assert await sessions.get("old") is None
    assert await limiter.banned_until("ip:acme:192.0.2.9") is None

    await admin.config_set("maxmemory", 0)
    assert await limiter.hit("user:acme:alice", 600) == 2  # the refused hit counted nothing


def eviction_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and "maxmemory-policy" in r.getMessage()
    ]


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-ttl"])
async def test_a_redis_that_may_evict_is_named_with_its_risk_at_start(
    tmp_path: Path, upstream: TestServer, policy: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_redis(options=("--maxmemory-policy", policy, "--maxmemory", "64mb"))
    try:
        config = configure(tmp_path, upstream, server.url)
        with caplog.at_level(logging.WARNING, logger="gateway.stores.redis"):
            stores = await open_stores(config)
            await stores.close()
        [warning] = eviction_warnings(caplog)
        assert policy in warning
        assert "ban" in warning and "noeviction" in warning
    finally:
        server.stop(kill=True)


async def test_an_evicting_master_of_a_cluster_is_named(
    tmp_path: Path, upstream: TestServer, caplog: pytest.LogCaptureFixture
) -> None:
    cluster = start_cluster()
    try:
        evicting = cluster.masters()[1]
        redis_cli(evicting.port, "config", "set", "maxmemory-policy", "volatile-lru")
        config = configure(tmp_path, upstream, cluster.url)
        with caplog.at_level(logging.WARNING, logger="gateway.stores.redis"):
            stores = await open_stores(config)
            await stores.close()
        [warning] = eviction_warnings(caplog)
        assert f":{evicting.port}:" in warning and "volatile-lru" in warning
    finally:
        cluster.stop()


async def test_a_redis_that_forbids_config_is_not_judged_and_opens(
    tmp_path: Path, upstream: TestServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Managed Redis often refuses CONFIG (an ACL, a renamed command): no warning, no error.
    acl = ("--user", "default", "on", "nopass", "~*", "&*", "+@all", "-config")
    server = start_redis(options=("--maxmemory-policy", "allkeys-lru", *acl))
    try:
        config = configure(tmp_path, upstream, server.url)
        with caplog.at_level(logging.DEBUG, logger="gateway.stores.redis"):
            stores = await open_stores(config)
            assert await stores.ping()
            await stores.close()
        assert eviction_warnings(caplog) == []
        assert any("cannot read maxmemory-policy" in r.getMessage() for r in caplog.records)
    finally:
        server.stop(kill=True)


async def test_a_redis_that_never_evicts_gives_no_warning(
    tmp_path: Path,
    upstream: TestServer,
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = configure(tmp_path, upstream, redis_server.url)
    with caplog.at_level(logging.DEBUG, logger="gateway.stores.redis"):
        stores = await open_stores(config)
        await stores.close()
    assert eviction_warnings(caplog) == []
