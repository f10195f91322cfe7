"""Bodies stream through: a 1 GiB transfer must not grow memory by more than a few MB."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.integration.conftest import StartGateway, make_config

GIB = 1024**3
# Everything runs in this process (client, gateway, upstream), so any buffering by
# any of them shows up here; a few buffers of 64 KiB are the expected cost.
ALLOWED_GROWTH = 32 * 1024 * 1024


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


pytestmark = pytest.mark.slow


async def test_one_gib_download_streams(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway
) -> None:
    base = await start_gateway(make_config(tmp_path, str(upstream.make_url(""))))
    async with aiohttp.ClientSession() as client:
        # warm up pools and buffers before the baseline is taken
        async with client.get(f"{base}/download?bytes=1048576", headers={"Host": "app.test"}) as r:
            await r.read()
        before = rss()
        peak = before
        received = 0
        async with client.get(f"{base}/download?bytes={GIB}", headers={"Host": "app.test"}) as r:
            assert r.status == 200
            assert r.headers["Content-Length"] == str(GIB)
            async for chunk in r.content.iter_chunked(1 << 20):
                received += len(chunk)
                if received % (64 << 20) < len(chunk):
                    peak = max(peak, rss())
    assert received == GIB
    assert peak - before < ALLOWED_GROWTH


async def test_one_gib_upload_streams(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway
) -> None:
    base = await start_gateway(make_config(tmp_path, str(upstream.make_url(""))))
    block = b"y" * (1 << 20)
    samples: list[int] = []

    async def body():  # type: ignore[no-untyped-def]
        for i in range(GIB // len(block)):
            if i % 64 == 0:
                samples.append(rss())
            yield block

    async with aiohttp.ClientSession() as client:
        before = rss()
        async with client.post(
            f"{base}/upload", headers={"Host": "app.test", "Content-Length": str(GIB)}, data=body()
        ) as r:
            seen = await r.json()
    assert seen["body_length"] == GIB
    assert max(samples) - before < ALLOWED_GROWTH
