"""`python -m benchmarks.soak [--minutes N]`: a soak of `server.fast_path`.

The fast path serves most requests (it is on by default): this is how it is shown to
hold under long mixed traffic. It runs authgate tuned (each worker held to a CPU:
`cpu_affinity: auto`; signed-in route (b), workers = cores) in front of the nginx
upstream for N minutes under two loads at once:

- wrk, plain allowed GETs with the session cookie (what the fast path serves);
- a mix of clients that are not plain, each checking the answer it gets: a POST with a
  body, a request without the cookie (the sign-in challenge), two GETs pipelined in
  one write, `Connection: close`, HEAD, a head sent in pieces with pauses, a client
  that goes away before its answer, and a plain GET after a handed-over one.

Every 10 s it samples each worker's RSS and open file descriptors and the fast path's
counters. It fails (exit 1) on: any unexpected answer, a worker that died or was
replaced, RSS that kept growing over the second half (more than `--rss-growth` MB
per worker), descriptors that kept growing, or a fast path that served nothing.
Writes `benchmarks/results/soak-<UTC>.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks._harness import (
    LOOPBACK,
    BenchmarkError,
    WrkResult,
    WrkSettings,
    install_uvloop,
    run_wrk,
    write_done_script,
)
from benchmarks.scenarios import (
    BENCH_HOST,
    SESSION_POLICY,
    AuthgateSetup,
    Scenario,
    start_authgate_scenario,
    start_upstream,
    stop_all,
)
from benchmarks.session_memory import worker_memory

RESULTS = Path(__file__).resolve().parent / "results"
SAMPLE_EVERY = 10.0  # seconds
METRIC = re.compile(rb'authgate_fast_path_requests_total\{outcome="(\w+)"\} (\S+)')


@dataclass
class Sample:
    at: float  # seconds since the start
    rss_mb: dict[int, float]  # by worker pid
    fds: dict[int, int]
    served: float
    handed_over: float


@dataclass
class Mix:
    """What the clients that are not plain asked, and what was not as expected."""

    asked: dict[str, int] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)

    def note(self, kind: str, problem: str | None) -> None:
        self.asked[kind] = self.asked.get(kind, 0) + 1
        if problem is not None and len(self.unexpected) < 50:
            self.unexpected.append(f"{kind}: {problem}")


# --------------------------------------------------------------------------- clients


async def _exchange(port: int, data: bytes, pieces: int = 1, pause: float = 0.0) -> bytes:
    """Send `data` (in `pieces`, `pause` apart) and read until the server closes."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        step = max(1, len(data) // pieces)
        for start in range(0, len(data), step):
            writer.write(data[start : start + step])
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)
        return await asyncio.wait_for(reader.read(-1), 10)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def _statuses(answer: bytes) -> list[int]:
    # Not anchored to a line: an answer follows the body before it directly. No body
    # here holds a status line (the upstream's is "ok", the gateway's JSON or empty).
    return [int(m) for m in re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)]


def _get(path: str, cookie: str, *, close: bool = False, method: str = "GET") -> bytes:
    connection = "Connection: close\r\n" if close else ""
    return (
        f"{method} {path} HTTP/1.1\r\nHost: {BENCH_HOST}\r\n{cookie}\r\n{connection}\r\n"
    ).encode()


async def _one_of_each(port: int, cookie: str, mix: Mix) -> None:
    """One round of every kind of client that is not plain, each answer checked."""
    closing = _get("/mix/close", cookie, close=True)
    cases: list[tuple[str, bytes, list[int], int, float]] = [
        # kind, bytes, expected statuses, pieces, pause
        ("close", closing, [200], 1, 0.0),
        ("head", _get("/mix/head", cookie, close=True, method="HEAD"), [200], 1, 0.0),
        (
            "post-body",
            (
                f"POST /mix/post HTTP/1.1\r\nHost: {BENCH_HOST}\r\n{cookie}\r\n"
                "Content-Length: 11\r\nConnection: close\r\n\r\nhello world"
            ).encode(),
            [200],
            1,
            0.0,
        ),
        ("no-cookie", _get("/mix/anon", "X-None: 1", close=True), [401], 1, 0.0),
        ("no-cookie-browser", _get("/mix/b", "Accept: text/html", close=True), [302], 1, 0.0),
        ("pipelined", _get("/mix/p1", cookie) + closing, [200, 200], 1, 0.0),
        ("after-hand-over", _get("/mix/h", "X-None: 1") + closing, [401, 200], 1, 0.0),
        ("slow-head", closing, [200], 4, 0.2),
    ]
    for kind, data, expected, pieces, pause in cases:
        try:
            got = _statuses(await _exchange(port, data, pieces, pause))
            mix.note(kind, None if got == expected else f"expected {expected}, got {got}")
        except (OSError, TimeoutError) as exc:
            mix.note(kind, f"{type(exc).__name__}: {exc}")
    # A client that goes away before its answer: nothing to check but the server.
    try:
        _, writer = await asyncio.open_connection(LOOPBACK, port)
        writer.write(_get("/mix/gone", cookie))
        await writer.drain()
        writer.transport.abort()
        mix.note("gone", None)
    except OSError as exc:
        mix.note("gone", f"{type(exc).__name__}: {exc}")


async def _mixed_clients(port: int, cookie: str, until: float, mix: Mix) -> None:
    while time.monotonic() < until:
        await asyncio.gather(*(_one_of_each(port, cookie, mix) for _ in range(4)))


# -------------------------------------------------------------------------- sampling


