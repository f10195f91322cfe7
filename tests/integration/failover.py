"""What the failover tests share (test_sentinel_failover.py, test_cluster_failover.py):
two gateway instances with the full extensions on PostgreSQL and a Redis deployment
that fails over, probed all along, and revocations made on A that B must hear.

- `probing` asks both instances, over and over, with every cookie and for liveness;
  `check_fail_closed` says what each answer may be.
- `revocation_reaches_b` revokes on A and requires B to refuse within BOUND and to
  have heard the message on its subscription; `trials` does that for a logout and a
  "log out everywhere".
- `two_gateways` starts the upstream, both instances (users alice and bob) and a
  client, and `listen`s to what B's SessionManager hears on its subscription.
- `kill_and_recover` probes both instances while a master is killed and replaced,
  until both serve the valid session again; `while_probed` runs any other change
  (an old master coming back) under the same probes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, NamedTuple, TypeVar

import aiohttp
import pytest

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
from gateway.stores.ids import hash_session_id, new_session_id
from tests.polling import until

CACHE_TTL = 1.0
SLACK = 0.5  # a reconnection's round trips and one request on a loaded CI machine
BOUND = CACHE_TTL + SLACK  # how late B may refuse a session revoked on A (docs/scaling.md)
RECOVERY = 5.0  # after the deployment has a new master, both instances serve again
GIVE_UP = 10.0  # B still serving a revoked session after this: the trial stops
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=15)  # never reached by a live instance
NO_ANSWER = -1  # the status noted for a request that got no HTTP answer at all

T = TypeVar("T")


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
    kind: str  # "valid", "revoked", "unknown", "health"; or qualified: "valid elsewhere"
    status: int
    took: float = 0.0  # seconds between the request and its answer

    @property
    def asked(self) -> float:
        return self.at - self.took


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
    while the block runs; the answers, in order. Each instance and cookie has a loop
    of its own, so a request that waits on the store holds up no other probe."""
    answers: list[Answer] = []
    stop = asyncio.Event()

    async def ask(name: str, server: GatewayServer, kind: str, cookie: str | None) -> None:
        base = base_url(server)
        while not stop.is_set():
            asked = time.monotonic()
            code = await answer(client, base, cookie)
            now = time.monotonic()
            answers.append(Answer(now, name, kind, code, now - asked))
            await asyncio.sleep(0.02)

    tasks = [
        asyncio.create_task(ask(name, server, kind, cookie))
        for name, server in servers.items()
        for kind, cookie in [*cookies.items(), ("health", None)]
    ]
    try:
        yield answers
    finally:
        stop.set()
        await asyncio.gather(*tasks)


def check_fail_closed(answers: list[Answer], phase: str) -> None:
    """A valid session: 200 or 503. A revoked or unknown one: 401 or 503, never a pass.
    Never a 500, never silence; liveness always 200 (a store outage kills no one).
    A kind's first word says which ("valid elsewhere" is a valid session)."""
    allowed = {"valid": {200, 503}, "revoked": {401, 503}, "unknown": {401, 503}, "health": {200}}
    wrong = [a for a in answers if a.status not in allowed[a.kind.split()[0]]]
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


def serving_again(answers: list[Answer], since: float) -> bool:
    """Both instances served the valid session at or after `since`."""
    return all(
        any(
            x.instance == name and x.kind == "valid" and x.status == 200 and x.at >= since
            for x in answers
        )
        for name in ("A", "B")
    )


async def both_ready(client: aiohttp.ClientSession, *servers: GatewayServer) -> bool:
    for server in servers:
        async with client.get(base_url(server) + "/.authgate/ready") as resp:
            if resp.status != 200:
                return False
    return True


# --- a master killed, a master coming back -------------------------------------------


@dataclass(frozen=True)
class Outage(Generic[T]):
    """What the probes saw while a master was killed and replaced."""

    answers: list[Answer]
    killed: float  # monotonic, as every time here
    promoted: float  # when the deployment named the new master
    back: float  # when both instances had served the valid session again by themselves
    new: T  # the new master

    @property
    def refused(self) -> list[Answer]:
        return [x for x in self.answers if x.kind == "valid" and x.status == 503]

    @property
    def waited(self) -> float:
        """The longest a request with the valid session asked while the master was
        down waited for its 200 (a client that retries until the new master is up)."""
        during = [
            x.took
            for x in self.answers
            if x.kind == "valid"
            and x.status == 200
            and x.asked < self.promoted
            and x.at > self.killed
        ]
        return max(during, default=0.0)

    def figures(self) -> dict[str, str]:
        valid = sum(x.kind == "valid" for x in self.answers)
        return {
            "promoted": f"{self.promoted - self.killed:.2f} s",
            "both_serving_again": f"{self.back - self.killed:.2f} s after the kill",
            "refused": f"{len(self.refused)} of {valid}",
            "longest_wait_for_a_200": f"{self.waited:.2f} s",
        }


