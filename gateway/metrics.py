"""Prometheus metrics: what the gateway counts, and `{prefix}/metrics` to scrape them.

Label values come only from the config and from fixed sets (tenant id, route as
configured, decision, status code, sign-in method and result, store name and
operation): never a user name, an address or a request path, so cardinality is
bounded by the config. The hot path touches label children bound once (per route at
start, per status the first time it is seen), so counting a request allocates nothing.

`authgate serve` forks workers; `enable_multiprocess(directory)` (called by the
supervisor before any worker exists) makes every worker write its values to files in
`directory`, and a scrape of any worker aggregates them all. A single process (tests,
the demo) keeps its values in memory, in a registry of its own per `Metrics`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import ipaddress
import os
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar, cast

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway import replica_wait
from gateway.config.model import Config, IPNetwork, RouteConfig, TenantConfig
from gateway.reserved import ReservedRequest
from gateway.stores import SessionStore, Stores
from gateway.stores.breaker import circuits
from policies import Action

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
NONE = "-"  # label value when a request ended before its tenant/route/decision was known

SIGN_IN_METHODS = frozenset({"password", "passkey", "totp", "backup_code", "apikey"})
SIGN_IN_RESULTS = frozenset({"success", "failure", "banned"})

# The decision (and the credential lookups before it) takes microseconds when the
# session is cached and milliseconds when a store is asked.
_FAST_BUCKETS = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)
_REQUEST_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
ACTIVE_SESSIONS_CACHE_SECONDS = 30.0
ACTIVE_SESSIONS_TIMEOUT = 1.0  # what a scrape waits for the count at most


def enable_multiprocess(directory: str) -> None:
    """Make metrics created from now on in this process and its forks write to files in
    `directory`. prometheus_client picks its value class when first imported, which
    may have happened already (the CLI imports the whole gateway), so pick it again."""
    os.environ[MULTIPROC_ENV] = directory
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def mark_worker_dead(pid: int) -> None:
    """Bookkeeping when a worker exits (drops its live gauges; counters stay counted)."""
    directory = multiprocess_dir()
    if directory is not None:
        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def route_label(route: RouteConfig) -> str:
    """A route as the operator configured it: host and path prefix."""
    return f"{route.host}{route.path}"


# The per-request metrics are summed in plain Python numbers first and handed to
# prometheus_client in bulk (every FLUSH_SECONDS, and before every scrape): its own
# observe() takes a lock per bucket value (and, with workers, writes a shared file),
# which cost more per request than the rest of the metrics work together.
FLUSH_SECONDS = 1.0


class BufferedHistogram:
    """A histogram child's observations, bucketed locally until `flush`."""

    __slots__ = ("_bounds", "_child", "_counts", "_sum")

    def __init__(self, child: Any) -> None:
        self._child = child
        self._bounds: list[float] = list(child._upper_bounds)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0

    def observe(self, amount: float) -> None:
        self._counts[bisect_left(self._bounds, amount)] += 1
        self._sum += amount

    def flush(self) -> None:
        counts = self._counts
        if not any(counts):
            return
        self._counts = [0] * len(self._bounds)
        total, self._sum = self._sum, 0.0
        self._child._sum.inc(total)
        for index, count in enumerate(counts):
            if count:
                self._child._buckets[index].inc(count)


class BufferedCounter:
    """A counter child's increments, summed locally until `flush`. The hottest paths
    add to `count` themselves (a method call costs more than the addition)."""

    __slots__ = ("_child", "count")

    def __init__(self, child: Any) -> None:
        self._child = child
        self.count = 0

    def inc(self, amount: int = 1) -> None:
        self.count += amount

    def flush(self) -> None:
        if self.count:
            count, self.count = self.count, 0
            self._child.inc(count)


class RouteMetrics:
    """Label children of one (tenant, route), bound once."""

    __slots__ = ("_buffered", "_labels", "_requests", "duration", "requests", "upstream")

    def __init__(self, metrics: Metrics, tenant: str, route: str) -> None:
        self._labels = (tenant, route)
        self._requests = metrics.requests
        self._buffered = metrics.buffered
        self.duration = metrics.buffer(metrics.request_duration.labels(tenant, route))
        self.upstream = metrics.buffer(metrics.upstream_duration.labels(tenant, route))
        # decision → status code → counter child; statuses are added as they are seen
        self.requests: dict[Action | None, dict[int, BufferedCounter]] = {a: {} for a in Action}
        self.requests[None] = {}

    def count(self, action: Action | None, status: int) -> None:
        by_status = self.requests[action]
        child = by_status.get(status)
        if child is None:
            decision = action.name if action is not None else NONE
            child = BufferedCounter(self._requests.labels(*self._labels, decision, str(status)))
            self._buffered.append(child)
            by_status[status] = child
        child.count += 1


