"""RateLimiter contract, on SQLite, PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import math
import time

from gateway.config.model import RegulationConfig
from gateway.regulation import Regulator
from tests.integration.stores.conftest import Backend

WINDOW = 3600.0  # long enough that a test never straddles two windows in practice


async def test_hits_count_up_within_a_window(backend: Backend) -> None:
    limiter = backend.limiter()
    assert [await limiter.hit("user:alice", WINDOW) for _ in range(3)] == [1, 2, 3]
    assert await limiter.hit("user:bob", WINDOW) == 1


async def test_fifty_concurrent_hits_count_exactly_fifty(backend: Backend) -> None:
    limiter = backend.limiter()
    counts = await asyncio.gather(*(limiter.hit("ip:192.0.2.1", WINDOW) for _ in range(50)))
    assert sorted(counts) == list(range(1, 51))
    assert await limiter.hit("ip:192.0.2.1", WINDOW) == 51


async def test_a_new_window_starts_from_one(backend: Backend) -> None:
    # Near the real time: Redis expires counters by its own clock.
    now = [math.floor(time.time() / 60) * 60 + 1.0]
    limiter = backend.limiter(clock=lambda: now[0])
    assert await limiter.hit("k", 60) == 1
    assert await limiter.hit("k", 60) == 2
    now[0] += 60
    assert await limiter.hit("k", 60) == 1


async def test_ban_holds_until_its_end_and_is_listed(backend: Backend) -> None:
    limiter = backend.limiter()
    until = await limiter.ban("user:alice", 300)
    assert await limiter.banned_until("user:alice") == until
    assert await limiter.banned_until("user:bob") is None
    assert [(b.key, b.until) for b in await limiter.list_bans()] == [("user:alice", until)]


async def test_clear_forgets_counts_and_ban(backend: Backend) -> None:
    limiter = backend.limiter()
    await limiter.hit("user:alice", WINDOW)
    await limiter.hit("user:alice", WINDOW)
    await limiter.ban("user:alice", 300)
    await limiter.clear("user:alice")
    assert await limiter.banned_until("user:alice") is None
    assert await limiter.hit("user:alice", WINDOW) == 1
    assert await limiter.list_bans() == []


async def test_release_gives_back_one_hit_and_never_goes_below_zero(backend: Backend) -> None:
    limiter = backend.limiter()
    key = f"release-{backend.name}"
    assert await limiter.hit(key, 60) == 1
    assert await limiter.hit(key, 60) == 2
    await limiter.release(key, 60)
    assert await limiter.hit(key, 60) == 2
    for _ in range(5):
        await limiter.release(key, 60)
    assert await limiter.hit(key, 60) == 1
    await limiter.release("never-hit", 60)  # nothing to give back: no error


# --- clocks that disagree (issue #8) ----------------------------------------------


async def test_hits_from_a_clock_behind_the_stores_still_count(backend: Backend) -> None:
    # A host 90 s behind Redis once gave the counter a moment to expire that Redis had
    # already passed: every hit deleted its own count, and guessing was unlimited.
    limiter = backend.limiter(clock=lambda: time.time() - 90)
    assert [await limiter.hit("user:alice", 60) for _ in range(3)] == [1, 2, 3]


async def test_hits_alternating_between_two_windows_never_start_again(backend: Backend) -> None:
    # Two instances whose clocks fall in different windows (near a window's edge, or one
    # far off): a hit from the one behind must not start the other's count again.
    start = math.floor(time.time() / 60) * 60 + 1.0
    ahead = backend.limiter(clock=lambda: start)
    behind = backend.limiter(clock=lambda: start - 60)
    counts = [await limiter.hit("user:alice", 60) for limiter in (ahead, behind) * 3]
    if backend.client is not None:
        assert counts == [1, 1, 2, 2, 3, 3]  # Redis: one counter per window, both kept
    else:
        assert counts == [1, 2, 3, 4, 5, 6]  # SQL: one row, its window only moves forward
    await behind.release("user:alice", 60)  # given back in the window it was counted in
    assert await ahead.hit("user:alice", 60) == (4 if backend.client is not None else 6)


async def test_a_redis_ban_lasts_its_time_on_redis_clock(backend: Backend) -> None:
    if backend.client is None:
        return  # SQL compares with the shared clock (gateway.clock), which all agree on
    behind = backend.limiter(clock=lambda: time.time() - 600)
    ahead = backend.limiter(clock=lambda: time.time() + 600)
    await behind.ban("user:alice", 300)
    assert await ahead.banned_until("user:alice") is not None
    assert 290_000 < await backend.client.pttl(f"{backend.prefix}ban:{{user:alice}}") <= 300_000


# --- counts given back (gateway.regulation) ------------------------------------------


async def test_a_count_is_never_given_back_in_a_later_window(backend: Backend) -> None:
    # Sign-ins counted just before a window ends whose password could not be checked
    # (the user store timed out) gave their counts back in the next window, out of the
    # guesses made there: each in flight at the edge was one more checked guess.
    window = 60.0
    now = [math.floor(time.time() / window) * window + window - 0.5]  # 0.5 s before the end
    limiter = backend.limiter(clock=lambda: now[0])
    regulator = Regulator(
        limiter,
        RegulationConfig(max_retries=3, find_time=window, ban_time=300.0),
        now=lambda: now[0],
    )
    in_flight = [await regulator.attempt("acme", "alice", None) for _ in range(2)]
    assert all(a.allowed for a in in_flight)
    now[0] += 1.0  # the next window: the attacker's guesses there
    guesses = []
    for _ in range(2):
        attempt = await regulator.attempt("acme", "alice", None)
        guesses.append(attempt.allowed)
        await regulator.failed("acme", "alice", None, attempt)
    for attempt in in_flight:  # the user store's timeouts come back now
        await regulator.unchecked(attempt)
    while (attempt := await regulator.attempt("acme", "alice", None)).allowed:
        guesses.append(True)
        await regulator.failed("acme", "alice", None, attempt)
    assert len(guesses) == 3, f"{len(guesses)} guesses checked in one window, 3 allowed"
