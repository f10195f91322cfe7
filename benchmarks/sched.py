"""What the kernel's scheduler saw of a set of processes, from /proc: time on a CPU,
time waiting for one, and preemptions, per thread; and the machine's steal and idle
time.
Read by `benchmarks.tail` and by the suite's fixed-rate runs (Linux, schedstats on)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from benchmarks._harness import BenchmarkError


@dataclass(frozen=True)
class SchedTotals:
    """What the scheduler counted for a set of threads."""

    cpu_ns: int = 0  # time on a CPU
    wait_ns: int = 0  # time runnable, waiting for a CPU
    involuntary: int = 0  # context switches the scheduler forced

    def __add__(self, other: SchedTotals) -> SchedTotals:
        return SchedTotals(
            self.cpu_ns + other.cpu_ns,
            self.wait_ns + other.wait_ns,
            self.involuntary + other.involuntary,
        )

    def __sub__(self, other: SchedTotals) -> SchedTotals:
        return SchedTotals(
            self.cpu_ns - other.cpu_ns,
            self.wait_ns - other.wait_ns,
            self.involuntary - other.involuntary,
        )


def parse_schedstat(text: str) -> tuple[int, int]:
    """/proc/…/schedstat: time on CPU and time waiting on a run queue, in ns."""
    on_cpu, waiting, _ = text.split()
    return int(on_cpu), int(waiting)


def parse_involuntary(status: str) -> int:
    """/proc/…/status: the count of involuntary context switches."""
    for line in status.splitlines():
        if line.startswith("nonvoluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise ValueError("no nonvoluntary_ctxt_switches line")


Snapshot = dict[tuple[int, str], SchedTotals]


def snapshot(pids: Iterable[int], proc: Path = Path("/proc")) -> Snapshot:
    """Every thread of the processes, by (pid, tid); threads gone meanwhile are left out.
    BenchmarkError when none could be read (no /proc, or a kernel without schedstats)."""
    found: Snapshot = {}
    for pid in pids:
        try:
            tids = os.listdir(proc / str(pid) / "task")
        except OSError:
            continue
        for tid in tids:
            task = proc / str(pid) / "task" / tid
            try:
                on_cpu, waiting = parse_schedstat((task / "schedstat").read_text())
                forced = parse_involuntary((task / "status").read_text())
            except (OSError, ValueError):
                continue
            found[(pid, tid)] = SchedTotals(on_cpu, waiting, forced)
    if not found:
        raise BenchmarkError("no thread's schedstat could be read (is this Linux with /proc?)")
    return found


def spent(before: Snapshot, after: Snapshot) -> SchedTotals:
    """What the threads alive at the end spent between the two snapshots (one that began
    meanwhile counts from zero; one that ended is left out, its share unseen)."""
    total = SchedTotals()
    for thread, now in after.items():
        total = total + (now - before.get(thread, SchedTotals()))
    return total


def _all_cpus(stat: str) -> list[int]:
    """/proc/stat's line for all CPUs together, in clock ticks: user nice system idle
    iowait irq softirq steal (older kernels stop early; guest time, after, is already
    in user and nice, and is left out)."""
    for line in stat.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            return [int(field) for field in fields[1:9]]
    raise ValueError("no cpu line in /proc/stat")


def parse_steal(stat: str) -> int:
    """/proc/stat: the steal time of all CPUs together, in clock ticks."""
    ticks = _all_cpus(stat)
    return ticks[7] if len(ticks) > 7 else 0


def steal_seconds(proc: Path = Path("/proc")) -> float:
    return parse_steal((proc / "stat").read_text()) / os.sysconf("SC_CLK_TCK")


def parse_cpu_ticks(stat: str) -> tuple[int, int]:
    """/proc/stat: the idle time (idle and iowait) of all CPUs together, and all their
    time, in clock ticks."""
    ticks = _all_cpus(stat)
    return sum(ticks[3:5]), sum(ticks)


def cpu_ticks(proc: Path = Path("/proc")) -> tuple[int, int] | None:
    """`parse_cpu_ticks` of this machine, or None where /proc/stat cannot be read."""
    try:
        return parse_cpu_ticks((proc / "stat").read_text())
    except (OSError, ValueError):
        return None


def idle_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """The share of all CPUs' time that was idle between two `cpu_ticks`, in %."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return 100 * (after[0] - before[0]) / (after[1] - before[1])
