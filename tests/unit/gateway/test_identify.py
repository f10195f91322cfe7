"""The identify hook over a real SQLite store: the session cookie is read and removed,
and what is forwarded follows the user as the session manager reloads it (the
per-session identity it builds once must never go stale)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import make_mocked_request

from gateway import identify as identify_module
from gateway.config.model import Config, SessionsConfig, TenantConfig
from gateway.errors import StoreUnavailable
from gateway.identify import Identifier, split_cookie
from gateway.pipeline import RequestIds
from gateway.sessions import SessionManager
from gateway.stores import (
    REVOCATIONS,
    ApiKey,
    Stores,
    User,
    api_key_revoked,
    new_id,
    open_stores,
)
from gateway.stores.ids import hash_api_key
from tests.integration.users import store_api_key
from tests.slow_stores import GatedUsers


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0
        self.mono = 0.0


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return Config(
        source=tmp_path / "config.yaml",
        tenants=(TenantConfig(id="acme", name="Acme", domains=("acme.test",)),),
        storage=f"sqlite:///{tmp_path / 'a.db'}",
        sessions=SessionsConfig(cache_ttl=2.0),
    )


@pytest.fixture
async def stores(config: Config, clock: Clock) -> AsyncIterator[Stores]:
    opened = await open_stores(config, clock=lambda: clock.now)
    yield opened
    await opened.close()


def identifier(config: Config, stores: Stores, clock: Clock) -> Identifier:
    sessions = SessionManager(
        stores.sessions,
        stores.users,
        stores.events,
        config.sessions,
        now=lambda: clock.now,
        monotonic=lambda: clock.mono,
    )
    return Identifier(config, sessions, stores.users, stores.apikeys, None, now=lambda: clock.now)


async def bot_with_key(stores: Stores) -> tuple[str, ApiKey]:
    user = User(new_id(), "acme", "bot", None, None, (), (), False, None, 0.0, 0.0)
    await stores.users.create(user)
    return await store_api_key(stores, user)


def with_key(key: str) -> object:
    return make_mocked_request(
        "GET", "/", headers={"Host": "acme.test", "Authorization": f"Bearer {key}"}
    )


def request_with(cookie: str) -> object:
    return make_mocked_request("GET", "/", headers={"Host": "acme.test", "Cookie": cookie})


async def test_forwarded_identity_follows_the_user_when_the_session_is_reloaded(
    config: Config, stores: Stores, clock: Clock
) -> None:
    user = User(new_id(), "acme", "alice", None, None, ("staff",), (), False, None, 0.0, 0.0)
    await stores.users.create(user)
    identify = identifier(config, stores, clock)
    sid, _ = await identify.sessions.create(user, ("pwd",), ip=None, user_agent=None)
    tenant = config.tenants[0]
    cookie = f"theme=dark; {config.sessions.cookie_name}={sid}; lang=en"

    first = await identify(request_with(cookie), tenant, None)  # type: ignore[arg-type]
    assert first.principal is not None and first.principal.groups == {"staff"}
    assert first.upstream_headers is not None
    assert first.upstream_headers["Remote-Groups"] == "staff"
    assert first.upstream_headers["Cookie"] == "theme=dark; lang=en"
    assert "cookie" in first.strip_headers

    await stores.users.update(dataclasses.replace(user, groups=("admins",), updated=1.0))
    # Within the cache bound the cached session (and its identity) may still be served.
    again = await identify(request_with(cookie), tenant, None)  # type: ignore[arg-type]
    assert again.upstream_headers is not None
    assert again.upstream_headers["Remote-Groups"] == "staff"
    clock.mono += 3.0  # past sessions.cache_ttl: the session is reloaded with its user
    later = await identify(request_with(cookie), tenant, None)  # type: ignore[arg-type]
    assert later.principal is not None and later.principal.groups == {"admins"}
    assert later.upstream_headers is not None
    assert later.upstream_headers["Remote-Groups"] == "admins"


async def test_an_unknown_session_cookie_forwards_no_identity(
    config: Config, stores: Stores, clock: Clock
) -> None:
    identify = identifier(config, stores, clock)
    cookie = f"{config.sessions.cookie_name}={'x' * 43}; a=1"
    found = await identify(request_with(cookie), config.tenants[0], None)  # type: ignore[arg-type]
    assert found.principal is None
    assert found.upstream_headers is not None
    assert dict(found.upstream_headers) == {"Cookie": "a=1"}


@pytest.mark.parametrize(
    "header, value, rest",
    [
        ("s=abc", "abc", ""),
        ("a=1; s=abc; b=2", "abc", "a=1; b=2"),
        ("a=1;s=abc;b=2", "abc", "a=1; b=2"),
        ('s="abc"', "abc", ""),
        ("s=first; s=second", "second", ""),  # the last, as aiohttp's own parser reads it
        ("sx=abc; xs=def", None, "sx=abc; xs=def"),  # names that merely contain ours
        ("a=1", None, "a=1"),
        ("s=", "", ""),
        ("  s = abc ; ;", "abc", ""),
    ],
)
def test_the_session_cookie_is_split_from_the_others(
    header: str, value: str | None, rest: str
) -> None:
    assert split_cookie(header, "s") == (value, rest)


def test_request_ids_are_unique_and_each_forked_worker_numbers_its_own() -> None:
    ids = RequestIds()
    many = {ids.next() for _ in range(1000)}
    assert len(many) == 1000
    assert all(len(i) == 24 and int(i, 16) >= 0 for i in many)

    from gateway import pipeline

    parent = pipeline._REQUEST_IDS.next()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: what would a worker number its first request?
        os.write(write, pipeline._REQUEST_IDS.next().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.waitpid(pid, 0)
    os.close(read)
    assert len(child) == 24
    assert child[:12] != parent[:12], "a forked worker draws its own prefix"


async def test_a_revoked_api_key_leaves_every_process_cache_through_the_bus(
    config: Config, stores: Stores, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With an hour-long key cache, only the revocation message can end the key early.
    monkeypatch.setattr(identify_module, "_API_KEY_CACHE_SECONDS", 3600.0)
    key, record = await bot_with_key(stores)
    identify = identifier(config, stores, clock)
    await identify.start(stores.events)
    tenant = config.tenants[0]

    try:
        found = await identify(with_key(key), tenant, None)  # type: ignore[arg-type]
        assert found.principal is not None and found.principal.user == "bot"
        await stores.apikeys.revoke(record.id)
        # Still cached: the store alone does not reach this process's cache ...
        found = await identify(with_key(key), tenant, None)  # type: ignore[arg-type]
        assert found.principal is not None
        # ... the message does (the SQL bus polls every POLL_INTERVAL).
        await stores.events.publish(REVOCATIONS, api_key_revoked(record.id))
        for _ in range(100):
            found = await identify(with_key(key), tenant, None)  # type: ignore[arg-type]
            if found.principal is None:
                break
            await asyncio.sleep(0.1)
        assert found.principal is None
    finally:
        await identify.stop()


async def test_a_key_read_begun_before_its_revocation_message_is_not_cached(
    config: Config, stores: Stores, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The key is read (record, then user) while its revocation message arrives: the
    # answer of that read may be the revoked key, so it must not be kept for an hour.
    monkeypatch.setattr(identify_module, "_API_KEY_CACHE_SECONDS", 3600.0)
    key, record = await bot_with_key(stores)
    users, received = GatedUsers(stores.users, armed=True), asyncio.Event()

    class Told(Identifier):
        async def _on_revocation(self, message: str) -> None:
            await super()._on_revocation(message)
            received.set()

    sessions = SessionManager(stores.sessions, stores.users, stores.events, config.sessions)
    identify = Told(config, sessions, users, stores.apikeys, None, now=lambda: clock.now)  # type: ignore[arg-type]
    await identify.start(stores.events)
    tenant = config.tenants[0]

    try:
        reading = asyncio.ensure_future(identify(with_key(key), tenant, None))  # type: ignore[arg-type]
        await asyncio.wait_for(users.entered.wait(), 5)
        await stores.apikeys.revoke(record.id)
        await stores.events.publish(REVOCATIONS, api_key_revoked(record.id))
        await asyncio.wait_for(received.wait(), 10)  # the SQL bus polls
        users.gate.set()
        await reading  # answered as it was read: it began before the revocation
        found = await identify(with_key(key), tenant, None)  # type: ignore[arg-type]
        assert found.principal is None, "the read begun before the revocation was cached"
    finally:
        await identify.stop()


async def test_a_key_read_that_hangs_past_the_cache_bound_is_not_shared_with_later_requests(
    config: Config, stores: Stores, clock: Clock
) -> None:
    # The database hangs in a read that found the key valid, and the revocation's message
    # is lost (revoked in the store alone). A request arriving more than the key cache's
    # lifetime after that read began reads for itself, and finds the key revoked.
    key, record = await bot_with_key(stores)
    users = GatedUsers(stores.users, armed=True)
    sessions = SessionManager(stores.sessions, stores.users, stores.events, config.sessions)
    identify = Identifier(
        config,
        sessions,
        users,  # type: ignore[arg-type]
        stores.apikeys,
        None,
        now=lambda: clock.now,
        monotonic=lambda: clock.mono,
    )
    tenant = config.tenants[0]
    first = asyncio.ensure_future(identify(with_key(key), tenant, None))  # type: ignore[arg-type]
    await asyncio.wait_for(users.entered.wait(), 5)  # the key was read; its user is held
    assert await stores.apikeys.revoke(record.id)
    clock.mono += identify_module._API_KEY_CACHE_SECONDS + 0.5
    later = asyncio.ensure_future(identify(with_key(key), tenant, None))  # type: ignore[arg-type]
    # Its own read needs no user (the key is revoked): it ends while the first is held.
    await asyncio.wait([later], timeout=5)
    users.gate.set()
    assert (await first).principal is not None  # answered as it was read
    assert (await later).principal is None, "the later request took the held read's answer"


async def test_a_keys_last_use_is_recorded_at_most_every_few_minutes(
    config: Config, stores: Stores, clock: Clock
) -> None:
    key, _ = await bot_with_key(stores)
    identify = identifier(config, stores, clock)
    tenant = config.tenants[0]

    async def last_used() -> float | None:
        stored = await stores.apikeys.get_by_hash(hash_api_key(key))
        assert stored is not None
        return stored.last_used

    assert await last_used() is None
    first = clock.now
    found = await identify(with_key(key), tenant, None)  # type: ignore[arg-type]
    assert found.principal is not None
    for _ in range(50):  # written off the request's path
        if await last_used() is not None:
            break
        await asyncio.sleep(0.01)
    assert await last_used() == first
    clock.now += 60
    await identify(with_key(key), tenant, None)  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    assert await last_used() == first  # not written again within the interval


class _CountedKeys:
    """The real API-key store, counting reads, each a round trip long."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.reads = 0
        self.failing = False

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def get_by_hash(self, key_hash: str) -> object:
        self.reads += 1
        if self.failing:
            raise StoreUnavailable("the database is down")
        await asyncio.sleep(0.01)
        return await self.inner.get_by_hash(key_hash)  # type: ignore[attr-defined]


