"""The store's clock (gateway.clock) read through a real Redis: a reading too slow to
trust at start leaves the instance unready, and only until the store answers promptly."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from gateway.clock import MAX_ROUND_TRIP, SharedClock
from gateway.stores import redis_source
from gateway.stores.redis import connect
from tests.integration.relay import Relay
from tests.integration.servers import start_redis

pytestmark = pytest.mark.redis


@pytest.fixture
def slow_redis() -> Iterator[Relay]:
    """A Redis of its own behind a relay (whose replies the test makes too slow to trust)."""
    server = start_redis()
    relay = Relay(("127.0.0.1", server.port))
    relay.start()
    try:
        yield relay
    finally:
        relay.stop()
        server.stop()


async def test_a_slow_first_reading_is_tried_again_within_seconds(
    slow_redis: Relay,
) -> None:
    # The first reading's round trip was over MAX_ROUND_TRIP (a Redis busy while the
    # fleet restarts): the instance was unready, and stamped shared state with its own
    # unmeasured clock, for a whole SAMPLE_INTERVAL (a minute) after Redis was quick again.
    relay = slow_redis
    client = connect(f"redis://127.0.0.1:{relay.port}/0")
    clock = SharedClock(redis_source(client), "redis")
    follower: asyncio.Task[None] | None = None
    try:
        # Connected first: the handshake's round trips, each as slow, would outlast the
        # store's deadline; what is slow here is the reading itself.
        assert await client.ping()
        relay.set_delay(MAX_ROUND_TRIP + 0.2)
        await clock.sample()
        assert not await clock.ready(), "a reading too slow to trust was taken"
        relay.set_delay(0.0)
        follower = asyncio.ensure_future(clock.follow())
        deadline = time.monotonic() + 5
        while not await clock.ready():
            assert time.monotonic() < deadline, "still unready 5 s after Redis answers promptly"
            await asyncio.sleep(0.1)
        assert abs(clock.offset) < 1.0  # one host: the two clocks are the same
    finally:
        if follower is not None:
            follower.cancel()
            with pytest.raises(asyncio.CancelledError):
                await follower
        await client.aclose()
