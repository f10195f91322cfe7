"""benchmarks.sched: what the tail tool and the suite read of the scheduler, from a made
/proc and a real one."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from benchmarks._harness import BenchmarkError
from benchmarks.sched import (
    SchedTotals,
    idle_share,
    parse_cpu_ticks,
    parse_involuntary,
    parse_schedstat,
    parse_steal,
    snapshot,
    spent,
)


def test_schedstat_gives_time_on_cpu_and_time_waiting() -> None:
    assert parse_schedstat("123456 7890 42\n") == (123456, 7890)


def test_status_gives_the_involuntary_switches() -> None:
    status = "Name:\tpython\nvoluntary_ctxt_switches:\t10\nnonvoluntary_ctxt_switches:\t3\n"
    assert parse_involuntary(status) == 3
    with pytest.raises(ValueError):
        parse_involuntary("Name:\tpython\n")


def _thread(proc: Path, pid: int, tid: int, on_cpu: int, waiting: int, forced: int) -> Path:
    task = proc / str(pid) / "task" / str(tid)
    task.mkdir(parents=True, exist_ok=True)
    (task / "schedstat").write_text(f"{on_cpu} {waiting} 1\n")
    (task / "status").write_text(f"nonvoluntary_ctxt_switches:\t{forced}\n")
    return task


def test_a_snapshot_holds_every_readable_thread(tmp_path: Path) -> None:
    _thread(tmp_path, 1, 1, 100, 10, 2)
    _thread(tmp_path, 1, 5, 50, 5, 1)
    (tmp_path / "1" / "task" / "9").mkdir()  # a thread that ended while it was read
    taken = snapshot([1, 2], tmp_path)  # pid 2: gone
    assert taken == {(1, "1"): SchedTotals(100, 10, 2), (1, "5"): SchedTotals(50, 5, 1)}


def test_what_was_spent_counts_only_threads_alive_at_the_end(tmp_path: Path) -> None:
    _thread(tmp_path, 1, 1, 100, 10, 2)
    ending = _thread(tmp_path, 1, 5, 50, 5, 1)
    before = snapshot([1], tmp_path)
    _thread(tmp_path, 1, 1, 300, 40, 5)
    for name in ("schedstat", "status"):
        (ending / name).unlink()
    _thread(tmp_path, 1, 7, 20, 2, 1)  # began meanwhile
    # Thread 5's share is unseen (never a negative figure); thread 7 counts from zero.
    assert spent(before, snapshot([1], tmp_path)) == SchedTotals(220, 32, 4)


def test_no_readable_thread_is_an_error_not_zeros(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkError):
        snapshot([1], tmp_path)


def test_this_process_is_seen_spending_cpu() -> None:
    if not Path(f"/proc/{os.getpid()}/task").is_dir():
        pytest.skip("no /proc")
    before = snapshot([os.getpid()])
    started = time.thread_time()
    while time.thread_time() - started < 0.05:  # 50 ms of CPU in this thread
        pass
    assert spent(before, snapshot([os.getpid()])).cpu_ns >= 40_000_000


def test_steal_is_the_eighth_figure_of_the_all_cpus_line() -> None:
    stat = (
        "cpu  8246 0 1239 19514 317 0 118 641 0 0\n"
        "cpu0 4000 0 600 9000 100 0 50 300 0 0\n"
        "intr 12345\n"
    )
    assert parse_steal(stat) == 641
    assert parse_steal("cpu  1 2 3 4 5 6 7\n") == 0  # a kernel that counts no steal
    with pytest.raises(ValueError):
        parse_steal("intr 1\n")


def test_idle_time_is_idle_and_iowait_of_all_cpus_over_their_whole_time() -> None:
    stat = "cpu  100 5 50 800 20 3 12 10 7 0\ncpu0 50 2 25 400 10 1 6 5 3 0\n"
    assert parse_cpu_ticks(stat) == (820, 1000)  # guest time (7) is already in user
    assert idle_share((820, 1000), (1270, 2000)) == 45.0
    assert idle_share(None, (1270, 2000)) is None
    assert idle_share((820, 1000), (820, 1000)) is None  # no time passed: no share
    with pytest.raises(ValueError):
        parse_cpu_ticks("intr 1 2 3\n")
