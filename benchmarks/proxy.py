"""Proxy throughput, side by side in one run: `python -m benchmarks.proxy [--quick]`.

Scenarios, all measured with the same wrk parameters against the same fast upstream:
  direct   wrk → upstream                           (the ceiling of this machine)
  nginx    wrk → nginx reverse proxy → upstream     (a C proxy, N workers, keep-alive pool)
  minimal  wrk → minimal aiohttp proxy → upstream   (the honest Python baseline, N workers)
  authgate wrk → authgate (bypass route) → upstream (the full pipeline, N workers)

Prints req/s, p50/p99 latency, peak RSS per worker and CPU per request, the ratios
authgate/minimal and authgate/nginx, and writes JSON to benchmarks/results/.
Target (issue 2): authgate ≥ 1.0x the minimal aiohttp proxy. A missed target is
reported, not an error: the exit code is non-zero only when the benchmark cannot run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from benchmarks import upstream as fast_upstream
from benchmarks._harness import (
    LOOPBACK,
    BenchmarkError,
    ManagedProcess,
    WrkResult,
    WrkSettings,
    cpu_seconds,
    free_port,
    median,
    nginx_path,
    peak_rss_bytes,
    run_wrk,
    start_nginx,
    start_process,
    wait_until_serving,
    write_done_script,
    wrk_path,
)

BENCH_HOST = "bench.test"
RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent
TARGET_VS_MINIMAL = 1.0
MAX_ERROR_SHARE = 0.01  # more failed requests than this: the figures mean nothing


@dataclass(frozen=True)
class Options:
    workers: int
    threads: int
    connections: int
    duration: float
    warmup: float
    rounds: int
    upstream: str  # nginx | aiohttp
    output: Path | None


@dataclass(frozen=True)
class Target:
    """A scenario ready to be measured: where wrk goes and which processes serve it."""

    key: str
    label: str
    port: int
    process: ManagedProcess


@dataclass(frozen=True)
class ScenarioResult:
    key: str
    label: str
    workers: int
    requests_per_second: float  # median over rounds
    latency_p50_ms: float
    latency_p99_ms: float
    peak_rss_mb_per_worker: float  # the largest worker's high-water mark
    cpu_us_per_request: float  # CPU of the serving processes (not wrk, not upstream)
    errors: int  # socket errors + non-2xx/3xx, all rounds
    rounds: tuple[WrkResult, ...]


@dataclass(frozen=True)
class Ratios:
    authgate_vs_minimal: float | None
    authgate_vs_nginx: float | None
    target_met: bool | None
    authgate_vs_minimal_per_round: tuple[float, ...] = ()
    # CPU per request of the minimal proxy over authgate's: the same comparison as
    # req/s, but hardly moved by other load on the machine (1.0 = as cheap).
    cpu_efficiency_vs_minimal: float | None = None


# ----------------------------------------------------------------------- start-up


def start_upstream(options: Options, tmp: Path) -> Target:
    port = free_port()
    if options.upstream == "nginx":
        block = fast_upstream.nginx_http_block(port)
        process = start_nginx("upstream (nginx)", tmp / "upstream", options.workers, block)
    else:
        process = start_process(
            "upstream (aiohttp)",
            [
                sys.executable,
                "-m",
                "benchmarks.upstream",
                "--port",
                str(port),
                "--workers",
                str(options.workers),
            ],
            tmp / "upstream.log",
            cwd=REPO,
        )
    return Target("direct", f"direct → upstream ({options.upstream})", port, process)


def start_nginx_proxy(options: Options, tmp: Path, upstream_port: int) -> Target:
    port = free_port()
    body = (
        "    upstream backend {\n"
        f"        server {LOOPBACK}:{upstream_port};\n"
        "        keepalive 128;\n"
        "    }\n"
        "    server {\n"
        f"        listen {LOOPBACK}:{port} reuseport backlog=4096;\n"
        "        location / {\n"
        "            proxy_pass http://backend;\n"
        "            proxy_http_version 1.1;\n"
        '            proxy_set_header Connection "";\n'
        "            proxy_set_header Host $host;\n"
        "            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
        "        }\n"
        "    }\n"
    )
    process = start_nginx("nginx proxy", tmp / "nginx-proxy", options.workers, body)
    return Target("nginx", "nginx reverse proxy", port, process)


def start_minimal_proxy(options: Options, tmp: Path, upstream_port: int) -> Target:
    port = free_port()
    process = start_process(
        "minimal aiohttp proxy",
        [
            sys.executable,
            "-m",
            "benchmarks.minimal_proxy",
            "--port",
            str(port),
            "--upstream",
            f"http://{LOOPBACK}:{upstream_port}",
            "--workers",
            str(options.workers),
        ],
        tmp / "minimal.log",
        cwd=REPO,
    )
    return Target("minimal", "minimal aiohttp proxy", port, process)


BYPASS_POLICY = (
    "version: 1\n"
    "default: deny\n"
    "rules:\n"
    "  - name: bench-bypass\n"
    f"    hosts: [{BENCH_HOST}]\n"
    "    action: bypass\n"
)


def authgate_config(folder: Path, port: int, upstream_port: int) -> Path:
    """A one-tenant config whose only route is covered by a single bypass rule
    (the suite's config, with nobody signed in)."""
    from benchmarks.scenarios import AuthgateSetup
    from benchmarks.scenarios import authgate_config as suite_config

    setup = AuthgateSetup("bypass", BYPASS_POLICY, signed_in=False)
    return suite_config(folder, port, upstream_port, setup)


def gateway_command() -> list[str]:
    return [sys.executable, "-m", "gateway"]


def start_authgate(options: Options, tmp: Path, upstream_port: int) -> Target:
    folder = tmp / "authgate"
    folder.mkdir()
    port = free_port()
    config = authgate_config(folder, port, upstream_port)
    check = subprocess.run(
        [*gateway_command(), "check-config", "-c", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    if check.returncode != 0:
        raise BenchmarkError(
            f"authgate check-config refused the generated config ({check.returncode}):\n"
            f"{check.stdout}{check.stderr}"
        )
    process = start_process(
        "authgate",
        [*gateway_command(), "serve", "-c", str(config), "--workers", str(options.workers)],
        folder / "serve.log",
        cwd=REPO,
    )
    return Target("authgate", "authgate (bypass route)", port, process)


# ---------------------------------------------------------------------- measuring


def measure(
    target: Target, options: Options, script: Path, warmup: float
) -> tuple[WrkResult, float]:
    """Warm up, then one measured wrk run; returns it and the serving processes' CPU seconds."""
    url = f"http://{LOOPBACK}:{target.port}/"
    if warmup > 0:
        run_wrk(url, _settings(options, warmup), script)
    workers = target.process.worker_pids()
    before = cpu_seconds(workers)
    result = run_wrk(url, _settings(options, options.duration), script)
    return result, cpu_seconds(workers) - before


def _settings(options: Options, duration: float) -> WrkSettings:
    return WrkSettings(options.threads, options.connections, duration, BENCH_HOST)


def summarise(
    target: Target, rounds: list[tuple[WrkResult, float]], workers: int
) -> ScenarioResult:
    results = tuple(result for result, _ in rounds)
    requests = sum(r.requests for r in results)
    cpu = sum(seconds for _, seconds in rounds)
    rss = max((peak_rss_bytes(pid) for pid in target.process.worker_pids()), default=0)
    return ScenarioResult(
        key=target.key,
        label=target.label,
        workers=workers,
        requests_per_second=median(r.requests_per_second for r in results),
        latency_p50_ms=median(r.latency_p50_ms for r in results),
        latency_p99_ms=median(r.latency_p99_ms for r in results),
        peak_rss_mb_per_worker=rss / 2**20,
        cpu_us_per_request=cpu / requests * 1e6 if requests else 0.0,
        errors=sum(r.socket_errors + r.non_2xx_3xx for r in results),
        rounds=results,
    )


def paired_ratios(a: ScenarioResult, b: ScenarioResult) -> tuple[float, ...]:
    """req/s of `a` over `b`, round by round: each pair ran back to back, under the
    same conditions, so load from elsewhere on the machine mostly cancels out."""
    if len(a.rounds) != len(b.rounds):
        return ()
    return tuple(
        x.requests_per_second / y.requests_per_second
        for x, y in zip(a.rounds, b.rounds, strict=True)
        if y.requests_per_second
    )


def ratios(results: dict[str, ScenarioResult]) -> Ratios:
    """Median of the per-round ratios (or of the medians when rounds are missing)."""

    def ratio(a: str, b: str) -> float | None:
        if a not in results or b not in results or not results[b].requests_per_second:
            return None
        paired = paired_ratios(results[a], results[b])
        if paired:
            return median(paired)
        return results[a].requests_per_second / results[b].requests_per_second

    vs_minimal = ratio("authgate", "minimal")
    per_round: tuple[float, ...] = ()
    efficiency = None
    if "authgate" in results and "minimal" in results:
        per_round = paired_ratios(results["authgate"], results["minimal"])
        if results["authgate"].cpu_us_per_request:
            efficiency = (
                results["minimal"].cpu_us_per_request / results["authgate"].cpu_us_per_request
            )
    return Ratios(
        authgate_vs_minimal=vs_minimal,
        authgate_vs_nginx=ratio("authgate", "nginx"),
        target_met=None if vs_minimal is None else vs_minimal >= TARGET_VS_MINIMAL,
        authgate_vs_minimal_per_round=per_round,
        cpu_efficiency_vs_minimal=efficiency,
    )


def run(options: Options, log: Callable[[str], None]) -> tuple[list[ScenarioResult], list[str]]:
    """Start every server, measure each scenario `rounds` times (interleaved), stop all."""
    wrk_path()
    nginx_path()
    started: list[ManagedProcess] = []
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="authgate-bench-") as name:
        tmp = Path(name)
        script = write_done_script(tmp)
        try:
            upstream = start_upstream(options, tmp)
            started.append(upstream.process)
            wait_until_serving(upstream.process, upstream.port)
            targets = [upstream]
            starters = (start_nginx_proxy, start_minimal_proxy, start_authgate)
            for starter in starters:
                try:
                    target = starter(options, tmp, upstream.port)
                    started.append(target.process)
                    wait_until_serving(target.process, target.port, BENCH_HOST)
                except BenchmarkError as exc:
                    failures.append(str(exc))
                    log(f"! {str(exc).splitlines()[0]} (details at the end)")
                    continue
                targets.append(target)
            measured: dict[str, list[tuple[WrkResult, float]]] = {t.key: [] for t in targets}
            for round_number in range(1, options.rounds + 1):
                # Every other round in reverse order, so a drift in the machine's load
                # does not always favour the scenario measured first.
                order = targets if round_number % 2 else targets[::-1]
                # The first round warms up caches and pools; later ones only reconnect.
                warmup = options.warmup if round_number == 1 else min(options.warmup, 1.0)
                for target in order:
                    log(f"round {round_number}/{options.rounds}: {target.label} …")
                    measured[target.key].append(measure(target, options, script, warmup))
            results = [summarise(t, measured[t.key], options.workers) for t in targets]
        finally:
            for process in reversed(started):
                process.stop()
    for result in results:
        total = sum(r.requests for r in result.rounds)
        if total == 0 or result.errors > MAX_ERROR_SHARE * total:
            failures.append(f"{result.label}: {result.errors} failed requests of {total}")
    return results, failures


# ------------------------------------------------------------------------ reports


def table(results: list[ScenarioResult], ratio: Ratios) -> str:
    header = (
        f"{'scenario':<32} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'RSS/worker MB':>14} {'CPU µs/req':>11} {'errors':>7}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(
            f"{r.label:<32} {r.requests_per_second:>9.0f} {r.latency_p50_ms:>8.2f} "
            f"{r.latency_p99_ms:>8.2f} {r.peak_rss_mb_per_worker:>14.1f} "
            f"{r.cpu_us_per_request:>11.0f} {r.errors:>7d}"
        )
    lines.append("")

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}x"

    rounds = ", ".join(f"{r:.2f}" for r in ratio.authgate_vs_minimal_per_round)
    lines.append(
        f"authgate / minimal aiohttp proxy (req/s): {fmt(ratio.authgate_vs_minimal)}"
        + (
            f"   (median of rounds: {rounds})"
            if len(ratio.authgate_vs_minimal_per_round) > 1
            else ""
        )
    )
    lines.append(
        f"minimal / authgate (CPU µs/req):          {fmt(ratio.cpu_efficiency_vs_minimal)}"
    )
    lines.append(f"authgate / nginx reverse proxy   (req/s): {fmt(ratio.authgate_vs_nginx)}")
    verdict = {True: "MET", False: "NOT MET", None: "not measured"}[ratio.target_met]
    lines.append(f"target authgate ≥ {TARGET_VS_MINIMAL:.1f}x minimal aiohttp proxy: {verdict}")
    return "\n".join(lines)


def _version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "unknown"
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def write_json(
    folder: Path,
    options: Options,
    results: list[ScenarioResult],
    ratio: Ratios,
    failures: list[str],
    load_at_start: tuple[float, float, float],
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = folder / f"proxy-{stamp}.json"
    document = {
        "benchmark": "proxy",
        "timestamp": stamp,
        "machine": {
            "cpus": os.cpu_count(),
            # Other work on the machine skews every figure; this says how busy it was
            # before the benchmark added its own load.
            "load_average_at_start": load_at_start,
            "kernel": platform.release(),
            "python": platform.python_version(),
            "aiohttp": aiohttp.__version__,
            "nginx": _version([nginx_path(), "-v"]),
            "wrk": _version([wrk_path(), "-v"]),
        },
        "options": {**dataclasses.asdict(options), "output": str(options.output or "")},
        "scenarios": [dataclasses.asdict(r) for r in results],
        "ratios": dataclasses.asdict(ratio),
        "failures": failures,
    }
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------- main


def parse_options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.proxy",
        description="authgate vs nginx vs a minimal aiohttp proxy, with wrk, in one run.",
    )
    parser.add_argument("--quick", action="store_true", help="3 s runs, one round (< 1 min)")
    parser.add_argument(
        "--workers",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="worker processes of each proxy (default: CPU count)",
    )
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument("--duration", type=float, help="seconds per measured run (default 10)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds; medians are reported")
    parser.add_argument(
        "--upstream",
        choices=("nginx", "aiohttp"),
        default="nginx",
        help="the fast upstream (default nginx, see benchmarks/upstream.py)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="folder for the JSON result (default benchmarks/results)",
    )
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    return Options(
        workers=args.workers,
        threads=args.threads,
        connections=args.connections,
        duration=args.duration or (3.0 if args.quick else 10.0),
        warmup=1.0 if args.quick else 2.0,
        rounds=args.rounds or (1 if args.quick else 5),
        upstream=args.upstream,
        output=args.output,
    )


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    load_at_start = os.getloadavg()

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log(
        f"proxy benchmark: {options.workers} worker(s) per proxy, wrk -t{options.threads} "
        f"-c{options.connections} -d{options.duration:.0f}s, {options.rounds} round(s), "
        f"upstream {options.upstream}"
    )
    try:
        results, failures = run(options, log)
    except BenchmarkError as exc:
        log(f"benchmark could not run: {exc}")
        return 1
    ratio = ratios({r.key: r for r in results})
    print(table(results, ratio))
    path = write_json(options.output or RESULTS, options, results, ratio, failures, load_at_start)
    print(f"\nresults: {path}")
    for failure in failures:
        log(f"FAILED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
