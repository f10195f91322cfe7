"""SessionStore contract, on SQLite, PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import dataclasses
import time

from gateway.stores.base import SessionRecord
from gateway.stores.ids import hash_session_id, new_session_id
from tests.integration.stores.conftest import Backend


def record(user_id: str = "u1", tenant: str = "acme", **fields: object) -> SessionRecord:
    now = time.time()
    base = SessionRecord(
        id_hash=hash_session_id(new_session_id()),
        tenant=tenant,
        user_id=user_id,
        amr=("pwd",),
        auth_time=now,
        created=now,
        last_seen=now,
        expires=now + 3600,
        ip="192.0.2.7",
        user_agent="Mozilla/5.0",
        country="GB",
        remember=True,
        data=(("mfa", "pending"),),
    )
    return dataclasses.replace(base, **fields)  # type: ignore[arg-type]


async def test_a_created_session_reads_back_equal(backend: Backend) -> None:
    store = backend.sessions()
    session = record()
    await store.create(session)
    assert await store.get(session.id_hash) == session


async def test_optional_fields_survive_as_none(backend: Backend) -> None:
    store = backend.sessions()
    session = record(ip=None, user_agent=None, country=None, remember=False, data=())
    await store.create(session)
    assert await store.get(session.id_hash) == session


async def test_an_expired_session_is_gone(backend: Backend) -> None:
    store = backend.sessions()
    session = record(expires=time.time() - 1)
    await store.create(session)
    assert await store.get(session.id_hash) is None
    assert await store.list_user("acme", "u1") == []
    assert await store.touch(session.id_hash, time.time(), time.time() + 60) is False


async def test_prune_removes_expired_sessions_and_keeps_live_ones(backend: Backend) -> None:
    store = backend.sessions()
    live = record()
    await store.create(live)
    await store.create(record(expires=time.time() - 1))
    await store.prune_expired(time.time())
    assert await store.list("acme") == [live]


async def test_touch_moves_last_seen_and_expiry(backend: Backend) -> None:
    store = backend.sessions()
    session = record()
    await store.create(session)
    later = session.last_seen + 90
    assert await store.touch(session.id_hash, later, later + 7200) is True
    got = await store.get(session.id_hash)
    assert got == dataclasses.replace(session, last_seen=later, expires=later + 7200)


async def test_rotation_replaces_the_old_id_with_the_new(backend: Backend) -> None:
    store = backend.sessions()
    old = record()
    await store.create(old)
    new = record(amr=("pwd", "otp"))
    assert await store.rotate(old.id_hash, new) is True
    assert await store.get(old.id_hash) is None
    assert await store.get(new.id_hash) == new
    assert await store.list_user("acme", "u1") == [new]


async def test_a_revoked_session_cannot_be_rotated_back_to_life(backend: Backend) -> None:
    store = backend.sessions()
    old = record()
    await store.create(old)
    await store.revoke(old.id_hash)
    new = record()
    assert await store.rotate(old.id_hash, new) is False
    assert await store.get(new.id_hash) is None


async def test_concurrent_rotations_of_one_session_yield_one_winner(backend: Backend) -> None:
    store = backend.sessions()
    old = record()
    await store.create(old)
    results = await asyncio.gather(*(store.rotate(old.id_hash, record()) for _ in range(10)))
    assert results.count(True) == 1
    assert len(await store.list_user("acme", "u1")) == 1


async def test_revoke_removes_one_session(backend: Backend) -> None:
    store = backend.sessions()
    one, two = record(), record()
    await store.create(one)
    await store.create(two)
    assert await store.revoke(one.id_hash) is True
    assert await store.revoke(one.id_hash) is False
    assert await store.get(one.id_hash) is None
    assert await store.list_user("acme", "u1") == [two]


async def test_revoke_user_logs_out_everywhere_and_only_that_user(backend: Backend) -> None:
    store = backend.sessions()
    mine = [record(created=time.time() + i) for i in range(3)]
    other_user = record(user_id="u2")
    other_tenant = record(tenant="globex")
    for session in [*mine, other_user, other_tenant]:
        await store.create(session)
    assert await store.revoke_user("acme", "u1") == 3
    for session in mine:
        assert await store.get(session.id_hash) is None
    assert await store.get(other_user.id_hash) == other_user
    assert await store.get(other_tenant.id_hash) == other_tenant
    assert await store.revoke_user("acme", "u1") == 0


async def test_listings_are_scoped_and_ordered_by_creation(backend: Backend) -> None:
    store = backend.sessions()
    first = record(created=100.0)
    second = record(created=200.0)
    third = record(user_id="u2", created=150.0)
    for session in (second, first, third, record(tenant="globex")):
        await store.create(session)
    assert await store.list_user("acme", "u1") == [first, second]
    assert await store.list("acme") == [first, third, second]
    assert await store.count("acme") == 3
    assert await store.count("globex") == 1
    assert await store.count("nobody") == 0


async def test_unknown_session_is_none(backend: Backend) -> None:
    store = backend.sessions()
    assert await store.get(hash_session_id(new_session_id())) is None


async def test_log_out_everywhere_racing_a_chain_of_rotations_leaves_nothing(
    backend: Backend,
) -> None:
    # Someone holding a session keeps rotating it (each step up does) while the user is
    # logged out everywhere: once revoke_user has returned, no successor may live.
    store = backend.sessions()
    for trial in range(30):
        user = f"chain{trial}"
        current = record(user_id=user)
        await store.create(current)
        stop = asyncio.Event()

        async def chain(user: str = user, stop: asyncio.Event = stop) -> None:
            nonlocal current
            while not stop.is_set():
                successor = record(user_id=user)
                if not await store.rotate(current.id_hash, successor):
                    return
                current = successor

        rotating = asyncio.ensure_future(chain())
        await asyncio.sleep(0.001 * (trial % 5))
        await store.revoke_user("acme", user)
        stop.set()
        await rotating
        assert await store.list_user("acme", user) == [], f"trial {trial}"
