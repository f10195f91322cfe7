"""A subscription that goes silent (a partition: nothing closed, nothing delivered) is
noticed by its ping going unanswered, opened again, and the subscriber told to resync;
without that, revocations would be missed for as long as the kernel retransmits. And a
live one is not reopened for nothing (each reopen makes every process forget its
cached sessions)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import gateway.stores.redis as redis_stores
from gateway.stores.base import RESYNC
from gateway.stores.redis import RedisEventBus, RedisHandle, open_redis
from tests.integration.relay import Relay
from tests.integration.servers import RedisCluster, start_cluster

pytestmark = pytest.mark.redis

SHARED_REDIS = ("127.0.0.1", 6379)


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    servers = start_cluster()
    yield servers
    servers.stop()


INTERVAL, TIMEOUT = 0.3, 0.5  # LIVENESS_INTERVAL and LIVENESS_TIMEOUT, scaled down


@pytest.fixture(autouse=True)
def quick_liveness(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_stores, "LIVENESS_INTERVAL", INTERVAL)
    monkeypatch.setattr(redis_stores, "LIVENESS_TIMEOUT", TIMEOUT)


@pytest.fixture(params=["standalone", "cluster"])
async def through_relay(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[Relay, RedisHandle, RedisHandle]]:
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
    relay = Relay((host, port))
    relayed = open_redis(relayed_url.format(relay.start()))
    direct = open_redis(direct_url)
    assert await direct.ping()
    yield relay, relayed, direct
    await relayed.close()
    await direct.close()
    relay.stop()


async def test_a_silent_subscription_is_reopened_and_resynced(
    through_relay: tuple[Relay, RedisHandle, RedisHandle],
) -> None:
    relay, relayed, direct = through_relay
    prefix = f"t{secrets.token_hex(4)}:"
    got: list[str] = []

    async def received(message: str) -> None:
        got.append(message)

    async def until_received(message: str) -> None:
        # SUBSCRIBE is sent, not confirmed, when subscribe() returns: publish until
        # the subscription is in place (at most 5 s).
        publisher = RedisEventBus(direct.client, prefix)
        for _ in range(50):
            await publisher.publish("revocations", message)
            await asyncio.sleep(0.1)
            if message in got:
                return
        raise AssertionError(f"{message} never arrived; got {got}")

    bus = RedisEventBus(relayed.client, prefix, new_pubsub=relayed.pubsub)
    subscription = await bus.subscribe("revocations", received)
    try:
        await until_received("session:before")
        # Kept alive by pings while quiet: no reconnection, no resync.
        await asyncio.sleep(1.5)
        assert relay.connections == 1 and RESYNC not in got

        relay.silence()
        await RedisEventBus(direct.client, prefix).publish("revocations", "session:lost")
        # Noticed within LIVENESS_INTERVAL + LIVENESS_TIMEOUT (0.8 s here), then resynced.
        for _ in range(50):
            if RESYNC in got:
                break
            await asyncio.sleep(0.1)
        assert RESYNC in got and "session:lost" not in got
        assert relay.connections == 2

        await until_received("session:after")
    finally:
        await subscription.close()


async def test_a_pong_that_arrived_during_an_event_loop_stall_does_not_reopen_it() -> None:
    """The ping is answered (50 ms round trip), but another callback holds the event
    loop for longer than LIVENESS_TIMEOUT right after it (a GC pause, a large synchronous
    load). When the loop runs again the pong waits on the socket while the read's timer
    has already fired: the subscription must look again before it calls itself dead."""
    relay = Relay(SHARED_REDIS, delay=0.05)
    handle = open_redis(f"redis://127.0.0.1:{relay.start()}/0")
    assert await handle.ping()
    loop = asyncio.get_running_loop()
    opened: list[Any] = []
    stalls: list[float] = []

    def new_pubsub() -> Any:
        pubsub = handle.pubsub()
        real_ping = pubsub.ping

        async def ping(message: str | None = None) -> Any:
            result = await real_ping(message)
            if not stalls:  # one stall, by some other callback, just after the first ping
                stalls.append(loop.time())
                loop.call_soon(time.sleep, TIMEOUT + 0.3)
            return result

        pubsub.ping = ping
        opened.append(pubsub)
        return pubsub

    got: list[str] = []

    async def received(message: str) -> None:
        got.append(message)

    bus = RedisEventBus(handle.client, f"t{secrets.token_hex(4)}:", new_pubsub=new_pubsub)
    subscription = await bus.subscribe("revocations", received)
    try:
        await asyncio.sleep(INTERVAL + 1.0 + TIMEOUT + 2.0)
        assert stalls, "the subscription was never pinged"
    finally:
        await subscription.close()
        await handle.close()
        relay.stop()
    assert RESYNC not in got and len(opened) == 1, (
        f"{len(opened) - 1} reopen(s) of a live subscription, got {got}"
    )
