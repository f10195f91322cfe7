"""The SQL event bus after its polls failed for a while: events may have been deleted
unread (publishers delete those past EVENT_RETENTION), so subscribers are told to
resync, as the Redis bus tells them after a broken subscription."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.errors import StoreUnavailable
from gateway.stores.base import RESYNC, REVOCATIONS, session_revoked
from gateway.stores.breaker import CircuitOpen
from gateway.stores.database import Row
from gateway.stores.sql import SqlEventBus
from gateway.stores.sqlite import SqliteDatabase, open_sqlite


class Flaky:
    """The real database, whose reads fail while `down` is set (a database blip)."""

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db
        self.down = False
        self.error: StoreUnavailable = StoreUnavailable("sqlite: down for the test")

    def __getattr__(self, name: str) -> object:
        return getattr(self.db, name)

    async def fetch(self, sql: str, *args: object) -> list[Row]:
        if self.down:
            raise self.error
        return await self.db.fetch(sql, *args)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SqliteDatabase]:
    database = await open_sqlite(tmp_path / "a.db")
    yield database
    await database.close()


async def test_subscribers_are_told_to_resync_after_failed_polls(db: SqliteDatabase) -> None:
    flaky = Flaky(db)
    publisher = SqlEventBus(db)
    subscriber = SqlEventBus(flaky, poll_interval=0.02)  # type: ignore[arg-type]
    received: asyncio.Queue[str] = asyncio.Queue()

    async def deliver(message: str) -> None:
        await received.put(message)

    subscription = await subscriber.subscribe(REVOCATIONS, deliver)
    try:
        await publisher.publish(REVOCATIONS, session_revoked("a"))
        assert await asyncio.wait_for(received.get(), 5) == "session:a"
        flaky.down = True
        await asyncio.sleep(0.1)  # a few polls fail
        flaky.down = False
        assert await asyncio.wait_for(received.get(), 5) == RESYNC
        await publisher.publish(REVOCATIONS, session_revoked("b"))
        assert await asyncio.wait_for(received.get(), 5) == "session:b"
        assert received.empty()  # one resync per gap, not one per poll
    finally:
        await subscription.close()


async def test_an_open_circuit_is_a_gap_too_but_not_a_warning_every_poll(
    db: SqliteDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    # The breaker logged the outage once; the poll only notes the gap (and resyncs).
    flaky = Flaky(db)
    flaky.error = CircuitOpen("postgresql: circuit open")
    subscriber = SqlEventBus(flaky, poll_interval=0.02)  # type: ignore[arg-type]
    received: asyncio.Queue[str] = asyncio.Queue()

    async def deliver(message: str) -> None:
        await received.put(message)

    subscription = await subscriber.subscribe(REVOCATIONS, deliver)
    try:
        flaky.down = True
        await asyncio.sleep(0.1)  # a few polls refused
        flaky.down = False
        assert await asyncio.wait_for(received.get(), 5) == RESYNC
        assert not [r for r in caplog.records if "event poll failed" in r.getMessage()]
    finally:
        await subscription.close()
