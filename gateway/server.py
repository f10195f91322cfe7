"""One worker: the pipeline on aiohttp's low-level server, and its resources' lifetimes.

The low-level `web.Server` skips aiohttp's router and middleware chain: the
pipeline is the whole application, and it does its own (stricter) path handling.
Extensions (login_ui, identity) plug in through `install` callables that see the
`GatewayServer` before it starts: they register reserved routes and hooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from gateway.audit import Event
from gateway.config.model import Config, ListenAddress
from gateway.fast_path import FastServer
from gateway.fast_path import unavailable_reason as fast_path_unavailable
from gateway.geo import GeoService
from gateway.metrics import Metrics
from gateway.pipeline import Challenge, Identify, Pipeline, anonymous, plain_challenge
from gateway.policy_sets import PolicyRegistry
from gateway.proxy import UpstreamPool
from gateway.reserved import ReservedRequest, ReservedRoutes
from gateway.responses import PageRenderer, PlainPages
from gateway.tenant_store import TenantDirectory
from gateway.watch import start_watching
from policies import PolicySet

if TYPE_CHECKING:
    from gateway.runtime import Runtime

log = logging.getLogger("authgate.server")

ReadinessCheck = Callable[[], Awaitable[bool]]
Cleanup = Callable[[], Awaitable[None]]


@dataclass
class Hooks:
    """What extensions may set before the server starts."""

    pages: PageRenderer = field(default_factory=PlainPages)
    identify: Identify = anonymous
    challenge: Challenge = plain_challenge
    readiness: list[ReadinessCheck] = field(default_factory=list)
    startup: list[Cleanup] = field(default_factory=list)
    cleanup: list[Cleanup] = field(default_factory=list)


Extension = Callable[["GatewayServer"], None]


def _json(status: int, payload: dict[str, object]) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(payload),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


class GatewayServer:
    """Everything one worker process serves, started and stopped as a unit."""

    def __init__(
        self,
        config: Config,
        extensions: Sequence[Extension] = (),
        last_good_policies: Mapping[str, PolicySet] | None = None,
    ) -> None:
        self.config = config
        self.policies = PolicyRegistry(
            config.tenants,
            last_good_policies,
            geoip_configured=config.geoip.database is not None,
        )
        # One memory-mapped reader per worker; geo features are off without a database.
        self.geo = GeoService.open(config.geoip)
        self.reserved = ReservedRoutes(config.server.prefix)
        # The live tenants: the config's, plus the database's once the identity
        # extension starts refreshing it.
        self.tenants = TenantDirectory(config.tenants, self.policies)
        self.hooks = Hooks()
        self.runtime: Runtime | None = None  # set by the identity extension at start
        self.reserved.add("/health", self._health, any_host=True)
        self.reserved.add("/ready", self._ready, any_host=True)
        self.metrics = Metrics(config)
        self.reserved.add("/metrics", self.metrics.handle, any_host=True)
        for extend in extensions:
            extend(self)
        self.pipeline: Pipeline | None = None
        self._runner: web.ServerRunner | None = None
        self._fast: FastServer | None = None
        self.addresses: list[tuple[str, int]] = []

    async def _health(self, req: ReservedRequest) -> web.StreamResponse:
        return _json(200, {"status": "ok"})

    async def _ready(self, req: ReservedRequest) -> web.StreamResponse:
        results = await asyncio.gather(
            *(check() for check in self.hooks.readiness), return_exceptions=True
        )
        ready = all(result is True for result in results)
        return _json(200 if ready else 503, {"status": "ready" if ready else "not ready"})

    async def start(self, sockets: Sequence[socket.socket] | None = None) -> None:
        """Bind (or adopt `sockets`) and serve. Addresses actually bound land in `addresses`."""
        for hook in self.hooks.startup:
            await hook()
        server_cfg = self.config.server
        upstreams = UpstreamPool(self.metrics.upstream_connections)
        self.hooks.cleanup.append(upstreams.close)
        self.pipeline = Pipeline(
            self.config,
            self.policies,
            upstreams,
            self.hooks.pages,
            self.reserved,
            identify=self.hooks.identify,
            challenge=self.hooks.challenge,
            # Policies compare `auth_time` (stamped on the shared clock) with this.
            now=self.runtime.clock.now if self.runtime is not None else time.time,
            metrics=self.metrics,
            locate_country=self.geo.country if self.geo.enabled else None,
            tenants=self.tenants,
        )
        max_body = server_cfg.max_body_size

        def make_request(
            message: RawRequestMessage,
            payload: StreamReader,
            protocol: RequestHandler,
            writer: AbstractStreamWriter,
            task: asyncio.Task[None],
        ) -> BaseRequest:
            # Bounds what our own endpoints read (forms); proxied bodies are streamed.
            return BaseRequest(
                message, payload, protocol, writer, task, task.get_loop(), client_max_size=max_body
            )

        lowlevel = web.Server(
            self.pipeline,
            request_factory=make_request,
            access_log=None,
            max_line_size=server_cfg.max_header_size,
            max_field_size=server_cfg.max_header_size,
            # aiohttp has one timer for an idle keep-alive connection and for a request
            # head that is still arriving (slowloris): the shorter of our two bounds.
            keepalive_timeout=min(server_cfg.keepalive_timeout, server_cfg.client_timeout),
            handler_cancellation=True,
        )
        self._runner = web.ServerRunner(
            lowlevel, shutdown_timeout=server_cfg.shutdown_timeout, handle_signals=False
        )
        await self._runner.setup()
        unavailable = fast_path_unavailable() if server_cfg.fast_path else None
        if unavailable is not None:
            log.warning(
                "the fast path is off: %s. Every request is served on aiohttp's server"
                " (server.fast_path: false says so and silences this)",
                unavailable,
            )
        fast_path = server_cfg.fast_path and unavailable is None
        if fast_path:
            self._fast = FastServer(
                self.pipeline,
                lowlevel,
                max_line=server_cfg.max_header_size,
                max_field=server_cfg.max_header_size,
                idle_timeout=min(server_cfg.keepalive_timeout, server_cfg.client_timeout),
            )
            await self._fast.listen(sockets, server_cfg.listen)
            # A decision reused after the tenants changed could be one they no longer make.
            self.tenants.on_replace.append(self._fast.plans.clear)
            self.addresses = [sock.getsockname()[:2] for sock in self._fast.sockets]
        else:
            sites: list[web.BaseSite] = []
            if sockets is not None:
                sites = [web.SockSite(self._runner, sock) for sock in sockets]
            else:
                sites = [
                    web.TCPSite(self._runner, addr.host, addr.port, reuse_port=True)
                    for addr in server_cfg.listen
                ]
            for site in sites:
                await site.start()
            self.addresses = [
                sock.getsockname()[:2]
                for site in sites
                for sock in (site._server.sockets if site._server else ())  # type: ignore[attr-defined]
            ]
        self.hooks.cleanup.append(
            start_watching(self.policies.files, self.reload, since=self.policies.read_as)
        )
        flusher = asyncio.ensure_future(self.metrics.flush_forever())

        async def stop_flushing() -> None:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            self.metrics.flush()

        self.hooks.cleanup.append(stop_flushing)

    def reload(self) -> bool:
        """Re-read the policy files; keeps the old policies when the new ones are bad."""
        error = self.policies.reload()
        audit = self.runtime.audit if self.runtime is not None else None
        if error is not None:
            for problem in error.problems:
                log.error("policy reload failed: %s", problem)
            if audit is not None:
                audit.record(
                    Event.POLICY_RELOAD_FAILED,
                    outcome="kept previous policies",
                    details={"problems": "; ".join(str(p) for p in error.problems)[:2000]},
                )
            self.metrics.policy_reload(ok=False)
            return False
        log.info("policies reloaded")
        if self._fast is not None:
            self._fast.plans.clear()  # decided on the old policies
        self.metrics.policy_reload(ok=True)
        if audit is not None:
            audit.record(Event.POLICY_RELOADED, outcome="ok")
        return True

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (bounded), then release resources."""
        # The fast path's connections and those it handed to aiohttp drain side by side,
        # within the one shutdown_timeout.
        draining = []
        if self._fast is not None:
            draining.append(self._fast.stop(self.config.server.shutdown_timeout))
            self._fast = None
        if self._runner is not None:
            draining.append(self._runner.cleanup())
        # Both run to their end, and a failure of either still releases the resources.
        for outcome in await asyncio.gather(*draining, return_exceptions=True):
            if isinstance(outcome, Exception):
                log.error("error while draining at shutdown", exc_info=outcome)
        self._runner = None
        for hook in reversed(self.hooks.cleanup):
            try:
                await hook()
            except Exception:
                log.exception("error while releasing a resource at shutdown")
        self.geo.close()


def listen_socket(address: ListenAddress) -> socket.socket:
    """A listening socket with SO_REUSEPORT, so several workers share the port."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((address.host, address.port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock
