"""The stores on a SQL database (SQLite or PostgreSQL, through `Database`).

Times are UNIX seconds; tuples are stored as JSON arrays so both dialects share
one schema shape. Every query is a single statement or runs in a transaction,
so many processes sharing one database stay consistent.

Queries interpolate only the module's own constant column lists and fixed
column names; every value is a bound parameter.
"""
# ruff: noqa: S608

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import logging
import math
import time
from collections.abc import Callable

from gateway.errors import StoreUnavailable
from gateway.stores.base import (
    RESYNC,
    ApiKey,
    AuditEvent,
    Ban,
    Callback,
    NotFound,
    SessionRecord,
    SigningKey,
    User,
    normalize_username,
)
from gateway.stores.breaker import CircuitOpen
from gateway.stores.database import Database, Row

log = logging.getLogger(__name__)

Clock = Callable[[], float]


def _tuple(text: str) -> tuple[str, ...]:
    return tuple(str(item) for item in json.loads(text))


def _json(items: tuple[str, ...]) -> str:
    return json.dumps(list(items))


# --- users -------------------------------------------------------------------

_USER_COLUMNS = (
    "id, tenant, username, email, display_name, groups, roles, disabled,"
    " password_hash, created, updated"
)


def _user(row: Row) -> User:
    return User(
        id=row[0],
        tenant=row[1],
        username=row[2],
        email=row[3],
        display_name=row[4],
        groups=_tuple(row[5]),
        roles=_tuple(row[6]),
        disabled=bool(row[7]),
        password_hash=row[8],
        created=float(row[9]),
        updated=float(row[10]),
    )


class SqlUserStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, user: User) -> None:
        await self._db.execute(
            "INSERT INTO users (id, tenant, username, username_key, email, display_name,"
            " groups, roles, disabled, password_hash, created, updated)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            user.id,
            user.tenant,
            user.username,
            normalize_username(user.username),
            user.email,
            user.display_name,
            _json(user.groups),
            _json(user.roles),
            user.disabled,
            user.password_hash,
            user.created,
            user.updated,
        )

    async def get(self, user_id: str) -> User | None:
        row = await self._db.fetchone(f"SELECT {_USER_COLUMNS} FROM users WHERE id = ?", user_id)
        return _user(row) if row is not None else None

    async def get_by_username(self, tenant: str, username: str) -> User | None:
        row = await self._db.fetchone(
            f"SELECT {_USER_COLUMNS} FROM users WHERE tenant = ? AND username_key = ?",
            tenant,
            normalize_username(username),
        )
        return _user(row) if row is not None else None

    async def list(self, tenant: str) -> list[User]:
        rows = await self._db.fetch(
            f"SELECT {_USER_COLUMNS} FROM users WHERE tenant = ? ORDER BY username_key", tenant
        )
        return [_user(row) for row in rows]

    async def set_password(self, user_id: str, password_hash: str, updated: float) -> bool:
        changed = await self._db.execute_replicated(
            "UPDATE users SET password_hash = ?, updated = ? WHERE id = ? AND disabled = ?",
            password_hash,
            updated,
            user_id,
            False,
        )
        return changed > 0

    async def update(self, user: User) -> None:
        # A user disabled or stripped of a role must stay so through a failover.
        changed = await self._db.execute_replicated(
            "UPDATE users SET email = ?, display_name = ?, groups = ?, roles = ?,"
            " disabled = ?, password_hash = ?, updated = ? WHERE id = ?",
            user.email,
            user.display_name,
            _json(user.groups),
            _json(user.roles),
            user.disabled,
            user.password_hash,
            user.updated,
            user.id,
        )
        if changed == 0:
            raise NotFound(f"no user with id {user.id}")


# --- sessions ----------------------------------------------------------------

_SESSION_COLUMNS = (
    "id_hash, tenant, user_id, amr, auth_time, created, last_seen, expires,"
    " ip, user_agent, country, remember, data"
)


