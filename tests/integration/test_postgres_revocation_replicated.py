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
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from gateway.cli.apikey import revoke_key
from gateway.config.model import Config, SessionsConfig
from gateway.errors import StoreUnavailable
from gateway.replica_wait import REPLICA_WAIT_MS
from gateway.sso import SqlSsoCodes, SsoGrant
from gateway.stores import open_stores
from gateway.stores.base import REVOCATIONS, ApiKey, SessionRecord, api_key_revoked
from gateway.stores.credentials import SqlCredentialStore
from gateway.stores.postgres import PostgresDatabase, migrate, open_postgres
from gateway.stores.sql import SqlApiKeyStore, SqlKeyStore, SqlSessionStore
from tests.integration.servers import PostgresPair, start_postgres_pair, start_redis
from tests.integration.test_revocation_replicated import record as new_session
from tests.integration.test_revocation_replicated import unconfirmed_counted
from tests.polling import until

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


def on_standby(pair: PostgresPair, record: SessionRecord) -> bool:
    assert record.id_hash.isalnum()  # spelled into the query below
    query = f"SELECT count(*) FROM sessions WHERE id_hash = '{record.id_hash}'"  # noqa: S608
    found = pair.standby.sql(query)
    return found == "1"


async def created(pair: PostgresPair, store: SqlSessionStore) -> SessionRecord:
    """A session the standby has already (so only its revocation is held back)."""
    session = new_session()
    await store.create(session)
    await until(lambda: on_standby(pair, session), "the standby had the session", 5)
    return session


