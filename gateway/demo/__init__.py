"""`authgate demo`: the gateway on embedded defaults in front of a built-in upstream."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from gateway.config.model import (
    Config,
    ListenAddress,
    RouteConfig,
    ServerConfig,
    TenantConfig,
)
from gateway.identity.passwords import PasswordHasher
from gateway.server import Extension, GatewayServer
from gateway.stores import User, new_id, open_stores
from gateway.supervisor import run_worker

DEMO_POLICY = Path(__file__).with_name("policy.yaml")
DEMO_HOSTS = ("localhost", "127.0.0.1", "[::1]")
DEMO_USER = "alice"
DEMO_PASSWORD = "alice"  # noqa: S105 - the demo's published credential


def demo_config(listen: ListenAddress, upstream_url: str, data_dir: Path) -> Config:
    routes = tuple(RouteConfig(host=host, upstream=upstream_url) for host in DEMO_HOSTS)
    tenant = TenantConfig(
        id="demo",
        name="authgate demo",
        domains=DEMO_HOSTS,
        policies=(DEMO_POLICY,),
        routes=routes,
    )
    return Config(
        source=data_dir / "demo.yaml",
        tenants=(tenant,),
        server=ServerConfig(listen=(listen,), dev_mode=True, workers=1),
        storage=f"sqlite:///{data_dir / 'authgate-demo.db'}",
    )


async def run_demo(listen: ListenAddress, extensions: Sequence[Extension]) -> None:
    """Start the demo upstream on a free loopback port, then the gateway in front of it."""
    runner = web.AppRunner(demo_upstream(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    with tempfile.TemporaryDirectory(prefix="authgate-demo-") as data_dir:
        config = demo_config(listen, f"http://127.0.0.1:{port}", Path(data_dir))
        await add_demo_user(config)

        def announce(server: GatewayServer) -> None:
            host, bound_port = server.addresses[0][:2]
            url = f"http://{host}:{bound_port}/"
            print(f"authgate demo: open {url} in your browser (Ctrl-C stops)", flush=True)
            print(
                f"authgate demo: {url}members/ asks you to sign in as"
                f" {DEMO_USER} / {DEMO_PASSWORD}",
                flush=True,
            )

        try:
            await run_worker(config, extensions, ready=announce)
        finally:
            await runner.cleanup()


async def add_demo_user(config: Config) -> None:
    stores = await open_stores(config)
    try:
        await stores.users.create(
            User(
                id=new_id(),
                tenant="demo",
                username=DEMO_USER,
                email="alice@example.test",
                display_name="Alice Demo",
                groups=("staff",),
                roles=(),
                disabled=False,
                password_hash=await PasswordHasher(config.passwords).hash(DEMO_PASSWORD),
                created=0.0,
                updated=0.0,
            )
        )
    finally:
        await stores.close()


def demo_upstream() -> web.Application:
    from gateway.demo.upstream import demo_upstream_app

    return demo_upstream_app()
