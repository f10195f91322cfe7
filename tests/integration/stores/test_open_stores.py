"""open_stores picks backends by URL and reports readiness."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway.config.model import Config, SessionsConfig
from gateway.stores import SessionRecord, open_stores
from gateway.stores.redis import RedisSessionStore
from gateway.stores.sql import SqlSessionStore
from tests.conftest import REDIS_URL


def config(tmp_path: Path, storage: str, sessions: str = "storage") -> Config:
    return Config(
        source=tmp_path / "config.yaml",
        tenants=(),
        storage=storage,
        sessions=SessionsConfig(store=sessions),
    )


async def _round_trip(cfg: Config) -> None:
    stores = await open_stores(cfg)
    try:
        assert await stores.ping()
        now = time.time()
        record = SessionRecord("a" * 64, "acme", "u1", ("pwd",), now, now, now, now + 60)
        await stores.sessions.create(record)
        assert await stores.sessions.get(record.id_hash) == record
        await stores.sessions.revoke(record.id_hash)
    finally:
        await stores.close()


async def test_a_relative_sqlite_url_lives_beside_the_config(tmp_path: Path) -> None:
    cfg = config(tmp_path, "sqlite:///data/authgate.db")
    await _round_trip(cfg)
    assert (tmp_path / "data" / "authgate.db").exists()


@pytest.mark.postgres
async def test_postgres_storage(tmp_path: Path, postgres_clean: str) -> None:
    await _round_trip(config(tmp_path, postgres_clean))


@pytest.mark.redis
async def test_sessions_in_redis_beside_sqlite(tmp_path: Path, redis_run_prefix: str) -> None:
    cfg = config(tmp_path, f"sqlite:///{tmp_path}/a.db", REDIS_URL)
    stores = await open_stores(cfg)
    try:
        assert isinstance(stores.sessions, RedisSessionStore)
    finally:
        await stores.close()
    await _round_trip(cfg)


async def test_sessions_default_to_the_storage_database(tmp_path: Path) -> None:
    stores = await open_stores(config(tmp_path, f"sqlite:///{tmp_path}/a.db"))
    try:
        assert isinstance(stores.sessions, SqlSessionStore)
    finally:
        await stores.close()
