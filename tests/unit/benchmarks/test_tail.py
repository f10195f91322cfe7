"""benchmarks.tail: what it reads of the scheduler, from a real /proc and a made one."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from benchmarks.tail import SchedTotals, parse_involuntary, parse_schedstat, sched_totals


def test_schedstat_gives_time_on_cpu_and_time_waiting() -> None:
    assert parse_schedstat("123456 7890 42\n") == (123456, 7890)


def test_status_gives_the_involuntary_switches() -> None:
    status = "Name:\tpython\nvoluntary_ctxt_switches:\t10\nnonvoluntary_ctxt_switches:\t3\n"
    assert parse_involuntary(status) == 3
    with pytest.raises(ValueError):
        parse_involuntary("Name:\tpython\n")


def test_totals_sum_every_thread_and_skip_what_is_unreadable(tmp_path: Path) -> None:
    for pid, tid, stat, forced in (("1", "1", "100 10 1", 2), ("1", "5", "50 5 1", 1)):
        task = tmp_path / pid / "task" / tid
        task.mkdir(parents=True)
        (task / "schedstat").write_text(stat)
        (task / "status").write_text(f"nonvoluntary_ctxt_switches:\t{forced}\n")
    (tmp_path / "1" / "task" / "9").mkdir()  # a thread that ended while it was read
    assert sched_totals([1, 2], tmp_path) == SchedTotals(150, 15, 3)


def test_this_process_is_seen_spending_cpu() -> None:
    if not Path(f"/proc/{os.getpid()}/task").is_dir():
        pytest.skip("no /proc")
    before = sched_totals([os.getpid()])
    started = time.process_time()
    while time.process_time() - started < 0.05:  # 50 ms of CPU in this thread
        pass
    spent = sched_totals([os.getpid()]) - before
    assert spent.cpu_ns >= 40_000_000
    assert spent.wait_ns >= 0 and spent.involuntary >= 0
