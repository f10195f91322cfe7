"""Where one authgate worker's time goes on scenario (b): `python -m benchmarks.hot_path`.

Starts the nginx upstream and authgate with one worker on the signed-in route of
scenario (b) (session, policy on a group, identity headers, JWT), pins the worker to
one core and wrk plus the upstream to the other, records the worker with py-spy, and
attributes every sample to a pipeline stage by the innermost stage function on its
stack:

    canonicalise → tenant → session → decide → headers → JWT → forward

plus `fast path` (the fast server's connections), `reused exchange` (a request sent on
a decision made before, gateway/reuse.py), `upstream client` (gateway's own, with
llhttp: sending the head, reading the answer), `metrics` (the request observer),
`aiohttp server` (aiohttp's request handler and response writing, and whatever else
no stage names) and the event loop's own C code (uvloop: epoll and socket I/O,
seen by py-spy as time with no Python frame above `Runner.run`). The cyclic GC has
no frame of its own: its time lands on whatever line allocated.

    python -m benchmarks.hot_path [--seconds 15] [--redis] [--no-fast-path] [--varied]
                                  [--browser] [--perf] [--rate 12000] [--forward-auth]

`--rate` loads the worker at a fixed rate (open loop, the suite's pacing: a pool of
connections each idle about PACE_MS between requests) instead of as fast as it goes.
That is where the suite's added p99 is measured, and a worker there meets its requests
one at a time, so what each costs differs from the closed loop, where they come in
batches.

`--browser` sends the headers a browser sends with a page (Chrome's, 14 of them, and
three more cookies beside the session's) instead of wrk's two: the per-header work of
reading, checking and forwarding a request counts as it does on real traffic.

`--forward-auth` asks the worker's `/.authgate/verify` about (b)'s route instead, as
nginx `auth_request` does (`X-Original-URL`, from a trusted proxy), so wrk stands in for
nginx: a check of (d) without nginx's share; with `--varied`, every check about a URL
of its own (nothing kept: each decided).

`--perf` samples with Linux perf (Debian's `linux-perf`, as root) instead of py-spy and
reports CPU by binary: the interpreter, the kernel, uvloop, llhttp, multidict, libc.

Needs py-spy (in the venv), wrk and nginx, and two or more CPUs for the pinning.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from benchmarks._harness import (
    LOOPBACK,
    WRK_DONE_SCRIPT,
    BenchmarkError,
    ManagedProcess,
    WrkSettings,
    cpu_seconds,
    parse_wrk_output,
    run_wrk,
    wrk_command,
)
from benchmarks.scenarios import (
    BENCH_HOST,
    REDIS_URL,
    SESSION_POLICY,
    AuthgateSetup,
    browser_headers,
    delete_redis_prefix,
    run_prefix,
    start_authgate_scenario,
    start_upstream,
    stop_all,
)
from benchmarks.suite import NUMBERED_LUA, PACE_MS, VARIED_PATHS_LUA, paced_script

# `--forward-auth --varied`: each check about a URL of its own, with wrk's other headers
# (the session cookie) kept.
VARIED_CHECKS_LUA = (
    NUMBERED_LUA
    + f"""\
function request()
  sent = sent + 1
  local headers = {{}}
  for name, value in pairs(wrk.headers) do headers[name] = value end
  headers["X-Original-URL"] = "https://{BENCH_HOST}/?t=" .. thread_id .. "&n=" .. sent
  return wrk.format(nil, nil, headers)
