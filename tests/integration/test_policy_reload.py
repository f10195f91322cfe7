"""Live policy reload: a valid edit takes effect without a restart; a bad one changes nothing."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer

from gateway.server import GatewayServer
from tests.integration.conftest import StartGateway, make_config

# Every test on aiohttp's server alone and on the fast path (conftest.py).
BOTH_PATHS = True

CLOSED = "version: 1\ndefault: deny\n"
OPEN = "version: 1\ndefault: deny\nrules:\n  - name: open\n    action: bypass\n"


async def status_of(client: aiohttp.ClientSession, base: str) -> int:
    async with client.get(f"{base}/echo", headers={"Host": "app.test"}) as resp:
        return resp.status


async def wait_for_status(
    client: aiohttp.ClientSession, base: str, status: int, within: float
) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within:
        if await status_of(client, base) == status:
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"status {status} not seen within {within}s")


async def test_edits_are_picked_up_and_bad_edits_keep_the_old_policy(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway
) -> None:
    base = await start_gateway(make_config(tmp_path, str(upstream.make_url("")), policy=CLOSED))
    policy = tmp_path / "policy.yaml"
    async with aiohttp.ClientSession() as client:
        assert await status_of(client, base) == 403
        policy.write_text(OPEN)
        await wait_for_status(client, base, 200, within=2.0)

        policy.write_text("version: 1\nrules:\n  - actoin: bypass\n")
        await asyncio.sleep(1.5)
        assert await status_of(client, base) == 200
        async with client.get(f"{base}/.authgate/ready", headers={"Host": "app.test"}) as resp:
            assert resp.status == 200

        policy.write_text(CLOSED)
        await wait_for_status(client, base, 403, within=2.0)


async def test_an_edit_made_while_the_gateway_starts_is_followed(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway
) -> None:
    """The policy files are read before the rest opens (stores, sockets); an edit made in
    between must not be taken as the state the watcher starts from."""
    policy = tmp_path / "policy.yaml"

    def edit_while_starting(server: GatewayServer) -> None:
        async def edit() -> None:
            policy.write_text(OPEN)

        server.hooks.startup.append(edit)

    config = make_config(tmp_path, str(upstream.make_url("")), policy=CLOSED)
    base = await start_gateway(config, (edit_while_starting,))
    async with aiohttp.ClientSession() as client:
        await wait_for_status(client, base, 200, within=2.0)
