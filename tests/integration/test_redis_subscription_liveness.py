"""A subscription that goes silent (a partition: nothing closed, nothing delivered) is
noticed by its ping going unanswered, opened again, and the subscriber told to resync;
without that, revocations would be missed for as long as the kernel retransmits."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator

import pytest

import gateway.stores.redis as redis_stores
from gateway.stores.base import RESYNC
from gateway.stores.redis import RedisEventBus, RedisHandle, open_redis
from tests.integration.servers import RedisCluster, start_cluster
from tests.integration.silent_relay import SilentRelay

pytestmark = pytest.mark.redis

SHARED_REDIS = ("127.0.0.1", 6379)


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    servers = start_cluster()
    yield servers
    servers.stop()


@pytest.fixture(autouse=True)
def quick_liveness(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_stores, "LIVENESS_INTERVAL", 0.3)
    monkeypatch.setattr(redis_stores, "LIVENESS_TIMEOUT", 0.5)


@pytest.fixture(params=["standalone", "cluster"])
async def through_relay(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[SilentRelay, RedisHandle, RedisHandle]]:
    """A relay, a handle whose subscriptions pass through it, and a direct handle."""
    if request.param == "standalone":
        host, port = SHARED_REDIS
        direct_url = f"redis://{host}:{port}/0"
        relayed_url = "redis://127.0.0.1:{}/0"
    else:
        nodes: RedisCluster = request.getfixturevalue("cluster")
        host, port = "127.0.0.1", nodes.nodes[0].port
        direct_url = nodes.url
        relayed_url = "redis+cluster://127.0.0.1:{}"
    relay = SilentRelay(host, port)
    relayed = open_redis(relayed_url.format(await relay.start()))
    direct = open_redis(direct_url)
    assert await direct.ping()
    yield relay, relayed, direct
    await relayed.close()
    await direct.close()
    await relay.close()


async def test_a_silent_subscription_is_reopened_and_resynced(
    through_relay: tuple[SilentRelay, RedisHandle, RedisHandle],
) -> None:
    relay, relayed, direct = through_relay
    prefix = f"t{secrets.token_hex(4)}:"
    got: asyncio.Queue[str] = asyncio.Queue()

    async def received(message: str) -> None:
        await got.put(message)

    bus = RedisEventBus(relayed.client, prefix, new_pubsub=relayed.pubsub)
    subscription = await bus.subscribe("revocations", received)
    publisher = RedisEventBus(direct.client, prefix)
    try:
        await publisher.publish("revocations", "session:before")
        assert await asyncio.wait_for(got.get(), 5) == "session:before"
        # Kept alive by pings while quiet: no reconnection, nothing delivered.
        await asyncio.sleep(1.5)
        assert relay.connections == 1 and got.empty()

        relay.silence()
        await publisher.publish("revocations", "session:lost")  # swallowed by the partition
        # Noticed within LIVENESS_INTERVAL + LIVENESS_TIMEOUT (0.8 s here), then resynced.
        assert await asyncio.wait_for(got.get(), 5) == RESYNC
        assert relay.connections == 2

        await publisher.publish("revocations", "session:after")
        assert await asyncio.wait_for(got.get(), 5) == "session:after"
    finally:
        await subscription.close()
