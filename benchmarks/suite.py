"""The load part of `python -m benchmarks`: start every scenario, measure them in
interleaved rounds with wrk, then measure added latency at a fixed, reduced rate.

Scenarios (all against the same nginx upstream answering `200 ok`):
  direct        wrk → upstream
  nginx         wrk → nginx reverse proxy → upstream
  minimal       wrk → minimal aiohttp proxy → upstream
  floor         wrk → the Python floor (llhttp finds message ends, bytes relayed) → upstream
  bypass        (a) wrk → authgate, route whose policy is `bypass` → upstream
  session       (b) wrk → authgate, signed-in session (SQLite), policy on the group,
                identity headers and JWT → upstream
  session_varied (b)'s gateway, every request with a query of its own (nothing reused)
  session_browser (b)'s gateway, as session_varied with a browser's headers (16 fields)
  minimal_browser the minimal proxy, with the same requests as session_browser
  redis         (c) as (b), sessions in Redis
  session_aiohttp  (b) with server.fast_path: false (every request on aiohttp's server)
  session_fast, redis_fast  (b) and (c) tuned: server.cpu_affinity: auto
  forward_auth  (d) wrk → nginx auth_request → authgate /.authgate/verify; → upstream
  forward_auth_varied (d), every request with a query of its own (no answer given again)
"""

from __future__ import annotations

import asyncio
import math
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from benchmarks._harness import (
    LOOPBACK,
    WRK_DONE_SCRIPT,
    BenchmarkError,
    ManagedProcess,
    WrkResult,
    WrkSettings,
    cpu_seconds,
    median,
    nginx_path,
    peak_rss_bytes,
    run_wrk,
    wrk_path,
)
from benchmarks.scenarios import (
    BENCH_HOST,
    BYPASS_POLICY,
    REDIS_URL,
    SESSION_POLICY,
    AuthgateSetup,
    Scenario,
    browser_headers,
    delete_redis_prefix,
    run_prefix,
    start_authgate_scenario,
    start_floor_proxy,
    start_forward_auth,
    start_minimal_proxy,
    start_nginx_proxy,
    start_upstream,
    stop_all,
)
from benchmarks.sched import Snapshot, cpu_ticks, idle_share, snapshot, spent

MAX_ERROR_SHARE = 0.01  # more failed requests than this: the figures mean nothing
DIRECT_AT_NGINX_RATE = "direct@nginx"  # direct, paced at half of nginx's maximum
DIRECT_AT_FAST_RATE = "direct@fast"  # direct, paced at half of (b) tuned's
PACE_MS = 20  # fixed-rate runs: connections = rate x this (each idle ~this long between sends)


@dataclass(frozen=True)
class LoadOptions:
    workers: int
    threads: int
    connections: int
    duration: float
    warmup: float
    rounds: int
    redis_url: str = REDIS_URL


@dataclass(frozen=True)
class ScenarioResult:
    key: str
    label: str
    requests_per_second: float  # median over rounds
    latency_p50_ms: float
    latency_p99_ms: float
    peak_rss_mb_per_worker: float  # the largest authgate/proxy worker's high-water mark
    cpu_us_per_request: float  # CPU of every serving process (not wrk, not the upstream)
    errors: int  # socket errors + non-2xx/3xx, all rounds
    rounds: tuple[WrkResult, ...]


@dataclass(frozen=True)
class PacedResult:
    """One scenario at a fixed offered rate (closed loop with think time, see below)."""

    key: str
    target_rate: float
    connections: int
    pace_ms: int
    achieved_rate: float
    latency_p50_ms: float
    latency_p99_ms: float
    errors: int
    # Each round's p99 when there were several (the figures above are their medians):
    # added latency is then the median of the per-round differences to the baseline,
    # measured just before in the same round.
    p99_rounds: tuple[float, ...] = ()
    # What the scheduler saw of the serving processes (all their threads) during the run,
    # per request: time on a CPU, time runnable but waiting for one, and preemptions.
    # At a fixed rate on shared cores a request's tail is mostly such waits, and they
    # grow with what each request costs. None where /proc has no schedstat.
    cpu_us: float | None = None
    wait_us: float | None = None
    preempt: float | None = None
    # And what the rest of the machine did meanwhile: the share of all CPUs' time left
    # idle (%), and the load generator's CPU per request (wrk's own, user and system): at a
    # fixed rate, what is left to the proxy (and how long it queues) is what these leave.
    idle_pct: float | None = None
    load_us: float | None = None


