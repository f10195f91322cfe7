"""The request pipeline, top to bottom as DESIGN.md section 2 draws it.

canonicalize → tenant → reserved prefix | route → credentials → principal →
context → decide → act. Each stage is a small function; the decision is data, so
the same steps serve the proxy and forward-auth. The path decided on is the path
forwarded: `canonical_path` once, `wire_path` of that same value upstream.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, NamedTuple

from aiohttp import web
from aiohttp.web_request import BaseRequest
from multidict import CIMultiDict

from gateway.canonical import (
    canonical_host,
    canonical_path,
    client_ip,
    forwarded_for_value,
    peer_is_trusted,
    split_target,
    wire_path,
)
from gateway.config.model import Config, RouteConfig, TenantConfig
from gateway.errors import BadRequest, StoreUnavailable
from gateway.forward_auth import login_redirect, original_request
from gateway.forwarding import FORWARDING, HOP_BY_HOP
from gateway.identity_headers import stripped_header_names
from gateway.metrics import Metrics
from gateway.policy_sets import PolicyRegistry
from gateway.proxy import (
    Forwarded,
    UpstreamError,
    UpstreamPool,
    UpstreamTarget,
    forward_http,
    forward_websocket,
    is_websocket_upgrade,
)
from gateway.request_log import RequestObserver, note_decision, note_target
from gateway.request_view import RequestView
from gateway.reserved import ReservedRequest, ReservedRoutes
from gateway.responses import PageRenderer, error_response, wants_json
from gateway.tenant_store import TenantDirectory
from gateway.tenants import TenantIndex
from policies import Action, Decision, Principal, RequestContext
from policies.model import IPAddress

log = logging.getLogger("authgate.pipeline")

# The RequestContext a decision was made on, kept on the request for the challenge hook.
CONTEXT_KEY = web.RequestKey("authgate.context", RequestContext)


class RequestIds:
    """Request ids unique across workers and instances without a syscall per request:
    a random prefix drawn in each process (after the fork), then a counter. 24 hex
    characters, like the random ids they replace; they name a request, they are no
    secret."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._prefix = os.urandom(6).hex()
        self._counter = itertools.count()

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter) & 0xFFFFFFFFFFFF:012x}"


_REQUEST_IDS = RequestIds()
# A forked worker draws its own prefix, or two workers would number alike.
os.register_at_fork(after_in_child=_REQUEST_IDS.reset)
next_request_id = _REQUEST_IDS.next


@dataclass(frozen=True)
class Identity:
    """Who the request is, and what the pipeline must do about it before forwarding."""

    principal: Principal | None
    upstream_headers: CIMultiDict[str] | None = None  # identity headers for the upstream
    strip_headers: frozenset[str] = frozenset()  # request headers that carried credentials
    owes_second_factor: bool = False  # an unusual sign-in not yet confirmed (step-up)
    # Whether this identity would still be found, the same, for the same request now;
    # None: it must be looked up again every time. (The fast path reuses a decision
    # only while this says yes.)
    still_valid: Callable[[], bool] | None = None


# Turns a request into an Identity; the identity layer installs the real one.
Identify = Callable[[RequestView, TenantConfig, RouteConfig | None], Awaitable[Identity]]


def always() -> bool:
    return True


# Nobody, from no credential: the same request bytes are nobody again, whenever they come.
NOBODY = Identity(principal=None, still_valid=always)


async def anonymous(
    request: RequestView, tenant: TenantConfig, route: RouteConfig | None
) -> Identity:
    return NOBODY


class Allowed(NamedTuple):
    """A request its route lets through: where it goes and what goes with it. (A
    tuple: made on every forwarded request, at a third of a frozen dataclass's cost.)"""

    tenant: TenantConfig
    route: RouteConfig
    host: str
    path: str
    ip: IPAddress | None
    target: UpstreamTarget
    forwarded: Forwarded
    # The identity's `still_valid`: while it says yes, the same request bytes from the
    # same peer would be decided the same (None: not to be reused).
    reusable: Callable[[], bool] | None = None


