"""Sessions, rate limits and revocation events in Redis: for many instances.

Redis standalone, Sentinel or Cluster (see `redis_urls` for the URL forms), all
through one code path, redis-py's asyncio client (hiredis parses replies when
installed). Layout under a key prefix (default `authgate:`):

- `s:<id_hash>` a hash per session, expiring at the session's `expires`;
- `u:<tenant>:<user_id>` and `t:<tenant>` sets of session hashes (indexes for
  "log out everywhere" and listings), expiring with their longest-lived member;
  entries of gone sessions are removed lazily and by `prune_expired`;
- `rl:{<key>}:<window_s>:<start>` fixed-window counters, `rlw:{<key>}` the windows
  a key uses (so `clear` needs no SCAN), `ban:{<key>}` bans.
- `sso:<code_hash>` single-use codes (SSO hand-offs, WebAuthn challenges), expiring
  by TTL.

Cluster safety: a script or transaction only ever touches keys of one hash slot,
named in KEYS. The rate-limit keys of one limiter key share the hash tag `{<key>}`,
so a hit is one atomic script. A session is found by the hash of its cookie alone,
so its key cannot share a slot with its user's index; session operations are
therefore ordered so that a crash between two steps never leaves a live session
out of its user's index (index first, session second; on rotation the new session
exists before the old one is deleted), which keeps "log out everywhere" complete
without a cross-slot transaction.

Revocations outlive a failover: with `wait_replicas` (see `redis_urls`) every deletion
of a session or a single-use code is followed by WAIT on the connection that carried
it, so it is answered as done only once a replica has it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, PipelineCommand, RedisCluster
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.cluster import PRIMARY

from gateway.errors import StoreFull, StoreUnavailable
from gateway.replica_wait import REPLICA_WAIT_MS, note_unconfirmed
from gateway.stores.base import RESYNC, Ban, Callback, SessionRecord
from gateway.stores.breaker import Breaker, watched
from gateway.stores.redis_urls import (
    RedisMode,
    RedisTarget,
    RedisUrlError,
    for_redis_py,
    parse_redis_url,
)
from gateway.stores.sso_codes import SsoGrant

T = TypeVar("T")
Clock = Callable[[], float]
log = logging.getLogger(__name__)

# Every store call answers within this, waiting for a pooled connection included: a
# server that cannot answer in 5 s is treated as down (503), however many requests wait.
COMMAND_TIMEOUT = 5.0
# redis-py's own wait for a reply, shorter than COMMAND_TIMEOUT so that a hung server
# is redis-py's timeout too, not only our cancellation: a Cluster client refreshes its
# map of the slots only after an error of its own, and with both at 5 s a master that
# hung and was failed over by the cluster was asked for ever (its sessions refused).
SOCKET_TIMEOUT = 2.0
# Connections of one client (one worker process) to a server. More requests than this at
# once wait for a free connection (within COMMAND_TIMEOUT), so a hung server holds no more
# sockets than this. redis-py 8 limits its pools to 100 by itself, but refuses a command
# past that (MaxConnectionsError): a burst of 150 sign-ins on a healthy server was 32 503s.
MAX_CONNECTIONS = 100
REGISTRY_TTL_MS = 2 * 86400 * 1000  # how long `rlw:<key>` outlives its last hit
RESUBSCRIBE_DELAY = 0.2  # pause before a lost subscription is opened again
# Rounds of a Cluster revocation whose keys are redirected (MOVED, ASK: a reshard).
_CLUSTER_ROUNDS = 3
_TRYAGAIN_PAUSE = 0.05  # s between rounds while a slot's keys are being migrated
# A subscription silent this long is pinged, and one whose ping is not answered within
# LIVENESS_TIMEOUT is opened again: a partition or a dead NAT entry closes nothing, and
# redis-py's own health check only writes, so without this a dead subscription would
# go unnoticed for as long as the kernel keeps retransmitting (about 15 minutes).
LIVENESS_INTERVAL = 5.0
LIVENESS_TIMEOUT = 3.0
_LIVENESS_PING = "authgate-liveness"
# How long the start-up look at `maxmemory-policy` may take (it only ever logs).
POLICY_CHECK_TIMEOUT = 2.0


class _Silent(Exception):
    """A subscription's ping went unanswered."""


# RedisClusterException (cluster unreachable, slot not covered) is not a RedisError.
_DRIVER_ERRORS = (
    redis.exceptions.RedisError,
    redis.exceptions.RedisClusterException,
    OSError,
    asyncio.TimeoutError,
)


# Failures that say the server is out (no answer, connection lost), which count toward
# opening its breaker; anything else it said (a reply error, a refused login) is an answer.
_OUTAGES = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.RedisClusterUnreachableError,
    OSError,
    asyncio.TimeoutError,
)
# Not outages: the server refused us (it answered), or our own pool is full.
_NOT_OUTAGES = (
    redis.exceptions.AuthenticationError,
    redis.exceptions.AuthorizationError,
    redis.exceptions.MaxClientsReachedError,
    redis.exceptions.MaxConnectionsError,
)


def breaker_of(client: Any) -> Breaker:
    """The circuit breaker of a client (made with it on first use): every store on
    one client, its readiness ping included, shares it (see gateway.stores.breaker).
    On a Cluster it guards only the calls that are not for one key (see node_breaker)."""
    found: Breaker | None = getattr(client, "_authgate_breaker", None)
    if found is None:
        found = Breaker("redis")
        client._authgate_breaker = found
    return found


def node_breaker(cluster: RedisCluster, key: str) -> Breaker:
    """The breaker of the Cluster master that serves `key`: one hung master must fail
    only its own keys. One breaker for the whole client opened on that master's
    failures and refused every call, to every master, in each cool-off. A key whose
    master is not known yet falls back to the client's breaker."""
    try:
        node = cluster.get_node_from_key(key)
    except _DRIVER_ERRORS:
        node = None
    return breaker_of(cluster) if node is None else _node_breaker(cluster, node)


def _node_breaker(cluster: RedisCluster, node: ClusterNode) -> Breaker:
    breakers: dict[str, Breaker] | None = getattr(cluster, "_authgate_node_breakers", None)
    if breakers is None:
        breakers = cluster._authgate_node_breakers = {}  # type: ignore[attr-defined]
    found = breakers.get(node.name)
    if found is None:
        # A new master (a failover, a reshard): the breakers of nodes that are no
        # longer masters go. Nothing calls them to close them, and a node that becomes
        # a master again starts afresh, not refused until its first probe.
        masters = {n.name for n in cluster.get_primaries()}
        for name in [name for name in breakers if name not in masters]:
            del breakers[name]
        found = breakers[node.name] = Breaker("redis", where=node.name)
    return found


