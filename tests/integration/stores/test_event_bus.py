"""EventBus contract: a message published on one connection reaches another's subscriber."""

from __future__ import annotations

import asyncio

from gateway.stores.base import REVOCATIONS, session_revoked
from gateway.stores.database import Database
from tests.integration.stores.conftest import Backend


async def _collect(queue: asyncio.Queue[str], count: int) -> list[str]:
    return [await asyncio.wait_for(queue.get(), timeout=5) for _ in range(count)]


async def test_a_revocation_reaches_a_subscriber_on_another_connection(
    backend: Backend, second_database_or_none: Database | None
) -> None:
    publisher = backend.events()
    subscriber = backend.events(second_database_or_none)
    received: asyncio.Queue[str] = asyncio.Queue()

    async def deliver(message: str) -> None:
        await received.put(message)

    subscription = await subscriber.subscribe(REVOCATIONS, deliver)
    try:
        await publisher.publish(REVOCATIONS, session_revoked("abc"))
        await publisher.publish("other-channel", "ignored")
        await publisher.publish(REVOCATIONS, session_revoked("def"))
        assert await _collect(received, 2) == ["session:abc", "session:def"]
    finally:
        await subscription.close()


async def test_messages_from_before_subscribing_are_not_replayed(
    backend: Backend, second_database_or_none: Database | None
) -> None:
    bus = backend.events(second_database_or_none)
    await backend.events().publish(REVOCATIONS, "old")
    received: asyncio.Queue[str] = asyncio.Queue()

    async def deliver(message: str) -> None:
        await received.put(message)

    subscription = await bus.subscribe(REVOCATIONS, deliver)
    try:
        await backend.events().publish(REVOCATIONS, "new")
        assert await _collect(received, 1) == ["new"]
        await asyncio.sleep(0.2)
        assert received.empty()
    finally:
        await subscription.close()


async def test_a_failing_callback_does_not_stop_delivery(backend: Backend) -> None:
    received: asyncio.Queue[str] = asyncio.Queue()

    async def deliver(message: str) -> None:
        if message == "boom":
            raise RuntimeError("callback bug")
        await received.put(message)

    subscription = await backend.events().subscribe(REVOCATIONS, deliver)
    try:
        await backend.events().publish(REVOCATIONS, "boom")
        await backend.events().publish(REVOCATIONS, "after")
        assert await _collect(received, 1) == ["after"]
    finally:
        await subscription.close()
