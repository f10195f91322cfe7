"""A revocation is answered as done only once a replica has it (`wait_replicas`).

Redis replicates asynchronously: a master that dies right after a logout, before its
replicas have the deletion, fails over to a replica that still holds the session. So
with Sentinel (by default) or `?wait_replicas=1`, the store sends WAIT on the connection
that carried the deletions and answers once a replica acknowledges them.

The replica is held with SIGSTOP: it stays connected and acknowledges nothing, so a
revocation that does not wait for it returns at once, and one that waits returns only
after SIGCONT, with the replica holding the deletion by then."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import signal
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest
from redis.crc import key_slot

from gateway.config.model import Config, SessionsConfig
from gateway.errors import StoreUnavailable
from gateway.metrics import _Unconfirmed
from gateway.stores import Stores, open_stores
from gateway.stores.base import SessionRecord
from gateway.stores.redis import REPLICA_WAIT_MS
from gateway.stores.sso_codes import SsoGrant
from tests.integration.relay import Relay
from tests.integration.servers import (
    RedisCluster,
    RedisServer,
    redis_cli,
    replica_has,
    start_cluster,
    start_redis,
    start_sentinel_group,
    wait_until_replica,
)
from tests.polling import until

pytestmark = [pytest.mark.redis, pytest.mark.slow]

PREFIX = "authgate:"
INDEXES = ("u:acme:u1", "t:acme")  # the indexes of record()'s sessions


def record(user: str = "u1") -> SessionRecord:
    now = time.time()
    return SessionRecord(secrets.token_hex(32), "acme", user, ("pwd",), now, now, now, now + 3600)


def key(session: SessionRecord) -> str:
    return f"{PREFIX}s:{session.id_hash}"


def slot_of(session: SessionRecord) -> int:
    return key_slot(key(session).encode())


def away_from_its_indexes(cluster: RedisCluster) -> SessionRecord:
    """A session whose key lives on another master than its user's indexes (which a
    revocation also writes), so that only the DEL and its WAIT go to its master."""
    indexes = {cluster.owner(key_slot(f"{PREFIX}{k}".encode())).port for k in INDEXES}
    return next(s for s in iter(record, None) if cluster.owner(slot_of(s)).port not in indexes)


@contextmanager
def held(server: RedisServer) -> Iterator[None]:
    """The server stopped (SIGSTOP) for the block: connected, answering nothing."""
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


def on(server: RedisServer, session: SessionRecord) -> bool:
    """Whether `server` holds the session (a Cluster replica answers after READONLY)."""
    with redis.Redis(port=server.port, single_connection_client=True) as client:
        if "cluster_enabled:1" in redis_cli(server.port, "info", "cluster"):
            client.execute_command("READONLY")
        try:
            return bool(client.exists(key(session)))
        except redis.exceptions.MovedError:
            return False  # a Cluster node that does not serve the session's slot


def in_slot(server: RedisServer, slot: int) -> list[str]:
    """The keys `server` holds in `slot`, whether it serves the slot yet or imports it."""
    return redis_cli(server.port, "cluster", "getkeysinslot", str(slot), "100").split()


async def wait_for(server: RedisServer, session: SessionRecord) -> None:
    """Until the replica has the session (creations are not waited for)."""
    for _ in range(100):
        if on(server, session):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the replica on {server.port} never got the session")


async def opened(tmp_path: Path, url: str) -> Stores:
    return await open_stores(
        Config(
            source=tmp_path / "config.yaml",
            tenants=(),
            storage=f"sqlite:///{tmp_path / 'a.db'}",
            sessions=SessionsConfig(store=url),
        )
    )


@pytest.fixture(scope="module")
def master_and_replica() -> Iterator[tuple[RedisServer, RedisServer]]:
    master = start_redis()
    replica = start_redis(options=("--replicaof", "127.0.0.1", str(master.port)))
    try:
        wait_until_replica(replica, master.port, 20)
        yield master, replica
    finally:
        replica.stop(kill=True)
        master.stop(kill=True)


@pytest.fixture(scope="module")
def sentinel_group() -> Iterator[tuple[str, RedisServer]]:
    group = start_sentinel_group(replicas=1, sentinels=1, down_after_ms=5000)
    try:
        yield group.url, group.servers[1]
    finally:
        group.stop()


@pytest.fixture(params=["standalone", "sentinel"])
async def deployment(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Stores, RedisServer]]:
    """Stores on a master with one replica: one server asking for `?wait_replicas=1`,
    and Sentinel with its default."""
    if request.param == "standalone":
        master, replica = request.getfixturevalue("master_and_replica")
        url = f"redis://127.0.0.1:{master.port}/0?wait_replicas=1"
    else:
        url, replica = request.getfixturevalue("sentinel_group")
    stores = await opened(tmp_path, url)
    yield stores, replica
    await stores.close()


async def answered_only_after_the_replica(revocation: asyncio.Future[Any]) -> None:
    """The revocation is still waiting while the replica is held, and done soon after."""
    await asyncio.sleep(0.2)
    assert not revocation.done(), "a revocation was answered before any replica had it"


async def test_logout_log_out_everywhere_and_rotation_wait_for_a_replica(
    deployment: tuple[Stores, RedisServer],
) -> None:
    stores, replica = deployment
    sessions = stores.sessions
    alone, first, second, old, new = (record(), record("u2"), record("u2"), record(), record())
    for session in (alone, first, second, old):
        await sessions.create(session)
        await wait_for(replica, session)

    with held(replica):
        logout = asyncio.ensure_future(sessions.revoke(alone.id_hash))
        await answered_only_after_the_replica(logout)
    assert await asyncio.wait_for(logout, 2) is True
    assert not on(replica, alone)

    with held(replica):
        everywhere = asyncio.ensure_future(sessions.revoke_user("acme", "u2"))
        await answered_only_after_the_replica(everywhere)
    assert await asyncio.wait_for(everywhere, 2) == 2
    assert not on(replica, first) and not on(replica, second)

    with held(replica):
        rotation = asyncio.ensure_future(sessions.rotate(old.id_hash, new))
        await answered_only_after_the_replica(rotation)
    assert await asyncio.wait_for(rotation, 2) is True
    assert not on(replica, old)


async def test_a_single_use_code_taken_waits_for_a_replica_and_one_taker_wins(
    deployment: tuple[Stores, RedisServer],
) -> None:
    """An SSO hand-off code (or a WebAuthn challenge) kept beside the sessions: taking
    it is answered only once a replica has the deletion, or a failover would hand the
    code out again; of many takers at once, one wins."""
    stores, replica = deployment
    codes = stores.sso_codes
    assert codes is not None, "with sessions in Redis, codes live there too"
    grant = SsoGrant("acme", "tag", "app.test", time.time() + 60)
    await codes.put("code-1", grant, 60)
    await codes.put("code-2", grant, 60)
    await until(  # the replica has both before the hold
        lambda: "code-2" in redis_cli(replica.port, "keys", "authgate:sso:*"),
        "the replica had the codes",
        3,
    )
    with held(replica):
        taking = asyncio.ensure_future(codes.take("code-1", time.time()))
        await answered_only_after_the_replica(taking)
    assert await asyncio.wait_for(taking, 2) == grant
    assert "code-1" not in redis_cli(replica.port, "keys", "authgate:sso:*")
    taken = await asyncio.gather(*(codes.take("code-2", time.time()) for _ in range(20)))
    assert [t for t in taken if t is not None] == [grant]


def unconfirmed_counted(store: str) -> float:
    """`authgate_revocations_unconfirmed_total{store=...}`, as a scrape shows it."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Unconfirmed())
    text = generate_latest(registry).decode()
    found = re.search(rf'authgate_revocations_unconfirmed_total\{{store="{store}"\}} (\S+)', text)
    return float(found.group(1)) if found else 0.0


