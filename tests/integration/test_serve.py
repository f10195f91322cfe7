"""`authgate serve` and `authgate demo` as real processes: workers, signals, health, reload."""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(port: int, path: str, host: str = "app.test") -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": host, "Accept": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def wait_until_up(port: int, process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            out = process.stdout.read().decode() if process.stdout else ""
            raise AssertionError(f"process exited with {process.returncode}: {out}")
        try:
            if get(port, "/.authgate/health")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("gateway did not come up")


def drain_output(process: subprocess.Popen[bytes]) -> str:
    """What a gateway printed, for a failure message (stops it: its pipe is read to EOF)."""
    process.kill()
    out, _ = process.communicate(timeout=10)
    return out.decode(errors="replace")


class _Upstream(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"upstream saw {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def plain_upstream() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


POLICY_OPEN = """version: 1
default: deny
rules:
  - name: open
    paths: ["/open/**"]
    action: bypass
"""

POLICY_MORE_OPEN = (
    POLICY_OPEN
    + """  - name: also
    paths: ["/also/**"]
    action: bypass
"""
)


def write_config(
    tmp_path: Path,
    port: int,
    upstream_port: int,
    *,
    fast_path: bool | None = None,  # None: the default (on)
    cpu_affinity: str = "none",
) -> Path:
    (tmp_path / "policy.yaml").write_text(POLICY_OPEN)
    config = tmp_path / "config.yaml"
    fast_path_line = "" if fast_path is None else f"  fast_path: {str(fast_path).lower()}\n"
    config.write_text(
        f"""server:
  listen: 127.0.0.1:{port}
  shutdown_timeout: 5s
{fast_path_line}  cpu_affinity: {cpu_affinity}
storage: sqlite:///authgate.db
logging:
  level: warning
tenants:
  - id: acme
    domains: [app.test]
    policies: [policy.yaml]
    routes:
      - host: app.test
        upstream: http://127.0.0.1:{upstream_port}
"""
    )
    return config


def listening_pids(port: int) -> set[int]:
    """Processes with a listening socket on `port` (SO_REUSEPORT: one socket per worker)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    found = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            links = [os.readlink(fd) for fd in (proc / "fd").iterdir()]
        except OSError:
            continue
        if any(link[8:-1] in inodes for link in links if link.startswith("socket:[")):
            found.add(int(proc.name))
    return found


def wait_until_workers_listen(port: int, parent: int, count: int, timeout: float = 20) -> None:
    """Until `count` workers of `parent` each have their listening socket on `port`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = worker_pids(parent)
        if len(workers) == count and set(workers) <= listening_pids(port):
            return
        time.sleep(0.05)
    raise AssertionError(
        f"workers {worker_pids(parent)} not all listening on {port}: {listening_pids(port)}"
    )


def worker_pids(parent: int) -> list[int]:
    children = Path(f"/proc/{parent}/task/{parent}/children")
    return [int(pid) for pid in children.read_text().split()] if children.exists() else []


def start_serving(config: Path, port: int, workers: int = 2) -> subprocess.Popen[bytes]:
    """`authgate serve` with `workers`, returned once each of them listens."""
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "-c", str(config), "--workers", str(workers)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until_up(port, process)
        wait_until_workers_listen(port, process.pid, workers)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return process


def stop_serving(process: subprocess.Popen[bytes]) -> None:
    """Kill a gateway a test left running (its workers follow: PR_SET_PDEATHSIG)."""
    if process.poll() is None:
        process.kill()
        process.wait()


def kill_worker_and_wait_for_its_replacement(process: subprocess.Popen[bytes], dead: int) -> None:
    os.kill(dead, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = worker_pids(process.pid)
        if len(now) == 2 and dead not in now:
            return
        time.sleep(0.1)


@pytest.mark.parametrize("fast_path", [False, True], ids=["full", "fast"])
def test_serve_runs_workers_reloads_restarts_and_drains(
    tmp_path: Path, plain_upstream: int, fast_path: bool
) -> None:
    port = free_port()
    config = write_config(tmp_path, port, plain_upstream, fast_path=fast_path)
    process = start_serving(config, port)
    try:
        assert get(port, "/open/x") == (200, "upstream saw /open/x")
        assert get(port, "/also/x")[0] == 401 or get(port, "/also/x")[0] == 403

        # SIGHUP: a valid policy edit takes effect in every worker
        (tmp_path / "policy.yaml").write_text(POLICY_MORE_OPEN)
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(get(port, "/also/x")[0] != 200 for _ in range(8)):
            time.sleep(0.1)
        answers = [get(port, "/also/x") for _ in range(8)]
        assert all(status == 200 for status, _ in answers), (answers, drain_output(process))

        # an invalid edit keeps the old policy
        (tmp_path / "policy.yaml").write_text("version: 1\nrules: [{actoin: bypass}]\n")
        process.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert all(get(port, "/also/x")[0] == 200 for _ in range(8))

        # a dead worker is replaced
        workers = worker_pids(process.pid)
        assert len(workers) == 2
        kill_worker_and_wait_for_its_replacement(process, workers[0])
        assert len(worker_pids(process.pid)) == 2
        assert get(port, "/open/y")[0] == 200

        if fast_path:  # and the requests above were served on it
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                _, metrics = get(port, "/.authgate/metrics")
                served = re.search(
                    r'^authgate_fast_path_requests_total\{outcome="served"\} (\S+)$', metrics, re.M
                )
                if served and float(served.group(1)) > 0:
                    break
                time.sleep(0.2)
            else:
                raise AssertionError("no request was served on the fast path")

        # SIGTERM drains and exits cleanly
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        stop_serving(process)


def serve_refused(config: Path) -> subprocess.CompletedProcess[str]:
    """`authgate serve` on a config it must refuse (it exits at once)."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_bad_config_exits_2_naming_file_line_and_key(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("server:\n  listen: 127.0.0.1:1\ntenants:\n  - id: acme\n    domains: x\n")
    result = serve_refused(config)
    assert result.returncode == 2
    assert f"{config}:5: tenants[0].domains:" in result.stderr


def assert_demo_sign_in_shows_alice(port: int) -> None:
    """The demo's members area: redirected to sign in, then the upstream sees alice."""
    import re
    import urllib.parse

    host = {"Host": f"127.0.0.1:{port}"}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/members/", headers={**host, "Accept": "text/html"})
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 302
    login = resp.getheader("Location") or ""
    conn.request("GET", login, headers={**host, "Accept": "text/html"})
    resp = conn.getresponse()
    page = resp.read().decode()
    presession = (resp.getheader("Set-Cookie") or "").split(";")[0]
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    rd = re.search(r'name="rd" value="([^"]*)"', page)
    assert token and rd
    form = urllib.parse.urlencode(
        {"csrf_token": token.group(1), "rd": rd.group(1), "username": "alice", "password": "alice"}
    )
    conn.request(
        "POST",
        "/.authgate/login",
        body=form,
        headers={
            **host,
            "Cookie": presession,
            "Origin": f"http://127.0.0.1:{port}",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 303
    session = next(
        v.split(";")[0] for k, v in resp.getheaders() if k == "Set-Cookie" and "session" in v
    )
    conn.request("GET", "/members/", headers={**host, "Cookie": session})
    resp = conn.getresponse()
    page = resp.read().decode()
    conn.close()
    assert resp.status == 200
    assert "<td>Remote-User</td><td>alice</td>" in page
    assert "X-Authgate-Jwt" in page


def test_demo_shows_the_request_the_upstream_received() -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "demo", "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until_up(port, process, timeout=30)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request(
            "GET",
            "/public/hello?x=1",
            headers={"Host": f"127.0.0.1:{port}", "Remote-User": "admin"},
        )
        resp = conn.getresponse()
        page = resp.read().decode()
        assert resp.status == 200
        assert "The demo upstream received this request" in page
        assert "GET /public/hello?x=1" in page
        assert "X-Forwarded-For" in page
        assert "<td>Remote-User</td>" not in page
        assert_demo_sign_in_shows_alice(port)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    out = process.stdout.read().decode() if process.stdout else ""
    assert f"http://127.0.0.1:{port}/" in out
    assert "alice / alice" in out


def test_a_country_rule_without_a_geoip_database_refuses_to_start(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text(
        "version: 1\ndefault: deny\nrules:\n"
        "  - name: geo\n    countries: [GB]\n    action: bypass\n"
    )
    config = tmp_path / "config.yaml"
    config.write_text(
        "tenants:\n  - id: acme\n    domains: [app.test]\n    policies: [policy.yaml]\n"
    )
    for command in ("serve", "check-config"):
        result = subprocess.run(
            [sys.executable, "-m", "gateway", command, "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 2, command
        assert f"{tmp_path / 'policy.yaml'}:4: rules[0].countries:" in result.stderr
        assert "geoip.database is not configured" in result.stderr


def allowed_cpus(pid: int, thread: int | None = None) -> str:
    """What the kernel lets a process (or one of its threads) run on, as it writes it."""
    status = Path(f"/proc/{pid}/task/{thread or pid}/status").read_text()
    return re.search(r"^Cpus_allowed_list:\s*(\S+)$", status, re.M).group(1)  # type: ignore[union-attr]


def test_cpu_affinity_auto_holds_each_worker_and_its_threads_to_a_cpu_of_its_own(
    tmp_path: Path, plain_upstream: int
) -> None:
    available = sorted(os.sched_getaffinity(0))
    port = free_port()
    config = write_config(tmp_path, port, plain_upstream, cpu_affinity="auto")
    process = start_serving(config, port)
    try:
        assert get(port, "/open/x") == (200, "upstream saw /open/x")
        workers = worker_pids(process.pid)
        held = sorted(allowed_cpus(pid) for pid in workers)
        assert held == sorted(str(available[slot % len(available)]) for slot in range(2))
        # the supervisor is not held; the threads a worker started (SQLite's) are
        assert allowed_cpus(process.pid) == allowed_cpus(os.getpid())
        for pid in workers:
            threads = [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]
            assert len(threads) > 1
            assert {allowed_cpus(pid, t) for t in threads} == {allowed_cpus(pid)}

        # a worker restarted takes its slot's CPU again (the second slot's: a restart
        # that always took the first CPU would show)
        dead_cpu = str(available[1 % len(available)])
        dead = next(pid for pid in workers if allowed_cpus(pid) == dead_cpu)
        kill_worker_and_wait_for_its_replacement(process, dead)
        (replacement,) = set(worker_pids(process.pid)) - set(workers)
        # Seen as soon as it is forked: it holds itself to its CPU first thing, a moment
        # later (flaky once in CI, read as the supervisor's 0-1).
        deadline = time.monotonic() + 10
        while allowed_cpus(replacement) != dead_cpu and time.monotonic() < deadline:
            time.sleep(0.01)
        assert allowed_cpus(replacement) == dead_cpu
        assert get(port, "/open/y")[0] == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        stop_serving(process)


def test_cpu_affinity_naming_a_cpu_this_process_may_not_use_refuses_to_start(
    tmp_path: Path,
) -> None:
    missing = max(os.sched_getaffinity(0)) + 1
    config = write_config(tmp_path, free_port(), 1, cpu_affinity=f"[0, {missing}]")
    result = serve_refused(config)
    assert result.returncode == 2
    assert f"{config}: server.cpu_affinity: CPU {missing}: not available to this process" in (
        result.stderr
    )


def test_a_worker_that_cannot_be_held_to_its_cpu_says_so_and_exits(
    tmp_path: Path, plain_upstream: int
) -> None:
    """The CPU left the process's set after the start (a cpuset shrunk): the worker
    says which and exits; never a traceback, never a worker left unheld."""
    missing = max(os.sched_getaffinity(0)) + 1
    config = write_config(tmp_path, free_port(), plain_upstream)
    script = (
        "from pathlib import Path\n"
        "from gateway.config import load_config\n"
        "from gateway.extensions import default_extensions\n"
        "from gateway.supervisor import Supervisor\n"
        f"config = load_config(Path({str(config)!r}))\n"
        f"held = [frozenset({{{missing}}})]\n"
        "raise SystemExit(Supervisor(config, 1, default_extensions(), held).run())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert result.returncode == 1  # the supervisor gives up on workers that die at start
    assert f"cannot be held to CPU {missing}" in result.stderr
    assert "Traceback" not in result.stderr


def test_workers_do_not_outlive_a_killed_supervisor(tmp_path: Path, plain_upstream: int) -> None:
    port = free_port()
    config = write_config(tmp_path, port, plain_upstream)
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "-c", str(config), "--workers", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_up(port, process)
        wait_until_workers_listen(port, process.pid, 2)
        workers = worker_pids(process.pid)
        process.kill()  # no chance to drain its workers
        process.wait(timeout=10)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(Path(f"/proc/{w}").exists() for w in workers):
            time.sleep(0.1)
        alive = [w for w in workers if Path(f"/proc/{w}").exists()]
        for pid in alive:
            os.kill(pid, signal.SIGKILL)
        assert alive == []
    finally:
        if process.poll() is None:
            process.kill()


def test_a_worker_restarted_while_the_policy_is_broken_serves_what_its_siblings_serve(
    tmp_path: Path, plain_upstream: int
) -> None:
    # Tighten the policy with no SIGHUP (each worker's watcher reloads it), break the
    # file, kill a worker: its replacement must not start from the looser start-up set.
    port = free_port()
    config = write_config(tmp_path, port, plain_upstream)
    (tmp_path / "policy.yaml").write_text(POLICY_MORE_OPEN)  # /also/ open at start-up
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "-c", str(config), "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )

    def also_statuses() -> set[int]:
        return {get(port, "/also/x")[0] for _ in range(16)}

    try:
        wait_until_up(port, process)
        wait_until_workers_listen(port, process.pid, 2)
        assert also_statuses() == {200}
        (tmp_path / "policy.yaml").write_text(POLICY_OPEN)  # /also/ closed, no SIGHUP
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and 200 in also_statuses():
            time.sleep(0.1)
        closed = also_statuses()
        assert 200 not in closed
        time.sleep(1.0)  # the supervisor's poll has seen the valid edit too
        with (tmp_path / "policy.yaml").open("a") as policy:
            policy.write("rules: [ {name: broken\n")  # an edit half done, or a typo
        time.sleep(1.0)
        workers = worker_pids(process.pid)
        os.kill(workers[0], signal.SIGKILL)
        wait_until_workers_listen(port, process.pid, 2, timeout=30)
        assert workers[0] not in worker_pids(process.pid)
        assert also_statuses() == closed, "a restarted worker serves the start-up policy"
    finally:
        process.kill()
        process.wait()


WORKER_THAT_STARTS_SLOWLY = """
import asyncio, sys
from pathlib import Path
from gateway.config import load_config
from gateway.supervisor import defer_reloads, install_event_loop_policy, run_worker

config_file, starting, go = (Path(a) for a in sys.argv[1:4])
reload_asked = defer_reloads()

def slow_start(server):
    async def wait_for_go():
        starting.touch()
        while not go.exists():
            await asyncio.sleep(0.02)
    server.hooks.startup.append(wait_for_go)

install_event_loop_policy()
asyncio.run(run_worker(load_config(config_file), [slow_start], reload_asked=reload_asked))
"""


# As a forked worker finds itself: the supervisor's SIGTERM handler (which only tells the
# supervisor's loop) came with the fork. `parent`: the supervisor's pid as the fork saw it.
WORKER_STOPPED_WHILE_STARTING = """
import asyncio, os, signal, sys
from pathlib import Path
from gateway.config import load_config
from gateway.supervisor import _worker_main

config_file, starting, parent = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
signal.signal(signal.SIGTERM, lambda signum, frame: None)

def never_done_starting(server):
    async def hold():
        starting.touch()
        await asyncio.sleep(60)
    server.hooks.startup.append(hold)

_worker_main(load_config(config_file), [never_done_starting], {}, parent or os.getppid(), None)
"""


def _start_stopped_worker(
    tmp_path: Path, upstream: int, parent: int
) -> tuple[subprocess.Popen[bytes], Path]:
    config = write_config(tmp_path, free_port(), upstream)
    (tmp_path / "policy.yaml").write_text(POLICY_OPEN)
    starting = tmp_path / "starting"
    argv = [sys.executable, "-c", WORKER_STOPPED_WHILE_STARTING, str(config), str(starting)]
    process = subprocess.Popen(
        [*argv, str(parent)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    return process, starting


def test_a_sigterm_sent_while_a_worker_starts_ends_it(tmp_path: Path, plain_upstream: int) -> None:
    """Until a worker serves, a stop (the supervisor's, or the parent-death signal) ends
    it: the handler it inherited would swallow it and leave it running alone."""
    process, starting = _start_stopped_worker(tmp_path, plain_upstream, 0)
    try:
        deadline = time.monotonic() + 20
        while not starting.exists() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.02)
        assert starting.exists(), drain_output(process)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == -signal.SIGTERM
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_worker_whose_supervisor_is_already_gone_stops_before_serving(
    tmp_path: Path, plain_upstream: int
) -> None:
    # The supervisor died between the fork and the death signal's request: the kernel
    # will never send it, so the worker stops itself.
    gone = 2**22 + 1  # above pid_max's default: no process, certainly not the parent
    process, starting = _start_stopped_worker(tmp_path, plain_upstream, gone)
    try:
        assert process.wait(timeout=20) == -signal.SIGTERM, drain_output(process)
        assert not starting.exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def same_size(text: str, size: int = 160) -> str:
    return text + "#" * (size - len(text)) + "\n"


def test_a_sighup_sent_while_a_worker_starts_is_obeyed_once_it_has_started(
    tmp_path: Path, plain_upstream: int
) -> None:
    """The watcher cannot see an edit that keeps the size and restores the mtime (some
    deploy tools do); SIGHUP is then the operator's remedy, and a worker that was
    still starting when it came must not drop it."""
    port = free_port()
    config = write_config(tmp_path, port, plain_upstream)
    policy = tmp_path / "policy.yaml"
    policy.write_text(same_size(POLICY_OPEN))
    starting, go = tmp_path / "starting", tmp_path / "go"
    process = subprocess.Popen(
        [sys.executable, "-c", WORKER_THAT_STARTS_SLOWLY, str(config), str(starting), str(go)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while not starting.exists() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.02)
        assert starting.exists(), drain_output(process)
        before = os.stat(policy)
        policy.write_text(same_size(POLICY_MORE_OPEN))
        os.utime(policy, ns=(before.st_atime_ns, before.st_mtime_ns))  # invisible to a stat
        process.send_signal(signal.SIGHUP)
        time.sleep(0.2)  # the signal is delivered before the worker may go on
        go.touch()
        wait_until_up(port, process)
        assert get(port, "/also/x")[0] == 200, "the SIGHUP sent while starting was lost"
        assert process.poll() is None
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=15)


@pytest.fixture
def one_cpu_cgroup(tmp_path: Path) -> Iterator[Path]:
    """A real cgroup allowed one CPU's time a second (v2 `cpu.max`, or v1's CFS quota
    and period), removed afterwards with anything still in it. Skipped where this
    process may not make one (not root, no cpu controller): the file-level cases are
    in tests/unit/gateway/test_cpu_quota.py."""
    unified = Path("/sys/fs/cgroup")
    name = f"authgate-test-{os.getpid()}"
    if (unified / "cgroup.controllers").exists():
        group, limits = unified / name, {"cpu.max": "100000 100000"}
    else:
        group = unified / "cpu" / name
        limits = {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "100000"}
    try:
        group.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot make a cgroup here: {exc}")
    try:
        try:
            for file, value in limits.items():
                (group / file).write_text(value)
        except OSError as exc:
            pytest.skip(f"cannot limit a cgroup's CPU here: {exc}")
        yield group
    finally:
        deadline = time.monotonic() + 10
        while True:  # empty once the processes in it are gone
            try:
                group.rmdir()
                break
            except OSError:
                if time.monotonic() > deadline:
                    for pid in (group / "cgroup.procs").read_text().split():
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(int(pid), signal.SIGKILL)
                    deadline = time.monotonic() + 10
                time.sleep(0.1)


def test_workers_auto_keep_within_the_cgroups_cpu_quota(
    tmp_path: Path, plain_upstream: int, one_cpu_cgroup: Path
) -> None:
    """In a container limited to one CPU's time on a bigger machine, `workers: auto`
    starts one worker, not one per CPU the kernel lets it run on."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU: the quota would not change the count")
    port = free_port()
    config = write_config(tmp_path, port, plain_upstream)
    # The shell joins the cgroup, then becomes the gateway (so it starts inside it).
    joined = f'echo $$ > "{one_cpu_cgroup}/cgroup.procs" && exec "$@"'
    process = subprocess.Popen(
        ["sh", "-c", joined, "sh", sys.executable, "-m", "gateway", "serve", "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    try:
        wait_until_up(port, process)
        wait_until_workers_listen(port, process.pid, 1)
        assert get(port, "/open/x") == (200, "upstream saw /open/x")
        assert len(worker_pids(process.pid)) == 1
        assert str(process.pid) in (one_cpu_cgroup / "cgroup.procs").read_text().split()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
        assert "with 1 worker(s)" in drain_output(process)
    finally:
        stop_serving(process)