class Metrics:
    """Every metric of one gateway process, and the handler that exposes them."""

    def __init__(self, config: Config) -> None:
        self.buffered: list[BufferedHistogram | BufferedCounter] = []
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.networks: tuple[IPNetwork, ...] = config.server.metrics_networks
        self.requests = Counter(
            "authgate_requests",
            "Requests answered, by tenant, route (as configured), decision and status.",
            ("tenant", "route", "decision", "status"),
            registry=registry,
        )
        self.request_duration = Histogram(
            "authgate_request_duration_seconds",
            "Whole request, from the first byte of the head to the response.",
            ("tenant", "route"),
            buckets=_REQUEST_BUCKETS,
            registry=registry,
        )
        self.decision_duration = Histogram(
            "authgate_decision_duration_seconds",
            "Credentials to decision: session or API key lookup and policy decide.",
            ("tenant",),
            buckets=_FAST_BUCKETS,
            registry=registry,
        )
        self.upstream_duration = Histogram(
            "authgate_upstream_duration_seconds",
            "From sending the request upstream to the upstream's response headers.",
            ("tenant", "route"),
            buckets=_REQUEST_BUCKETS,
            registry=registry,
        )
        self.sign_ins = Counter(
            "authgate_sign_in_attempts",
            "Sign-in and factor attempts by method and result.",
            ("tenant", "method", "result"),
            registry=registry,
        )
        self.store_errors = Counter(
            "authgate_store_errors",
            "Store calls that raised, by store.",
            ("store",),
            registry=registry,
        )
        self.store_duration = Histogram(
            "authgate_store_duration_seconds",
            "Store call latency by store and operation.",
            ("store", "op"),
            buckets=_FAST_BUCKETS,
            registry=registry,
        )
        self.upstream_connections = UpstreamConnections(registry)
        self.policy_reloads = Counter(
            "authgate_policy_reloads",
            "Policy reloads in a worker (each worker reloads), by result.",
            ("result",),
            registry=registry,
        )
        for result in ("success", "failure"):
            self.policy_reloads.labels(result)
        self.clock_offsets = Gauge(
            "authgate_clock_offset_seconds",
            "The shared store's clock minus this host's (Redis TIME or PostgreSQL),"
            " as last read; more than a second wants NTP looked at.",
            ("reference",),
            registry=registry,
            multiprocess_mode="liveall",
        )
        fast_path = Counter(
            "authgate_fast_path_requests",
            "Requests met by the fast path (server.fast_path): served there, or handed"
            " over unanswered to the full server (which serves the connection from then on).",
            ("outcome",),
            registry=registry,
        )
        self.fast_path_served = self.buffer_counter(fast_path.labels("served"))
        self.fast_path_handed_over = self.buffer_counter(fast_path.labels("handed_over"))
        self.fast_path_reused = self.buffer_counter(
            Counter(
                "authgate_fast_path_reused_decisions",
                "Requests the fast path served on a decision it made for the same bytes from"
                " the same peer moments before (a part of its served requests).",
                registry=registry,
            )
        )
        self._routes: dict[int, RouteMetrics] = {}
        self._tenants: dict[str, RouteMetrics] = {}
        self._decisions: dict[str, Any] = {}
        for tenant in config.tenants:
            self._tenants[tenant.id] = RouteMetrics(self, tenant.id, NONE)
            self._decisions[tenant.id] = self.buffer(self.decision_duration.labels(tenant.id))
            for route in tenant.routes:
                self._routes[id(route)] = RouteMetrics(self, tenant.id, route_label(route))
        self._nowhere = RouteMetrics(self, NONE, NONE)
        self._kept: list[RouteConfig] = []
        self._api_keys: dict[str, tuple[Any, Any]] = {
            t.id: (
                self.sign_ins.labels(t.id, "apikey", "failure"),
                self.sign_ins.labels(t.id, "apikey", "success"),
            )
            for t in config.tenants
        }
        self._active_sessions: Callable[[], Awaitable[Iterable[tuple[str, int]]]] | None = None
        self._active_cache: tuple[float, tuple[tuple[str, int], ...]] = (-1e18, ())

    # --- the hot path -----------------------------------------------------------

    def for_route(self, tenant: TenantConfig | None, route: RouteConfig | None) -> RouteMetrics:
        if tenant is None:
            return self._nowhere
        if route is not None:
            found = self._routes.get(id(route))
            if found is None:
                # A tenant from the database, added while serving: bound on first use.
                # Its RouteConfig lives as long as the tenant, so its id stays its own.
                found = RouteMetrics(self, tenant.id, route_label(route))
                self._routes[id(route)] = found
                self._kept.append(route)  # alive, so its id is never reused
            return found
        found = self._tenants.get(tenant.id)
        if found is None:
            found = self._tenants[tenant.id] = RouteMetrics(self, tenant.id, NONE)
        return found

    def decision_timer(self, tenant_id: str) -> Any:
        found = self._decisions.get(tenant_id)
        if found is None:
            found = self._decisions[tenant_id] = self.buffer(
                self.decision_duration.labels(tenant_id)
            )
        return found

    def buffer(self, histogram_child: Any) -> BufferedHistogram:
        buffered = BufferedHistogram(histogram_child)
        self.buffered.append(buffered)
        return buffered

    def buffer_counter(self, counter_child: Any) -> BufferedCounter:
        buffered = BufferedCounter(counter_child)
        self.buffered.append(buffered)
        return buffered

    def flush(self) -> None:
        """Hand what the hot path summed to prometheus_client (before a scrape, and
        every FLUSH_SECONDS so other workers' scrapes see it)."""
        for item in self.buffered:
            item.flush()

    async def flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            self.flush()

    def api_key(self, tenant_id: str, ok: bool) -> None:
        """An API key presented (every request that carries one is an attempt)."""
        pair = self._api_keys.get(tenant_id)
        if pair is None:
            self.sign_in(tenant_id, "apikey", "success" if ok else "failure")
        else:
            pair[ok].inc()

    # --- elsewhere --------------------------------------------------------------

    def sign_in(self, tenant: str, method: str, result: str) -> None:
        """Count a sign-in or factor attempt; `method` and `result` from the fixed sets."""
        if method not in SIGN_IN_METHODS or result not in SIGN_IN_RESULTS:
            raise ValueError(f"unknown sign-in method/result {method!r}/{result!r}")
        self.sign_ins.labels(tenant, method, result).inc()

    def clock_offset(self, reference: str, offset: float) -> None:
        self.clock_offsets.labels(reference).set(offset)

    def policy_reload(self, ok: bool) -> None:
        self.policy_reloads.labels("success" if ok else "failure").inc()

    def count_active_sessions(
        self, source: Callable[[], Awaitable[Iterable[tuple[str, int]]]]
    ) -> None:
        """Where the active-session gauge comes from: (tenant, count) pairs, asked at
        most every ACTIVE_SESSIONS_CACHE_SECONDS by a scrape."""
        self._active_sessions = source

    # --- the endpoint -----------------------------------------------------------

    async def handle(self, req: ReservedRequest) -> web.StreamResponse:
        """`{prefix}/metrics`: only for peers in `server.metrics_networks` (the socket's
        peer address, never X-Forwarded-For: a client can write that header)."""
        if not self.peer_allowed(req.request.remote):
            return web.Response(
                status=403, text="forbidden\n", headers={"Cache-Control": "no-store"}
            )
        active = await self._active()
        self.flush()
        body = await asyncio.get_running_loop().run_in_executor(None, self.exposition, active)
        return web.Response(
            body=body,
            headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"},
        )

    def peer_allowed(self, peer: str | None) -> bool:
        if not peer:
            return False
        try:
            address = ipaddress.ip_address(peer.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    def exposition(self, active: tuple[tuple[str, int], ...] = ()) -> bytes:
        """The text format: every worker's values when multi-process, else this process's."""
        directory = multiprocess_dir()
        if directory is not None:
            registry = CollectorRegistry(auto_describe=False)
            multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
            body = generate_latest(registry)
        else:
            body = generate_latest(self.registry)
        if self._active_sessions is not None:
            # Counted in this process at scrape time, not kept in the shared files: a
            # collector of its own, so no value class (memory or file) is involved.
            gauges = CollectorRegistry(auto_describe=False)
            gauges.register(_ActiveSessions(active))
            body += generate_latest(gauges)
        dropped = CollectorRegistry(auto_describe=False)
        dropped.register(_DroppedLogRecords())
        dropped.register(_Circuits())
        dropped.register(_Unconfirmed())
        return body + generate_latest(dropped)

    async def _active(self) -> tuple[tuple[str, int], ...]:
        if self._active_sessions is None:
            return ()
        at, cached = self._active_cache
        now = time.monotonic()
        if now - at < ACTIVE_SESSIONS_CACHE_SECONDS:
            return cached
        try:
            # A scrape must not wait on a store that hangs (Prometheus gives up at 10 s
            # and the outage would go unseen): the count is left out instead.
            async with asyncio.timeout(ACTIVE_SESSIONS_TIMEOUT):
                fresh = tuple(await self._active_sessions())
        except Exception:
            # The store errors are counted where they happen; the failure is remembered
            # like an answer, so the next scrapes do not wait again.
            self._active_cache = (now, cached)
            return cached
        self._active_cache = (now, fresh)
        return fresh


class UpstreamConnections:
    """Open upstream connections (a gauge summed over live workers) and how many were
    ever opened: a pool that stops reusing its connections shows as a climbing count,
    a leak as an open gauge that never comes down. Moved per connection, never per
    request."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.open = Gauge(
            "authgate_upstream_connections",
            "Upstream connections open now (kept alive or in use), all workers.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.total = Counter(
            "authgate_upstream_connections_opened",
            "Upstream connections opened (plain HTTP; WebSockets not counted).",
            registry=registry,
        )

    def opened(self) -> None:
        self.open.inc()
        self.total.inc()

    def closed(self) -> None:
        self.open.dec()


class _ActiveSessions(Collector):
    def __init__(self, counts: tuple[tuple[str, int], ...]) -> None:
        self._counts = counts

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "authgate_active_sessions",
            "Unexpired sessions in the store, by tenant (counted at most every 30 s).",
            labels=("tenant",),
        )
        for tenant, count in self._counts:
            family.add_metric((tenant,), count)
        yield family


class _DroppedLogRecords(Collector):
    def collect(self) -> Iterable[Metric]:
        from gateway.logs import dropped_log_records  # logs → request_log → metrics

        family = CounterMetricFamily(
            "authgate_log_records_dropped",
            "Log records dropped because the log writer fell behind (the scraped worker).",
        )
        family.add_metric((), dropped_log_records())
        yield family


class _Circuits(Collector):
    """The stores' circuit breakers (gateway.stores.breaker) of the scraped worker."""

    def collect(self) -> Iterable[Metric]:
        states = circuits()
        open_now = GaugeMetricFamily(
            "authgate_store_circuit_open",
            "Store circuit breakers open now (calls fail at once), by store (the scraped worker).",
            labels=("store",),
        )
        opened = CounterMetricFamily(
            "authgate_store_circuit_openings",
            "Times a store's circuit breaker opened (the store stopped answering), by store"
            " (the scraped worker).",
            labels=("store",),
        )
        for name, (count_open, count_opened) in sorted(states.items()):
            open_now.add_metric((name,), count_open)
            opened.add_metric((name,), count_opened)
        yield open_now
        yield opened


class _Unconfirmed(Collector):
    """Revocations answered before their replicas had them (gateway.replica_wait)."""

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "authgate_revocations_unconfirmed",
            "Revocations answered without the replicas `wait_replicas` asks for having them"
            " (a failover now could undo them), by store (the scraped worker).",
            labels=("store",),
        )
        for store, count in sorted(replica_wait.unconfirmed.items()):
            family.add_metric((store,), count)
        yield family


