"""SessionManager over a real SQLite store with an injected clock: expiry, idle timeout,
rolling refresh, write rate, tenant binding and rotation."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.config.model import Config, SessionsConfig, TenantConfig, TenantSessions
from gateway.errors import StoreFull, StoreUnavailable
from gateway.sessions import _UNWRITTEN_MIN, TOUCH_INTERVAL, SessionManager
from gateway.stores import REVOCATIONS, SessionRecord, Stores, User, new_id, open_stores
from gateway.stores.ids import hash_session_id
from tests.polling import until
from tests.slow_stores import GatedUsers

DAY = 86400.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0
        self.mono = 0.0

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.mono += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def stores(tmp_path: Path, clock: Clock) -> AsyncIterator[Stores]:
    config = Config(
        source=tmp_path / "config.yaml",
        tenants=(TenantConfig(id="acme", name="Acme", domains=("acme.test",)),),
        storage=f"sqlite:///{tmp_path / 'a.db'}",
    )
    opened = await open_stores(config, clock=lambda: clock.now)
    yield opened
    await opened.close()


async def make_user(stores: Stores, tenant: str = "acme") -> User:
    user = User(new_id(), tenant, "alice", None, None, (), (), False, None, 0.0, 0.0)
    await stores.users.create(user)
    return user


def manager(
    stores: Stores, clock: Clock, store: object = None, **settings: float
) -> SessionManager:
    """A manager on the injected clock, over `store` (default: the real session store)."""
    return SessionManager(
        store or stores.sessions,  # type: ignore[arg-type]
        stores.users,
        stores.events,
        SessionsConfig(**settings),  # type: ignore[arg-type]
        now=lambda: clock.now,
        monotonic=lambda: clock.mono,
    )


async def test_a_session_expires_at_its_lifetime(stores: Stores, clock: Clock) -> None:
    sessions = manager(stores, clock, lifetime=3600.0, refresh_after=DAY, cache_ttl=0.0)
    sid, _ = await sessions.create(await make_user(stores), ("pwd",), ip=None, user_agent=None)
    clock.advance(3599)
    assert await sessions.load(sid, "acme") is not None
    clock.advance(2)
    assert await sessions.load(sid, "acme") is None


async def test_idle_timeout_ends_an_unused_session(stores: Stores, clock: Clock) -> None:
    sessions = manager(stores, clock, idle_timeout=600.0, cache_ttl=0.0)
    sid, _ = await sessions.create(await make_user(stores), ("pwd",), ip=None, user_agent=None)
    for _ in range(5):  # used every 5 minutes: stays alive
        clock.advance(300)
        assert await sessions.load(sid, "acme") is not None
    clock.advance(600 + TOUCH_INTERVAL + 1)
    assert await sessions.load(sid, "acme") is None
    clock.advance(1)
    assert await sessions.load(sid, "acme") is None  # revoked in the store, not only cached


async def test_rolling_refresh_keeps_an_active_session_alive(stores: Stores, clock: Clock) -> None:
    sessions = manager(stores, clock, lifetime=2 * DAY, refresh_after=DAY, cache_ttl=0.0)
    sid, record = await sessions.create(await make_user(stores), ("pwd",), ip=None, user_agent=None)
    clock.advance(1.5 * DAY)
    active = await sessions.load(sid, "acme")
    assert active is not None
    assert active.record.expires == pytest.approx(clock.now + 2 * DAY)
    assert active.record.expires > record.expires


async def test_the_hot_path_writes_at_most_once_a_minute(stores: Stores, clock: Clock) -> None:
    sessions = manager(stores, clock, cache_ttl=0.0)
    sid, record = await sessions.create(await make_user(stores), ("pwd",), ip=None, user_agent=None)
    clock.advance(30)
    await sessions.load(sid, "acme")
    stored = await stores.sessions.get(record.id_hash)
    assert stored is not None and stored.last_seen == record.last_seen
    clock.advance(31)
    await sessions.load(sid, "acme")
    stored = await stores.sessions.get(record.id_hash)
    assert stored is not None and stored.last_seen == clock.now


async def test_a_session_is_worthless_on_another_tenant(stores: Stores, clock: Clock) -> None:
    sessions = manager(stores, clock)
    sid, _ = await sessions.create(await make_user(stores), ("pwd",), ip=None, user_agent=None)
    assert await sessions.load(sid, "globex") is None
    assert await sessions.load(sid, "acme") is not None


async def test_elevation_rotates_the_id_and_kills_the_old_one(stores: Stores, clock: Clock) -> None:
    sessions = manager(stores, clock)
    sid, _ = await sessions.create(await make_user(stores), ("pwd",), ip=None, user_agent=None)
    assert await sessions.load(sid, "acme") is not None  # now cached
    clock.advance(10)
    elevated = await sessions.elevate(sid, ("pwd", "otp"))
    assert elevated is not None
    new_sid, record = elevated
    assert new_sid != sid
    assert record.amr == ("pwd", "otp")
    assert record.auth_time == clock.now
    assert await sessions.load(sid, "acme") is None
    assert await sessions.elevate(sid, ("pwd", "otp")) is None
    active = await sessions.load(new_sid, "acme")
    assert active is not None and active.record.amr == ("pwd", "otp")


async def test_disabled_users_sessions_stop_working(stores: Stores, clock: Clock) -> None:
    import dataclasses

    sessions = manager(stores, clock, cache_ttl=0.0)
    user = await make_user(stores)
    sid, _ = await sessions.create(user, ("pwd",), ip=None, user_agent=None)
    await stores.users.update(dataclasses.replace(user, disabled=True))
    assert await sessions.load(sid, "acme") is None


async def test_log_out_everywhere_reaches_cached_sessions(stores: Stores, clock: Clock) -> None:
    sessions = manager(stores, clock, cache_ttl=60.0)
    user = await make_user(stores)
    first, _ = await sessions.create(user, ("pwd",), ip=None, user_agent=None)
    second, _ = await sessions.create(user, ("pwd",), ip=None, user_agent=None)
    assert await sessions.load(first, "acme") is not None
    assert await sessions.load(second, "acme") is not None
    assert await sessions.revoke_user("acme", user.id) == 2
    assert await sessions.load(first, "acme") is None
    assert await sessions.load(second, "acme") is None


async def test_cached_sessions_of_one_user_share_one_user_until_it_changes(
    stores: Stores, clock: Clock
) -> None:
    # Memory: a cache of 10,000 sessions of 1,000 people holds 1,000 users, not 10,000.
    sessions = manager(stores, clock, cache_ttl=60.0)
    user = await make_user(stores)
    sids = [(await sessions.create(user, ("pwd",), ip=None, user_agent=None))[0] for _ in range(3)]
    loaded = [await sessions.load(sid, "acme") for sid in sids[:2]]
    assert loaded[0] is not None and loaded[1] is not None
    assert loaded[0].user is loaded[1].user
    changed = dataclasses.replace(user, groups=("staff",), updated=1.0)
    await stores.users.update(changed)
    third = await sessions.load(sids[2], "acme")  # read afresh: the change, not the old one
    assert third is not None and third.user == changed
    assert third.user is not loaded[0].user


def test_every_field_of_a_user_counts_in_its_equality() -> None:
    # Cached sessions share a user read again only when it equals the one held
    # (SessionManager._user): a field left out of equality would keep the old object
    # after that field changed.
    assert all(field.compare for field in dataclasses.fields(User))


@pytest.mark.parametrize("cookie", ["", "short", "x" * 500])
async def test_malformed_cookies_are_nobody(stores: Stores, clock: Clock, cookie: str) -> None:
    assert await manager(stores, clock).load(cookie, "acme") is None


async def test_a_tenant_with_its_own_lifetimes_gets_them_and_others_keep_the_defaults(
    stores: Stores, clock: Clock
) -> None:
    short = TenantConfig(
        id="acme",
        name="Acme",
        domains=("acme.test",),
        sessions=TenantSessions(lifetime=3600.0, idle_timeout=600.0, remember_me_lifetime=7200.0),
    )
    other = TenantConfig(id="globex", name="Globex", domains=("globex.test",))
    sessions = SessionManager(
        stores.sessions,
        stores.users,
        stores.events,
        SessionsConfig(lifetime=DAY, cache_ttl=0.0),
        tenants=(short, other),
        now=lambda: clock.now,
        monotonic=lambda: clock.mono,
    )
    assert sessions.settings("acme").lifetime == 3600.0
    assert sessions.settings("acme").fresh_for == SessionsConfig().fresh_for  # not overridden
    assert sessions.settings("globex").lifetime == DAY
    alice = await make_user(stores)
    _, record = await sessions.create(alice, ("pwd",), ip=None, user_agent=None)
    assert record.expires - record.created == 3600.0
    _, kept = await sessions.create(alice, ("pwd",), ip=None, user_agent=None, remember=True)
    assert kept.expires - kept.created == 7200.0
    _, theirs = await sessions.create(
        await make_user(stores, "globex"), ("pwd",), ip=None, user_agent=None
    )
    assert theirs.expires - theirs.created == DAY

    sid, _ = await sessions.create(alice, ("pwd",), ip=None, user_agent=None)
    clock.advance(600 + TOUCH_INTERVAL + 1)  # the tenant's idle timeout, not the global "off"
    assert await sessions.load(sid, "acme") is None


async def test_concurrent_requests_share_one_store_read_and_one_write(
    stores: Stores, clock: Clock
) -> None:
    class Counting:
        """The real store, counting reads and writes."""

        def __init__(self, inner: object) -> None:
            self.inner = inner
            self.gets = 0
            self.touches = 0

        def __getattr__(self, name: str) -> object:
            return getattr(self.inner, name)

        async def get(self, id_hash: str) -> object:
            self.gets += 1
            await asyncio.sleep(0.01)  # a store round trip
            return await self.inner.get(id_hash)  # type: ignore[attr-defined]

        async def touch(self, *args: object) -> object:
            self.touches += 1
            await asyncio.sleep(0.01)
            return await self.inner.touch(*args)  # type: ignore[attr-defined]

    counting = Counting(stores.sessions)
    sessions = SessionManager(
        counting,  # type: ignore[arg-type]
        stores.users,
        stores.events,
        SessionsConfig(cache_ttl=2.0),
        now=lambda: clock.now,
        monotonic=lambda: clock.mono,
    )
    sid, _ = await sessions.create(await make_user(stores), ("pwd",), ip=None, user_agent=None)
    found = await asyncio.gather(*(sessions.load(sid, "acme") for _ in range(50)))
    assert all(active is not None for active in found)
    assert counting.gets == 1
    clock.advance(TOUCH_INTERVAL + 1)  # the cache entry ended and a write is due
    found = await asyncio.gather(*(sessions.load(sid, "acme") for _ in range(50)))
    assert all(active is not None for active in found)
    assert (counting.gets, counting.touches) == (2, 1)


async def test_a_read_under_way_when_this_process_revokes_is_not_cached(
    stores: Stores, clock: Clock
) -> None:
    # The revoking process must not wait for its own message to come back (the SQL bus
    # polls; publishing may fail): a read begun before its revoke is not cached.
    users = GatedUsers(stores.users, once=True)
    sessions = SessionManager(
        stores.sessions,
        users,  # type: ignore[arg-type]
        stores.events,
        SessionsConfig(cache_ttl=3600.0),
        now=lambda: clock.now,
        monotonic=lambda: clock.mono,
    )
    sid, _ = await sessions.create(await make_user(stores), ("pwd",), ip=None, user_agent=None)
    users.armed = True
    reading = asyncio.ensure_future(sessions.load(sid, "acme"))
    await asyncio.wait_for(users.entered.wait(), 5)
    assert await sessions.revoke(sid)
    users.gate.set()
    await reading  # begun before the revocation: answered as it was read
    assert await sessions.load(sid, "acme") is None


class _GatedReads:
    """The real session store, whose reads wait at `gate` (or fail) while armed."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.armed = False
        self.failing = False
        self.reads = 0
        self.touches = 0
        self.touch_failing = False
        self.gate = asyncio.Event()
        self.held = asyncio.Event()  # a read is held at the gate

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def get(self, id_hash: str) -> object:
        self.reads += 1
        if self.failing:
            raise StoreUnavailable("the session store is down")
        # Read, then held: what a held read returns is what the store said before.
        found = await self.inner.get(id_hash)  # type: ignore[attr-defined]
        if self.armed:
            self.held.set()
            await self.gate.wait()
        return found

    async def touch(self, *args: object) -> object:
        self.touches += 1
        if self.touch_failing:
            raise StoreUnavailable("the session store is down")
        done = await self.inner.touch(*args)  # type: ignore[attr-defined]
        if self.armed:
            await self.gate.wait()
        return done


