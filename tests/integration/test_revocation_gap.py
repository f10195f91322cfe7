"""A revocation published while an instance's subscription was down is lost (Redis
pub/sub keeps nothing). The instance must not go on trusting what it cached: when its
subscription comes back it is told to resync and forgets every cached session.

Real Redis on a spare port, restarted for real (append-only, so the sessions survive);
two SessionManagers stand for two gateway instances. The revocation is written to the
store with no message at all — the message that the outage swallowed."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config.model import Config, SessionsConfig, TenantConfig
from gateway.sessions import SessionManager
from gateway.stores import SessionStore, StoreUnavailable, User, new_id, open_stores
from gateway.stores.ids import hash_session_id
from tests.integration.servers import RedisServer, start_redis

pytestmark = pytest.mark.redis

HOUR = 3600.0


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = start_redis(tmp_path, appendonly=True)
    yield server
    server.stop(kill=True)


async def test_an_instance_forgets_its_cached_sessions_after_losing_its_subscription(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    # An hour-long cache: only a message (or a resync) can make it let go early.
    sessions_config = SessionsConfig(store=redis_server.url, cache_ttl=HOUR)
    config = Config(
        source=tmp_path / "config.yaml",
        tenants=(TenantConfig(id="acme", name="Acme", domains=("acme.test",)),),
        storage=f"sqlite:///{tmp_path / 'a.db'}",
        sessions=sessions_config,
    )
    here, there = await open_stores(config), await open_stores(config)
    signer = SessionManager(here.sessions, here.users, here.events, sessions_config)
    follower = SessionManager(there.sessions, there.users, there.events, sessions_config)
    await follower.start()
    try:
        user = User(new_id(), "acme", "alice", None, None, (), (), False, None, 0.0, 0.0)
        await here.users.create(user)
        session_id, _ = await signer.create(user, ("pwd",), ip=None, user_agent=None)
        assert await follower.load(session_id, "acme") is not None  # cached for an hour

        redis_server.restart()  # the follower's subscription breaks and is reopened
        await _revoke_without_a_message(here.sessions, hash_session_id(session_id))

        for _ in range(100):
            if await follower.load(session_id, "acme") is None:
                break
            await asyncio.sleep(0.05)
        assert await follower.load(session_id, "acme") is None, (
            "a session revoked while the subscription was down still passes from the cache"
        )
    finally:
        await follower.stop()
        await here.close()
        await there.close()


async def _revoke_without_a_message(store: SessionStore, id_hash: str) -> None:
    """Straight to the store (no publish), retried while the client reconnects."""
    for _ in range(100):
        try:
            assert await store.revoke(id_hash)
            return
        except StoreUnavailable:
            await asyncio.sleep(0.05)
    raise AssertionError("Redis did not come back")
