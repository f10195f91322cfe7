"""`authgate serve`: N worker processes sharing the port (SO_REUSEPORT), supervised.

The supervisor runs no event loop and holds no state: it forks workers, restarts
one that dies, forwards SIGHUP (reload) and turns SIGTERM/SIGINT into an orderly
drain of every worker, bounded by `server.shutdown_timeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.process import BaseProcess
from types import FrameType

from gateway.config.model import Config
from gateway.cpu_affinity import available_cpus, describe, pin
from gateway.cpu_quota import quota_cpus, workers_for
from gateway.logs import flush_logging
from gateway.metrics import MULTIPROC_ENV, enable_multiprocess, mark_worker_dead
from gateway.policy_sets import compile_tenant_policies, policy_files
from gateway.server import Extension, GatewayServer, listen_socket
from gateway.watch import signatures
from policies import PolicyError, PolicySet

log = logging.getLogger("authgate.supervisor")

# A worker that dies this soon after starting, this many times in a row, means the
# problem is not transient (a port in use, a store that refuses us): stop trying.
_QUICK_DEATH_SECONDS = 2.0
_MAX_QUICK_DEATHS = 5


def tune_garbage_collector() -> None:
    """Everything built at start-up (config, compiled policies, templates, modules) lives
    as long as the worker: move it out of the collector's sight, and collect young
    objects less often. Measured: about a tenth of a proxied request's CPU went to
    the collector walking those long-lived objects again and again."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(7000, 20, 20)


def install_event_loop_policy() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def defer_reloads() -> Callable[[], bool]:
    """Until the worker can reload, remember a SIGHUP instead of dying of it (its
    default action) or dropping it: returns whether one came."""
    asked: list[bool] = []
    signal.signal(signal.SIGHUP, lambda signum, frame: asked.append(True))
    return lambda: bool(asked)


async def run_worker(
    config: Config,
    extensions: Sequence[Extension],
    ready: Callable[[GatewayServer], None] | None = None,
    last_good_policies: Mapping[str, PolicySet] | None = None,
    reload_asked: Callable[[], bool] | None = None,
) -> None:
    """Serve until SIGTERM (or SIGINT when standalone); SIGHUP reloads the policies
    (and one that came while starting, as `reload_asked` tells, is obeyed once started)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    server = GatewayServer(config, extensions, last_good_policies)
    sockets = [listen_socket(addr) for addr in config.server.listen]
    await server.start(sockets)
    tune_garbage_collector()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, server.reload)
    if reload_asked is not None and reload_asked():
        server.reload()
    if ready is not None:
        ready(server)
    try:
        await stop.wait()
    finally:
        await server.stop()


def follow_parent(parent: int) -> None:
    """A worker must not outlive its supervisor (killed with SIGKILL, it cannot drain
    its workers): ask the kernel for SIGTERM when the parent dies (Linux), and if the
    parent is already gone, stop now."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the supervisor's own SIGTERM path still drains workers
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


_PR_SET_PDEATHSIG = 1


def _worker_main(
    config: Config,
    extensions: Sequence[Extension],
    last_good: Mapping[str, PolicySet],
    parent: int,
    cpus: frozenset[int] | None,
) -> None:
    if cpus is not None:  # first, so every thread the worker starts inherits it
        try:
            pin(cpus)
        except OSError as exc:  # the CPU left this process's set since the start
            log.error("worker %d cannot be held to CPU %s: %s", os.getpid(), describe(cpus), exc)
            flush_logging()
            sys.exit(3)
    # Ctrl-C reaches the whole process group; the supervisor decides what happens.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The supervisor's SIGTERM handler came with the fork: until the worker's own is set
    # (once it serves), it would swallow a stop, the parent's death signal included, and
    # leave the worker running without its supervisor. Until then, a stop ends it.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # A reload asked for while this worker is still starting must neither kill it nor be
    # lost: the operator's SIGHUP is the remedy for an edit the file watcher cannot see
    # (same size, mtime restored), and it may land in any worker's start-up.
    reload_asked = defer_reloads()
    follow_parent(parent)
    install_event_loop_policy()
    try:
        asyncio.run(
            run_worker(config, extensions, last_good_policies=last_good, reload_asked=reload_asked)
        )
    except OSError as exc:
        log.error("worker %d cannot serve: %s", os.getpid(), exc)
        sys.exit(3)
    finally:
        flush_logging()  # a forked child leaves with os._exit: no atexit runs