@dataclass(frozen=True)
class LoadResults:
    scenarios: tuple[ScenarioResult, ...]
    paced: tuple[PacedResult, ...]
    failures: tuple[str, ...]


def paced_script(folder: Path, rate_per_thread: float) -> Path:
    """wrk's done() report plus an open-loop schedule: each wrk thread sends at a steady
    `rate_per_thread`, on whichever of its connections is free.

    Debian's wrk (4.1) has no `-R` (that is wrk2), but its `delay()` hook runs before
    every request: here it hands out send times from one evenly spaced schedule per
    thread (monotonic clock through LuaJIT's FFI). A fixed think time per connection
    instead keeps connections that started together in lockstep — the server meets all
    of them at once every period, bursts rather than a rate, and the last of a burst
    waits for all the others. Latency is timed from the actual send, so a send that
    falls behind its slot (every connection busy) under-reports queueing (coordinated
    omission); the run has ~2x the connections the rate needs to make that rare."""
    interval_ms = 1000.0 / rate_per_thread
    path = folder / f"open-loop-{rate_per_thread:.0f}.lua"
    path.write_text(
        f"""local ffi = require("ffi")
ffi.cdef[[
typedef struct {{ long tv_sec; long tv_nsec; }} authgate_timespec;
int clock_gettime(int clock, authgate_timespec *tp);
]]
local ts = ffi.new("authgate_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end
local interval = {interval_ms:.6f}
local next_slot = nil
function delay()
  local now = now_ms()
  if next_slot == nil then next_slot = now + math.random() * interval end
  if next_slot < now then next_slot = now end  -- behind: send at once, never catch up in a burst
  local wait = next_slot - now
  next_slot = next_slot + interval
  return math.floor(wait + 0.5)
end
{WRK_DONE_SCRIPT}""",
        "utf-8",
    )
    return path


# wrk Lua before a `request` that makes every request unlike any before it: Lua states
# are per wrk thread, so each thread numbers its own (`thread_id`, `sent`).
NUMBERED_LUA = """\
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("thread_id", threads)
end
local sent = 0
"""
# Every request with a query of its own: nothing is reused, each is decided afresh.
VARIED_PATHS_LUA = (
    NUMBERED_LUA
    + """\
function request()
  sent = sent + 1
  return wrk.format(nil, "/?t=" .. thread_id .. "&n=" .. sent)
end
"""
)


def scenario_script(scenario: Scenario, script: Path) -> Path:
    """`script`, or the scenario's own Lua followed by it."""
    if not scenario.lua:
        return script
    path = script.with_name(f"{scenario.key}-{script.name}")
    path.write_text(scenario.lua + script.read_text(encoding="utf-8"), encoding="utf-8")
    return path


def _settings(options: LoadOptions, duration: float, scenario: Scenario) -> WrkSettings:
    return WrkSettings(options.threads, options.connections, duration, BENCH_HOST, scenario.headers)


def measure(
    scenario: Scenario, options: LoadOptions, script: Path, warmup: float
) -> tuple[WrkResult, float]:
    """Warm up, then one measured wrk run; returns it and the serving processes' CPU."""
    url = f"http://{LOOPBACK}:{scenario.port}/"
    script = scenario_script(scenario, script)
    if warmup > 0:
        run_wrk(url, _settings(options, warmup, scenario), script)
    pids = scenario.serving_pids()
    before = cpu_seconds(pids)
    result = run_wrk(url, _settings(options, options.duration, scenario), script)
    return result, cpu_seconds(pids) - before


