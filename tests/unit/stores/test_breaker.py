"""The store circuit breaker's state machine, on a clock of our own (no sleeps), and
which failures of the Redis and PostgreSQL guards count toward opening it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest
import redis.exceptions
from redis.asyncio.cluster import RedisCluster

from gateway.errors import StoreFull, StoreUnavailable
from gateway.stores import breaker as breaker_module
from gateway.stores import postgres as postgres_store
from gateway.stores import redis as redis_store
from gateway.stores.base import AlreadyExists
from gateway.stores.breaker import Breaker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def new_breaker(clock: Clock) -> Breaker:
    return Breaker("test", clock=clock, threshold=3, window=10.0, cool_off=1.0, max_cool_off=5.0)


def fail(b: Breaker, times: int = 1) -> None:
    for _ in range(times):
        b.record(b.admit(), False)


def refused(b: Breaker) -> bool:
    try:
        b.record(b.admit(), None)
    except StoreUnavailable as exc:
        assert "circuit open" in str(exc)
        return True
    return False


def test_opens_after_three_outage_failures_in_a_row_and_refuses_at_once() -> None:
    clock = Clock()
    b = new_breaker(clock)
    fail(b, 2)
    assert not b.is_open and not refused(b)
    fail(b)
    assert b.is_open
    assert refused(b)
    clock.now += 0.99
    assert refused(b)


def test_any_answer_between_failures_keeps_it_closed() -> None:
    # A slow call or two under a burst, among answered ones: the store is alive.
    clock = Clock()
    b = new_breaker(clock)
    for _ in range(10):
        fail(b, 2)
        b.record(b.admit(), True)
    assert not b.is_open


def test_failures_far_apart_do_not_add_up() -> None:
    clock = Clock()
    b = new_breaker(clock)
    for _ in range(5):
        fail(b)
        clock.now += 10.5
    assert not b.is_open


def test_after_the_cool_off_one_probe_passes_and_its_answer_closes_it() -> None:
    clock = Clock()
    b = new_breaker(clock)
    fail(b, 3)
    clock.now += 1.0
    assert b.admit() is True  # the probe
    assert refused(b)  # everyone else still fails at once while it runs
    b.record(True, True)
    assert not b.is_open
    assert b.admit() is False
    # and the count starts afresh: two failures do not reopen it
    fail(b, 2)
    assert not b.is_open


def test_a_failed_probe_reopens_it_for_longer_up_to_the_cap() -> None:
    clock = Clock()
    b = new_breaker(clock)
    fail(b, 3)
    clock.now += 1.0
    for cool_off in (2.0, 4.0, 5.0, 5.0):
        probe = b.admit()
        assert probe is True
        b.record(probe, False)  # still out
        clock.now += cool_off - 0.01
        assert refused(b)
        clock.now += 0.01
    # once a probe is answered it is closed, and the next cool-off is the first again
    b.record(b.admit(), True)
    assert not b.is_open
    fail(b, 3)
    clock.now += 0.99
    assert refused(b)
    clock.now += 0.01
    assert b.admit() is True


def test_a_cancelled_probe_frees_the_probe_and_decides_nothing() -> None:
    clock = Clock()
    b = new_breaker(clock)
    fail(b, 3)
    clock.now += 1.0
    assert b.admit() is True
    b.record(True, None)
    assert b.is_open
    assert b.admit() is True  # the next call is the probe


def test_late_failures_of_calls_started_before_it_opened_change_nothing() -> None:
    clock = Clock()
    b = new_breaker(clock)
    early = [b.admit() for _ in range(10)]  # in flight when the store hangs
    for probe in early[:3]:
        b.record(probe, False)
    assert b.is_open
    clock.now += 0.9
    for probe in early[3:]:
        b.record(probe, False)  # not the probe: the cool-off is not pushed back
    clock.now += 0.1
    assert b.admit() is True


def test_an_answer_from_any_call_closes_it() -> None:
    clock = Clock()
    b = new_breaker(clock)
    early = [b.admit() for _ in range(4)]
    for probe in early[:3]:
        b.record(probe, False)
    assert b.is_open
    b.record(early[3], True)  # the server answered after all
    assert not b.is_open


def test_a_new_server_behind_the_client_is_forgiven_what_the_old_one_did() -> None:
    # A Sentinel switch: the breaker closes at once, counts anew, and starts again from
    # the first cool-off when the new master fails too.
    clock = Clock()
    b = new_breaker(clock)
    fail(b, 3)
    clock.now += 1.0
    fail(b)  # a failed probe: 2 s more
    assert refused(b)
    b.forget("a new master")
    assert not b.is_open and not refused(b)
    fail(b, 2)
    assert not b.is_open
    fail(b)
    clock.now += 1.0
    assert not refused(b)  # the probe: a cool-off of 1 s again, not 4
    b.forget("a new master")
    fail(b, 2)
    b.forget("a new master")
    fail(b)
    assert not b.is_open  # the count started over


def test_calls_still_out_to_the_old_server_do_not_reopen_it_after_a_switch() -> None:
    # The client moved to a new master and closed its connections to the old one: the
    # calls that were out fail, one after another. They were the old master's.
    clock = Clock()
    b = new_breaker(clock)
    before = b.epoch
    in_flight = [b.admit() for _ in range(3)]
    b.forget("a new master")
    for probe in in_flight:
        b.record(probe, False, before)
    assert not b.is_open
    fail(b, 2)
    b.record(b.admit(), False, b.epoch)
    assert b.is_open  # the new master's own failures count as ever


def test_the_numbers_are_the_modules_when_the_breaker_is_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(breaker_module, "THRESHOLD", 1)
    monkeypatch.setattr(breaker_module, "COOL_OFF", 3.0)
    clock = Clock()
    b = Breaker("test", clock=clock)
    fail(b)
    clock.now += 2.9
    assert refused(b)
    clock.now += 0.1
    assert b.admit() is True


# --- what the guards tell their breaker -------------------------------------------

Guard = Callable[[Callable[[], Awaitable[None]], Breaker], Awaitable[None]]


async def redis_guard(operation: Callable[[], Awaitable[None]], b: Breaker) -> None:
    await redis_store._guard(operation, b)


async def postgres_guard(operation: Callable[[], Awaitable[None]], b: Breaker) -> None:
    await postgres_store._guard(operation, None, b)


async def outcome(guard: Guard, error: BaseException) -> bool:
    """Whether three calls failing with `error` open a fresh breaker."""
    b = Breaker("test", clock=Clock(), threshold=3)

    async def failing() -> None:
        raise error

    for _ in range(3):
        with pytest.raises((StoreUnavailable, StoreFull, AlreadyExists, asyncio.CancelledError)):
            await guard(failing, b)
    return b.is_open


@pytest.mark.parametrize(
    ("error", "opens"),
    [
        (redis.exceptions.ConnectionError("refused"), True),
        (redis.exceptions.TimeoutError("slow"), True),
        (ConnectionResetError(), True),
        (TimeoutError(), True),
        (redis.exceptions.RedisClusterUnreachableError("no node"), True),
        (redis.exceptions.OutOfMemoryError("OOM"), False),
        (redis.exceptions.ResponseError("WRONGTYPE"), False),
        (redis.exceptions.ClusterDownError("CLUSTERDOWN"), False),
        (redis.exceptions.AuthenticationError("WRONGPASS"), False),
        (redis.exceptions.MaxConnectionsError("pool full"), False),
        (asyncio.CancelledError(), False),
    ],
)
async def test_which_redis_failures_count(error: BaseException, opens: bool) -> None:
    assert await outcome(redis_guard, error) is opens


@pytest.mark.parametrize(
    ("error", "opens"),
    [
        (TimeoutError(), True),
        (ConnectionRefusedError(), True),
        (asyncpg.exceptions.ConnectionDoesNotExistError("gone"), True),
        (postgres_store._NoServerAnswers("no server answers"), True),
        (asyncpg.exceptions.UniqueViolationError("dup"), False),
        (asyncpg.exceptions.ReadOnlySQLTransactionError("read-only"), False),
        (asyncpg.exceptions.InternalClientError("no server accepts writes"), False),
        (asyncpg.exceptions.UndefinedTableError("no table"), False),
        (asyncio.CancelledError(), False),
    ],
)
async def test_which_postgres_failures_count(error: BaseException, opens: bool) -> None:
    assert await outcome(postgres_guard, error) is opens


async def test_an_open_breaker_refuses_without_calling_the_driver() -> None:
    b = Breaker("test", clock=Clock(), threshold=1)
    b.record(b.admit(), False)
    called = []

    async def operation() -> None:
        called.append(1)

    for guard in (redis_guard, postgres_guard):
        with pytest.raises(StoreUnavailable, match="circuit open"):
            await guard(operation, b)
    assert called == []


async def test_the_redis_deadline_opens_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_store, "COMMAND_TIMEOUT", 0.01)
    b = Breaker("test", clock=Clock(), threshold=1)
    with pytest.raises(StoreUnavailable, match="no answer"):
        await redis_store._guard(lambda: asyncio.Event().wait(), b)
    assert b.is_open


def test_the_metrics_show_open_breakers_and_openings() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from gateway.metrics import _Circuits

    before = breaker_module.circuits().get("metrics-test", (0, 0))[1]
    b = Breaker("metrics-test", clock=Clock(), threshold=1)
    b.record(b.admit(), False)
    assert breaker_module.circuits()["metrics-test"] == (1, before + 1)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Circuits())
    text = generate_latest(registry).decode()
    assert 'authgate_store_circuit_open{store="metrics-test"} 1.0' in text
    assert f'authgate_store_circuit_openings_total{{store="metrics-test"}} {before + 1}.0' in text
    b.record(False, True)  # an answer closes it
    assert breaker_module.circuits()["metrics-test"] == (0, before + 1)


async def test_the_audit_writer_keeps_a_row_while_the_circuit_is_open(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A row refused at once by an open breaker is tried again, not lost: before the
    # breaker each attempt waited out the deadline, and rows queued meanwhile.
    from typing import cast

    from gateway import audit
    from gateway.stores import AuditLog

    monkeypatch.setattr(audit, "CIRCUIT_RETRY_SECONDS", 0.0)
    stored: list[Any] = []
    refusals = [breaker_module.CircuitOpen("postgresql: circuit open")] * 3

    class Store:
        async def append(self, row: Any) -> None:
            if refusals:
                raise refusals.pop()
            stored.append(row)

    trail = audit.AuditTrail(cast(AuditLog, Store()), retention=0)
    await trail.start()
    try:
        row = trail.record(audit.Event.LOGIN_SUCCESS, tenant="acme", user="u1")
        await asyncio.wait_for(trail.flush(), 5.0)
    finally:
        await trail.stop()
    assert stored == [row]
    assert trail.stats().failed == 0 and trail.stats().written == 1


class _Node:
    def __init__(self, name: str) -> None:
        self.name = name


class _Topology(RedisCluster):
    """Only the Cluster client's view of its masters, which `node_breaker` reads."""

    def __init__(self, masters: list[str]) -> None:  # no connection made
        self.masters = [_Node(name) for name in masters]

    def get_node_from_key(self, key: str, replica: bool = False) -> _Node:  # type: ignore[override]
        return self.masters[hash(key) % len(self.masters)]

    def get_primaries(self) -> list[_Node]:  # type: ignore[override]
        return self.masters