T = TypeVar("T")


class _TimedStore:
    """A store whose coroutine methods are timed and whose exceptions are counted."""

    def __init__(self, store: object, name: str, metrics: Metrics) -> None:
        self._store = store
        self._name = name
        self._metrics = metrics
        self._errors = metrics.store_errors.labels(name)

    def __getattr__(self, attr: str) -> Any:
        target = getattr(self._store, attr)
        if not inspect.iscoroutinefunction(target):
            return target
        timer = self._metrics.store_duration.labels(self._name, attr)
        errors = self._errors
        perf = time.perf_counter

        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = perf()
            try:
                return await target(*args, **kwargs)
            except Exception:
                errors.inc()
                raise
            finally:
                timer.observe(perf() - started)

        # Bound once: later lookups find the attribute and skip __getattr__.
        setattr(self, attr, timed)
        return timed


def timed_store(store: T, name: str, metrics: Metrics) -> T:
    """`store` with latency and errors counted under `name` (the Protocol is unchanged)."""
    return cast(T, _TimedStore(store, name, metrics))


_TIMED_STORES = ("users", "sessions", "apikeys", "credentials", "keys", "audit", "limiter")


def timed_stores(stores: Stores, metrics: Metrics) -> Stores:
    """`stores` with every store but the event bus timed (one wrapper each, made once)."""
    timed = {name: timed_store(getattr(stores, name), name, metrics) for name in _TIMED_STORES}
    return dataclasses.replace(stores, **timed)


def session_counter(
    sessions: SessionStore, tenant_ids: Iterable[str]
) -> Callable[[], Awaitable[Iterable[tuple[str, int]]]]:
    """The active-session gauge's source: live sessions per tenant, counted by the store
    (no records loaded); a scrape asks at most every 30 s."""
    ids = tuple(tenant_ids)

    async def count() -> Iterable[tuple[str, int]]:
        return [(tenant, await sessions.count(tenant)) for tenant in ids]

    return count