async def _guard(operation: Callable[[], Awaitable[T]], breaker: Breaker | None = None) -> T:
    """Run a driver call within COMMAND_TIMEOUT, translating its errors to ours (fail
    closed). With a `breaker`, a call is refused at once while it is open, and the
    outcome is reported to it."""
    try:
        with watched(breaker, _is_outage):
            return await _within_deadline(operation)
    except redis.exceptions.OutOfMemoryError as exc:
        raise StoreFull(f"redis: {type(exc).__name__}: {exc}") from exc
    except TimeoutError as exc:
        raise StoreUnavailable(f"redis: no answer within {COMMAND_TIMEOUT} s") from exc
    except _DRIVER_ERRORS as exc:
        raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc


async def _within_deadline(operation: Callable[[], Awaitable[T]]) -> T:
    """The call, as a task of its own given up on at COMMAND_TIMEOUT (TimeoutError):
    a deadline put around it by cancellation (`asyncio.timeout`) was lost now and then when
    it fell as the call got a pooled connection, and the call then waited out a socket
    timeout of its own, 10 s in all (against a hung server, a quarter of the requests)."""
    task: asyncio.Future[T] = asyncio.ensure_future(operation())
    try:
        done, _ = await asyncio.wait((task,), timeout=COMMAND_TIMEOUT)
    except asyncio.CancelledError:
        task.cancel()
        task.add_done_callback(_retrieve)
        raise
    if not done:
        task.cancel()  # redis-py closes the connection it was using
        task.add_done_callback(_retrieve)
        raise TimeoutError
    return task.result()


def _is_outage(exc: BaseException) -> bool:
    return isinstance(exc, _OUTAGES) and not isinstance(exc, _NOT_OUTAGES)


class _Guarded:
    """A store on one client: its calls go through the client's breaker, or on a
    Cluster, a call for one key through the breaker of the master that serves it."""

    def __init__(self, client: Any) -> None:
        self._r: Any = client  # decode_responses=True: str in, str out (stubs say bytes|str)
        self._breaker = breaker_of(client)
        self._cluster: RedisCluster | None = client if isinstance(client, RedisCluster) else None

    async def _guard(self, operation: Callable[[], Awaitable[T]], key: str | None = None) -> T:
        if key is not None and self._cluster is not None:
            return await _guard(operation, node_breaker(self._cluster, key))
        return await _guard(operation, self._breaker)

    async def _pipelined(
        self, keys: Sequence[str], command: Callable[[Any, str], object]
    ) -> list[Any]:
        """`command(pipeline, key)` for each key, sent pipelined; the replies in the
        keys' order. On a Cluster, one pipeline per master, each a call of its own under
        that master's breaker, all at once, and any failure fails the whole: a hung
        master's failures are its own. One pipeline across the masters was one call
        under the whole client's breaker, which a hung master then opened for the calls
        that go to no one key's master (PUBLISH, TIME) on every healthy one."""
        groups: dict[Breaker, list[int]] = {}
        for at, key in enumerate(keys):
            breaker = self._breaker if self._cluster is None else node_breaker(self._cluster, key)
            groups.setdefault(breaker, []).append(at)

        async def send(breaker: Breaker, places: list[int]) -> list[Any]:
            pipe = self._r.pipeline(transaction=False)
            for at in places:
                command(pipe, keys[at])
            # Any error raised within the guard: a Cluster pipeline hands a node's
            # timeout back as a reply, which returned would count as an answer.
            return list(await _guard(lambda: pipe.execute(), breaker))

        sent = list(groups.items())
        outcomes = await asyncio.gather(*(send(*group) for group in sent), return_exceptions=True)
        replies: list[Any] = [None] * len(keys)
        for (_, places), outcome in zip(sent, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                raise outcome
            for at, reply in zip(places, outcome, strict=True):
                replies[at] = reply
        return replies


guard = _guard  # for the few callers outside this module (the store's clock)


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Takes the outcome of a call given up on, so it is not logged as never retrieved."""
    if not task.cancelled():
        task.exception()


# --- connecting ----------------------------------------------------------------


@dataclass(frozen=True)
class RedisHandle:
    """A client for the deployment a URL names, and how to subscribe to it and close it.

    `client` is a `redis.asyncio.Redis` (standalone, or the Sentinel-managed master)
    or a `RedisCluster`; the stores use only commands both offer.
    """

    target: RedisTarget
    client: Any
    sentinel: Sentinel | None = None
    failovers: _FailoverWatch | None = None
    _next_node: itertools.count[int] = field(default_factory=itertools.count, repr=False)

    def follow_failovers(self) -> None:
        """Sentinel: from now on, move every connection to a new master the moment the
        Sentinels switch to it (call with the event loop running; `close` stops it)."""
        if self.failovers is not None:
            self.failovers.start()

    def pubsub(self) -> Any:
        """A fresh PubSub. In a Cluster a plain PUBLISH reaches every node, so a
        subscriber needs one connection to any node: we take the seed nodes in turn
        (a lost node is replaced by the next on resubscription) rather than rely on
        redis-py's ClusterPubSub, whose asyncio support differs between versions."""
        if self.target.mode is not RedisMode.CLUSTER:
            return self.client.pubsub(ignore_subscribe_messages=True)
        nodes = self.target.nodes
        host, port = nodes[next(self._next_node) % len(nodes)]
        # No retries: redis-py would otherwise reconnect and resubscribe by itself,
        # silently, and what was published meanwhile would be lost without a resync.
        node = aioredis.Redis(
            host=host, port=port, retry=Retry(NoBackoff(), 0), **_common_options(self.target)
        )
        pubsub = node.pubsub(ignore_subscribe_messages=True)
        pubsub._authgate_node = node  # type: ignore[attr-defined] # closed with the pubsub (see _close_pubsub)
        return pubsub

    async def ping(self) -> bool:
        """Readiness; call once before concurrent use: for a Cluster the first
        command maps the slots, and redis-py (8.1) may send a command twice when
        many race through an unmapped cluster client."""
        try:
            return bool(await _guard(lambda: self.client.ping(), breaker_of(self.client)))
        except StoreUnavailable:
            return False

    async def warn_if_evicting(self) -> None:
        """Log a WARNING when a server may evict keys (`maxmemory-policy` other than
        `noeviction`). Every key of ours has a TTL, so even a `volatile-*` policy may
        drop a ban or a rate-limit counter when memory runs out, and brute-force
        regulation stops holding without a sound; with `noeviction` a full Redis
        refuses writes instead, and the gateway fails closed. Asked once, at start;
        a server that forbids CONFIG (managed Redis often does) is left unjudged."""
        for name, policy, maxmemory in await self._memory_policies():
            if policy == "noeviction":
                continue
            limit = f"maxmemory {maxmemory}" if maxmemory != "0" else "maxmemory not set yet"
            log.warning(
                "redis %s: maxmemory-policy is %s (%s): once memory is full, Redis silently"
                " evicts keys, rate-limit counters and bans among them (all have a TTL, so"
                " volatile-* policies take them too): brute-force regulation then stops"
                " holding without an error, and sessions vanish (users signed out). Set"
                " maxmemory-policy noeviction: a full Redis then refuses writes and the"
                " gateway fails closed (503).",
                name,
                policy,
                limit,
            )

    async def _memory_policies(self) -> list[tuple[str, str, str]]:
        """(server, maxmemory-policy, maxmemory) of each master; [] when not allowed."""
        if isinstance(self.client, RedisCluster):
            nodes: list[Any] = self.client.get_primaries()
            targets = [(node.name, {"target_nodes": node}) for node in nodes]
        else:
            targets = [(self._name(), {})]
        found: list[tuple[str, str, str]] = []
        for name, where in targets:
            try:
                async with asyncio.timeout(POLICY_CHECK_TIMEOUT):
                    config = await self.client.config_get("maxmemory*", **where)
            except _DRIVER_ERRORS as exc:
                log.debug("redis %s: cannot read maxmemory-policy (%s)", name, exc)
                continue
            policy = config.get("maxmemory-policy")
            if isinstance(policy, str):
                found.append((name, policy, str(config.get("maxmemory", "?"))))
        return found

    def _name(self) -> str:
        if self.target.mode is RedisMode.SENTINEL:
            return f"master of {self.target.service_name}"
        host, port = self.target.nodes[0]
        return f"{host}:{port}"

    async def close(self) -> None:
        if self.failovers is not None:
            await self.failovers.stop()
        with contextlib.suppress(*_DRIVER_ERRORS):
            await self.client.aclose()
        if self.sentinel is not None:
            for sentinel in self.sentinel.sentinels:
                with contextlib.suppress(*_DRIVER_ERRORS):
                    await sentinel.aclose()


def _common_options(target: RedisTarget) -> dict[str, Any]:
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": SOCKET_TIMEOUT,
        "username": target.username,
        "password": target.password,
    }
    if target.tls:
        options.update(_tls_options(target))
    return options


