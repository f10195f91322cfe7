"""SharedClock: the store's time line, read as an offset from this host's clock."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from gateway.clock import LOUD_OFFSET, MAX_ROUND_TRIP, SharedClock


class FakeHost:
    """A host's wall clock (`t`, which NTP may step) and monotonic clock (`ticks`)."""

    def __init__(self, local: float, store_ahead: float, round_trip: float = 0.002) -> None:
        self.t = local
        self.ticks = 5000.0
        self.store_ahead = store_ahead
        self.round_trip = round_trip

    def local(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return self.ticks

    def advance(self, seconds: float) -> None:
        self.t += seconds
        self.ticks += seconds

    def pause(self, seconds: float) -> None:
        """A paused VM: the wall clock (set right by the hypervisor or NTP on waking)
        and the store's go on; this host's steady clock stood still."""
        self.t += seconds

    def step(self, seconds: float) -> None:
        """NTP steps the wall clock; the store's clock and the monotonic one go on."""
        self.t += seconds
        self.store_ahead -= seconds

    async def store_time(self) -> float:
        self.advance(self.round_trip / 2)
        answer = self.t + self.store_ahead
        self.advance(self.round_trip / 2)
        return answer

    def clock(self, reference: str = "redis", **kwargs: Any) -> SharedClock:
        return SharedClock(
            self.store_time, reference, local=self.local, monotonic=self.monotonic, **kwargs
        )


async def test_now_follows_the_store_clock() -> None:
    host = FakeHost(1_000_000.0, store_ahead=-90.0)  # this host is 90 s ahead of the store
    seen: list[tuple[str, float]] = []
    clock = SharedClock(
        None,
        "local",
        local=host.local,
        monotonic=host.monotonic,
        on_offset=lambda r, o: seen.append((r, o)),
    )
    clock.attach(host.store_time, "redis")
    assert not await clock.ready()  # not read yet: not ready
    await clock.sample()
    assert clock.offset == pytest.approx(-90.0, abs=1e-6)
    assert clock.now() == pytest.approx(host.t - 90.0, abs=1e-6)
    assert seen == [("redis", pytest.approx(-90.0, abs=1e-6))]


async def test_far_off_is_said_loudly(caplog: pytest.LogCaptureFixture) -> None:
    host = FakeHost(1_000_000.0, store_ahead=LOUD_OFFSET + 5)
    clock = host.clock("postgresql")
    with caplog.at_level(logging.WARNING, "authgate.clock"):
        await clock.sample()
    assert [r.levelno for r in caplog.records] == [logging.ERROR]
    assert "-35.0 s off the postgresql server's" in caplog.text
    assert await clock.ready()  # on the store's time line it agrees with the others
    caplog.clear()
    host.store_ahead = 2.0
    with caplog.at_level(logging.WARNING, "authgate.clock"):
        await clock.sample()
    assert "check NTP" in caplog.text


async def test_a_slow_reading_keeps_the_previous_offset() -> None:
    host = FakeHost(1_000_000.0, store_ahead=2.0)
    clock = host.clock()
    await clock.sample()
    host.store_ahead, host.round_trip = 50.0, MAX_ROUND_TRIP * 3
    await clock.sample()
    assert clock.offset == pytest.approx(2.0, abs=1e-6)
    assert await clock.ready()


async def test_without_a_store_clock_the_local_one_serves() -> None:
    clock = SharedClock(None, "local", local=lambda: 42.0)
    assert await clock.sample() == 0.0
    assert clock.now() == 42.0
    assert await clock.ready()


async def test_a_step_of_this_hosts_wall_clock_moves_nothing_shared() -> None:
    # NTP steps the wall clock an hour, either way (a host that booted with a bad RTC):
    # shared time goes on from the last reading, and the next reading shows the step in
    # the offset without moving what now() says. No time in the future is stamped.
    host = FakeHost(1_000_000.0, store_ahead=0.5)
    clock = host.clock()
    await clock.sample()
    host.advance(10.0)
    before = clock.now()
    host.step(3600.0)
    assert clock.now() == pytest.approx(before, abs=1e-6)
    host.step(-7200.0)
    assert clock.now() == pytest.approx(before, abs=1e-6)
    host.advance(5.0)
    assert clock.now() == pytest.approx(before + 5.0, abs=1e-6)
    await clock.sample()
    assert clock.offset == pytest.approx(0.5 + 3600.0, abs=1e-6)
    assert clock.now() == pytest.approx(host.t + host.store_ahead, abs=1e-6)


@pytest.mark.parametrize("jump", ["step", "pause"])
async def test_a_jump_of_either_clock_has_the_store_read_again_at_once(jump: str) -> None:
    # Between readings, now() follows the steady clock. When the wall clock and the
    # steady one part (a step of the wall clock, or a pause that stopped the steady one),
    # one of them is wrong and only the store can say which: it is read at once, not at
    # the next minute.
    host = FakeHost(1_000_000.0, store_ahead=0.5)
    clock = host.clock()
    await clock.sample()
    following = asyncio.ensure_future(clock.follow())
    try:
        await asyncio.sleep(0)
        getattr(host, jump)(3600.0)
        truth = host.t + host.store_ahead
        clock.now()  # a request notices
        for _ in range(100):
            if clock.now() == pytest.approx(truth, abs=0.1):
                break
            await asyncio.sleep(0.01)
        assert clock.now() == pytest.approx(truth, abs=0.1)
    finally:
        following.cancel()


async def test_while_the_store_cannot_be_read_after_a_jump_it_is_asked_once_a_second() -> None:
    # Every request sees the disagreement again until a reading ends it: the store is
    # asked about once a second, not on every request, and once it answers, now() is
    # right again.
    host = FakeHost(1_000_000.0, store_ahead=0.5)
    asked = 0
    down = True

    async def store() -> float:
        nonlocal asked
        asked += 1
        if down:
            raise ConnectionError("down")
        return await host.store_time()

    clock = SharedClock(store, "redis", local=host.local, monotonic=host.monotonic)
    down = False
    await clock.sample()
    asked, down = 0, True
    host.pause(3600.0)
    following = asyncio.ensure_future(clock.follow())
    try:
        for _ in range(150):  # 1.5 s of requests
            clock.now()
            await asyncio.sleep(0.01)
        assert 1 <= asked <= 3
        down = False
        for _ in range(200):
            if clock.now() == pytest.approx(host.t + host.store_ahead, abs=0.1):
                break
            await asyncio.sleep(0.01)
        assert clock.now() == pytest.approx(host.t + host.store_ahead, abs=0.1)
    finally:
        following.cancel()
