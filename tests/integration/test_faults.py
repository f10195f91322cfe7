"""Faults, for real (issue 8): the tests start their own redis-server and PostgreSQL
on spare ports, stop and restart them under a running gateway, and check that it
fails closed, keeps what it can serving, recovers by itself and loses nothing."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from gateway.config.model import Config, PasswordsConfig, SecretsConfig, SessionsConfig
from gateway.extensions import default_extensions
from gateway.identity.passwords import PasswordHasher
from gateway.server import GatewayServer
from gateway.stores import User, breaker, new_id, open_stores
from gateway.stores.ids import hash_session_id, new_api_key
from gateway.stores.postgres import COMMAND_TIMEOUT, migrate
from tests.conftest import run_sync
from tests.integration.browser import Browser, hidden
from tests.integration.conftest import StartGateway, make_config
from tests.integration.servers import PostgresServer, RedisServer, start_postgres, start_redis
from tests.integration.users import store_api_key

# Every test on aiohttp's server alone and on the fast path (conftest.py).
BOTH_PATHS = True

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

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
KEY = secrets.token_urlsafe(48)  # the module's PostgreSQL keeps JWT keys sealed with it
RECOVERY = 10.0  # seconds a backend may take to be used again after it is back


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = start_postgres()
    run_sync(migrate(server.url))
    yield server
    server.remove()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = start_redis(appendonly=True)
    yield server
    server.stop(kill=True)


def unique(name: str) -> str:
    """A username no earlier run left in the shared PostgreSQL."""
    return f"{name}{os.getpid()}{time.monotonic_ns() % 100000}"


def configure(
    tmp_path: Path, upstream_url: str, storage: str, sessions: str, **route: object
) -> Config:
    config = make_config(tmp_path, upstream_url, policy=POLICY, route=route or None)
    return dataclasses.replace(
        config,
        storage=storage,
        # cache_ttl=0: every request asks the stores, so a fault shows at once
        sessions=SessionsConfig(store=sessions, cache_ttl=0.0),
        passwords=CHEAP,
        secrets=SecretsConfig(encryption_key=KEY),
    )


async def add_user(config: Config, username: str) -> User:
    stores = await open_stores(config)
    try:
        user = User(
            id=new_id(),
            tenant="acme",
            username=username,
            email=None,
            display_name=None,
            groups=(),
            roles=(),
            disabled=False,
            password_hash=await PasswordHasher(CHEAP).hash(PASSWORD),
            created=time.time(),
            updated=time.time(),
        )
        await stores.users.create(user)
        return user
    finally:
        await stores.close()


async def start(config: Config) -> tuple[GatewayServer, str]:
    server = GatewayServer(config, tuple(default_extensions()))
    await server.start()
    host, port = server.addresses[0]
    return server, f"http://{host}:{port}"


async def new_session(server: GatewayServer, user: User) -> str:
    runtime: Any = server.runtime
    cookie, _ = await runtime.sessions.create(user, ("pwd",), ip="127.0.0.1", user_agent="t")
    return str(cookie)


async def get(
    client: aiohttp.ClientSession, base: str, path: str, cookie: str | None = None
) -> tuple[int, str, str]:
    headers = {"Host": "app.test", "Accept": "text/html"}
    if cookie:
        headers["Cookie"] = f"authgate_session={cookie}"
    async with client.get(base + path, headers=headers, allow_redirects=False) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


async def eventually_status(
    client: aiohttp.ClientSession, base: str, path: str, cookie: str, status: int
) -> None:
    deadline = time.monotonic() + RECOVERY
    while True:
        got, _, _ = await get(client, base, path, cookie)
        if got == status:
            return
        assert time.monotonic() < deadline, f"still {got}, expected {status}"
        await asyncio.sleep(0.1)


async def configured(
    tmp_path: Path, upstream: TestServer, redis_server: RedisServer
) -> tuple[Config, User]:
    """A config with SQLite storage and sessions in `redis_server`, and alice in it."""
    storage = f"sqlite:///{tmp_path / 'authgate.db'}"
    config = configure(tmp_path, str(upstream.make_url("")), storage, redis_server.url)
    return config, await add_user(config, "alice")


# --- (a) the session store down ---------------------------------------------------


async def test_session_store_down_fails_closed_and_recovers_by_itself(
    tmp_path: Path, upstream: TestServer, redis_server: RedisServer, client: aiohttp.ClientSession
) -> None:
    config, user = await configured(tmp_path, upstream, redis_server)
    server, base = await start(config)
    try:
        cookie = await new_session(server, user)
        assert (await get(client, base, "/members/x", cookie))[0] == 200

        redis_server.stop(kill=True)
        for _ in range(20):  # never a pass, and the worker stays up
            status, content_type, body = await get(client, base, "/members/x", cookie)
            assert status == 503
            assert "text/html" in content_type and "alice" not in body
        assert (await get(client, base, "/public/x"))[0] == 200, "bypass routes keep working"
        assert (await get(client, base, "/.authgate/health"))[0] == 200
        assert (await get(client, base, "/.authgate/ready"))[0] == 503

        redis_server.start()  # same port, same append-only file: the session is still there
        await eventually_status(client, base, "/members/x", cookie, 200)
        assert (await get(client, base, "/.authgate/ready"))[0] == 200
    finally:
        await server.stop()


# --- (b) the database down --------------------------------------------------------


async def test_database_down_sign_in_is_a_branded_503_and_sessions_keep_working(
    tmp_path: Path,
    upstream: TestServer,
    postgres: PostgresServer,
    redis_server: RedisServer,
    client: aiohttp.ClientSession,
) -> None:
    config = configure(tmp_path, str(upstream.make_url("")), postgres.url, redis_server.url)
    user = await add_user(config, unique("bob"))
    server, base = await start(config)
    try:
        cookie = await new_session(server, user)
        assert (await get(client, base, "/members/x", cookie))[0] == 200
        browser = Browser(base, client)
        resp, page = await browser.request("GET", "/.authgate/login?rd=http://app.test/members/x")
        assert resp.status == 200

        postgres.stop("immediate")
        try:
            # a signed-in person goes on working: the session is in Redis and the
            # worker remembers the user it loaded
            for _ in range(5):
                assert (await get(client, base, "/members/x", cookie))[0] == 200
            form = {
                "csrf_token": hidden(page, "csrf_token"),
                "rd": hidden(page, "rd"),
                "username": user.username,
                "password": PASSWORD,
            }
            resp, body = await browser.request(
                "POST", "/.authgate/login", data=form, Origin="http://app.test"
            )
            assert resp.status == 503
            assert "text/html" in resp.headers["Content-Type"]
            assert "<html" in body.lower() and "Traceback" not in body
            assert "authgate_session" not in browser.cookies
        finally:
            postgres.start()
        await eventually_status(client, base, "/members/x", cookie, 200)
    finally:
        await server.stop()


async def add_api_key(config: Config, user: User) -> str:
    stores = await open_stores(config)
    try:
        key, _ = await store_api_key(stores, user)
        return key
    finally:
        await stores.close()


async def test_database_down_an_api_key_is_a_503_never_a_pass_and_never_a_401(
    tmp_path: Path,
    upstream: TestServer,
    postgres: PostgresServer,
    redis_server: RedisServer,
    client: aiohttp.ClientSession,
) -> None:
    # API keys live in the database. With it down, a key the worker has not seen cannot
    # be checked: that is "try later" (503), not "let it in", and not "your key is
    # wrong" (401), which would make a client throw a good key away.
    config = configure(tmp_path, str(upstream.make_url("")), postgres.url, redis_server.url)
    user = await add_user(config, unique("ci"))
    key = await add_api_key(config, user)
    server, base = await start(config)

    async def with_key() -> int:
        headers = {"Host": "app.test", "Authorization": f"Bearer {key}", "Accept": "*/*"}
        async with client.get(f"{base}/members/api", headers=headers) as resp:
            return resp.status

    try:
        postgres.stop("immediate")
        try:
            assert [await with_key() for _ in range(3)] == [503, 503, 503]
        finally:
            postgres.start()
        deadline = time.monotonic() + RECOVERY
        while (status := await with_key()) != 200:
            assert status == 503, status
            assert time.monotonic() < deadline, "the key still fails after the database is back"
            await asyncio.sleep(0.1)
    finally:
        await server.stop()


def postgres_pids(server: PostgresServer) -> list[int]:
    """The postmaster and its children (backends) of a private PostgreSQL."""
    master = int((server.directory / "data" / "postmaster.pid").read_text().split()[0])
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return [master, *map(int, children)]


async def test_a_hung_database_is_a_503_in_bounded_time_however_many_wait(
    tmp_path: Path,
    upstream: TestServer,
    postgres: PostgresServer,
    redis_server: RedisServer,
    client: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Stopped, not dead: connections hang instead of failing. Sixty requests that each
    # need the database must not queue behind the pool's ten connections (they did:
    # up to 35 s, growing with the load); each gets its 503 within the store deadline.
    # They open the pool's circuit breaker (gateway/stores/breaker.py): sixty more, sent
    # after, get their 503 at once, and readiness says not ready at once. A first
    # cool-off of 2 s, so that they surely fall within it (no probe among them).
    monkeypatch.setattr(breaker, "COOL_OFF", 2.0)
    config = configure(tmp_path, str(upstream.make_url("")), postgres.url, redis_server.url)
    server, base = await start(config)
    pids = postgres_pids(postgres)

    async def unknown_key() -> tuple[int, float]:
        headers = {"Host": "app.test", "Authorization": f"Bearer {new_api_key()}"}
        started = time.monotonic()
        async with client.get(f"{base}/members/api", headers=headers) as resp:
            return resp.status, time.monotonic() - started

    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            first = [asyncio.ensure_future(unknown_key()) for _ in range(60)]
            # Sent once most of the first have their 503 (the odd one of them may take
            # two deadlines), so surely after the opening and within its cool-off.
            while sum(task.done() for task in first) < 50:
                await asyncio.sleep(0.05)
            opened = time.monotonic()
            later = await asyncio.gather(*(unknown_key() for _ in range(60)))
            ready = await get(client, base, "/.authgate/ready")
            ready_took = time.monotonic() - opened
            answers = await asyncio.gather(*first)
            bypass = await get(client, base, "/public/x")
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        resumed = time.monotonic()
        assert {status for status, _ in answers} == {503}
        slowest = max(seconds for _, seconds in answers)
        assert slowest < 3 * COMMAND_TIMEOUT, f"a request waited {slowest:.1f} s"
        assert bypass[0] == 200
        assert ready_took < 2.0, f"{ready_took:.2f} s: not within the first cool-off"
        assert {status for status, _ in later} == {503}  # fail closed
        slowest_later = max(seconds for _, seconds in later)
        assert slowest_later < 1.0, f"a request after the opening waited {slowest_later:.2f} s"
        assert ready[0] == 503

        # Back by itself: the unknown key is checked again (401), after a cool-off.
        deadline = resumed + breaker.MAX_COOL_OFF + COMMAND_TIMEOUT
        while (status := (await unknown_key())[0]) == 503:
            assert time.monotonic() < deadline, "still 503 after SIGCONT"
            await asyncio.sleep(0.05)
        assert status == 401, status
        print(
            f"hung database: slowest first 503 {slowest:.2f} s, later ones within"
            f" {slowest_later:.2f} s; back {time.monotonic() - resumed:.2f} s after SIGCONT"
        )
    finally:
        await server.stop()


# --- (c) an upstream down or hung -------------------------------------------------


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_hung_and_dead_upstreams_give_504_and_502_without_leaking_connections(
    tmp_path: Path, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read()  # never answers; returns when the gateway gives up
        finally:
            writer.close()

    hung = await asyncio.start_server(hang, "127.0.0.1", 0)
    hung_port = hung.sockets[0].getsockname()[1]
    config = make_config(
        tmp_path,
        f"http://127.0.0.1:{hung_port}",
        route={"read_timeout": 0.2, "connect_timeout": 0.5},
    )
    base = await start_gateway(config)
    try:
        status, _, _ = await get(client, base, "/x")  # warm up: pools, loggers, caches
        assert status == 504
        before = open_fds()
        connector = aiohttp.TCPConnector(limit=50, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as burst:
            statuses = []
            for _ in range(4):
                statuses += await asyncio.gather(*(get(burst, base, "/x") for _ in range(50)))
        assert {s for s, _, _ in statuses} == {504}
        await asyncio.sleep(0.3)
        assert open_fds() <= before + 5, "connections to a hung upstream are closed"
        # What an operator sees: none left open, and each 504 had a connection of its own
        # (one that timed out is never handed to the next request).
        metrics = await scraped(client, base)
        assert metrics["authgate_upstream_connections"] == 0
        assert metrics["authgate_upstream_connections_opened_total"] >= 1 + 200
    finally:
        hung.close()
        await hung.wait_closed()

    dead_port = hung_port  # nobody listens there any more
    dead = make_config(tmp_path, f"http://127.0.0.1:{dead_port}")
    dead_base = await start_gateway(dead)
    status, content_type, _ = await get(client, dead_base, "/x")
    assert status == 502
    assert "text/html" in content_type


async def scraped(client: aiohttp.ClientSession, base: str) -> dict[str, float]:
    """The unlabelled samples of /.authgate/metrics, by name."""
    async with client.get(f"{base}/.authgate/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


# --- (d) no data lost across restarts ----------------------------------------------


async def test_users_and_sessions_survive_restarts_of_postgres_and_redis(
    tmp_path: Path,
    upstream: TestServer,
    postgres: PostgresServer,
    redis_server: RedisServer,
    client: aiohttp.ClientSession,
) -> None:
    config = configure(tmp_path, str(upstream.make_url("")), postgres.url, redis_server.url)
    user = await add_user(config, unique("carol"))
    server, base = await start(config)
    try:
        cookie = await new_session(server, user)
        assert (await get(client, base, "/members/x", cookie))[0] == 200

        redis_server.restart()
        postgres.restart()

        await eventually_status(client, base, "/members/x", cookie, 200)
    finally:
        await server.stop()
    stores = await open_stores(config)  # a fresh process's view
    try:
        assert await stores.users.get(user.id) == user
        assert await stores.sessions.get(hash_session_id(cookie)) is not None
    finally:
        await stores.close()
