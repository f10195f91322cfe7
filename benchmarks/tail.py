"""Where the added p99 at a fixed rate comes from: `python -m benchmarks.tail`.

Starts the nginx upstream, the Python floor and authgate (b), finds (b)'s maximal
req/s (closed loop, as the suite does) unless `--rate` is given, then runs direct, the
floor and (b) at the same fixed rate (open loop, the suite's pacing), in rounds. Beside
wrk's p50 and p99 it reads, from /proc, what the kernel's scheduler saw of the serving
processes during each run:

  cpu      CPU time per request (user + system, every thread of every worker)
  wait     time spent runnable but not running (waiting for a CPU), per request
  preempt  involuntary context switches per request (the scheduler took the CPU away)
  steal    the share of the machine's CPU time the hypervisor took for others (from
           /proc/stat; a virtual machine that does not report it reads 0)

With `--hiccups`, a meter on each CPU at real-time priority (benchmarks.hiccup) also
counts the stalls of a whole CPU during each run, and how long the longest was: what
no process in the guest can cause or avoid, and what a p99 cannot be shorter than when
such stalls touch more than 1 % of requests.

On a machine whose few CPUs are shared by the load generator, the upstream and the
proxy, a request's tail is mostly time spent waiting for a CPU: the more CPU each
request costs, the busier the machine at a given rate, and the longer those waits.

    python -m benchmarks.tail [--rate 16000] [--rounds 3] [--seconds 10] [--workers 2]
                              [--hiccups]

Writes `benchmarks/results/tail-<UTC>.json` (every run, the machine, the commit).

Needs wrk and nginx; reads /proc/<pid>/task/<tid>/schedstat (Linux, schedstats on).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import report
from benchmarks._harness import (
    LOOPBACK,
    WRK_DONE_SCRIPT,
    ManagedProcess,
    WrkSettings,
    run_wrk,
)
from benchmarks.hiccup import HiccupMeters, Hiccups
from benchmarks.scenarios import (
    BENCH_HOST,
    SESSION_POLICY,
    AuthgateSetup,
    Scenario,
    start_authgate_scenario,
    start_floor_proxy,
    start_upstream,
    stop_all,
)
from benchmarks.sched import snapshot, spent, steal_seconds
from benchmarks.suite import fixed_rate_load

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class TailRun:
    label: str
    rate: float
    p50_ms: float
    p99_ms: float
    cpu_us: float  # per request
    wait_us: float  # per request
    preempt: float  # per request
    steal_pct: float  # of all CPUs' time during the run
    hiccups: Hiccups | None = None

    def line(self) -> str:
        text = (
            f"{self.label:<8} {self.rate:8.0f} req/s  p50 {self.p50_ms:6.2f} ms  p99 "
            f"{self.p99_ms:6.2f} ms  cpu {self.cpu_us:5.1f} µs  wait {self.wait_us:5.1f} µs"
            f"  preempt {self.preempt:5.3f}  steal {self.steal_pct:4.1f} %"
        )
        return text if self.hiccups is None else f"{text}\n{'':10}{self.hiccups.line()}"


def fixed_rate_run(
    label: str, scenario: Scenario, rate: float, seconds: float, folder: Path, hiccups: bool
) -> TailRun:
    """One measured run at `rate`, as the suite's (two wrk threads), with what the
    scheduler counted for the serving processes meanwhile, the machine's steal time and,
    if asked, the stalls the hiccup meters saw."""
    _, measure = fixed_rate_load(scenario, rate, seconds, folder, threads=2)
    pids = scenario.serving_pids()
    meters = HiccupMeters()
    with meters if hiccups else contextlib.nullcontext():
        before, stolen, began = snapshot(pids), steal_seconds(), time.monotonic()
        result = measure()
        used, elapsed = spent(before, snapshot(pids)), time.monotonic() - began
        stolen = steal_seconds() - stolen
    requests = max(result.requests, 1)
    cpus = os.cpu_count() or 1  # /proc/stat's cpu line sums every CPU, not only ours
    return TailRun(
        label,
        result.requests_per_second,
        result.latency_p50_ms,
        result.latency_p99_ms,
        used.cpu_ns / requests / 1000,
        used.wait_ns / requests / 1000,
        used.involuntary / requests,
        100 * stolen / (elapsed * cpus),
        meters.seen,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, help="req/s (default: half of (b)'s maximum)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--output", type=Path, default=RESULTS, help="where the JSON goes")
    parser.add_argument(
        "--hiccups", action="store_true", help="count whole-CPU stalls (benchmarks.hiccup)"
    )
    args = parser.parse_args(argv)
    load_at_start = os.getloadavg()
    rounds: list[list[TailRun]] = []
    started: list[ManagedProcess] = []
    with tempfile.TemporaryDirectory(prefix="authgate-tail-") as name:
        tmp = Path(name)
        try:
            upstream = start_upstream(args.workers, tmp)
            started.extend(upstream.processes)
            setup = AuthgateSetup("session", SESSION_POLICY)
            gate = start_authgate_scenario("b", "(b)", args.workers, tmp, upstream.port, setup)
            started.extend(gate.processes)
            floor = start_floor_proxy(args.workers, tmp, upstream.port)
            started.extend(floor.processes)
            rate = args.rate
            if rate is None:
                done = tmp / "done.lua"
                done.write_text(WRK_DONE_SCRIPT, encoding="utf-8")
                url = f"http://{LOOPBACK}:{gate.port}/"
                top = run_wrk(url, WrkSettings(2, 64, 5, BENCH_HOST, gate.headers), done)
                rate = top.requests_per_second / 2
                print(f"(b) maximum {top.requests_per_second:.0f} req/s; half: {rate:.0f}")
            for number in range(1, args.rounds + 1):
                print(f"round {number}/{args.rounds}, fixed rate {rate:.0f} req/s")
                rounds.append([])
                for label, scenario in (("direct", upstream), ("floor", floor), ("(b)", gate)):
                    run = fixed_rate_run(label, scenario, rate, args.seconds, tmp, args.hiccups)
                    rounds[-1].append(run)
                    print("  " + run.line(), flush=True)
        finally:
            stop_all(started)
    document = {
        "benchmark": "tail",
        "machine": report.machine(load_at_start),
        "options": {
            "rate": rate,
            "seconds": args.seconds,
            "workers": args.workers,
            "hiccups": args.hiccups,
        },
        "rounds": rounds,
    }
    path = report.write_json(args.output / f"tail-{report.stamp()}.json", document)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