def _counted(config: Config, stores: Stores, clock: Clock) -> tuple[Identifier, _CountedKeys]:
    keys = _CountedKeys(stores.apikeys)
    sessions = SessionManager(stores.sessions, stores.users, stores.events, config.sessions)
    identify = Identifier(
        config,
        sessions,
        stores.users,
        keys,  # type: ignore[arg-type]
        None,
        now=lambda: clock.now,
        monotonic=lambda: clock.mono,
    )
    return identify, keys


async def _reads_done(identify: Identifier) -> None:
    for _ in range(500):  # SQLite answers from a thread: wait for the read itself
        await asyncio.sleep(0.01)
        if not identify._key_reads:
            return
    raise AssertionError("a key read never ended")


async def _known(identify: Identifier, config: Config, key: str) -> bool:
    """Whether a request bearing `key` is identified as the key's holder."""
    found = await identify(with_key(key), config.tenants[0], None)  # type: ignore[arg-type]
    return found.principal is not None


async def test_a_busy_keys_requests_share_one_store_read(
    config: Config, stores: Stores, clock: Clock
) -> None:
    key, _ = await bot_with_key(stores)
    identify, keys = _counted(config, stores, clock)
    assert all(await asyncio.gather(*(_known(identify, config, key) for _ in range(50))))
    assert keys.reads == 1