async def _cached_session(stores: Stores, clock: Clock) -> tuple[SessionManager, _GatedReads, str]:
    """A manager over a store whose reads can be held or failed, and a session it has
    just read (cached for cache_ttl, 2 s)."""
    gated = _GatedReads(stores.sessions)
    sessions, sid, _ = await _read_once(stores, clock, gated, 2.0)
    return sessions, gated, sid


async def _read_once(
    stores: Stores, clock: Clock, store: _GatedReads, cache_ttl: float
) -> tuple[SessionManager, str, User]:
    """A manager over `store`, and a user's session it has just read (cached)."""
    sessions = manager(stores, clock, store, cache_ttl=cache_ttl)
    user = await make_user(stores)
    sid, _ = await sessions.create(user, ("pwd",), ip=None, user_agent=None)
    assert await sessions.load(sid, "acme") is not None
    return sessions, sid, user


async def _settle(sessions: SessionManager) -> None:
    """Until no store read or write of `sessions` is under way, nor a use being published
    (each runs on its own; SQLite answers from a thread, so a few loop turns are not
    enough)."""
    for _ in range(500):
        await asyncio.sleep(0.01)
        if not sessions._inflight and not sessions._writes and not sessions._saying:
            return
    raise AssertionError("a store read never ended")


async def test_a_busy_session_is_read_again_before_its_cache_entry_ends_without_waiting(
    stores: Stores, clock: Clock
) -> None:
    sessions, gated, sid = await _cached_session(stores, clock)
    reads = gated.reads
    clock.advance(1.0)  # half of cache_ttl left: served from the cache, nothing read
    assert await sessions.load(sid, "acme") is not None
    assert gated.reads == reads
    gated.armed = True  # the store is slow from now on
    clock.advance(0.6)  # in the last quarter: served at once, and one read begins
    found = await asyncio.gather(*(sessions.load(sid, "acme") for _ in range(20)))
    assert all(active is not None for active in found)
    assert gated.reads == reads + 1
    gated.gate.set()
    await _settle(sessions)
    clock.advance(0.6)  # past the first entry's end: the read ahead renewed it
    assert await sessions.load(sid, "acme") is not None
    assert gated.reads == reads + 1


