"""Sessions, rate limits and revocation events in Redis: for many instances.

Layout under a key prefix (default `authgate:`):
- `s:<id_hash>` a hash per session, expiring at the session's `expires`;
- `u:<tenant>:<user_id>` and `t:<tenant>` sets of session hashes (indexes for
  "log out everywhere" and listings; entries of expired sessions are removed
  lazily and by `prune_expired`);
- `rl:<window_s>:<start>:<key>` fixed-window counters, `rlw:<key>` the windows
  a key uses (so `clear` needs no SCAN), `ban:<key>` bans.
Multi-key updates run as Lua scripts or MULTI blocks, so they are atomic. The
scripts build key names themselves, which suits standalone Redis and Sentinel,
not Cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
import redis.exceptions

from gateway.errors import StoreUnavailable
from gateway.stores.base import Ban, Callback, SessionRecord

T = TypeVar("T")
Clock = Callable[[], float]
log = logging.getLogger(__name__)

SOCKET_TIMEOUT = 5.0
REGISTRY_TTL_MS = 2 * 86400 * 1000  # how long `rlw:<key>` outlives its last hit

_DRIVER_ERRORS = (redis.exceptions.RedisError, OSError, asyncio.TimeoutError)


async def _guard(operation: Callable[[], Awaitable[T]]) -> T:
    try:
        return await operation()
    except _DRIVER_ERRORS as exc:
        raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc


def connect(url: str) -> aioredis.Redis:
    """A client for `redis://` or `rediss://` (connections open lazily)."""
    return aioredis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=SOCKET_TIMEOUT,
        health_check_interval=30,
    )


async def ping(client: aioredis.Redis) -> bool:
    try:
        return bool(await _guard(lambda: client.ping()))
    except StoreUnavailable:
        return False


# --- sessions ----------------------------------------------------------------


def _fields(r: SessionRecord) -> list[str]:
    pairs: list[tuple[str, str | None]] = [
        ("tenant", r.tenant),
        ("user_id", r.user_id),
        ("amr", json.dumps(list(r.amr))),
        ("auth_time", repr(r.auth_time)),
        ("created", repr(r.created)),
        ("last_seen", repr(r.last_seen)),
        ("expires", repr(r.expires)),
        ("ip", r.ip),
        ("user_agent", r.user_agent),
        ("country", r.country),
        ("remember", "1" if r.remember else "0"),
        ("data", json.dumps([list(pair) for pair in r.data])),
    ]
    flat: list[str] = []
    for name, value in pairs:
        if value is not None:
            flat += [name, value]
    return flat


def _record(id_hash: str, h: dict[str, str]) -> SessionRecord:
    return SessionRecord(
        id_hash=id_hash,
        tenant=h["tenant"],
        user_id=h["user_id"],
        amr=tuple(json.loads(h["amr"])),
        auth_time=float(h["auth_time"]),
        created=float(h["created"]),
        last_seen=float(h["last_seen"]),
        expires=float(h["expires"]),
        ip=h.get("ip"),
        user_agent=h.get("user_agent"),
        country=h.get("country"),
        remember=h.get("remember") == "1",
        data=tuple((str(k), str(v)) for k, v in json.loads(h.get("data", "[]"))),
    )


def _ms(t: float) -> int:
    return math.ceil(t * 1000)


# KEYS: session, user index, tenant index. ARGV: expire-at ms, id hash, field/value...
_CREATE = """
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('PEXPIREAT', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[2])
return 1
"""

# KEYS: session. ARGV: last_seen, expires, expire-at ms.
_TOUCH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'last_seen', ARGV[1], 'expires', ARGV[2])
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
return 1
"""

# KEYS: old session, new session, user index, tenant index.
# ARGV: old hash, new hash, expire-at ms, field/value...
_ROTATE = """
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], unpack(ARGV, 4))
redis.call('PEXPIREAT', KEYS[2], ARGV[3])
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('SREM', KEYS[4], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[2])
redis.call('SADD', KEYS[4], ARGV[2])
return 1
"""

# KEYS: user index. ARGV: session key prefix.
_REVOKE_USER = """
local n = 0
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  n = n + redis.call('DEL', ARGV[1] .. id)
end
redis.call('DEL', KEYS[1])
return n
"""