def test_each_cluster_master_has_its_breaker_and_a_failed_over_one_goes() -> None:
    cluster = _Topology(["a:1", "b:2"])
    keys = {cluster.get_node_from_key(k).name: k for k in (f"k{i}" for i in range(50))}
    on_a, on_b = (
        redis_store.node_breaker(cluster, keys["a:1"]),
        redis_store.node_breaker(cluster, keys["b:2"]),
    )
    assert on_a is not on_b
    assert redis_store.node_breaker(cluster, keys["a:1"]) is on_a
    assert on_a is not redis_store.breaker_of(cluster)
    for _ in range(3):
        on_a.record(on_a.admit(), False)
    assert on_a.is_open and not on_b.is_open
    # a:1 fails over to c:3: its open breaker is dropped, not left open for good (the
    # gauge), and were a:1 a master again it would start closed.
    cluster.masters[0] = _Node("c:3")
    on_c = redis_store.node_breaker(cluster, keys["a:1"])
    assert not on_c.is_open
    assert set(cluster._authgate_node_breakers) == {"b:2", "c:3"}  # type: ignore[attr-defined]
    assert redis_store.node_breaker(cluster, keys["b:2"]) is on_b


def test_a_probe_from_before_a_switch_does_not_free_the_new_probes_place() -> None:
    clock = Clock()
    b = new_breaker(clock)
    fail(b, 3)
    clock.now += 1.0
    old_epoch, old_probe = b.epoch, b.admit()
    assert old_probe
    b.forget("a new master")
    fail(b, 3)
    clock.now += 1.0
    assert b.admit()  # the new master's probe
    b.record(old_probe, False, old_epoch)  # the old master's probe ends
    assert refused(b)  # still one probe at a time