async def test_a_busy_key_is_read_again_before_its_cache_entry_ends(
    config: Config, stores: Stores, clock: Clock
) -> None:
    key, _ = await bot_with_key(stores)
    identify, keys = _counted(config, stores, clock)
    lifetime = identify_module._API_KEY_CACHE_SECONDS
    assert await _known(identify, config, key)
    clock.mono += lifetime * 0.5
    assert await _known(identify, config, key)
    assert keys.reads == 1  # half its life left: from the cache alone
    clock.mono += lifetime * 0.3
    assert all(await asyncio.gather(*(_known(identify, config, key) for _ in range(20))))
    await _reads_done(identify)  # served at once, while one read renewed the entry
    assert keys.reads == 2
    clock.mono += lifetime * 0.3  # past the first entry's end
    assert await _known(identify, config, key)
    assert keys.reads == 2


async def test_a_key_read_ahead_that_finds_it_revoked_ends_it_before_its_cache_entry(
    config: Config, stores: Stores, clock: Clock
) -> None:
    key, record = await bot_with_key(stores)
    identify, _ = _counted(config, stores, clock)
    assert await _known(identify, config, key)
    await stores.apikeys.revoke(record.id)  # no message on the bus
    clock.mono += identify_module._API_KEY_CACHE_SECONDS * 0.8
    assert await _known(identify, config, key)  # within the bound; a read begins
    await _reads_done(identify)
    assert not await _known(identify, config, key)


