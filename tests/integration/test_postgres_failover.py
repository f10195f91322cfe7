"""PostgreSQL failover, for real (issue 8): a primary and a hot standby in streaming
replication, the gateway given the libpq multi-host URL
`postgresql://primary,standby/db?target_session_attrs=read-write`; the primary is
killed, then the standby promoted (`pg_ctl promote`), and the gateway has to fail
closed meanwhile and follow by itself afterwards, losing nothing.

The replication tested is synchronous (`synchronous_standby_names='*'`): a commit is
answered once the standby has it, so what was written before the failover is there
after it. With asynchronous replication the last commits before a crash can be lost;
that is PostgreSQL's choice, not something the gateway could make up for."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from yarl import URL

from gateway.config import load_config
from gateway.errors import StoreUnavailable
from gateway.extensions import default_extensions
from gateway.server import GatewayServer
from gateway.stores import open_database
from gateway.stores.postgres import COMMAND_TIMEOUT, open_postgres
from tests.integration.browser import Browser, hidden
from tests.integration.relay import Relay
from tests.integration.servers import (
    PostgresPair,
    PostgresServer,
    RedisServer,
    start_postgres_pair,
    start_redis,
)
from tests.integration.test_faults import KEY, PASSWORD, POLICY

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

FOLLOW = 15.0  # seconds the gateway may take to serve again after the promotion


@pytest.fixture
def pair() -> Iterator[PostgresPair]:
    servers = start_postgres_pair(synchronous=True)
    yield servers
    servers.remove()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.stop(kill=True)
    shutil.rmtree(server.directory, ignore_errors=True)


def write_config(tmp_path: Path, upstream: str, storage: str, sessions: str) -> Path:
    (tmp_path / "policy.yaml").write_text(POLICY)
    config = tmp_path / "config.yaml"
    config.write_text(
        f"""
server: {{listen: "127.0.0.1:0", dev_mode: true}}
storage: "{storage}"
sessions: {{store: "{sessions}", cache_ttl: 0s}}
secrets: {{encryption_key: "{KEY}"}}
passwords: {{time_cost: 1, memory_cost: 8, parallelism: 1}}
tenants:
  - id: acme
    name: Acme
    domains: [app.test]
    signup: true
    policies: [policy.yaml]
    routes: [{{host: app.test, upstream: "{upstream}"}}]
"""
    )
    return config


def authgate(config: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """The `authgate` command line, as an operator runs it (its own process)."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", "-c", str(config), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )


def migrated(
    tmp_path: Path, upstream: TestServer, pair: PostgresPair, redis_server: RedisServer
) -> Path:
    """The config on the pair's multi-host URL, its database migrated."""
    config = write_config(tmp_path, str(upstream.make_url("")), pair.url, redis_server.url)
    done = authgate(config, "migrate")
    assert done.returncode == 0, done.stderr
    return config


def add_user(config: Path, username: str) -> None:
    done = authgate(config, "user", "add", username, "--password-stdin", stdin=PASSWORD + "\n")
    assert done.returncode == 0, done.stderr


async def start(config: Path) -> tuple[GatewayServer, str]:
    server = GatewayServer(load_config(config), tuple(default_extensions()))
    await server.start()
    host, port = server.addresses[0]
    return server, f"http://{host}:{port}"


async def sign_in(
    client: aiohttp.ClientSession, base: str, username: str
) -> tuple[int, str, Browser]:
    """Fill the login form: the answer's status and body, and the browser (holding the
    session cookie when the answer is a 303)."""
    browser = Browser(base, client)
    resp, page = await browser.request("GET", "/.authgate/login?rd=http://app.test/members/x")
    assert resp.status == 200, page
    form = {
        "csrf_token": hidden(page, "csrf_token"),
        "rd": hidden(page, "rd"),
        "username": username,
        "password": PASSWORD,
    }
    resp, body = await browser.request(
        "POST", "/.authgate/login", data=form, Origin="http://app.test"
    )
    return resp.status, body, browser


