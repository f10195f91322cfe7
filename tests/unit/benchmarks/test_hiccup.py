"""benchmarks.hiccup: how stalls are counted, and the real meters on this machine."""

from __future__ import annotations

import os
import signal
import time

import pytest

from benchmarks._harness import BenchmarkError
from benchmarks.hiccup import BOUNDS_MS, HiccupMeters, Hiccups, combine, summarise


def test_lateness_is_counted_from_each_bound_up() -> None:
    seen = summarise([0.1, 0.9, 1.0, 2.5, 7.0, 12.0], realtime=True)
    assert BOUNDS_MS == (1.0, 2.0, 5.0, 10.0)
    assert seen == Hiccups(6, 12.0, (4, 3, 2, 1), 1.0 + 2.5 + 7.0 + 12.0, True)


def test_meters_combine_into_one_machine() -> None:
    one = Hiccups(10, 3.0, (2, 1, 0, 0), 4.0, True)
    other = Hiccups(20, 6.0, (1, 1, 1, 0), 6.0, False)
    assert combine([one, other]) == Hiccups(30, 6.0, (3, 2, 1, 0), 10.0, False)
    with pytest.raises(BenchmarkError):
        combine([])


def test_a_meter_sees_the_time_it_could_not_run() -> None:
    # A real meter, stopped for 30 ms as a hypervisor stops a virtual CPU.
    cpu = min(os.sched_getaffinity(0))
    with HiccupMeters([cpu]) as meters:
        time.sleep(0.1)
        (meter,) = meters.processes
        os.kill(meter.pid, signal.SIGSTOP)
        time.sleep(0.03)
        os.kill(meter.pid, signal.SIGCONT)
        time.sleep(0.1)
    seen = meters.seen
    assert seen is not None
    assert seen.wakeups > 50  # it woke about every millisecond the rest of the time
    assert seen.at_least[2] >= 1  # the stop: at least 5 ms late
    assert seen.max_ms >= 25
    assert seen.line().startswith("stalls ≥1ms")
