"""Circuit breakers that refuse no more than is out: one master of a Redis Cluster hung
(only its sessions are out), and a Sentinel that switched to a new master (served at
once, not after the cool-off).

A Cluster spreads sessions over its masters by key slot. When one master hangs
(SIGSTOP: connections open, nothing answers), the calls for its keys wait out the
store deadline and then fail fast once its circuit breaker opens (503, fail closed);
the sessions on the other masters must keep being served all along. A single breaker
for the whole Cluster client would open on the hung master's failures and refuse every
call, for every master, during each cool-off.

The node timeout is long (60 s), so the cluster never marks the hung master failed
during the test (without replicas, that would take every slot down)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from gateway.config.model import SessionsConfig
from gateway.errors import StoreUnavailable
from gateway.sessions import SessionManager
from gateway.stores import breaker
from gateway.stores import redis as redis_store
from gateway.stores.base import REVOCATIONS, SessionRecord, session_revoked
from gateway.stores.breaker import CircuitOpen
from gateway.stores.redis import COMMAND_TIMEOUT
from tests.integration.servers import (
    RedisCluster,
    redis_cli,
    replica_has,
    start_cluster,
    start_sentinel_group,
)
from tests.integration.test_revocation_replicated import held, opened
from tests.polling import until

pytestmark = [pytest.mark.redis, pytest.mark.slow]


@pytest.fixture
def cluster() -> Iterator[RedisCluster]:
    started = start_cluster(3, replicas=0, node_timeout_ms=60000)
    try:
        yield started
    finally:
        started.stop()


def session() -> SessionRecord:
    now = time.time()
    return SessionRecord(secrets.token_hex(32), "acme", "u1", ("pwd",), now, now, now, now + 3600)


async def test_a_hung_master_fails_only_its_own_sessions(
    cluster: RedisCluster, tmp_path: Path
) -> None:
    stores = await opened(tmp_path, cluster.url)
    try:
        sessions = [session() for _ in range(30)]
        for s in sessions:
            await stores.sessions.create(s)
        hung = cluster.masters()[0]
        on_hung = {
            s.id_hash
            for s in sessions
            if cluster.owner(key_slot(f"authgate:s:{s.id_hash}".encode())).port == hung.port
        }
        assert 0 < len(on_hung) < len(sessions), "the sessions should span every master"

        failed_healthy: list[str] = []
        hung_answers: list[tuple[float, float, bool]] = []  # (started, took, failed)

        async def read(s: SessionRecord) -> None:
            started = time.monotonic()
            try:
                found = await stores.sessions.get(s.id_hash)
                failed = False
            except StoreUnavailable as exc:
                found, failed = None, True
                if s.id_hash not in on_hung:
                    failed_healthy.append(f"{type(exc).__name__}: {exc}")
            if s.id_hash in on_hung:
                hung_answers.append((started, time.monotonic() - started, failed))
            else:
                assert found is not None and found.id_hash == s.id_hash

        with held(hung):
            began = time.monotonic()
            # Past the first deadline (when the hung master's calls fail together and its
            # breaker opens) and into the cool-offs that follow.
            until = began + redis_store.COMMAND_TIMEOUT + 3
            in_flight: set[asyncio.Task[None]] = set()
            while time.monotonic() < until:
                for s in sessions:
                    task = asyncio.ensure_future(read(s))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                await asyncio.sleep(0.05)
            await asyncio.gather(*in_flight)

        assert not failed_healthy, (
            f"{len(failed_healthy)} reads of sessions on healthy masters failed, e.g."
            f" {failed_healthy[:3]}"
        )
        assert all(failed for _, _, failed in hung_answers)
        # Once the hung master's own breaker is open, its sessions get their 503 at once,
        # but for its probes: one call per cool-off (1 s, then more) waits the deadline.
        late = [took for started, took, _ in hung_answers if started > began + 6]
        slow = [took for took in late if took > 0.5]
        assert len(late) > 20 and len(slow) <= 3, f"{len(slow)} of {len(late)} reads were slow"
        # And every session is served again once its master answers, after the cool-off.
        back = time.monotonic() + breaker.MAX_COOL_OFF + redis_store.COMMAND_TIMEOUT
        while True:
            try:
                found = [await stores.sessions.get(s.id_hash) for s in sessions]
                break
            except StoreUnavailable:
                assert time.monotonic() < back, "the hung master's sessions never came back"
                await asyncio.sleep(0.2)
        assert all(found)
    finally:
        await stores.close()


async def test_a_sentinel_switch_closes_the_breaker_at_once(tmp_path: Path) -> None:
    """The master is killed: every call fails at once, the breaker opens, and its
    cool-off grows (1, 2, 4, 5 s) while the Sentinels take their time (down-after 3 s).
    When they switch to a new master the client moves to it; the breaker must not go
    on refusing a healthy master for the rest of a cool-off (up to 5 s more)."""
    group = start_sentinel_group(replicas=1, sentinels=1, down_after_ms=3000)
    stores = None
    try:
        stores = await opened(tmp_path, group.url)
        s = session()
        await stores.sessions.create(s)
        old_port = await asyncio.to_thread(group.master_port)
        master = aioredis.Redis(port=old_port)
        assert await master.wait(1, 5000) == 1  # the replica has the session
        await master.aclose()

        group.server(old_port).stop(kill=True)
        switched: list[float] = []

        async def switch() -> None:
            await asyncio.to_thread(group.wait_for_new_master, old_port, 30)
            switched.append(time.monotonic())

        watching = asyncio.ensure_future(switch())
        served_at = None
        while served_at is None:
            try:
                if await stores.sessions.get(s.id_hash) is not None and switched:
                    served_at = time.monotonic()
            except StoreUnavailable:
                pass
            assert not watching.done() or switched, "the Sentinels never switched"
            await asyncio.sleep(0.05)
        await watching
        late = served_at - switched[0]
        assert late < 1.0, f"served again {late:.2f} s after the switch"
    finally:
        if stores is not None:
            await stores.close()
        group.stop()


async def test_a_hung_master_failed_over_by_the_cluster_is_left_for_its_replica(
    tmp_path: Path,
) -> None:
    """A master hangs (SIGSTOP) and stays hung; the cluster elects its replica. The
    client must learn the new map: redis-py refreshes it after a timeout of its own,
    which never came when the store's deadline always cut a call first, and the hung
    master's sessions were refused for as long as it stayed hung."""
    cluster = start_cluster(3, replicas=1, node_timeout_ms=1000)
    stores = await opened(tmp_path, cluster.url)
    try:
        s = session()
        await stores.sessions.create(s)
        master = cluster.owner(key_slot(f"authgate:s:{s.id_hash}".encode()))
        replica = cluster.replica_of(master)
        # The replica must have the session before its master hangs (replication is
        # asynchronous: a session it never got is lost in the failover, as Redis says).
        # Asked of the replica itself: a WAIT on redis-cli's fresh connection, which
        # wrote nothing, vouched for nothing (the test failed with the session missing).
        key = f"authgate:s:{s.id_hash}"
        await until(lambda: replica_has(replica.port, key), "the replica got the session", 10)
        with held(master):
            for _ in range(200):  # the cluster's failover: about 2-3 s
                if "master" in redis_cli(replica.port, "role").split()[:1]:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the replica was never promoted")
            promoted = time.monotonic()
            while True:
                found: object = "refused"
                with contextlib.suppress(StoreUnavailable):
                    found = await stores.sessions.get(s.id_hash)
                if found not in (None, "refused"):
                    break
                waited = time.monotonic() - promoted
                assert waited < 30, f"30 s after the replica took over, the session is {found}"
                await asyncio.sleep(0.2)
            print(
                f"served by the new master {time.monotonic() - promoted:.1f} s after its promotion"
            )
    finally:
        await stores.close()
        cluster.stop()