def _tls_options(target: RedisTarget) -> dict[str, Any]:
    # Verified always (redis-py's default); a private CA when the URL names one.
    options: dict[str, Any] = {"ssl": True, "ssl_cert_reqs": "required"}
    if target.ca_certs:
        options["ssl_ca_certs"] = target.ca_certs
    return options


def open_redis(url: str) -> RedisHandle:
    """A handle for any accepted URL (connections open lazily; RedisUrlError when bad)."""
    target = parse_redis_url(url)
    if target.mode is RedisMode.STANDALONE:
        return RedisHandle(target, connect(url))
    if target.mode is RedisMode.CLUSTER:
        cluster = _BoundedCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
            health_check_interval=30,
            max_connections=MAX_CONNECTIONS,
            **_common_options(target),
        )
        return RedisHandle(target, cluster)
    assert target.service_name is not None  # parse_redis_url guarantees it
    sentinel_options: dict[str, Any] = {
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": SOCKET_TIMEOUT,
        "decode_responses": True,
    }
    if target.sentinel_password:
        sentinel_options["password"] = target.sentinel_password
    if target.tls:
        sentinel_options.update(_tls_options(target))
    sentinel = _Sentinel(  # type: ignore[no-untyped-call, unused-ignore]  # typed from redis 8.2
        list(target.nodes),
        sentinel_kwargs=sentinel_options,
        db=target.db,
        health_check_interval=30,
        **_common_options(target),
    )
    # A pool that waits for a free connection, as `connect` has: redis-py's Sentinel pool
    # refuses a command past its 100 connections (MaxConnectionsError, a 503).
    client = sentinel.master_for(
        target.service_name,
        connection_pool_class=_BlockingSentinelPool,
        max_connections=MAX_CONNECTIONS,
        timeout=COMMAND_TIMEOUT,
    )
    watch = _FailoverWatch(
        sentinel, target.service_name, client.connection_pool, breaker_of(client)
    )
    return RedisHandle(target, client, sentinel, watch)


class _BoundedCluster(RedisCluster):
    """A Cluster client that lets at most MAX_CONNECTIONS commands (or pipelines) run at
    once; more wait for a place (within the store's deadline). Each uses at most one
    connection of each node, so no node's pool of MAX_CONNECTIONS is ever exhausted:
    redis-py's Cluster nodes have no waiting pool, and refuse a command past their limit
    (MaxConnectionsError: a burst of 250 reads on one master was 150 503s)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._places = asyncio.Semaphore(MAX_CONNECTIONS)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self._places:
            return await super().execute_command(*args, **kwargs)

    def pipeline(
        self, transaction: Any | None = None, shard_hint: Any | None = None
    ) -> ClusterPipeline:
        if shard_hint:
            raise redis.exceptions.RedisClusterException("shard_hint is deprecated in cluster mode")
        return _BoundedPipeline(self, transaction)  # type: ignore[abstract]  # as redis-py does


class _BoundedPipeline(ClusterPipeline):
    """A pipeline that takes one of its client's places while it runs."""

    cluster_client: _BoundedCluster

    async def execute(
        self, raise_on_error: bool = True, allow_redirections: bool = True
    ) -> list[Any]:
        async with self.cluster_client._places:
            return await super().execute(raise_on_error, allow_redirections)


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """The master's connections, found through the Sentinels, at most MAX_CONNECTIONS of
    them; a command past that waits for a free one (within `timeout`) instead of failing."""


class _Sentinel(Sentinel):
    """Refuses, besides a master that is down, one that a Sentinel is failing over: a
    write sent there now may be thrown away when it is demoted (a 503 instead)."""

    def check_master_state(self, state: dict[str, Any], service_name: str) -> bool:
        flags = state.get("flags", ())
        if isinstance(flags, str):
            flags = set(flags.split(","))
        if "failover_in_progress" in flags:
            return False
        return bool(super().check_master_state(state, service_name))