def _session(row: Row) -> SessionRecord:
    return SessionRecord(
        id_hash=row[0],
        tenant=row[1],
        user_id=row[2],
        amr=_tuple(row[3]),
        auth_time=float(row[4]),
        created=float(row[5]),
        last_seen=float(row[6]),
        expires=float(row[7]),
        ip=row[8],
        user_agent=row[9],
        country=row[10],
        remember=bool(row[11]),
        data=tuple((str(k), str(v)) for k, v in json.loads(row[12])),
    )


def _session_values(r: SessionRecord) -> tuple[object, ...]:
    """The columns of _SESSION_COLUMNS, in order."""
    return (
        r.id_hash,
        r.tenant,
        r.user_id,
        _json(r.amr),
        r.auth_time,
        r.created,
        r.last_seen,
        r.expires,
        r.ip,
        r.user_agent,
        r.country,
        r.remember,
        json.dumps([list(pair) for pair in r.data]),
    )


async def _insert_session(db: Database, r: SessionRecord) -> None:
    await db.execute(
        f"INSERT INTO sessions ({_SESSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        *_session_values(r),
    )


class SqlSessionStore:
    """Sessions in the storage database. Expired rows are invisible at once and
    deleted by `prune_expired()`."""

    def __init__(self, db: Database, clock: Clock = time.time) -> None:
        self._db = db
        self._clock = clock

    async def create(self, record: SessionRecord) -> None:
        await _insert_session(self._db, record)

    async def get(self, id_hash: str) -> SessionRecord | None:
        row = await self._db.fetchone(
            f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id_hash = ? AND expires > ?",
            id_hash,
            self._clock(),
        )
        return _session(row) if row is not None else None

    async def touch(self, id_hash: str, last_seen: float, expires: float) -> bool:
        changed = await self._db.execute(
            "UPDATE sessions SET last_seen = ?, expires = ? WHERE id_hash = ? AND expires > ?",
            last_seen,
            expires,
            id_hash,
            self._clock(),
        )
        return changed > 0

    async def rotate(self, old_hash: str, new: SessionRecord) -> bool:
        # In place, one UPDATE: a "log out everywhere" (DELETE … WHERE user_id) that
        # waits for this row's lock checks the new version of the row and deletes it.
        # A delete-and-insert would leave it a row it never saw (PostgreSQL, READ
        # COMMITTED): a live successor after the user was logged out everywhere.
        moved = await self._db.execute_replicated(
            "UPDATE sessions SET id_hash = ?, tenant = ?, user_id = ?, amr = ?, auth_time = ?,"
            " created = ?, last_seen = ?, expires = ?, ip = ?, user_agent = ?, country = ?,"
            " remember = ?, data = ? WHERE id_hash = ? AND expires > ?",
            *_session_values(new),
            old_hash,
            self._clock(),
        )
        return moved > 0

    async def revoke(self, id_hash: str) -> bool:
        deleted = await self._db.execute_replicated(
            "DELETE FROM sessions WHERE id_hash = ?", id_hash
        )
        return deleted > 0

    async def revoke_user(self, tenant: str, user_id: str) -> int:
        # Again until nothing is left: on PostgreSQL (READ COMMITTED) a DELETE that
        # waited for a rotation's lock on the old row finds it gone, and does not see
        # the successor that rotation committed; the next DELETE does.
        ended = 0
        while True:
            removed = await self._db.execute_replicated(
                "DELETE FROM sessions WHERE tenant = ? AND user_id = ? AND expires > ?",
                tenant,
                user_id,
                self._clock(),
            )
            if removed == 0:
                return ended
            ended += removed

    async def list_user(self, tenant: str, user_id: str) -> list[SessionRecord]:
        rows = await self._db.fetch(
            f"SELECT {_SESSION_COLUMNS} FROM sessions"
            " WHERE tenant = ? AND user_id = ? AND expires > ? ORDER BY created",
            tenant,
            user_id,
            self._clock(),
        )
        return [_session(row) for row in rows]

    async def count(self, tenant: str) -> int:
        row = await self._db.fetchone(
            "SELECT COUNT(*) FROM sessions WHERE tenant = ? AND expires > ?",
            tenant,
            self._clock(),
        )
        return int(row[0]) if row is not None else 0

    async def list(self, tenant: str) -> list[SessionRecord]:
        rows = await self._db.fetch(
            f"SELECT {_SESSION_COLUMNS} FROM sessions"
            " WHERE tenant = ? AND expires > ? ORDER BY created",
            tenant,
            self._clock(),
        )
        return [_session(row) for row in rows]

    async def prune_expired(self, now: float) -> int:
        return await self._db.execute("DELETE FROM sessions WHERE expires <= ?", now)


