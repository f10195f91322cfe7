"""Regulator on a real SQLite rate limiter with an injected clock (no sleeping)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.config.model import GeoipConfig, RegulationConfig
from gateway.geo import Response, SignInPlace, judge_sign_in
from gateway.regulation import Regulator
from gateway.stores.sql import SqlRateLimiter
from gateway.stores.sqlite import open_sqlite
from geoip import Location

CONFIG = RegulationConfig(max_retries=3, find_time=120.0, ban_time=300.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def regulator(tmp_path: Path) -> AsyncIterator[tuple[Regulator, Clock]]:
    db = await open_sqlite(tmp_path / "r.db")
    clock = Clock()
    yield Regulator(SqlRateLimiter(db, clock), CONFIG, now=clock), clock
    await db.close()


async def fail(regulator: Regulator, username: str, ip: str) -> bool:
    """One wrong attempt; True when it was allowed to be checked."""
    attempt = await regulator.attempt("acme", username, ip)
    if attempt.allowed:
        await regulator.failed("acme", username, ip, attempt)
    return attempt.allowed


async def test_the_fourth_attempt_is_refused_without_a_check_and_says_when_to_retry(
    regulator: tuple[Regulator, Clock],
) -> None:
    reg, clock = regulator
    assert [await fail(reg, "alice", f"192.0.2.{i}") for i in range(5)] == [True] * 3 + [False] * 2
    clock.now += 100
    refused = await reg.attempt("acme", "Alice", "198.51.100.1")  # case does not matter
    assert refused.banned and refused.retry_after == 200


async def test_a_ban_ends_after_ban_time_and_the_count_starts_afresh(
    regulator: tuple[Regulator, Clock],
) -> None:
    reg, clock = regulator
    for i in range(3):
        await fail(reg, "alice", f"192.0.2.{i}")
    clock.now += CONFIG.ban_time + 1
    assert [await fail(reg, "alice", f"192.0.2.{i + 10}") for i in range(4)] == [True] * 3 + [False]


async def test_an_address_with_many_failures_is_banned_for_every_username(
    regulator: tuple[Regulator, Clock],
) -> None:
    reg, _ = regulator
    for name in ("a", "b", "c"):
        assert await fail(reg, name, "203.0.113.1")
    assert (await reg.attempt("acme", "d", "203.0.113.1")).banned
    assert (await reg.attempt("acme", "d", "203.0.113.2")).allowed


async def test_a_success_clears_the_users_count(regulator: tuple[Regulator, Clock]) -> None:
    reg, _ = regulator
    for i in range(2):
        await fail(reg, "alice", f"192.0.2.{i}")
    await reg.succeeded("acme", "alice")
    assert [await fail(reg, "alice", f"192.0.2.{i + 5}") for i in range(3)] == [True] * 3


async def test_operators_list_and_lift_bans(regulator: tuple[Regulator, Clock]) -> None:
    reg, _ = regulator
    for i in range(3):
        await fail(reg, "alice", f"192.0.2.{i}")
    assert [b.key for b in await reg.list_bans()] == ["user:acme:alice"]
    assert await reg.clear("user:acme:alice")
    assert await reg.list_bans() == []
    assert (await reg.attempt("acme", "alice", "192.0.2.9")).allowed


LONDON = Location(country="GB", latitude=51.5, longitude=-0.12, accuracy_km=20)
TOKYO = Location(country="JP", latitude=35.7, longitude=139.7, accuracy_km=50)


def test_london_to_tokyo_in_ten_minutes_is_impossible_and_the_stricter_response_wins() -> None:
    config = GeoipConfig(on_impossible_travel="step_up", on_new_country="deny")
    verdict = judge_sign_in(
        config,
        SignInPlace(0.0, "2.16.37.1", LONDON),
        SignInPlace(600.0, "1.1.64.1", TOKYO),
        frozenset({"GB"}),
    )
    assert verdict.impossible_travel and verdict.new_country
    assert verdict.response is Response.DENY


def test_the_first_sign_in_sets_the_baseline_and_raises_nothing() -> None:
    verdict = judge_sign_in(GeoipConfig(), None, SignInPlace(0.0, None, TOKYO), frozenset())
    assert verdict.response is Response.ALLOW
    assert not verdict.impossible_travel and not verdict.new_country


def test_a_day_later_tokyo_is_only_a_new_country() -> None:
    verdict = judge_sign_in(
        GeoipConfig(on_new_country="notify"),
        SignInPlace(0.0, None, LONDON),
        SignInPlace(86400.0, None, TOKYO),
        frozenset({"GB"}),
    )
    assert not verdict.impossible_travel and verdict.new_country
    assert verdict.response is Response.NOTIFY


async def test_a_store_that_cannot_reset_the_count_does_not_undo_a_correct_sign_in(
    tmp_path: Path,
) -> None:
    # The factor was right and the session may already be rotated: failing here would
    # leave the person with no session at all. The count stays (the strict side).
    from gateway.errors import StoreUnavailable

    db = await open_sqlite(tmp_path / "r.db")
    regulator = Regulator(SqlRateLimiter(db, Clock()), CONFIG, now=Clock())
    await db.close()  # every store call now fails
    with pytest.raises(StoreUnavailable):
        await regulator.attempt("acme", "alice", "192.0.2.1")  # checking still fails closed
    await regulator.succeeded("acme", "alice")  # resetting does not raise


async def test_no_more_guesses_from_one_ip_are_checked_than_the_limit_however_many_at_once(
    regulator: tuple[Regulator, Clock],
) -> None:
    # Password spraying: one address, many usernames, all in flight together. Only
    # max_retries of them may reach the password check.
    reg, _ = regulator
    attempts = await asyncio.gather(
        *(reg.attempt("acme", f"user{i}", "198.51.100.9") for i in range(40))
    )
    assert sum(a.allowed for a in attempts) == CONFIG.max_retries
    assert not (await reg.attempt("acme", "another", "198.51.100.9")).allowed


async def test_right_passwords_from_one_address_never_ban_it(
    regulator: tuple[Regulator, Clock],
) -> None:
    # Many people behind one NAT signing in correctly: each gives its count back.
    reg, _ = regulator
    for i in range(4 * CONFIG.max_retries):
        attempt = await reg.attempt("acme", f"person{i}", "203.0.113.4")
        assert attempt.allowed, i
        await reg.succeeded("acme", f"person{i}", attempt=attempt)
    assert await fail(reg, "someone", "203.0.113.4")  # and a wrong one still counts