class _FailoverWatch:
    """Follows `+switch-master` on every Sentinel. redis-py asks the Sentinels for the
    master only when it opens a connection, so after a failover with the old master
    still up (`SENTINEL FAILOVER`, a partition) the pooled connections would go on
    writing to it until it is demoted, which throws away what it was sent meanwhile: a
    logout undone. On a switch of our service every connection of the pool is closed,
    subscriptions included (they reopen on the new master and resync).

    Each Sentinel is followed by a `_Listener`, like an event subscription: it reopens
    when lost and is pinged when quiet; the RESYNC it delivers on every (re)opening
    makes us ask once for a switch announced while we were not listening."""

    def __init__(self, sentinel: Sentinel, service: str, pool: Any, breaker: Breaker) -> None:
        self._sentinel = sentinel
        self._service = service
        self._pool = pool
        self._breaker = breaker
        self._subscriptions: list[RedisSubscription] = []
        self._moved_to: tuple[str, int] | None = None

    def start(self) -> None:
        if self._subscriptions:
            return
        for node in self._sentinel.sentinels:
            pubsub = functools.partial(node.pubsub, ignore_subscribe_messages=True)
            listener = _Listener(pubsub, "+switch-master", self._on_message)
            task = asyncio.create_task(listener.reopen_and_run())
            self._subscriptions.append(RedisSubscription(listener, task))

    async def stop(self) -> None:
        for subscription in self._subscriptions:
            await subscription.close()
        self._subscriptions = []

    async def _on_message(self, message: str) -> None:
        if message == RESYNC:
            await self._check()
            return
        # "<service> <old-ip> <old-port> <new-ip> <new-port>"
        parts = message.split()
        if len(parts) == 5 and parts[0] == self._service and parts[4].isdigit():
            await self._move_to((parts[3], int(parts[4])))

    async def _check(self) -> None:
        with contextlib.suppress(*_DRIVER_ERRORS, MasterNotFoundError):
            address = await self._sentinel.discover_master(self._service)
            known = self._pool.master_address
            if known is not None and tuple(address) != tuple(known):
                await self._move_to((str(address[0]), int(address[1])))

    async def _move_to(self, address: tuple[str, int]) -> None:
        if address == self._moved_to:
            return  # every Sentinel announces the same switch
        self._moved_to = address
        log.warning(
            "redis sentinel: %s has a new master %s:%d; reconnecting", self._service, *address
        )
        self._pool.master_address = None  # the next connection asks the Sentinels
        with contextlib.suppress(*_DRIVER_ERRORS):
            await self._pool.disconnect(inuse_connections=True)
        self._breaker.forget(f"{self._service} has a new master")


def connect(url: str) -> aioredis.Redis:
    """A client for one `redis://` or `rediss://` server (connections open lazily)."""
    pool = aioredis.BlockingConnectionPool.from_url(
        for_redis_py(url),
        max_connections=MAX_CONNECTIONS,
        timeout=COMMAND_TIMEOUT,  # waiting for a free connection (see MAX_CONNECTIONS)
        decode_responses=True,
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=SOCKET_TIMEOUT,
        health_check_interval=30,
    )
    return aioredis.Redis.from_pool(pool)


async def ping(client: Any) -> bool:
    try:
        return bool(await _guard(lambda: client.ping(), breaker_of(client)))
    except StoreUnavailable:
        return False


def _check_prefix(prefix: str) -> str:
    if "{" in prefix or "}" in prefix:
        # Braces would move the hash tag and break the one-slot guarantee.
        raise RedisUrlError("redis key prefix must not contain '{' or '}'")
    return prefix


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


# KEYS: session. ARGV: expire-at ms, field/value...
_CREATE = """
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('PEXPIREAT', KEYS[1], ARGV[1])
return 1
"""