class _LostNode:
    """A Cluster node whose connection is lost before any reply (a stale pooled
    connection): redis-py's execute_pipeline then answers every command with the error
    instead of raising."""

    name = "a:1"

    async def execute_pipeline(self, commands: list[Any]) -> bool:
        for command in commands:
            command.result = redis.exceptions.ConnectionError("Connection closed by server.")
        return True


async def test_a_revocation_round_that_got_no_reply_is_an_outage_for_its_masters_breaker() -> None:
    cluster = _Topology(["a:1"])
    node = _LostNode()
    cluster.masters = [node]  # type: ignore[list-item]
    breaker = redis_store.node_breaker(cluster, "authgate:s:x")
    for _ in range(3):
        rounds = redis_store._ClusterRound({"authgate:s:x": (node, False)}, 1, "authgate:", set())
        await rounds.send(cluster)
        assert rounds.again and rounds.lost is not None  # to be sent again, and why
    assert breaker.is_open


async def test_the_configs_stores_section_sets_the_breakers_made_after_the_stores_open(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.config.loader import load_config
    from gateway.stores import open_stores

    for name in ("THRESHOLD", "WINDOW", "COOL_OFF", "MAX_COOL_OFF"):  # restored afterwards
        monkeypatch.setattr(breaker_module, name, getattr(breaker_module, name))
    (tmp_path / "policy.yaml").write_text("version: 1\ndefault: deny\nrules: []\n")
    config_file = tmp_path / "config.yaml"
    config_file.write_text(
        "storage: sqlite:///authgate.db\n"
        "stores:\n"
        "  breaker_threshold: 2\n"
        "  breaker_window: 5s\n"
        "  breaker_cool_off: 3s\n"
        "  breaker_max_cool_off: 7s\n"
        "tenants:\n"
        "  - id: t\n"
        "    domains: [t.test]\n"
        "    policies: [policy.yaml]\n"
        "    routes: [{host: t.test, upstream: 'http://127.0.0.1:9'}]\n"
    )
    config = load_config(config_file, environ={})
    stores = await open_stores(config)
    await stores.close()
    clock = Clock()
    b = Breaker("test", clock=clock)
    fail(b)
    clock.now += 5.1  # further than the window from the first: the count starts anew
    fail(b)
    assert not b.is_open
    fail(b)  # two in a row within the window: the threshold
    assert b.is_open and refused(b)
    clock.now += 2.9
    assert refused(b)
    clock.now += 0.2  # the cool-off, 3 s
    fail(b)  # the probe finds it still out: doubled, 6 s
    clock.now += 5.9
    assert refused(b)
    clock.now += 0.2
    fail(b)  # out again: 12 s, but 7 at most
    clock.now += 6.9
    assert refused(b)
    clock.now += 0.2
    assert not refused(b)  # the probe, after 7 s