async def test_a_read_ahead_under_way_when_this_process_revokes_is_not_cached(
    stores: Stores, clock: Clock
) -> None:
    sessions, gated, sid = await _cached_session(stores, clock)
    gated.armed = True
    clock.advance(1.6)
    assert await sessions.load(sid, "acme") is not None  # a read ahead begins...
    await asyncio.wait_for(gated.held.wait(), 5)  # ...finds the session, and is held
    assert await sessions.revoke(sid)
    gated.gate.set()  # the read ahead may have found the session before the revoke
    await _settle(sessions)
    assert await sessions.load(sid, "acme") is None


async def test_a_failing_read_ahead_never_stretches_the_cache_bound(
    stores: Stores, clock: Clock
) -> None:
    sessions, gated, sid = await _cached_session(stores, clock)
    gated.failing = True
    clock.advance(1.6)
    assert await sessions.load(sid, "acme") is not None  # within the bound
    await _settle(sessions)
    clock.advance(0.5)  # the entry's end: what the store says now, an outage
    with pytest.raises(StoreUnavailable):
        await sessions.load(sid, "acme")


async def test_a_reused_decision_reads_ahead_and_ends_when_the_entry_is_renewed(
    stores: Stores, clock: Clock
) -> None:
    # Requests served on a reused decision never call `load`: its lease reads ahead.
    sessions, gated, sid = await _cached_session(stores, clock)
    active = await sessions.load(sid, "acme")
    assert active is not None
    still_valid = sessions.lease(active)
    assert still_valid is not None
    reads = gated.reads
    clock.advance(1.0)
    assert still_valid() and gated.reads == reads  # half its life left: nothing read
    gated.armed = True
    clock.advance(0.6)
    assert still_valid()  # in the last quarter: still good, and a read begins
    assert still_valid()
    await asyncio.sleep(0)
    assert gated.reads == reads + 1
    gated.gate.set()
    await _settle(sessions)
    assert not still_valid()  # the entry was renewed: decide again...
    assert await sessions.load(sid, "acme") is not None  # ...on it, without waiting
    assert gated.reads == reads + 1


