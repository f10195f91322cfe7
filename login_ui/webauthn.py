"""WebAuthn endpoints: add a security key or passkey on the account page, use one as
a second factor on `{prefix}/mfa`, or sign in with a passkey alone.

| endpoint | body | answers |
|---|---|---|
| `POST {prefix}/account/webauthn/options` | form (csrf) | creation options JSON |
| `POST {prefix}/account/webauthn/register` | JSON {csrf_token, credential, name} | {redirect} |
| `POST {prefix}/mfa/webauthn/options` | form (csrf) | request options JSON |
| `POST {prefix}/mfa/webauthn` | JSON {csrf_token, credential, rd} | {redirect} + new cookie |
| `POST {prefix}/login/passkey` | form (csrf, rd) | options JSON, or (no JSON Accept) a page |
| `POST {prefix}/login/passkey/verify` | JSON {csrf_token, credential, rd} | {redirect} + cookie |

Every POST checks `Origin` and a CSRF token (bound to the session, or to the
pre-session cookie on the login page). Challenges are bound the same way and
used once (`gateway.identity.webauthn`). Adding a key needs a fresh session,
and a user who already has a second factor must have used it in this session
(the account page's rules). Renaming and removing are the account page's.
"""

from __future__ import annotations

import json
import logging
from urllib.parse import quote

from aiohttp import web

from gateway.audit import Event
from gateway.csrf import new_presession_id
from gateway.geo import Response as GeoResponse
from gateway.identity.webauthn import (
    CounterRegression,
    Purpose,
    RelyingParty,
    WebAuthnError,
    WebAuthnService,
    relying_party,
)
from gateway.redirects import login_url
from gateway.regulation import Attempt
from gateway.reserved import ReservedRequest, ReservedRoutes
from gateway.runtime import Runtime
from gateway.sessions import fingerprint
from login_ui.mfa import Interstitial, Visit
from login_ui.pages import CSRF_FIELD, RETURN_FIELD

log = logging.getLogger("authgate.webauthn")

MAX_BODY = 64 * 1024
_REFUSED = "That security key or passkey was not accepted."
_EXPIRED = "This page has expired. Please reload it and try again."


def _json(status: int, **values: object) -> web.Response:
    return web.json_response(values, status=status, headers={"Cache-Control": "no-store"})


def _options(options_json: str) -> web.Response:
    return web.Response(
        text=options_json, content_type="application/json", headers={"Cache-Control": "no-store"}
    )