async def sign_up(client: aiohttp.ClientSession, base: str, username: str) -> tuple[int, str]:
    """Self-service sign-up: a write to the database through the gateway."""
    browser = Browser(base, client)
    resp, page = await browser.request("GET", "/.authgate/signup?rd=http://app.test/members/x")
    assert resp.status == 200, page
    form = {
        "csrf_token": hidden(page, "csrf_token"),
        "rd": hidden(page, "rd"),
        "username": username,
        "email": f"{username}@example.test",
        "password": PASSWORD,
        "password2": PASSWORD,
    }
    resp, body = await browser.request(
        "POST", "/.authgate/signup", data=form, Origin="http://app.test"
    )
    return resp.status, body


async def status(
    client: aiohttp.ClientSession, base: str, path: str, cookie: str = "", host: str = "app.test"
) -> int:
    headers = {"Host": host, "Accept": "text/html"}
    if cookie:
        headers["Cookie"] = f"authgate_session={cookie}"
    async with client.get(base + path, headers=headers, allow_redirects=False) as resp:
        return resp.status


async def kids(client: aiohttp.ClientSession, base: str) -> set[str]:
    async with client.get(base + "/.authgate/jwks.json", headers={"Host": "app.test"}) as resp:
        assert resp.status == 200
        return {key["kid"] for key in (await resp.json())["keys"]}


def users_named(server: PostgresServer, username: str) -> str:
    assert username.isalnum()
    return server.sql(f"SELECT count(*) FROM users WHERE username = '{username}'")  # noqa: S608


def add_tenant(config: Path, tenant: str, host: str) -> None:
    done = authgate(config, "tenant", "add", tenant, "--domain", host)
    assert done.returncode == 0, done.stderr


