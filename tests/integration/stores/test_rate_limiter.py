"""RateLimiter contract, on SQLite, PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import math
import time

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