def summarise(scenario: Scenario, rounds: list[tuple[WrkResult, float]]) -> ScenarioResult:
    results = tuple(result for result, _ in rounds)
    requests = sum(r.requests for r in results)
    cpu = sum(seconds for _, seconds in rounds)
    rss = max((peak_rss_bytes(pid) for pid in scenario.rss_from.worker_pids()), default=0)
    return ScenarioResult(
        key=scenario.key,
        label=scenario.label,
        requests_per_second=median(r.requests_per_second for r in results),
        latency_p50_ms=median(r.latency_p50_ms for r in results),
        latency_p99_ms=median(r.latency_p99_ms for r in results),
        peak_rss_mb_per_worker=rss / 2**20,
        cpu_us_per_request=cpu / requests * 1e6 if requests else 0.0,
        errors=sum(r.socket_errors + r.non_2xx_3xx for r in results),
        rounds=results,
    )


def fixed_rate_load(
    scenario: Scenario, rate: float, duration: float, folder: Path, threads: int
) -> tuple[int, Callable[[], WrkResult]]:
    """`scenario` at a steady `rate` req/s (open loop), from a pool of connections large
    enough that each is idle about PACE_MS between its requests, warmed up for a second:
    the connections, and the measured run, to be called."""
    connections = max(threads, math.ceil(rate * PACE_MS / 1000))
    script = paced_script(folder, max(rate, 1.0) / threads)
    url = f"http://{LOOPBACK}:{scenario.port}/"
    run_wrk(url, WrkSettings(threads, connections, 1.0, BENCH_HOST, scenario.headers), script)
    settings = WrkSettings(threads, connections, duration, BENCH_HOST, scenario.headers)
    return connections, lambda: run_wrk(url, settings, script)


def paced(
    scenario: Scenario, rate: float, options: LoadOptions, folder: Path, threads: int
) -> PacedResult:
    """`scenario` at a steady `rate` req/s (fixed_rate_load), measured once."""
    connections, measure = fixed_rate_load(scenario, rate, options.duration, folder, threads)
    pids = scenario.serving_pids()
    before = _scheduler_counts(pids)
    ticks = cpu_ticks()
    result = measure()
    ticks_after = cpu_ticks()
    after = _scheduler_counts(pids)
    used = spent(before, after) if before is not None and after is not None else None
    requests = max(result.requests, 1)
    return PacedResult(
        key=scenario.key,
        target_rate=rate,
        connections=connections,
        pace_ms=PACE_MS,
        achieved_rate=result.requests_per_second,
        latency_p50_ms=result.latency_p50_ms,
        latency_p99_ms=result.latency_p99_ms,
        errors=result.socket_errors + result.non_2xx_3xx,
        cpu_us=None if used is None else used.cpu_ns / requests / 1000,
        wait_us=None if used is None else used.wait_ns / requests / 1000,
        preempt=None if used is None else used.involuntary / requests,
        idle_pct=idle_share(ticks, ticks_after),
        load_us=None if result.cpu_seconds is None else result.cpu_seconds / requests * 1e6,
    )


def _scheduler_counts(pids: list[int]) -> Snapshot | None:
    """The scheduler's counts for `pids`, or None where they cannot be read (no
    schedstat): the run is reported without them, not failed."""
    try:
        return snapshot(pids)
    except BenchmarkError:
        return None


