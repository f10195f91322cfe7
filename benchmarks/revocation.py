"""How long a logout on one instance takes to be refused by another (issue 8 target:
p99 ≤ 100 ms with Redis pub/sub).

Two gateway instances (two `GatewayServer`s with the full extensions, each with its
own stores, session cache and event subscription, as two hosts would have) share
PostgreSQL and either Redis or the SQL event table. Per trial: a new session for
alice; instance B serves it once (so B's per-process cache holds it); alice logs
out through A (GET + POST `/.authgate/logout`, CSRF and all); B is polled until it
refuses. The figure is the time from sending the logout to B's first refusal.

    python -m benchmarks.revocation [--trials 100] [--postgres-admin URL] [--redis URL]

The run creates a database of its own on that PostgreSQL server (migrated, dropped
at the end) and uses Redis under a key prefix of its own, whose keys it deletes at
the end. `python -m benchmarks` calls `redis_revocation` for its report.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import re
import secrets
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from benchmarks.scenarios import delete_redis_prefix, run_prefix
from gateway.config.model import (
    Config,
    ListenAddress,
    PasswordsConfig,
    RouteConfig,
    SecretsConfig,
    ServerConfig,
    SessionsConfig,
    TenantConfig,
)
from gateway.extensions import default_extensions
from gateway.server import GatewayServer
from gateway.stores import User, new_id, open_stores
from gateway.stores.postgres import migrate

RUN_KEY = secrets.token_urlsafe(48)  # one encryption key for every instance of a run

POLICY = "version: 1\ndefault: deny\nrules:\n  - name: members\n    action: one_factor\n"
HOST = "app.test"
CHEAP = PasswordsConfig(time_cost=1, memory_cost=8, parallelism=1)
POLL_PAUSE = 0.002  # between two probes of instance B
GIVE_UP = 10.0  # a trial that never sees a refusal fails the run


@dataclass(frozen=True)
class Figures:
    """Revocation latencies of one setup, in seconds."""

    label: str
    samples: tuple[float, ...]

    def percentile(self, p: float) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]

    def line(self) -> str:
        ms = [s * 1000 for s in self.samples]
        return (
            f"{self.label:<34} trials={len(ms):>4}  p50={self.percentile(50) * 1000:7.1f} ms"
            f"  p99={self.percentile(99) * 1000:7.1f} ms  max={max(ms):7.1f} ms"
            f"  mean={statistics.fmean(ms):7.1f} ms"
        )


def build_config(
    folder: Path,
    upstream_url: str,
    storage: str,
    session_store: str,
    cache_ttl: float = 2.0,
    redis_prefix: str = "authgate:",
) -> Config:
    """One tenant, one route needing a session; both instances run this config."""
    policy = folder / "policy.yaml"
    policy.write_text(POLICY)
    tenant = TenantConfig(
        id="acme",
        name="Acme",
        domains=(HOST,),
        policies=(policy,),
        routes=(RouteConfig(host=HOST, upstream=upstream_url),),
    )
    server = dataclasses.replace(
        ServerConfig(), listen=(ListenAddress("127.0.0.1", 0),), dev_mode=True
    )
    return Config(
        source=folder / "config.yaml",
        tenants=(tenant,),
        server=server,
        storage=storage,
        sessions=SessionsConfig(
            store=session_store, cache_ttl=cache_ttl, redis_prefix=redis_prefix
        ),
        passwords=CHEAP,
        secrets=SecretsConfig(encryption_key=RUN_KEY),
    )


async def add_user(config: Config, username: str) -> User:
    stores = await open_stores(config)
    try:
        user = User(
            id=new_id(),
            tenant="acme",
            username=username,
            email=None,
            display_name=None,
            groups=(),
            roles=(),
            disabled=False,
            password_hash=None,
            created=time.time(),
            updated=time.time(),
        )
        await stores.users.create(user)
        return user
    finally:
        await stores.close()


@asynccontextmanager
async def upstream() -> AsyncIterator[str]:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def instances(config: Config, count: int = 2) -> AsyncIterator[list[GatewayServer]]:
    """`count` gateways with the full extensions, each with stores of its own."""
    running: list[GatewayServer] = []
    try:
        for _ in range(count):
            server = GatewayServer(config, tuple(default_extensions()))
            await server.start()
            running.append(server)
        yield running
    finally:
        for server in running:
            await server.stop()


def base_url(server: GatewayServer) -> str:
    host, port = server.addresses[0]
    return f"http://{host}:{port}"


async def new_session(server: GatewayServer, user: User) -> str:
    """A session cookie value for `user`, created by the instance's SessionManager."""
    runtime: Any = server.runtime
    cookie, _ = await runtime.sessions.create(user, ("pwd",), ip="127.0.0.1", user_agent="bench")
    return str(cookie)


