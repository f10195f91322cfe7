"""What `python -m benchmarks` prints and writes: ratios against the issue 8 targets,
the table, the JSON document and the PNG chart."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._harness import median, nginx_path, wrk_path
from benchmarks.suite import (
    DIRECT_AT_FAST_RATE,
    DIRECT_AT_NGINX_RATE,
    LoadResults,
    PacedResult,
    ScenarioResult,
)


@dataclass(frozen=True)
class Check:
    """One ratio or figure, with its target when the issue sets one."""

    name: str
    value: float | None
    unit: str  # "x" for ratios, "ms", "MB"
    target: str = ""  # e.g. ">= 1.0x"; empty: shown for scale
    met: bool | None = None
    per_round: tuple[float, ...] = ()
    how: str = ""


def paired_ratios(a: ScenarioResult, b: ScenarioResult) -> tuple[float, ...]:
    """req/s of `a` over `b`, round by round: each pair ran in the same round, so load
    from elsewhere on the machine mostly cancels out."""
    if len(a.rounds) != len(b.rounds):
        return ()
    return tuple(
        x.requests_per_second / y.requests_per_second
        for x, y in zip(a.rounds, b.rounds, strict=True)
        if y.requests_per_second
    )


def ratio_check(
    results: dict[str, ScenarioResult], a: str, b: str, name: str, minimum: float | None
) -> Check:
    if a not in results or b not in results or not results[b].requests_per_second:
        return Check(name, None, "x", f">= {minimum:.2f}x" if minimum else "")
    rounds = paired_ratios(results[a], results[b])
    value = (
        median(rounds)
        if rounds
        else results[a].requests_per_second / results[b].requests_per_second
    )
    return Check(
        name,
        value,
        "x",
        f">= {minimum:.2f}x" if minimum is not None else "",
        None if minimum is None else value >= minimum,
        rounds,
    )


def added_latency_check(
    paced: Sequence[PacedResult],
    key: str,
    name: str,
    *,
    target: bool = True,
    baseline: str = "direct",
) -> Check:
    by_key = {p.key: p for p in paced}
    if baseline not in by_key or key not in by_key:
        return Check(name, None, "ms", "<= 2 ms" if target else "")
    direct, gate = by_key[baseline], by_key[key]
    paired = len(gate.p99_rounds) > 1 and len(gate.p99_rounds) == len(direct.p99_rounds)
    per_round = (
        tuple(g - d for g, d in zip(gate.p99_rounds, direct.p99_rounds, strict=True))
        if paired
        else ()
    )
    added = median(per_round) if per_round else gate.latency_p99_ms - direct.latency_p99_ms
    how = (
        f"wrk -c{gate.connections}, open loop (an evenly spaced schedule per wrk thread in "
        f"delay(); no -R in Debian's wrk): offered ≈{gate.target_rate:.0f} req/s, achieved "
        f"{gate.achieved_rate:.0f} (direct {direct.achieved_rate:.0f}); p99 "
        f"{gate.latency_p99_ms:.2f} ms vs direct {direct.latency_p99_ms:.2f} ms"
        + (f", median of {len(per_round)} rounds' differences" if per_round else "")
    )
    if not target:
        return Check(name, added, "ms", per_round=per_round, how=how)
    return Check(name, added, "ms", "<= 2 ms", added <= 2.0, per_round=per_round, how=how)


def checks(load: LoadResults) -> list[Check]:
    results = {r.key: r for r in load.scenarios}
    found = [
        ratio_check(results, "session", "minimal", "(b) / minimal aiohttp proxy", 1.0),
        ratio_check(results, "session", "nginx", "(b) / nginx reverse proxy", 0.45),
        ratio_check(results, "redis", "session", "(c) Redis / (b)", 0.9),
        added_latency_check(load.paced, "session", "(b) p99 added over direct at ½ max"),
        added_latency_check(load.paced, "redis", "(c) p99 added over direct at ½ max"),
        added_latency_check(
            load.paced, "minimal", "minimal proxy p99 added at ½ max", target=False
        ),
        added_latency_check(load.paced, "floor", "Python floor p99 added at ½ max", target=False),
        added_latency_check(
            load.paced,
            "nginx",
            "nginx p99 added at ½ its own max",
            target=False,
            baseline=DIRECT_AT_NGINX_RATE,
        ),
        ratio_check(results, "session_fast", "minimal", "(b) tuned / minimal aiohttp proxy", 1.0),
        ratio_check(results, "session_fast", "nginx", "(b) tuned / nginx reverse proxy", 0.45),
        ratio_check(results, "redis_fast", "session_fast", "(c) / (b), both tuned", 0.9),
        added_latency_check(
            load.paced,
            "session_fast",
            "(b) tuned p99 added over direct at ½ its max",
            baseline=DIRECT_AT_FAST_RATE,
        ),
        added_latency_check(
            load.paced,
            "redis_fast",
            "(c) tuned p99 added over direct at ½ (b)'s",
            baseline=DIRECT_AT_FAST_RATE,
        ),
        ratio_check(results, "session_fast", "session", "(b) tuned / (b)", None),
        ratio_check(
            results, "session_aiohttp", "minimal", "(b) fast_path: false / minimal proxy", None
        ),
        ratio_check(results, "session", "session_aiohttp", "(b) / (b) fast_path: false", None),
        ratio_check(
            results, "session_varied", "minimal", "(b) no request repeated / minimal", None
        ),
        ratio_check(results, "session_varied", "nginx", "(b) no request repeated / nginx", None),
        ratio_check(
            results,
            "session_browser",
            "minimal_browser",
            "(b) a browser's requests, none repeated / minimal, same requests",
            None,
        ),
        ratio_check(results, "bypass", "minimal", "(a) bypass / minimal proxy", None),
        ratio_check(results, "floor", "nginx", "Python floor / nginx proxy", None),
        ratio_check(results, "session", "floor", "(b) / Python floor", None),
        ratio_check(results, "forward_auth", "nginx", "(d) forward-auth / nginx proxy", None),
        ratio_check(
            results, "forward_auth_varied", "nginx", "(d) no request repeated / nginx", None
        ),
    ]
    if "session" in results and "minimal" in results and results["session"].cpu_us_per_request:
        value = results["minimal"].cpu_us_per_request / results["session"].cpu_us_per_request
        found.append(Check("minimal / (b) in CPU µs per request", value, "x"))
    return found


# ----------------------------------------------------------------------- printing


def _fmt(check: Check) -> str:
    if check.value is None:
        return "n/a"
    return f"{check.value:.2f}{'x' if check.unit == 'x' else ' ' + check.unit}"


def table(load: LoadResults, found: Sequence[Check], extras: Sequence[str]) -> str:
    header = (
        f"{'scenario':<40} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>8} "
        f"{'RSS/worker MB':>13} {'CPU µs/req':>10} {'errors':>6}"
    )
    lines = [header, "-" * len(header)]
    for r in load.scenarios:
        lines.append(
            f"{r.label:<40} {r.requests_per_second:>8.0f} {r.latency_p50_ms:>7.2f} "
            f"{r.latency_p99_ms:>8.2f} {r.peak_rss_mb_per_worker:>13.1f} "
            f"{r.cpu_us_per_request:>10.0f} {r.errors:>6d}"
        )
    if load.paced:
        lines += [
            "",
            "fixed rate, open loop (half of (b)'s maximal req/s; nginx: half of its own;"
            " medians of the rounds):",
        ]
        for p in load.paced:
            lines.append(
                f"  {p.key:<13} offered ≈{p.target_rate:>6.0f} req/s achieved "
                f"{p.achieved_rate:>6.0f}  p50 {p.latency_p50_ms:6.2f} ms  "
                f"p99 {p.latency_p99_ms:6.2f} ms  (-c{p.connections}, open loop)"
                + (
                    "  p99 rounds " + ", ".join(f"{r:.2f}" for r in p.p99_rounds)
                    if p.p99_rounds
                    else ""
                )
                + _scheduler_seen(p)
            )
    lines.append("")
    for check in found:
        verdict = {True: "MET", False: "NOT MET", None: ""}[check.met]
        target = f"target {check.target}" if check.target else "for scale"
        rounds = (
            "  rounds " + ", ".join(f"{r:.2f}" for r in check.per_round)
            if len(check.per_round) > 1
            else ""
        )
        lines.append(f"{check.name:<38} {_fmt(check):>9}  {target:<16} {verdict}{rounds}")
    lines += ["", *extras] if extras else []
    return "\n".join(lines)


# -------------------------------------------------------------------------- files


def _version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "unknown"
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git(*args: str) -> str:
    repo = str(Path(__file__).resolve().parent.parent)
    done = subprocess.run(
        ["git", "-C", repo, *args], capture_output=True, text=True, timeout=10, check=True
    )
    return done.stdout.strip()


def _commit() -> str:
    """The checkout's commit, with "+changes" when tracked files differ from it."""
    try:
        head = _git("rev-parse", "--short", "HEAD")
        changes = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}+changes" if changes else head


def machine(load_at_start: tuple[float, float, float]) -> dict[str, Any]:
    import aiohttp

    return {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "commit": _commit(),
        # Other work on the machine skews every figure; this says how busy it was.
        "load_average_at_start": load_at_start,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "nginx": _version([nginx_path(), "-v"]),
        "wrk": _version([wrk_path(), "-v"]),
    }


def stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def write_json(path: Path, document: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=_encode) + "\n", encoding="utf-8")
    return path


def _encode(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def write_chart(path: Path, load: LoadResults, title: str) -> Path | None:
    """Bars of req/s and p99 per scenario; None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    labels = [r.label.replace(" → ", "→\n").replace(" (", "\n(") for r in load.scenarios]
    figure, (left, right) = plt.subplots(1, 2, figsize=(14, 5.5))
    left.bar(labels, [r.requests_per_second for r in load.scenarios], color="#4C72B0")
    left.set_ylabel("requests per second (median of rounds)")
    left.set_yscale("log")
    right.bar(labels, [r.latency_p99_ms for r in load.scenarios], color="#DD8452")
    right.set_ylabel("p99 latency, ms (at maximal throughput)")
    for axis in (left, right):
        axis.tick_params(axis="x", labelrotation=60, labelsize=7)
        axis.grid(axis="y", alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _scheduler_seen(paced: PacedResult) -> str:
    """What the scheduler saw of the serving processes, per request, and what the rest
    of the machine did meanwhile (each where it was read)."""
    seen = []
    if paced.cpu_us is not None and paced.wait_us is not None and paced.preempt is not None:
        seen.append(
            f"cpu {paced.cpu_us:.1f} µs, waiting for a CPU {paced.wait_us:.1f} µs,"
            f" preempted {paced.preempt:.3f} a request"
        )
    if paced.idle_pct is not None and paced.load_us is not None:
        seen.append(f"machine idle {paced.idle_pct:.1f} %, wrk {paced.load_us:.1f} µs a request")
    return "  " + "; ".join(seen) if seen else ""
