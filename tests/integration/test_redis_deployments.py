"""The Redis stores on a real Redis Cluster (3 masters) and a real Sentinel setup,
both started here on spare ports: every script touches one slot, and sessions,
counters and revocation events behave as on a single server."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.utils

from gateway.config.model import Config, SessionsConfig
from gateway.stores import breaker, open_stores
from gateway.stores.base import SessionRecord
from gateway.stores.redis import (
    RedisEventBus,
    RedisHandle,
    RedisRateLimiter,
    RedisSessionStore,
    breaker_of,
    open_redis,
)
from tests.integration.servers import (
    RedisCluster,
    RedisSentinel,
    redis_cli,
    start_cluster,
    start_sentinel,
)

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    servers = start_cluster()
    yield servers
    servers.stop()


@pytest.fixture(scope="module")
def sentinel() -> Iterator[RedisSentinel]:
    servers = start_sentinel()
    yield servers
    servers.stop()


@pytest.fixture(params=["cluster", "sentinel"])
async def handle(request: pytest.FixtureRequest) -> AsyncIterator[RedisHandle]:
    deployment: RedisCluster | RedisSentinel = request.getfixturevalue(request.param)
    opened = open_redis(deployment.url)
    # As open_stores does: the first command maps the cluster before concurrent use
    # (redis-py 8.1 can double-send commands raced through an unmapped cluster).
    assert await opened.ping()
    yield opened
    await opened.close()


def _record(user: str = "u1", tenant: str = "acme", ttl: float = 3600) -> SessionRecord:
    now = time.time()
    return SessionRecord(
        id_hash=secrets.token_hex(32),
        tenant=tenant,
        user_id=user,
        amr=("pwd",),
        auth_time=now,
        created=now,
        last_seen=now,
        expires=now + ttl,
        ip="127.0.0.1",
        user_agent="test",
        country=None,
    )


def test_hiredis_parses_replies() -> None:
    assert redis.utils.HIREDIS_AVAILABLE


async def test_sessions_live_rotate_and_die_across_slots(handle: RedisHandle) -> None:
    store = RedisSessionStore(handle.client, f"t{secrets.token_hex(4)}:")
    first, second = _record(), _record()
    await store.create(first)
    await store.create(second)
    assert await store.get(first.id_hash) == first
    assert await store.touch(first.id_hash, first.last_seen + 5, first.expires + 5)
    rotated = _record()
    rotated = dataclasses.replace(rotated, user_id="u1")
    assert await store.rotate(first.id_hash, rotated)
    assert await store.get(first.id_hash) is None
    assert not await store.rotate(first.id_hash, _record()), "a gone session cannot rotate"
    listed = {r.id_hash for r in await store.list_user("acme", "u1")}
    assert listed == {second.id_hash, rotated.id_hash}
    assert await store.revoke_user("acme", "u1") == 2
    assert await store.get(second.id_hash) is None
    assert await store.get(rotated.id_hash) is None
    assert await store.list("acme") == []


async def test_sessions_expire_by_ttl(handle: RedisHandle) -> None:
    prefix = f"t{secrets.token_hex(4)}:"
    store = RedisSessionStore(handle.client, prefix)
    record = _record(ttl=30)
    await store.create(record)
    ttl_ms = await handle.client.pttl(f"{prefix}s:{record.id_hash}")
    # The expiry is the record's own `expires` in whole milliseconds, rounded up: a
    # millisecond over the 30 s the record was given is that rounding, not a longer life.
    assert 0 < ttl_ms <= 30_002
    index_ttl = await handle.client.pttl(f"{prefix}u:acme:u1")
    assert 0 < index_ttl <= 31_000, "an index does not outlive its sessions"


async def test_rate_limit_counts_atomically_and_bans(handle: RedisHandle) -> None:
    limiter = RedisRateLimiter(handle.client, f"t{secrets.token_hex(4)}:")
    counts = await asyncio.gather(*(limiter.hit("ip:192.0.2.1", 60) for _ in range(50)))
    assert sorted(counts) == list(range(1, 51))
    until = await limiter.ban("ip:192.0.2.1", 60)
    assert await limiter.banned_until("ip:192.0.2.1") == pytest.approx(until, abs=0.01)
    assert [b.key for b in await limiter.list_bans()] == ["ip:192.0.2.1"]
    await limiter.clear("ip:192.0.2.1")
    assert await limiter.banned_until("ip:192.0.2.1") is None
    assert await limiter.hit("ip:192.0.2.1", 60) == 1


async def test_revocation_events_reach_every_subscriber(handle: RedisHandle) -> None:
    prefix = f"t{secrets.token_hex(4)}:"
    got: list[str] = []
    arrived = asyncio.Event()

    async def received(message: str) -> None:
        got.append(message)
        arrived.set()

    subscriber = open_redis(handle.target.url)
    bus = RedisEventBus(subscriber.client, prefix, new_pubsub=subscriber.pubsub)
    subscription = await bus.subscribe("revocations", received)
    try:
        await RedisEventBus(handle.client, prefix).publish("revocations", "session:abc")
        await asyncio.wait_for(arrived.wait(), 5)
        assert got == ["session:abc"]
    finally:
        await subscription.close()
        await subscriber.close()


async def test_cluster_spreads_sessions_over_its_masters(cluster: RedisCluster) -> None:
    handle = open_redis(cluster.url)
    assert await handle.ping()
    try:
        store = RedisSessionStore(handle.client, "spread:")
        for _ in range(30):
            await store.create(_record(user=secrets.token_hex(3)))
        per_node = [int(redis_cli(n.port, "dbsize").strip()) for n in cluster.nodes]
        assert all(count > 0 for count in per_node), per_node
    finally:
        await handle.close()


@pytest.mark.parametrize("deployment", ["cluster", "sentinel"])
async def test_open_stores_accepts_the_url(
    deployment: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    servers: RedisCluster | RedisSentinel = request.getfixturevalue(deployment)
    config = Config(
        source=tmp_path / "config.yaml",
        tenants=(),
        storage=f"sqlite:///{tmp_path / 'a.db'}",
        sessions=SessionsConfig(store=servers.url),
    )
    stores = await open_stores(config)
    try:
        assert isinstance(stores.sessions, RedisSessionStore)
        assert await stores.ping()
    finally:
        await stores.close()


async def test_a_burst_on_one_master_waits_for_a_connection_and_passes(
    handle: RedisHandle, request: pytest.FixtureRequest
) -> None:
    # redis-py's pools refuse a command past 100 connections (MaxConnectionsError): 250
    # sign-ins arriving at once on a healthy master were 150 503s. Sentinel's master pool
    # now waits for a free connection; a Cluster client lets at most 100 commands run at
    # once. Keys of one slot: one Cluster master.
    store = RedisSessionStore(handle.client, f"t{secrets.token_hex(4)}:")
    opened = breaker.openings.get("redis", 0)
    answers = await asyncio.gather(
        *(store.get(f"{{burst}}{i}") for i in range(250)), return_exceptions=True
    )
    failures = [a for a in answers if isinstance(a, BaseException)]
    assert not failures, f"{len(failures)} failed: {failures[0]!r} ({failures[0].__cause__!r})"
    assert answers == [None] * 250
    # and a healthy store under a burst never trips its circuit breaker
    assert not breaker_of(handle.client).is_open
    assert breaker.openings.get("redis", 0) == opened