# --- API keys ----------------------------------------------------------------

_APIKEY_COLUMNS = (
    "id, tenant, user_id, name, prefix, key_hash, created, expires, last_used, revoked"
)


def _apikey(row: Row) -> ApiKey:
    return ApiKey(
        id=row[0],
        tenant=row[1],
        user_id=row[2],
        name=row[3],
        prefix=row[4],
        key_hash=row[5],
        created=float(row[6]),
        expires=None if row[7] is None else float(row[7]),
        last_used=None if row[8] is None else float(row[8]),
        revoked=bool(row[9]),
    )


class SqlApiKeyStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, key: ApiKey) -> None:
        await self._db.execute(
            f"INSERT INTO api_keys ({_APIKEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            key.id,
            key.tenant,
            key.user_id,
            key.name,
            key.prefix,
            key.key_hash,
            key.created,
            key.expires,
            key.last_used,
            key.revoked,
        )

    async def get_by_hash(self, key_hash: str) -> ApiKey | None:
        row = await self._db.fetchone(
            f"SELECT {_APIKEY_COLUMNS} FROM api_keys WHERE key_hash = ?", key_hash
        )
        return _apikey(row) if row is not None else None

    async def list(self, tenant: str, user_id: str | None = None) -> list[ApiKey]:
        if user_id is None:
            rows = await self._db.fetch(
                f"SELECT {_APIKEY_COLUMNS} FROM api_keys WHERE tenant = ? ORDER BY created",
                tenant,
            )
        else:
            rows = await self._db.fetch(
                f"SELECT {_APIKEY_COLUMNS} FROM api_keys"
                " WHERE tenant = ? AND user_id = ? ORDER BY created",
                tenant,
                user_id,
            )
        return [_apikey(row) for row in rows]

    async def revoke(self, key_id: str) -> bool:
        changed = await self._db.execute_replicated(
            "UPDATE api_keys SET revoked = ? WHERE id = ? AND revoked = ?", True, key_id, False
        )
        return changed > 0

    async def mark_used(self, key_id: str, at: float) -> None:
        await self._db.execute("UPDATE api_keys SET last_used = ? WHERE id = ?", at, key_id)


# --- signing keys --------------------------------------------------------------

_KEY_COLUMNS = "kid, algorithm, private_pem_encrypted, public_jwk, created, retired"


async def _insert_key(db: Database, key: SigningKey) -> None:
    await db.execute(
        f"INSERT INTO signing_keys ({_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
        key.kid,
        key.algorithm,
        key.private_pem_encrypted,
        key.public_jwk,
        key.created,
        key.retired,
    )


class SqlKeyStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, key: SigningKey) -> None:
        await _insert_key(self._db, key)

    async def add_first(self, key: SigningKey, now: float) -> bool:
        async with self._db.transaction() as tx:
            await tx.lock("authgate signing keys")
            active = await tx.fetchone(
                "SELECT kid FROM signing_keys WHERE retired IS NULL OR retired > ? LIMIT 1", now
            )
            if active is not None:
                return False
            await _insert_key(tx, key)
            return True

    async def list(self, retired_after: float) -> builtins.list[SigningKey]:
        rows = await self._db.fetch(
            f"SELECT {_KEY_COLUMNS} FROM signing_keys"
            " WHERE retired IS NULL OR retired > ? ORDER BY created DESC",
            retired_after,
        )
        return [
            SigningKey(
                kid=row[0],
                algorithm=row[1],
                private_pem_encrypted=bytes(row[2]),
                public_jwk=row[3],
                created=float(row[4]),
                retired=None if row[5] is None else float(row[5]),
            )
            for row in rows
        ]

    async def retire(self, kid: str, at: float) -> bool:
        changed = await self._db.execute_replicated(
            "UPDATE signing_keys SET retired = ? WHERE kid = ? AND retired IS NULL", at, kid
        )
        return changed > 0

    async def replace_all(self, key: SigningKey) -> None:
        async with self._db.transaction(replicated=True) as tx:
            await tx.lock("authgate signing keys")
            await tx.execute("DELETE FROM signing_keys")
            await _insert_key(tx, key)


