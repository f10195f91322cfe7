"""Real servers on loopback: an upstream that reports what it got, and the gateway in front."""

from __future__ import annotations

import dataclasses
import ipaddress
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from gateway.config.model import Config, ListenAddress, RouteConfig, ServerConfig, TenantConfig
from gateway.pipeline import Identity
from gateway.request_view import RequestView
from gateway.server import Extension, GatewayServer
from policies import Principal
from tests.integration.upstream_app import upstream_app

BYPASS_ALL = """
version: 1
default: deny
rules:
  - name: everything
    action: bypass
"""


@pytest.fixture
async def upstream() -> AsyncIterator[TestServer]:
    server = TestServer(upstream_app(), host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


def make_config(
    tmp_path: Path,
    upstream_url: str,
    *,
    policy: str = BYPASS_ALL,
    hosts: tuple[str, ...] = ("app.test",),
    route: dict[str, object] | None = None,
    trusted_proxies: tuple[str, ...] = (),
    **server: object,
) -> Config:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(policy)
    routes = tuple(RouteConfig(host=h, upstream=upstream_url, **(route or {})) for h in hosts)  # type: ignore[arg-type]
    tenant = TenantConfig(
        id="acme",
        name="Acme",
        domains=hosts,
        policies=(policy_file,),
        routes=routes,
    )
    server.setdefault("dev_mode", True)
    server_cfg = dataclasses.replace(
        ServerConfig(),
        listen=(ListenAddress("127.0.0.1", 0),),
        trusted_proxies=tuple(ipaddress.ip_network(n) for n in trusted_proxies),
        **server,  # type: ignore[arg-type]
    )
    return Config(
        source=tmp_path / "config.yaml",
        tenants=(tenant,),
        server=server_cfg,
        storage=f"sqlite:///{tmp_path / 'authgate.db'}",
    )


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


StartGateway = Callable[..., Awaitable[str]]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A module with `BOTH_PATHS = True` runs each of its gateway tests twice: on
    aiohttp's server alone (`server.fast_path: false`), and with the fast path
    (gateway/fast_path.py). Other modules run on the config their tests give: the
    defaults, fast path on, unless a test says otherwise."""
    if "server_path" in metafunc.fixturenames and getattr(metafunc.module, "BOTH_PATHS", False):
        metafunc.parametrize("server_path", ["full", "fast"], indirect=True)


@pytest.fixture
def server_path(request: pytest.FixtureRequest) -> str:
    return str(getattr(request, "param", "as configured"))


def on_path(config: Config, server_path: str) -> Config:
    """`config` on aiohttp's server alone ("full"), with the fast path ("fast"), or as
    it is (any other value)."""
    if server_path not in ("full", "fast"):
        return config
    fast = server_path == "fast"
    return dataclasses.replace(config, server=dataclasses.replace(config.server, fast_path=fast))


@pytest.fixture
async def start_gateway(server_path: str) -> AsyncIterator[StartGateway]:
    """Start a gateway for a config; returns its base URL. Stopped after the test."""
    running: list[GatewayServer] = []

    async def start(config: Config, extensions: tuple[Extension, ...] = ()) -> str:
        server = GatewayServer(on_path(config, server_path), extensions)
        await server.start()
        running.append(server)
        host, port = server.addresses[0]
        return f"http://{host}:{port}"

    yield start
    for server in running:
        await server.stop()


def app_url(base: str, path: str) -> str:
    """The gateway's address; the test sets the Host header separately."""
    return base + path


async def noop(request: web.Request) -> web.Response:
    return web.Response()


async def user_from_cookie(
    request: RequestView, tenant: TenantConfig, route: RouteConfig | None
) -> Identity:
    """A stand-in for the session layer, reading what it reads (the Cookie header; the
    fast path's requests have nothing else): the cookie `test_user` names the user."""
    cookies = (part.strip().partition("=") for part in request.headers.get("Cookie", "").split(";"))
    user = next((value for name, _, value in cookies if name == "test_user"), "")
    if not user:
        return Identity(principal=None)
    headers: CIMultiDict[str] = CIMultiDict(
        {"Remote-User": user, "Remote-Email": f"{user}@acme.test", "Remote-Groups": "staff,dev"}
    )
    principal = Principal(user=user, amr=("pwd",), auth_time=time.time())
    return Identity(principal=principal, upstream_headers=headers)
