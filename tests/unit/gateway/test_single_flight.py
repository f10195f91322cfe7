"""SingleFlight: one piece of work per key at a time, shared only by callers arriving
within `max_age` of its start (the bound of the cache it fills)."""

from __future__ import annotations

import asyncio

from gateway.single_flight import SingleFlight


class Work:
    """Work that waits at its own gate, then answers with its number."""

    def __init__(self) -> None:
        self.begun: list[asyncio.Event] = []

    def __call__(self) -> asyncio.Future[int]:
        gate = asyncio.Event()
        self.begun.append(gate)
        number = len(self.begun)

        async def run() -> int:
            await gate.wait()
            return number

        return asyncio.ensure_future(run())


async def test_callers_within_max_age_share_one_piece_of_work() -> None:
    clock = [0.0]
    flights: SingleFlight[str, int] = SingleFlight(2.0, lambda: clock[0])
    work = Work()
    first = asyncio.ensure_future(flights.join("k", work))
    await asyncio.sleep(0)  # begun at 0
    clock[0] = 2.0  # exactly the bound: still shared
    second = asyncio.ensure_future(flights.join("k", work))
    await asyncio.sleep(0)
    work.begun[0].set()
    assert await asyncio.gather(first, second) == [1, 1]
    assert len(work.begun) == 1
    assert not flights


async def test_a_caller_after_max_age_begins_afresh_and_later_callers_share_that() -> None:
    clock = [0.0]
    flights: SingleFlight[str, int] = SingleFlight(2.0, lambda: clock[0])
    work = Work()
    old = asyncio.ensure_future(flights.join("k", work))
    await asyncio.sleep(0)
    clock[0] = 2.5  # the first work began longer ago than the bound
    fresh = asyncio.ensure_future(flights.join("k", work))
    await asyncio.sleep(0)
    assert len(work.begun) == 2
    work.begun[0].set()  # the old one ends first...
    assert await old == 1  # ...and answers those who waited for it
    assert len(flights) == 1  # without forgetting the fresh one under way
    clock[0] = 3.0
    also = asyncio.ensure_future(flights.join("k", work))
    work.begun[1].set()
    assert await asyncio.gather(fresh, also) == [2, 2]
    assert len(work.begun) == 2
    assert not flights


async def test_the_bound_counts_from_the_start_not_from_the_last_caller() -> None:
    # A steady stream of callers must not keep a hung piece of work shared forever.
    clock = [0.0]
    flights: SingleFlight[str, int] = SingleFlight(2.0, lambda: clock[0])
    work = Work()
    callers = []
    for at in (0.0, 1.5, 3.0):
        clock[0] = at
        callers.append(asyncio.ensure_future(flights.join("k", work)))
        await asyncio.sleep(0)
    assert len(work.begun) == 2
    assert len(flights) == 2  # both still running: the replaced one is counted too
    for gate in work.begun:
        gate.set()
    assert await asyncio.gather(*callers) == [1, 1, 2]
    assert not flights


async def test_a_bound_of_zero_shares_nothing() -> None:
    clock = [0.0]
    flights: SingleFlight[str, int] = SingleFlight(0.0, lambda: clock[0])
    work = Work()
    first = asyncio.ensure_future(flights.join("k", work))
    await asyncio.sleep(0)
    clock[0] = 0.001
    second = asyncio.ensure_future(flights.join("k", work))
    await asyncio.sleep(0)
    for gate in work.begun:
        gate.set()
    assert await asyncio.gather(first, second) == [1, 2]


async def test_keys_are_apart_and_a_failure_reaches_every_caller() -> None:
    flights: SingleFlight[str, int] = SingleFlight()

    async def broken() -> int:
        await asyncio.sleep(0)
        raise RuntimeError("the store is down")

    callers = [asyncio.ensure_future(flights.join("a", broken)) for _ in range(3)]
    other = Work()
    elsewhere = asyncio.ensure_future(flights.join("b", other))
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    other.begun[0].set()
    assert await elsewhere == 1
    assert not flights