async def test_a_read_ahead_renews_the_entry_from_when_it_began(
    stores: Stores, clock: Clock
) -> None:
    sessions, gated, sid = await _cached_session(stores, clock)
    gated.armed = True
    clock.advance(1.6)
    assert await sessions.load(sid, "acme") is not None  # a read ahead is started...
    await asyncio.sleep(0)  # ...and begins, at 1.6
    clock.advance(0.3)  # the store is slow: the read ends at 1.9
    gated.gate.set()
    await _settle(sessions)
    # At 3.7 the entry has ended (read begun at 1.6, cache_ttl 2 s), though less than
    # 2 s have passed since the read ended: this request waits for the store.
    clock.advance(1.8)
    gated.gate = asyncio.Event()
    loading = asyncio.ensure_future(sessions.load(sid, "acme"))
    await asyncio.sleep(0.05)
    assert not loading.done(), "the entry outlived cache_ttl from its read's start"
    gated.gate.set()
    assert await loading is not None


async def test_a_read_that_hangs_past_the_cache_bound_is_not_shared_with_later_requests(
    stores: Stores, clock: Clock
) -> None:
    # The store hangs in a read that found the session alive, and the revocation's message
    # is lost (the session is revoked in the store alone). A request arriving more than
    # cache_ttl after that read began must not take its answer: it reads for itself.
    sessions, gated, sid = await _cached_session(stores, clock)
    gated.armed = True
    clock.advance(2.1)  # past the entry's end: the next request reads the store
    reads = gated.reads
    first = asyncio.ensure_future(sessions.load(sid, "acme"))
    await asyncio.wait_for(gated.held.wait(), 5)
    assert await stores.sessions.revoke(hash_session_id(sid))
    clock.advance(2.01)  # the held read began just longer ago than cache_ttl (2 s)
    later = asyncio.ensure_future(sessions.load(sid, "acme"))
    for _ in range(500):  # its own read, held at the gate too (SQLite answers from a thread)
        if gated.reads == reads + 2:
            break
        await asyncio.sleep(0.01)
    assert gated.reads == reads + 2, "the later request joined the read begun before the bound"
    gated.gate.set()
    assert await first is not None  # answered as it was read: it began within its bound
    assert await later is None
    assert await sessions.load(sid, "acme") is None


async def test_a_read_that_ends_after_a_later_one_does_not_replace_its_entry(
    stores: Stores, clock: Clock
) -> None:
    sessions, gated, sid = await _cached_session(stores, clock)
    gated.armed = True
    clock.advance(2.1)  # past the entry's end
    first = asyncio.ensure_future(sessions.load(sid, "acme"))
    await asyncio.wait_for(gated.held.wait(), 5)  # held, begun at 2.1 s
    clock.advance(2.1)
    gated.armed = False
    assert await sessions.load(sid, "acme") is not None  # its own read, cached to 6.2 s
    reads = gated.reads
    gated.gate.set()
    assert await first is not None  # ends now: its entry would have ended at 4.1 s
    clock.advance(0.1)
    assert await sessions.load(sid, "acme") is not None
    assert gated.reads == reads, "the older read replaced the later one's entry"


