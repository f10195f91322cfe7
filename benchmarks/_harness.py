"""Shared machinery for the load benchmarks: processes, ports, wrk, and /proc accounting.

Everything here runs on 127.0.0.1 and cleans up after itself: each server is started
in its own session (process group) and `ManagedProcess.stop` signals the whole group,
so workers forked by a supervisor never outlive a benchmark, even one that failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

LOOPBACK = "127.0.0.1"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# wrk calls done() once at the end; printing one JSON line gives exact percentiles
# (in microseconds) instead of the rounded figures of the human-readable report.
WRK_DONE_SCRIPT = """\
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.2f,"max":%d,"p50":%d,"p90":%d,"p99":%d}}\\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
"""


class BenchmarkError(Exception):
    """The benchmark could not run (a tool is missing, a server did not come up)."""


# --------------------------------------------------------------------------- ports


def free_port() -> int:
    """An ephemeral port on loopback that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def reuseport_socket(port: int, backlog: int = 4096) -> socket.socket:
    """A listening loopback socket that several worker processes can share."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((LOOPBACK, port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def install_uvloop() -> None:
    """uvloop when installed: authgate runs on it, so every Python server here does too."""
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


# ----------------------------------------------------------------------- processes


def run_forked_workers(target: Callable[..., None], args: tuple[object, ...], count: int) -> None:
    """Fork `count` processes running `target(*args)` and wait; SIGTERM/SIGINT stop them.

    The workers ignore SIGINT themselves (Ctrl-C reaches the whole group) and are
    expected to exit on SIGTERM, which this parent forwards.
    """
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=target, args=args) for _ in range(count)]
    for process in processes:
        process.start()

    def stop(signum: int, frame: object) -> None:
        for process in processes:
            if process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for process in processes:
        process.join()


# A baseline proxy's worker: serve(port, upstream URL) until SIGTERM.
Serve = Callable[[int, str], Coroutine[object, object, None]]


def _proxy_worker(serve: Serve, port: int, upstream: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    install_uvloop()
    asyncio.run(serve(port, upstream))


def proxy_main(description: str, serve: Serve) -> None:
    """The command line of a baseline proxy: `--port P --upstream URL --workers N`, each
    worker running `serve(port, upstream)` on uvloop until SIGTERM."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="http://host:port")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    run_forked_workers(_proxy_worker, (serve, args.port, args.upstream), args.workers)