# How to answer a request that is not forwarded (reserved path, unknown host, no route,
# not allowed), given the full request.
Answer = Callable[[BaseRequest], Awaitable[web.StreamResponse]]


class Checked(NamedTuple):
    """A forward-auth check's answer, and what it rests on: while `reusable` says yes,
    the same request bytes from the same peer would be answered the same (None: not to
    be reused)."""

    page: web.Response
    reusable: Callable[[], bool] | None = None


class HeadersOnly:
    """An answer that reads nothing of a request but what deciding reads (its line, its
    headers, its peer): a forward-auth check. The fast path gives it itself, instead of
    handing the request to aiohttp's server to be read and resolved a second time."""

    __slots__ = ("check",)

    def __init__(self, check: Callable[[RequestView], Awaitable[Checked]]) -> None:
        self.check = check

    async def __call__(self, request: BaseRequest) -> web.Response:
        return (await self.check(request)).page


# Acts on LOGIN / SECOND_FACTOR / REAUTH / DENY; the identity layer installs the
# interstitial redirects. The default answers 401/403 as the policy issue specifies.
# Its last argument is the original URL in canonical form (the return address).
Challenge = Callable[
    ["Pipeline", BaseRequest, TenantConfig, Decision, str, str], Awaitable[web.StreamResponse]
]


async def plain_challenge(
    pipeline: Pipeline,
    request: BaseRequest,
    tenant: TenantConfig,
    decision: Decision,
    request_id: str,
    original_url: str,
) -> web.StreamResponse:
    """DENY → 403; anything else → 401 with WWW-Authenticate (what programs get)."""
    if decision.action is Action.DENY:
        return pipeline.error(request, 403, tenant, "access denied by policy", request_id)
    return pipeline.error(
        request,
        401,
        tenant,
        "authentication required"
        if decision.action is Action.LOGIN
        else "a stronger or more recent authentication is required",
        request_id,
        headers={"WWW-Authenticate": 'Bearer realm="authgate"'},
    )