class _HeldTouches(_GatedReads):
    """As _GatedReads, and its writes of last use wait at `touch_gate` before writing
    while held (so a read meanwhile still finds the write due)."""

    def __init__(self, inner: object) -> None:
        super().__init__(inner)
        self.hold_touches = False
        self.touch_gate = asyncio.Event()
        self.touch_held = asyncio.Event()

    async def touch(self, *args: object) -> object:
        if self.hold_touches:
            self.touch_held.set()
            await self.touch_gate.wait()
        return await super().touch(*args)


async def test_requests_sharing_a_write_each_keep_the_session_they_read(
    stores: Stores, clock: Clock
) -> None:
    # A's read hangs past the cache's bound, then A writes the minute's last use, and that
    # write hangs too. The user joins a group meanwhile (its event lost). B reads for
    # itself (A's read is too old to share), sees the group, and shares A's write: B must
    # keep what it read, not A's older user.
    gated = _HeldTouches(stores.sessions)
    sessions, sid, user = await _read_once(stores, clock, gated, 2.0)
    clock.advance(TOUCH_INTERVAL + 1)  # the entry has ended and a write is due
    gated.armed = True
    gated.hold_touches = True
    a = asyncio.ensure_future(sessions.load(sid, "acme"))
    await asyncio.wait_for(gated.held.wait(), 5)  # A's read found no group, and hangs
    clock.advance(3.0)
    gated.armed = False
    gated.gate.set()
    await asyncio.wait_for(gated.touch_held.wait(), 5)  # A's write hangs
    await stores.users.update(dataclasses.replace(user, groups=("staff",), updated=1.0))
    b = asyncio.ensure_future(sessions.load(sid, "acme"))
    for _ in range(500):  # B reads, then waits for the write under way
        if gated.reads == 3 and not b.done():
            break
        await asyncio.sleep(0.01)
    gated.touch_gate.set()
    found_a, found_b = await a, await b
    assert found_a is not None and found_a.user.groups == ()
    assert found_b is not None and found_b.user.groups == ("staff",), "B got A's older user"
    assert found_b.record.last_seen == clock.now  # what the one shared write wrote
    assert gated.touches == 1


async def test_a_write_behind_is_applied_to_the_entry_a_later_read_cached(
    stores: Stores, clock: Clock
) -> None:
    # A cached request begins the minute's write (held) and a read ahead, which caches
    # the user's change (its event lost). The write, ending after, must keep that newer
    # user in the cache, and not put back the one the write began from.
    gated = _HeldTouches(stores.sessions)
    sessions, sid, user = await _read_once(stores, clock, gated, 120.0)
    clock.advance(91.0)  # a write is due, and the entry is in its last quarter
    await stores.users.update(dataclasses.replace(user, groups=("staff",), updated=1.0))
    gated.hold_touches = True
    assert await sessions.load(sid, "acme") is not None  # served; write and read begin
    await asyncio.wait_for(gated.touch_held.wait(), 5)
    for _ in range(500):  # the read ahead caches the change
        entry = sessions._cache.get(hash_session_id(sid))
        if entry is not None and entry[1].user.groups == ("staff",):
            break
        await asyncio.sleep(0.01)
    gated.touch_gate.set()
    await _settle(sessions)
    found = await sessions.load(sid, "acme")
    assert found is not None and found.user.groups == ("staff",), "the write put back the old user"
    assert found.record.last_seen == clock.now  # and what it wrote is in the entry


async def test_a_request_that_waited_for_the_write_keeps_its_lease(
    stores: Stores, clock: Clock
) -> None:
    sessions = manager(stores, clock, cache_ttl=2.0)
    sid, _ = await sessions.create(await make_user(stores), ("pwd",), ip=None, user_agent=None)
    clock.advance(TOUCH_INTERVAL + 1)  # read from the store, then the write waited for
    found = await sessions.load(sid, "acme")
    assert found is not None and found.record.last_seen == clock.now
    assert sessions.lease(found) is not None, "no decision made on it could be reused"


class _FullStore(_GatedReads):
    """The real session store, refusing writes of last use as a full Redis does (while
    `refusing`)."""

    def __init__(self, inner: object) -> None:
        super().__init__(inner)
        self.refusing = True

    async def touch(self, *args: object) -> object:
        if not self.refusing:
            return await super().touch(*args)
        self.touches += 1
        raise StoreFull("OOM command not allowed when used memory > 'maxmemory'")


async def test_a_full_store_serves_sessions_and_its_refused_write_is_not_tried_on_every_request(
    stores: Stores, clock: Clock
) -> None:
    full = _FullStore(stores.sessions)
    # (refresh_after 0: the refused write would have extended the session)
    sessions = manager(stores, clock, full, cache_ttl=2.0, refresh_after=0.0)
    sid, record = await sessions.create(await make_user(stores), ("pwd",), ip=None, user_agent=None)
    sessions._writes_failing = True  # (an earlier write failed: this one is waited for)
    clock.advance(TOUCH_INTERVAL + 1)
    found = await sessions.load(sid, "acme")  # read, and the write waited for: refused
    assert found is not None and found.record.last_seen == clock.now  # its use, noted here
    assert found.record.expires == record.expires  # not extended: the store ends it then
    assert full.touches == 1
    assert not sessions._writes_failing  # the store answered
    for _ in range(3):  # from the cache, and read again: no write due for a minute
        again = await asyncio.gather(*(sessions.load(sid, "acme") for _ in range(5)))
        assert all(a is not None for a in again)
        await _settle(sessions)
        clock.advance(2.5)
    assert full.touches == 1, "the refused write was tried again on every request"
    clock.advance(TOUCH_INTERVAL)
    assert await sessions.load(sid, "acme") is not None
    await _settle(sessions)
    assert full.touches == 2  # a minute later, tried again


