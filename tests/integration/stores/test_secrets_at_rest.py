"""SECURITY 5 and 10: no raw session id or API key is ever in storage."""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from gateway.stores.base import ApiKey, SessionRecord, new_id
from gateway.stores.database import Database
from gateway.stores.ids import (
    api_key_display_prefix,
    hash_api_key,
    hash_session_id,
    new_api_key,
    new_session_id,
)
from gateway.stores.sql import SqlApiKeyStore
from tests.conftest import REDIS_URL
from tests.integration.stores.conftest import Backend


async def _dump_sql(backend: Backend, db: Database) -> str:
    tables = ["sessions", "api_keys", "audit", "events", "users"]
    rows: list[str] = []
    for table in tables:
        rows += [repr(tuple(row)) for row in await db.fetch(f"SELECT * FROM {table}")]  # noqa: S608
    return "\n".join(rows)


async def _dump_redis(prefix: str) -> str:
    client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        dump: list[str] = []
        async for key in client.scan_iter(match=f"{prefix}*"):
            kind = await client.type(key)
            value = {
                "hash": client.hgetall,
                "set": client.smembers,
                "string": client.get,
            }[kind](key)
            dump.append(f"{key} {await value}")
        return "\n".join(dump)
    finally:
        await client.aclose()


async def test_stored_sessions_and_keys_hold_only_hashes(backend: Backend) -> None:
    sessions = backend.sessions()
    raw_ids = [new_session_id() for _ in range(3)]
    now = time.time()
    for sid in raw_ids:
        await sessions.create(
            SessionRecord(
                id_hash=hash_session_id(sid),
                tenant="acme",
                user_id="u1",
                amr=("pwd",),
                auth_time=now,
                created=now,
                last_seen=now,
                expires=now + 600,
            )
        )
    raw_keys = [new_api_key() for _ in range(3)]
    if backend.db is not None:
        apikeys = SqlApiKeyStore(backend.db)
        for raw in raw_keys:
            await apikeys.create(
                ApiKey(
                    new_id(),
                    "acme",
                    "u1",
                    "ci",
                    api_key_display_prefix(raw),
                    hash_api_key(raw),
                    now,
                    None,
                )
            )
        dump = await _dump_sql(backend, backend.db)
    else:
        dump = await _dump_redis(backend.prefix)
    assert hash_session_id(raw_ids[0]) in dump  # the scan really sees the data
    for secret in [*raw_ids, *raw_keys]:
        assert secret not in dump
        assert secret[4:20] not in dump  # not even a long piece of it