async def test_lists_across_masters_count_against_each_master_not_the_whole_client(
    cluster: RedisCluster, tmp_path: Path
) -> None:
    """Listing a tenant's sessions reads every master. With one master hung the listing
    fails (fail closed: it must be whole), but its failures are that master's: calls
    that go to no one key's master (the revocation channel's PUBLISH, the shared clock)
    must go on being served, and once the hung master's breaker is open a listing fails
    at once. Counted against the whole client's breaker, three listings at once opened
    it, and every PUBLISH was refused for the cool-offs that followed."""
    stores = await opened(tmp_path, cluster.url)
    try:
        for _ in range(30):
            await stores.sessions.create(session())
        assert len(await stores.sessions.list("acme")) == 30
        refused: list[str] = []

        async def publish_all_along(until: float) -> int:
            sent = 0
            while time.monotonic() < until:
                try:
                    await stores.events.publish("probe", "x")
                    sent += 1
                except StoreUnavailable as exc:
                    refused.append(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.05)
            return sent

        async def listing() -> tuple[float, bool]:
            started = time.monotonic()
            try:
                await stores.sessions.list("acme")
                return time.monotonic() - started, False
            except StoreUnavailable:
                return time.monotonic() - started, True

        with held(cluster.masters()[0]):
            began = time.monotonic()
            publishing = asyncio.ensure_future(publish_all_along(began + 9))
            first = await asyncio.gather(*(listing() for _ in range(5)))
            await asyncio.sleep(0.2)
            later = [await listing() for _ in range(10)]
            sent = await publishing

        assert all(failed for _, failed in first + later)
        assert all(took >= redis_store.COMMAND_TIMEOUT - 0.5 for took, _ in first)
        # The hung master's breaker is open by now: the listings after fail at once,
        # but for at most one probe.
        assert sum(took > 0.5 for took, _ in later) <= 1, later
        # PUBLISH goes to any one node (redis-py moves off a node that timed out): it
        # may wait out one deadline on the hung master, but is never refused for it.
        assert not [r for r in refused if "circuit open" in r], refused[:3]
        assert sent > 50
        assert len(await stores.sessions.list("acme")) == 30  # all back once it answers
    finally:
        await stores.close()


