"""SsoCodeStore contract (one-time cross-domain hand-off codes), on SQLite,
PostgreSQL and Redis: a code is taken at most once, however many try at once, and
an expired one is no grant."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import time

import pytest

from gateway.errors import StoreUnavailable
from gateway.sso import SsoGrant
from gateway.stores import redis as redis_store
from gateway.stores.breaker import CircuitOpen
from gateway.stores.redis import RedisSsoCodeStore
from tests.integration.servers import start_redis
from tests.integration.stores.conftest import Backend


def grant(expires_in: float = 60) -> SsoGrant:
    return SsoGrant("acme", secrets.token_hex(8), "app.test", time.time() + expires_in)


async def test_a_code_is_taken_once(backend: Backend) -> None:
    codes = backend.sso_codes()
    code, given = secrets.token_hex(32), grant()
    await codes.put(code, given, 60)
    assert await codes.take(code, time.time()) == given
    assert await codes.take(code, time.time()) is None


async def test_an_unknown_code_is_no_grant(backend: Backend) -> None:
    assert await backend.sso_codes().take(secrets.token_hex(32), time.time()) is None


async def test_an_expired_code_is_no_grant_and_is_gone(backend: Backend) -> None:
    codes = backend.sso_codes()
    code = secrets.token_hex(32)
    await codes.put(code, grant(expires_in=30), 60)
    assert await codes.take(code, time.time() + 31) is None
    assert await codes.take(code, time.time()) is None  # taken, even though refused


async def test_of_many_concurrent_takes_one_wins(backend: Backend) -> None:
    codes = backend.sso_codes()
    code, given = secrets.token_hex(32), grant()
    await codes.put(code, given, 60)
    taken = await asyncio.gather(*(codes.take(code, time.time()) for _ in range(20)))
    assert [t for t in taken if t is not None] == [given]


async def test_codes_are_kept_apart(backend: Backend) -> None:
    codes = backend.sso_codes()
    first, second = secrets.token_hex(32), secrets.token_hex(32)
    a, b = grant(), grant()
    await codes.put(first, a, 60)
    await codes.put(second, b, 60)
    assert await codes.take(second, time.time()) == b
    assert await codes.take(first, time.time()) == a


@pytest.mark.redis
async def test_a_hung_redis_refuses_codes_in_bounded_time_then_at_once() -> None:
    """Redis SIGSTOPped: taking a code fails (a 503) within the store deadline, and once
    the client's breaker has seen the outage, at once, as every Redis store call does.
    These calls went around the deadline and the breaker."""
    server = start_redis()
    client = redis_store.connect(f"redis://127.0.0.1:{server.port}/0")  # as the gateway's
    try:
        codes = RedisSsoCodeStore(client, "authgate:", 0)
        await codes.put("c1", grant(), 60)
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            first = await asyncio.gather(
                *(codes.take("c1", time.time()) for _ in range(3)), return_exceptions=True
            )
            assert all(isinstance(f, StoreUnavailable) for f in first), first
            assert time.monotonic() - started <= redis_store.COMMAND_TIMEOUT + 3  # loaded CI
            with pytest.raises(CircuitOpen):
                await codes.take("c1", time.time())
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
    finally:
        await client.aclose()
        server.stop(kill=True)