class RedisSessionStore:
    def __init__(
        self, client: aioredis.Redis, prefix: str = "authgate:", clock: Clock = time.time
    ) -> None:
        self._r: Any = client  # decode_responses=True: str in, str out (stubs say bytes|str)
        self._p = prefix
        self._clock = clock
        self._create = client.register_script(_CREATE)
        self._touch = client.register_script(_TOUCH)
        self._rotate = client.register_script(_ROTATE)
        self._revoke_user = client.register_script(_REVOKE_USER)

    def _s(self, id_hash: str) -> str:
        return f"{self._p}s:{id_hash}"

    def _u(self, tenant: str, user_id: str) -> str:
        return f"{self._p}u:{tenant}:{user_id}"

    def _t(self, tenant: str) -> str:
        return f"{self._p}t:{tenant}"

    async def create(self, record: SessionRecord) -> None:
        keys = [self._s(record.id_hash), self._u(record.tenant, record.user_id)]
        keys.append(self._t(record.tenant))
        args: list[str | int] = [_ms(record.expires), record.id_hash, *_fields(record)]
        await _guard(lambda: self._create(keys=keys, args=args))

    async def get(self, id_hash: str) -> SessionRecord | None:
        h = await _guard(lambda: self._r.hgetall(self._s(id_hash)))
        if not h:
            return None
        record = _record(id_hash, h)
        return record if record.expires > self._clock() else None

    async def touch(self, id_hash: str, last_seen: float, expires: float) -> bool:
        args: list[str | int] = [repr(last_seen), repr(expires), _ms(expires)]
        done = await _guard(lambda: self._touch(keys=[self._s(id_hash)], args=args))
        return bool(done)

    async def rotate(self, old_hash: str, new: SessionRecord) -> bool:
        keys = [self._s(old_hash), self._s(new.id_hash)]
        keys += [self._u(new.tenant, new.user_id), self._t(new.tenant)]
        args: list[str | int] = [old_hash, new.id_hash, _ms(new.expires), *_fields(new)]
        done = await _guard(lambda: self._rotate(keys=keys, args=args))
        return bool(done)

    async def revoke(self, id_hash: str) -> bool:
        owner = await _guard(lambda: self._r.hmget(self._s(id_hash), ["tenant", "user_id"]))
        deleted = await _guard(lambda: self._r.delete(self._s(id_hash)))
        if owner[0] is not None and owner[1] is not None:
            await _guard(lambda: self._r.srem(self._u(owner[0], owner[1]), id_hash))
            await _guard(lambda: self._r.srem(self._t(owner[0]), id_hash))
        return bool(deleted)

    async def revoke_user(self, tenant: str, user_id: str) -> int:
        keys = [self._u(tenant, user_id)]
        count = await _guard(lambda: self._revoke_user(keys=keys, args=[f"{self._p}s:"]))
        return int(count)

    async def _members(self, index: str) -> list[SessionRecord]:
        ids = sorted(await _guard(lambda: self._r.smembers(index)))
        if not ids:
            return []
        pipe = self._r.pipeline(transaction=False)
        for id_hash in ids:
            pipe.hgetall(self._s(id_hash))
        found: Sequence[dict[str, str]] = await _guard(lambda: pipe.execute())
        now = self._clock()
        live: list[SessionRecord] = []
        stale: list[str] = []
        for id_hash, h in zip(ids, found, strict=True):
            if not h:
                stale.append(id_hash)
                continue
            record = _record(id_hash, h)
            if record.expires > now:
                live.append(record)
        if stale:
            await _guard(lambda: self._r.srem(index, *stale))
        return sorted(live, key=lambda r: r.created)

    async def list_user(self, tenant: str, user_id: str) -> list[SessionRecord]:
        return await self._members(self._u(tenant, user_id))

    async def list(self, tenant: str) -> list[SessionRecord]:
        return await self._members(self._t(tenant))

    async def prune_expired(self, now: float) -> int:
        """Redis expires the sessions itself; this drops their index entries."""
        removed = 0
        for pattern in (f"{self._p}u:*", f"{self._p}t:*"):
            async for index in _scan(self._r, pattern):
                before = await _guard(lambda i=index: self._r.scard(i))  # type: ignore[misc]
                await self._members(index)
                after = await _guard(lambda i=index: self._r.scard(i))  # type: ignore[misc]
                removed += int(before) - int(after)
        return removed