async def test_the_gateway_fails_closed_while_the_primary_is_dead_and_follows_the_promotion(
    tmp_path: Path,
    upstream: TestServer,
    pair: PostgresPair,
    redis_server: RedisServer,
    client: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("gateway.runtime.REFRESH_INTERVAL", 0.5)  # the JWT keys' reads
    config = migrated(tmp_path, upstream, pair, redis_server)
    add_user(config, "alice")
    # the user was written on the primary, and (synchronous) the standby has it too
    assert users_named(pair.primary, "alice") == "1"
    assert users_named(pair.standby, "alice") == "1"

    add_tenant(config, "initech", "initech.test")
    server, base = await start(config)
    try:
        assert await status(client, base, "/", host="initech.test") == 404  # known, no route
        answer, page, alice = await sign_in(client, base, "alice")
        assert answer == 303, page
        cookie = alice.cookies["authgate_session"]
        assert await status(client, base, "/members/x", cookie) == 200
        before_kids = await kids(client, base)

        pair.kill_primary()
        killed = time.monotonic()
        answer, page, late = await sign_in(client, base, "alice")
        to_503 = time.monotonic() - killed
        assert answer == 503, page
        assert "<html" in page.lower() and "Traceback" not in page
        assert "authgate_session" not in late.cookies
        assert to_503 < COMMAND_TIMEOUT
        # what does not need the database goes on
        assert await status(client, base, "/members/x", cookie) == 200
        assert await status(client, base, "/public/x") == 200
        assert await kids(client, base) == before_kids
        assert await status(client, base, "/.authgate/health") == 200
        assert await status(client, base, "/.authgate/ready") == 503
        assert await status(client, base, "/", host="initech.test") == 404
        # Trying again and again (more than regulation.max_retries) while the database
        # is away is no guessing: it must not ban alice once it is back.
        for _ in range(4):
            assert (await sign_in(client, base, "alice"))[0] == 503
        await asyncio.sleep(1.0)  # a few failed reads of the signing keys

        pair.promote()
        promoted = time.monotonic()
        while True:
            answer, page, alice = await sign_in(client, base, "alice")
            if answer == 303:
                break
            assert answer == 503, page
            assert time.monotonic() - promoted < FOLLOW, "the gateway did not follow"
            await asyncio.sleep(0.1)
        to_serve = time.monotonic() - promoted
        assert await status(client, base, "/.authgate/ready") == 200
        assert await status(client, base, "/members/x", alice.cookies["authgate_session"]) == 200

        # written after the failover, by the command line and through the gateway: on
        # the new primary, and served
        add_user(config, "bob")
        assert users_named(pair.standby, "bob") == "1"
        answer, page, _ = await sign_in(client, base, "bob")
        assert answer == 303, page
        answer, page = await sign_up(client, base, "carol")
        assert answer == 303, page
        assert users_named(pair.standby, "carol") == "1"
        add_tenant(config, "globex", "globex.test")
        deadline = time.monotonic() + 5
        while await status(client, base, "/", host="globex.test") != 404:
            assert time.monotonic() < deadline, "a tenant added after the failover is not served"
            await asyncio.sleep(0.1)
        # a key rotated on the new primary is published: the refresh loop recovered
        done = authgate(config, "keys", "rotate")
        assert done.returncode == 0, done.stderr
        deadline = time.monotonic() + 5
        while (now_kids := await kids(client, base)) == before_kids:
            assert time.monotonic() < deadline, "the signing keys are not read again"
            await asyncio.sleep(0.1)
        assert before_kids < now_kids
        print(f"503 after {to_503:.3f} s; serving again {to_serve:.3f} s after promotion")
    finally:
        await server.stop()


async def test_a_hung_primary_does_not_keep_the_gateway_from_the_promoted_standby(
    tmp_path: Path,
    upstream: TestServer,
    pair: PostgresPair,
    redis_server: RedisServer,
    client: aiohttp.ClientSession,
) -> None:
    # A primary that hangs (a machine gone silent, a stopped process) instead of dying:
    # connecting to it neither succeeds nor fails. The hosts of the URL are tried in
    # order, so a connection attempt must give up on one host in time to try the next.
    config = migrated(tmp_path, upstream, pair, redis_server)
    add_user(config, "alice")
    server, base = await start(config)
    try:
        assert (await sign_in(client, base, "alice"))[0] == 303
        pair.freeze_primary()
        frozen = time.monotonic()
        answer, page, _ = await sign_in(client, base, "alice")
        to_503 = time.monotonic() - frozen
        assert answer == 503, page
        assert to_503 < COMMAND_TIMEOUT + 1, f"a sign-in waited {to_503:.1f} s"

        pair.promote()
        promoted = time.monotonic()
        while (answer := (await sign_in(client, base, "alice"))[0]) != 303:
            assert answer == 503
            assert time.monotonic() - promoted < FOLLOW, "the gateway did not follow"
        to_serve = time.monotonic() - promoted
        # and it stays with the new primary: sign-ins no longer wait for the hung one
        started = time.monotonic()
        for _ in range(5):
            assert (await sign_in(client, base, "alice"))[0] == 303
        assert time.monotonic() - started < 2.0
        assert await status(client, base, "/.authgate/ready") == 200
        print(f"hung primary: 503 after {to_503:.3f} s; serving {to_serve:.3f} s after promotion")
    finally:
        await server.stop()


async def test_a_url_without_target_session_attrs_never_writes_to_the_standby(
    tmp_path: Path,
    upstream: TestServer,
    pair: PostgresPair,
    redis_server: RedisServer,
    client: aiohttp.ClientSession,
) -> None:
    # The standby listed first and no target_session_attrs: libpq and asyncpg would take
    # the first server that answers, the read-only standby, and every write would fail.
    hosts = f"127.0.0.1:{pair.standby.port},127.0.0.1:{pair.primary.port}"
    url = f"postgresql://postgres@{hosts}/postgres"
    config = write_config(tmp_path, str(upstream.make_url("")), url, redis_server.url)
    done = authgate(config, "migrate")
    assert done.returncode == 0, done.stderr
    add_user(config, "alice")
    assert users_named(pair.primary, "alice") == "1"
    server, base = await start(config)
    try:
        answer, page = await sign_up(client, base, "bob")
        assert answer == 303, page
        assert users_named(pair.primary, "bob") == "1"
        assert await status(client, base, "/.authgate/ready") == 200
    finally:
        await server.stop()


async def test_only_a_standby_is_refused_at_start_with_a_clear_message(
    tmp_path: Path, upstream: TestServer, pair: PostgresPair, redis_server: RedisServer
) -> None:
    config = migrated(tmp_path, upstream, pair, redis_server)
    standby_only = f"postgresql://postgres@127.0.0.1:{pair.standby.port}/postgres"
    config = write_config(tmp_path, str(upstream.make_url("")), standby_only, redis_server.url)
    with pytest.raises(StoreUnavailable, match="read-only"):
        database = await open_database(load_config(config))
        await database.close()
    done = authgate(config, "user", "add", "mallory", "--password-stdin", stdin=PASSWORD)
    assert done.returncode != 0
    assert "read-only" in done.stderr and "Traceback" not in done.stderr


async def test_a_primary_fenced_read_only_under_open_connections_is_left_for_the_new_one(
    tmp_path: Path,
    upstream: TestServer,
    pair: PostgresPair,
    redis_server: RedisServer,
    client: aiohttp.ClientSession,
) -> None:
    # A switchover that fences the old primary (default_transaction_read_only, reloaded)
    # rather than stopping it: the pooled connections stay open to a server that now
    # refuses every write. Those writes are 503s, and the pool reconnects and finds the
    # promoted standby, instead of using the fenced server until the connections age out.
    config = migrated(tmp_path, upstream, pair, redis_server)
    server, base = await start(config)
    try:
        assert (await sign_up(client, base, "alice"))[0] == 303
        pair.primary.sql("ALTER SYSTEM SET default_transaction_read_only = on")
        pair.primary.sql("SELECT pg_reload_conf()")
        pair.promote()
        deadline = time.monotonic() + FOLLOW
        answers = []
        while not answers or answers[-1] != 303:
            assert time.monotonic() < deadline, f"{len(answers)} sign-ups hit the fenced server"
            answers.append((await sign_up(client, base, f"bob{len(answers)}"))[0])
            await asyncio.sleep(0.05)
        assert set(answers) <= {503, 303}, answers
        assert users_named(pair.standby, f"bob{len(answers) - 1}") == "1"
        assert await status(client, base, "/.authgate/ready") == 200
    finally:
        await server.stop()


async def test_silent_hosts_first_in_the_url_do_not_keep_the_gateway_from_the_one_that_answers(
    postgres_url: str,
) -> None:
    # Four hosts: the primary, which goes silent (a relay that stops answering), two
    # that never answered (black holes: they accept a connection and say nothing), and
    # the one that answers. Each host gets 2 s, so one attempt meets 2 + 2 + 1 s of
    # silence before the call's deadline (COMMAND_TIMEOUT) cuts it: attempts must not
    # all start from the same silent host.
    url = URL(postgres_url)
    primary = Relay((url.host or "127.0.0.1", url.port or 5432))
    answering = Relay((url.host or "127.0.0.1", url.port or 5432))
    holes = [socket.socket() for _ in range(2)]
    for hole in holes:
        hole.bind(("127.0.0.1", 0))
        hole.listen(64)
    ports = [primary.start(), *(h.getsockname()[1] for h in holes), answering.start()]
    hosts = ",".join(f"127.0.0.1:{port}" for port in ports)
    multi = str(url.with_host("placeholder").with_port(None)).replace("placeholder", hosts)
    db = await open_postgres(f"{multi}?target_session_attrs=read-write")
    try:
        assert await db.fetchone("SELECT 1") is not None  # through the primary
        primary.set_delay(3600.0)
        silenced = time.monotonic()
        while True:
            try:
                if await db.fetchone("SELECT 1") is not None:
                    break
            except StoreUnavailable:
                pass
            assert time.monotonic() - silenced < 45, "never reached the host that answers"
            await asyncio.sleep(0.2)
        print(f"served again {time.monotonic() - silenced:.1f} s after the primary went silent")
        assert answering.connections >= 1
    finally:
        await db.close()
        primary.stop()
        answering.stop()
        for hole in holes:
            hole.close()