async def _used_every_30_s(sessions: SessionManager, clock: Clock, sid: str, uses: int) -> None:
    """`uses` requests of the session, 30 s apart, each served and let settle."""
    for _ in range(uses):
        clock.advance(30.0)
        assert await sessions.load(sid, "acme") is not None, "refused while in use"
        await _settle(sessions)


async def _in_use_while_full(
    stores: Stores, clock: Clock, store: _FullStore, uses: int, **settings: float
) -> tuple[SessionManager, str, SessionRecord]:
    """A manager over a full `store` (cache_ttl 2 s), and a session of its own used every
    30 s, `uses` times, since it was created."""
    sessions = manager(stores, clock, store, cache_ttl=2.0, **settings)
    sid, record = await sessions.create(await make_user(stores), ("pwd",), ip=None, user_agent=None)
    await _used_every_30_s(sessions, clock, sid, uses)
    return sessions, sid, record


async def test_a_session_in_use_is_not_idled_out_while_a_full_store_refuses_its_writes(
    stores: Stores, clock: Clock
) -> None:
    full = _FullStore(stores.sessions)
    # Used for 20 minutes, each use reading the store (the cache's bound is 2 s).
    sessions, sid, record = await _in_use_while_full(stores, clock, full, 40, idle_timeout=600.0)
    id_hash = hash_session_id(sid)
    stored = await stores.sessions.get(id_hash)
    assert stored is not None and stored.last_seen == record.last_seen  # nothing written
    assert full.touches == 20  # once a minute, not once a request
    # Left unused past the idle timeout (and the minute between writes): idled out.
    clock.advance(600 + TOUCH_INTERVAL + 1)
    assert await sessions.load(sid, "acme") is None
    assert await stores.sessions.get(id_hash) is None  # revoked: a full store still deletes


async def test_a_use_noted_while_the_store_is_full_neither_extends_nor_keeps_a_session(
    stores: Stores, clock: Clock
) -> None:
    full = _FullStore(stores.sessions)
    sessions, sid, record = await _in_use_while_full(
        stores,
        clock,
        full,
        18,
        lifetime=541.0,
        refresh_after=0.0,  # (writes would extend it)
    )
    id_hash = hash_session_id(sid)
    # The last use (540 s) was read afresh, its write refused and noted onto the entry.
    assert sessions._unwritten[id_hash] == clock.now
    clock.advance(1.1)  # past the expiry the store has, the entry still cached
    assert record.expires < clock.now
    assert await sessions.load(sid, "acme") is None, "a noted use extended the session"


async def test_a_revoked_session_leaves_no_note_of_its_use(stores: Stores, clock: Clock) -> None:
    full = _FullStore(stores.sessions)
    sessions = manager(stores, clock, full, cache_ttl=2.0, idle_timeout=600.0)
    await sessions.start()
    try:
        sid, _ = await sessions.create(await make_user(stores), ("pwd",), ip=None, user_agent=None)
        clock.advance(TOUCH_INTERVAL + 1)
        assert await sessions.load(sid, "acme") is not None  # the write refused: use noted
        await _settle(sessions)
        assert hash_session_id(sid) in sessions._unwritten
        # Revoked by another process: a deletion, and its message
        await manager(stores, clock, full).revoke(sid)
        await until(lambda: not sessions._unwritten, "the revocation's message", 10)
        assert await sessions.load(sid, "acme") is None
    finally:
        await sessions.stop()


async def test_a_use_noted_while_the_store_was_full_is_written_once_it_has_room(
    stores: Stores, clock: Clock
) -> None:
    full = _FullStore(stores.sessions)
    sessions = manager(stores, clock, full, cache_ttl=2.0, idle_timeout=600.0)
    sid, _ = await sessions.create(await make_user(stores), ("pwd",), ip=None, user_agent=None)
    clock.advance(TOUCH_INTERVAL + 1)
    assert await sessions.load(sid, "acme") is not None
    await _settle(sessions)
    full.refusing = False  # memory freed
    clock.advance(TOUCH_INTERVAL + 1)
    assert await sessions.load(sid, "acme") is not None
    await _settle(sessions)
    stored = await stores.sessions.get(hash_session_id(sid))
    assert stored is not None and stored.last_seen == clock.now


class _HeldFullStore(_FullStore):
    """A full store whose reads can be held (`armed`, as _GatedReads), and whose writes,
    once it has room, are made while a read is held with the row as it was."""

    async def touch(self, *args: object) -> object:
        if self.refusing or not self.armed:
            return await super().touch(*args)
        await self.held.wait()
        self.touches += 1
        return await self.inner.touch(*args)  # type: ignore[attr-defined]


