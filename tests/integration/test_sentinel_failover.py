"""Two gateway instances on a Sentinel-managed Redis while its master fails over, for
real: a master, two replicas and three Sentinels (quorum 2) on spare ports, PostgreSQL
for storage, two `GatewayServer`s with the full extensions (each with its own stores,
session cache and revocation subscription, as two hosts would have).

- The master is killed (SIGKILL). While the Sentinels fail over, protected requests
  with a valid session get 200 (a cached session) or 503, never 500; a revoked or an
  unknown session never passes; both instances keep answering.
- Once a replica is promoted, both instances serve the sessions written before (and
  replicated) again, by themselves, and a revocation made on A afterwards is refused
  by B within the documented bound (sessions.cache_ttl + slack), through B's
  subscription, which followed the new master (not merely because its cache expired).
- The old master comes back (restarted, empty, as a master); the Sentinels turn it into
  a replica; nothing passes that should not, and revocations still reach B.
- A coordinated failover (`SENTINEL FAILOVER`: the master is demoted while alive) is
  followed the same way: no subscription stays on the demoted master.
- A logout made once every Sentinel is done with a coordinated failover, but before
  they demote the old master (still a master, still holding the instances' pooled
  connections), must stick too.

Timings: Sentinel's down-after is 1 s and its periods are shortened (servers.py): every
Sentinel is done with a failover about 3.5 s after the master is killed, a returning or
a live old master is demoted within about 3 s; the module takes about 20 s.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from benchmarks.revocation import (
    add_user,
    base_url,
    build_config,
    instances,
    logout,
    new_session,
    status,
    upstream,
)
from gateway.config.model import Config
from gateway.server import GatewayServer
from gateway.stores import User, session_revoked, user_sessions_revoked
from gateway.stores.base import RESYNC
from gateway.stores.ids import hash_session_id, new_session_id
from tests.integration.servers import SentinelGroup, redis_cli, start_sentinel_group

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]

CACHE_TTL = 1.0
SLACK = 0.5  # a reconnection's round trips and one request on a loaded CI machine
BOUND = CACHE_TTL + SLACK  # how late B may refuse a session revoked on A (docs/scaling.md)
# down-after (1 s) + agreement + election + promotion + every Sentinel switched: about
# 3.5 s. An election ending in a split vote is retried after 2 x failover-timeout (8 s).
FAILOVER_WAIT = 20.0
RECOVERY = 5.0  # after the Sentinels agree on a new master, both instances serve again
DEMOTION_WAIT = 15.0  # a live or returning old master is made a replica (about 2-3 s)
GIVE_UP = 10.0  # B still serving a revoked session after this: the trial stops
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=15)  # never reached by a live instance
NO_ANSWER = -1  # the status noted for a request that got no HTTP answer at all


@pytest.fixture
def sentinels() -> Iterator[SentinelGroup]:
    group = start_sentinel_group()
    yield group
    group.stop()


# --- what B hears, what the instances answer ----------------------------------------


Heard = list[tuple[float, str]]


def listen(monkeypatch: pytest.MonkeyPatch, server: GatewayServer) -> Heard:
    """The revocation messages `server`'s SessionManager receives from its subscription
    (monotonic time, message), recorded before it acts on them."""
    runtime: Any = server.runtime
    sessions = runtime.sessions
    original = sessions._on_revocation
    heard: Heard = []

    async def recording(message: str) -> None:
        heard.append((time.monotonic(), message))
        await original(message)

    monkeypatch.setattr(sessions, "_on_revocation", recording)
    return heard


@dataclass(frozen=True)
class Answer:
    at: float  # monotonic
    instance: str  # "A" or "B"
    kind: str  # "valid", "revoked", "unknown", "health"
    status: int


async def answer(client: aiohttp.ClientSession, base: str, cookie: str | None) -> int:
    """The status of a protected request (JSON client: 401 when not signed in), or of
    the liveness probe without a cookie; NO_ANSWER when the instance did not answer."""
    path = "/members/x" if cookie else "/.authgate/health"
    headers = {"Host": "app.test", "Accept": "application/json"}
    if cookie:
        headers["Cookie"] = f"authgate_session={cookie}"
    try:
        async with client.get(
            base + path, headers=headers, allow_redirects=False, timeout=REQUEST_TIMEOUT
        ) as resp:
            await resp.read()
            return resp.status
    except (aiohttp.ClientError, TimeoutError):
        return NO_ANSWER


@asynccontextmanager
async def probing(
    client: aiohttp.ClientSession,
    servers: dict[str, GatewayServer],
    cookies: dict[str, str],
) -> AsyncIterator[list[Answer]]:
    """Ask every instance, over and over, with every cookie (and for its liveness)
    while the block runs; the answers, in order."""
    answers: list[Answer] = []
    stop = asyncio.Event()

    async def one_instance(name: str, server: GatewayServer) -> None:
        base = base_url(server)
        while not stop.is_set():
            for kind, cookie in [*cookies.items(), ("health", None)]:
                code = await answer(client, base, cookie)
                answers.append(Answer(time.monotonic(), name, kind, code))
            await asyncio.sleep(0.02)

    tasks = [asyncio.create_task(one_instance(n, s)) for n, s in servers.items()]
    try:
        yield answers
    finally:
        stop.set()
        await asyncio.gather(*tasks)


def check_fail_closed(answers: list[Answer], phase: str) -> None:
    """A valid session: 200 or 503. A revoked or unknown one: 401 or 503, never a pass.
    Never a 500, never silence; liveness always 200 (a store outage kills no one)."""
    allowed = {"valid": {200, 503}, "revoked": {401, 503}, "unknown": {401, 503}, "health": {200}}
    wrong = [a for a in answers if a.status not in allowed[a.kind]]
    assert wrong == [], f"{phase}: {len(wrong)} wrong answers, first {wrong[:5]}"
    for name in ("A", "B"):
        assert any(a.instance == name for a in answers), f"{phase}: {name} never asked"


def no_errors_logged(caplog: pytest.LogCaptureFixture) -> None:
    bad = [
        r
        for r in caplog.records
        if r.levelno >= logging.ERROR
        and r.getMessage() in {"unhandled error", "event callback failed"}
    ]
    assert bad == [], [f"{r.name}: {r.getMessage()}" for r in bad]


async def until(
    predicate: Callable[[], bool | Awaitable[bool]], what: str, timeout: float
) -> float:
    """Poll until `predicate` holds; returns when it did (monotonic)."""
    deadline = time.monotonic() + timeout
    while True:
        held = predicate()
        if held if isinstance(held, bool) else await held:
            return time.monotonic()
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.05)


async def replicated(group: SentinelGroup, replicas: int) -> None:
    """Every write made so far is on `replicas` replicas: a write of ours, then WAIT on
    the same connection (replication is in order, so it covers the gateways' writes)."""
    master = aioredis.Redis(port=await asyncio.to_thread(group.master_port))
    try:
        await master.set("test:replicated", "1")
        acked = await master.wait(replicas, 5000)
        assert acked >= replicas, f"only {acked} replicas acknowledged"
    finally:
        await master.aclose()


# --- a revocation on A, seen by B -----------------------------------------------------


async def revocation_reaches_b(
    client: aiohttp.ClientSession,
    a: GatewayServer,
    b: GatewayServer,
    cookie: str,
    revoke: Callable[[], Awaitable[object]],
    message: str,
    heard: Heard,
) -> float:
    """B holds the session in its cache; it is revoked on A; B must refuse it within
    BOUND, and must have heard `message` on its subscription (so it did not merely
    wait for its cache entry to end). Returns the time to B's first refusal."""
    assert await status(client, base_url(a), cookie) == 200
    assert await status(client, base_url(b), cookie) == 200, "B serves it, and caches it"
    sent = time.monotonic()
    await revoke()
    answers: list[tuple[float, int]] = []
    while True:
        code = await status(client, base_url(b), cookie)
        elapsed = time.monotonic() - sent
        answers.append((elapsed, code))
        if code != 200 or elapsed > GIVE_UP:
            break
        await asyncio.sleep(0.005)
    passed_late = [(t, code) for t, code in answers if code == 200 and t > BOUND]
    assert passed_late == [], f"B served the revoked session {passed_late[-1][0]:.2f} s late"
    assert answers[-1][1] == 401, f"B refuses (JSON client: 401), never errors: {answers[-1]}"
    assert await status(client, base_url(a), cookie) == 401
    # A message arrives at once on a live subscription; wait out the bound for it.
    deadline = sent + BOUND
    while not any(m == message for t, m in heard if t >= sent) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    since = [(round(t - sent, 3), m[:16]) for t, m in heard if t >= sent - 2.0]
    assert any(m == message for t, m in heard if t >= sent), (
        f"B refused after {answers[-1][0]:.3f} s without hearing {message[:16]}… on its"
        f" subscription within {BOUND} s (cache expiry, not the event); B heard {since}"
    )
    return answers[-1][0]


async def trials(
    client: aiohttp.ClientSession,
    a: GatewayServer,
    b: GatewayServer,
    alice: User,
    bob: User,
    heard: Heard,
) -> list[float]:
    """A logout (through A's page, CSRF and all) and a "log out everywhere" (A's
    SessionManager): B refuses each within the bound, having heard of it."""
    cookie = await new_session(a, alice)
    by_logout = await revocation_reaches_b(
        client,
        a,
        b,
        cookie,
        lambda: logout(client, base_url(a), cookie),
        session_revoked(hash_session_id(cookie)),
        heard,
    )
    runtime: Any = a.runtime
    cookie = await new_session(a, bob)
    everywhere = await revocation_reaches_b(
        client,
        a,
        b,
        cookie,
        lambda: runtime.sessions.revoke_user("acme", bob.id),
        user_sessions_revoked("acme", bob.id),
        heard,
    )
    return [by_logout, everywhere]


async def trials_then_still_serving(
    client: aiohttp.ClientSession,
    a: GatewayServer,
    b: GatewayServer,
    setup: Setup,
    heard: Heard,
    valid: str,
    caplog: pytest.LogCaptureFixture,
) -> list[float]:
    """`trials`, then the long-lived session still passes on both, and nothing was
    logged as an error."""
    latencies = await trials(client, a, b, setup.alice, setup.bob, heard)
    for server in (a, b):
        assert await status(client, base_url(server), valid) == 200
    no_errors_logged(caplog)
    return latencies


# --- set-up -----------------------------------------------------------------------------


@dataclass
class Setup:
    config: Config
    alice: User  # holds the long-lived session; logs out in trials
    bob: User  # "logged out everywhere" in trials


async def set_up(tmp_path: Path, upstream_url: str, storage: str, group: SentinelGroup) -> Setup:
    config = build_config(tmp_path, upstream_url, storage, group.url, CACHE_TTL)
    return Setup(config, await add_user(config, "alice"), await add_user(config, "bob"))


async def sessions_before(
    client: aiohttp.ClientSession, a: GatewayServer, b: GatewayServer, alice: User
) -> dict[str, str]:
    """A valid session, a revoked one and an unknown one, as both instances see them."""
    valid = await new_session(a, alice)
    revoked = await new_session(a, alice)
    runtime: Any = a.runtime
    await runtime.sessions.revoke(revoked)
    cookies = {"valid": valid, "revoked": revoked, "unknown": new_session_id()}
    for server in (a, b):
        assert await status(client, base_url(server), valid) == 200
        assert await status(client, base_url(server), revoked) == 401
        assert await status(client, base_url(server), cookies["unknown"]) == 401
    return cookies


def serving_again(answers: list[Answer], since: float) -> bool:
    """Both instances served the valid session at or after `since`."""
    return all(
        any(
            x.instance == name and x.kind == "valid" and x.status == 200 and x.at >= since
            for x in answers
        )
        for name in ("A", "B")
    )


def subscribers(port: int) -> list[str]:
    """The pub/sub clients of a redis-server, other than Sentinels."""
    clients = redis_cli(port, "client", "list").splitlines()
    return [c for c in clients if " flags=P " in c and "name=sentinel-" not in c]


async def both_ready(client: aiohttp.ClientSession, *servers: GatewayServer) -> bool:
    for server in servers:
        async with client.get(base_url(server) + "/.authgate/ready") as resp:
            if resp.status != 200:
                return False
    return True


# --- the tests ----------------------------------------------------------------------------


async def test_master_killed_failover_and_old_master_returning(
    tmp_path: Path,
    sentinels: SentinelGroup,
    postgres_clean: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with upstream() as upstream_url:
        setup = await set_up(tmp_path, upstream_url, postgres_clean, sentinels)
        async with instances(setup.config) as (a, b), aiohttp.ClientSession() as client:
            heard = listen(monkeypatch, b)
            cookies = await sessions_before(client, a, b, setup.alice)
            await replicated(sentinels, 2)
            old_port = await asyncio.to_thread(sentinels.master_port)
            old = sentinels.server(old_port)

            # 1. SIGKILL the master; ask both instances all along the failover.
            async with probing(client, {"A": a, "B": b}, cookies) as answers:
                await asyncio.sleep(0.3)
                killed = time.monotonic()
                await asyncio.to_thread(old.stop, kill=True)
                new = await asyncio.to_thread(
                    sentinels.wait_for_new_master, old_port, FAILOVER_WAIT
                )
                promoted = time.monotonic()
                # 2. Both serve the old session again, by themselves (a 200 from after
                # any cache entry made before the kill had ended).
                since = max(promoted, killed + CACHE_TTL)
                back = await until(
                    lambda: serving_again(answers, since),
                    "both instances serving the session again",
                    RECOVERY,
                )
                await until(lambda: both_ready(client, a, b), "readiness back on both", RECOVERY)
                await asyncio.sleep(0.2)
            check_fail_closed(answers, "failover")
            refused = [x for x in answers if x.kind == "valid" and x.status == 503]
            assert refused, "the probes never saw the outage: nothing was tested"
            assert all(killed <= x.at <= back for x in refused)
            assert any(m == RESYNC and t > killed for t, m in heard), "B never resynced"
            no_errors_logged(caplog)

            # 3. Revocations made on A after the failover reach B.
            after_failover = await trials(client, a, b, setup.alice, setup.bob, heard)

            # 4. The old master comes back, empty and as a master; the Sentinels make it
            # a replica of the new one. Nothing passes meanwhile; revocations still reach B.
            async with probing(client, {"A": a, "B": b}, cookies) as returning:
                restarted = time.monotonic()
                await asyncio.to_thread(old.start)
                await asyncio.to_thread(sentinels.wait_until_replica, old, new.port, DEMOTION_WAIT)
                demoted = time.monotonic()
                await asyncio.sleep(0.3)
            check_fail_closed(returning, "old master returning")
            assert await asyncio.to_thread(sentinels.master_port) == new.port
            after_return = await trials_then_still_serving(
                client, a, b, setup, heard, cookies["valid"], caplog
            )
            report(
                "SIGKILL failover",
                promoted=f"{promoted - killed:.2f} s",
                both_serving_again=f"{back - killed:.2f} s after the kill",
                refused=f"{len(refused)} of {sum(x.kind == 'valid' for x in answers)}",
                revocation_after_failover=_ms(after_failover),
                old_master_demoted=f"{demoted - restarted:.2f} s after its restart",
                refused_meanwhile=str(sum(x.status == 503 for x in returning)),
                revocation_after_its_return=_ms(after_return),
            )


async def test_coordinated_failover_demoting_a_live_master(
    tmp_path: Path,
    sentinels: SentinelGroup,
    postgres_clean: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`SENTINEL FAILOVER`: the old master is alive and becomes a replica; B's
    subscription (on it until then) must not stay there deaf or stale."""
    async with upstream() as upstream_url:
        setup = await set_up(tmp_path, upstream_url, postgres_clean, sentinels)
        async with instances(setup.config) as (a, b), aiohttp.ClientSession() as client:
            heard = listen(monkeypatch, b)
            cookies = await sessions_before(client, a, b, setup.alice)
            await replicated(sentinels, 2)
            old_port = await asyncio.to_thread(sentinels.master_port)

            async with probing(client, {"A": a, "B": b}, cookies) as answers:
                started = time.monotonic()
                await asyncio.to_thread(
                    redis_cli, sentinels.sentinel_ports[0], "sentinel", "failover", "authgate"
                )
                new = await asyncio.to_thread(
                    sentinels.wait_for_new_master, old_port, FAILOVER_WAIT
                )
                await asyncio.to_thread(
                    sentinels.wait_until_replica,
                    sentinels.server(old_port),
                    new.port,
                    DEMOTION_WAIT,
                )
                done = time.monotonic()
                await until(
                    lambda: serving_again(answers, done),
                    "both instances serving the session",
                    RECOVERY,
                )
            check_fail_closed(answers, "coordinated failover")
            no_errors_logged(caplog)
            # The demotion closed the subscriptions on the old master (Sentinel's CLIENT
            # KILL): B's reopened on the new master and told B to resync. (A revocation
            # sent in the 0.2 s before that is lost, and covered by the resync.)
            await until(
                lambda: any(m == RESYNC and t >= started for t, m in heard),
                "B resubscribing after the demotion",
                RECOVERY,
            )
            left = await asyncio.to_thread(subscribers, old_port)
            assert left == [], f"subscriptions left on the demoted master: {left}"

            after = await trials_then_still_serving(
                client, a, b, setup, heard, cookies["valid"], caplog
            )
            report(
                "SENTINEL FAILOVER",
                old_master_demoted=f"{done - started:.2f} s after the command",
                refused=str(sum(x.status == 503 for x in answers)),
                revocation_afterwards=_ms(after),
            )


async def test_a_logout_between_the_switch_and_the_old_masters_demotion_sticks(
    tmp_path: Path,
    sentinels: SentinelGroup,
    postgres_clean: str,
) -> None:
    """After `SENTINEL FAILOVER`, once every Sentinel names the new master (each has
    announced +switch-master), the old one stays a master until the Sentinels demote it:
    about 9 s later with Sentinel's default timers (4 x its publish period, checked at
    its next INFO), about 1 s here. Then it replicates the new master and drops what it
    was sent meanwhile. The instances' pooled connections still lead to it (redis-py
    asks the Sentinels only when it opens a connection), so that is where a logout goes.
    A logout that the gateway answered as done must stay done: the session must not
    come back on any instance."""
    async with upstream() as upstream_url:
        setup = await set_up(tmp_path, upstream_url, postgres_clean, sentinels)
        async with instances(setup.config) as (a, b), aiohttp.ClientSession() as client:
            cookie = await new_session(a, setup.alice)
            for server in (a, b):
                assert await status(client, base_url(server), cookie) == 200
            await replicated(sentinels, 2)
            old_port = await asyncio.to_thread(sentinels.master_port)

            await asyncio.to_thread(
                redis_cli, sentinels.sentinel_ports[0], "sentinel", "failover", "authgate"
            )
            new = await asyncio.to_thread(sentinels.wait_for_new_master, old_port, FAILOVER_WAIT)
            await logout(client, base_url(a), cookie)  # answered 200: "you are signed out"
            role = await asyncio.to_thread(redis_cli, old_port, "role")
            assert role.split()[0] == "master", "premise: the logout came before the demotion"
            for server in (a, b):
                assert await status(client, base_url(server), cookie) == 401

            await asyncio.to_thread(
                sentinels.wait_until_replica, sentinels.server(old_port), new.port, DEMOTION_WAIT
            )
            await asyncio.sleep(BOUND)
            on_new_master = await asyncio.to_thread(
                redis_cli, new.port, "exists", f"authgate:s:{hash_session_id(cookie)}"
            )
            answers = {
                name: await status(client, base_url(server), cookie)
                for name, server in (("A", a), ("B", b))
            }
            assert answers == {"A": 401, "B": 401}, (
                f"the session logged out {answers} is back after the old master's demotion"
                f" (still on the new master: EXISTS = {on_new_master.strip()})"
            )


def report(title: str, **figures: str) -> None:
    """Printed with -s: what a run measured (no assertion rests on timings)."""
    print(f"\n{title}: " + "; ".join(f"{k.replace('_', ' ')} {v}" for k, v in figures.items()))


def _ms(latencies: list[float]) -> str:
    return "/".join(f"{s * 1000:.0f} ms" for s in latencies)
