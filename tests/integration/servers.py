"""Private redis-server / PostgreSQL processes on spare ports, for tests that stop,
kill and restart their backends (the shared servers of tests/conftest.py must
never be touched that way).

Each helper starts real server binaries (redis-server 7, PostgreSQL 15 from Debian)
and waits until they answer; `stop()` ends exactly the processes it started.
When a binary is missing the test skips with the reason (fails under CI=true).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import service_unavailable

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
PG_BIN = Path(os.environ.get("AUTHGATE_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
# Every Redis server's directory (data, configs) lives under one per test run, removed
# when the run ends: fixtures stop their servers but would leave hundreds of these.
_SCRATCH = Path(tempfile.mkdtemp(prefix="authgate-test-redis-"))
atexit.register(shutil.rmtree, _SCRATCH, ignore_errors=True)
START_TIMEOUT = 15.0
# Any server may become a master; a full sync (a replica's first, a returning old
# master's) then starts at once, not after the default 5 s wait for more replicas.
_QUICK_SYNC = ("--repl-diskless-sync-delay", "0")


def spare_port(*, bus: bool = False) -> int:
    """A port nobody listens on (and, for a Cluster node, its bus port +10000 too)."""
    for _ in range(200):
        port = random.randint(20000, 40000)
        if _free(port) and (not bus or _free(port + 10000)):
            return port
    raise RuntimeError("no spare port found")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _wait(predicate: object, what: str, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not come up within {timeout} s")


def require_redis() -> tuple[str, str]:
    if REDIS_SERVER is None or REDIS_CLI is None:
        service_unavailable("redis-server", "redis-server/redis-cli not installed")
    assert REDIS_SERVER is not None and REDIS_CLI is not None
    return REDIS_SERVER, REDIS_CLI


def redis_cli(port: int, *args: str) -> str:
    _, cli = require_redis()
    done = subprocess.run(
        [cli, "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout


def replica_has(port: int, key: str) -> bool:
    """Whether the Cluster replica on `port` holds `key` (read there: READONLY)."""
    _, cli = require_redis()
    done = subprocess.run(
        [cli, "-h", "127.0.0.1", "-p", str(port)],
        input=f"READONLY\nEXISTS {key}\n",
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return done.stdout.split()[-1:] == ["1"]


# --- redis-server ----------------------------------------------------------------


@dataclass
class RedisServer:
    """One redis-server process; `restart()` keeps its port and data directory."""

    directory: Path
    port: int
    options: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary, _ = require_redis()
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--dir", str(self.directory), "--daemonize", "no", "--loglevel", "warning"]
        self.process = subprocess.Popen(
            [*args, *self.options],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        _wait(lambda: _ping(self.port), f"redis-server on {self.port}")
        return self

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM (Redis flushes its append-only file) or SIGKILL; waits for the exit."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def restart(self) -> None:
        self.stop()
        self.start()


def _ping(port: int) -> bool:
    if not _answers(port):
        return False
    try:
        return "PONG" in redis_cli(port, "ping")
    except subprocess.SubprocessError:
        return False


def start_redis(
    base: Path | None = None, *, appendonly: bool = False, options: Sequence[str] = ()
) -> RedisServer:
    directory = Path(tempfile.mkdtemp(prefix="authgate-redis-", dir=base or _SCRATCH))
    extra = ("--appendonly", "yes", "--appendfsync", "always") if appendonly else ()
    return RedisServer(directory, spare_port(), (*extra, *options)).start()


@dataclass
class RedisCluster:
    """A Redis Cluster: `masters` masters, `replicas` replicas each (none by default:
    enough to spread keys over three slot ranges). Which node is a master later, after
    a failover, is what the nodes say (`owner`, `masters`), not the order of `nodes`."""

    nodes: list[RedisServer]
    node_timeout_ms: int = 2000

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def node(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def running(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.process is not None and n.process.poll() is None]

    def masters(self) -> list[RedisServer]:
        """The running nodes that say they are masters."""
        return [n for n in self.running() if _role(n.port) == "master"]

    def owner(self, slot: int) -> RedisServer:
        """The master every running node names for `slot`, and which says it is one
        (RuntimeError while they do not agree, during a failover)."""
        named = {_slot_owner(n.port, slot) for n in self.running()}
        if len(named) != 1 or None in named:
            raise RuntimeError(f"the nodes do not agree on who serves slot {slot}: {named}")
        port = named.pop()
        assert port is not None
        if _role(port) != "master":
            raise RuntimeError(f"{port} serves slot {slot} but is not a master yet")
        return self.node(port)

    def slots(self, node: RedisServer) -> list[tuple[int, int]]:
        """The slot ranges `node` serves, as it says itself."""
        return _slot_map(node.port).get(node.port, [])

    def replica_of(self, master: RedisServer) -> RedisServer:
        """A running replica of `master` (as the replica says)."""
        for node in self.running():
            info = _replication(node.port)
            if info.get("master_port") == str(master.port) and info.get("role") == "slave":
                return node
        raise RuntimeError(f"{master.port} has no replica")

    def wait_for_new_owner(self, slot: int, old_port: int, timeout: float) -> RedisServer:
        """Wait until every running node names another master than `old_port` for
        `slot`, that node says it is a master, and the cluster is `ok` on every running
        node (a failover is over); returns it."""

        def promoted() -> bool:
            try:
                owner = self.owner(slot)
            except RuntimeError:
                return False
            return owner.port != old_port and _cluster_ok(self.running())

        _wait(promoted, f"a failover of slot {slot} away from {old_port}", timeout)
        return self.owner(slot)

    def join_master(self) -> RedisServer:
        """A new master with no slots, met by every node (what `redis-cli --cluster
        add-node` does): a node that clients which mapped the cluster before do not know."""
        node = _start_cluster_node(self.node_timeout_ms)
        self.nodes.append(node)
        redis_cli(self.nodes[0].port, "cluster", "meet", "127.0.0.1", str(node.port))
        everyone = len(self.nodes)
        _wait(
            lambda: all(
                f"cluster_known_nodes:{everyone}" in redis_cli(n.port, "cluster", "info")
                for n in self.nodes
            ),
            f"every node to know the new node {node.port}",
        )
        _wait(lambda: _cluster_ok(self.nodes), f"the new node {node.port} to see the slots served")
        return node

    def stop(self) -> None:
        for node in self.nodes:
            node.stop(kill=True)
            shutil.rmtree(node.directory, ignore_errors=True)


def start_cluster(
    masters: int = 3, *, replicas: int = 0, node_timeout_ms: int = 2000
) -> RedisCluster:
    """A cluster of `masters` masters with `replicas` replicas each (linked and in sync
    before this returns). A master is flagged failing after `node_timeout_ms`; then its
    replica is elected within a second or so."""
    nodes: list[RedisServer] = []
    cluster = RedisCluster(nodes, node_timeout_ms)
    try:
        for _ in range(masters * (1 + replicas)):
            nodes.append(_start_cluster_node(node_timeout_ms))
        addresses = [f"127.0.0.1:{n.port}" for n in nodes]
        redis_cli(
            nodes[0].port,
            "--cluster",
            "create",
            *addresses,
            "--cluster-replicas",
            str(replicas),
            "--cluster-yes",
        )
        _wait(lambda: _cluster_ok(nodes), "Redis Cluster")
        for node in nodes:
            info = _replication(node.port)
            if info.get("role") == "slave":
                wait_until_replica(node, int(info["master_port"]), START_TIMEOUT)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _start_cluster_node(node_timeout_ms: int) -> RedisServer:
    directory = Path(tempfile.mkdtemp(prefix="authgate-cluster-", dir=_SCRATCH))
    options = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
    options += ["--cluster-node-timeout", str(node_timeout_ms), *_QUICK_SYNC]
    return RedisServer(directory, spare_port(bus=True), tuple(options)).start()


def _cluster_ok(nodes: Sequence[RedisServer]) -> bool:
    try:
        return all("cluster_state:ok" in redis_cli(n.port, "cluster", "info") for n in nodes)
    except subprocess.SubprocessError:
        return False


def _slot_owner(port: int, slot: int) -> int | None:
    """The port of the node that `port` says serves `slot` (None: none, or no answer)."""
    for owner, ranges in _slot_map(port).items():
        if any(first <= slot <= last for first, last in ranges):
            return owner
    return None


def _slot_map(port: int) -> dict[int, list[tuple[int, int]]]:
    """The slot ranges each node serves (its port: [(first, last)...]) as `port` sees
    them, failed nodes left out. From CLUSTER NODES:
    `<id> <ip:port@bus> <flags> <master> <ping> <pong> <epoch> <link> <slots>...`."""
    try:
        lines = redis_cli(port, "cluster", "nodes").splitlines()
    except subprocess.SubprocessError:
        return {}
    owners: dict[int, list[tuple[int, int]]] = {}
    for line in lines:
        fields = line.split()
        if len(fields) < 8 or "fail" in fields[2].split(","):
            continue
        ranges = owners.setdefault(int(fields[1].split("@")[0].rpartition(":")[2]), [])
        for slots in fields[8:]:
            first, _, last = slots.partition("-")
            if first.isdigit():  # not a slot being migrated: [slot->-id]
                ranges.append((int(first), int(last or first)))
    return owners


@dataclass
class RedisSentinel:
    """One master and one Sentinel watching it under `service`."""

    master: RedisServer
    port: int
    directory: Path
    service: str = "authgate"
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/{self.service}/0"

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=5)
        self.master.stop(kill=True)
        shutil.rmtree(self.directory, ignore_errors=True)
        shutil.rmtree(self.master.directory, ignore_errors=True)


def start_sentinel(service: str = "authgate") -> RedisSentinel:
    binary, _ = require_redis()
    master = start_redis()
    directory = Path(tempfile.mkdtemp(prefix="authgate-sentinel-", dir=_SCRATCH))
    sentinel = RedisSentinel(master, spare_port(), directory, service)
    conf = directory / "sentinel.conf"  # Sentinel rewrites its config: it must be writable
    conf.write_text(
        f"port {sentinel.port}\n"
        "bind 127.0.0.1\n"
        f"dir {directory}\n"
        f"sentinel monitor {service} 127.0.0.1 {master.port} 1\n"
        f"sentinel down-after-milliseconds {service} 5000\n"
    )
    sentinel.process = subprocess.Popen(
        [binary, str(conf), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait(
            lambda: (
                _answers(sentinel.port)
                and str(master.port)
                in redis_cli(sentinel.port, "sentinel", "get-master-addr-by-name", service)
            ),
            "Redis Sentinel",
        )
    except BaseException:
        sentinel.stop()
        raise
    return sentinel


@dataclass
class SentinelGroup:
    """A master, its replicas and several Sentinels (quorum: a majority): enough for a
    real failover. `servers[0]` is started as the master; which server is the master
    later is what the Sentinels say (`master_port`)."""

    servers: list[RedisServer]
    sentinel_ports: list[int]
    directory: Path
    service: str = "authgate"
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list, repr=False)

    @property
    def url(self) -> str:
        nodes = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{nodes}/{self.service}/0"

    def server(self, port: int) -> RedisServer:
        return next(s for s in self.servers if s.port == port)

    def master_ports(self) -> list[int | None]:
        """The master each Sentinel names, None where it does not answer or its master
        is flagged anything but `master` (down, a failover in progress).

        From `SENTINEL MASTER`, as clients see it (redis-py asks `SENTINEL MASTERS`):
        its address changes at `+switch-master`, when that Sentinel is done with a
        failover, whereas `GET-MASTER-ADDR-BY-NAME` names the promoted replica while
        the failover is still reconfiguring the other replicas."""
        ports: list[int | None] = []
        for port in self.sentinel_ports:
            try:
                reply = redis_cli(port, "sentinel", "master", self.service).splitlines()
            except subprocess.SubprocessError:
                ports.append(None)
                continue
            state = dict(zip(reply[::2], reply[1::2], strict=False))
            clean = state.get("flags") == "master" and "port" in state
            ports.append(int(state["port"]) if clean else None)
        return ports

    def master_port(self) -> int:
        """The master every Sentinel names (RuntimeError while they do not agree)."""
        ports = self.master_ports()
        if None in ports or len(set(ports)) != 1:
            raise RuntimeError(f"the Sentinels do not agree on a master: {ports}")
        port = ports[0]
        assert port is not None
        return port

    def wait_for_new_master(self, old_port: int, timeout: float) -> RedisServer:
        """Wait until every Sentinel is done failing over to another master than
        `old_port`, and that server says it is one; returns it."""

        def promoted() -> bool:
            ports = self.master_ports()
            if None in ports or len(set(ports)) != 1 or ports[0] == old_port:
                return False
            return ports[0] is not None and _role(ports[0]) == "master"

        _wait(promoted, f"a failover away from {old_port}", timeout)
        return self.server(self.master_port())

    def wait_until_replica(self, server: RedisServer, master_port: int, timeout: float) -> None:
        """Wait until `server` replicates `master_port` with its link up."""
        wait_until_replica(server, master_port, timeout)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=5)
        self.processes.clear()
        for server in self.servers:
            server.stop(kill=True)
            shutil.rmtree(server.directory, ignore_errors=True)
        shutil.rmtree(self.directory, ignore_errors=True)


def _replication(port: int) -> dict[str, str]:
    try:
        reply = redis_cli(port, "info", "replication")
    except subprocess.SubprocessError:
        return {}
    pairs = (line.strip().partition(":") for line in reply.splitlines() if ":" in line)
    return {name: value for name, _, value in pairs}


def _role(port: int) -> str | None:
    return _replication(port).get("role")


def wait_until_replica(server: RedisServer, master_port: int, timeout: float) -> None:
    """Wait until `server` replicates `master_port` with its link up."""

    def replicating() -> bool:
        info = _replication(server.port)
        return (
            info.get("role") == "slave"
            and info.get("master_port") == str(master_port)
            and info.get("master_link_status") == "up"
        )

    _wait(replicating, f"redis-server {server.port} replicating {master_port}", timeout)


def start_sentinel_group(
    service: str = "authgate",
    *,
    replicas: int = 2,
    sentinels: int = 3,
    down_after_ms: int = 1000,
    failover_timeout_ms: int = 4000,
) -> SentinelGroup:
    """A master with `replicas` replicas (in sync before this returns) and `sentinels`
    Sentinels that all know each other and every replica.

    The Sentinels' timers are shortened (SENTINEL DEBUG, Redis 7): a master is
    subjectively down after `down_after_ms`, so a failover takes that plus about a
    second or two; a failed election is retried after 2 x `failover_timeout_ms`;
    and a restarted old master, which comes back as an (empty) master, is turned into
    a replica within a few seconds instead of the default 20 or so."""
    binary, _ = require_redis()
    directory = Path(tempfile.mkdtemp(prefix="authgate-sentinels-", dir=_SCRATCH))
    group = SentinelGroup([], [], directory, service)
    quick_sync = _QUICK_SYNC
    try:
        master = start_redis(options=quick_sync)
        group.servers.append(master)
        for _ in range(replicas):
            follow = ("--replicaof", "127.0.0.1", str(master.port))
            group.servers.append(start_redis(options=(*quick_sync, *follow)))
        for replica in group.servers[1:]:
            group.wait_until_replica(replica, master.port, START_TIMEOUT)
        quorum = sentinels // 2 + 1
        for index in range(sentinels):
            port = spare_port()
            home = directory / f"sentinel-{index}"
            home.mkdir()
            conf = home / "sentinel.conf"  # Sentinel rewrites its config: it must be writable
            conf.write_text(
                f"port {port}\n"
                "bind 127.0.0.1\n"
                f"dir {home}\n"
                f"sentinel monitor {service} 127.0.0.1 {master.port} {quorum}\n"
                f"sentinel down-after-milliseconds {service} {down_after_ms}\n"
                f"sentinel failover-timeout {service} {failover_timeout_ms}\n"
            )
            group.processes.append(
                subprocess.Popen(
                    [binary, str(conf), "--sentinel"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
            group.sentinel_ports.append(port)
            _wait(lambda p=port: _answers(p), f"Sentinel on {port}")
            redis_cli(
                port,
                "sentinel",
                "debug",
                "info-period",
                "500",
                "publish-period",
                "500",
                "ping-period",
                "500",
                "ask-period",
                "500",
            )
        _wait(lambda: _sentinels_ready(group, replicas, sentinels - 1), "the Sentinels")
    except BaseException:
        group.stop()
        raise
    return group


def _sentinels_ready(group: SentinelGroup, replicas: int, others: int) -> bool:
    for port in group.sentinel_ports:
        try:
            reply = redis_cli(port, "sentinel", "master", group.service).splitlines()
        except subprocess.SubprocessError:
            return False
        state = dict(zip(reply[::2], reply[1::2], strict=False))
        if (
            state.get("flags") != "master"
            or int(state.get("num-slaves", 0)) < replicas
            or int(state.get("num-other-sentinels", 0)) < others
        ):
            return False
    return True


# --- PostgreSQL ------------------------------------------------------------------


@dataclass
class PostgresServer:
    """A private PostgreSQL cluster (initdb + pg_ctl) owned by the `postgres` user
    when the tests run as root (PostgreSQL refuses to run as root)."""

    directory: Path
    port: int
    settings: tuple[str, ...] = ()  # extra `name=value` server settings (-c), this server only

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def command(self, program: str) -> list[str]:
        """The argv that runs one of PostgreSQL's programs as the server's user."""
        command = [str(PG_BIN / program)]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        return command

    def _run(self, *args: str) -> str:
        command = [*self.command(args[0]), *args[1:]]
        done = subprocess.run(command, capture_output=True, check=True, timeout=60, text=True)
        return done.stdout

    def sql(self, query: str) -> str:
        """One query through psql (unaligned, tuples only); its output, stripped."""
        return self._run(
            "psql",
            "-h",
            str(self.directory),
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-XAtqc",
            query,
        ).strip()

    def start(self) -> PostgresServer:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1"
        options += " -c max_connections=200"
        options += "".join(f" -c {setting}" for setting in self.settings)
        self._run(
            "pg_ctl",
            "-D",
            str(self.directory / "data"),
            "-o",
            options,
            "-w",
            "start",
            "-l",
            str(self.directory / "log"),
        )
        return self

    def stop(self, mode: str = "fast") -> None:
        try:
            self._run("pg_ctl", "-D", str(self.directory / "data"), "-m", mode, "-w", "stop")
        except subprocess.CalledProcessError:
            pass  # already stopped

    def restart(self) -> None:
        self.stop()
        self.start()

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)


def postgres_pids(server: PostgresServer) -> list[int]:
    """The postmaster and its children (backends, WAL sender...) of a private server."""
    master = int((server.directory / "data" / "postmaster.pid").read_text().split()[0])
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return [master, *map(int, children)]


def _postgres_directory(prefix: str) -> Path:
    """A temporary directory the server may write (owned by `postgres` under root)."""
    if not (PG_BIN / "initdb").exists():
        service_unavailable("PostgreSQL binaries", f"{PG_BIN}/initdb not found")
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(directory, ignore_errors=True)
            service_unavailable("PostgreSQL", "running as root without a 'postgres' user")
        os.chown(directory, user.pw_uid, user.pw_gid)
    return directory


def start_postgres(settings: Sequence[str] = ()) -> PostgresServer:
    """A fresh cluster (trust authentication; replication connections from 127.0.0.1
    are allowed too, as initdb writes pg_hba.conf)."""
    directory = _postgres_directory("authgate-pg-")
    server = PostgresServer(directory, spare_port(), tuple(settings))
    try:
        server._run(
            "initdb",
            "-D",
            str(directory / "data"),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        )
        return server.start()
    except BaseException:
        server.remove()
        raise


# A private server is killed, never a machine: the OS keeps what fsync would have
# flushed, so fsync=off loses nothing these tests look at and saves seconds.
_QUICK_PG = ("fsync=off", "shared_buffers=16MB", "wal_level=replica", "max_wal_senders=4")


@dataclass
class PostgresPair:
    """A primary and a hot standby streaming from it (`pg_basebackup -R`): the setup an
    operator fails over by promoting the standby. With `synchronous`, the primary
    answers a commit only once the standby has flushed it, so nothing acknowledged is
    lost by a failover; without, a commit may be (asynchronous replication)."""

    primary: PostgresServer
    standby: PostgresServer
    frozen: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The libpq multi-host URL a client follows a failover with."""
        return (
            f"postgresql://postgres@127.0.0.1:{self.primary.port},127.0.0.1:{self.standby.port}"
            "/postgres?target_session_attrs=read-write"
        )

    def streaming(self) -> bool:
        """The primary sees the standby streaming."""
        try:
            return self.primary.sql("SELECT state FROM pg_stat_replication") == "streaming"
        except subprocess.SubprocessError:
            return False

    def wait_streaming(self, timeout: float = START_TIMEOUT) -> None:
        _wait(self.streaming, f"the standby on {self.standby.port} streaming", timeout)

    def in_recovery(self, server: PostgresServer) -> bool:
        return server.sql("SELECT pg_is_in_recovery()") == "t"

    def kill_primary(self) -> None:
        """SIGKILL the primary's postmaster and its backends (a crashed server, as far
        as its clients can tell): their connections break at once."""
        pids = postgres_pids(self.primary)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _wait(lambda: not Path(f"/proc/{pids[0]}").exists(), "the killed primary to exit", 5)

    def freeze_primary(self) -> None:
        """SIGSTOP the primary's processes: a hung server (or a machine gone silent),
        whose connections neither answer nor break. `remove()` kills them."""
        self.frozen = postgres_pids(self.primary)
        for pid in self.frozen:
            os.kill(pid, signal.SIGSTOP)

    def promote(self) -> None:
        """`pg_ctl promote`, waiting until the standby accepts writes."""
        self.standby._run("pg_ctl", "-D", str(self.standby.directory / "data"), "-w", "promote")

    def remove(self) -> None:
        for pid in self.frozen:  # a stopped postmaster would not hear pg_ctl
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.standby.remove()
        self.primary.remove()


def start_postgres_pair(*, synchronous: bool = True) -> PostgresPair:
    """A primary and a standby in streaming replication, the standby streaming (and,
    `synchronous`, the primary waiting for it) before this returns. Takes a few
    seconds."""
    sync = ("synchronous_standby_names='*'",) if synchronous else ()
    primary = start_postgres((*_QUICK_PG, *sync))
    standby: PostgresServer | None = None
    try:
        directory = _postgres_directory("authgate-pg-standby-")
        standby = PostgresServer(directory, spare_port(), _QUICK_PG)
        standby._run(
            "pg_basebackup",
            "-h",
            "127.0.0.1",
            "-p",
            str(primary.port),
            "-U",
            "postgres",
            "-D",
            str(directory / "data"),
            "-R",  # standby.signal and primary_conninfo
            "-X",
            "stream",
            "-c",
            "fast",
            "--no-sync",
        )
        standby.start()
        pair = PostgresPair(primary, standby)
        pair.wait_streaming()
        if synchronous:
            _wait(
                lambda: primary.sql("SELECT sync_state FROM pg_stat_replication") == "sync",
                "the standby to be synchronous",
            )
        return pair
    except BaseException:
        if standby is not None:
            standby.remove()
        primary.remove()
        raise