async def test_a_key_read_that_ends_after_a_later_one_does_not_replace_its_entry(
    config: Config, stores: Stores, clock: Clock
) -> None:
    key, _ = await bot_with_key(stores)
    keys, users = _CountedKeys(stores.apikeys), GatedUsers(stores.users, armed=True)
    sessions = SessionManager(stores.sessions, stores.users, stores.events, config.sessions)
    identify = Identifier(
        config,
        sessions,
        users,  # type: ignore[arg-type]
        keys,  # type: ignore[arg-type]
        None,
        now=lambda: clock.now,
        monotonic=lambda: clock.mono,
    )
    first = asyncio.ensure_future(_known(identify, config, key))
    await asyncio.wait_for(users.entered.wait(), 5)  # held, begun at 0 s
    clock.mono += identify_module._API_KEY_CACHE_SECONDS + 0.5
    users.armed = False
    assert await _known(identify, config, key)  # its own read, cached from 5.5 s on
    users.gate.set()
    assert await first  # ends now: its entry would have ended at 5 s
    clock.mono += 0.1
    assert await _known(identify, config, key)
    assert keys.reads == 2, "the older read replaced the later one's entry"


async def test_a_failing_key_read_ahead_is_tried_once_per_entry(
    config: Config, stores: Stores, clock: Clock
) -> None:
    key, _ = await bot_with_key(stores)
    identify, keys = _counted(config, stores, clock)
    assert await _known(identify, config, key)
    keys.failing = True
    clock.mono += identify_module._API_KEY_CACHE_SECONDS * 0.8
    for _ in range(10):  # served from the cache while the store is down...
        assert await _known(identify, config, key)
        await _reads_done(identify)
    assert keys.reads == 2  # ...and asked once in all
