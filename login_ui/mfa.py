"""The step-up interstitial: `{prefix}/mfa` (choose a method), `/mfa/totp` and
`/mfa/backup` (check a code), `/mfa/enrol` (first TOTP device at the first prompt).

Every POST needs the session it steps up (no session, no step: a later step
called directly gets nothing), `Origin` from our own origin, and a CSRF token
bound to that session; a success rotates the session id, so the pre-step-up
cookie (and every token bound to it) is dead afterwards. Factor guesses go
through the gateway's one Regulator (per user and per client IP, 429 with
`Retry-After`); each result is audited (`mfa_success` / `mfa_failure`, never the
code) and counted (`authgate_sign_ins_total`). A method the tenant does not offer
(`tenants[].mfa_methods`) is neither shown nor accepted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from markupsafe import Markup

from gateway.audit import Detail, Event
from gateway.config.model import TenantConfig
from gateway.identity.totp import Enrolment, clean_name, qr_svg
from gateway.mfa import (
    AMR_BACKUP_CODE,
    AMR_TOTP,
    BACKUP_CODES,
    TOTP,
    Methods,
    SecondFactors,
    open_second_factors,
)
from gateway.redirects import login_url
from gateway.regulation import Attempt
from gateway.reserved import ReservedRequest
from gateway.runtime import Runtime
from gateway.sessions import ActiveSession, fingerprint
from login_ui.forms import posted_form
from login_ui.handlers import LoginPages
from login_ui.pages import CSRF_FIELD, RETURN_FIELD, PageRenderer

log = logging.getLogger("authgate.mfa")

CODE_FIELD = "code"
DEVICE_FIELD = "device"
NAME_FIELD = "name"
_MAX_FIELD = 2048
_EXPIRED = "This page has expired. Please try again."
_WRONG_CODE = "That code is not valid. Check your app and try again."
_NO_FACTOR = (
    "This page needs a second factor, and your account has none yet. "
    "Ask your administrator to help you set one up."
)


@dataclass(frozen=True)
class Visit:
    """A request under the prefix from a signed-in user of this tenant."""

    tenant: TenantConfig
    session_id: str
    active: ActiveSession


class Interstitial:
    """What the MFA and account pages share: the session, the form checks, rendering."""

    def __init__(
        self, site: LoginPages, renderer: PageRenderer, runtime: Callable[[], Runtime]
    ) -> None:
        self.site = site
        self.renderer = renderer
        self.runtime = runtime
        self.prefix = site.prefix
        self._factors: tuple[Runtime, SecondFactors] | None = None

    def factors(self) -> SecondFactors:
        """The second-factor service over the current runtime (built once per runtime)."""
        runtime = self.runtime()
        if self._factors is None or self._factors[0] is not runtime:
            service = open_second_factors(
                runtime.config,
                runtime.stores.credentials,
                runtime.sessions,
                runtime.regulator,
                runtime.box,
            )
            self._factors = (runtime, service)
        return self._factors[1]

    async def methods(self, visit: Visit) -> Methods:
        """The user's second factors that this tenant offers."""
        found = await self.factors().methods(visit.active.user.id)
        return found.within(visit.tenant.mfa_methods)

    def audit(
        self,
        req: ReservedRequest,
        visit: Visit,
        event: Event,
        *,
        outcome: str,
        details: dict[str, Detail],
        id_hash: str | None = None,
    ) -> None:
        """One audit row about this visitor (`id_hash`: the session after a rotation)."""
        self.runtime().audit.record(
            event,
            tenant=visit.tenant.id,
            user=visit.active.user.username,
            ip=req.client_ip,
            country=visit.active.record.country,
            user_agent=req.request.headers.get("User-Agent"),
            session_fp=fingerprint(id_hash or visit.active.id_hash),
            outcome=outcome,
            details=details,
        )

    async def attempt(
        self, req: ReservedRequest, visit: Visit, method: str, metric: str
    ) -> Attempt | web.Response:
        """Ask the Regulator before a code or key is checked: the attempt, or the 429."""
        attempt = await self.factors().attempt(
            visit.tenant.id, visit.active.user.username, req.client_ip
        )
        if attempt.allowed:
            return attempt
        self.runtime().metrics.sign_in(visit.tenant.id, metric, "banned")
        self.audit(req, visit, Event.MFA_FAILURE, outcome="banned", details={"method": method})
        return self.too_many(req, attempt.retry_after)

    async def failed(
        self, req: ReservedRequest, visit: Visit, attempt: Attempt, method: str, metric: str
    ) -> None:
        """A wrong code or key: counted by the Regulator, audited, measured."""
        await self.factors().failed(
            visit.tenant.id, visit.active.user.username, req.client_ip, attempt
        )
        self.runtime().metrics.sign_in(visit.tenant.id, metric, "failure")
        self.audit(req, visit, Event.MFA_FAILURE, outcome="wrong", details={"method": method})

    async def succeeded(
        self,
        req: ReservedRequest,
        visit: Visit,
        method: str,
        metric: str,
        id_hash: str,
        **details: Detail,
    ) -> None:
        await self.factors().succeeded(visit.tenant.id, visit.active.user.username)
        self.runtime().metrics.sign_in(visit.tenant.id, metric, "success")
        self.audit(
            req,
            visit,
            Event.MFA_SUCCESS,
            outcome="ok",
            details={"method": method, **details},
            id_hash=id_hash,
        )

    async def visit(self, req: ReservedRequest) -> Visit | None:
        tenant = req.tenant
        cookie = req.request.cookies.get(self.site.config.sessions.cookie_name)
        if tenant is None or not cookie:
            return None
        active = await self.runtime().sessions.load(cookie, tenant.id)
        return Visit(tenant, cookie, active) if active is not None else None

    async def form(self, req: ReservedRequest) -> dict[str, str] | None:
        data = await posted_form(req, self.site.config.server.client_timeout)
        if data is None:
            return None
        return {key: value[:_MAX_FIELD] for key, value in data.items() if isinstance(value, str)}

    def csrf_token(self, visit: Visit) -> str:
        return self.runtime().csrf.issue(f"session:{visit.session_id}")

    def checked(self, req: ReservedRequest, visit: Visit, form: dict[str, str]) -> bool:
        """Our own origin and a token bound to this very session: both, always."""
        if not self.site.same_origin(req):
            return False
        return self.runtime().csrf.check(form.get(CSRF_FIELD), f"session:{visit.session_id}")

    def render(
        self, req: ReservedRequest, template: str, status: int = 200, **values: object
    ) -> web.Response:
        # PageRenderer renders any template of ours with the tenant's branding and URLs.
        html = self.renderer.render_page(template, self.site.branding(req.tenant), **values)
        return self.site.page(req, html, status)

    def error(self, req: ReservedRequest, status: int, detail: str | None = None) -> web.Response:
        html = self.renderer.render_error(
            status, branding=self.site.branding(req.tenant), detail=detail
        )
        return self.site.page(req, html, status)

    def to_login(self, req: ReservedRequest, rd: str) -> web.Response:
        return web.Response(
            status=302,
            headers={"Location": login_url(self.prefix, rd), "Cache-Control": "no-store"},
        )

    def too_many(self, req: ReservedRequest, retry_after: float) -> web.Response:
        response = self.error(req, 429)
        response.headers["Retry-After"] = str(max(1, int(retry_after + 0.999)))
        return response

    def urls(self) -> MfaUrls:
        p = self.prefix
        return MfaUrls(
            mfa=f"{p}/mfa",
            totp=f"{p}/mfa/totp",
            backup=f"{p}/mfa/backup",
            enrol=f"{p}/mfa/enrol",
            webauthn=f"{p}/mfa/webauthn",
            account=f"{p}/account",
        )