async def test_deletions_across_masters_that_time_out_open_the_hung_masters_breaker(
    cluster: RedisCluster, tmp_path: Path
) -> None:
    """ "Log out everywhere" deletes keys on every master in one pipeline per master. A
    Cluster pipeline hands a node's timeout back as one of its replies: taken as a reply,
    it counted as the hung master answering (resetting its count, closing a probe), and
    its breaker never opened however many deletions timed out."""
    stores = await opened(tmp_path, cluster.url)
    hung = cluster.masters()[0]
    try:
        on_hung: list[SessionRecord] = []
        elsewhere: list[SessionRecord] = []
        for _ in range(30):
            record = session()
            await stores.sessions.create(record)
            slot = key_slot(f"authgate:s:{record.id_hash}".encode())
            (on_hung if cluster.owner(slot).port == hung.port else elsewhere).append(record)
        assert on_hung and elsewhere
        with held(hung):
            outcomes = await asyncio.gather(
                *(stores.sessions.revoke_user("acme", "u1") for _ in range(3)),
                return_exceptions=True,
            )
            assert all(isinstance(o, StoreUnavailable) for o in outcomes), outcomes
            # The hung master's breaker is open: its sessions are refused without asking
            # it. The other masters' are not: reads of their sessions are answered
            # (found, or None where a deletion got through).
            with pytest.raises(CircuitOpen):
                await stores.sessions.get(on_hung[0].id_hash)
            for record in elsewhere:
                try:
                    await stores.sessions.get(record.id_hash)
                except CircuitOpen:
                    raise AssertionError("a healthy master's breaker opened") from None
    finally:
        await stores.close()


async def test_a_logout_that_fails_on_a_hung_master_is_still_announced(
    cluster: RedisCluster, tmp_path: Path
) -> None:
    """The session's master hangs during its logout: the logout is not confirmed (a
    503), but the deletion may have been done, and every gateway process must forget the
    session either way: the revocation is still published (through a healthy master)."""
    stores = await opened(tmp_path, cluster.url)
    manager = SessionManager(stores.sessions, stores.users, stores.events, SessionsConfig())
    # redis-py sends PUBLISH to the master of the channel's slot: that one stays up.
    healthy = cluster.owner(key_slot(f"authgate:{REVOCATIONS}".encode()))
    hung = next(m for m in cluster.masters() if m.port != healthy.port)
    listener = aioredis.Redis(port=healthy.port)
    pubsub = listener.pubsub(ignore_subscribe_messages=True)
    try:
        await pubsub.subscribe(f"authgate:{REVOCATIONS}")
        while True:
            record = session()
            await stores.sessions.create(record)
            slot = key_slot(f"authgate:s:{record.id_hash}".encode())
            if cluster.owner(slot).port == hung.port:
                break
        with held(hung):
            with pytest.raises(StoreUnavailable):
                await manager.revoke_hash(record.id_hash)
            heard: list[str] = []
            until = time.monotonic() + COMMAND_TIMEOUT
            while not heard and time.monotonic() < until:
                # None also for the subscription's own confirmation (ignored)
                message = await pubsub.get_message(timeout=0.5)
                if message is not None:
                    heard.append(message["data"].decode())
        assert heard == [session_revoked(record.id_hash)]
    finally:
        await pubsub.aclose()
        await listener.aclose()
        await stores.close()
