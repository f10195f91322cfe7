"""Sessions as DESIGN.md section 6 states them: opaque ids, hashed in the store,
rotated at every rise in level, revoked everywhere at once.

The hot path only reads: a session is written at most once a minute (coarse
`last_seen` for the idle timeout, rolling expiry once `refresh_after` has passed).
A per-process cache holds a session for `cache_ttl` seconds at most (and at most
`cache_size` sessions, least recently used first out), and every revocation is
published on the event bus so every process drops it at once.

The user behind a session comes from the database; so that signed-in people keep
working while the database is down (sessions in Redis), each process remembers
the users it loaded recently and uses that copy only when the database cannot
answer (never longer than USER_FALLBACK_SECONDS, and dropped on revocation).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from gateway.config.model import SessionsConfig, TenantConfig
from gateway.errors import StoreFull, StoreUnavailable
from gateway.logs import Occasional
from gateway.single_flight import OncePerEntry, SingleFlight, read_ahead_from
from gateway.stores import (
    REVOCATIONS,
    SESSION_USED,
    EventBus,
    SessionRecord,
    SessionStore,
    Subscription,
    User,
    UserStore,
    session_revoked,
    session_used,
    user_sessions_revoked,
)
from gateway.stores.ids import hash_session_id, looks_like_id_hash, new_session_id

log = logging.getLogger("authgate.sessions")

TOUCH_INTERVAL = 60.0  # the hot path writes a session at most this often
STEP_UP = "step_up"  # SessionRecord.data key: a second factor is owed before anything else
USER_FALLBACK_SECONDS = 3600.0  # how stale a remembered user may be during a database outage
RESYNC = "resync"  # event kind: the bus may have lost messages, forget every cached session
# Uses a full store refused to write (of this process's sessions and, through the
# revocations channel, every other's), remembered per process: as many as the cache
# holds, and at least this many (even with the cache off, when every request reads the
# store and would find a write due).
_UNWRITTEN_MIN = 4096


@dataclass(frozen=True, slots=True)  # one per cached session: no per-instance __dict__
class ActiveSession:
    """A live session with its user, as the pipeline needs it."""

    id_hash: str
    record: SessionRecord
    user: User

    @property
    def owes_second_factor(self) -> bool:
        """True until `elevate` (which writes fresh data) after an unusual sign-in."""
        return any(key == STEP_UP for key, _ in self.record.data)


@dataclass(frozen=True, slots=True)
class Touched:
    """What the minute's write of a session moved: its last use and expiry as written,
    or, refused by a full store, the use noted (and published) with the expiry as it
    was. A session the write found gone is None instead."""

    last_seen: float
    expires: float

    def onto(self, active: ActiveSession) -> ActiveSession:
        """`active` as this write left it. Each request sharing a write applies it to
        the session it read itself, never to the one whoever began the write had read
        (which may predate the cache's bound: SingleFlight). Never backwards: another
        process may have written a later use since."""
        record = active.record
        if record.last_seen >= self.last_seen and record.expires >= self.expires:
            return active
        record = replace(
            record,
            last_seen=max(record.last_seen, self.last_seen),
            expires=max(record.expires, self.expires),
        )
        return ActiveSession(active.id_hash, record, active.user)


def fingerprint(id_hash: str) -> str:
    """A short, non-reversible tag of a session for logs and audit rows (never the id)."""
    return id_hash[:12]


class RevocationFollower:
    """Follows the REVOCATIONS channel between `follow()` and `stop()`; a subclass says
    what each message means to its own caches."""

    _subscription: Subscription | None = None
    # Revocation messages received so far. A store read begun before a message may
    # hold what it revoked: a subclass caches a read only if this did not move.
    _epoch = 0

    async def follow(self, events: EventBus) -> None:
        self._subscription = await events.subscribe(REVOCATIONS, self._received)

    async def _received(self, message: str) -> None:
        if message.partition(":")[0] != SESSION_USED:  # (a use revokes nothing)
            self._epoch += 1
        await self._on_revocation(message)

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.close()
            self._subscription = None

    async def _on_revocation(self, message: str) -> None:
        raise NotImplementedError


class SessionManager(RevocationFollower):
    def __init__(
        self,
        store: SessionStore,
        users: UserStore,
        events: EventBus,
        config: SessionsConfig,
        *,
        tenants: Iterable[TenantConfig] = (),
        now: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.users = users
        self.events = events
        self.config = config
        # Tenants with session lifetimes of their own (`tenants[].sessions`).
        self._tenants: dict[str, SessionsConfig] = {
            t.id: t.sessions.over(config) for t in tenants if t.sessions.over(config) != config
        }
        self.now = now
        self._monotonic = monotonic
        # id_hash → (cached until, session), in least-recently-used order
        self._cache: OrderedDict[str, tuple[float, ActiveSession]] = OrderedDict()
        # cookie value -> its SHA-256 (a hash per request was 2 % of a worker's time).
        self._hashes: dict[str, str] = {}
        # A store read shared by the requests for a session arriving while it is under
        # way. Without this, a busy session whose cache entry ends sends every request in
        # flight to the store at once — the stalls of hundreds of ms seen under load.
        # Shared only by requests arriving within cache_ttl of its start, so that the
        # cache's bound holds for them too (with cache_ttl 0, each request reads).
        self._inflight: SingleFlight[tuple[str, str, int], ActiveSession | None] = SingleFlight(
            config.cache_ttl, monotonic
        )
        # Likewise the minute's write, one per session at a time. Sharing it hands out
        # no session, only what the write did (Touched), so it needs no such bound: a
        # write that hangs is waited for until the store's own timeout ends it.
        self._writes: SingleFlight[tuple[str, str, int], Touched | None] = SingleFlight()
        self._read_ahead_for: OncePerEntry[str] = OncePerEntry(config.cache_size)
        # The minute's write of a session served from its cache entry is made behind the
        # request, unless the last such write failed: then requests wait for their
        # writes again, and fail with the store (a 503), until one succeeds.
        self._writes_failing = False
        self._touch_failed = Occasional(
            log,
            "could not write a session's last use: requests wait for that write again,"
            " and fail while the store refuses it",
            clock=monotonic,
        )
        # id_hash → the last use a full store refused to write, by any process (each
        # says so on the revocations channel). Read over the store's `last_seen`, so
        # that a session in use is not idled out, nor its write tried on every request,
        # while the store cannot write it. Never dropped because the store caught up (a
        # read that began before that write may end after it): the later of the two counts.
        self._unwritten: OrderedDict[str, float] = OrderedDict()
        self._use_not_said = Occasional(
            log, "could not tell the other processes of a session's use", clock=monotonic
        )
        self._saying: set[asyncio.Future[None]] = set()  # those uses being published
        # user id → (loaded at, user): the fallback while the database is down
        self._known_users: OrderedDict[str, tuple[float, User]] = OrderedDict()
        self._full_warning = Occasional(
            log,
            "the session store is full and refuses writes: sessions are served unrefreshed"
            " and nobody can sign in until memory is freed",
            clock=monotonic,
        )

    def settings(self, tenant: str) -> SessionsConfig:
        """The session settings of a tenant: its own lifetimes over the `sessions` section."""
        return self._tenants.get(tenant, self.config)

    async def start(self) -> None:
        await self.follow(self.events)

    async def _on_revocation(self, message: str) -> None:
        kind, _, rest = message.partition(":")
        if kind == "session":
            self._forget_session(rest)
        elif kind == SESSION_USED:
            id_hash, _, at = rest.rpartition(":")
            try:
                used = float(at)
            except ValueError:
                return
            if looks_like_id_hash(id_hash) and math.isfinite(used):
                # Never later than now: a use to come would keep a session from idling
                # out, and its write from being due, for as long as it is ahead.
                self._note_use(id_hash, min(used, self.now()))
        elif kind == RESYNC:
            self._cache.clear()
        elif kind == "user":
            tenant, _, user_id = rest.partition(":")
            self._known_users.pop(user_id, None)
            for key, (_, active) in list(self._cache.items()):
                if active.record.tenant == tenant and active.record.user_id == user_id:
                    self._cache.pop(key, None)

    # --- reading (the hot path) -------------------------------------------------

    async def load(
        self, session_id: str, tenant: str, *, touch: bool = True
    ) -> ActiveSession | None:
        """The live session for this cookie value in this tenant, or None.

        `touch=False` only reads (logout: a Redis that refuses writes, being full,
        still deletes, so a sign-out must not hang on the once-a-minute write)."""
        if not 20 <= len(session_id) <= 128:
            return None
        id_hash = self._hashes.get(session_id)
        if id_hash is None:
            id_hash = hash_session_id(session_id)
            if len(self._hashes) >= max(self.config.cache_size, 1):
                self._hashes.clear()
            self._hashes[session_id] = id_hash
        cached = self._cache.get(id_hash)
        mono = self._monotonic()
        ahead_from = math.inf  # when to read the entry again, if it served this
        from_cache = False
        if cached is not None and cached[0] > mono:
            from_cache = True
            active = cached[1]
            self._cache.move_to_end(id_hash)
            ahead_from = read_ahead_from(cached[0], self.config.cache_ttl)
        else:
            found = await self._inflight.join(self._read_key(id_hash), lambda: self._read(id_hash))
            if found is None:
                return None
            active = found
        if active.record.tenant != tenant:
            return None  # a session of one tenant is worthless on another's domains
        now = self.now()
        record = active.record
        if record.expires <= now:
            self._cache.pop(id_hash, None)
            return None
        if now > self._idle_end(record):
            self._cache.pop(id_hash, None)
            await self.store.revoke(id_hash)
            return None
        if touch and now - record.last_seen >= TOUCH_INTERVAL:
            key = ("touch", id_hash, self._epoch)
            if not from_cache or self._writes_failing:
                # Just read from the store, or its writes fail: waited for, as a read is.
                touched = await self._writes.join(key, lambda: self._touch(active, now))
                if touched is None:
                    return None
                updated = touched.onto(active)
                entry = self._cache.get(id_hash)
                # The cached object itself when it is this very session: its lease holds.
                return entry[1] if entry is not None and entry[1] == updated else updated
            # Served from its cache entry, within the cache's bound like any cached
            # request: the write is not waited for (one at a time per session). It drops
            # the entry when the session is gone from the store, and updates it when
            # written; if the entry changed meanwhile, the next request writes again.
            self._writes.start(key, lambda: self._touch_behind(active, now))
        if mono > ahead_from:
            self._read_ahead(id_hash, cached)
        return active

    def _idle_end(self, record: SessionRecord) -> float:
        """When a session last seen at `record.last_seen` is idled out: its tenant's
        idle timeout after that, plus the interval between writes of `last_seen`
        (infinite when the tenant sets none)."""
        idle = self.settings(record.tenant).idle_timeout
        return record.last_seen + idle + TOUCH_INTERVAL if idle else math.inf

    def lease(self, active: ActiveSession) -> Callable[[], bool] | None:
        """A check that says whether `active`, just returned by `load`, would be
        returned again now without asking the store: while its cache entry is the very
        one `load` read it from (a revocation, a user's change, a touch or a fresh read
        replace or drop it) and neither that entry nor the session has run out. None
        when it is not cached (the cache is off, or a revocation came meanwhile)."""
        id_hash = active.id_hash
        cache = self._cache
        entry = cache.get(id_hash)
        if entry is None or entry[1] is not active:
            return None
        monotonic, now = self._monotonic, self.now
        # Its end as `load` judges it: expired, or idled out (the last use cached; a
        # later one, written or noted, replaces the entry).
        until, ends = entry[0], min(active.record.expires, self._idle_end(active.record))
        # Requests served on a reused decision do not call `load`: they read ahead too.
        ahead, read_ahead = read_ahead_from(until, self.config.cache_ttl), self._read_ahead

        # The session's end on the clock `load` judges it by, not converted to the
        # monotonic one: the two may drift apart (NTP slews, the store's clock is read
        # again), and a reused decision must end when a fresh one would.
        def still_valid() -> bool:
            if cache.get(id_hash) is not entry:
                return False
            mono = monotonic()
            if mono >= until or now() >= ends:
                return False
            if mono > ahead:
                read_ahead(id_hash, entry)
            return True

        return still_valid

    def _read_ahead(self, id_hash: str, entry: tuple[float, ActiveSession] | None) -> None:
        """Read the session again while its cache `entry` still serves: a busy
        session's requests then never all wait for the store at the entry's end. Once
        per entry: a read that fails (the store is down) is not tried again on every
        request; the entry's end meets the outage, as it would have."""
        if entry is None or not self._read_ahead_for.first(id_hash, entry):
            return
        self._inflight.start(self._read_key(id_hash), lambda: self._read(id_hash))

    def _read_key(self, id_hash: str) -> tuple[str, str, int]:
        # Keyed by the epoch too: a request arriving after a revocation message does not
        # wait for (and trust) a read begun before it; it reads again.
        return ("read", id_hash, self._epoch)

    async def _read(self, id_hash: str) -> ActiveSession | None:
        """The session from the store, cached until cache_ttl after the read began
        unless a revocation arrived meanwhile (the read may predate it)."""
        began, epoch = self._monotonic(), self._epoch
        found = await self._fetch(id_hash)
        if found is None:
            self._cache.pop(id_hash, None)
        elif epoch == self._epoch:
            until = began + self.config.cache_ttl
            # Not once its time is up: a read that hung past the bound (which may end
            # after one begun later, SingleFlight) would replace a fresher entry.
            if until > self._monotonic():
                self._remember(id_hash, until, found)
        return found

    def _remember(self, id_hash: str, until: float, active: ActiveSession) -> None:
        limit = self.config.cache_size
        if limit <= 0 or self.config.cache_ttl <= 0:
            return
        self._cache[id_hash] = (until, active)
        self._cache.move_to_end(id_hash)
        while len(self._cache) > limit:
            self._cache.popitem(last=False)

    async def _fetch(self, id_hash: str) -> ActiveSession | None:
        record = await self.store.get(id_hash)
        if record is None:
            self._unwritten.pop(id_hash, None)
            return None
        user = await self._user(record.user_id)
        if user is None or user.disabled or user.tenant != record.tenant:
            return None
        # Read after the user: a use noted while the user was read counts too.
        noted = self._unwritten.get(id_hash)
        if noted is not None and noted > record.last_seen:
            record = replace(record, last_seen=noted)
        return ActiveSession(id_hash, record, user)

    async def _user(self, user_id: str) -> User | None:
        """The user from the database; while it is down, the copy loaded recently."""
        try:
            user = await self.users.get(user_id)
        except StoreUnavailable:
            known = self._known_users.get(user_id)
            if known is None or self._monotonic() - known[0] > USER_FALLBACK_SECONDS:
                raise
            log.warning(
                "user store unavailable; using the user loaded %.0f s ago",
                self._monotonic() - known[0],
            )
            return known[1]
        if user is None:
            self._known_users.pop(user_id, None)
        elif max(self.config.cache_size, 0):
            known = self._known_users.get(user_id)
            if known is not None and known[1] == user:
                # Unchanged: the one object already held, so that the cached sessions of
                # one user share it (a user with many sessions is held once, not each time).
                user = known[1]
            self._known_users[user_id] = (self._monotonic(), user)
            self._known_users.move_to_end(user_id)
            while len(self._known_users) > self.config.cache_size:
                self._known_users.popitem(last=False)
        return user

    async def _touch(self, active: ActiveSession, now: float) -> Touched | None:
        """Write `active`'s last use (and rolling expiry); None when the store no longer
        has the session. What it wrote is applied to the session's cache entry, whichever
        read made it (unless a revocation or change arrived meanwhile)."""
        record = active.record
        expires = record.expires
        if now - record.created >= self.config.refresh_after:
            # Rolling refresh: an active session keeps its full lifetime.
            expires = max(expires, now + self._lifetime(record.tenant, record.remember))
        epoch = self._epoch
        try:
            touched = await self.store.touch(active.id_hash, now, expires)
            self._writes_failing = False  # the store answered
        except StoreFull:
            # Only the write that extends the session is refused; the session itself was
            # just read (or is cached within its bound), and a revocation is a deletion,
            # which a full store still makes. Serve it: a full Redis then stops new
            # sign-ins, not every user. Its use is noted here, so that this process
            # neither idles it out nor tries the write again for a minute; its expiry
            # stays (the store ends it then).
            self._writes_failing = False  # the store answered
            self._full_warning.note()
            if epoch == self._epoch:  # (else it may have been revoked meanwhile)
                self._note_use(active.id_hash, now)
                self._say_use(active.id_hash, now)
            return Touched(now, record.expires)
        if not touched:
            self._cache.pop(active.id_hash, None)
            return None
        written = Touched(now, expires)
        # Onto the entry cached now, whichever read made it (a fresher read after a
        # user's change, or a read ahead, keeps its newer user), unless a revocation or
        # change arrived meanwhile (it dropped the entry; a read before it may be cached).
        entry = self._cache.get(active.id_hash)
        if entry is not None and epoch == self._epoch:
            self._cache[active.id_hash] = (entry[0], written.onto(entry[1]))
        return written

    def _forget_session(self, id_hash: str) -> None:
        """A revoked session: out of the cache, and its noted use with it."""
        self._cache.pop(id_hash, None)
        self._unwritten.pop(id_hash, None)

    def _note_use(self, id_hash: str, at: float) -> None:
        """Remember a use the store refused to write (the oldest noted first out past
        the bound, _UNWRITTEN_MIN), and move the session's cache entry's last use to it.
        Only `last_seen` moves: never the expiry, and never a session the store no
        longer has (a read finds none; a revocation drops the entry and the note)."""
        unwritten = self._unwritten
        if at <= unwritten.get(id_hash, -math.inf):
            return
        unwritten[id_hash] = at
        unwritten.move_to_end(id_hash)
        while len(unwritten) > max(self.config.cache_size, _UNWRITTEN_MIN):
            unwritten.popitem(last=False)
        entry = self._cache.get(id_hash)
        if entry is not None:
            active = entry[1]
            used = Touched(at, active.record.expires).onto(active)
            if used is not active:
                self._cache[id_hash] = (entry[0], used)

    def _say_use(self, id_hash: str, at: float) -> None:
        """Tell every process of a use the store refused to write (a full Redis still
        publishes), behind the request: it waits for no publishing. Not said, each
        process judges by what it has seen itself."""
        task = asyncio.ensure_future(self._publish_use(id_hash, at))
        self._saying.add(task)
        task.add_done_callback(self._saying.discard)

    async def _publish_use(self, id_hash: str, at: float) -> None:
        try:
            await self.events.publish(REVOCATIONS, session_used(id_hash, at))
        except Exception as exc:
            self._use_not_said.note(exc)

    async def stop(self) -> None:
        for task in list(self._saying):
            task.cancel()
        await super().stop()

    async def _touch_behind(self, active: ActiveSession, now: float) -> Touched | None:
        """`_touch`, when no request waits for it. A failure is said (occasionally) and
        makes the next writes waited for; it is still raised to a request that joins."""
        try:
            return await self._touch(active, now)
        except Exception as exc:
            self._writes_failing = True
            self._touch_failed.note(exc)
            raise

    def _lifetime(self, tenant: str, remember: bool) -> float:
        settings = self.settings(tenant)
        return settings.remember_me_lifetime if remember else settings.lifetime

    # --- writing (sign-in, step-up, sign-out) -----------------------------------

    async def create(
        self,
        user: User,
        amr: tuple[str, ...],
        *,
        ip: str | None,
        user_agent: str | None,
        country: str | None = None,
        remember: bool = False,
        replaces: str | None = None,
        step_up: bool = False,
    ) -> tuple[str, SessionRecord]:
        """A new session (new id) for a fresh sign-in; `replaces` (a cookie value) is revoked.

        With `step_up` (an unusual sign-in: impossible travel, a new country) the session
        is worth nothing but the second-factor pages until it is elevated."""
        now = self.now()
        session_id = new_session_id()
        record = SessionRecord(
            id_hash=hash_session_id(session_id),
            tenant=user.tenant,
            user_id=user.id,
            amr=amr,
            auth_time=now,
            created=now,
            last_seen=now,
            expires=now + self._lifetime(user.tenant, remember),
            ip=ip,
            user_agent=(user_agent or "")[:256] or None,
            country=country,
            remember=remember,
            data=((STEP_UP, "1"),) if step_up else (),
        )
        await self.store.create(record)
        if replaces:
            await self.revoke(replaces)
        return session_id, record

    async def elevate(
        self, session_id: str, amr: tuple[str, ...], *, data: tuple[tuple[str, str], ...] = ()
    ) -> tuple[str, SessionRecord] | None:
        """Rotate to a new id with a higher level (no fixation); None if the session is gone."""
        old_hash = hash_session_id(session_id)
        record = await self.store.get(old_hash)
        if record is None:
            return None
        now = self.now()
        new_id = new_session_id()
        new = replace(
            record,
            id_hash=hash_session_id(new_id),
            amr=amr,
            auth_time=now,
            last_seen=now,
            data=data,
        )
        self._epoch += 1  # reads under way may hold the old session: not to be cached
        try:
            if not await self.store.rotate(old_hash, new):
                return None
        except StoreUnavailable:
            # Perhaps done but not confirmed (a replica wait): told all the same.
            await self._publish(session_revoked(old_hash), old_hash)
            raise
        await self._publish(session_revoked(old_hash), old_hash)
        return new_id, new

    async def revoke(self, session_id: str) -> bool:
        return await self.revoke_hash(hash_session_id(session_id))

    async def revoke_hash(self, id_hash: str) -> bool:
        self._epoch += 1  # reads under way may hold it: not to be cached
        try:
            revoked = await self.store.revoke(id_hash)
        finally:
            # Also when the store failed: the deletion may be done but not confirmed (a
            # replica wait), and every cache must forget the session either way.
            await self._publish(session_revoked(id_hash), id_hash)
        return revoked

    async def revoke_user(self, tenant: str, user_id: str) -> int:
        """Log out everywhere."""
        self._epoch += 1  # reads under way may hold their sessions: not to be cached
        try:
            return await self.store.revoke_user(tenant, user_id)
        finally:  # also when the store failed, as in revoke_hash
            self._known_users.pop(user_id, None)
            for key, (_, active) in list(self._cache.items()):
                if active.record.tenant == tenant and active.record.user_id == user_id:
                    self._cache.pop(key, None)
            await self._publish(user_sessions_revoked(tenant, user_id))

    async def _publish(self, message: str, id_hash: str | None = None) -> None:
        # This process does not wait for its own message to come back (0.5 s on the SQL
        # bus, never if publishing fails): a read begun during the write is not cached.
        self._epoch += 1
        if id_hash is not None:
            self._forget_session(id_hash)
        try:
            await self.events.publish(REVOCATIONS, message)
        except Exception:
            # The store already forgot the session; other processes drop it when their
            # cache entry ends (cache_ttl). Log loudly, don't undo the revocation.
            log.exception("could not publish a revocation")
