"""`python -m benchmarks [--quick]`: the issue 8 benchmark suite in one run.

Starts everything it compares (an nginx upstream, nginx as a reverse proxy, the
minimal aiohttp proxy, authgate on a bypass route, on a signed-in route with SQLite
and with Redis sessions, and behind nginx auth_request), loads each with wrk, and
adds the revocation and session-memory benchmarks. Prints a table with the ratios
to the targets and writes `benchmarks/results/suite-<UTC>.json` and `.png`.
The exit code is 1 only when the benchmark could not run; a missed target is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks._harness import BenchmarkError
from benchmarks.scenarios import REDIS_URL
from benchmarks.suite import LoadOptions, run_load

RESULTS = Path(__file__).resolve().parent / "results"
POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass(frozen=True)
class Options:
    load: LoadOptions
    quick: bool
    revocation_trials: int  # 0: skipped
    memory_sessions: int  # 0: skipped
    memory_distinct: int
    postgres_admin: str
    output: Path
    chart: bool


def parse_options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="about a minute: 1 round of 3 s, 10 revocation trials, no session-memory run",
    )
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument("--duration", type=float, help="seconds per measured run (10; quick 3)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (3; quick 1)")
    parser.add_argument("--redis", default=REDIS_URL, help="Redis for (c) and the others")
    parser.add_argument("--postgres-admin", default=POSTGRES_ADMIN)
    parser.add_argument("--revocation-trials", type=int, help="100; quick 10; 0 skips")
    parser.add_argument("--memory-sessions", type=int, help="100000; quick 0 (skipped)")
    parser.add_argument("--no-chart", action="store_true", help="no PNG")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    quick = bool(args.quick)
    sessions = (
        args.memory_sessions if args.memory_sessions is not None else (0 if quick else 100_000)
    )
    trials = args.revocation_trials
    return Options(
        load=LoadOptions(
            workers=args.workers,
            threads=args.threads,
            connections=args.connections,
            duration=args.duration or (3.0 if quick else 10.0),
            warmup=1.0 if quick else 2.0,
            rounds=args.rounds or (1 if quick else 3),
            redis_url=args.redis,
        ),
        quick=quick,
        revocation_trials=trials if trials is not None else (10 if quick else 100),
        memory_sessions=sessions,
        memory_distinct=min(20_000, sessions),
        postgres_admin=args.postgres_admin,
        output=args.output,
        chart=not args.no_chart,
    )


def revocation(options: Options, log: Callable[[str], None]) -> tuple[dict[str, Any], str]:
    from benchmarks.revocation import redis_revocation

    log(f"revocation: {options.revocation_trials} trials across two instances …")
    figures = asyncio.run(
        redis_revocation(options.revocation_trials, options.postgres_admin, options.load.redis_url)
    )
    p99 = figures.percentile(99) * 1000
    document = {
        "trials": len(figures.samples),
        "p50_ms": figures.percentile(50) * 1000,
        "p99_ms": p99,
        "max_ms": max(figures.samples) * 1000,
        "target_p99_ms": 100,
        "met": p99 <= 100,
    }
    return document, f"revocation on another instance: {figures.line().strip()}  " + (
        "target p99 <= 100 ms: MET" if p99 <= 100 else "target p99 <= 100 ms: NOT MET"
    )


def memory(options: Options, log: Callable[[str], None]) -> tuple[dict[str, Any], str]:
    from benchmarks.session_memory import TARGET_MB, measure

    log(f"session memory: {options.memory_sessions} sessions in Redis, one worker …")
    figures = asyncio.run(
        measure(options.load.redis_url, options.memory_sessions, options.memory_distinct, 10_000)
    )
    document = {**dataclasses.asdict(figures), "target_mb": TARGET_MB, "met": figures.ok}
    line = (
        f"RSS of one worker, {figures.sessions} sessions in Redis, {figures.distinct} served: "
        f"idle {figures.idle_rss_mb:.1f} MB, loaded {figures.loaded_rss_mb:.1f} MB, "
        f"peak {figures.peak_rss_mb:.1f} MB  target <= {TARGET_MB:.0f} MB: "
        + ("MET" if figures.ok else "NOT MET")
    )
    return document, line


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    load_at_start = os.getloadavg()

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    o = options.load
    log(
        f"benchmark suite: {o.workers} worker(s) per server, wrk -t{o.threads} -c{o.connections}"
        f" -d{o.duration:.0f}s, {o.rounds} round(s)"
    )
    try:
        load = run_load(o, log)
    except BenchmarkError as exc:
        log(f"benchmark could not run: {exc}")
        return 1
    found = report.checks(load)
    extras: list[str] = []
    document: dict[str, Any] = {
        "benchmark": "suite",
        "quick": options.quick,
        "machine": report.machine(load_at_start),
        "options": {**dataclasses.asdict(o), "quick": options.quick},
        "scenarios": load.scenarios,
        "fixed_rate": load.paced,
        "checks": found,
    }
    failures = list(load.failures)
    for name, enabled, step in (
        ("revocation", options.revocation_trials > 0, revocation),
        ("session_memory", options.memory_sessions > 0, memory),
    ):
        if not enabled:
            document[name] = {"skipped": True}
            extras.append(f"{name}: skipped")
            continue
        try:
            part, line = step(options, log)
        except Exception as exc:
            failures.append(f"{name}: {exc!r}")
            document[name] = {"error": repr(exc)}
            extras.append(f"{name}: could not run ({exc!r})")
            continue
        document[name] = part
        extras.append(line)
    document["failures"] = failures
    print(report.table(load, found, extras))
    when = report.stamp()
    path = report.write_json(options.output / f"suite-{when}.json", document)
    print(f"\nresults: {path}")
    if options.chart:
        title = f"authgate benchmark suite {when} ({o.workers} workers, wrk -c{o.connections})"
        chart = report.write_chart(options.output / f"suite-{when}.png", load, title)
        print(f"chart:   {chart}" if chart else "chart:   matplotlib not installed")
    for failure in failures:
        log(f"FAILED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
