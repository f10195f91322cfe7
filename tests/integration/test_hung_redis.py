"""A hung Redis, for real: the session store's redis-server SIGSTOPped under a running
gateway (connections stay open, nothing answers: a Redis in a long fork, swapping, or
behind a network black hole), with many signed-in people asking at once.

Bounds come from gateway/stores/redis.py: each store call answers within
COMMAND_TIMEOUT (5 s), waiting for one of MAX_CONNECTIONS pooled connections included;
the tests allow generous multiples, never tight timings."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.config.model import SessionsConfig
from gateway.stores import breaker, open_stores
from gateway.stores import redis as redis_store
from tests.integration.browser import Browser, hidden
from tests.integration.servers import RedisServer
from tests.integration.test_faults import (
    PASSWORD,
    RECOVERY,
    configured,
    get,
    new_session,
    redis_server,
    start,
)

__all__ = ["redis_server"]  # a fixture, used by name
pytestmark = pytest.mark.redis

BOUND = 3 * redis_store.COMMAND_TIMEOUT  # a generous multiple of a store call's deadline
SIGNED_OUT = {302, 401}  # what a revoked session gets (a page asks to sign in again)


def redis_connections(port: int) -> int:
    """Sockets of this process to `port`, in any state (one still connecting to a stopped
    server holds a file descriptor too)."""
    ours = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/self/fd/{fd}")
            if link.startswith("socket:["):
                ours.add(link[len("socket:[") : -1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                if int(fields[2].rsplit(":", 1)[1], 16) == port and fields[9] in ours:
                    count += 1
    return count


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@contextlib.contextmanager
def stopped(server: RedisServer) -> Iterator[None]:
    """The server SIGSTOPped; SIGCONT whatever happens."""
    assert server.process is not None
    pid = server.process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


async def timed(answer: Awaitable[tuple[int, str, str]]) -> tuple[int, float]:
    started = time.monotonic()
    status, _, _ = await answer
    return status, time.monotonic() - started


async def until(check: Callable[[], Awaitable[bool]], what: str) -> float:
    """Seconds until `check` holds (fails after RECOVERY)."""
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < RECOVERY, what
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def test_a_burst_on_a_healthy_redis_waits_for_a_connection_and_passes(
    tmp_path: Path, upstream: TestServer, redis_server: RedisServer
) -> None:
    # redis-py 8 caps a pool at 100 connections and refuses a command past that
    # (MaxConnectionsError): 150 people arriving at once on a healthy Redis got 503s.
    config, user = await configured(tmp_path, upstream, redis_server)
    server, base = await start(config)
    try:
        cookies = [await new_session(server, user) for _ in range(250)]
        opened = breaker.openings.get("redis", 0)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as burst:
            answers = await asyncio.gather(*(get(burst, base, "/members/x", c) for c in cookies))
        assert [status for status, _, _ in answers] == [200] * len(cookies)
        assert breaker.openings.get("redis", 0) == opened, "a healthy Redis tripped the breaker"
        assert redis_connections(redis_server.port) <= redis_store.MAX_CONNECTIONS + 2
    finally:
        await server.stop()


async def test_a_hung_redis_is_a_503_in_bounded_time_and_comes_back_without_losing_a_logout(
    tmp_path: Path,
    upstream: TestServer,
    redis_server: RedisServer,
    client: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The subscription's liveness ping, quicker, so that a stop of a few seconds is
    # noticed and the subscription is opened again (as it is after 8 s in production).
    monkeypatch.setattr(redis_store, "LIVENESS_INTERVAL", 0.5)
    monkeypatch.setattr(redis_store, "LIVENESS_TIMEOUT", 0.5)
    config, user = await configured(tmp_path, upstream, redis_server)
    # A caches sessions for a minute: only a revocation message (or a resync) makes it
    # forget one. B is another instance, where people sign out.
    sessions = SessionsConfig(store=redis_server.url, cache_ttl=60.0)
    cached = dataclasses.replace(config, sessions=sessions)
    a, base = await start(cached)
    b, _ = await start(config)
    try:
        cookies = [await new_session(a, user) for _ in range(150)]
        # 200 requests: 150 sessions, 50 of them twice (those share one store read)
        asked = cookies + cookies[:50]
        kept, later = await new_session(a, user), await new_session(a, user)
        assert (await get(client, base, "/members/x", kept))[0] == 200  # cached in A now
        # A busy worker's pool is full of connections (sessions used here, then cached,
        # are not asked again while Redis is stopped).
        warmers = [await new_session(a, user) for _ in range(150)]
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as warm:
            await asyncio.gather(*(get(warm, base, "/members/x", c) for c in warmers))
            await asyncio.gather(*(get(warm, base, "/public/x") for _ in range(len(asked))))
        fds_before = open_fds()
        connections_before = redis_connections(redis_server.port)

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as burst:
            with stopped(redis_server):
                wave = asyncio.gather(*(timed(get(burst, base, "/members/x", c)) for c in asked))
                await asyncio.sleep(1.0)  # the wave is waiting on the stopped Redis
                bypass = await timed(get(client, base, "/public/x"))
                health = await timed(get(client, base, "/.authgate/health"))
                ready = await timed(get(client, base, "/.authgate/ready"))
                peak = redis_connections(redis_server.port)
                while not wave.done():
                    peak = max(peak, redis_connections(redis_server.port))
                    await asyncio.sleep(0.1)
                answers = await wave
            resumed = time.monotonic()

        statuses = {status for status, _ in answers}
        slowest = max(seconds for _, seconds in answers)
        assert statuses == {503}, statuses  # never a pass, never a sign-out, never a 500
        assert slowest < BOUND, f"a request waited {slowest:.1f} s"
        assert bypass[0] == 200 and bypass[1] < 1.0, "bypass routes do not need Redis"
        assert health[0] == 200 and health[1] < 1.0, "the worker is alive"
        assert ready[0] == 503 and ready[1] < BOUND, "but not ready"
        # One pool of MAX_CONNECTIONS per instance, whatever the load (and B is idle).
        assert peak <= redis_store.MAX_CONNECTIONS + 4, peak
        await asyncio.sleep(0.2)  # the burst's own sockets are closed
        assert open_fds() <= fds_before + 10, (fds_before, open_fds())

        # Back by itself, every session still valid.
        async def serves() -> bool:
            return (await get(client, base, "/members/x", cookies[0]))[0] == 200

        await until(serves, "A does not serve again after SIGCONT")
        back = time.monotonic() - resumed
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as again:
            answers2 = await asyncio.gather(*(get(again, base, "/members/x", c) for c in cookies))
        assert {status for status, _, _ in answers2} == {200}
        assert redis_connections(redis_server.port) <= connections_before + 4 + (
            redis_store.MAX_CONNECTIONS
        )

        # A logout right after recovery, on B, reaches A (whose cached copy would
        # otherwise pass for a minute): by its reopened subscription, or the resync.
        b_runtime: Any = b.runtime
        await b_runtime.sessions.revoke(kept)

        def signed_out(cookie: str) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                return (await get(client, base, "/members/x", cookie))[0] in SIGNED_OUT

            return check

        await until(signed_out(kept), "A still lets a session revoked on B through")
        # And the subscription is live again: a later logout on B is heard at once.
        assert (await get(client, base, "/members/x", later))[0] == 200  # cached in A
        await asyncio.sleep(1.0)  # the listener has surely resubscribed by now
        await b_runtime.sessions.revoke(later)
        heard = await until(signed_out(later), "a later logout on B is not heard")
        assert heard < 1.0, f"heard after {heard:.2f} s: by expiry, not by the subscription"
        print(
            f"hung redis: {len(asked)} requests, slowest 503 {slowest:.2f} s;"
            f" redis connections {connections_before} before, peak {peak};"
            f" fds {fds_before} before, {open_fds()} after; back {back:.2f} s after SIGCONT"
        )
    finally:
        await b.stop()
        await a.stop()


async def test_redis_stopped_mid_sign_in_is_a_branded_503_and_no_session(
    tmp_path: Path,
    upstream: TestServer,
    redis_server: RedisServer,
    client: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config, user = await configured(tmp_path, upstream, redis_server)
    server, base = await start(config)
    write = redis_store.RedisSessionStore._write
    assert redis_server.process is not None
    pid = redis_server.process.pid

    async def stop_then_write(self: redis_store.RedisSessionStore, record: Any) -> None:
        # The password is checked, the rate limits counted and the session indexed:
        # Redis stops just as the session itself is written.
        os.kill(pid, signal.SIGSTOP)
        await write(self, record)

    try:
        browser = Browser(base, client)
        resp, page = await browser.request("GET", "/.authgate/login?rd=http://app.test/members/x")
        assert resp.status == 200
        form = {
            "csrf_token": hidden(page, "csrf_token"),
            "rd": hidden(page, "rd"),
            "username": "alice",
            "password": PASSWORD,
        }
        monkeypatch.setattr(redis_store.RedisSessionStore, "_write", stop_then_write)
        try:
            started = time.monotonic()
            resp, body = await browser.request(
                "POST", "/.authgate/login", data=form, Origin="http://app.test"
            )
            took = time.monotonic() - started
        finally:
            os.kill(pid, signal.SIGCONT)
            monkeypatch.setattr(redis_store.RedisSessionStore, "_write", write)
        assert resp.status == 503, resp.status
        assert "text/html" in resp.headers["Content-Type"]
        assert "<html" in body.lower() and "Traceback" not in body
        assert "authgate_session" not in browser.cookies
        assert took < BOUND, f"the sign-in waited {took:.1f} s"

        # Nothing half-written: whatever Redis ran after SIGCONT is a whole session or
        # none (the write is one script), and nobody holds a cookie for it.
        stores = await open_stores(config)
        try:
            for record in await stores.sessions.list_user("acme", user.id):
                assert record.user_id == user.id and record.expires > time.time()
        finally:
            await stores.close()

        # And signing in works again by itself.
        async def signs_in() -> bool:
            resp, page = await browser.request(
                "GET", "/.authgate/login?rd=http://app.test/members/x"
            )
            if resp.status != 200:
                return False
            form["csrf_token"] = hidden(page, "csrf_token")
            resp, _ = await browser.request(
                "POST", "/.authgate/login", data=form, Origin="http://app.test"
            )
            return "authgate_session" in browser.cookies

        await until(signs_in, "signing in does not work again after SIGCONT")
    finally:
        await server.stop()


async def test_once_redis_is_found_hung_later_requests_get_their_503_at_once(
    tmp_path: Path,
    upstream: TestServer,
    redis_server: RedisServer,
    client: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The circuit breaker (gateway/stores/breaker.py): the first requests wait out the
    # store deadline, and open it; until Redis answers a probe again, every later one
    # is a 503 at once instead of holding its connection for COMMAND_TIMEOUT.
    # A first cool-off of 2 s, so that a wave sent right after the opening surely
    # falls within it (no probe among it); the cap stays as in production.
    monkeypatch.setattr(breaker, "COOL_OFF", 2.0)
    config, user = await configured(tmp_path, upstream, redis_server)
    server, base = await start(config)
    try:
        cookies = [await new_session(server, user) for _ in range(250)]
        first, second, trickle = cookies[:20], cookies[20:120], iter(cookies[120:])
        assert (await get(client, base, "/members/x", cookies[0]))[0] == 200
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as burst:
            with stopped(redis_server):
                answers = await asyncio.gather(
                    *(timed(get(burst, base, "/members/x", c)) for c in first)
                )
                assert {status for status, _ in answers} == {503}
                # these found the store hung the slow way (redis-py's socket timeout)
                assert min(seconds for _, seconds in answers) > 0.8 * redis_store.SOCKET_TIMEOUT
                opened = time.monotonic()
                answers = await asyncio.gather(
                    *(timed(get(burst, base, "/members/x", c)) for c in second)
                )
                ready = await timed(get(client, base, "/.authgate/ready"))
                fast_window = time.monotonic() - opened
                assert fast_window < 2.0, f"the wave took {fast_window:.2f} s: not in a cool-off"
                assert {status for status, _ in answers} == {503}  # fail closed
                slowest = max(seconds for _, seconds in answers)
                assert slowest < 1.0, f"a request after the opening waited {slowest:.2f} s"
                assert ready[0] == 503 and ready[1] < 1.0, ready
                # Hung on: one request every 0.2 s for 8 s. All are 503s; only the few
                # probes (one per cool-off: 2, 4, then 5 s) wait out the deadline.
                trickled = []
                while time.monotonic() - opened < 8.0:
                    trickled.append(
                        asyncio.ensure_future(timed(get(burst, base, "/members/x", next(trickle))))
                    )
                    await asyncio.sleep(0.2)
                slow = 0
                for answer in trickled:
                    done, _ = await asyncio.wait([answer], timeout=0)
                    if done:
                        status, seconds = answer.result()
                        assert status == 503
                        slow += seconds > 1.0
                    else:
                        slow += 1  # a probe still waiting
            resumed = time.monotonic()
            await asyncio.gather(*trickled)  # SIGCONT: whatever still waited is answered
        assert {status for status, _ in (a.result() for a in trickled)} <= {503, 200}
        assert slow <= 3, f"{slow} of {len(trickled)} requests waited (only probes should)"

        # Back by itself within the longest cool-off (and a probe's answer).
        async def serves() -> bool:
            return (await get(client, base, "/members/x", cookies[0]))[0] == 200

        await until(serves, "not serving again after SIGCONT")
        back = time.monotonic() - resumed
        assert back < breaker.MAX_COOL_OFF + 1.5, f"back {back:.2f} s after SIGCONT"
        assert (await get(client, base, "/.authgate/ready"))[0] == 200
        print(
            f"breaker: {len(second)} requests after the opening, slowest 503 {slowest:.2f} s;"
            f" {slow} of {len(trickled)} trickled requests probed;"
            f" back {back:.2f} s after SIGCONT"
        )
    finally:
        await server.stop()