class Pipeline:
    """One worker's request handler, built once at start-up from the config."""

    def __init__(
        self,
        config: Config,
        policies: PolicyRegistry,
        upstreams: UpstreamPool,
        pages: PageRenderer,
        reserved: ReservedRoutes,
        *,
        identify: Identify = anonymous,
        challenge: Challenge = plain_challenge,
        now: Callable[[], float] = time.time,
        locate_country: Callable[[IPAddress | None], str | None] | None = None,
        tenants: TenantDirectory | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics(config)
        self.observer = RequestObserver(config, self.metrics)
        # Requests the fast path began and handed to aiohttp's server, by connection:
        # when each began and the id it was given, so that the one request is timed and
        # logged as one (weak: gone with the connection, if aiohttp never serves it).
        self.begun: weakref.WeakKeyDictionary[Any, tuple[float, str]] = weakref.WeakKeyDictionary()
        # A TenantDirectory is live (database tenants swapped in while serving); without
        # one, the config's tenants are all there is.
        self.tenants: TenantDirectory | TenantIndex = (
            tenants if tenants is not None else TenantIndex(config.tenants)
        )
        self.policies = policies
        self._policy_decide = tenants.decide if tenants is not None else policies.decide
        self.upstreams = upstreams
        self.pages = pages
        self.reserved = reserved
        self.identify = identify
        self.challenge = challenge
        self.now = now
        # GeoIP costs ~12 µs a request even cached: only for tenants whose rules use it.
        self._locate_country = locate_country
        self.trusted_proxies = config.server.trusted_proxies
        self._path_parameters = config.server.path_parameters
        # Never forwarded from the client: hop-by-hop, X-Forwarded-* (we write them),
        # every identity header name, and the request id (ours to set).
        self._drop = HOP_BY_HOP | FORWARDING | stripped_header_names(config) | {"x-request-id"}
        # An open WebSocket is decided on again this often (its session revoked, its user
        # disabled, the policy tightened): never later than a cached session could be.
        self._socket_recheck = min(max(config.sessions.cache_ttl, 1.0), 5.0)
        self._targets = {
            route: UpstreamTarget.from_route(route, upstreams)
            for t in config.tenants
            for route in t.routes
        }

    def error(
        self,
        request: RequestView,
        status: int,
        tenant: TenantConfig | None,
        reason: str,
        request_id: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        # Error pages are pages like the login page: the same CSP, framing, referrer and
        # HSTS headers when the renderer knows them (login_ui's BrandedPages does).
        page_headers = getattr(self.pages, "security_headers", None)
        if page_headers is not None:
            headers = {**dict(page_headers(tenant)), **(headers or {})}
        return error_response(
            request,
            status,
            pages=self.pages,
            tenant=tenant,
            reason=reason,
            request_id=request_id,
            headers=headers,
        )

    def request_id(self, request: RequestView, peer_trusted: bool) -> str:
        if peer_trusted:
            given = request.headers.get("X-Request-Id", "")
            if 0 < len(given) <= 128 and given.isascii() and given.isprintable():
                return given
        return next_request_id()

    def _begun_on_fast_path(self, request: BaseRequest) -> tuple[float, str] | None:
        """When the fast path began this request and the id it gave it, if it did."""
        transport = request.transport  # None once the client has gone
        if not self.begun or transport is None:
            return None
        return self.begun.pop(transport, None)

    async def __call__(self, request: BaseRequest) -> web.StreamResponse:
        begun = self._begun_on_fast_path(request)
        started = time.perf_counter() if begun is None else begun[0]
        peer = request.remote
        peer_trusted = peer_is_trusted(peer, self.trusted_proxies)
        request_id = self.request_id(request, peer_trusted) if begun is None else begun[1]
        # Metrics, access log and span see every answer, errors included; a cancelled
        # request (client gone) is recorded as 499.
        token = self.observer.start(request_id, request.method, started)
        response: web.StreamResponse | None = None
        try:
            try:
                response = await self._handle(request, peer, peer_trusted, request_id)
            except Exception as exc:
                response = self.failure(request, exc, request_id)
            return response
        finally:
            self.observer.finish(token, response)

    def failure(self, request: RequestView, exc: Exception, request_id: str) -> web.Response:
        """The answer to a request whose handling raised. Fail closed: whatever went
        wrong, the request does not pass."""
        if isinstance(exc, BadRequest):
            return self.error(request, exc.status, None, exc.reason, request_id)
        if isinstance(exc, StoreUnavailable):
            # The driver's error class only (OutOfMemoryError, ConnectionError, …): enough
            # to tell a full Redis from a dead one, and no message that might hold data.
            cause = type(exc.__cause__ or exc).__name__
            log.error(
                "store unavailable (%s); failing closed", cause, extra={"request_id": request_id}
            )
            return self.error(request, 503, None, "temporarily unavailable", request_id)
        log.error("unhandled error", exc_info=exc, extra={"request_id": request_id})
        return self.error(request, 500, None, "internal error", request_id)

    async def _handle(
        self, request: BaseRequest, peer: str | None, peer_trusted: bool, request_id: str
    ) -> web.StreamResponse:
        outcome = await self.resolve(request, peer, peer_trusted, request_id)
        if not isinstance(outcome, Allowed):
            return await outcome(request)
        try:
            if outcome.route.websockets and is_websocket_upgrade(request):
                tenant, route, host, path, ip = (
                    outcome.tenant,
                    outcome.route,
                    outcome.host,
                    outcome.path,
                    outcome.ip,
                )

                async def still_allowed() -> bool:
                    return await self._still_allowed(request, tenant, route, host, path, ip)

                return await forward_websocket(
                    request,
                    outcome.target,
                    route,
                    outcome.forwarded,
                    still_allowed,
                    self._socket_recheck,
                )
            return await forward_http(request, outcome.target, outcome.route, outcome.forwarded)
        except UpstreamError as exc:
            return self.error(request, exc.status, outcome.tenant, exc.reason, request_id)

    async def resolve(
        self,
        request: RequestView,
        peer: str | None,
        peer_trusted: bool,
        request_id: str,
        *,
        final: bool = True,
    ) -> Allowed | Answer:
        """Canonicalize, find the tenant and route, decide: either where an allowed
        request goes and what goes with it, or how to answer it instead. Not `final`:
        an answer (other than `HeadersOnly`, which counts when it runs) will not be
        given here but the request resolved again by the full server (the fast path
        hands it over), so it is not counted now."""
        # canonicalize
        host_header = request.headers.get("Host")
        if not host_header:
            raise BadRequest("missing Host header")
        host = canonical_host(host_header)
        raw_path, query = split_target(request.raw_path)
        path = canonical_path(raw_path, path_parameters=self._path_parameters)
        xff = request.headers.getall("X-Forwarded-For", ()) if peer_trusted else ()
        ip = client_ip(peer, xff, self.trusted_proxies)
        note_target(host, path)

        # reserved prefix: ours, never forwarded. Health, readiness, metrics and
        # forward-auth answer on any host (probes and proxies use addresses).
        suffix = self.reserved.suffix_of(path)
        if suffix == "/verify":
            return HeadersOnly(
                partial(self._forward_auth, peer_trusted=peer_trusted, ip=ip, request_id=request_id)
            )
        tenant = self.tenants.tenant_for_host(host)
        if suffix is not None:
            handler = self.reserved.handler(suffix, tenant is not None)
            if handler is None:
                if tenant is None:
                    return self._error(421, None, "this host is not served here", request_id)
                return self._error(404, tenant, "no such page", request_id)
            proto = self._proto(request, peer_trusted)

            def reserved(full: BaseRequest) -> Awaitable[web.StreamResponse]:
                return handler(
                    ReservedRequest(
                        full, tenant, host, path, suffix, str(ip), request_id, proto, host_header
                    )
                )

            return reserved

        # tenant: an unknown host never reaches any upstream
        if tenant is None:
            return self._error(421, None, "this host is not served here", request_id)
        route = self.tenants.route_for(tenant, host, path)
        if route is None:
            return self._error(404, tenant, "no route for this address", request_id)

        # credentials → principal → context → decide
        identity, decision = await self._decide(
            request, tenant, route, host, path, request.method, ip
        )
        if final or decision.action is Action.ALLOW:
            self._count_api_key(tenant, identity)
        if decision.action is not Action.ALLOW:
            original = f"{self._proto(request, peer_trusted)}://{host_header}{wire_path(path)}"
            if query:
                original = f"{original}?{query}"

            def challenge(full: BaseRequest) -> Awaitable[web.StreamResponse]:
                return self.challenge(self, full, tenant, decision, request_id, original)

            return challenge

        # act: forward exactly the path that was decided on
        identity_headers = identity.upstream_headers
        if identity_headers is None:
            identity_headers = CIMultiDict()
        identity_headers["X-Request-Id"] = request_id
        forwarded = Forwarded(
            wire_path=wire_path(path),
            query=query,
            host_header=host_header,
            proto=self._proto(request, peer_trusted),
            forwarded_for=forwarded_for_value(xff, peer or "", peer_trusted),
            drop=self._drop,
            identity=identity_headers,
            strip=identity.strip_headers,
        )
        target = self._targets.get(route)
        if target is None:  # a route of a database tenant, added while serving
            target = self._targets.setdefault(
                route, UpstreamTarget.from_route(route, self.upstreams)
            )
        return Allowed(tenant, route, host, path, ip, target, forwarded, identity.still_valid)

    def _count_api_key(self, tenant: TenantConfig, identity: Identity) -> None:
        if "authorization" in identity.strip_headers:  # an API key was presented
            self.metrics.api_key(tenant.id, identity.principal is not None)

    def _error(
        self, status: int, tenant: TenantConfig | None, reason: str, request_id: str
    ) -> Answer:
        async def answer(full: BaseRequest) -> web.StreamResponse:
            return self.error(full, status, tenant, reason, request_id)

        return answer

    async def _still_allowed(
        self,
        request: BaseRequest,
        tenant: TenantConfig,
        route: RouteConfig,
        host: str,
        path: str,
        ip: IPAddress | None,
    ) -> bool:
        """Whether the request that opened a WebSocket would still be let through now.
        A store that cannot answer means no (fail closed)."""
        try:
            _, decision = await self._decide(
                request, tenant, route, host, path, request.method, ip, observe=False
            )
        except StoreUnavailable:
            return False
        return decision.action is Action.ALLOW

    async def _decide(
        self,
        request: RequestView,
        tenant: TenantConfig,
        route: RouteConfig | None,
        host: str,
        path: str,
        method: str,
        ip: IPAddress | None,
        *,
        observe: bool = True,
    ) -> tuple[Identity, Decision]:
        """`observe`: count it in the metrics and the request's log (not for re-checks)."""
        started = time.perf_counter()
        identity = await self.identify(request, tenant, route)
        country = None
        if self._locate_country is not None and self.policies.uses_countries(tenant.id):
            country = self._locate_country(ip)
        context = RequestContext(
            host=host,
            path=path,
            method=method,
            ip=ip,
            country=country,
            principal=identity.principal,
            now=self.now(),
        )
        if observe:
            request[CONTEXT_KEY] = context  # what the challenge hook audits a denial with
        decision = self._policy_decide(tenant.id, context)
        if identity.owes_second_factor and decision.action is Action.ALLOW:
            # After an unusual sign-in the session counts for nothing until the second
            # factor: only what an anonymous request may reach passes (as anonymous).
            anonymous = self._policy_decide(tenant.id, replace(context, principal=None))
            if anonymous.action is Action.ALLOW:
                identity = Identity(
                    principal=None,
                    strip_headers=identity.strip_headers,
                    upstream_headers=identity.upstream_headers,
                )
                decision = anonymous
            else:
                decision = Decision(
                    Action.SECOND_FACTOR,
                    decision.rule,
                    "a second factor is required after an unusual sign-in",
                    (),
                )
        if observe:
            note_decision(tenant, route, decision, time.perf_counter() - started)
        return identity, decision

    async def _forward_auth(
        self, request: RequestView, *, peer_trusted: bool, ip: IPAddress | None, request_id: str
    ) -> Checked:
        if not peer_trusted:
            return Checked(
                self.error(
                    request,
                    403,
                    None,
                    "forward-auth callers must be listed in server.trusted_proxies",
                    request_id,
                )
            )
        original = original_request(request, self._path_parameters)
        tenant = self.tenants.tenant_for_host(original.host)
        if tenant is None:
            return Checked(
                self.error(request, 403, None, "this host is not served here", request_id)
            )
        route = self.tenants.route_for(tenant, original.host, original.path)
        identity, decision = await self._decide(
            request, tenant, route, original.host, original.path, original.method, ip
        )
        self._count_api_key(tenant, identity)
        if decision.action is Action.ALLOW:
            # The identity headers only: the rewritten Cookie header is for an upstream
            # we forward to, and has no place in an answer to the proxy in front.
            headers = CIMultiDict(
                (name, value)
                for name, value in (identity.upstream_headers or {}).items()
                if name.lower() != "cookie"
            )
            return Checked(web.Response(status=200, headers=headers), identity.still_valid)
        if decision.action is Action.DENY:
            return Checked(self.error(request, 403, tenant, "access denied by policy", request_id))
        if original.redirect_capable and not wants_json(request):
            # Made of the request's bytes alone: as reusable as a pass for that identity.
            return Checked(login_redirect(original, self.reserved.prefix), identity.still_valid)
        return Checked(
            self.error(
                request,
                401,
                tenant,
                "authentication required",
                request_id,
                headers={"WWW-Authenticate": 'Bearer realm="authgate"'},
            )
        )

    def _proto(self, request: RequestView, peer_trusted: bool) -> str:
        if peer_trusted:
            given = request.headers.get("X-Forwarded-Proto", "").lower()
            if given in ("http", "https"):
                return given
        return "https" if request.secure else "http"