async def test_a_revocation_is_answered_once_the_standby_has_it(
    pair: PostgresPair, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A bound far beyond the test's pauses: being let go, not the bound, must end it.
    monkeypatch.setattr("gateway.stores.postgres.REPLICA_WAIT_MS", 60_000)
    async with database(f"{pair.url}&wait_replicas=1") as db:
        store = SqlSessionStore(db)
        record = await created(pair, store)
        again = await created(pair, store)
        with receiver_stopped(pair):
            revoking = asyncio.ensure_future(store.revoke(record.id_hash))
            # A second revocation of the same session finds nothing to delete, but may
            # be the one whose answer a user sees: it waits too.
            repeated = asyncio.ensure_future(store.revoke(record.id_hash))
            # And a revocation of a session on a statement that changed nothing else.
            other = asyncio.ensure_future(store.revoke(again.id_hash))
            await asyncio.sleep(WAIT)
            assert not revoking.done(), "answered before the standby had the revocation"
            assert not repeated.done(), "a repeated revocation was answered at once"
            assert not other.done()
        assert await revoking is True
        assert await repeated is False
        assert await other is True
        assert "not confirmed" not in caplog.text
        # And the standby has it (flushed; replayed a moment later).
        await until(lambda: not on_standby(pair, record), "the standby replayed it", 5)


async def _take_sso_code(db: PostgresDatabase) -> Callable[[], Awaitable[object]]:
    codes = SqlSsoCodes(db)
    grant = SsoGrant("acme", "tag", "app.test", time.time() + 60)
    await codes.put("code-hash", grant, 60)
    return lambda: codes.take("code-hash", time.time())


async def _use_backup_code(db: PostgresDatabase) -> Callable[[], Awaitable[object]]:
    credentials = SqlCredentialStore(db)
    await credentials.replace_backup_codes("acme", "u2", ("h1",), time.time())
    return lambda: credentials.consume_backup_code("u2", "h1", time.time())


async def _replace_backup_codes(db: PostgresDatabase) -> Callable[[], Awaitable[object]]:
    credentials = SqlCredentialStore(db)
    return lambda: credentials.replace_backup_codes("acme", "u3", ("h2",), time.time())


async def _remove_factors(db: PostgresDatabase) -> Callable[[], Awaitable[object]]:
    credentials = SqlCredentialStore(db)
    await credentials.replace_backup_codes("acme", "u4", ("h3",), time.time())
    return lambda: credentials.remove_all_for_user("u4")


async def _retire_key(db: PostgresDatabase) -> Callable[[], Awaitable[object]]:
    keys = SqlKeyStore(db)
    return lambda: keys.retire("no-such-kid", time.time())


@pytest.mark.parametrize(
    "prepare",
    [_take_sso_code, _use_backup_code, _replace_backup_codes, _remove_factors, _retire_key],
)
async def test_other_writes_that_take_access_away_wait_too(
    pair: PostgresPair,
    monkeypatch: pytest.MonkeyPatch,
    prepare: Callable[[PostgresDatabase], Awaitable[Callable[[], Awaitable[object]]]],
) -> None:
    """A one-time code taken, backup codes used or replaced, second factors removed, a
    signing key retired: each would be usable again after a failover that lost it.
    Single statements and whole transactions alike wait for the standby."""
    monkeypatch.setattr("gateway.stores.postgres.REPLICA_WAIT_MS", 60_000)
    async with database(f"{pair.url}&wait_replicas=1") as db:
        operation = await prepare(db)
        with receiver_stopped(pair):
            running = asyncio.ensure_future(operation())
            await asyncio.sleep(WAIT)
            assert not running.done(), "answered before the standby had it"
        await running


async def test_a_code_not_found_takes_nothing_and_waits_for_nothing(
    pair: PostgresPair, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Anyone may send made-up codes: a take that found nothing wrote nothing, so it
    has nothing to confirm, and must neither hold a connection through the wait nor
    log a warning."""
    monkeypatch.setattr("gateway.stores.postgres.REPLICA_WAIT_MS", 60_000)
    async with database(f"{pair.url}&wait_replicas=1") as db:
        codes = SqlSsoCodes(db)
        with receiver_stopped(pair):
            # Done while the receiver is held (the wait bound is 60 s here).
            assert await asyncio.wait_for(codes.take("no-such-code", time.time()), 10) is None
        assert "not confirmed" not in caplog.text


async def test_a_wal_stream_that_is_no_standby_confirms_nothing(
    pair: PostgresPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pg_receivewal streams WAL synchronously (an archive), and shows in
    pg_stat_replication like a standby, but a failover cannot promote it."""
    monkeypatch.setattr("gateway.stores.postgres.REPLICA_WAIT_MS", 60_000)
    archive = pair.primary.directory / "archive"  # where the server's user may write
    archive.mkdir()
    owner = pair.primary.directory.stat()
    os.chown(archive, owner.st_uid, owner.st_gid)
    receiver = subprocess.Popen(
        [
            *pair.primary.command("pg_receivewal"),
            "-h", "127.0.0.1", "-p", str(pair.primary.port), "-U", "postgres",
            "-D", str(archive), "--synchronous", "-n",
        ],
    )  # fmt: skip
    try:
        await until(
            lambda: pair.primary.sql("SELECT count(*) FROM pg_stat_replication") == "2",
            "pg_receivewal streamed",
            5,
        )
        async with database(f"{pair.url}&wait_replicas=1") as db:
            store = SqlSessionStore(db)
            record = await created(pair, store)
            with receiver_stopped(pair):
                revoking = asyncio.ensure_future(store.revoke(record.id_hash))
                await asyncio.sleep(WAIT)
                assert not revoking.done(), "pg_receivewal was taken for a standby"
            assert await revoking is True
    finally:
        receiver.terminate()
        receiver.wait(10)


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
        before = unconfirmed_counted("postgresql")
        with caplog.at_level(logging.WARNING, logger="authgate.stores.postgres"):
            with receiver_stopped(pair):
                started = time.monotonic()
                assert await store.revoke(record.id_hash) is True
                assert await keys.revoke("k1") is True
                took = time.monotonic() - started
        assert took >= 2 * WAIT, took
        assert caplog.text.count("is not confirmed on 1 standby(s)") == 2
        assert unconfirmed_counted("postgresql") == before + 2  # what an alert sees
        assert await store.get(record.id_hash) is None
        assert (await keys.get_by_hash(key.key_hash)).revoked  # type: ignore[union-attr]


async def test_without_wait_replicas_nothing_waits(pair: PostgresPair) -> None:
    async with database(pair.url) as db:
        store = SqlSessionStore(db)
        record = await created(pair, store)
        with receiver_stopped(pair):
            assert await store.revoke(record.id_hash) is True
            assert on_standby(pair, record)  # held back: what a failover now would lose


async def test_a_revocation_whose_wait_fails_is_still_announced(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The primary dies while an API key's revocation waits for its standby: the
    revocation is not confirmed (StoreUnavailable, a 503), but it may be done, so every
    gateway process is still told to forget the key (over Redis here): otherwise they
    would go on serving it from their caches."""
    monkeypatch.setattr("gateway.stores.postgres.REPLICA_WAIT_MS", 60_000)
    servers = await asyncio.to_thread(migrated_pair)
    redis_server = start_redis()
    stores = None
    try:
        stores = await open_stores(
            Config(
                source=tmp_path / "config.yaml",
                tenants=(),
                storage=f"{servers.url}&wait_replicas=1",
                sessions=SessionsConfig(store=f"redis://127.0.0.1:{redis_server.port}/0"),
            )
        )
        heard: list[str] = []

        async def hear(message: str) -> None:
            heard.append(message)

        subscription = await stores.events.subscribe(REVOCATIONS, hear)
        key = ApiKey("k1", "acme", "u1", "ci", "agk_x", secrets.token_hex(32), time.time(), None)
        await stores.apikeys.create(key)
        with receiver_stopped(servers):
            revoking = asyncio.ensure_future(revoke_key(stores, "k1"))
            await asyncio.sleep(WAIT)
            assert not revoking.done()
            servers.kill_primary()
            with pytest.raises(StoreUnavailable):
                await revoking
        await until(lambda: api_key_revoked("k1") in heard, "the revocation was heard", 2)
        await subscription.close()
    finally:
        if stores is not None:
            await stores.close()
        redis_server.stop(kill=True)
        servers.remove()
