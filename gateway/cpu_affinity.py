"""`server.cpu_affinity`: each worker process kept on CPUs of its own.

Why: with the kernel free to place them, two workers often share one core for a few
milliseconds while the other core runs the upstream or anything else; a request that
lands on the worker waiting its turn waits too. On a 2-core machine at half load that
was most of authgate's p99 (benchmarks/README.md, "p99 and where workers run"). A worker
held to one CPU still shares it with whatever else runs there, so this is for a host
where the gateway's workers are the main load, as nginx's `worker_cpu_affinity auto`.

A worker keeps its slot (and so its CPUs) when the supervisor restarts it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Collection, Sequence
from pathlib import Path

NONE = "none"
AUTO = "auto"


def available_cpus() -> frozenset[int]:
    """The CPUs this process may run on (its cgroup cpuset or taskset applied)."""
    if not hasattr(os, "sched_getaffinity"):
        return frozenset()
    return frozenset(os.sched_getaffinity(0))


def worker_cpus(
    setting: str | Sequence[int], workers: int, available: Collection[int]
) -> tuple[frozenset[int], ...] | None:
    """The CPUs of each worker slot, or None to leave placement to the kernel.

    "auto" deals the available CPUs out one per slot, in order, wrapping round when
    there are more workers than CPUs; a list is dealt out the same way. Raises
    ValueError, worded for the operator, for CPUs this process may not use or a
    platform that cannot pin."""
    if setting == NONE:
        return None
    if not hasattr(os, "sched_setaffinity") or not available:
        raise ValueError("this platform cannot hold a process to CPUs (use none)")
    if setting == AUTO:
        cpus = sorted(available)
    else:
        cpus = [int(cpu) for cpu in setting]
        outside = [cpu for cpu in cpus if cpu not in available]
        if outside:
            raise ValueError(
                f"CPU {describe(outside)}: not available to this process"
                f" (it may run on {describe(available)})"
            )
    return tuple(frozenset({cpus[slot % len(cpus)]}) for slot in range(workers))


def pin(cpus: frozenset[int]) -> None:
    """Hold the calling process to `cpus`: its threads started later inherit it, and
    those already running (the log writer, restarted after the fork) are held too."""
    os.sched_setaffinity(0, cpus)
    tasks = Path("/proc/self/task")
    if tasks.is_dir():
        for task in tasks.iterdir():
            with contextlib.suppress(ProcessLookupError):  # a thread that just ended
                os.sched_setaffinity(int(task.name), cpus)


def parse_cpu_list(text: str, highest: int) -> tuple[int, ...]:
    """The kernel's notation (`0-3,6`), as taskset and /proc write it, of CPUs up to
    `highest`; ValueError if not (checked before a range is spelt out: `0-4000000000`
    is refused at once)."""
    cpus: list[int] = []
    for part in text.replace(" ", "").split(","):
        first, dash, last = part.partition("-")
        if not _digits(first) or (dash and not _digits(last)):
            raise ValueError(part)
        low, high = int(first), int(last) if dash else int(first)
        if high < low or high > highest:
            raise ValueError(part)
        cpus.extend(range(low, high + 1))
    return tuple(cpus)


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def describe(cpus: Collection[int]) -> str:
    """CPU numbers as the kernel writes them: 0-3,6."""
    runs: list[list[int]] = []
    for cpu in sorted(set(cpus)):
        if runs and cpu == runs[-1][-1] + 1:
            runs[-1].append(cpu)
        else:
            runs.append([cpu])
    return ",".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs) or "none"
