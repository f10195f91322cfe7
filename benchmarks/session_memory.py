"""RSS of one authgate worker with 100,000 live sessions in Redis (issue 8 target:
≤ 120 MB per worker).

The sessions are written straight into Redis through the store (as 100,000 people
signing in over time would leave them); then `authgate serve` runs with one worker
and is hit with requests carrying a sample of those cookies (20,000 distinct by
default, each twice), so the per-process session cache fills to its bound
(`sessions.cache_size`). RSS comes from /proc/<worker>/status (VmRSS now, VmHWM peak).

    python -m benchmarks.session_memory [--sessions 100000] [--distinct 20000]
        [--redis redis://127.0.0.1:6379/15] [--cache-size 10000]

The Redis database given is used under a key prefix of the run's own
(`authgate-bench-<hex>:`); the run deletes the keys it wrote (and nothing else) at
the end. `python -m benchmarks` calls `measure` for its report.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from gateway.stores import SessionRecord, User, new_id
from gateway.stores.ids import hash_session_id, new_session_id
from gateway.stores.redis import RedisSessionStore, open_redis
from gateway.stores.sql import SqlUserStore
from gateway.stores.sqlite import open_sqlite

USERS = 1000
BATCH = 100  # sessions written concurrently (within the client's connection pool)
CONCURRENCY = 32  # requests in flight against the worker
TARGET_MB = 120.0


@dataclass(frozen=True)
class Memory:
    rss_mb: float
    peak_mb: float


@dataclass(frozen=True)
class MemoryFigures:
    """One run: the worker's memory idle and after serving `distinct` sessions twice."""

    sessions: int
    distinct: int
    cache_size: int
    idle_rss_mb: float
    loaded_rss_mb: float
    peak_rss_mb: float
    requests: int
    seconds: float
    statuses: tuple[tuple[int, int], ...]  # (status, count)

    @property
    def ok(self) -> bool:
        return self.peak_rss_mb <= TARGET_MB and {s for s, _ in self.statuses} == {200}


def worker_memory(pid: int) -> Memory:
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return Memory(fields["VmRSS"], fields["VmHWM"])


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(t) for t in text]
    return found


def spare_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


CONFIG = """
server:
  listen: 127.0.0.1:{port}
  workers: 1
  dev_mode: true
logging:
  level: warning
  access_log: false
storage: sqlite:///{folder}/authgate.db
sessions:
  store: {redis}
  redis_prefix: "{prefix}"
  cache_size: {cache_size}
secrets:
  encryption_key: {key}
tenants:
  - id: acme
    name: Acme
    domains: [app.test]
    policies: [policy.yaml]
    routes:
      - host: app.test
        upstream: http://127.0.0.1:{upstream_port}
"""
POLICY = "version: 1\ndefault: deny\nrules:\n  - name: members\n    action: one_factor\n"


async def populate(folder: Path, redis_url: str, prefix: str, count: int) -> list[str]:
    """Users in SQLite, `count` sessions in Redis; returns the cookie values."""
    db = await open_sqlite(folder / "authgate.db")
    users = SqlUserStore(db)
    people: list[User] = []
    now = time.time()
    for i in range(USERS):
        user = User(new_id(), "acme", f"user{i}", None, None, ("staff",), (), False, None, now, now)
        await users.create(user)
        people.append(user)
    await db.close()
    handle = open_redis(redis_url)
    await handle.ping()
    store = RedisSessionStore(handle.client, prefix)
    cookies: list[str] = []
    try:
        for start in range(0, count, BATCH):
            batch: list[SessionRecord] = []
            for i in range(start, min(start + BATCH, count)):
                cookie = new_session_id()
                cookies.append(cookie)
                batch.append(
                    SessionRecord(
                        id_hash=hash_session_id(cookie),
                        tenant="acme",
                        user_id=people[i % USERS].id,
                        amr=("pwd",),
                        auth_time=now,
                        created=now,
                        last_seen=now,
                        expires=now + 3600,
                        ip="192.0.2.1",
                        user_agent="Mozilla/5.0 (X11; Linux x86_64) benchmark",
                        country=None,
                    )
                )
            await asyncio.gather(*(store.create(r) for r in batch))
    finally:
        await handle.close()
    return cookies