# --- audit -------------------------------------------------------------------

_AUDIT_COLUMNS = (
    "time, tenant, event, username, ip, country, user_agent, session_fp, rule, outcome, details"
)


class SqlAuditLog:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def append(self, event: AuditEvent) -> None:
        await self._db.execute(
            f"INSERT INTO audit ({_AUDIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            event.time,
            event.tenant,
            event.event,
            event.user,
            event.ip,
            event.country,
            event.user_agent,
            event.session_fp,
            event.rule,
            event.outcome,
            event.details,
        )

    async def search(
        self,
        *,
        tenant: str | None = None,
        user: str | None = None,
        event: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[AuditEvent]:
        where: list[str] = []
        args: list[object] = []
        for column, value in (("tenant", tenant), ("username", user), ("event", event)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if since is not None:
            where.append("time >= ?")
            args.append(since)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        args.append(int(limit))
        rows = await self._db.fetch(
            f"SELECT {_AUDIT_COLUMNS} FROM audit{clause} ORDER BY time DESC, id DESC LIMIT ?",
            *args,
        )
        return [
            AuditEvent(
                time=float(row[0]),
                tenant=row[1],
                event=row[2],
                user=row[3],
                ip=row[4],
                country=row[5],
                user_agent=row[6],
                session_fp=row[7],
                rule=row[8],
                outcome=row[9],
                details=row[10],
            )
            for row in rows
        ]

    async def prune(self, before: float) -> int:
        return await self._db.execute("DELETE FROM audit WHERE time < ?", before)


# --- rate limiting -----------------------------------------------------------


class SqlRateLimiter:
    """Fixed-window counters: one upsert per hit, atomic in both dialects."""

    def __init__(self, db: Database, clock: Clock = time.time) -> None:
        self._db = db
        self._clock = clock

    async def hit(self, key: str, window_s: float) -> int:
        now = self._clock()
        start = math.floor(now / window_s) * window_s
        row = await self._db.fetchone(
            "INSERT INTO rate_hits (key, window_s, window_start, count, expires)"
            " VALUES (?, ?, ?, 1, ?)"
            " ON CONFLICT (key, window_s) DO UPDATE SET"
            # A window only ever moves forward: a hit from an instance whose clock is
            # behind (still in the window before) counts in the newer one instead of
            # starting the count again (hits alternating between two clocks did).
            " count = CASE WHEN excluded.window_start > rate_hits.window_start"
            " THEN 1 ELSE rate_hits.count + 1 END,"
            " window_start = CASE WHEN excluded.window_start > rate_hits.window_start"
            " THEN excluded.window_start ELSE rate_hits.window_start END,"
            " expires = CASE WHEN excluded.window_start > rate_hits.window_start"
            " THEN excluded.expires ELSE rate_hits.expires END"
            " RETURNING count",
            key,
            float(window_s),
            start,
            start + window_s,
        )
        if row is None:  # RETURNING always yields the row; never trust that silently
            raise StoreUnavailable("rate limiter upsert returned nothing")
        return int(row[0])

    async def release(self, key: str, window_s: float) -> None:
        start = math.floor(self._clock() / window_s) * window_s
        await self._db.execute(
            "UPDATE rate_hits SET count = count - 1"
            " WHERE key = ? AND window_s = ? AND window_start >= ? AND count > 0",
            key,
            float(window_s),
            start,
        )

    async def ban(self, key: str, seconds: float) -> float:
        until = self._clock() + seconds
        await self._db.execute(
            "INSERT INTO bans (key, until) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET until = excluded.until",
            key,
            until,
        )
        return until

    async def banned_until(self, key: str) -> float | None:
        row = await self._db.fetchone(
            "SELECT until FROM bans WHERE key = ? AND until > ?", key, self._clock()
        )
        return float(row[0]) if row is not None else None

    async def clear(self, key: str) -> None:
        async with self._db.transaction() as tx:
            await tx.execute("DELETE FROM rate_hits WHERE key = ?", key)
            await tx.execute("DELETE FROM bans WHERE key = ?", key)

    async def list_bans(self) -> list[Ban]:
        now = self._clock()
        rows = await self._db.fetch(
            "SELECT key, until FROM bans WHERE until > ? ORDER BY until", now
        )
        return [Ban(row[0], float(row[1])) for row in rows]

    async def prune(self, now: float) -> int:
        """Drop finished windows and bans (housekeeping, not needed for correctness)."""
        async with self._db.transaction() as tx:
            hits = await tx.execute("DELETE FROM rate_hits WHERE expires <= ?", now)
            bans = await tx.execute("DELETE FROM bans WHERE until <= ?", now)
        return hits + bans


# --- events --------------------------------------------------------------------

POLL_INTERVAL = 0.5  # seconds: a revocation reaches other processes within ~0.5 s
EVENT_RETENTION = 60.0  # seconds an event row is kept for slow pollers
# Ids from a sequence may commit out of order (PostgreSQL); re-read this many ids
# below the highest seen and skip the ones already delivered, so none is missed.
LOOKBACK_IDS = 64


class SqlSubscription:
    def __init__(self, task: asyncio.Task[None]) -> None:
        self._task = task

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class SqlEventBus:
    """Publish by inserting a row; subscribers poll for rows above the last id seen."""

    def __init__(
        self, db: Database, clock: Clock = time.time, poll_interval: float = POLL_INTERVAL
    ) -> None:
        self._db = db
        self._clock = clock
        self._poll_interval = poll_interval

    async def publish(self, channel: str, message: str) -> None:
        now = self._clock()
        async with self._db.transaction() as tx:
            await tx.execute(
                "INSERT INTO events (channel, message, created) VALUES (?, ?, ?)",
                channel,
                message,
                now,
            )
            await tx.execute("DELETE FROM events WHERE created < ?", now - EVENT_RETENTION)

    async def subscribe(self, channel: str, callback: Callback) -> SqlSubscription:
        # Everything already in the table predates this subscription: mark it seen.
        rows = await self._db.fetch("SELECT id FROM events ORDER BY id DESC LIMIT ?", LOOKBACK_IDS)
        seen = {int(row[0]) for row in rows}
        task = asyncio.create_task(self._poll(channel, callback, max(seen, default=0), seen))
        return SqlSubscription(task)

    async def _poll(
        self, channel: str, callback: Callback, cursor: int, delivered: set[int]
    ) -> None:
        missed = False
        while True:
            await asyncio.sleep(self._poll_interval)
            try:
                rows = await self._db.fetch(
                    "SELECT id, message FROM events WHERE id > ? AND channel = ? ORDER BY id",
                    max(cursor - LOOKBACK_IDS, 0),
                    channel,
                )
            except CircuitOpen:
                # The breaker logged the outage once; a warning every poll would not add.
                missed = True
                continue
            except Exception:
                # Keep polling: the bus must survive a database blip. Callers that
                # need certainty also bound their cache lifetime (sessions.cache_ttl).
                log.warning("event poll failed; retrying", exc_info=True)
                missed = True
                continue
            if missed:
                # Events older than EVENT_RETENTION are deleted by whoever publishes:
                # after a gap, some may be gone unread. Say so, as the Redis bus does.
                missed = False
                try:
                    await callback(RESYNC)
                except Exception:
                    log.exception("event callback failed")
            for event_id, message in rows:
                event_id = int(event_id)
                if event_id in delivered or event_id <= cursor - LOOKBACK_IDS:
                    continue
                delivered.add(event_id)
                cursor = max(cursor, event_id)
                try:
                    await callback(message)
                except Exception:
                    log.exception("event callback failed")
            delivered = {i for i in delivered if i > cursor - LOOKBACK_IDS}