async def _counters(port: int) -> tuple[float, float]:
    answer = await _exchange(
        port,
        f"GET /.authgate/metrics HTTP/1.1\r\nHost: {LOOPBACK}\r\n"
        "Connection: close\r\n\r\n".encode(),
    )
    found = {name.decode(): float(value) for name, value in METRIC.findall(answer)}
    return found.get("served", 0.0), found.get("handed_over", 0.0)


async def _sample(scenario: Scenario, started: float) -> Sample:
    pids = scenario.rss_from.worker_pids()
    served, handed_over = await _counters(scenario.port)
    return Sample(
        at=round(time.monotonic() - started, 1),
        rss_mb={pid: round(worker_memory(pid).rss_mb, 1) for pid in pids},
        fds={pid: len(os.listdir(f"/proc/{pid}/fd")) for pid in pids},
        served=served,
        handed_over=handed_over,
    )


# ------------------------------------------------------------------------------ run


@dataclass(frozen=True)
class Verdict:
    problems: list[str]
    rss_growth_mb: dict[int, float]  # over the second half, by worker
    fd_growth: dict[int, int]


def judge(samples: list[Sample], mix: Mix, rss_growth_limit: float) -> Verdict:
    """What went wrong, from the samples and the mixed clients' notes."""
    problems = list(mix.unexpected)
    first, last = samples[0], samples[-1]
    if set(first.rss_mb) != set(last.rss_mb):
        problems.append(f"workers changed: {sorted(first.rss_mb)} → {sorted(last.rss_mb)}")
    middle = samples[len(samples) // 2]
    growth = {
        pid: round(last.rss_mb[pid] - middle.rss_mb[pid], 1)
        for pid in last.rss_mb
        if pid in middle.rss_mb
    }
    problems += [
        f"worker {pid}: RSS grew {mb} MB over the second half"
        for pid, mb in growth.items()
        if mb > rss_growth_limit
    ]
    fd_growth = {pid: last.fds[pid] - middle.fds[pid] for pid in last.fds if pid in middle.fds}
    problems += [
        f"worker {pid}: {n} more open descriptors over the second half"
        for pid, n in fd_growth.items()
        if n > 20
    ]
    if last.served <= first.served:
        problems.append("the fast path served nothing")
    return Verdict(problems, growth, fd_growth)


@dataclass(frozen=True)
class Outcome:
    samples: list[Sample]
    mix: Mix
    wrk: WrkResult


async def _soak(scenario: Scenario, minutes: float, connections: int, tmp: Path) -> Outcome:
    started = time.monotonic()
    until = started + minutes * 60
    mix = Mix()
    cookie = scenario.headers[0] if scenario.headers else ""
    settings = WrkSettings(
        threads=1,
        connections=connections,
        duration=minutes * 60,
        host_header=BENCH_HOST,
        headers=scenario.headers,
    )
    url = f"http://{LOOPBACK}:{scenario.port}/soak"
    wrk = asyncio.ensure_future(asyncio.to_thread(run_wrk, url, settings, write_done_script(tmp)))
    clients = asyncio.ensure_future(_mixed_clients(scenario.port, cookie, until, mix))
    samples = [await _sample(scenario, started)]
    while time.monotonic() < until:
        await asyncio.sleep(min(SAMPLE_EVERY, max(0.0, until - time.monotonic())))
        samples.append(await _sample(scenario, started))
        print(
            f"  {samples[-1].at:6.0f} s  RSS {sorted(samples[-1].rss_mb.values())} MB"
            f"  fds {sorted(samples[-1].fds.values())}"
            f"  served {samples[-1].served:.0f}  handed over {samples[-1].handed_over:.0f}",
            flush=True,
        )
    await clients
    load = await wrk
    return Outcome(samples, mix, load)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument(
        "--rss-growth", type=float, default=5.0, help="MB a worker may grow over the second half"
    )
    args = parser.parse_args(argv)
    install_uvloop()
    processes = []
    with tempfile.TemporaryDirectory(prefix="authgate-soak-") as folder:
        tmp = Path(folder)
        try:
            upstream = start_upstream(args.workers, tmp)
            processes += list(upstream.processes)
            setup = AuthgateSetup("soak", SESSION_POLICY, cpu_affinity="auto")
            scenario = start_authgate_scenario(
                "soak", "authgate (b), fast path", args.workers, tmp, upstream.port, setup
            )
            processes += list(scenario.processes)
            print(f"soak: {args.minutes:g} min, {args.workers} workers, tuned", flush=True)
            outcome = asyncio.run(_soak(scenario, args.minutes, args.connections, tmp))
        except BenchmarkError as exc:
            print(f"soak: could not run: {exc}", file=sys.stderr)
            return 1
        finally:
            stop_all(processes)
    verdict = judge(outcome.samples, outcome.mix, args.rss_growth)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"soak-{stamp}.json"
    report = {"minutes": args.minutes, "workers": args.workers, **asdict(outcome)}
    report["verdict"] = asdict(verdict)
    path.write_text(json.dumps(report, indent=2), encoding="utf-8")
    load, mix = outcome.wrk, outcome.mix
    print(
        f"wrk: {load.requests} requests, {load.requests_per_second:.0f} req/s,"
        f" socket errors {load.socket_errors}, non-2xx {load.non_2xx_3xx}"
    )
    print(f"mixed clients: {sum(mix.asked.values())} exchanges {mix.asked}")
    print(f"RSS growth over the second half (MB): {verdict.rss_growth_mb}")
    print(f"descriptor growth over the second half: {verdict.fd_growth}")
    print(f"written: {path}")
    for problem in verdict.problems:
        print(f"PROBLEM: {problem}")
    return 1 if verdict.problems else 0


if __name__ == "__main__":
    sys.exit(main())