async def _scan(client: aioredis.Redis, pattern: str) -> Any:
    try:
        async for key in client.scan_iter(match=pattern, count=500):
            yield key
    except _DRIVER_ERRORS as exc:
        raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc


# --- rate limiting -----------------------------------------------------------


class RedisRateLimiter:
    """Fixed-window counters: INCR + PEXPIRE in one MULTI block per hit."""

    def __init__(
        self, client: aioredis.Redis, prefix: str = "authgate:", clock: Clock = time.time
    ) -> None:
        self._r = client
        self._p = prefix
        self._clock = clock

    def _counter(self, key: str, window_s: float, start: float) -> str:
        return f"{self._p}rl:{window_s!r}:{start!r}:{key}"

    async def hit(self, key: str, window_s: float) -> int:
        start = math.floor(self._clock() / window_s) * window_s
        counter = self._counter(key, float(window_s), float(start))
        registry = f"{self._p}rlw:{key}"

        async def run() -> list[Any]:
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.incr(counter)
                pipe.pexpireat(counter, _ms(start + window_s) + 1000)
                pipe.sadd(registry, repr(float(window_s)))
                pipe.pexpire(registry, REGISTRY_TTL_MS)
                result: list[Any] = await pipe.execute()
                return result

        results = await _guard(run)
        return int(results[0])

    async def ban(self, key: str, seconds: float) -> float:
        until = self._clock() + seconds
        await _guard(lambda: self._r.set(f"{self._p}ban:{key}", repr(until), pxat=_ms(until)))
        return until

    async def banned_until(self, key: str) -> float | None:
        value = await _guard(lambda: self._r.get(f"{self._p}ban:{key}"))
        if value is None:
            return None
        until = float(value)
        return until if until > self._clock() else None

    async def clear(self, key: str) -> None:
        """Only the current window's counters matter to `hit`, so those are dropped."""
        registry = f"{self._p}rlw:{key}"
        windows = await _guard(lambda: self._r.smembers(registry))
        now = self._clock()
        doomed = [f"{self._p}ban:{key}", registry]
        for text in windows:
            window_s = float(text)
            doomed.append(self._counter(key, window_s, math.floor(now / window_s) * window_s))
        await _guard(lambda: self._r.delete(*doomed))

    async def list_bans(self) -> list[Ban]:
        prefix = f"{self._p}ban:"
        now = self._clock()
        bans: list[Ban] = []
        async for name in _scan(self._r, prefix + "*"):
            value = await _guard(lambda n=name: self._r.get(n))  # type: ignore[misc]
            if value is not None and float(value) > now:
                bans.append(Ban(name[len(prefix) :], float(value)))
        return sorted(bans, key=lambda b: b.until)


# --- events --------------------------------------------------------------------


class RedisSubscription:
    def __init__(self, pubsub: Any, task: asyncio.Task[None]) -> None:
        self._pubsub = pubsub
        self._task = task

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        with contextlib.suppress(*_DRIVER_ERRORS):
            await self._pubsub.aclose()


class RedisEventBus:
    """Redis pub/sub: delivery is immediate, to every subscribed connection."""

    def __init__(self, client: aioredis.Redis, prefix: str = "authgate:") -> None:
        self._r = client
        self._p = prefix

    async def publish(self, channel: str, message: str) -> None:
        await _guard(lambda: self._r.publish(self._p + channel, message))

    async def subscribe(self, channel: str, callback: Callback) -> RedisSubscription:
        pubsub = self._r.pubsub(ignore_subscribe_messages=True)
        await _guard(lambda: pubsub.subscribe(self._p + channel))
        task = asyncio.create_task(self._listen(pubsub, callback))
        return RedisSubscription(pubsub, task)

    async def _listen(self, pubsub: Any, callback: Callback) -> None:
        while True:
            try:
                message = await pubsub.get_message(timeout=1.0)
            except _DRIVER_ERRORS:
                # redis-py reconnects and resubscribes on the next call.
                log.warning("event subscription lost; reconnecting", exc_info=True)
                await asyncio.sleep(0.5)
                continue
            if message is None or message.get("type") != "message":
                continue
            try:
                await callback(str(message["data"]))
            except Exception:
                log.exception("event callback failed")
