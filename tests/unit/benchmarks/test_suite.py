"""The suite's pure parts: options, ratios against the targets, the fixed-rate script,
the table, and py-spy stage attribution. No timing assertions."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

from aiohttp import web

from benchmarks.__main__ import parse_options
from benchmarks._harness import WRK_DONE_SCRIPT, WrkResult, WrkSettings, run_wrk, wrk_command
from benchmarks.hot_path import VARIED_CHECKS_LUA, attribute, stage_of
from benchmarks.report import checks, table
from benchmarks.scenarios import (
    SESSION_POLICY,
    AuthgateSetup,
    Scenario,
    authgate_config,
    browser_headers,
    start_upstream,
    stop_all,
)
from benchmarks.suite import (
    VARIED_PATHS_LUA,
    LoadOptions,
    LoadResults,
    PacedResult,
    ScenarioResult,
    browser_requests,
    combine_rounds,
    paced,
    paced_script,
    scenario_script,
)
from gateway.config.loader import load_config
from tests.unit.deploy.tools import require_tool


def wrk(rps: float, p99: float = 1.0) -> WrkResult:
    return WrkResult(int(rps * 10), 10.0, rps, 0.5, 0.8, p99, 0.6, 9.0, 0, 0)


def scenario(key: str, *rps: float) -> ScenarioResult:
    rounds = tuple(wrk(r) for r in rps)
    return ScenarioResult(key, key, sorted(rps)[len(rps) // 2], 0.5, 1.0, 50.0, 100.0, 0, rounds)


def test_quick_is_one_short_round_without_the_memory_run() -> None:
    options = parse_options(["--quick"])
    assert options.load.rounds == 1 and options.load.duration == 3.0
    assert options.memory_sessions == 0 and options.revocation_trials == 10
    full = parse_options([])
    assert full.load.rounds == 3 and full.memory_sessions == 100_000


def test_ratios_are_medians_of_paired_rounds_and_judged_against_the_targets() -> None:
    load = LoadResults(
        scenarios=(
            scenario("nginx", 10_000, 10_000, 10_000),
            scenario("minimal", 1000, 2000, 1000),
            scenario("session", 1100, 1000, 900),
            scenario("redis", 1000, 1000, 900),
        ),
        paced=(
            PacedResult("direct", 500, 10, 20, 490, 0.2, 1.0, 0),
            PacedResult("session", 500, 10, 20, 480, 1.0, 4.5, 0),
            PacedResult("direct@nginx", 5000, 100, 20, 4990, 0.2, 0.5, 0),
            PacedResult("nginx", 5000, 100, 20, 4980, 0.4, 3.0, 0),
        ),
        failures=(),
    )
    found = {c.name: c for c in checks(load)}
    # nginx at half of its own maximum is measured against direct at that same rate
    nginx_added = found["nginx p99 added at ½ its own max"]
    assert nginx_added.value == 2.5 and nginx_added.met is None
    vs_minimal = found["(b) / minimal aiohttp proxy"]
    assert vs_minimal.per_round == (1.1, 0.5, 0.9)
    assert vs_minimal.value == 0.9 and vs_minimal.met is False
    assert found["(c) Redis / (b)"].met is True
    added = found["(b) p99 added over direct at ½ max"]
    assert added.value == 3.5 and added.met is False
    assert found["(c) p99 added over direct at ½ max"].value is None
    assert "NOT MET" in table(load, list(found.values()), ["revocation: skipped"])


def test_fixed_rate_rounds_give_the_median_of_each_rounds_added_latency() -> None:
    """Each round's p99 is set against direct's of the same round: one bad moment in
    one run (here direct's 9 ms in round 2) moves the median of the differences less
    than it moves the difference of the medians."""
    direct = [PacedResult("direct", 500, 10, 20, 490, 0.2, p99, 0) for p99 in (1.0, 9.0, 1.2)]
    gate = [PacedResult("session", 500, 10, 20, 480, 1.0, p99, 1) for p99 in (2.0, 9.5, 4.2)]
    load = LoadResults(
        scenarios=(),
        paced=(combine_rounds(direct), combine_rounds(gate)),
        failures=(),
    )
    assert load.paced[1].p99_rounds == (2.0, 9.5, 4.2)
    assert load.paced[1].latency_p99_ms == 4.2 and load.paced[1].errors == 3
    added = {c.name: c for c in checks(load)}["(b) p99 added over direct at ½ max"]
    assert added.per_round == (1.0, 0.5, 3.0)
    assert added.value == 1.0 and added.met is True
    assert "p99 rounds 2.00, 9.50, 4.20" in table(load, [added], [])
    assert combine_rounds(direct[:1]) == direct[0]


def test_fixed_rate_rounds_keep_the_median_of_what_the_scheduler_saw() -> None:
    gate = [
        replace(
            PacedResult("session", 500, 10, 20, 480, 1.0, 2.0, 0),
            cpu_us=c,
            wait_us=w,
            preempt=p,
            idle_pct=i,
            load_us=u,
        )
        for c, w, p, i, u in (
            (20.0, 10.0, 0.2, 1.5, 27.0),
            (30.0, 40.0, 0.5, 0.2, 30.0),
            (25.0, 12.0, 0.1, 4.0, 26.0),
        )
    ]
    combined = combine_rounds(gate)
    assert (combined.cpu_us, combined.wait_us, combined.preempt) == (25.0, 12.0, 0.2)
    assert (combined.idle_pct, combined.load_us) == (1.5, 27.0)
    load = LoadResults(scenarios=(), paced=(combined,), failures=())
    line = table(load, [], [])
    assert "cpu 25.0 µs, waiting for a CPU 12.0 µs, preempted 0.200 a request" in line
    assert "machine idle 1.5 %, wrk 27.0 µs a request" in line
    machine_only = replace(combined, cpu_us=None, wait_us=None, preempt=None)
    line = table(LoadResults(scenarios=(), paced=(machine_only,), failures=()), [], [])
    assert "  machine idle 1.5 %, wrk 27.0 µs a request" in line  # (no stray separator)
    assert "; machine idle" not in line
    unread = [PacedResult("session", 500, 10, 20, 480, 1.0, p99, 0) for p99 in (1.0, 2.0)]
    assert combine_rounds(unread).cpu_us is None
    assert "waiting for a CPU" not in table(
        LoadResults(scenarios=(), paced=(combine_rounds(unread),), failures=()), [], []
    )


def test_a_fixed_rate_run_reads_what_the_scheduler_saw_of_the_serving_processes(
    tmp_path: Path,
) -> None:
    # Real nginx serving at a fixed rate: its workers spent CPU on the requests, and
    # /proc says how much (this machine's kernel keeps schedstats).
    require_tool("nginx")
    upstream = start_upstream(1, tmp_path)
    try:
        options = LoadOptions(workers=1, threads=1, connections=8, duration=2, warmup=0, rounds=1)
        run = paced(upstream, 500, options, tmp_path, 1)
    finally:
        stop_all(list(upstream.processes))
    assert run.achieved_rate > 0
    assert run.cpu_us is not None and run.cpu_us > 0
    assert run.wait_us is not None and run.wait_us >= 0
    assert run.preempt is not None and run.preempt >= 0
    # The rest of the machine (busy or not: a share), and wrk spent CPU on the requests.
    assert run.idle_pct is not None and 0 <= run.idle_pct <= 100
    assert run.load_us is not None and run.load_us > 0


def test_the_fixed_rate_script_spaces_sends_evenly_and_reports_exactly(tmp_path: Path) -> None:
    text = paced_script(tmp_path, 2000).read_text()
    assert "local interval = 0.500000" in text  # 2,000 req/s per thread: one send per 0.5 ms
    assert "clock_gettime" in text
    assert "WRK_JSON" in text


async def test_the_fixed_rate_script_holds_wrk_to_its_rate(tmp_path: Path) -> None:
    # Open loop: 8 connections against an instant server would make thousands of
    # requests a second in a closed loop; scheduled at 100/s they make about 100/s.
    async def ok(request: web.BaseRequest) -> web.Response:
        return web.Response(text="ok")

    settings = WrkSettings(1, 8, 2, "bench.test", ())
    result = await wrk_against(ok, settings, lambda port: paced_script(tmp_path, 100))
    assert 100 <= result.requests <= 400


async def wrk_against(
    handler: Callable[[web.BaseRequest], Awaitable[web.Response]],
    settings: WrkSettings,
    script: Callable[[int], Path],
    path: str = "/",
) -> WrkResult:
    """wrk with `settings` and the script made for the port, against `handler`."""
    require_tool("wrk")
    runner = web.ServerRunner(web.Server(handler))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        url = f"http://127.0.0.1:{port}{path}"
        return await asyncio.to_thread(run_wrk, url, settings, script(port))
    finally:
        await runner.cleanup()


async def test_the_varied_script_sends_no_request_twice(tmp_path: Path) -> None:
    # Nothing may be reused: every request wrk sends (all threads together) differs,
    # and still carries the scenario's Host and cookie.
    seen: list[tuple[str, str, str]] = []

    async def record(request: web.BaseRequest) -> web.Response:
        seen.append((request.path_qs, request.host, request.headers.get("Cookie", "")))
        return web.Response(text="ok")

    done = tmp_path / "done.lua"
    done.write_text(WRK_DONE_SCRIPT, encoding="utf-8")

    def script(port: int) -> Path:
        varied = Scenario("session_varied", "varied", port, (), None, (), VARIED_PATHS_LUA)  # type: ignore[arg-type]
        return scenario_script(varied, done)

    settings = WrkSettings(2, 4, 1, "bench.test", ("Cookie: authgate_session=abc",))
    result = await wrk_against(record, settings, script)
    paths = [path for path, _, _ in seen]
    assert len(paths) >= result.requests > 100
    assert len(set(paths)) == len(paths)
    assert {(host, cookie) for _, host, cookie in seen} == {("bench.test", "authgate_session=abc")}


async def test_hot_paths_varied_checks_ask_about_a_url_each_with_the_session_cookie(
    tmp_path: Path,
) -> None:
    """`hot_path --forward-auth --varied`: no check is given a kept answer, since each
    asks about a URL of its own, and each still carries wrk's other headers."""
    seen: list[tuple[str, str, str]] = []

    async def record(request: web.BaseRequest) -> web.Response:
        original = request.headers.get("X-Original-URL", "")
        seen.append((request.path_qs, original, request.headers.get("Cookie", "")))
        return web.Response(text="ok")

    script = tmp_path / "checks.lua"
    script.write_text(VARIED_CHECKS_LUA + WRK_DONE_SCRIPT, encoding="utf-8")
    headers = ("Cookie: authgate_session=abc", "X-Original-URL: https://bench.test/")
    settings = WrkSettings(2, 4, 1, "bench.test", headers)
    result = await wrk_against(record, settings, lambda port: script, "/.authgate/verify")
    originals = [original for _, original, _ in seen]
    assert len(originals) >= result.requests > 100
    assert len(set(originals)) == len(originals)
    assert all(url.startswith("https://bench.test/?t=") for url in originals)
    assert {(path, cookie) for path, _, cookie in seen} == {
        ("/.authgate/verify", "authgate_session=abc")
    }


async def test_the_browser_scenario_sends_a_browsers_fields_and_the_session_cookie(
    tmp_path: Path,
) -> None:
    seen: list[tuple[str, dict[str, str]]] = []

    async def record(request: web.BaseRequest) -> web.Response:
        seen.append((request.path_qs, dict(request.headers)))
        return web.Response(text="ok")

    done = tmp_path / "done.lua"
    done.write_text(WRK_DONE_SCRIPT, encoding="utf-8")
    session = Scenario("session", "b", 1, (), None, ("Cookie: authgate_session=abc",))  # type: ignore[arg-type]
    browser = browser_requests(session, "session_browser", "browser")

    def script(port: int) -> Path:
        return scenario_script(replace(browser, port=port), done)

    settings = WrkSettings(1, 2, 1, "bench.test", browser.headers)
    await wrk_against(record, settings, script)
    paths = [path for path, _ in seen]
    assert len(set(paths)) == len(paths) > 100
    headers = seen[0][1]
    assert len(headers) == 16  # Host, Cookie and 14 more
    assert headers["Host"] == "bench.test"
    assert headers["Sec-Fetch-Mode"] == "navigate"
    cookies = [part.strip() for part in headers["Cookie"].split(";")]
    assert "authgate_session=abc" in cookies and len(cookies) == 4


def test_a_proxy_without_a_session_is_sent_the_same_bytes() -> None:
    # The minimal proxy needs no session cookie: it gets a placeholder of the same size,
    # so that the ratio compares the same requests.
    signed_in = browser_headers((f"Cookie: authgate_session={'a' * 43}",))
    anonymous = browser_headers(())
    assert [len(h) for h in anonymous] == [len(h) for h in signed_in]
    assert anonymous[:-1] == signed_in[:-1]


def test_a_scenario_without_lua_keeps_the_suite_script(tmp_path: Path) -> None:
    done = tmp_path / "done.lua"
    plain = Scenario("session", "b", 1, (), None)  # type: ignore[arg-type]
    assert scenario_script(plain, done) == done


def test_scenarios_run_on_the_defaults_unless_they_turn_the_fast_path_off(tmp_path: Path) -> None:
    (tmp_path / "on").mkdir()
    (tmp_path / "off").mkdir()
    on = authgate_config(tmp_path / "on", 1234, 5678, AuthgateSetup("b", SESSION_POLICY))
    off = authgate_config(
        tmp_path / "off", 1234, 5678, AuthgateSetup("b", SESSION_POLICY, fast_path=False)
    )
    assert "fast_path" not in on.read_text()
    assert load_config(on, environ={}).server.fast_path is True
    assert load_config(off, environ={}).server.fast_path is False


def test_wrk_sends_the_session_cookie_with_the_host() -> None:
    settings = WrkSettings(2, 8, 3, "bench.test", ("Cookie: authgate_session=abc",))
    argv = wrk_command("http://127.0.0.1:1/", settings, None)
    assert argv[argv.index("-H") + 1] == "Host: bench.test"
    assert "Cookie: authgate_session=abc" in argv


def test_a_redis_scenario_config_names_its_own_prefix(tmp_path: Path) -> None:
    setup = AuthgateSetup("redis", SESSION_POLICY, "redis://127.0.0.1:6379/0", "ab-cd:")
    text = authgate_config(tmp_path, 1234, 5678, setup).read_text()
    assert 'redis_prefix: "ab-cd:"' in text and "store: redis://127.0.0.1:6379/0" in text


def test_samples_go_to_the_innermost_pipeline_stage() -> None:
    frames = [
        "Runner.run (asyncio/runners.py:118)",
        "Pipeline._handle (gateway/pipeline.py:268)",
        "Identifier.__call__ (gateway/identify.py:101)",
        "Identifier._add_identity (gateway/identify.py:160)",
        "JwtSigner.sign (gateway/signing.py:300)",
    ]
    assert stage_of(frames) == "JWT"
    assert stage_of(frames[:4]) == "headers"
    assert stage_of(frames[:1]) == "event loop (uvloop, C)"
    assert stage_of(["Thread._bootstrap (threading.py:1002)", "x (y.py:1)"]) is None
    reused = [
        "Runner.run (asyncio/runners.py:118)",
        "_Connection.data_received (gateway/upstream_client.py:181)",
        "ReusedExchange._step (gateway/reuse.py:261)",
        "FastConnection.write (gateway/fast_path.py:362)",
    ]
    assert stage_of(reused) == "fast path"
    assert stage_of(reused[:3]) == "reused exchange"
    assert stage_of(reused[:2]) == "upstream client"


def test_attribution_counts_raw_py_spy_lines() -> None:
    lines = [
        "process 1;Runner.run (asyncio/runners.py:118);canonical_path (gateway/canonical.py:170) 3",
        "process 1;Runner.run (asyncio/runners.py:118) 1",
        "garbage",
    ]
    breakdown = attribute(lines)
    assert breakdown.samples == 4
    assert dict(breakdown.by_stage) == {"canonicalise": 3, "event loop (uvloop, C)": 1}