def _starters(
    options: LoadOptions, tmp: Path, upstream_port: int, prefix: str
) -> list[tuple[str, Callable[[], Scenario]]]:
    w = options.workers
    bypass = AuthgateSetup("bypass", BYPASS_POLICY, signed_in=False)
    session = AuthgateSetup("session", SESSION_POLICY)
    redis = AuthgateSetup("redis", SESSION_POLICY, options.redis_url, prefix)
    # The tuned configuration: each worker held to a CPU of its own. (The keys keep the
    # name they had when the fast path was part of the tuning, so results compare.)
    session_fast = replace(session, name="session_fast", cpu_affinity="auto")
    redis_fast = replace(redis, name="redis_fast", cpu_affinity="auto")
    # For scale: every request on aiohttp's server, as before the fast path was the default.
    session_aiohttp = replace(session, name="session_aiohttp", fast_path=False)
    return [
        ("nginx", lambda: start_nginx_proxy(w, tmp, upstream_port)),
        ("minimal", lambda: start_minimal_proxy(w, tmp, upstream_port)),
        ("floor", lambda: start_floor_proxy(w, tmp, upstream_port)),
        (
            "bypass",
            lambda: start_authgate_scenario(
                "bypass", "authgate (a) bypass route", w, tmp, upstream_port, bypass
            ),
        ),
        (
            "session",
            lambda: start_authgate_scenario(
                "session", "authgate (b) session+policy+JWT", w, tmp, upstream_port, session
            ),
        ),
        (
            "redis",
            lambda: start_authgate_scenario(
                "redis", "authgate (c) as (b), Redis sessions", w, tmp, upstream_port, redis
            ),
        ),
        (
            "session_aiohttp",
            lambda: start_authgate_scenario(
                "session_aiohttp",
                "authgate (b), fast_path: false",
                w,
                tmp,
                upstream_port,
                session_aiohttp,
            ),
        ),
        (
            "session_fast",
            lambda: start_authgate_scenario(
                "session_fast",
                "authgate (b), cpu_affinity auto",
                w,
                tmp,
                upstream_port,
                session_fast,
            ),
        ),
        (
            "redis_fast",
            lambda: start_authgate_scenario(
                "redis_fast",
                "authgate (c), cpu_affinity auto",
                w,
                tmp,
                upstream_port,
                redis_fast,
            ),
        ),
        ("forward_auth", lambda: start_forward_auth(w, tmp, upstream_port)),
    ]


def varied_requests(scenario: Scenario, key: str, label: str) -> Scenario:
    """`scenario`'s server, every request a new one: what deciding costs when nothing
    repeats (no decision reused, no forward-auth answer given again)."""
    return replace(scenario, key=key, label=label, lua=VARIED_PATHS_LUA)


def browser_requests(scenario: Scenario, key: str, label: str) -> Scenario:
    """`scenario`'s server, every request a new one with the headers a browser sends
    (14 more fields, three more cookies): the per-field work counts as on real traffic."""
    return replace(
        scenario,
        key=key,
        label=label,
        headers=browser_headers(scenario.headers),
        lua=VARIED_PATHS_LUA,
    )


def run_load(options: LoadOptions, log: Callable[[str], None]) -> LoadResults:
    """Start every server, measure each scenario `rounds` times (interleaved), stop all."""
    wrk_path()
    nginx_path()
    prefix = run_prefix()
    started: list[ManagedProcess] = []
    failures: list[str] = []
    try:
        with tempfile.TemporaryDirectory(prefix="authgate-bench-") as name:
            tmp = Path(name)
            script = tmp / "done.lua"
            script.write_text(WRK_DONE_SCRIPT, encoding="utf-8")
            upstream = start_upstream(options.workers, tmp)
            started.append(upstream.processes[0])
            scenarios = [upstream]
            for key, start in _starters(options, tmp, upstream.port, prefix):
                log(f"starting {key} …")
                try:
                    scenario = start()
                except BenchmarkError as exc:
                    failures.append(f"{key}: {exc}")
                    log(f"! {key}: {str(exc).splitlines()[0]} (details at the end)")
                    continue
                started.extend(scenario.processes)
                scenarios.append(scenario)
                if key == "session":
                    label = "authgate (b), no request repeated"
                    scenarios.append(varied_requests(scenario, "session_varied", label))
                    label = "authgate (b), a browser's requests, none repeated"
                    scenarios.append(browser_requests(scenario, "session_browser", label))
                elif key == "forward_auth":
                    label = "authgate (d), no request repeated"
                    scenarios.append(varied_requests(scenario, "forward_auth_varied", label))
                elif key == "minimal":
                    label = "minimal proxy, a browser's requests"
                    scenarios.append(browser_requests(scenario, "minimal_browser", label))
            measured: dict[str, list[tuple[WrkResult, float]]] = {s.key: [] for s in scenarios}
            for number in range(1, options.rounds + 1):
                # Every other round in reverse order, so a drift in the machine's load
                # does not always favour the scenario measured first.
                order = scenarios if number % 2 else scenarios[::-1]
                warmup = options.warmup if number == 1 else min(options.warmup, 1.0)
                for scenario in order:
                    log(f"round {number}/{options.rounds}: {scenario.label} …")
                    measured[scenario.key].append(measure(scenario, options, script, warmup))
            results = tuple(summarise(s, measured[s.key]) for s in scenarios)
            paced_results = _paced_runs(scenarios, results, options, tmp, log)
    finally:
        stop_all(started)
        try:
            asyncio.run(delete_redis_prefix(options.redis_url, prefix))
        except Exception as exc:
            failures.append(f"could not delete Redis keys {prefix}*: {exc}")
    for result in results:
        total = sum(r.requests for r in result.rounds)
        if total == 0 or result.errors > MAX_ERROR_SHARE * total:
            failures.append(f"{result.label}: {result.errors} failed requests of {total}")
    return LoadResults(results, paced_results, tuple(failures))