async def test_a_read_that_ends_after_the_store_caught_up_keeps_the_noted_use(
    stores: Stores, clock: Clock
) -> None:
    # Memory is freed; a read ahead reads the old last use from the store, and ends only
    # after the write that stores the noted one. What it caches must not idle the
    # session out (the store's row it read predates the noted use).
    held = _HeldFullStore(stores.sessions)
    sessions, sid, _ = await _in_use_while_full(stores, clock, held, 40, idle_timeout=600.0)
    noted = sessions._unwritten[hash_session_id(sid)]
    held.refusing = False  # memory freed
    clock.advance(noted + 58.5 - clock.now)  # read afresh, cached for 2 s: no write due yet
    assert await sessions.load(sid, "acme") is not None
    await _settle(sessions)
    held.armed = True
    clock.advance(1.6)  # the write is due, and the entry in its last quarter: both begin
    assert await sessions.load(sid, "acme") is not None
    await asyncio.wait_for(held.held.wait(), 5)  # the read ahead has the old row
    for _ in range(300):
        if not sessions._writes:
            break
        await asyncio.sleep(0.01)
    assert not sessions._writes, "the write did not end while the read was held"
    held.armed = False
    held.gate.set()  # it ends after the write
    await _settle(sessions)
    clock.advance(0.1)
    assert await sessions.load(sid, "acme") is not None, "signed out by a read older than its write"


async def test_every_process_reads_a_use_another_could_not_write(
    stores: Stores, clock: Clock
) -> None:
    # Two processes (workers, or instances) over one full store: the session is used
    # through A only. B, which has not seen it in use, must not idle it out (and so
    # delete it) when a request reaches B.
    full = _FullStore(stores.sessions)
    a = manager(stores, clock, full, cache_ttl=2.0, idle_timeout=600.0)
    b = manager(stores, clock, full, cache_ttl=2.0, idle_timeout=600.0)
    await a.start()
    await b.start()
    try:
        sid, _ = await a.create(await make_user(stores), ("pwd",), ip=None, user_agent=None)
        id_hash = hash_session_id(sid)
        await _used_every_30_s(a, clock, sid, 40)  # through A, for 20 minutes
        noted = a._unwritten[id_hash]
        await until(lambda: b._unwritten.get(id_hash) == noted, "A's message of the use", 10)
        assert await b.load(sid, "acme") is not None, "B idled out a session in use"
        assert await stores.sessions.get(id_hash) is not None
    finally:
        await a.stop()
        await b.stop()


async def test_a_use_is_noted_only_as_a_sessions_and_never_later_than_now(
    stores: Stores, clock: Clock
) -> None:
    # Anything on the revocations channel is read: a malformed message is ignored, a use
    # to come counts as now, and none of it is taken for a revocation (reads under way
    # are still cached).
    sessions = manager(stores, clock, cache_ttl=2.0)
    await sessions.start()
    try:
        id_hash = "ab" * 32
        for message in (
            "used:",
            f"used:{id_hash}",
            f"used:{id_hash}:nan",
            f"used:{id_hash}:inf",
            f"used:{id_hash}:soon",
            "used:not-a-hash:1.0",
            f"used:{id_hash.upper()}:1.0",
            f"used:{id_hash}:1e300",  # the last: noted as now
        ):
            await stores.events.publish(REVOCATIONS, message)
        await until(lambda: id_hash in sessions._unwritten, "the messages", 10)
        assert sessions._unwritten == {id_hash: clock.now}
        assert sessions._epoch == 0, "a use was taken for a revocation"
    finally:
        await sessions.stop()


async def test_the_notes_of_use_are_bounded(stores: Stores, clock: Clock) -> None:
    sessions = manager(stores, clock, cache_size=10)
    for number in range(_UNWRITTEN_MIN + 1):
        sessions._note_use(f"session-{number}", float(number))
    assert len(sessions._unwritten) == _UNWRITTEN_MIN
    assert "session-0" not in sessions._unwritten  # the oldest noted went first
    sessions._note_use("session-1", 0.5)  # an older use than the one noted: kept as was
    assert sessions._unwritten["session-1"] == 1.0


async def test_a_failing_read_ahead_is_tried_once_per_entry(stores: Stores, clock: Clock) -> None:
    sessions, gated, sid = await _cached_session(stores, clock)
    gated.failing = True
    clock.advance(1.6)
    for _ in range(20):  # the store is down: each request is served from the cache...
        assert await sessions.load(sid, "acme") is not None
        await _settle(sessions)
    reads = gated.reads
    assert reads >= 1
    clock.advance(0.1)
    assert await sessions.load(sid, "acme") is not None
    await _settle(sessions)
    assert gated.reads == reads, "a failed read ahead was tried again on every request"


