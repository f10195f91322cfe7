"""Where a revocation could slip past an instance's cache, tried for real.

A revocation published while an instance's subscription was down is lost (Redis
pub/sub keeps nothing): when the subscription comes back the instance is told to
resync and forgets every cached session. And a store read begun just before a
revocation message may hold the revoked session: its answer must not be cached, nor
handed to requests that arrive after the message.

Real Redis on a spare port (restarted for real, append-only so the sessions survive);
two SessionManagers stand for two gateway instances."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config.model import Config, SessionsConfig, TenantConfig
from gateway.sessions import SessionManager
from gateway.stores import SessionStore, Stores, StoreUnavailable, User, new_id, open_stores
from gateway.stores.ids import hash_session_id
from tests.integration.servers import RedisServer, start_redis
from tests.slow_stores import GatedUsers

pytestmark = pytest.mark.redis

HOUR = 3600.0


async def two_instances(
    tmp_path: Path, redis_server: RedisServer
) -> tuple[SessionsConfig, Stores, Stores]:
    """Two instances' stores over one Redis and one database; sessions cached an hour,
    so only a message (or a resync) can make a cache let go early."""
    sessions_config = SessionsConfig(store=redis_server.url, cache_ttl=HOUR)
    config = Config(
        source=tmp_path / "config.yaml",
        tenants=(TenantConfig(id="acme", name="Acme", domains=("acme.test",)),),
        storage=f"sqlite:///{tmp_path / 'a.db'}",
        sessions=sessions_config,
    )
    return sessions_config, await open_stores(config), await open_stores(config)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = start_redis(tmp_path, appendonly=True)
    yield server
    server.stop(kill=True)


async def test_an_instance_forgets_its_cached_sessions_after_losing_its_subscription(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    # An hour-long cache: only a message (or a resync) can make it let go early.
    sessions_config, here, there = await two_instances(tmp_path, redis_server)
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


class _Follower(SessionManager):
    """A SessionManager that says when a revocation message has been acted on."""

    received: asyncio.Event

    async def _on_revocation(self, message: str) -> None:
        await super()._on_revocation(message)
        self.received.set()


async def test_a_read_begun_before_a_revocation_is_neither_cached_nor_shared_after_it(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    sessions_config, here, there = await two_instances(tmp_path, redis_server)
    users = GatedUsers(there.users)
    signer = SessionManager(here.sessions, here.users, here.events, sessions_config)
    follower = _Follower(there.sessions, users, there.events, sessions_config)  # type: ignore[arg-type]
    follower.received = asyncio.Event()
    await follower.start()
    try:
        user = User(new_id(), "acme", "alice", None, None, (), (), False, None, 0.0, 0.0)
        await here.users.create(user)
        session_id, _ = await signer.create(user, ("pwd",), ip=None, user_agent=None)

        users.armed = True
        before = asyncio.ensure_future(follower.load(session_id, "acme"))
        await asyncio.wait_for(users.entered.wait(), 5)  # its read is under way
        assert await signer.revoke(session_id)  # the store, and the message
        await asyncio.wait_for(follower.received.wait(), 5)
        after = asyncio.ensure_future(follower.load(session_id, "acme"))
        await asyncio.sleep(0.05)
        users.gate.set()

        # Begun before the revocation, the first request is answered as it was read;
        # what arrives after the message is not, and nothing stale stays cached.
        assert await before is not None
        assert await after is None, "a request after the revocation shared the stale read"
        assert await follower.load(session_id, "acme") is None, "the stale read was cached"
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


async def test_an_open_websocket_is_closed_when_its_session_is_revoked(tmp_path: Path) -> None:
    # A socket is let through once, at the upgrade, and may live for hours: the gateway
    # decides on it again every few seconds and closes it when it would no longer pass.
    import dataclasses
    import secrets as secrets_module
    from typing import Any

    import aiohttp
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    from gateway.config.model import SecretsConfig
    from gateway.extensions import default_extensions
    from gateway.server import GatewayServer
    from tests.integration.conftest import make_config

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            await ws.send_str(f"{request.headers.get('Remote-User')}: {message.data}")
        return ws

    app = web.Application()
    app.router.add_get("/ws", echo)
    upstream = TestServer(app, host="127.0.0.1")
    await upstream.start_server()
    config = make_config(
        tmp_path,
        str(upstream.make_url("")).rstrip("/"),
        policy="version: 1\ndefault: one_factor\n",
        route={"websockets": True},
    )
    config = dataclasses.replace(
        config,
        sessions=SessionsConfig(cache_ttl=1.0),
        secrets=SecretsConfig(encryption_key=secrets_module.token_urlsafe(32)),
    )
    server = GatewayServer(config, tuple(default_extensions()))
    await server.start()
    try:
        runtime: Any = server.runtime
        user = User(new_id(), "acme", "alice", None, None, (), (), False, None, 0.0, 0.0)
        await runtime.stores.users.create(user)
        session_id, _ = await runtime.sessions.create(user, ("pwd",), ip=None, user_agent=None)
        host, port = server.addresses[0]
        headers = {"Host": "app.test", "Cookie": f"authgate_session={session_id}"}
        async with (
            aiohttp.ClientSession() as client,
            client.ws_connect(f"http://{host}:{port}/ws", headers=headers) as ws,
        ):
            await ws.send_str("hello")
            assert (await asyncio.wait_for(ws.receive(), 5)).data == "alice: hello"
            await runtime.sessions.revoke_user("acme", user.id)  # log out everywhere
            closed = await asyncio.wait_for(ws.receive(), 10)
            assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            assert ws.close_code == aiohttp.WSCloseCode.POLICY_VIOLATION
    finally:
        await server.stop()
        await upstream.close()
