"""SECURITY 6: a store that cannot answer raises StoreUnavailable, never a driver error."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from gateway.config.model import Config, SessionsConfig
from gateway.errors import StoreUnavailable
from gateway.stores import open_stores
from gateway.stores.postgres import open_postgres
from gateway.stores.redis import RedisEventBus, RedisRateLimiter, RedisSessionStore, connect
from gateway.stores.sql import SqlSessionStore
from gateway.stores.sqlite import open_sqlite


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_postgres_on_a_closed_port_is_unavailable(closed_port: int) -> None:
    with pytest.raises(StoreUnavailable):
        await open_postgres(f"postgresql://postgres@127.0.0.1:{closed_port}/x")


async def test_redis_on_a_closed_port_is_unavailable(closed_port: int) -> None:
    client = connect(f"redis://127.0.0.1:{closed_port}/0")
    try:
        with pytest.raises(StoreUnavailable):
            await RedisSessionStore(client).get("0" * 64)
        with pytest.raises(StoreUnavailable):
            await RedisRateLimiter(client).hit("k", 60)
        with pytest.raises(StoreUnavailable):
            await RedisEventBus(client).publish("c", "m")
    finally:
        await client.aclose()


async def test_open_stores_refuses_an_unreachable_redis(tmp_path: Path, closed_port: int) -> None:
    config = Config(
        source=tmp_path / "config.yaml",
        tenants=(),
        storage="sqlite:///authgate.db",
        sessions=SessionsConfig(store=f"redis://127.0.0.1:{closed_port}/0"),
    )
    with pytest.raises(StoreUnavailable):
        await open_stores(config)


async def test_a_closed_sqlite_database_is_unavailable(tmp_path: Path) -> None:
    db = await open_sqlite(tmp_path / "x.db")
    await db.close()
    with pytest.raises(StoreUnavailable):
        await SqlSessionStore(db).get("0" * 64)
    assert await db.ping() is False


@pytest.mark.postgres
async def test_a_dead_postgres_pool_is_unavailable(postgres_url: str) -> None:
    db = await open_postgres(postgres_url)
    await db.close()
    with pytest.raises(StoreUnavailable):
        await SqlSessionStore(db).touch("0" * 64, time.time(), time.time())
    assert await db.ping() is False