end
"""
)

# (stage, substrings of a py-spy frame "function (file:line)"); the innermost frame
# that matches any stage decides, so JWT signing inside `_add_identity` is "JWT".
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("JWT", ("sign (gateway/signing.py", "(jwt/")),
    ("headers", ("_add_identity (gateway/identify.py", "_without_cookie (gateway/identify.py")),
    ("session", ("(gateway/sessions.py", "(gateway/stores/", "(redis/", "cookies (aiohttp")),
    ("decide", ("(policies/", "decide (gateway/policy_sets.py", "_decide (gateway/pipeline.py")),
    ("tenant", ("(gateway/tenants.py", "(gateway/tenant_store.py")),
    ("canonicalise", ("(gateway/canonical.py",)),
    ("forward", ("(gateway/proxy.py", "(gateway/forwarding.py", "(aiohttp/client")),
    ("fast path", ("(gateway/fast_path.py",)),
    ("reused exchange", ("(gateway/reuse.py",)),
    ("upstream client", ("(gateway/upstream_client.py",)),
    ("forward-auth", ("(gateway/forward_auth.py", "_forward_auth (gateway/pipeline.py")),
    ("metrics", ("(gateway/metrics.py", "(gateway/request_log.py")),
    ("identify (rest)", ("__call__ (gateway/identify.py",)),
    ("pipeline (rest)", ("(gateway/pipeline.py",)),
)
LOOP = "event loop (uvloop, C)"
ORDER = [name for name, _ in STAGES] + ["aiohttp server", LOOP]


@dataclass(frozen=True)
class Breakdown:
    samples: int
    by_stage: tuple[tuple[str, int], ...]

    def lines(self) -> list[str]:
        out = [f"{'stage':<18} {'share':>6}  samples"]
        for stage, count in self.by_stage:
            out.append(f"{stage:<18} {count / self.samples * 100:5.1f}%  {count}")
        return out


def stage_of(frames: list[str]) -> str | None:
    """The stage of one stack (outermost frame first); None for other threads (the
    SQLite connection thread and the log listener, which mostly wait)."""
    if any("Thread._bootstrap" in frame for frame in frames[:3]):
        return None
    for frame in reversed(frames):
        for stage, needles in STAGES:
            if any(needle in frame for needle in needles):
                return stage
    # No Python frame above the loop's own: uvloop's C code is running (epoll, socket
    # reads and writes, its callbacks' bookkeeping); py-spy cannot see inside it.
    if frames and "Runner.run (asyncio/runners.py" in frames[-1]:
        return LOOP
    return "aiohttp server"


def attribute(raw_lines: Iterable[str]) -> Breakdown:
    """py-spy `--format raw` (collapsed stacks, `frame;frame;… count`) by stage."""
    counts: Counter[str] = Counter()
    for line in raw_lines:
        stack, _, number = line.rstrip().rpartition(" ")
        if not stack or not number.isdigit():
            continue
        frames = stack.split(";")[1:]  # the first element names the thread
        stage = stage_of(frames)
        if stage is not None:
            counts[stage] += int(number)
    total = sum(counts.values())
    ordered = tuple((stage, counts[stage]) for stage in ORDER if counts[stage])
    return Breakdown(total, ordered)


PERF_GROUPS = (
    ("interpreter (libpython)", "libpython"),
    ("kernel", "[kernel"),
    ("uvloop", "loop.cpython"),
    ("httptools (llhttp)", "parser.cpython"),
    ("multidict", "_multidict"),
    ("libc", "libc.so"),
)


def perf_shares(pid: int, seconds: int, tmp: Path) -> tuple[list[tuple[str, float]], float]:
    """`perf record` on `pid` for `seconds`: the share of its CPU samples by binary, and
    the CPU seconds they stand for (samples at 999 Hz)."""
    data = tmp / "perf.data"
    frequency = 999
    argv = ["perf", "record", "-F", str(frequency), "-p", str(pid), "-o", str(data)]
    record = subprocess.run(
        [*argv, "--", "sleep", str(seconds)],
        capture_output=True,
        text=True,
        check=False,
    )
    if record.returncode != 0:
        raise BenchmarkError(f"perf record failed: {record.stderr.strip()[-300:]}")
    report = subprocess.run(
        ["perf", "report", "-i", str(data), "--stdio", "--sort", "dso", "-n"],
        capture_output=True,
        text=True,
        check=True,
    )
    by_group: Counter[str] = Counter()
    samples = 0
    for line in report.stdout.splitlines():
        fields = line.split()
        if line.startswith("#") or len(fields) < 3 or not fields[0].endswith("%"):
            continue
        count, dso = int(fields[1]), fields[2]
        samples += count
        group = next((name for name, needle in PERF_GROUPS if needle in dso), "other")
        by_group[group] += count
    shares = [(group, count / samples * 100) for group, count in by_group.most_common()]
    return shares, samples / frequency


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--redis", action="store_true", help="scenario (c): Redis sessions")
    parser.add_argument(
        "--no-fast-path",
        action="store_true",
        help="with server.fast_path: false (every request on aiohttp's server)",
    )
    parser.add_argument(
        "--varied",
        action="store_true",
        help="every request with a query of its own (nothing reused: each decided afresh)",
    )
    parser.add_argument(
        "--browser",
        action="store_true",
        help="send a browser's headers (14, and more cookies) instead of wrk's two",
    )
    parser.add_argument(
        "--rate",
        type=float,
        help="req/s at a fixed rate (open loop) instead of closed loop; --connections is"
        " then the rate's pool",
    )
    parser.add_argument(
        "--forward-auth",
        action="store_true",
        help="forward-auth checks about (b)'s route, as nginx auth_request sends them",
    )
    parser.add_argument("--output", type=Path, help="keep py-spy's raw profile here")
    parser.add_argument(
        "--perf",
        action="store_true",
        help="sample with Linux perf instead: CPU by binary (interpreter, kernel, uvloop, …),"
        " without py-spy's lean towards the lines after a system call",
    )
    args = parser.parse_args(argv)
    prefix = run_prefix()
    started: list[ManagedProcess] = []
    cpus = sorted(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="authgate-hotpath-") as name:
        tmp = Path(name)
        try:
            upstream = start_upstream(1, tmp)
            started.extend(upstream.processes)
            setup = (
                AuthgateSetup("redis", SESSION_POLICY, REDIS_URL, prefix)
                if args.redis
                else AuthgateSetup("session", SESSION_POLICY)
            )
            setup = replace(setup, fast_path=not args.no_fast_path)
            if args.forward_auth:
                setup = replace(setup, trusted_proxies=(f"{LOOPBACK}/32",))
            gate = start_authgate_scenario("b", "authgate (b)", 1, tmp, upstream.port, setup)
            started.extend(gate.processes)
            worker = gate.serving_pids()[0]
            pin = len(cpus) >= 2
            if pin:
                subprocess.run(
                    ["taskset", "-pc", str(cpus[1]), str(worker)], check=True, capture_output=True
                )
                for pid in upstream.serving_pids():
                    subprocess.run(
                        ["taskset", "-pc", str(cpus[0]), str(pid)], check=True, capture_output=True
                    )
            lua = ""
            if args.varied:
                lua = VARIED_CHECKS_LUA if args.forward_auth else VARIED_PATHS_LUA
            if args.rate:
                paced = paced_script(tmp, args.rate)
                script = tmp / "paced.lua"
                script.write_text(lua + paced.read_text(encoding="utf-8"), encoding="utf-8")
                args.connections = max(1, round(args.rate * PACE_MS / 1000))
            else:
                script = tmp / "done.lua"
                script.write_text(lua + WRK_DONE_SCRIPT, encoding="utf-8")
            url = f"http://{LOOPBACK}:{gate.port}/"
            headers = browser_headers(gate.headers) if args.browser else gate.headers
            if args.forward_auth:
                url = f"http://{LOOPBACK}:{gate.port}/.authgate/verify"
                headers = (*headers, f"X-Original-URL: https://{BENCH_HOST}/")
            settings = WrkSettings(1, args.connections, 2, BENCH_HOST, headers)
            run_wrk(url, settings, script)  # warm-up
            settings = WrkSettings(1, args.connections, args.seconds + 4, BENCH_HOST, headers)
            argv_wrk = wrk_command(url, settings, script)
            if pin:
                argv_wrk = ["taskset", "-c", str(cpus[0]), *argv_wrk]
            load = subprocess.Popen(argv_wrk, stdout=subprocess.PIPE, text=True)
            time.sleep(1)
            if args.perf:
                shares, cpu = perf_shares(worker, args.seconds, tmp)
                out, _ = load.communicate(timeout=args.seconds + 60)
                loaded = parse_wrk_output(out)
                rate = loaded.requests_per_second
                errors = loaded.socket_errors + loaded.non_2xx_3xx
                print(
                    f"wrk -t1 -c{args.connections}: {rate:.0f} req/s, errors {errors}"
                    " (one worker, perf attached)"
                )
                print(f"{'binary':<28} {'share':>6}  µs per request")
                for group, share in shares:
                    per_request = cpu / args.seconds * share / 100 / rate * 1e6
                    print(f"{group:<28} {share:5.1f}%  {per_request:6.1f}")
                return 0
            raw = args.output or tmp / "profile.txt"
            cpu_before = cpu_seconds([worker])
            spy = subprocess.run(
                [
                    os.path.join(os.path.dirname(sys.executable), "py-spy"),
                    "record",
                    "-p",
                    str(worker),
                    "-d",
                    str(args.seconds),
                    "-r",
                    "500",
                    "-f",
                    "raw",
                    "-o",
                    str(raw),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            cpu = cpu_seconds([worker]) - cpu_before
            out, _ = load.communicate(timeout=args.seconds + 60)
            if spy.returncode != 0:
                raise BenchmarkError(f"py-spy failed: {spy.stderr.strip()}")
            result = parse_wrk_output(out)
            per_request = cpu / (result.requests_per_second * args.seconds) * 1e6
            print(
                f"wrk -t1 -c{args.connections}: {result.requests_per_second:.0f} req/s, "
                f"p50 {result.latency_p50_ms:.2f} ms, p99 {result.latency_p99_ms:.2f} ms, "
                f"errors {result.socket_errors + result.non_2xx_3xx}; worker CPU "
                f"{per_request:.1f} µs a request (one worker"
                f"{', pinned' if pin else ''}, py-spy attached)"
            )
            breakdown = attribute(raw.read_text(encoding="utf-8").splitlines())
            print("\n".join(breakdown.lines()))
        finally:
            stop_all(started)
            if args.redis:
                import asyncio

                asyncio.run(delete_redis_prefix(REDIS_URL, prefix))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
