"""Stalls of a whole CPU, as a process that outranks every other one sees them.

`python -m benchmarks.hiccup --cpu N` runs one meter until SIGTERM or SIGINT, then
prints what it saw as one line of JSON. The meter is held to CPU N and, where the
kernel allows it (root, or CAP_SYS_NICE), runs at real-time priority (SCHED_FIFO): no
ordinary task in the guest can keep it from running. It sleeps INTERVAL_S, again and
again, and counts how late it wakes. A wake-up many milliseconds late then means the
CPU itself was taken away: by the hypervisor (a virtual CPU stopped; what the guest
reports as steal time, when it reports it) or by interrupt work. Either stalls a proxy
on that CPU for as long, whatever the proxy does.

`HiccupMeters` starts one meter per CPU around a measured run (benchmarks.tail).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from types import FrameType, TracebackType

from benchmarks._harness import BenchmarkError

INTERVAL_S = 0.001
READY = "measuring"
# Lateness from these bounds up is counted: a p99 target of 2 ms makes 1 and 2 ms the
# interesting ones, 5 and 10 ms say how long the worst stalls were.
BOUNDS_MS = (1.0, 2.0, 5.0, 10.0)


@dataclass(frozen=True)
class Hiccups:
    """What one or several meters saw: wake-ups, the latest one, and how many were at
    least each of BOUNDS_MS late. `stalled_ms` sums the lateness of wake-ups at least
    1 ms late (the time the CPU was gone in long stretches)."""

    wakeups: int
    max_ms: float
    at_least: tuple[int, ...]  # per BOUNDS_MS
    stalled_ms: float
    realtime: bool  # every meter ran at real-time priority

    def line(self) -> str:
        counts = " ".join(
            f"≥{bound:g}ms {count}" for bound, count in zip(BOUNDS_MS, self.at_least, strict=True)
        )
        priority = "" if self.realtime else " (not real-time: an ordinary task could delay it)"
        return f"stalls {counts}  longest {self.max_ms:.1f} ms{priority}"


def summarise(lateness_ms: Iterable[float], realtime: bool) -> Hiccups:
    wakeups = 0
    latest = 0.0
    at_least = [0] * len(BOUNDS_MS)
    stalled = 0.0
    for late in lateness_ms:
        wakeups += 1
        latest = max(latest, late)
        for index, bound in enumerate(BOUNDS_MS):
            if late >= bound:
                at_least[index] += 1
        if late >= BOUNDS_MS[0]:
            stalled += late
    return Hiccups(wakeups, latest, tuple(at_least), stalled, realtime)


def combine(meters: Sequence[Hiccups]) -> Hiccups:
    """Several CPUs' meters as one (counts added, the longest stall of any)."""
    if not meters:
        raise BenchmarkError("no hiccup meter reported")
    return Hiccups(
        sum(meter.wakeups for meter in meters),
        max(meter.max_ms for meter in meters),
        tuple(sum(counts) for counts in zip(*(meter.at_least for meter in meters), strict=True)),
        sum(meter.stalled_ms for meter in meters),
        all(meter.realtime for meter in meters),
    )


def _hold_to(cpu: int) -> bool:
    """Pin this process to `cpu` and ask for real-time priority: whether it was given."""
    os.sched_setaffinity(0, {cpu})
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except PermissionError:
        return False
    return True


def measure(cpu: int, ready: Callable[[], None]) -> Hiccups:
    """Sleep and wake on `cpu` until SIGTERM or SIGINT (`ready` is called once either
    would be heard, before the first sleep)."""
    stopping: list[bool] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.append(True)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    realtime = _hold_to(cpu)
    parent = os.getppid()
    ready()
    lateness: list[float] = []
    clock = time.perf_counter
    while not stopping:
        asleep = clock()
        time.sleep(INTERVAL_S)
        lateness.append((clock() - asleep - INTERVAL_S) * 1000)
        # A real-time process left behind (its parent killed) would disturb every
        # later measurement: it goes when its parent does.
        if len(lateness) % 256 == 0 and os.getppid() != parent:
            break
    return summarise(lateness, realtime)


class HiccupMeters:
    """One meter per CPU for the length of a `with` block; `.seen` after it."""

    def __init__(self, cpus: Iterable[int] | None = None) -> None:
        self.cpus = sorted(os.sched_getaffinity(0) if cpus is None else cpus)
        self.processes: list[subprocess.Popen[str]] = []
        self.seen: Hiccups | None = None

    def __enter__(self) -> HiccupMeters:
        try:
            for cpu in self.cpus:
                command = [sys.executable, "-m", "benchmarks.hiccup", "--cpu", str(cpu)]
                self.processes.append(subprocess.Popen(command, stdout=subprocess.PIPE, text=True))
            for process in self.processes:
                # Measuring from the first request on: each meter says when it is.
                assert process.stdout is not None
                if process.stdout.readline().strip() != READY:
                    raise BenchmarkError("a hiccup meter did not start")
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        reports = self._stop()
        if kind is None:
            if len(reports) != len(self.processes):
                raise BenchmarkError("a hiccup meter ended without a report")
            self.seen = combine(reports)

    def _stop(self) -> list[Hiccups]:
        for process in self.processes:
            process.terminate()
        reports: list[Hiccups] = []
        for process in self.processes:
            try:
                output, _ = process.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()
                continue
            if process.returncode == 0 and output.strip():
                reports.append(_parse(output))
        return reports


def _parse(output: str) -> Hiccups:
    fields = json.loads(output)
    fields["at_least"] = tuple(fields["at_least"])
    return Hiccups(**fields)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", type=int, required=True)
    args = parser.parse_args(argv)
    seen = measure(args.cpu, lambda: print(READY, flush=True))
    print(json.dumps(asdict(seen)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