# KEYS: session. ARGV: last_seen, expires, expire-at ms.
_TOUCH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'last_seen', ARGV[1], 'expires', ARGV[2])
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
return 1
"""

# KEYS: an index set. ARGV: member, time to live in ms. The set lives as long as
# its longest-lived member (sets must not outlive every session forever).
_INDEX_ADD = """
redis.call('SADD', KEYS[1], ARGV[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
"""


def _wait_refused(outcome: Exception) -> bool:
    """WAIT denied to our user or unknown to the server: nothing is learned of the
    replicas, but nothing says the deletion is in doubt."""
    return isinstance(outcome, redis.exceptions.NoPermissionError) or (
        isinstance(outcome, redis.exceptions.ResponseError)
        and str(outcome).lower().startswith("unknown command")
    )


async def _answers(pipe: Any) -> list[Any]:
    """The pipeline's replies, reply errors among them (a WAIT refused is reported, not
    failed on); an outage among them is raised, so that its breaker counts it."""
    replies = list(await pipe.execute(raise_on_error=False))
    for reply in replies:
        if isinstance(reply, BaseException) and _is_outage(reply):
            raise reply
    return replies


def _delete(pipe: Any, key: str) -> object:
    return pipe.delete(key)


def _hgetall(pipe: Any, key: str) -> object:
    return pipe.hgetall(key)


def _exists(pipe: Any, key: str) -> object:
    return pipe.exists(key)


def _deletions(outcomes: Sequence[Any]) -> int:
    """How many keys the DEL replies deleted; any error fails the revocation."""
    for outcome in outcomes:
        if isinstance(outcome, Exception):
            raise StoreUnavailable(f"redis: {type(outcome).__name__}: {outcome}")
    return sum(int(n) for n in outcomes)


def _redirected_to(
    cluster: RedisCluster, redirect: redis.exceptions.AskError, origin: ClusterNode
) -> ClusterNode:
    """The node a MOVED or ASK from `origin` names. One the client has not met, a master
    added to the cluster since the client mapped it, joins the client's nodes, as
    redis-py adds one when its own commands are MOVED there (`NodesManager.move_slot`).
    A redirection with a port alone (`MOVED 3999 :6381`, from a node whose endpoint is
    unknown) means `origin`'s host, as redis-py reads it."""
    host = redirect.host or origin.host
    node = cluster.get_node(host=host, port=redirect.port)
    if node is None:
        manager = cluster.nodes_manager
        node = ClusterNode(host, redirect.port, PRIMARY, **manager.connection_kwargs)
        manager.set_nodes(manager.nodes_cache, {node.name: node})
    return node


def _node_of(cluster: RedisCluster, key: str) -> Any:
    try:
        node = cluster.get_node_from_key(key)
    except _DRIVER_ERRORS as exc:
        raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
    if node is None:
        raise StoreUnavailable(f"redis: no master serves the slot of {key!r}")
    return node


class _ClusterRound:
    """One round of a Cluster revocation: for each master, its DELs and one WAIT sent
    over one connection of that master's node, all masters at once, each master's
    exchange a store call of its own (its deadline, and its master's breaker). What a
    round could not finish is in `again`: the node to ask next for each key, and whether
    with ASKING.

    A key sent again after a lost connection gets a write of its own before the WAIT (a
    marker in its slot, gone after a second): a DEL that finds nothing writes nothing,
    so only the marker makes the new connection's WAIT wait for the replication stream
    past the first DEL, whatever the server counts for a connection that wrote nothing."""

    def __init__(
        self, todo: dict[str, tuple[Any, bool]], replicas: int, prefix: str, resend: set[str]
    ) -> None:
        self._batches: dict[str, tuple[Any, list[tuple[str, bool]]]] = {}
        for key, (node, asking) in todo.items():
            self._batches.setdefault(node.name, (node, []))[1].append((key, asking))
        self._replicas = replicas
        self._prefix = prefix
        self._resend = resend
        self.deleted = 0
        self.acked: list[Any] = []  # the WAIT replies of masters that deleted something
        self.again: dict[str, tuple[Any, bool]] = {}
        self.lost: BaseException | None = None  # a connection that broke, if one did
        self.migrating = False  # a TRYAGAIN: a slot's keys are being moved right now

    async def send(self, cluster: RedisCluster) -> None:
        batches = list(self._batches.values())
        async with _place(cluster):
            outcomes = await asyncio.gather(
                *(
                    _guard(
                        functools.partial(self._exchange, node, batch), _node_breaker(cluster, node)
                    )
                    for node, batch in batches
                ),
                return_exceptions=True,
            )
        for (node, batch), outcome in zip(batches, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                cause = outcome.__cause__
                if (
                    not isinstance(outcome, StoreUnavailable)
                    or cause is None
                    or not _is_outage(cause)
                    or isinstance(cause, (TimeoutError, redis.exceptions.TimeoutError))  # hung
                ):
                    raise outcome
                self.lost = cause  # nothing was sent, or nothing is known of it
                self.again.update((key, (node, asking)) for key, asking in batch)
            else:
                self._read(cluster, node, batch, outcome)

    async def _exchange(self, node: ClusterNode, batch: list[tuple[str, bool]]) -> list[Any]:
        commands: list[PipelineCommand] = []
        for key, asking in batch:
            if asking:
                commands.append(PipelineCommand(len(commands), "ASKING"))
            commands.append(PipelineCommand(len(commands), "DEL", key))
            if key in self._resend:
                marker = f"{self._prefix}rv:{{{key}}}"  # the key's own slot (hash tag)
                if asking:
                    commands.append(PipelineCommand(len(commands), "ASKING"))
                commands.append(PipelineCommand(len(commands), "SET", marker, "1", "PX", 1000))
        commands.append(PipelineCommand(len(commands), "WAIT", self._replicas, REPLICA_WAIT_MS))
        await node.execute_pipeline(commands)
        results = [command.result for command in commands]
        # redis-py raises only when the send fails; a connection lost before the first
        # reply comes back as every reply. Nothing answered: an outage for the breaker.
        if isinstance(results[0], Exception) and _is_outage(results[0]):
            raise results[0]
        return results

    def _read(
        self, cluster: RedisCluster, node: Any, batch: list[tuple[str, bool]], results: list[Any]
    ) -> None:
        replies = iter(results)
        deleted_here: list[tuple[str, bool]] = []
        for key, asking in batch:
            if asking:
                next(replies)  # ASKING's OK (an error shows in the DEL after it)
            outcome = next(replies)
            if key in self._resend:
                if asking:
                    next(replies)
                marked = next(replies)
                if (
                    isinstance(marked, Exception)
                    and _is_outage(marked)
                    and not isinstance(outcome, Exception)
                ):
                    outcome = marked  # unmarked, the WAIT says nothing of the first DEL
                # (a marker refused, as by a full Redis, leaves the WAIT to the server's
                # own count, which in Redis 7 follows the master after every command)
            if isinstance(outcome, redis.exceptions.TryAgainError):
                self.again[key] = (node, asking)
                self.migrating = True
            elif isinstance(outcome, redis.exceptions.AskError):  # MovedError too
                moved_to = _redirected_to(cluster, outcome, node)
                self.again[key] = (moved_to, not isinstance(outcome, redis.exceptions.MovedError))
            elif isinstance(outcome, Exception) and _is_outage(outcome):
                self.lost = outcome  # deleted or not, nobody knows: again, there
                self.again[key] = (node, asking)
            else:
                self.deleted += _deletions([outcome])
                deleted_here.append((key, asking))
        waited = next(replies)
        if not deleted_here:
            return
        if isinstance(waited, Exception) and _is_outage(waited):
            # Deleted, but maybe on the master alone: delete again and wait, there.
            self.lost = waited
            self.again.update((key, (node, asking)) for key, asking in deleted_here)
        else:
            self.acked.append(waited)


@contextlib.asynccontextmanager
async def _place(cluster: RedisCluster) -> AsyncIterator[None]:
    """One of a bounded Cluster client's places (see _BoundedCluster), waited for
    within COMMAND_TIMEOUT, for a call made outside its own `execute_command`."""
    places = cluster._places if isinstance(cluster, _BoundedCluster) else None
    if places is None:
        yield
        return
    try:
        async with asyncio.timeout(COMMAND_TIMEOUT):
            await places.acquire()
    except TimeoutError as exc:
        raise StoreUnavailable(f"redis: no connection free within {COMMAND_TIMEOUT} s") from exc
    try:
        yield
    finally:
        places.release()


class _Revoking(_Guarded):
    """A store whose deletions take access away (sessions, single-use codes): with
    `wait_replicas`, a deletion is answered only once that many replicas have it."""

    def __init__(self, client: Any, prefix: str, wait_replicas: int) -> None:
        super().__init__(client)
        self._p = _check_prefix(prefix)
        self._replicas = wait_replicas

    async def _delete_replicated(self, keys: Sequence[str]) -> int:
        """DEL `keys`, one key per command (each may live in another slot); returns how
        many existed. With `wait_replicas`, answers only once that many replicas have
        the deletions, or after REPLICA_WAIT_MS with a warning. WAIT waits for the
        master's replication offset as its connection last saw it, so it follows the
        deletions on their connection, on the master that made them (a pipeline sends
        what goes to one node over one)."""
        if self._cluster is not None:
            if self._replicas:
                return await self._delete_in_cluster(keys)
            return _deletions(await self._pipelined(keys, _delete))
        pipe = self._r.pipeline(transaction=False)
        for key in keys:
            pipe.delete(key)
        if self._replicas:
            pipe.execute_command("WAIT", self._replicas, REPLICA_WAIT_MS)
        # A connection lost raises here, and redis-py sends the whole pipeline again.
        results: Sequence[Any] = await self._guard(lambda: _answers(pipe))
        deleted = _deletions(results[: len(keys)])
        self._check_acked(results[len(keys) :])
        return deleted

    async def _delete_in_cluster(self, keys: Sequence[str]) -> int:
        """Each DEL goes to the master the client maps its key to, with a WAIT behind it
        on that master's connection. Both are sent straight to the master's node, never
        through redis-py's cluster pipeline: that one redirects a DEL (MOVED, ASK) onto
        another connection, one the WAIT does not count, and its retry after a lost
        connection sends a WAIT that had one target by the WAIT's own routing, to any
        master, which counts no write and answers at once. Here a key answered MOVED,
        ASK or TRYAGAIN is deleted in a further round at the node named, and the keys of
        a master whose connection broke are deleted and waited for again on that
        master, on a new connection (Redis 7 moves a connection's WAIT offset to the
        master's after every command, so a DEL that finds nothing still waits for the
        first one)."""
        count = 0
        todo: dict[str, tuple[Any, bool]] = {k: (_node_of(self._r, k), False) for k in keys}
        lost: BaseException | None = None
        resend: set[str] = set()  # keys whose first DEL may have run unconfirmed
        for _ in range(_CLUSTER_ROUNDS):
            rounds = _ClusterRound(todo, self._replicas, self._p, resend)
            await rounds.send(self._r)
            count += rounds.deleted
            self._check_acked(rounds.acked)
            if not rounds.again:
                return count
            todo = rounds.again
            if rounds.lost is not None:
                lost = rounds.lost
                resend |= set(rounds.again)
            if rounds.migrating:
                await asyncio.sleep(_TRYAGAIN_PAUSE)  # as redis-py does, not at once
        if lost is not None:
            raise StoreUnavailable(
                f"redis: revocation not confirmed: {type(lost).__name__}: {lost}"
            ) from lost
        raise StoreUnavailable("redis: a session's slot keeps moving; revocation not confirmed")

    def _check_acked(self, acked: Sequence[Any]) -> None:
        """The WAIT replies of masters that deleted something. A connection lost while
        waiting is a master lost perhaps before its replicas had the deletion: not done;
        so is any other error, such as the one a master demoted during the WAIT answers
        (`UNBLOCKED … master -> replica`): its deletion may be lost with it, and a code
        taken there could be taken again. Only a WAIT the server will not run (an ACL
        without it, a proxy that lacks it) or one short of replicas weakens only what a
        failover keeps, so it is reported, not failed on."""
        for outcome in acked:
            if isinstance(outcome, Exception) and not _wait_refused(outcome):
                raise StoreUnavailable(
                    f"redis: revocation not confirmed: {type(outcome).__name__}: {outcome}"
                )
        if any(isinstance(n, Exception) or n < self._replicas for n in acked):
            note_unconfirmed("redis")
            log.warning(
                "a revocation is not confirmed on %d replica(s) within %d ms (WAIT answered:"
                " %s); it holds unless the master fails before they have it",
                self._replicas,
                REPLICA_WAIT_MS,
                ", ".join(map(str, acked)),
            )


class RedisSessionStore(_Revoking):
    def __init__(
        self,
        client: Any,
        prefix: str = "authgate:",
        clock: Clock = time.time,
        *,
        wait_replicas: int = 0,
    ) -> None:
        super().__init__(client, prefix, wait_replicas)
        self._clock = clock
        self._create = client.register_script(_CREATE)
        self._touch = client.register_script(_TOUCH)
        self._index_add = client.register_script(_INDEX_ADD)

    def _s(self, id_hash: str) -> str:
        return f"{self._p}s:{id_hash}"

    def _u(self, tenant: str, user_id: str) -> str:
        return f"{self._p}u:{tenant}:{user_id}"

    def _t(self, tenant: str) -> str:
        return f"{self._p}t:{tenant}"

    async def _index(self, record: SessionRecord) -> None:
        ttl_ms = max(_ms(record.expires - self._clock()), 1000)
        for index in (self._u(record.tenant, record.user_id), self._t(record.tenant)):
            args: list[str | int] = [record.id_hash, ttl_ms]
            await self._guard(lambda i=index, a=args: self._index_add(keys=[i], args=a), index)  # type: ignore[misc]

    async def _unindex(self, tenant: str, user_id: str, id_hash: str) -> None:
        for index in (self._u(tenant, user_id), self._t(tenant)):
            await self._guard(lambda i=index: self._r.srem(i, id_hash), index)  # type: ignore[misc]

    async def _write(self, record: SessionRecord) -> None:
        args: list[str | int] = [_ms(record.expires), *_fields(record)]
        key = self._s(record.id_hash)
        await self._guard(lambda: self._create(keys=[key], args=args), key)

    async def create(self, record: SessionRecord) -> None:
        await self._index(record)  # first: a session must never exist outside its index
        await self._write(record)

    async def get(self, id_hash: str) -> SessionRecord | None:
        key = self._s(id_hash)
        h = await self._guard(lambda: self._r.hgetall(key), key)
        if not h:
            return None
        record = _record(id_hash, h)
        return record if record.expires > self._clock() else None

    async def touch(self, id_hash: str, last_seen: float, expires: float) -> bool:
        args: list[str | int] = [repr(last_seen), repr(expires), _ms(expires)]
        key = self._s(id_hash)
        done = await self._guard(lambda: self._touch(keys=[key], args=args), key)
        return bool(done)

    async def rotate(self, old_hash: str, new: SessionRecord) -> bool:
        """New session first, then DEL of the old one decides: if the old one was
        already gone (revoked meanwhile), the new one is removed again, so a revoked
        session is never resurrected and a concurrent "log out everywhere", which
        sees both in the index, removes both."""
        old_key = self._s(old_hash)
        if not await self._guard(lambda: self._r.exists(old_key), old_key):
            return False
        await self._index(new)
        await self._write(new)
        if not await self._delete_replicated([self._s(old_hash)]):
            new_key = self._s(new.id_hash)
            await self._guard(lambda: self._r.delete(new_key), new_key)
            await self._unindex(new.tenant, new.user_id, new.id_hash)
            return False
        await self._unindex(new.tenant, new.user_id, old_hash)
        return True

    async def revoke(self, id_hash: str) -> bool:
        key = self._s(id_hash)
        owner = await self._guard(lambda: self._r.hmget(key, ["tenant", "user_id"]), key)
        deleted = await self._delete_replicated([self._s(id_hash)])
        if owner[0] is not None and owner[1] is not None:
            await self._unindex(owner[0], owner[1], id_hash)
        return bool(deleted)

    async def revoke_user(self, tenant: str, user_id: str) -> int:
        """Delete every session in the user's index, one key at a time (each may live
        in another slot); a second pass catches a session indexed meanwhile."""
        index = self._u(tenant, user_id)
        count = 0
        done: set[str] = set()
        for _ in range(2):
            ids = set(await self._guard(lambda: self._r.smembers(index), index)) - done
            if not ids:
                break
            count += await self._delete_replicated([self._s(i) for i in sorted(ids)])
            done |= ids
            for held in (index, self._t(tenant)):
                await self._guard(lambda h=held, i=ids: self._r.srem(h, *i), held)  # type: ignore[misc]
        return count

    async def _members(self, index: str) -> list[SessionRecord]:
        ids = sorted(await self._guard(lambda: self._r.smembers(index), index))
        if not ids:
            return []
        found = await self._pipelined([self._s(i) for i in ids], _hgetall)
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
            await self._guard(lambda: self._r.srem(index, *stale), index)
        return sorted(live, key=lambda r: r.created)

    async def list_user(self, tenant: str, user_id: str) -> list[SessionRecord]:
        return await self._members(self._u(tenant, user_id))

    async def list(self, tenant: str) -> list[SessionRecord]:
        return await self._members(self._t(tenant))

    async def count(self, tenant: str) -> int:
        """The tenant index's size: live sessions, plus expired ones not yet pruned
        (pruning runs hourly), so an upper bound that never loads a record."""
        index = self._t(tenant)
        return int(await self._guard(lambda: self._r.scard(index), index))

    async def prune_expired(self, now: float) -> int:
        """Redis expires the sessions itself; this drops their index entries, a few
        hundred members at a time (an index may name 100,000 sessions: never load them)."""
        removed = 0
        for pattern in (f"{self._p}u:*", f"{self._p}t:*"):
            async for index in _scan(self._r, pattern):
                removed += await self._prune_index(index)
        return removed

    async def _prune_index(self, index: str) -> int:
        removed = 0
        cursor: Any = 0
        while True:
            cursor, ids = await self._guard(
                lambda c=cursor: self._r.sscan(index, cursor=c, count=500),  # type: ignore[misc]
                index,
            )
            if ids:
                alive = await self._pipelined([self._s(i) for i in ids], _exists)
                gone = [i for i, present in zip(ids, alive, strict=True) if not present]
                if gone:
                    await self._guard(lambda g=gone: self._r.srem(index, *g), index)  # type: ignore[misc]
                    removed += len(gone)
            if int(cursor) == 0:
                return removed


async def _scan(client: Any, pattern: str) -> Any:
    """Every matching key (a Cluster client scans every primary)."""
    try:
        async for key in client.scan_iter(match=pattern, count=500):
            yield key
    except _DRIVER_ERRORS as exc:
        raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc


# --- single-use codes --------------------------------------------------------


class RedisSsoCodeStore(_Revoking):
    """Codes (SSO hand-offs, WebAuthn challenges) under `<prefix>sso:<hash>`, expiring
    by TTL, on the sessions' client (its breakers, per master on a Cluster). Taken by
    GETDEL; with `wait_replicas`, by GET and a confirmed DEL instead (the DEL that
    deleted decides who took it, as in the database), so that a code taken is not
    there again after a failover."""

    async def put(self, code_hash: str, grant: SsoGrant, ttl: float) -> None:
        key, ttl_ms = f"{self._p}sso:{code_hash}", max(1, int(ttl * 1000))
        value = grant.encoded()
        await self._guard(lambda: self._r.set(key, value, px=ttl_ms, nx=True), key)

    async def take(self, code_hash: str, now: float) -> SsoGrant | None:
        key = f"{self._p}sso:{code_hash}"
        if self._replicas:
            value = await self._guard(lambda: self._r.get(key), key)
            if value is None or not await self._delete_replicated([key]):
                return None
        else:
            value = await self._guard(lambda: self._r.getdel(key), key)
            if value is None:
                return None
        grant = SsoGrant.decoded(value)
        return grant if grant.expires > now else None

    async def prune(self, now: float) -> int:
        return 0  # Redis expires the keys itself


# --- rate limiting -----------------------------------------------------------

# KEYS: counter, registry (one slot: both carry the tag {<key>}).
# ARGV: counter time to live in ms, window (registry member), registry ttl ms.
# Times to live, never moments: Redis counts them on its own clock, so a counter or a
# ban lives as long as meant whatever this host's clock says (a moment from a host
# whose clock lags Redis's is already past: the key would be deleted at once).
_HIT = """
local n = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return n
"""


_RELEASE = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n > 0 then return redis.call('DECR', KEYS[1]) end
return 0
"""


class RedisRateLimiter(_Guarded):
    """Fixed-window counters: INCR + expiry + window registry in one script per hit."""

    def __init__(self, client: Any, prefix: str = "authgate:", clock: Clock = time.time) -> None:
        super().__init__(client)
        self._p = _check_prefix(prefix)
        self._clock = clock
        self._hit = client.register_script(_HIT)
        self._release = client.register_script(_RELEASE)

    def _counter(self, key: str, window_s: float, start: float) -> str:
        return f"{self._p}rl:{{{key}}}:{window_s!r}:{start!r}"

    def _registry(self, key: str) -> str:
        return f"{self._p}rlw:{{{key}}}"

    def _ban(self, key: str) -> str:
        return f"{self._p}ban:{{{key}}}"

    async def hit(self, key: str, window_s: float) -> int:
        now = self._clock()
        start = math.floor(now / window_s) * window_s
        keys = [self._counter(key, float(window_s), float(start)), self._registry(key)]
        args: list[str | int] = [_ms(start + window_s - now) + 1000, repr(float(window_s))]
        args.append(REGISTRY_TTL_MS)
        # Every key of one limiter key shares its hash tag, so its slot and master.
        count = await self._guard(lambda: self._hit(keys=keys, args=args), keys[0])
        return int(count)

    async def release(self, key: str, window_s: float) -> None:
        start = math.floor(self._clock() / window_s) * window_s
        keys = [self._counter(key, float(window_s), float(start))]
        await self._guard(lambda: self._release(keys=keys), keys[0])

    async def ban(self, key: str, seconds: float) -> float:
        until = self._clock() + seconds
        ttl_ms = max(_ms(seconds), 1)
        ban = self._ban(key)
        await self._guard(lambda: self._r.set(ban, repr(until), px=ttl_ms), ban)
        return until

    async def banned_until(self, key: str) -> float | None:
        """The ban's end as its writer saw it, while Redis keeps the key: Redis times the
        ban (its TTL), not a comparison with this host's clock, which may run ahead of
        the writer's (the value is also a counter generation's name: never recomputed)."""
        ban = self._ban(key)
        value = await self._guard(lambda: self._r.get(ban), ban)
        return None if value is None else float(value)

    async def clear(self, key: str) -> None:
        """Only the current window's counters matter to `hit`, so those are dropped."""
        registry = self._registry(key)
        windows = await self._guard(lambda: self._r.smembers(registry), registry)
        now = self._clock()
        doomed = [self._ban(key), registry]
        for text in windows:
            window_s = float(text)
            doomed.append(self._counter(key, window_s, math.floor(now / window_s) * window_s))
        await self._guard(lambda: self._r.delete(*doomed), registry)

    async def list_bans(self) -> list[Ban]:
        prefix = f"{self._p}ban:"
        now = self._clock()
        bans: list[Ban] = []
        async for name in _scan(self._r, prefix + "*"):
            value = await self._guard(lambda n=name: self._r.get(n), name)  # type: ignore[misc]
            if value is not None and float(value) > now:
                key = name[len(prefix) :]
                if key.startswith("{") and key.endswith("}"):
                    key = key[1:-1]
                bans.append(Ban(key, float(value)))
        return sorted(bans, key=lambda b: b.until)


# --- events --------------------------------------------------------------------


class _Listener:
    """One subscription: reads messages, and reopens itself on a new connection
    when the one it had is lost (telling the callback that it may have missed some)."""

    def __init__(self, new_pubsub: Callable[[], Any], channel: str, callback: Callback) -> None:
        self._new_pubsub = new_pubsub
        self._channel = channel
        self._callback = callback
        self.pubsub: Any = None
        self.stopped = False

    async def open(self) -> None:
        pubsub = self._new_pubsub()
        try:
            await _guard(lambda: pubsub.subscribe(self._channel))
        except StoreUnavailable:
            await _close_pubsub(pubsub)
            raise
        self.pubsub = pubsub

    async def run(self) -> None:
        clock = asyncio.get_running_loop().time
        heard = clock()  # when the server last said anything on this connection
        pinged: float | None = None  # when an unanswered ping was sent
        while not self.stopped:
            try:
                message = await self.pubsub.get_message(timeout=min(1.0, LIVENESS_INTERVAL))
                now = clock()
                if message is not None:
                    heard, pinged = now, None
                elif pinged is not None:
                    if now - pinged > LIVENESS_TIMEOUT:
                        # After the event loop was held up, the answer may be waiting
                        # unread: the read's timer fired before its data was looked at.
                        message = await self.pubsub.get_message(timeout=0)
                        if message is None:
                            raise _Silent(f"no answer to a ping in {LIVENESS_TIMEOUT} s")
                        heard, pinged = now, None
                elif now - heard >= LIVENESS_INTERVAL:
                    await self.pubsub.ping(_LIVENESS_PING)
                    pinged = now
            except (*_DRIVER_ERRORS, _Silent):
                log.warning("event subscription lost; reconnecting", exc_info=True)
                await self._reopen()
                heard, pinged = clock(), None
                continue
            if message is None or message.get("type") != "message":
                continue
            await self._deliver(str(message["data"]))

    async def reopen_and_run(self) -> None:
        """Open (again and again until it can: a server down now is tried until it
        answers, and the callback hears RESYNC once it does), then run."""
        await self._reopen()
        await self.run()

    async def _reopen(self) -> None:
        if self.pubsub is not None:
            await _close_pubsub(self.pubsub)
        while not self.stopped:
            await asyncio.sleep(RESUBSCRIBE_DELAY)
            try:
                await self.open()
            except StoreUnavailable:
                continue
            await self._deliver(RESYNC)
            return

    async def _deliver(self, message: str) -> None:
        try:
            await self._callback(message)
        except Exception:
            log.exception("event callback failed")


async def _close_pubsub(pubsub: Any) -> None:
    with contextlib.suppress(*_DRIVER_ERRORS):
        await pubsub.aclose()
    node = getattr(pubsub, "_authgate_node", None)
    if node is not None:
        with contextlib.suppress(*_DRIVER_ERRORS):
            await node.aclose()


class RedisSubscription:
    def __init__(self, listener: _Listener, task: asyncio.Task[None]) -> None:
        self._listener = listener
        self._task = task

    async def close(self) -> None:
        self._listener.stopped = True
        self._task.cancel()
        # A redis-py read under a timeout can swallow a cancellation that lands as its
        # timer fires, and the task runs on: its stop flag ends it within a second.
        await asyncio.wait([self._task], timeout=3.0)
        if self._listener.pubsub is not None:
            await _close_pubsub(self._listener.pubsub)


class RedisEventBus(_Guarded):
    """Redis pub/sub: delivery is immediate, to every subscribed connection.

    Messages published while a subscriber is disconnected are lost (pub/sub keeps
    nothing); after reconnecting the subscriber receives `RESYNC` so it can drop
    what it cached. `new_pubsub` makes a fresh PubSub (see `RedisHandle.pubsub`)."""

    def __init__(
        self,
        client: Any,
        prefix: str = "authgate:",
        *,
        new_pubsub: Callable[[], Any] | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(client)
        self._p = _check_prefix(prefix)
        self._new_pubsub = new_pubsub or (lambda: client.pubsub(ignore_subscribe_messages=True))
        self._attempts = max(attempts, 1)

    async def publish(self, channel: str, message: str) -> None:
        await self._guard(lambda: self._r.publish(self._p + channel, message))

    async def subscribe(self, channel: str, callback: Callback) -> RedisSubscription:
        listener = _Listener(self._new_pubsub, self._p + channel, callback)
        for attempt in range(self._attempts):
            try:
                await listener.open()
                break
            except StoreUnavailable:
                if attempt + 1 == self._attempts:
                    raise
        task = asyncio.create_task(listener.run())
        return RedisSubscription(listener, task)