async def kill_and_recover(
    client: aiohttp.ClientSession,
    a: GatewayServer,
    b: GatewayServer,
    cookies: dict[str, str],
    kill: Callable[[], object],
    promotion: Callable[[], T],
) -> Outage[T]:
    """Both instances probed while `kill` (blocking, run in a thread) ends the master
    and `promotion` (likewise) waits for the new one and returns it; then until both
    serve the valid session again by themselves (a 200 from after any cache entry made
    before the kill had ended) and say they are ready. Every answer fails closed, and
    a 503 comes only during the outage."""
    async with probing(client, {"A": a, "B": b}, cookies) as answers:
        await asyncio.sleep(0.3)
        killed = time.monotonic()
        await asyncio.to_thread(kill)
        new = await asyncio.to_thread(promotion)
        promoted = time.monotonic()
        since = max(promoted, killed + CACHE_TTL)
        back = await until(
            lambda: serving_again(answers, since),
            "both instances serving the session again",
            RECOVERY,
        )
        await until(lambda: both_ready(client, a, b), "readiness back on both", RECOVERY)
        await asyncio.sleep(0.2)
    check_fail_closed(answers, "failover")
    outage = Outage(answers, killed, promoted, back, new)
    assert all(killed <= x.at <= back for x in outage.refused)
    return outage


async def while_probed(
    client: aiohttp.ClientSession,
    a: GatewayServer,
    b: GatewayServer,
    cookies: dict[str, str],
    phase: str,
    work: Callable[[], object],
) -> tuple[list[Answer], float]:
    """Both instances probed while `work` runs (blocking, in a thread) and 0.3 s more;
    every answer fails closed. The answers, and how long `work` took."""
    async with probing(client, {"A": a, "B": b}, cookies) as answers:
        started = time.monotonic()
        await asyncio.to_thread(work)
        took = time.monotonic() - started
        await asyncio.sleep(0.3)
    check_fail_closed(answers, phase)
    return answers, took


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


class Gateways(NamedTuple):
    setup: Setup
    a: GatewayServer
    b: GatewayServer
    client: aiohttp.ClientSession
    heard: Heard  # what B's SessionManager hears on its subscription (`listen`)


@asynccontextmanager
async def two_gateways(
    tmp_path: Path, storage: str, session_store: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Gateways]:
    """An upstream; two instances A and B with sessions in `session_store` (cache_ttl
    CACHE_TTL) and users alice and bob; a client; and what B hears."""
    async with upstream() as upstream_url:
        config = build_config(tmp_path, upstream_url, storage, session_store, CACHE_TTL)
        setup = Setup(config, await add_user(config, "alice"), await add_user(config, "bob"))
        async with instances(config) as (a, b), aiohttp.ClientSession() as client:
            yield Gateways(setup, a, b, client, listen(monkeypatch, b))


async def sessions_before(
    client: aiohttp.ClientSession,
    a: GatewayServer,
    b: GatewayServer,
    alice: User,
    valid: str | None = None,
) -> dict[str, str]:
    """A valid session (`valid`, or a new one), a revoked one and an unknown one, as
    both instances see them."""
    valid = valid or await new_session(a, alice)
    revoked = await new_session(a, alice)
    runtime: Any = a.runtime
    await runtime.sessions.revoke(revoked)
    cookies = {"valid": valid, "revoked": revoked, "unknown": new_session_id()}
    for server in (a, b):
        assert await status(client, base_url(server), valid) == 200
        assert await status(client, base_url(server), revoked) == 401
        assert await status(client, base_url(server), cookies["unknown"]) == 401
    return cookies


def report(title: str, **figures: str) -> None:
    """Printed with -s: what a run measured (no assertion rests on timings)."""
    print(f"\n{title}: " + "; ".join(f"{k.replace('_', ' ')} {v}" for k, v in figures.items()))


def milliseconds(latencies: list[float]) -> str:
    return "/".join(f"{s * 1000:.0f} ms" for s in latencies)