async def cleanup(redis_url: str, prefix: str) -> None:
    handle = open_redis(redis_url)
    try:
        batch: list[str] = []
        async for key in handle.client.scan_iter(match=f"{prefix}*", count=2000):
            batch.append(key)
            if len(batch) >= 1000:
                await handle.client.delete(*batch)
                batch = []
        if batch:
            await handle.client.delete(*batch)
    finally:
        await handle.close()


async def hit(port: int, cookies: list[str]) -> dict[int, int]:
    statuses: dict[int, int] = {}
    queue = list(cookies)
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as client:

        async def one_worker() -> None:
            while queue:
                cookie = queue.pop()
                headers = {
                    "Host": "app.test",
                    "Accept": "application/json",
                    "Cookie": f"authgate_session={cookie}",
                }
                async with client.get(f"http://127.0.0.1:{port}/x", headers=headers) as resp:
                    await resp.read()
                    statuses[resp.status] = statuses.get(resp.status, 0) + 1

        await asyncio.gather(*(one_worker() for _ in range(CONCURRENCY)))
    return statuses


async def upstream_server() -> tuple[object, int]:
    from aiohttp import web

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


async def wait_listening(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError("authgate did not start")


async def measure(redis_url: str, sessions: int, distinct: int, cache_size: int) -> MemoryFigures:
    """Write `sessions` sessions, serve `distinct` of them twice through one worker,
    and read the worker's memory; every key written is deleted at the end."""
    prefix = f"authgate-bench-{secrets.token_hex(4)}:"
    with tempfile.TemporaryDirectory(prefix="authgate-memory-") as name:
        folder = Path(name)
        try:
            cookies = await populate(folder, redis_url, prefix, sessions)
            runner, upstream_port = await upstream_server()
            port = spare_port()
            (folder / "policy.yaml").write_text(POLICY)
            (folder / "config.yaml").write_text(
                CONFIG.format(
                    port=port,
                    folder=folder,
                    redis=redis_url,
                    prefix=prefix,
                    cache_size=cache_size,
                    key=secrets.token_urlsafe(48),
                    upstream_port=upstream_port,
                )
            )
            serve = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve", "-c", str(folder / "config.yaml")],
                stdout=subprocess.DEVNULL,
                start_new_session=True,
            )
            try:
                await wait_listening(port)
                worker = children(serve.pid)[0]
                idle = worker_memory(worker)
                sample = random.sample(cookies, min(distinct, len(cookies)))
                started = time.monotonic()
                statuses = await hit(port, sample + sample)
                elapsed = time.monotonic() - started
                loaded = worker_memory(worker)
            finally:
                os.killpg(serve.pid, signal.SIGTERM)
                try:
                    serve.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(serve.pid, signal.SIGKILL)
                    serve.wait()
                await runner.cleanup()  # type: ignore[attr-defined]
        finally:
            await cleanup(redis_url, prefix)
    return MemoryFigures(
        sessions=len(cookies),
        distinct=len(sample),
        cache_size=cache_size,
        idle_rss_mb=idle.rss_mb,
        loaded_rss_mb=loaded.rss_mb,
        peak_rss_mb=loaded.peak_mb,
        requests=sum(statuses.values()),
        seconds=elapsed,
        statuses=tuple(sorted(statuses.items())),
    )


async def run(args: argparse.Namespace) -> int:
    figures = await measure(args.redis, args.sessions, args.distinct, args.cache_size)
    print(
        f"requests: {figures.requests} in {figures.seconds:.1f} s,"
        f" statuses {dict(figures.statuses)}"
    )
    print(f"worker RSS idle:   {figures.idle_rss_mb:6.1f} MB")
    print(
        f"worker RSS loaded: {figures.loaded_rss_mb:6.1f} MB  (peak {figures.peak_rss_mb:.1f} MB)"
        f"  with {figures.sessions} sessions in Redis, {figures.distinct} distinct served,"
        f" cache_size {figures.cache_size}"
    )
    verdict = "meets" if figures.peak_rss_mb <= TARGET_MB else "misses"
    print(f"target <= {TARGET_MB:.0f} MB per worker: {verdict}")
    return 0 if figures.ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--distinct", type=int, default=20_000)
    parser.add_argument("--cache-size", type=int, default=10_000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