@dataclass
class ManagedProcess:
    """A server started in its own process group; `stop()` ends the group."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def worker_pids(self) -> list[int]:
        """The processes that serve: the children of a supervisor, else the process itself."""
        return children_of(self.pid) or [self.pid]

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM to the group (lets supervisors drain), SIGKILL to whatever is left."""
        _signal_group(self.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        # Workers may linger after their parent exits; the group still names them.
        _signal_group(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=grace)


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def start_process(
    name: str,
    argv: Sequence[str],
    log_path: Path,
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> ManagedProcess:
    """Start `argv` in a new session, stdout and stderr to `log_path`."""
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
    return ManagedProcess(name, popen, log_path)


def http_get(
    port: int,
    path: str = "/",
    host: str = "localhost",
    timeout: float = 2.0,
    headers: Sequence[str] = (),
) -> int:
    """Status code of one HTTP/1.1 GET on loopback (0 when there is no answer).

    `headers` are extra `Name: value` lines (a session cookie, for instance)."""
    extra = "".join(f"{line}\r\n" for line in headers)
    request = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n").encode()
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
            sock.sendall(request)
            head = sock.recv(64)
    except OSError:
        return 0
    match = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    return int(match.group(1)) if match else 0


def wait_until_serving(
    process: ManagedProcess,
    port: int,
    host: str = "localhost",
    timeout: float = 20.0,
    headers: Sequence[str] = (),
) -> None:
    """Block until the server answers 200 on `/`; raise with its log if it never does."""
    deadline = time.monotonic() + timeout
    last = 0
    while time.monotonic() < deadline:
        if not process.alive():
            raise BenchmarkError(
                f"{process.name} exited with {process.popen.returncode}:\n{process.log_tail()}"
            )
        last = http_get(port, "/", host, headers=headers)
        if last == 200:
            return
        time.sleep(0.1)
    raise BenchmarkError(
        f"{process.name} did not answer 200 on port {port} within {timeout:.0f}s "
        f"(last status {last}):\n{process.log_tail()}"
    )


# ---------------------------------------------------------------------------- /proc


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name (which may hold spaces)."""
    raw = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    return raw[raw.rindex(")") + 2 :].split()


def children_of(pid: int) -> list[int]:
    """Direct children of `pid`, found by scanning /proc (no kernel option needed)."""
    children = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            parent = int(_stat_fields(int(entry.name))[1])
        except (OSError, ValueError, IndexError):
            continue  # gone in the meantime
        if parent == pid:
            children.append(int(entry.name))
    return sorted(children)


def peak_rss_bytes(pid: int) -> int:
    """The process's high-water resident set (VmHWM), in bytes; 0 if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    except OSError:
        return 0
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else 0


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU time the processes have used so far."""
    total = 0
    for pid in pids:
        try:
            fields = _stat_fields(pid)
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return total / _CLOCK_TICKS


# ------------------------------------------------------------------------------ wrk


@dataclass(frozen=True)
class WrkSettings:
    threads: int = 2
    connections: int = 64
    duration: float = 10.0  # seconds
    host_header: str | None = None
    headers: tuple[str, ...] = ()  # further `Name: value` request headers (a cookie)


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    requests_per_second: float
    latency_p50_ms: float
    latency_p90_ms: float
    latency_p99_ms: float
    latency_mean_ms: float
    latency_max_ms: float
    socket_errors: int  # connect + read + write + timeout
    non_2xx_3xx: int
    cpu_seconds: float | None = None  # what wrk itself spent (user + system), when known


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def parse_duration_ms(text: str) -> float:
    """A wrk duration (`812.00us`, `1.23ms`, `2.01s`, `1.00m`) in milliseconds."""
    match = re.fullmatch(r"\s*([0-9.]+)(us|ms|s|m|h)\s*", text)
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def _parse_done_json(line: str) -> WrkResult:
    data = json.loads(line.split(" ", 1)[1])
    errors = data["errors"]
    latency = data["latency_us"]
    duration_s = data["duration_us"] / 1e6
    return WrkResult(
        requests=data["requests"],
        duration_s=duration_s,
        requests_per_second=data["requests"] / duration_s if duration_s else 0.0,
        latency_p50_ms=latency["p50"] / 1000,
        latency_p90_ms=latency["p90"] / 1000,
        latency_p99_ms=latency["p99"] / 1000,
        latency_mean_ms=latency["mean"] / 1000,
        latency_max_ms=latency["max"] / 1000,
        socket_errors=errors["connect"] + errors["read"] + errors["write"] + errors["timeout"],
        non_2xx_3xx=errors["status"],
    )


def _parse_text_report(text: str) -> WrkResult:
    """The human-readable report of `wrk --latency`."""

    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, text, re.MULTILINE)
        if match is None:
            raise ValueError(f"wrk output lacks {pattern!r}:\n{text}")
        return match

    totals = find(r"^\s*(\d+) requests in ([0-9.]+\w+),")
    percentiles = {
        p: parse_duration_ms(find(rf"^\s*{p}%\s+(\S+)").group(1)) for p in ("50", "90", "99")
    }
    latency = find(r"^\s*Latency\s+(\S+)\s+\S+\s+(\S+)")
    socket_errors = 0
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    if errors:
        socket_errors = sum(int(n) for n in errors.groups())
    status = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return WrkResult(
        requests=int(totals.group(1)),
        duration_s=parse_duration_ms(totals.group(2)) / 1000,
        requests_per_second=float(find(r"^Requests/sec:\s+([0-9.]+)").group(1)),
        latency_p50_ms=percentiles["50"],
        latency_p90_ms=percentiles["90"],
        latency_p99_ms=percentiles["99"],
        latency_mean_ms=parse_duration_ms(latency.group(1)),
        latency_max_ms=parse_duration_ms(latency.group(2)),
        socket_errors=socket_errors,
        non_2xx_3xx=int(status.group(1)) if status else 0,
    )


def parse_wrk_output(text: str) -> WrkResult:
    """wrk's result: the done() JSON line when present (exact), else the text report."""
    for line in text.splitlines():
        if line.startswith("WRK_JSON "):
            return _parse_done_json(line)
    return _parse_text_report(text)


def wrk_path() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise BenchmarkError("wrk is not installed (Debian: apt-get install wrk)")
    return path


def wrk_command(url: str, settings: WrkSettings, script: Path | None) -> list[str]:
    argv = [
        wrk_path(),
        f"-t{settings.threads}",
        f"-c{settings.connections}",
        f"-d{max(1, round(settings.duration))}s",
        "--latency",
        "--timeout",
        "5s",
    ]
    if settings.host_header:
        argv += ["-H", f"Host: {settings.host_header}"]
    for header in settings.headers:
        argv += ["-H", header]
    if script is not None:
        argv += ["-s", str(script)]
    argv.append(url)
    return argv


def run_wrk(url: str, settings: WrkSettings, script: Path | None = None) -> WrkResult:
    """Run wrk once against `url` and parse what it measured, with the CPU wrk itself
    spent (its own resource usage, from wait4: never another child's, which
    RUSAGE_CHILDREN would count if one were reaped meanwhile)."""
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(
            wrk_command(url, settings, script), stdout=subprocess.PIPE, stderr=errors
        )
        timer = threading.Timer(settings.duration + 60, process.kill)
        timer.start()
        try:
            assert process.stdout is not None
            with process.stdout:
                output = process.stdout.read()  # until wrk ends (or is killed)
        except BaseException:
            process.kill()
            raise
        finally:
            timer.cancel()
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            errors.seek(0)
            told = errors.read().decode("utf-8", "replace").strip()
            raise BenchmarkError(f"wrk failed ({process.returncode}): {told}")
    result = parse_wrk_output(output.decode("utf-8", "replace"))
    return replace(result, cpu_seconds=usage.ru_utime + usage.ru_stime)


def write_done_script(folder: Path) -> Path:
    path = folder / "done.lua"
    path.write_text(WRK_DONE_SCRIPT, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------- nginx


def nginx_path() -> str:
    path = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if path is None:
        raise BenchmarkError("nginx is not installed (Debian: apt-get install nginx-light)")
    return path


def nginx_config(prefix: Path, workers: int, http_body: str) -> str:
    """A self-contained nginx.conf: every path under `prefix`, no access log, foreground."""
    temp = prefix / "temp"
    user = "user root;\n" if os.geteuid() == 0 else ""  # else workers drop to nobody
    return (
        f"{user}worker_processes {workers};\n"
        f"pid {prefix}/nginx.pid;\n"
        f"error_log {prefix}/error.log warn;\n"
        "events { worker_connections 4096; multi_accept on; }\n"
        "http {\n"
        "    access_log off;\n"
        f"    client_body_temp_path {temp}/client;\n"
        f"    proxy_temp_path {temp}/proxy;\n"
        f"    fastcgi_temp_path {temp}/fastcgi;\n"
        f"    uwsgi_temp_path {temp}/uwsgi;\n"
        f"    scgi_temp_path {temp}/scgi;\n"
        # aiohttp never closes a busy keep-alive connection; nginx would after 1000.
        "    keepalive_requests 1000000;\n"
        f"{http_body}"
        "}\n"
    )


def start_nginx(name: str, prefix: Path, workers: int, http_body: str) -> ManagedProcess:
    prefix.mkdir(parents=True, exist_ok=True)
    (prefix / "temp").mkdir(exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_config(prefix, workers, http_body), encoding="utf-8")
    return start_process(
        name,
        [nginx_path(), "-c", str(conf), "-p", str(prefix), "-g", "daemon off;"],
        prefix / "stdout.log",
    )


# ------------------------------------------------------------------------ summaries


def median(values: Iterable[float]) -> float:
    items = list(values)
    return statistics.median(items) if items else 0.0
