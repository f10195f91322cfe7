"""The benchmark harness: reading wrk's reports, /proc accounting, process groups, nginx.conf.

No timing assertions: these tests check that figures are read correctly, not how fast
anything is.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks._harness import (
    WRK_DONE_SCRIPT,
    BenchmarkError,
    WrkResult,
    WrkSettings,
    children_of,
    cpu_seconds,
    free_port,
    nginx_config,
    parse_duration_ms,
    parse_wrk_output,
    peak_rss_bytes,
    run_wrk,
    start_process,
    wrk_command,
)
from benchmarks.proxy import Ratios, ScenarioResult, authgate_config, ratios, table
from tests.unit.deploy.tools import require_tool

WRK_TEXT_REPORT = """\
Running 10s test @ http://127.0.0.1:41234/
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     4.21ms    1.10ms  52.37ms   91.20%
    Req/Sec     7.65k   512.33     8.40k    70.50%
  Latency Distribution
     50%    3.98ms
     75%    4.50ms
     90%    5.12ms
     99%    1.02s
  152345 requests in 10.01s, 18.02MB read
  Socket errors: connect 0, read 3, write 1, timeout 2
  Non-2xx or 3xx responses: 7
Requests/sec:  15219.28
Transfer/sec:      1.80MB
"""

WRK_DONE_LINE = (
    'WRK_JSON {"requests":152345,"duration_us":10010000,"bytes":18895000,'
    '"errors":{"connect":0,"read":3,"write":1,"status":7,"timeout":2},'
    '"latency_us":{"mean":4210.50,"max":52370,"p50":3981,"p90":5120,"p99":9870}}'
)


def test_wrk_durations_in_every_unit_become_milliseconds() -> None:
    assert parse_duration_ms("812.00us") == pytest.approx(0.812)
    assert parse_duration_ms("1.23ms") == pytest.approx(1.23)
    assert parse_duration_ms("2.01s") == pytest.approx(2010)
    assert parse_duration_ms("1.00m") == pytest.approx(60_000)


def test_a_malformed_duration_is_refused() -> None:
    with pytest.raises(ValueError, match="not a wrk duration"):
        parse_duration_ms("fast")


def test_text_report_gives_throughput_percentiles_and_errors() -> None:
    result = parse_wrk_output(WRK_TEXT_REPORT)
    assert result.requests == 152345
    assert result.duration_s == pytest.approx(10.01)
    assert result.requests_per_second == pytest.approx(15219.28)
    assert result.latency_p50_ms == pytest.approx(3.98)
    assert result.latency_p90_ms == pytest.approx(5.12)
    assert result.latency_p99_ms == pytest.approx(1020)
    assert result.latency_mean_ms == pytest.approx(4.21)
    assert result.latency_max_ms == pytest.approx(52.37)
    assert result.socket_errors == 6
    assert result.non_2xx_3xx == 7


def test_text_report_without_error_lines_counts_no_errors() -> None:
    clean = "\n".join(
        line
        for line in WRK_TEXT_REPORT.splitlines()
        if "Socket errors" not in line and "Non-2xx" not in line
    )
    result = parse_wrk_output(clean)
    assert (result.socket_errors, result.non_2xx_3xx) == (0, 0)


def test_done_script_line_wins_over_the_rounded_text_report() -> None:
    result = parse_wrk_output(WRK_TEXT_REPORT + WRK_DONE_LINE + "\n")
    assert result.latency_p50_ms == pytest.approx(3.981)
    assert result.latency_p99_ms == pytest.approx(9.87)
    assert result.requests_per_second == pytest.approx(152345 / 10.01)
    assert result.socket_errors == 6
    assert result.non_2xx_3xx == 7


def test_a_report_without_figures_is_an_error_not_zeros() -> None:
    with pytest.raises(ValueError, match="wrk output lacks"):
        parse_wrk_output("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_done_script_prints_the_line_the_parser_reads() -> None:
    assert "WRK_JSON " in WRK_DONE_SCRIPT
    assert "latency:percentile(99)" in WRK_DONE_SCRIPT


def test_wrk_command_sends_the_host_header_and_asks_for_percentiles(tmp_path: Path) -> None:
    script = tmp_path / "done.lua"
    argv = wrk_command("http://127.0.0.1:9/", WrkSettings(2, 64, 3.0, "bench.test"), script)
    assert argv[1:4] == ["-t2", "-c64", "-d3s"]
    assert "--latency" in argv
    assert argv[argv.index("-H") + 1] == "Host: bench.test"
    assert argv[argv.index("-s") + 1] == str(script)
    assert argv[-1] == "http://127.0.0.1:9/"


def test_wrk_that_fails_says_why() -> None:
    require_tool("wrk")
    port = free_port()  # nothing listens there
    with pytest.raises(BenchmarkError, match=r"wrk failed \(1\): unable to connect"):
        run_wrk(f"http://127.0.0.1:{port}/", WrkSettings(1, 1, 1.0))


def test_free_port_can_be_bound_on_loopback() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_proc_accounting_sees_a_process_and_its_children(tmp_path: Path) -> None:
    # A parent that forks one child and waits: the shape of every server we measure.
    child = "import time; time.sleep(60)"
    code = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}])"
    process = start_process("tree", [sys.executable, "-c", code], tmp_path / "tree.log")
    try:
        for _ in range(100):
            if children_of(process.pid):
                break
            time.sleep(0.05)
        children = children_of(process.pid)
        assert len(children) == 1
        assert process.worker_pids() == children
        assert peak_rss_bytes(children[0]) > 0
        assert cpu_seconds([process.pid, *children]) >= 0
    finally:
        process.stop()


def test_stop_ends_the_whole_process_group(tmp_path: Path) -> None:
    # The child ignores SIGTERM, as a wedged worker would; it must still be gone.
    child = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    code = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}])"
    process = start_process("group", [sys.executable, "-c", code], tmp_path / "group.log")
    for _ in range(100):
        if children_of(process.pid):
            break
        time.sleep(0.05)
    (child_pid,) = children_of(process.pid)
    process.stop(grace=1.0)
    assert not process.alive()
    for _ in range(100):
        if not _exists(child_pid):
            break
        time.sleep(0.05)
    assert not _exists(child_pid)


def _exists(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status  # a zombie has ended; only its entry remains


def test_vanished_process_has_no_rss_and_no_cpu() -> None:
    gone = _a_finished_pid()
    assert peak_rss_bytes(gone) == 0
    assert cpu_seconds([gone]) == 0


def _a_finished_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_nginx_config_keeps_everything_under_its_prefix(tmp_path: Path) -> None:
    text = nginx_config(tmp_path, 2, "    server { listen 127.0.0.1:1; }\n")
    assert "worker_processes 2;" in text
    assert f"pid {tmp_path}/nginx.pid;" in text
    assert f"proxy_temp_path {tmp_path}/temp/proxy;" in text
    assert "access_log off;" in text
    assert "listen 127.0.0.1:1;" in text
    assert text.count("{") == text.count("}")
    assert ("user root;" in text) == (os.geteuid() == 0)


def test_generated_authgate_config_routes_the_bench_host_through_a_bypass_rule(
    tmp_path: Path,
) -> None:
    config = authgate_config(tmp_path, 4000, 5000)
    text = config.read_text()
    assert "listen: 127.0.0.1:4000" in text
    assert "domains: [bench.test]" in text
    assert "upstream: http://127.0.0.1:5000" in text
    assert "action: bypass" in (tmp_path / "policy.yaml").read_text()


def test_generated_authgate_config_is_accepted_by_the_loader(tmp_path: Path) -> None:
    from gateway.config import load_config

    config = load_config(authgate_config(tmp_path, 4000, 5000))
    (tenant,) = config.tenants
    assert tenant.domains == ("bench.test",)
    assert tenant.routes[0].upstream == "http://127.0.0.1:5000"


def _result(key: str, rps: float) -> ScenarioResult:
    return ScenarioResult(key, key, 2, rps, 1.0, 2.0, 30.0, 100.0, 0, ())


def test_ratios_compare_authgate_with_the_minimal_proxy_and_nginx() -> None:
    results = {
        r.key: r
        for r in (_result("authgate", 900), _result("minimal", 1000), _result("nginx", 3000))
    }
    ratio = ratios(results)
    assert ratio.authgate_vs_minimal == pytest.approx(0.9)
    assert ratio.authgate_vs_nginx == pytest.approx(0.3)
    assert ratio.target_met is False
    assert ratio.cpu_efficiency_vs_minimal == pytest.approx(1.0)  # both 100 µs/req here


def test_missing_scenario_leaves_its_ratio_and_verdict_unknown() -> None:
    ratio = ratios({"minimal": _result("minimal", 1000)})
    assert ratio == Ratios(None, None, None)
    assert "not measured" in table([_result("minimal", 1000)], ratio)


def _rounds(*rps: float) -> tuple[WrkResult, ...]:
    return tuple(WrkResult(1000, 1.0, r, 1.0, 1.5, 2.0, 1.0, 3.0, 0, 0) for r in rps)


def test_ratio_is_the_median_of_back_to_back_rounds() -> None:
    # Round 2 ran while the machine was busy: both slowed down, their ratio did not.
    authgate = dataclasses.replace(_result("authgate", 900), rounds=_rounds(900, 300, 950))
    minimal = dataclasses.replace(_result("minimal", 1000), rounds=_rounds(1000, 330, 1000))
    ratio = ratios({"authgate": authgate, "minimal": minimal})
    assert ratio.authgate_vs_minimal_per_round == pytest.approx((0.9, 300 / 330, 0.95))
    assert ratio.authgate_vs_minimal == pytest.approx(300 / 330)


def test_table_prints_the_verdict_when_the_target_is_met() -> None:
    results = [_result("minimal", 1000), _result("authgate", 1100)]
    text = table(results, ratios({r.key: r for r in results}))
    assert "1.10x" in text
    assert "MET" in text and "NOT MET" not in text