async def test_a_touch_never_puts_back_a_user_older_than_a_change(
    stores: Stores, clock: Clock
) -> None:
    # The users file takes a group away while a session's minute write is under way:
    # the change's message drops the session, the next request reads the user afresh,
    # and the write that ends after it must not put the older user back in the cache.
    gated = _GatedReads(stores.sessions)
    sessions = manager(stores, clock, gated, cache_ttl=3600.0)
    user = dataclasses.replace(await make_user(stores), groups=("admins",))
    await stores.users.update(user)
    sid, _ = await sessions.create(user, ("pwd",), ip=None, user_agent=None)
    assert (await sessions.load(sid, "acme")).user.groups == ("admins",)  # type: ignore[union-attr]
    clock.advance(TOUCH_INTERVAL + 1)
    gated.armed = True
    touching = asyncio.ensure_future(sessions.load(sid, "acme"))  # the write, held
    while not sessions._writes:
        await asyncio.sleep(0.01)
    await stores.users.update(dataclasses.replace(user, groups=()))
    await sessions._received(f"user:acme:{user.id}")
    gated.armed = False
    fresh = await sessions.load(sid, "acme")
    assert fresh is not None and fresh.user.groups == ()
    gated.gate.set()
    await touching
    await _settle(sessions)  # the held write ends (behind the request that began it)
    again = await sessions.load(sid, "acme")
    assert again is not None and again.user.groups == (), "the touch put the old user back"


# --- the minute's write (touch) of a session served from its cache entry ----------------


async def _busy_session(
    stores: Stores, clock: Clock, cache_ttl: float = 3600.0
) -> tuple[SessionManager, _GatedReads, str]:
    """A session read into the cache, and a minute later: its write is due."""
    gated = _GatedReads(stores.sessions)
    sessions = manager(stores, clock, gated, cache_ttl=cache_ttl)
    sid, _ = await sessions.create(await make_user(stores), ("pwd",), ip=None, user_agent=None)
    assert await sessions.load(sid, "acme") is not None
    clock.advance(TOUCH_INTERVAL + 1)
    return sessions, gated, sid


async def test_a_busy_sessions_minute_write_is_not_waited_for(stores: Stores, clock: Clock) -> None:
    sessions, gated, sid = await _busy_session(stores, clock)
    gated.armed = True  # the write is held
    loads = asyncio.gather(*(sessions.load(sid, "acme") for _ in range(20)))
    found = await asyncio.wait_for(loads, 2)  # served from the cache, not after the write
    assert all(active is not None for active in found)
    assert gated.touches == 1
    gated.gate.set()
    await _settle(sessions)
    # written, and the cache entry holds what was written
    stored = await stores.sessions.get(hash_session_id(sid))
    assert stored is not None and stored.last_seen == clock.now
    again = await sessions.load(sid, "acme")
    assert again is not None and again.record.last_seen == clock.now
    assert gated.touches == 1


async def test_a_failing_minute_write_makes_the_next_requests_wait_and_fail_closed(
    stores: Stores, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    sessions, gated, sid = await _busy_session(stores, clock)
    gated.touch_failing = True  # reads work, writes fail (a read-only replica, a locked file)
    assert await sessions.load(sid, "acme") is not None  # served; its write fails behind it
    await _settle(sessions)
    said = [r.getMessage() for r in caplog.records]
    assert any(
        "could not write a session's last use" in m and "the last: StoreUnavailable" in m
        for m in said
    )
    for _ in range(3):  # from then on each request waits for its write: a 503, as before
        with pytest.raises(StoreUnavailable):
            await sessions.load(sid, "acme")
    assert gated.touches == 4
    gated.touch_failing = False  # the store takes writes again
    active = await sessions.load(sid, "acme")
    assert active is not None and active.record.last_seen == clock.now
    clock.advance(TOUCH_INTERVAL + 1)  # and the next minute's write is behind the request
    gated.armed = True
    assert await asyncio.wait_for(sessions.load(sid, "acme"), 2) is not None
    gated.gate.set()
    await _settle(sessions)


@pytest.mark.parametrize("behind", ["read ahead", "minute write"])
async def test_a_store_call_behind_a_request_that_finds_the_session_gone_drops_it_at_once(
    stores: Stores, clock: Clock, behind: str
) -> None:
    if behind == "read ahead":  # in the last quarter of its entry, the session is read
        sessions, _, sid = await _cached_session(stores, clock)
        clock.advance(1.6)
    else:  # a minute after it was read, the session is written
        sessions, _, sid = await _busy_session(stores, clock)
    # Deleted in the store with no message on the bus (another process, a lost event).
    assert await stores.sessions.revoke(hash_session_id(sid))
    # This request is inside the cache's bound; the store call it starts finds nothing...
    assert await sessions.load(sid, "acme") is not None
    await _settle(sessions)
    # ...and the entry is gone before its end.
    assert await sessions.load(sid, "acme") is None


async def test_a_minute_write_after_a_store_read_is_waited_for_and_fails_closed(
    stores: Stores, clock: Clock
) -> None:
    # Without a cache entry to serve from (cache_ttl 0: every request reads), the request
    # that reads the session waits for its write, and a store that refuses it is a 503.
    sessions, gated, sid = await _busy_session(stores, clock, cache_ttl=0.0)
    gated.touch_failing = True
    with pytest.raises(StoreUnavailable):
        await sessions.load(sid, "acme")
    gated.touch_failing = False
    active = await sessions.load(sid, "acme")
    assert active is not None and active.record.last_seen == clock.now
