"""A logout on one instance is refused by another within the documented bound:
revocation + sessions.cache_ttl + the event bus's poll interval (Redis pub/sub
needs no poll). Two real gateways with the full extensions share PostgreSQL and
Redis (or only PostgreSQL); the timing target itself is benchmarks/revocation.py's."""

from __future__ import annotations

import dataclasses
import secrets
from ipaddress import ip_network
from pathlib import Path

import aiohttp
import pytest

from benchmarks.revocation import (
    Probe,
    add_user,
    base_url,
    build_config,
    instances,
    status,
    trial,
    upstream,
)
from gateway.stores.sql import POLL_INTERVAL
from tests.conftest import REDIS_URL
from tests.integration.test_fast_path import metric

CACHE_TTL = 2.0
SLACK = 0.3  # one request's time on a loaded CI machine


async def forward_auth_check(client: aiohttp.ClientSession, base: str, cookie: str) -> int:
    """nginx `auth_request`'s check about /members/x with the session's cookie."""
    headers = {
        "Host": "authgate.internal",
        "X-Original-URL": "http://app.test/members/x",
        "Cookie": f"authgate_session={cookie}",
    }
    async with client.get(base + "/.authgate/verify", headers=headers) as resp:
        await resp.read()
        return resp.status


# How B is asked, and whether with the fast path. With it, B's answers come from
# decisions it reuses, or from the answers it keeps for a proxy's checks (the probes are
# the same bytes each time): they must not outlast the revocation either.
PROBES: dict[str, tuple[Probe, bool]] = {
    "aiohttp": (status, False),
    "fast-path": (status, True),
    "forward-auth": (forward_auth_check, True),
}


@pytest.mark.postgres
@pytest.mark.parametrize("bus", [pytest.param("redis", marks=pytest.mark.redis), "sql"])
@pytest.mark.parametrize("asked", list(PROBES))
async def test_no_request_passes_on_another_instance_after_the_revocation_bound(
    bus: str, asked: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    probe, fast_path = PROBES[asked]
    postgres = request.getfixturevalue("postgres_clean")
    if bus == "redis":
        request.getfixturevalue("redis_run_prefix")
    session_store = REDIS_URL if bus == "redis" else "storage"
    bound = CACHE_TTL + (0.0 if bus == "redis" else POLL_INTERVAL) + SLACK
    async with upstream() as upstream_url:
        config = build_config(tmp_path, upstream_url, postgres, session_store, CACHE_TTL)
        server = dataclasses.replace(config.server, fast_path=fast_path)
        if probe is forward_auth_check:  # only a trusted proxy may ask
            server = dataclasses.replace(server, trusted_proxies=(ip_network("127.0.0.1/32"),))
        config = dataclasses.replace(config, server=server)
        user = await add_user(config, f"alice-{secrets.token_hex(3)}")
        async with instances(config) as (a, b), aiohttp.ClientSession() as client:
            for _ in range(3):
                latency, answers = await trial(client, a, b, user, probe)
                passed_late = [(t, code) for t, code in answers if code == 200 and t > bound]
                assert passed_late == []
                assert latency <= bound
                assert answers[-1][1] == 401, "B refuses (JSON client: 401), never errors"
            if fast_path and bus == "sql":  # (over Redis the event beats the probes)
                reused = "authgate_fast_path_reused_decisions_total"
                assert await metric(base_url(b).removeprefix("http://"), reused) > 0