class Supervisor:
    def __init__(
        self,
        config: Config,
        workers: int,
        extensions: Sequence[Extension],
        cpus: Sequence[frozenset[int]] | None = None,  # per worker slot (cpu_affinity.py)
    ) -> None:
        self.config = config
        self.count = workers
        self.extensions = extensions
        self._cpus = cpus
        self._context = multiprocessing.get_context("fork")
        self._workers: list[tuple[BaseProcess, float]] = []
        self._stopping = False
        self._quick_deaths = 0
        self._reload_requested = False
        # What a restarted worker serves if the files on disk are bad by then; the
        # signatures are taken first, so an edit made while this compiles is one to follow.
        self._files = policy_files(config.tenants)
        self._read_as = signatures(self._files)
        self._last_good: Mapping[str, PolicySet] = compile_tenant_policies(
            config.tenants, geoip_configured=config.geoip.database is not None
        )

    def _spawn(self, slot: int) -> tuple[BaseProcess, float]:
        cpus = self._cpus[slot] if self._cpus is not None else None
        process = self._context.Process(
            target=_worker_main,
            args=(self.config, self.extensions, self._last_good, os.getpid(), cpus),
            daemon=False,
        )
        process.start()
        return process, time.monotonic()

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self._reload_requested = True
        for process, _ in self._workers:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signal.SIGHUP)

    def run(self) -> int:
        # One scrape must see every worker: each writes its metrics to files in a
        # directory of this serve's own, set before the first worker (and metric) exists.
        metrics_dir = tempfile.mkdtemp(prefix="authgate-metrics-")
        enable_multiprocess(metrics_dir)
        try:
            return self._run()
        finally:
            shutil.rmtree(metrics_dir, ignore_errors=True)
            os.environ.pop(MULTIPROC_ENV, None)

    def _run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        self._workers = [self._spawn(slot) for slot in range(self.count)]
        addresses = ", ".join(f"http://{a}" for a in self.config.server.listen)
        log.info("authgate serving on %s with %d workers", addresses, self.count)
        print(f"authgate: serving on {addresses} with {self.count} worker(s)", flush=True)
        status = 0
        # Workers reload edited policy files by themselves; the set a replacement worker
        # starts from must follow them, or a worker restarted while the files are broken
        # would serve the policy of start-up, perhaps looser than what its siblings serve.
        seen = self._read_as
        while not self._stopping:
            time.sleep(0.2)
            if signatures(self._files) != seen:
                time.sleep(0.25)  # a writer still writing: read what it ends with
                seen = signatures(self._files)
                self._reload_requested = True
            if self._reload_requested:
                self._reload_requested = False
                self._refresh_last_good()
            for index, (process, started) in enumerate(self._workers):
                if process.is_alive() or self._stopping:
                    continue
                lived = time.monotonic() - started
                if process.pid is not None:
                    mark_worker_dead(process.pid)
                log.warning("worker %s exited with %s; restarting", process.pid, process.exitcode)
                self._quick_deaths = self._quick_deaths + 1 if lived < _QUICK_DEATH_SECONDS else 0
                if self._quick_deaths >= _MAX_QUICK_DEATHS:
                    log.error("workers keep dying at start; giving up")
                    print("authgate: workers keep dying at start; giving up", file=sys.stderr)
                    self._stopping = True
                    status = 1
                    break
                self._workers[index] = self._spawn(index)  # on its slot's CPUs
        self._shutdown()
        return status

    def _refresh_last_good(self) -> None:
        try:
            self._last_good = compile_tenant_policies(
                self.config.tenants, geoip_configured=self.config.geoip.database is not None
            )
        except PolicyError:
            pass  # the workers log the problems; the last good set stays

    def _shutdown(self) -> None:
        for process, _ in self._workers:
            if process.pid is not None and process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.config.server.shutdown_timeout + 5
        for process, _ in self._workers:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("worker %s did not drain in time; killing it", process.pid)
                process.kill()
                process.join(1)


def default_worker_count() -> int:
    """One worker per CPU the process may run on, within its cgroups' CPU quota."""
    cpus = len(available_cpus()) or os.cpu_count() or 1
    try:
        quota = quota_cpus()
    except Exception:  # a default must never stop a start (cpu_quota reads the kernel's files)
        log.warning("could not read the cgroup's CPU quota; one worker per CPU", exc_info=True)
        quota = None
    workers = workers_for(cpus, quota)
    if quota is not None and workers < cpus:
        log.info("%d workers: the cgroup's CPU quota allows %.2f of %d CPUs", workers, quota, cpus)
    return workers