async def test_a_replica_that_never_answers_delays_a_logout_by_the_bound_and_is_reported(
    master_and_replica: tuple[RedisServer, RedisServer],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    master, replica = master_and_replica
    stores = await opened(tmp_path, f"redis://127.0.0.1:{master.port}/0?wait_replicas=1")
    try:
        session = record()
        await stores.sessions.create(session)
        before = unconfirmed_counted("redis")
        with held(replica), caplog.at_level(logging.WARNING):
            started = time.monotonic()
            assert await stores.sessions.revoke(session.id_hash) is True
            took = time.monotonic() - started
        assert took >= REPLICA_WAIT_MS / 1000 * 0.9
        assert took < 3, "a revocation must not hang on a replica that does not answer"
        assert not on(master, session)
        assert "not confirmed on 1 replica(s)" in caplog.text
        assert unconfirmed_counted("redis") == before + 1
    finally:
        await stores.close()


async def test_a_logout_tried_again_after_its_answer_was_lost_still_waits(
    master_and_replica: tuple[RedisServer, RedisServer], tmp_path: Path
) -> None:
    """The connection drops just as the master answers the deletion: the logout fails
    (503) and the user tries again, on a new connection, where the DEL finds nothing
    left to delete and writes nothing. The retry must still not be answered before a
    replica has the first deletion. It holds because Redis (7.0 here) moves a client's
    WAIT offset to the master's after every command, writes or not; this test is what
    would notice a Redis that only counted a connection's own writes."""
    master, replica = master_and_replica
    relay = Relay(("127.0.0.1", master.port))
    port = relay.start()
    stores = await opened(tmp_path, f"redis://127.0.0.1:{port}/0?wait_replicas=1")
    try:
        session = record()
        await stores.sessions.create(session)
        await wait_for(replica, session)
        with held(replica):
            relay.cut_at_next_reply(starting_with=b":")  # DEL's integer, not HMGET's array
            with pytest.raises(StoreUnavailable):
                await stores.sessions.revoke(session.id_hash)
            again = asyncio.ensure_future(stores.sessions.revoke(session.id_hash))
            await answered_only_after_the_replica(again)
        await asyncio.wait_for(again, 2)
        assert not on(replica, session)
    finally:
        await stores.close()
        relay.stop()


async def test_a_server_that_refuses_wait_still_revokes_and_reports_it(
    master_and_replica: tuple[RedisServer, RedisServer],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A managed Redis may deny WAIT by ACL: the deletion is done, so the logout is."""
    master, _ = master_and_replica
    redis_cli(master.port, "acl", "setuser", "nowait", "on", "nopass", "~*", "&*", "+@all", "-wait")
    url = f"redis://nowait:any@127.0.0.1:{master.port}/0?wait_replicas=1"
    stores = await opened(tmp_path, url)
    try:
        session = record()
        await stores.sessions.create(session)
        with caplog.at_level(logging.WARNING):
            assert await stores.sessions.revoke(session.id_hash) is True
        assert not on(master, session)
        assert "no permissions to run the 'wait' command" in caplog.text
    finally:
        await stores.close()


async def test_a_master_demoted_while_waiting_has_not_revoked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The master is made a replica while a logout's WAIT blocks on it: WAIT answers an
    error (`UNBLOCKED … master -> replica`), and the deletion may be lost with that
    master, so the logout is not done (a 503), and a code taken so is not taken. Any
    WAIT error used to be taken for one the server will not run (an ACL) and answered
    as done; here the old code still failed, but only because redis-py sent the DEL
    again to the demoted server (ReadOnlyError), while a review saw a code taken twice
    in a like case. Now the WAIT's own error says so."""
    monkeypatch.setattr("gateway.stores.redis.REPLICA_WAIT_MS", 20_000)
    master = start_redis()
    replica = start_redis(options=("--replicaof", "127.0.0.1", str(master.port)))
    stores = None
    try:
        wait_until_replica(replica, master.port, 20)
        stores = await opened(tmp_path, f"redis://127.0.0.1:{master.port}/0?wait_replicas=1")
        session = record()
        await stores.sessions.create(session)
        await wait_for(replica, session)
        with held(replica):
            revoking = asyncio.ensure_future(stores.sessions.revoke(session.id_hash))
            await until(
                lambda: "blocked_clients:1" in redis_cli(master.port, "info", "clients"),
                "the WAIT blocked on the master",
                3,
            )
            redis_cli(master.port, "replicaof", "127.0.0.1", str(replica.port))
            with pytest.raises(StoreUnavailable, match="not confirmed"):
                await asyncio.wait_for(revoking, 5)
    finally:
        if stores is not None:
            await stores.close()
        replica.stop(kill=True)
        master.stop(kill=True)


async def test_cluster_waits_on_the_master_that_held_each_session(tmp_path: Path) -> None:
    """Sessions spread over three masters; WAIT must go to the connection of each master
    that deleted one (sent anywhere else it counts no write and returns at once)."""
    cluster = start_cluster(3, replicas=1)
    stores = await opened(tmp_path, cluster.url + "?wait_replicas=1")
    try:
        # Random ids spread over the masters by slot: 12 left one master with none in
        # about 2 % of runs (a CI failure), so more are made until each holds one.
        masters = cluster.masters()
        sessions: list[SessionRecord] = []
        holders: dict[int, list[SessionRecord]] = {m.port: [] for m in masters}
        while len(sessions) < 12 or not all(holders.values()):
            assert len(sessions) < 200, f"sessions not spread over every master: {holders}"
            session = record("u9")
            await stores.sessions.create(session)
            sessions.append(session)
            for m in masters:
                if on(m, session):
                    holders[m.port].append(session)
        for master in masters:
            replica = cluster.replica_of(master)
            for session in holders[master.port]:
                await wait_for(replica, session)
        # Hold the replica of one master only: the others answer at once, so only a WAIT
        # sent over that master's connection keeps the revocation waiting.
        target = masters[1]
        replica = cluster.replica_of(target)
        with held(replica):
            everywhere = asyncio.ensure_future(stores.sessions.revoke_user("acme", "u9"))
            await answered_only_after_the_replica(everywhere)
        assert await asyncio.wait_for(everywhere, 2) == len(sessions)
        assert not any(on(replica, s) for s in holders[target.port])
    finally:
        await stores.close()
        cluster.stop()


async def test_cluster_single_use_codes_wait_on_their_master_and_one_taker_wins(
    tmp_path: Path,
) -> None:
    """Codes on a Cluster with `?wait_replicas=1`: each take waits on the master of the
    code's slot, and of 20 takers of each code one wins."""
    cluster = start_cluster(3, replicas=1)
    stores = await opened(tmp_path, cluster.url + "?wait_replicas=1")
    try:
        codes = stores.sso_codes
        assert codes is not None
        grant = SsoGrant("acme", "tag", "app.test", time.time() + 60)
        names = [f"code-{i}" for i in range(6)]
        for name in names:
            await codes.put(name, grant, 60)
        held_name = names[0]
        master = cluster.owner(key_slot(f"{PREFIX}sso:{held_name}".encode()))
        replica = cluster.replica_of(master)
        await until(  # the replica has the code before the hold
            lambda: replica_has(replica.port, f"{PREFIX}sso:{held_name}"),
            "the replica had the code",
            3,
        )
        with held(replica):
            taking = asyncio.ensure_future(codes.take(held_name, time.time()))
            await answered_only_after_the_replica(taking)
        assert await asyncio.wait_for(taking, 2) == grant
        for name in names[1:]:
            taken = await asyncio.gather(*(codes.take(name, time.time()) for _ in range(20)))
            assert [t for t in taken if t is not None] == [grant], name
    finally:
        await stores.close()
        cluster.stop()


@asynccontextmanager
async def mapped_session(
    tmp_path: Path, user: str
) -> AsyncIterator[tuple[RedisCluster, Stores, SessionRecord]]:
    """Three masters with a replica each, stores on them waiting for one replica, and a
    session of `user` created through them: the client has the slots mapped now."""
    cluster = start_cluster(3, replicas=1)
    stores = await opened(tmp_path, cluster.url + "?wait_replicas=1")
    try:
        session = record(user)
        await stores.sessions.create(session)
        yield cluster, stores, session
    finally:
        await stores.close()
        cluster.stop()


def move_slot(
    cluster: RedisCluster,
    slot: int,
    source: RedisServer,
    target: RedisServer,
    *,
    finish: bool = True,
) -> None:
    """Reshard `slot`, with its keys, from `source` to `target` (what `redis-cli --cluster
    reshard` does), behind the back of a client that mapped the slots before. Not
    `finish`ed: the keys are moved but the slot still migrating (`source` answers ASK)."""
    source_id = redis_cli(source.port, "cluster", "myid").strip()
    target_id = redis_cli(target.port, "cluster", "myid").strip()
    redis_cli(target.port, "cluster", "setslot", str(slot), "importing", source_id)
    redis_cli(source.port, "cluster", "setslot", str(slot), "migrating", target_id)
    keys = redis_cli(source.port, "cluster", "getkeysinslot", str(slot), "100").split()
    if keys:
        migrate = ("migrate", "127.0.0.1", str(target.port), "", "0", "5000", "keys")
        redis_cli(source.port, *migrate, *keys)
    if not finish:
        return
    for node in cluster.masters():
        redis_cli(node.port, "cluster", "setslot", str(slot), "node", target_id)
    for _ in range(100):
        try:
            if cluster.owner(slot).port == target.port:
                return
        except RuntimeError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"slot {slot} never moved to {target.port}")


async def test_cluster_waits_on_the_master_a_moved_slot_sent_the_deletion_to(
    tmp_path: Path,
) -> None:
    """The client mapped the slots before a reshard: the DEL is redirected (MOVED) to
    the new owner, so a WAIT sent to the old owner counts nothing of it."""
    async with mapped_session(tmp_path, "u7") as (cluster, stores, session):
        slot = slot_of(session)
        source = cluster.owner(slot)
        target = next(m for m in cluster.masters() if m.port != source.port)
        move_slot(cluster, slot, source, target)
        replica = cluster.replica_of(target)
        await wait_for(replica, session)
        with held(replica):
            # "log out everywhere": the index lives elsewhere, so nothing before the
            # DEL itself meets the MOVED and corrects the client's map
            everywhere = asyncio.ensure_future(stores.sessions.revoke_user("acme", "u7"))
            await answered_only_after_the_replica(everywhere)
        assert await asyncio.wait_for(everywhere, 2) == 1
        assert not on(replica, session)


@pytest.mark.parametrize("finish", [True, False], ids=["moved", "asked"])
async def test_cluster_a_slot_moved_to_a_node_added_since_is_revoked_there(
    tmp_path: Path, finish: bool
) -> None:
    """The cluster grew after the client mapped it, and the session's slot moved (or is
    moving) to the new master: the DEL's MOVED (ASK) names a node the client has never
    met. The revocation follows it there (it was a 503 before), as redis-py's own
    redirections do."""
    async with mapped_session(tmp_path, "u8") as (cluster, stores, session):
        slot = slot_of(session)
        source = cluster.owner(slot)
        added = cluster.join_master()
        move_slot(cluster, slot, source, added, finish=finish)
        assert in_slot(added, slot) == [key(session)] and not in_slot(source, slot)
        # No replica behind the new master: its WAIT counts none, and is reported.
        assert await stores.sessions.revoke_user("acme", "u8") == 1
        assert not in_slot(added, slot)
        assert await stores.sessions.get(session.id_hash) is None


async def test_cluster_a_master_lost_while_waiting_is_no_revocation_done(
    tmp_path: Path,
) -> None:
    """The master deleted the session and died before its replica had it: the WAIT
    fails on a broken connection. Answering the logout as done would be a lie, the
    replica takes over with the session."""
    cluster = start_cluster(3, replicas=1, node_timeout_ms=1000)
    stores = await opened(tmp_path, cluster.url + "?wait_replicas=1")
    try:
        session = away_from_its_indexes(cluster)
        await stores.sessions.create(session)
        slot = slot_of(session)
        master = cluster.owner(slot)
        replica = cluster.replica_of(master)
        await wait_for(replica, session)
        with held(replica):
            # The link dropped too, or the replica would read the deletion from its
            # socket once it runs again
            redis_cli(master.port, "client", "kill", "type", "replica")
            logout = asyncio.ensure_future(stores.sessions.revoke(session.id_hash))
            await asyncio.sleep(0.2)
            master.stop(kill=True)  # before the replica has the deletion
            try:
                reported_done = bool(await asyncio.wait_for(logout, 5))
            except StoreUnavailable:
                reported_done = False
        redis_cli(replica.port, "cluster", "failover", "takeover")
        cluster.wait_for_new_owner(slot, master.port, 20)
        survived = on(replica, session)
        assert survived, "the test meant the replica to keep the session"
        assert not reported_done, "a logout was answered as done; the session lives on"
    finally:
        await stores.close()
        cluster.stop()


async def test_cluster_a_connection_lost_while_waiting_waits_again_on_that_master(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The master lives, but the connection that carried the DEL and its WAIT drops
    while the WAIT waits. The deletion is made; whether a replica has it is unknown. The
    DEL and the WAIT are sent again to that master, on a new connection, and the logout
    is answered once the replica has it. (Before, the logout failed with a 503 here; and
    when redis-py's cluster pipeline retried after a failed send, it routed the WAIT,
    having lost its one target, by the WAIT's own policy, to any master, where it
    counts no write and answers at once.)"""
    cluster = start_cluster(3, replicas=1)
    stores = await opened(tmp_path, cluster.url + "?wait_replicas=1")
    try:
        session = away_from_its_indexes(cluster)
        await stores.sessions.create(session)
        master = cluster.owner(slot_of(session))
        replica = cluster.replica_of(master)
        await wait_for(replica, session)
        with held(replica), caplog.at_level(logging.WARNING):
            logout = asyncio.ensure_future(stores.sessions.revoke(session.id_hash))
            await asyncio.sleep(0.15)  # the DEL is answered; its WAIT is waiting
            assert not logout.done()
            redis_cli(master.port, "client", "kill", "type", "normal")
            await asyncio.sleep(0.15)
            assert not logout.done(), "a revocation was answered before any replica had it"
        # Answered once the replica, running again, acknowledged it: done, no warning.
        assert await asyncio.wait_for(logout, 3) is True
        assert "not confirmed" not in caplog.text
        assert not on(replica, session)
        # The DEL sent again finds nothing, so it writes nothing: a marker write in the
        # session's slot is what the new connection's WAIT waited for (it lives 1 s).
        marker = f"{PREFIX}rv:{{{key(session)}}}"
        assert redis_cli(master.port, "exists", marker).strip() == "1"
    finally:
        await stores.close()
        cluster.stop()