@dataclass(frozen=True)
class MfaUrls:
    mfa: str
    totp: str
    backup: str
    enrol: str
    webauthn: str
    account: str


class MfaPages:
    def __init__(self, shared: Interstitial) -> None:
        self.shared = shared

    # --- the prompt ------------------------------------------------------------------

    async def prompt(self, req: ReservedRequest) -> web.StreamResponse:
        shared = self.shared
        if req.tenant is None:
            return shared.error(req, 421)
        if req.request.method not in ("GET", "HEAD"):
            return web.Response(status=405, headers={"Allow": "GET, HEAD"})
        rd = req.request.query.get("rd", "")[:_MAX_FIELD]
        visit = await shared.visit(req)
        if visit is None:
            return shared.to_login(req, rd)
        factors = shared.factors()
        if factors.has_two_factors(visit.active.record):
            target = shared.site.return_url(req, rd)
            return web.Response(
                status=303, headers={"Location": target, "Cache-Control": "no-store"}
            )
        methods = await shared.methods(visit)
        if methods.any or methods.backup_codes:
            return self._choice(req, visit, methods, rd)
        if shared.site.config.mfa.enrollment == "deny" or TOTP not in visit.tenant.mfa_methods:
            return shared.error(req, 403, _NO_FACTOR)
        enrolment = await self._start(visit)
        if enrolment is None:
            return shared.error(req, 403, _NO_FACTOR)
        return self.enrol_page(req, visit, enrolment, rd)

    def _choice(
        self,
        req: ReservedRequest,
        visit: Visit,
        methods: Methods,
        rd: str,
        *,
        error: str | None = None,
        status: int = 200,
    ) -> web.Response:
        return self.shared.render(
            req,
            "mfa.html",
            status,
            csrf_token=self.shared.csrf_token(visit),
            return_to=rd,
            methods=methods,
            error=error,
            mfa=self.shared.urls(),
        )

    async def _start(self, visit: Visit) -> Enrolment | None:
        user = visit.active.user
        issuer = self.shared.site.config.mfa.totp_issuer or visit.tenant.name
        return await self.shared.factors().totp.start(
            visit.tenant.id, user.id, user.username, "Authenticator app", issuer=issuer
        )

    def enrol_page(
        self,
        req: ReservedRequest,
        visit: Visit,
        enrolment: Enrolment,
        rd: str,
        *,
        action: str | None = None,
        error: str | None = None,
        status: int = 200,
    ) -> web.Response:
        return self.shared.render(
            req,
            "mfa_enrol.html",
            status,
            csrf_token=self.shared.csrf_token(visit),
            return_to=rd,
            device_id=enrolment.device.id,
            secret=enrolment.secret,
            qr=Markup(qr_svg(enrolment.uri)),  # noqa: S704 - SVG we generated, no user text
            action=action or self.shared.urls().enrol,
            error=error,
            mfa=self.shared.urls(),
        )

    # --- the steps -------------------------------------------------------------------

    async def _post(
        self, req: ReservedRequest
    ) -> tuple[Visit, dict[str, str]] | web.StreamResponse:
        """The checks every step makes before looking at a code."""
        shared = self.shared
        if req.tenant is None:
            return shared.error(req, 421)
        if req.request.method != "POST":
            return web.Response(status=405, headers={"Allow": "POST"})
        visit = await shared.visit(req)
        if visit is None:
            return shared.error(req, 403, _EXPIRED)
        form = await shared.form(req)
        if form is None or not shared.checked(req, visit, form):
            return shared.error(req, 403, _EXPIRED)
        return visit, form

    async def totp(self, req: ReservedRequest) -> web.StreamResponse:
        checked = await self._post(req)
        if isinstance(checked, web.StreamResponse):
            return checked
        visit, form = checked
        if TOTP not in visit.tenant.mfa_methods:
            return self.shared.error(req, 404)
        attempt = await self.shared.attempt(req, visit, "totp", "totp")
        if not isinstance(attempt, Attempt):
            return attempt
        factors = self.shared.factors()
        device = await factors.regulator.checked(
            attempt, factors.totp.verify(visit.active.user.id, form.get(CODE_FIELD, ""))
        )
        if device is None:
            return await self._wrong(req, visit, form, attempt, "totp", "totp")
        return await self._stepped_up(req, visit, form, AMR_TOTP, "totp", "totp")

    async def backup(self, req: ReservedRequest) -> web.StreamResponse:
        checked = await self._post(req)
        if isinstance(checked, web.StreamResponse):
            return checked
        visit, form = checked
        if BACKUP_CODES not in visit.tenant.mfa_methods:
            return self.shared.error(req, 404)
        attempt = await self.shared.attempt(req, visit, "backup_code", "backup_code")
        if not isinstance(attempt, Attempt):
            return attempt
        factors = self.shared.factors()
        code = form.get(CODE_FIELD, "")
        if not await factors.regulator.checked(
            attempt, factors.backup_codes.use(visit.active.user.id, code)
        ):
            return await self._wrong(req, visit, form, attempt, "backup_code", "backup_code")
        return await self._stepped_up(
            req, visit, form, AMR_BACKUP_CODE, "backup_code", "backup_code"
        )

    async def enrol(self, req: ReservedRequest) -> web.StreamResponse:
        """Confirm the first device at the first prompt: only while the user has none."""
        checked = await self._post(req)
        if isinstance(checked, web.StreamResponse):
            return checked
        visit, form = checked
        shared = self.shared
        factors = shared.factors()
        user = visit.active.user
        rd = form.get(RETURN_FIELD, "")
        methods = await factors.methods(user.id)
        if methods.any or shared.site.config.mfa.enrollment == "deny":
            return shared.error(req, 403, _EXPIRED)
        if TOTP not in visit.tenant.mfa_methods:
            return shared.error(req, 404)
        attempt = await shared.attempt(req, visit, "totp", "totp")
        if not isinstance(attempt, Attempt):
            return attempt
        device_id = form.get(DEVICE_FIELD, "")
        code = form.get(CODE_FIELD, "")
        confirming = factors.totp.confirm(user.id, device_id, code)
        if not await factors.regulator.checked(attempt, confirming):
            await shared.failed(req, visit, attempt, "totp", "totp")
            pending = await factors.totp.pending(user.id, device_id, user.username)
            if pending is None:
                return shared.error(req, 403, _EXPIRED)
            return self.enrol_page(req, visit, pending, rd, error=_WRONG_CODE, status=401)
        await factors.store.rename_totp(
            user.id, device_id, clean_name(form.get(NAME_FIELD, ""), "Authenticator app")
        )
        elevated = await factors.elevate(visit.session_id, visit.active.record, AMR_TOTP)
        if elevated is None:
            return shared.error(req, 403, _EXPIRED)
        new_hash = elevated[1].id_hash
        shared.audit(
            req,
            visit,
            Event.MFA_ENROLLED,
            outcome="ok",
            details={"method": "totp", "device": device_id},
            id_hash=new_hash,
        )
        await shared.succeeded(req, visit, "totp", "totp", new_hash)
        log.info(
            "totp enrolled at first prompt",
            extra={"tenant": visit.tenant.id, "user": user.username},
        )
        target = shared.site.return_url(req, rd)
        if BACKUP_CODES not in visit.tenant.mfa_methods:
            done = web.Response(
                status=303, headers={"Location": target, "Cache-Control": "no-store"}
            )
            shared.site.set_session_cookie(done, visit.tenant, *elevated, req.host)
            return done
        codes = await factors.backup_codes.regenerate(visit.tenant.id, user.id)
        shared.audit(
            req,
            visit,
            Event.MFA_ENROLLED,
            outcome="ok",
            details={"method": "backup_codes", "codes": len(codes)},
            id_hash=new_hash,
        )
        response = shared.render(
            req,
            "mfa_codes.html",
            codes=codes,
            continue_url=target,
        )
        shared.site.set_session_cookie(response, visit.tenant, *elevated, req.host)
        return response

    async def _wrong(
        self,
        req: ReservedRequest,
        visit: Visit,
        form: dict[str, str],
        attempt: Attempt,
        method: str,
        metric: str,
    ) -> web.StreamResponse:
        user = visit.active.user
        await self.shared.failed(req, visit, attempt, method, metric)
        log.info(
            "second factor refused",
            extra={"tenant": visit.tenant.id, "user": user.username, "request_id": req.request_id},
        )
        methods = await self.shared.methods(visit)
        return self._choice(
            req, visit, methods, form.get(RETURN_FIELD, ""), error=_WRONG_CODE, status=401
        )

    async def _stepped_up(
        self,
        req: ReservedRequest,
        visit: Visit,
        form: dict[str, str],
        amr: str,
        method: str,
        metric: str,
    ) -> web.StreamResponse:
        shared = self.shared
        factors = shared.factors()
        elevated = await factors.elevate(visit.session_id, visit.active.record, amr)
        if elevated is None:
            return shared.error(req, 403, _EXPIRED)
        await shared.succeeded(req, visit, method, metric, elevated[1].id_hash)
        log.info(
            "second factor accepted",
            extra={"tenant": visit.tenant.id, "user": visit.active.user.username, "method": method},
        )
        target = shared.site.return_url(req, form.get(RETURN_FIELD, ""))
        response = web.Response(
            status=303, headers={"Location": target, "Cache-Control": "no-store"}
        )
        shared.site.set_session_cookie(response, visit.tenant, *elevated, req.host)
        return response