class WebAuthnPages:
    """Handlers over the shared interstitial helpers (session, CSRF, rendering)."""

    def __init__(self, shared: Interstitial) -> None:
        self.shared = shared
        self._service: tuple[Runtime, WebAuthnService] | None = None

    def service(self) -> WebAuthnService:
        runtime = self.shared.runtime()
        if self._service is None or self._service[0] is not runtime:
            service = WebAuthnService(
                runtime.stores.credentials,
                runtime.sso.store,
                now=runtime.sessions.now,
                on_counter_regression=self._audit_regression,
            )
            self._service = (runtime, service)
        return self._service[1]

    def _audit_regression(self, error: CounterRegression) -> None:
        credential = error.credential
        self.shared.runtime().audit.record(
            Event.MFA_FAILURE,
            tenant=credential.tenant,
            user=credential.user_id,
            outcome="signature counter regression",
            details={
                "credential": credential.id,
                "stored_count": credential.sign_count,
                "presented_count": error.new_count,
            },
        )

    def _rp(self, req: ReservedRequest) -> RelyingParty:
        assert req.tenant is not None
        return relying_party(req.tenant, req.host, req.origin)

    @staticmethod
    def _binding(visit: Visit) -> str:
        return f"session:{visit.active.id_hash}"

    # --- request checks ----------------------------------------------------------------

    async def _json_body(self, req: ReservedRequest) -> dict[str, object] | None:
        if req.request.content_length is not None and req.request.content_length > MAX_BODY:
            return None
        try:
            raw = await req.request.content.read(MAX_BODY + 1)
            data = json.loads(raw) if len(raw) <= MAX_BODY else None
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    async def _session_post(
        self, req: ReservedRequest, *, as_json: bool
    ) -> tuple[Visit, dict[str, object]] | web.Response:
        """POST, a signed-in user of a tenant with WebAuthn, our origin, a session token."""
        if req.tenant is None:
            return _json(421, error="unknown host")
        if req.request.method != "POST":
            return web.Response(status=405, headers={"Allow": "POST"})
        if "webauthn" not in req.tenant.mfa_methods:
            return _json(404, error="not enabled")
        visit = await self.shared.visit(req)
        if visit is None:
            return _json(401, error=_EXPIRED)
        body: dict[str, object] | None
        if as_json:
            body = await self._json_body(req)
        else:
            form = await self.shared.form(req)
            body = dict(form) if form is not None else None
        token = body.get(CSRF_FIELD) if body is not None else None
        if (
            body is None
            or not self.shared.site.same_origin(req)
            or not self.shared.runtime().csrf.check(
                token if isinstance(token, str) else None, f"session:{visit.session_id}"
            )
        ):
            return _json(403, error=_EXPIRED)
        return visit, body

    async def _may_add(self, req: ReservedRequest, visit: Visit) -> web.Response | None:
        """The account page's rules for adding a factor: fresh, and stepped up if able."""
        factors = self.shared.factors()
        account = f"{req.origin}{self.shared.prefix}/account"
        if not factors.is_fresh(visit.active.record):
            return _json(
                403, error="reauth", redirect=login_url(self.shared.prefix, account) + "&reauth=1"
            )
        methods = await factors.methods(visit.active.user.id)
        if methods.any and not factors.has_two_factors(visit.active.record):
            return _json(
                403,
                error="mfa",
                redirect=f"{self.shared.prefix}/mfa?rd={quote(account, safe='')}",
            )
        return None

    # --- registration (account page) ---------------------------------------------------

    async def register_options(self, req: ReservedRequest) -> web.StreamResponse:
        checked = await self._session_post(req, as_json=False)
        if isinstance(checked, web.Response):
            return checked
        visit, _ = checked
        refused = await self._may_add(req, visit)
        if refused is not None:
            return refused
        options = await self.service().registration_options(
            self._rp(req), visit.active.user, self._binding(visit)
        )
        return _options(options)

    async def register(self, req: ReservedRequest) -> web.StreamResponse:
        checked = await self._session_post(req, as_json=True)
        if isinstance(checked, web.Response):
            return checked
        visit, body = checked
        refused = await self._may_add(req, visit)
        if refused is not None:
            return refused
        user = visit.active.user
        name = body.get("name")
        try:
            record = await self.service().register(
                self._rp(req),
                user,
                self._binding(visit),
                json.dumps(body.get("credential")),
                name if isinstance(name, str) else "",
            )
        except WebAuthnError as exc:
            log.info(
                "webauthn registration refused: %s",
                exc,
                extra={"tenant": visit.tenant.id, "user": user.username},
            )
            return _json(400, error=_REFUSED)
        self.shared.runtime().audit.record(
            Event.MFA_ENROLLED,
            tenant=visit.tenant.id,
            user=user.username,
            ip=req.client_ip,
            user_agent=req.request.headers.get("User-Agent"),
            session_fp=fingerprint(visit.active.id_hash),
            outcome="ok",
            details={"method": "webauthn", "credential": record.id},
        )
        return _json(200, redirect=f"{self.shared.prefix}/account")

    # --- second factor -----------------------------------------------------------------

    async def mfa_options(self, req: ReservedRequest) -> web.StreamResponse:
        checked = await self._session_post(req, as_json=False)
        if isinstance(checked, web.Response):
            return checked
        visit, _ = checked
        options = await self.service().authentication_options(
            self._rp(req),
            visit.tenant.id,
            self._binding(visit),
            Purpose.SECOND_FACTOR,
            visit.active.user,
        )
        return _options(options)

    async def mfa_verify(self, req: ReservedRequest) -> web.StreamResponse:
        checked = await self._session_post(req, as_json=True)
        if isinstance(checked, web.Response):
            return checked
        visit, body = checked
        user = visit.active.user
        attempt = await self.shared.attempt(req, visit, "webauthn", "passkey")
        if not isinstance(attempt, Attempt):
            response = _json(429, error="too many attempts")
            response.headers["Retry-After"] = attempt.headers["Retry-After"]
            return response
        runtime = self.shared.runtime()
        try:
            assertion = await self.shared.factors().regulator.checked(
                attempt,
                self.service().authenticate(
                    self._rp(req),
                    visit.tenant.id,
                    self._binding(visit),
                    Purpose.SECOND_FACTOR,
                    json.dumps(body.get("credential")),
                    user,
                ),
            )
        except WebAuthnError as exc:
            await self.shared.failed(req, visit, attempt, "webauthn", "passkey")
            log.info(
                "webauthn second factor refused: %s",
                exc,
                extra={"tenant": visit.tenant.id, "user": user.username},
            )
            return _json(401, error=_REFUSED)
        record = visit.active.record
        amr = record.amr + tuple(m for m in assertion.amr if m not in record.amr)
        elevated = await runtime.sessions.elevate(visit.session_id, amr)
        if elevated is None:
            return _json(403, error=_EXPIRED)
        await self.shared.succeeded(
            req,
            visit,
            "webauthn",
            "passkey",
            elevated[1].id_hash,
            user_verified=assertion.user_verified,
        )
        rd = body.get(RETURN_FIELD)
        target = self.shared.site.return_url(req, rd if isinstance(rd, str) else "")
        response = _json(200, redirect=target)
        self.shared.site.set_session_cookie(response, visit.tenant, *elevated, req.host)
        return response

    # --- passwordless ------------------------------------------------------------------

    def _presession(self, req: ReservedRequest) -> str | None:
        value = req.request.cookies.get("authgate_csrf", "")
        return value if 30 <= len(value) <= 100 and value.isascii() else None

    async def _login_checked(
        self, req: ReservedRequest, body: dict[str, object] | None
    ) -> str | web.Response:
        """The pre-session this login POST is bound to, or the refusal."""
        if req.tenant is None:
            return _json(421, error="unknown host")
        if req.request.method != "POST":
            return web.Response(status=405, headers={"Allow": "POST"})
        if "passkey" not in req.tenant.login_methods:
            return _json(404, error="not enabled")
        presession = self._presession(req)
        token = body.get(CSRF_FIELD) if body is not None else None
        if (
            presession is None
            or body is None
            or not self.shared.site.same_origin(req)
            or not self.shared.runtime().csrf.check(
                token if isinstance(token, str) else None, f"presession:{presession}"
            )
        ):
            return _json(403, error=_EXPIRED)
        return presession

    async def login_options(self, req: ReservedRequest) -> web.StreamResponse:
        form = await self.shared.form(req) if req.request.method == "POST" else None
        checked = await self._login_checked(req, dict(form) if form is not None else None)
        if isinstance(checked, web.Response):
            if "application/json" in req.request.headers.get("Accept", ""):
                return checked
            return self.shared.error(req, checked.status, _EXPIRED)
        assert req.tenant is not None
        options = await self.service().authentication_options(
            self._rp(req), req.tenant.id, f"presession:{checked}", Purpose.PASSWORDLESS
        )
        if "application/json" in req.request.headers.get("Accept", ""):
            return _options(options)
        # The button was pressed before the script took it over: a page that runs the
        # ceremony as soon as the script loads (passkeys need JavaScript either way).
        assert form is not None
        return self.shared.render(
            req,
            "passkey_login.html",
            options=options,
            csrf_token=form.get(CSRF_FIELD, ""),
            return_to=form.get(RETURN_FIELD, ""),
        )

    async def login_verify(self, req: ReservedRequest) -> web.StreamResponse:
        body = await self._json_body(req) if req.request.method == "POST" else None
        checked = await self._login_checked(req, body)
        if isinstance(checked, web.Response):
            return checked
        assert req.tenant is not None and body is not None
        tenant = req.tenant
        runtime = self.shared.runtime()
        attempt = await runtime.regulator.banned(tenant.id, "", req.client_ip)
        if attempt.banned:
            runtime.metrics.sign_in(tenant.id, "passkey", "banned")
            response = _json(429, error="too many attempts")
            response.headers["Retry-After"] = str(attempt.retry_after)
            return response
        try:
            assertion = await self.service().authenticate(
                self._rp(req),
                tenant.id,
                f"presession:{checked}",
                Purpose.PASSWORDLESS,
                json.dumps(body.get("credential")),
            )
            user = await runtime.stores.users.get(assertion.credential.user_id)
            if user is None or user.disabled or user.tenant != tenant.id:
                raise WebAuthnError("the credential's user is gone or disabled")
        except WebAuthnError as exc:
            await runtime.regulator.failed(tenant.id, "", req.client_ip, Attempt(True))
            runtime.metrics.sign_in(tenant.id, "passkey", "failure")
            runtime.audit.record(
                Event.LOGIN_FAILURE,
                tenant=tenant.id,
                ip=req.client_ip,
                user_agent=req.request.headers.get("User-Agent"),
                outcome="passkey refused",
            )
            log.info("passkey sign-in refused: %s", exc, extra={"tenant": tenant.id})
            return _json(401, error=_REFUSED)
        check = await runtime.sign_ins.check(
            tenant.id, user.id, req.client_ip, runtime.sessions.now()
        )
        if check.response is GeoResponse.DENY:
            runtime.audit.record(
                Event.LOGIN_FAILURE, tenant=tenant.id, user=user.username, outcome="location denied"
            )
            return _json(403, error="Sign-in from this location is not allowed.")
        old_session = req.request.cookies.get(self.shared.site.config.sessions.cookie_name)
        session_id, record = await runtime.sessions.create(
            user,
            assertion.amr,
            ip=req.client_ip,
            user_agent=req.request.headers.get("User-Agent"),
            country=check.current.location.country,
            replaces=old_session or None,
            step_up=check.response is GeoResponse.STEP_UP and len(set(assertion.amr)) < 2,
        )
        runtime.metrics.sign_in(tenant.id, "passkey", "success")
        runtime.audit.record(
            Event.LOGIN_SUCCESS,
            tenant=tenant.id,
            user=user.username,
            ip=req.client_ip,
            country=record.country,
            user_agent=req.request.headers.get("User-Agent"),
            session_fp=fingerprint(record.id_hash),
            outcome="ok",
            details={"method": "passkey", "user_verified": assertion.user_verified},
        )
        rd = body.get(RETURN_FIELD)
        target = self.shared.site.return_url(req, rd if isinstance(rd, str) else "")
        if check.response is GeoResponse.STEP_UP and len(set(record.amr)) < 2:
            target = f"{self.shared.prefix}/mfa?rd={quote(target, safe='')}"
        response = _json(200, redirect=target)
        self.shared.site.set_session_cookie(response, tenant, session_id, record, req.host)
        self.shared.site.set_presession(response, new_presession_id())
        return response


def install(reserved: ReservedRoutes, pages: WebAuthnPages) -> None:
    """Register the endpoints under the reserved prefix."""
    reserved.add("/account/webauthn/options", pages.register_options)
    reserved.add("/account/webauthn/register", pages.register)
    reserved.add("/mfa/webauthn/options", pages.mfa_options)
    reserved.add("/mfa/webauthn", pages.mfa_verify)
    reserved.add("/login/passkey", pages.login_options)
    reserved.add("/login/passkey/verify", pages.login_verify)
