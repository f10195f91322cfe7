"""Two gateway instances on a Sentinel-managed Redis while its master fails over, for
real: a master, two replicas and three Sentinels (quorum 2) on spare ports, PostgreSQL
for storage, two `GatewayServer`s with the full extensions (each with its own stores,
session cache and revocation subscription, as two hosts would have).

- The master is killed (SIGKILL). While the Sentinels fail over, protected requests
  with a valid session get 200 (a cached session) or 503, never 500; a revoked or an
  unknown session never passes; both instances keep answering.
- Once a replica is promoted, both instances serve the sessions written before (and
  replicated) again, by themselves, and a revocation made on A afterwards is refused
  by B within the documented bound (sessions.cache_ttl + slack), through B's
  subscription, which followed the new master (not merely because its cache expired).
- The old master comes back (restarted, empty, as a master); the Sentinels turn it into
  a replica; nothing passes that should not, and revocations still reach B.
- A coordinated failover (`SENTINEL FAILOVER`: the master is demoted while alive) is
  followed the same way: no subscription stays on the demoted master.
- A logout made once every Sentinel is done with a coordinated failover, but before
  they demote the old master (still a master, still holding the instances' pooled
  connections), must stick too.

Timings: Sentinel's down-after is 1 s and its periods are shortened (servers.py): every
Sentinel is done with a failover about 3.5 s after the master is killed, a returning or
a live old master is demoted within about 3 s; the module takes about 20 s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from benchmarks.revocation import base_url, logout, new_session, status
from gateway.stores.base import RESYNC, REVOCATIONS
from gateway.stores.ids import hash_session_id
from tests.integration.failover import (
    BOUND,
    RECOVERY,
    Heard,
    check_fail_closed,
    kill_and_recover,
    milliseconds,
    no_errors_logged,
    probing,
    report,
    serving_again,
    sessions_before,
    trials,
    trials_then_still_serving,
    two_gateways,
    until,
    while_probed,
)
from tests.integration.servers import SentinelGroup, redis_cli, start_sentinel_group

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]

# down-after (1 s) + agreement + election + promotion + every Sentinel switched: about
# 3.5 s. An election ending in a split vote is retried after 2 x failover-timeout (8 s).
FAILOVER_WAIT = 20.0
DEMOTION_WAIT = 15.0  # a live or returning old master is made a replica (about 2-3 s)
QUIET = 1.0  # no resync for this long: B's subscription is not being moved any more


@pytest.fixture
def sentinels() -> Iterator[SentinelGroup]:
    group = start_sentinel_group()
    yield group
    group.stop()


async def replicated(group: SentinelGroup, replicas: int) -> None:
    """Every write made so far is on `replicas` replicas: a write of ours, then WAIT on
    the same connection (replication is in order, so it covers the gateways' writes)."""
    master = aioredis.Redis(port=await asyncio.to_thread(group.master_port))
    try:
        await master.set("test:replicated", "1")
        acked = await master.wait(replicas, 5000)
        assert acked >= replicas, f"only {acked} replicas acknowledged"
    finally:
        await master.aclose()


def subscribers(port: int) -> list[str]:
    """The pub/sub clients of a redis-server, other than Sentinels."""
    clients = redis_cli(port, "client", "list").splitlines()
    return [c for c in clients if " flags=P " in c and "name=sentinel-" not in c]


async def subscriptions_settled(heard: Heard, port: int, channel: str) -> bool:
    """Both instances' revocation subscriptions are on the redis-server at `port`, and B
    has heard no resync (its subscription reopened) for QUIET seconds. (Each instance
    holds other subscriptions too, tenants': only the revocation channel is counted.)"""
    last_resync = max((t for t, m in heard if m == RESYNC), default=0.0)
    if time.monotonic() - last_resync < QUIET:
        return False
    reply = await asyncio.to_thread(redis_cli, port, "pubsub", "numsub", channel)
    return int(reply.split()[-1]) >= 2


# --- the tests ----------------------------------------------------------------------------


async def test_master_killed_failover_and_old_master_returning(
    tmp_path: Path,
    sentinels: SentinelGroup,
    postgres_clean: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with two_gateways(tmp_path, postgres_clean, sentinels.url, monkeypatch) as gateways:
        setup, a, b, client, heard = gateways
        cookies = await sessions_before(client, a, b, setup.alice)
        await replicated(sentinels, 2)
        old_port = await asyncio.to_thread(sentinels.master_port)
        old = sentinels.server(old_port)

        # 1. SIGKILL the master; ask both instances all along the failover. 2. Both
        # serve the old session again, by themselves.
        outage = await kill_and_recover(
            client,
            a,
            b,
            cookies,
            lambda: old.stop(kill=True),
            lambda: sentinels.wait_for_new_master(old_port, FAILOVER_WAIT),
        )
        new = outage.new
        assert outage.refused, "the probes never saw the outage: nothing was tested"
        assert any(m == RESYNC and t > outage.killed for t, m in heard), "B never resynced"
        no_errors_logged(caplog)

        # 3. Revocations made on A after the failover reach B.
        after_failover = await trials(client, a, b, setup.alice, setup.bob, heard)

        # 4. The old master comes back, empty and as a master; the Sentinels make it
        # a replica of the new one. Nothing passes meanwhile; revocations still reach B.
        def come_back() -> None:
            old.start()
            sentinels.wait_until_replica(old, new.port, DEMOTION_WAIT)

        returning, demotion = await while_probed(
            client, a, b, cookies, "old master returning", come_back
        )
        assert await asyncio.to_thread(sentinels.master_port) == new.port
        after_return = await trials_then_still_serving(
            client, a, b, setup, heard, cookies["valid"], caplog
        )
        report(
            "SIGKILL failover",
            **outage.figures(),
            revocation_after_failover=milliseconds(after_failover),
            old_master_demoted=f"{demotion:.2f} s after its restart",
            refused_meanwhile=str(sum(x.status == 503 for x in returning)),
            revocation_after_its_return=milliseconds(after_return),
        )


async def test_coordinated_failover_demoting_a_live_master(
    tmp_path: Path,
    sentinels: SentinelGroup,
    postgres_clean: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`SENTINEL FAILOVER`: the old master is alive and becomes a replica; B's
    subscription (on it until then) must not stay there deaf or stale."""
    async with two_gateways(tmp_path, postgres_clean, sentinels.url, monkeypatch) as gateways:
        setup, a, b, client, heard = gateways
        cookies = await sessions_before(client, a, b, setup.alice)
        await replicated(sentinels, 2)
        old_port = await asyncio.to_thread(sentinels.master_port)

        async with probing(client, {"A": a, "B": b}, cookies) as answers:
            started = time.monotonic()
            await asyncio.to_thread(
                redis_cli, sentinels.sentinel_ports[0], "sentinel", "failover", "authgate"
            )
            new = await asyncio.to_thread(sentinels.wait_for_new_master, old_port, FAILOVER_WAIT)
            await asyncio.to_thread(
                sentinels.wait_until_replica,
                sentinels.server(old_port),
                new.port,
                DEMOTION_WAIT,
            )
            done = time.monotonic()
            await until(
                lambda: serving_again(answers, done),
                "both instances serving the session",
                RECOVERY,
            )
        check_fail_closed(answers, "coordinated failover")
        no_errors_logged(caplog)
        # The demotion closed the subscriptions on the old master (Sentinel's CLIENT
        # KILL): B's reopened on the new master and told B to resync. (A revocation
        # sent in the 0.2 s before that is lost, and covered by the resync.)
        await until(
            lambda: any(m == RESYNC and t >= started for t, m in heard),
            "B resubscribing after the demotion",
            RECOVERY,
        )
        left = await asyncio.to_thread(subscribers, old_port)
        assert left == [], f"subscriptions left on the demoted master: {left}"
        # Sentinel kills pub/sub clients on every server it reconfigures, the promoted
        # replica included, so B's subscription may be closed once more after the first
        # resync; a logout sent meanwhile would be covered by the resync, not heard.
        # The trials time events on a subscription that has settled.
        await until(
            lambda: subscriptions_settled(
                heard, new.port, setup.config.sessions.redis_prefix + REVOCATIONS
            ),
            "both subscriptions on the new master, B quiet",
            RECOVERY,
        )

        after = await trials_then_still_serving(
            client, a, b, setup, heard, cookies["valid"], caplog
        )
        report(
            "SENTINEL FAILOVER",
            old_master_demoted=f"{done - started:.2f} s after the command",
            refused=str(sum(x.status == 503 for x in answers)),
            revocation_afterwards=milliseconds(after),
        )


async def test_a_logout_between_the_switch_and_the_old_masters_demotion_sticks(
    tmp_path: Path,
    sentinels: SentinelGroup,
    postgres_clean: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After `SENTINEL FAILOVER`, once every Sentinel names the new master (each has
    announced +switch-master), the old one stays a master until the Sentinels demote it:
    about 9 s later with Sentinel's default timers (4 x its publish period, checked at
    its next INFO), about 1 s here. Then it replicates the new master and drops what it
    was sent meanwhile. The instances' pooled connections still lead to it (redis-py
    asks the Sentinels only when it opens a connection), so that is where a logout goes.
    A logout that the gateway answered as done must stay done: the session must not
    come back on any instance."""
    async with two_gateways(tmp_path, postgres_clean, sentinels.url, monkeypatch) as gateways:
        setup, a, b, client, _ = gateways
        cookie = await new_session(a, setup.alice)
        for server in (a, b):
            assert await status(client, base_url(server), cookie) == 200
        await replicated(sentinels, 2)
        old_port = await asyncio.to_thread(sentinels.master_port)

        await asyncio.to_thread(
            redis_cli, sentinels.sentinel_ports[0], "sentinel", "failover", "authgate"
        )
        new = await asyncio.to_thread(sentinels.wait_for_new_master, old_port, FAILOVER_WAIT)
        await logout(client, base_url(a), cookie)  # answered 200: "you are signed out"
        role = await asyncio.to_thread(redis_cli, old_port, "role")
        assert role.split()[0] == "master", "premise: the logout came before the demotion"
        for server in (a, b):
            assert await status(client, base_url(server), cookie) == 401

        await asyncio.to_thread(
            sentinels.wait_until_replica, sentinels.server(old_port), new.port, DEMOTION_WAIT
        )
        await asyncio.sleep(BOUND)
        on_new_master = await asyncio.to_thread(
            redis_cli, new.port, "exists", f"authgate:s:{hash_session_id(cookie)}"
        )
        answers = {
            name: await status(client, base_url(server), cookie)
            for name, server in (("A", a), ("B", b))
        }
        assert answers == {"A": 401, "B": 401}, (
            f"the session logged out {answers} is back after the old master's demotion"
            f" (still on the new master: EXISTS = {on_new_master.strip()})"
        )