def _paced_runs(
    scenarios: list[Scenario],
    results: tuple[ScenarioResult, ...],
    options: LoadOptions,
    tmp: Path,
    log: Callable[[str], None],
) -> tuple[PacedResult, ...]:
    """direct, the minimal proxy and the Python floor (for scale), (b) and (c) at half
    of (b)'s maximal throughput, back to back."""
    by_key = {s.key: s for s in scenarios}
    maximum = {r.key: r.requests_per_second for r in results}
    if "session" not in by_key or not maximum.get("session"):
        return ()
    rate = maximum["session"] / 2
    plan = [
        (by_key[k], rate) for k in ("direct", "minimal", "floor", "session", "redis") if k in by_key
    ]
    # For scale: nginx at half of *its own* maximum, against direct at that same rate.
    # The machine is then as busy as in (b)'s run at half of (b)'s maximum, and what
    # nginx adds there is what this machine allows any proxy.
    # The tuned (b) and (c) likewise at half of tuned (b)'s maximum, against direct there.
    for top, baseline, keys in (
        ("nginx", DIRECT_AT_NGINX_RATE, ("nginx",)),
        ("session_fast", DIRECT_AT_FAST_RATE, ("session_fast", "redis_fast")),
    ):
        if top not in by_key or "direct" not in by_key or not maximum.get(top):
            continue
        own_rate = maximum[top] / 2
        plan.append((replace(by_key["direct"], key=baseline), own_rate))
        plan += [(by_key[k], own_rate) for k in keys if k in by_key]
    # In rounds, each a pass over the whole plan: a p99 is one bad moment on a shared
    # machine, so one run alone says little; the median of several says more.
    threads = min(options.threads, 2)
    runs: dict[str, list[PacedResult]] = {}
    for number in range(1, options.rounds + 1):
        for scenario, at in plan:
            log(f"fixed rate {at:.0f} req/s, round {number}/{options.rounds}: {scenario.label} …")
            runs.setdefault(scenario.key, []).append(paced(scenario, at, options, tmp, threads))
    return tuple(combine_rounds(results) for results in runs.values())


def combine_rounds(rounds: list[PacedResult]) -> PacedResult:
    """One scenario's fixed-rate rounds as one result: medians, each round's p99 kept."""
    if len(rounds) == 1:
        return rounds[0]
    first = rounds[0]
    return replace(
        first,
        achieved_rate=median(r.achieved_rate for r in rounds),
        latency_p50_ms=median(r.latency_p50_ms for r in rounds),
        latency_p99_ms=median(r.latency_p99_ms for r in rounds),
        errors=sum(r.errors for r in rounds),
        p99_rounds=tuple(r.latency_p99_ms for r in rounds),
        cpu_us=_median_of_known(r.cpu_us for r in rounds),
        wait_us=_median_of_known(r.wait_us for r in rounds),
        preempt=_median_of_known(r.preempt for r in rounds),
        idle_pct=_median_of_known(r.idle_pct for r in rounds),
        load_us=_median_of_known(r.load_us for r in rounds),
    )


def _median_of_known(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return median(known) if known else None
