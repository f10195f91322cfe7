"""Revocations that outlive a failover on PostgreSQL with an asynchronous standby
(`storage: postgresql://…?wait_replicas=1`), for real: a primary and a hot standby in
streaming replication, the standby's WAL receiver stopped (SIGSTOP) to hold back what
it has.

PostgreSQL answers a commit before an asynchronous standby has it; a primary lost
then takes the commit with it, and a revoked session, API key or disabled user comes
back with the promoted standby. With `wait_replicas`, a revocation is answered only
once that many standbys have flushed it (or after REPLICA_WAIT_MS, with a warning)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from gateway.replica_wait import REPLICA_WAIT_MS
from gateway.stores.base import ApiKey, SessionRecord
from gateway.stores.postgres import PostgresDatabase, migrate, open_postgres
from gateway.stores.sql import SqlApiKeyStore, SqlSessionStore
from tests.integration.servers import PostgresPair, start_postgres_pair

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

WAIT = REPLICA_WAIT_MS / 1000


def migrated_pair() -> PostgresPair:
    """An asynchronous pair, migrated, the standby with the schema too."""
    servers = start_postgres_pair(synchronous=False)
    try:
        asyncio.run(migrate(servers.url))
        for _ in range(500):
            if servers.standby.sql("SELECT to_regclass('sessions') IS NOT NULL") == "t":
                return servers
            time.sleep(0.01)
        raise AssertionError("the standby never had the schema")
    except BaseException:
        servers.remove()
        raise


@pytest.fixture(scope="module")
def pair() -> Iterator[PostgresPair]:
    servers = migrated_pair()
    yield servers
    servers.remove()


@contextlib.asynccontextmanager
async def database(url: str) -> AsyncIterator[PostgresDatabase]:
    db = await open_postgres(url)
    try:
        yield db
    finally:
        await db.close()


@contextlib.contextmanager
def receiver_stopped(pair: PostgresPair) -> Iterator[None]:
    """The standby's WAL receiver stopped: it takes in, flushes and reports nothing."""
    pid = int(pair.standby.sql("SELECT pid FROM pg_stat_wal_receiver"))
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):  # gone with a killed primary
            os.kill(pid, signal.SIGCONT)


def session() -> SessionRecord:
    now = time.time()
    return SessionRecord(secrets.token_hex(32), "acme", "u1", ("pwd",), now, now, now, now + 3600)


def on_standby(pair: PostgresPair, record: SessionRecord) -> bool:
    assert record.id_hash.isalnum()  # spelled into the query below
    query = f"SELECT count(*) FROM sessions WHERE id_hash = '{record.id_hash}'"  # noqa: S608
    found = pair.standby.sql(query)
    return found == "1"


async def created(pair: PostgresPair, store: SqlSessionStore) -> SessionRecord:
    """A session the standby has already (so only its revocation is held back)."""
    record = session()
    await store.create(record)
    for _ in range(200):
        if on_standby(pair, record):
            return record
        await asyncio.sleep(0.01)
    raise AssertionError("the standby never had the session")


async def test_a_revocation_is_answered_once_the_standby_has_it(
    pair: PostgresPair, caplog: pytest.LogCaptureFixture
) -> None:
    async with database(f"{pair.url}&wait_replicas=1") as db:
        store = SqlSessionStore(db)
        record = await created(pair, store)
        with receiver_stopped(pair):
            started = time.monotonic()
            revoking = asyncio.ensure_future(store.revoke(record.id_hash))
            await asyncio.sleep(WAIT / 2)
            assert not revoking.done(), "answered before the standby had the revocation"
        assert await revoking is True
        took = time.monotonic() - started
        assert WAIT / 2 <= took < WAIT, took
        assert "not confirmed" not in caplog.text
        # And the standby has it (flushed; replayed a moment later).
        for _ in range(200):
            if not on_standby(pair, record):
                break
            await asyncio.sleep(0.01)
        assert not on_standby(pair, record)


async def test_a_standby_that_never_catches_up_delays_a_revocation_by_the_bound_only(
    pair: PostgresPair, caplog: pytest.LogCaptureFixture
) -> None:
    """It is still done on the primary (it holds unless the primary fails first), so it
    is answered after REPLICA_WAIT_MS with a warning, not refused."""
    async with database(f"{pair.url}&wait_replicas=1") as db:
        store = SqlSessionStore(db)
        keys = SqlApiKeyStore(db)
        key = ApiKey("k1", "acme", "u1", "ci", "agk_x", secrets.token_hex(32), time.time(), None)
        await keys.create(key)
        record = await created(pair, store)
        with caplog.at_level(logging.WARNING, logger="authgate.stores.postgres"):
            with receiver_stopped(pair):
                started = time.monotonic()
                assert await store.revoke(record.id_hash) is True
                assert await keys.revoke("k1") is True
                took = time.monotonic() - started
        assert 2 * WAIT <= took < 2 * WAIT + 1.0, took
        assert caplog.text.count("a revocation is not confirmed on 1 standby(s)") == 2
        assert await store.get(record.id_hash) is None
        assert (await keys.get_by_hash(key.key_hash)).revoked  # type: ignore[union-attr]


async def test_without_wait_replicas_nothing_waits(pair: PostgresPair) -> None:
    async with database(pair.url) as db:
        store = SqlSessionStore(db)
        record = await created(pair, store)
        with receiver_stopped(pair):
            started = time.monotonic()
            assert await store.revoke(record.id_hash) is True
            assert time.monotonic() - started < WAIT / 2
            assert on_standby(pair, record)  # held back: what a failover now would lose


async def test_a_revocation_answered_survives_the_primary_killed_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The failover itself: the standby held back, the revocation answered (the
    receiver let go meanwhile), the primary killed the moment it is, the standby
    promoted: the session is gone there. (This one alone proves little: without the
    wait it passes too, as the stopped receiver still reads what the primary had
    already sent; the tests above show the wait.)"""
    servers = await asyncio.to_thread(migrated_pair)
    try:
        async with database(f"{servers.url}&wait_replicas=1") as db:
            store = SqlSessionStore(db)
            record = await created(servers, store)
            loop = asyncio.get_running_loop()
            with receiver_stopped(servers):
                pid = int(servers.standby.sql("SELECT pid FROM pg_stat_wal_receiver"))
                loop.call_later(WAIT / 3, os.kill, pid, signal.SIGCONT)
                assert await store.revoke(record.id_hash) is True
                servers.kill_primary()
        servers.promote()
        assert not on_standby(servers, record)
        assert "not confirmed" not in caplog.text
    finally:
        servers.remove()
