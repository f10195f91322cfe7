"""The identity services of one worker, opened at start and closed at stop.

`identity_extension` is what `authgate serve` installs: it opens the stores,
starts sessions (with revocation fan-out) and the JWT signer, and plugs the
`identify` and `challenge` stages into the pipeline. The pages people see are
login_ui's, installed after this one and reaching these services through
`server.runtime`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from aiohttp.web_request import BaseRequest

from gateway.audit import AuditTrail, Event
from gateway.clock import SharedClock
from gateway.config.model import Config, TenantConfig
from gateway.csrf import CsrfTokens
from gateway.errors import ConfigError
from gateway.geo import GeoService, SignInGuard, SignInHistory
from gateway.identify import Identifier
from gateway.identity.passwords import PasswordHasher
from gateway.metrics import Metrics, session_counter, timed_stores
from gateway.pipeline import CONTEXT_KEY, Pipeline, plain_challenge
from gateway.redirects import login_url
from gateway.regulation import Regulator
from gateway.reserved import ReservedRequest
from gateway.responses import wants_json
from gateway.secretbox import SecretBox, load_secret_box
from gateway.server import GatewayServer
from gateway.sessions import SessionManager, fingerprint
from gateway.signing import REFRESH_INTERVAL, JwtSigner, SigningError
from gateway.sso import SqlSsoCodes, SsoCodes
from gateway.stores import (
    REVOCATIONS,
    EventBus,
    Stores,
    open_database,
    open_stores,
    user_sessions_revoked,
)
from gateway.tenant_store import TenantRefresher, TenantStore
from gateway.users_file import LayeredUserStore, load_users_files, with_users_files
from gateway.watch import Signature, signatures, start_watching
from policies import Action, Decision

log = logging.getLogger("authgate.runtime")

PRUNE_SECONDS = 3600.0


@dataclass
class Runtime:
    config: Config
    stores: Stores
    box: SecretBox
    sessions: SessionManager
    hasher: PasswordHasher
    signer: JwtSigner
    csrf: CsrfTokens
    identifier: Identifier
    tenant_store: TenantStore
    sso: SsoCodes
    audit: AuditTrail
    regulator: Regulator
    geo: GeoService
    sign_ins: SignInGuard
    metrics: Metrics
    # The store's time, which every instance stamps and compares shared state with.
    clock: SharedClock
    _extra_closers: tuple[Callable[[], Awaitable[None]], ...] = ()

    async def close(self) -> None:
        await self.sessions.stop()
        await self.identifier.stop()
        await self.audit.stop()
        for close in self._extra_closers:
            await close()
        await self.stores.close()


async def open_runtime(
    config: Config, geo: GeoService | None = None, metrics: Metrics | None = None
) -> Runtime:
    box = load_secret_box(config)
    # Taken before the users files are read: an edit made while the rest opens (a user
    # disabled at that moment) is still one the watcher follows.
    users_files_read_as = signatures(users_file_paths(config))
    metrics = metrics if metrics is not None else Metrics(config)
    # Shared timestamps are stamped and compared on the store's clock (issue #8): the
    # stores get it before it has been read, and it is read before anything serves.
    clock = SharedClock(None, "local", on_offset=metrics.clock_offset)
    stores = with_users_files(await open_stores(config, clock=clock.now), config.tenants)
    layered = stores.users if isinstance(stores.users, LayeredUserStore) else None
    stores = timed_stores(stores, metrics)  # latency and errors of every store call
    try:
        clock.attach(stores.time_source, stores.time_reference)
        await clock.sample()
        sessions = SessionManager(
            stores.sessions,
            stores.users,
            stores.events,
            config.sessions,
            tenants=config.tenants,
            now=clock.now,
        )
        await sessions.start()
        signer = JwtSigner(stores.keys, box, issuer="authgate", now=clock.now)
        await signer.start()
        identifier = Identifier(
            config, sessions, stores.users, stores.apikeys, signer, now=clock.now
        )
        await identifier.start(stores.events)
    except BaseException:
        await stores.close()
        raise
    # The stores keep their database to themselves; tenants and single-use codes kept in
    # the database get their own connection to the same storage.
    db = await open_database(config)
    # Codes live beside the sessions: in Redis when they are, else in the database.
    sso_codes = stores.sso_codes if stores.sso_codes is not None else SqlSsoCodes(db)
    geo = geo if geo is not None else GeoService(config.geoip, None)
    audit = AuditTrail(stores.audit, retention=config.audit.retention)
    await audit.start()
    closers: tuple[Callable[[], Awaitable[None]], ...] = (db.close,)
    if layered is not None:
        closers += (_follow_users_files(config, layered, stores.events, users_files_read_as),)
    return Runtime(
        config=config,
        stores=stores,
        box=box,
        sessions=sessions,
        hasher=PasswordHasher(config.passwords),
        signer=signer,
        csrf=CsrfTokens(box.derive("authgate csrf v1"), now=clock.now),
        identifier=identifier,
        tenant_store=TenantStore(db, config.tenants),
        sso=SsoCodes(sso_codes, stores.sessions, stores.users, now=clock.now),
        audit=audit,
        regulator=Regulator(stores.limiter, config.regulation, audit=audit, now=clock.now),
        geo=geo,
        sign_ins=SignInGuard(geo, SignInHistory(db) if geo.enabled else None),
        metrics=metrics,
        clock=clock,
        _extra_closers=closers,
    )


def users_file_paths(config: Config) -> tuple[Path, ...]:
    return tuple(t.users_file for t in config.tenants if t.users_file is not None)


def _follow_users_files(
    config: Config,
    layered: LayeredUserStore,
    events: EventBus,
    read_as: Sequence[Signature],
) -> Callable[[], Awaitable[None]]:
    """Read the users files again when they change after they had the signatures
    `read_as` (a user disabled, a group taken away takes effect without a restart), and
    drop the changed users' cached sessions and keys on every instance. A file made
    invalid keeps the users read before."""
    async def reload() -> None:
        try:
            files = load_users_files(config.tenants)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("users file reload failed, keeping the users read before: %s", problem)
            return
        for user in layered.replace(files):
            try:
                await events.publish(REVOCATIONS, user_sessions_revoked(user.tenant, user.id))
            except Exception:
                log.exception("could not publish a users-file change")

    return start_watching(users_file_paths(config), reload, since=read_as)


async def _follow_keys(signer: JwtSigner) -> None:
    """Read the signing keys every REFRESH_INTERVAL, on a clock of its own: a rotated-in
    key starts signing PUBLISH_AHEAD after it was added, which is safe only while every
    instance reads the keys this often (nothing else may delay the reads)."""
    loop = asyncio.get_running_loop()
    due = loop.time()
    while True:
        due += REFRESH_INTERVAL
        await asyncio.sleep(max(0.0, due - loop.time()))
        try:
            await signer.refresh()
        except Exception:
            log.exception("could not read the JWT signing keys; will retry")
        due = max(due, loop.time() - REFRESH_INTERVAL)  # after a stall, no burst of reads


async def _prune(runtime: Runtime) -> None:
    """Drop expired sessions, old audit rows and spent SSO codes, once an hour."""
    while True:
        await asyncio.sleep(PRUNE_SECONDS)
        try:
            await runtime.stores.sessions.prune_expired(runtime.clock.now())
            await runtime.audit.prune()  # rows older than audit.retention
            await runtime.sso.prune()
        except Exception:
            log.exception("pruning failed; will retry")


async def interstitial_challenge(
    pipeline: Pipeline,
    request: BaseRequest,
    tenant: TenantConfig,
    decision: Decision,
    request_id: str,
    original_url: str,
) -> web.StreamResponse:
    """DENY → 403 page; otherwise browsers go to the interstitial, programs get 401."""
    if decision.action is Action.DENY or wants_json(request):
        return await plain_challenge(pipeline, request, tenant, decision, request_id, original_url)
    prefix = pipeline.reserved.prefix
    if decision.action is Action.SECOND_FACTOR:
        location = login_url(prefix, original_url).replace("/login", "/mfa", 1)
    elif decision.action is Action.REAUTH:
        location = login_url(prefix, original_url) + "&reauth=1"
    else:
        location = login_url(prefix, original_url)
    return web.Response(status=302, headers={"Location": location, "Cache-Control": "no-store"})


def audit_denial(
    audit: AuditTrail, request: BaseRequest, tenant: TenantConfig, decision: Decision
) -> None:
    """An `access_denied` row from the context the policy decided on (queued, never blocks)."""
    context = request.get(CONTEXT_KEY)
    principal = context.principal if context is not None else None
    audit.record(
        Event.ACCESS_DENIED,
        tenant=tenant.id,
        user=principal.user if principal is not None else None,
        ip=str(context.ip) if context is not None and context.ip is not None else None,
        country=context.country if context is not None else None,
        user_agent=request.headers.get("User-Agent"),
        session_fp=fingerprint(principal.session_id)
        if principal is not None and principal.session_id
        else None,
        rule=decision.rule,
        outcome="denied",
        details={"host": context.host, "path": context.path[:512], "method": context.method}
        if context is not None
        else None,
    )


def identity_extension(server: GatewayServer) -> None:
    """Plug sessions, API keys, identity headers and the JWKS into the server."""
    tasks: list[asyncio.Task[None]] = []
    refreshers: list[TenantRefresher] = []

    async def startup() -> None:
        runtime = await open_runtime(server.config, server.geo, server.metrics)
        server.metrics.count_active_sessions(
            session_counter(runtime.stores.sessions, (t.id for t in server.config.tenants))
        )
        server.runtime = runtime
        server.hooks.identify = runtime.identifier
        server.hooks.readiness.append(runtime.stores.ping)
        server.hooks.readiness.append(runtime.clock.ready)
        tasks.append(asyncio.ensure_future(runtime.clock.follow()))
        tasks.append(asyncio.ensure_future(_follow_keys(runtime.signer)))
        tasks.append(asyncio.ensure_future(_prune(runtime)))
        # Database tenants are served without a restart: polled, and at once on an event.
        refresher = TenantRefresher(server.tenants, runtime.tenant_store, runtime.stores.events)
        await refresher.start()
        refreshers.append(refresher)

    async def cleanup() -> None:
        for refresher in refreshers:
            await refresher.stop()
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        runtime = server.runtime
        if runtime is not None:
            await runtime.close()

    async def jwks(req: ReservedRequest) -> web.StreamResponse:
        runtime = server.runtime
        assert runtime is not None
        try:
            body = runtime.signer.jwks_json()
        except SigningError as exc:
            log.error("no JWKS to serve: %s", exc)
            return web.json_response(
                {"error": "no signing keys"}, status=503, headers={"Cache-Control": "no-store"}
            )
        # Never cached past the moment a key this instance has not read may sign.
        max_age = runtime.signer.jwks_max_age()
        return web.Response(
            body=body,
            content_type="application/json",
            headers={"Cache-Control": f"public, max-age={max_age}"},
        )

    server.hooks.startup.append(startup)
    server.hooks.cleanup.append(cleanup)

    async def challenge(
        pipeline: Pipeline,
        request: BaseRequest,
        tenant: TenantConfig,
        decision: Decision,
        request_id: str,
        original_url: str,
    ) -> web.StreamResponse:
        if decision.action is Action.DENY and server.runtime is not None:
            audit_denial(server.runtime.audit, request, tenant, decision)
        return await interstitial_challenge(
            pipeline, request, tenant, decision, request_id, original_url
        )

    server.hooks.challenge = challenge
    server.reserved.add("/jwks.json", jwks, any_host=True)