async def status(client: aiohttp.ClientSession, base: str, cookie: str) -> int:
    headers = {"Host": HOST, "Accept": "application/json", "Cookie": f"authgate_session={cookie}"}
    async with client.get(base + "/members/x", headers=headers, allow_redirects=False) as resp:
        await resp.read()
        return resp.status


async def logout(client: aiohttp.ClientSession, base: str, cookie: str) -> float:
    """Log out through the page, as a browser does; returns when the POST was sent."""
    headers = {"Host": HOST, "Accept": "text/html", "Cookie": f"authgate_session={cookie}"}
    async with client.get(base + "/.authgate/logout", headers=headers) as resp:
        page = await resp.text()
        jar: SimpleCookie = SimpleCookie()
        for raw in resp.headers.getall("Set-Cookie", []):
            jar.load(raw)
    token = re.search(r'name="csrf_token" value="([^"]*)"', page)
    if resp.status != 200 or token is None:
        raise RuntimeError(f"logout page: {resp.status}")
    cookies = [f"authgate_session={cookie}"] + [f"{k}={m.value}" for k, m in jar.items()]
    post_headers = {
        "Host": HOST,
        "Accept": "text/html",
        "Origin": f"http://{HOST}",
        "Cookie": "; ".join(cookies),
    }
    sent = time.perf_counter()
    async with client.post(
        base + "/.authgate/logout", headers=post_headers, data={"csrf_token": token.group(1)}
    ) as resp:
        await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"logout: {resp.status}")
    return sent


Probe = Callable[[aiohttp.ClientSession, str, str], Awaitable[int]]


async def trial(
    client: aiohttp.ClientSession,
    a: GatewayServer,
    b: GatewayServer,
    user: User,
    probe: Probe = status,
) -> tuple[float, list[tuple[float, int]]]:
    """Latency of one revocation, and B's answers to `probe` (seconds after the logout,
    status)."""
    cookie = await new_session(a, user)
    if await probe(client, base_url(b), cookie) != 200:
        raise RuntimeError("instance B does not accept a fresh session")
    sent = await logout(client, base_url(a), cookie)
    answers: list[tuple[float, int]] = []
    while True:
        code = await probe(client, base_url(b), cookie)
        elapsed = time.perf_counter() - sent
        answers.append((elapsed, code))
        if code != 200:
            return elapsed, answers
        if elapsed > GIVE_UP:
            raise RuntimeError("instance B still accepts a revoked session")
        await asyncio.sleep(POLL_PAUSE)


async def measure(
    label: str, storage: str, session_store: str, trials: int, cache_ttl: float = 2.0
) -> Figures:
    prefix = run_prefix()
    try:
        with tempfile.TemporaryDirectory(prefix="authgate-revocation-") as folder:
            async with upstream() as upstream_url:
                config = build_config(
                    Path(folder), upstream_url, storage, session_store, cache_ttl, prefix
                )
                user = await add_user(config, f"bench-{secrets.token_hex(4)}")
                async with instances(config) as (a, b), aiohttp.ClientSession() as client:
                    samples = [(await trial(client, a, b, user))[0] for _ in range(trials)]
    finally:
        if session_store != "storage":
            await delete_redis_prefix(session_store, prefix)
    return Figures(label, tuple(samples))


async def redis_revocation(trials: int, postgres_admin: str, redis_url: str) -> Figures:
    """Revocation latency across two instances on PostgreSQL + Redis pub/sub (the target)."""
    async with scratch_database(postgres_admin) as postgres:
        return await measure("PostgreSQL + Redis pub/sub", postgres, redis_url, trials)


@asynccontextmanager
async def scratch_database(admin_url: str) -> AsyncIterator[str]:
    """A migrated database of this run, dropped at the end."""
    import asyncpg

    name = f"authgate_bench_{secrets.token_hex(4)}"
    base, _, _ = admin_url.rpartition("/")
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        await migrate(f"{base}/{name}")
        yield f"{base}/{name}"
    finally:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


async def main_async(args: argparse.Namespace) -> int:
    async with scratch_database(args.postgres_admin) as postgres:
        results = [
            await measure("PostgreSQL + Redis pub/sub", postgres, args.redis, args.trials),
            await measure(
                "PostgreSQL only (SQL polling 0.5 s)", postgres, "storage", args.sql_trials
            ),
        ]
    for figures in results:
        print(figures.line())
    redis_p99 = results[0].percentile(99)
    verdict = "meets" if redis_p99 <= 0.100 else "misses"
    print(f"target p99 <= 100 ms with Redis: {verdict} ({redis_p99 * 1000:.1f} ms)")
    return 0 if redis_p99 <= 0.100 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--sql-trials", type=int, default=20, help="SQL polling trials")
    parser.add_argument("--postgres-admin", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
