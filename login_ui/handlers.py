"""The interstitial: sign-in and sign-out pages, and the files they load.

Every state-changing POST checks `Origin` and a CSRF token bound to the
pre-session cookie (SECURITY.md invariant 9). A wrong password and an unknown
user get the same page, the same message and about the same time (a dummy hash
is verified for the unknown user). The return address is honoured only when it
leads to a host this tenant protects (invariant 4).
"""

from __future__ import annotations

import logging
import mimetypes
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from aiohttp import web

from gateway.audit import Event
from gateway.config.model import Branding, Config, TenantConfig
from gateway.csrf import new_presession_id, origin_allowed
from gateway.errors import StoreUnavailable
from gateway.geo import Response as GeoResponse
from gateway.geo import SignInCheck, place_details
from gateway.redirects import safe_return_url
from gateway.regulation import Attempt
from gateway.reserved import ReservedRequest
from gateway.runtime import Runtime
from gateway.sessions import fingerprint
from gateway.sso import cookie_domain_for, sso_hosts
from gateway.stores import NotFound, SessionRecord, User
from gateway.stores.ids import hash_session_id
from gateway.tenant_store import TenantDirectory
from gateway.tenants import TenantIndex
from login_ui.branding import BrandingView
from login_ui.forms import posted_form
from login_ui.headers import security_headers
from login_ui.pages import (
    CSRF_FIELD,
    EVERYWHERE_FIELD,
    PASSWORD_FIELD,
    REMEMBER_FIELD,
    RETURN_FIELD,
    STATIC_DIR,
    USERNAME_FIELD,
    PageRenderer,
)

log = logging.getLogger("authgate.login")

PRESESSION_COOKIE = "authgate_csrf"
_WRONG = "Incorrect username or password."
_BANNED = "Too many failed attempts. Please wait before trying again."
_LOCATION_DENIED = (
    "This sign-in was blocked because it came from an unusual location. "
    "If it was you, contact your administrator."
)
_EXPIRED = "This page has expired. Please try again."
_MAX_FIELD = 1024
_LOOKS_LIMIT = 4096  # tenants x branding revisions; cleared when exceeded


class LoginPages:
    """Handlers for `{prefix}/login`, `/logout`, `/theme.css`, `/static/…`, `/assets/…`."""

    def __init__(
        self,
        config: Config,
        renderer: PageRenderer,
        runtime: Callable[[], Runtime],
        tenants: TenantDirectory | None = None,
    ) -> None:
        self.config = config
        self.prefix = config.server.prefix.rstrip("/")
        self.renderer = renderer
        self._runtime = runtime
        self._secure = not config.server.dev_mode
        # Live tenants (database tenants come and go while serving), so each tenant's
        # branding and headers are resolved on first use and cached by their value.
        self._tenants: TenantDirectory | TenantIndex = (
            tenants if tenants is not None else TenantIndex(config.tenants)
        )
        self._looks: dict[tuple[str, Branding], BrandingView] = {}
        self._headers: dict[tuple[str, Branding, str, str], tuple[tuple[str, str], ...]] = {}
        self._neutral_headers = security_headers(config.server.dev_mode)
        # Set by login_ui.install: sends a sign-in to the tenant's SSO login host.
        self.sso_redirect: Callable[[ReservedRequest, str], web.Response | None] | None = None

    # --- helpers -------------------------------------------------------------------

    def branding(self, tenant: TenantConfig | None) -> BrandingView | None:
        if tenant is None:
            return None
        key = (tenant.id, tenant.branding)
        view = self._looks.get(key)
        if view is None:
            if len(self._looks) >= _LOOKS_LIMIT:
                self._looks.clear()
            view = self._looks[key] = self.renderer.branding_for(tenant)
        return view

    def page_headers(self, req: ReservedRequest) -> tuple[tuple[str, str], ...]:
        """Security headers for a page of this request's tenant. form-action lists the
        tenant's other domains: a sign-in on the SSO login host ends, through redirects
        the browser checks against form-action, on the domain that asked for it."""
        tenant = req.tenant
        if tenant is None:
            return self._neutral_headers
        port = _port_of(req.host_header)
        key = (tenant.id, tenant.branding, req.proto, port)
        headers = self._headers.get(key)
        if headers is None:
            suffix = f":{port}" if port else ""
            targets = tuple(
                f"{req.proto}://{host}{suffix}" for host in sso_hosts(tenant) if host != req.host
            )
            view = self.branding(tenant)
            assert view is not None
            if len(self._headers) >= _LOOKS_LIMIT:
                self._headers.clear()
            headers = self._headers[key] = security_headers(
                self.config.server.dev_mode, image_origins=view.image_origins, form_targets=targets
            )
        return headers

    def _page(self, req: ReservedRequest, html: str, status: int = 200) -> web.Response:
        headers = self.page_headers(req)
        response = web.Response(status=status, text=html, content_type="text/html")
        for name, value in headers:
            response.headers[name] = value
        response.headers["Cache-Control"] = "no-store"
        return response

    def _presession(self, req: ReservedRequest) -> tuple[str, bool]:
        """The pre-session id for CSRF binding, and whether it is new (to be set)."""
        value = req.request.cookies.get(PRESESSION_COOKIE, "")
        if 30 <= len(value) <= 100 and value.isascii():
            return value, False
        return new_presession_id(), True

    def _set_presession(self, response: web.StreamResponse, value: str) -> None:
        response.set_cookie(
            PRESESSION_COOKIE,
            value,
            path=f"{self.prefix}/",
            httponly=True,
            secure=self._secure,
            samesite="Lax",
            max_age=int(self._runtime().csrf.max_age),
        )

    def _default_url(self, req: ReservedRequest) -> str:
        tenant = req.tenant
        if tenant is not None and tenant.default_url:
            return tenant.default_url
        return f"{req.origin}/"

    def _return_url(self, req: ReservedRequest, rd: str | None) -> str:
        tenant = req.tenant
        return safe_return_url(
            rd,
            is_protected_host=lambda host: _same_tenant(
                self._tenants.tenant_for_host(host), tenant
            ),
            default=self._default_url(req),
            current_origin=req.origin,
        )

    async def _form(self, req: ReservedRequest) -> dict[str, str] | None:
        data = await posted_form(req, self.config.server.client_timeout)
        if data is None:
            return None
        form: dict[str, str] = {}
        for key in (CSRF_FIELD, RETURN_FIELD, USERNAME_FIELD, PASSWORD_FIELD):
            value = data.get(key)
            form[key] = value[:_MAX_FIELD] if isinstance(value, str) else ""
        for key in (REMEMBER_FIELD, EVERYWHERE_FIELD):
            form[key] = "1" if data.get(key) else ""
        return form

    def same_origin(self, req: ReservedRequest) -> bool:
        """The POST comes from the page's own origin (`Origin`, else `Referer`)."""
        headers = req.request.headers
        return origin_allowed(headers.get("Origin"), headers.get("Referer"), req.origin)

    def _checked(self, req: ReservedRequest, form: dict[str, str], presession: str) -> bool:
        """Same origin and a valid token for this pre-session: both, always."""
        if not self.same_origin(req):
            return False
        return self._runtime().csrf.check(form[CSRF_FIELD], f"presession:{presession}")

    def set_session_cookie(
        self,
        response: web.StreamResponse,
        tenant: TenantConfig,
        session_id: str,
        record: SessionRecord,
        host: str,
    ) -> None:
        """The session cookie for the request's `host`: Domain= only when the tenant's
        cookie_domain covers that host (a browser refuses it elsewhere)."""
        response.set_cookie(
            self.config.sessions.cookie_name,
            session_id,
            path="/",
            domain=tenant.cookie_domain if host is None else cookie_domain_for(tenant, host),
            httponly=True,
            secure=self._secure,
            samesite="Lax",
            max_age=int(record.expires - record.created) if record.remember else None,
        )

    # The MFA and account pages (login_ui/mfa.py, account.py) answer the same way.
    page = _page
    return_url = _return_url
    set_presession = _set_presession

    # --- sign in -------------------------------------------------------------------

    def _login_page(
        self,
        req: ReservedRequest,
        presession: str,
        *,
        rd: str,
        username: str = "",
        error: str | None = None,
        status: int = 200,
    ) -> web.Response:
        tenant = req.tenant
        runtime = self._runtime()
        html = self.renderer.render_login(
            branding=self.branding(tenant),
            csrf_token=runtime.csrf.issue(f"presession:{presession}"),
            return_to=rd,
            username=username,
            error=error,
            password_enabled=tenant is None or "password" in tenant.login_methods,
            passkey_enabled=tenant is not None and "passkey" in tenant.login_methods,
            request_id=req.request_id if error else None,
        )
        return self._page(req, html, status)

    async def login(self, req: ReservedRequest) -> web.StreamResponse:
        if req.tenant is None:
            return self._page(req, self.renderer.render_error(421, branding=None), 421)
        method = req.request.method
        if method in ("GET", "HEAD"):
            presession, new = self._presession(req)
            rd = req.request.query.get("rd", "")[:2048]
            if self.sso_redirect is not None:
                redirect = self.sso_redirect(req, rd)
                if redirect is not None:
                    return redirect
            response = self._login_page(req, presession, rd=rd)
            if new:
                self._set_presession(response, presession)
            return response
        if method != "POST":
            return web.Response(status=405, headers={"Allow": "GET, POST"})
        if "password" not in req.tenant.login_methods:
            # Not offered (`tenants[].login_methods`): not accepted when posted directly.
            html = self.renderer.render_error(404, branding=self.branding(req.tenant))
            return self._page(req, html, 404)
        return await self._login_post(req, req.tenant)

    async def _login_post(self, req: ReservedRequest, tenant: TenantConfig) -> web.StreamResponse:
        presession, new = self._presession(req)
        form = await self._form(req)
        if form is None:
            return self._page(req, self.renderer.render_error(400, branding=None), 400)
        if new or not self._checked(req, form, presession):
            response = self._login_page(
                req, presession, rd=form[RETURN_FIELD], error=_EXPIRED, status=403
            )
            self._set_presession(response, presession)
            return response
        runtime = self._runtime()
        username = form[USERNAME_FIELD].strip()
        # Regulation first: while banned, the password is not even looked at.
        attempt = await runtime.regulator.attempt(tenant.id, username, req.client_ip)
        if attempt.banned:
            runtime.metrics.sign_in(tenant.id, "password", "banned")
            self._audit_login(req, Event.LOGIN_FAILURE, username, outcome="banned")
            return self._banned(req, attempt)
        user = await runtime.regulator.checked(
            attempt, self._verify(runtime, tenant, username, form[PASSWORD_FIELD])
        )
        if user is None:
            runtime.metrics.sign_in(tenant.id, "password", "failure")
            await runtime.regulator.failed(tenant.id, username, req.client_ip, attempt)
            log.info(
                "sign-in failed",
                extra={"tenant": tenant.id, "ip": req.client_ip, "request_id": req.request_id},
            )
            self._audit_login(req, Event.LOGIN_FAILURE, username, outcome="wrong credentials")
            return self._login_page(
                req, presession, rd=form[RETURN_FIELD], username=username, error=_WRONG, status=401
            )
        await runtime.regulator.succeeded(tenant.id, username, attempt=attempt)
        runtime.metrics.sign_in(tenant.id, "password", "success")
        check = await runtime.sign_ins.check(
            tenant.id, user.id, req.client_ip, runtime.sessions.now()
        )
        self._audit_location(req, user.username, check)
        if check.response is GeoResponse.DENY:
            self._audit_login(req, Event.LOGIN_FAILURE, user.username, outcome="location denied")
            html = self.renderer.render_error(
                403, branding=self.branding(tenant), detail=_LOCATION_DENIED
            )
            return self._page(req, html, 403)
        old_session = req.request.cookies.get(self.config.sessions.cookie_name)
        session_id, record = await runtime.sessions.create(
            user,
            ("pwd",),
            ip=req.client_ip,
            user_agent=req.request.headers.get("User-Agent"),
            country=check.current.location.country,
            remember=bool(form[REMEMBER_FIELD]),
            replaces=old_session or None,
            step_up=check.response is GeoResponse.STEP_UP,
        )
        log.info(
            "sign-in",
            extra={"tenant": tenant.id, "user": user.username, "request_id": req.request_id},
        )
        step_up = check.response is GeoResponse.STEP_UP
        self._audit_login(
            req,
            Event.LOGIN_SUCCESS,
            user.username,
            outcome="step_up" if step_up else "ok",
            session_fp=fingerprint(record.id_hash),
            country=record.country,
        )
        target = self._return_url(req, form[RETURN_FIELD])
        if step_up:
            # An unusual place: a second factor now, before anything else.
            target = f"{self.prefix}/mfa?rd={quote(target, safe='')}"
        response = web.Response(
            status=303, headers={"Location": target, "Cache-Control": "no-store"}
        )
        self.set_session_cookie(response, tenant, session_id, record, req.host)
        # A pre-session value an attacker may have planted dies with its first use.
        self._set_presession(response, new_presession_id())
        return response

    def _banned(self, req: ReservedRequest, attempt: Attempt) -> web.Response:
        """The same branded 429 for every username, known or not (bans reveal nothing)."""
        html = self.renderer.render_error(429, branding=self.branding(req.tenant), detail=_BANNED)
        response = self._page(req, html, 429)
        response.headers["Retry-After"] = str(attempt.retry_after)
        return response

    def _audit_login(
        self,
        req: ReservedRequest,
        event: Event,
        username: str,
        *,
        outcome: str,
        session_fp: str | None = None,
        country: str | None = None,
    ) -> None:
        self._runtime().audit.record(
            event,
            tenant=req.tenant.id if req.tenant is not None else None,
            user=username[:256] or None,
            ip=req.client_ip,
            country=country,
            user_agent=req.request.headers.get("User-Agent"),
            session_fp=session_fp,
            outcome=outcome,
        )

    def _audit_location(self, req: ReservedRequest, username: str, check: SignInCheck) -> None:
        """`impossible_travel` / `new_country` rows carrying both places."""
        details = {
            **place_details("from", check.previous),
            **place_details("to", check.current),
            "distance_km": round(check.distance_km, 1) if check.distance_km is not None else None,
            "speed_kmh": round(check.speed_kmh, 1)
            if check.speed_kmh is not None and check.speed_kmh != float("inf")
            else None,
        }
        for happened, event in (
            (check.impossible_travel, Event.IMPOSSIBLE_TRAVEL),
            (check.new_country, Event.NEW_COUNTRY),
        ):
            if happened:
                self._runtime().audit.record(
                    event,
                    tenant=req.tenant.id if req.tenant is not None else None,
                    user=username,
                    ip=req.client_ip,
                    country=check.current.location.country,
                    user_agent=req.request.headers.get("User-Agent"),
                    outcome=check.response.value,
                    details=details,
                )

    async def _verify(
        self, runtime: Runtime, tenant: TenantConfig, username: str, password: str
    ) -> User | None:
        user = await runtime.stores.users.get_by_username(tenant.id, username) if username else None
        if user is None or user.disabled or not user.password_hash or not password:
            await runtime.hasher.verify_dummy(password)
            return None
        if not await runtime.hasher.verify(user.password_hash, password):
            return None
        if runtime.hasher.needs_rehash(user.password_hash):
            rehashed = await runtime.hasher.hash(password)
            try:
                await runtime.stores.users.set_password(user.id, rehashed, user.updated)
            except NotFound:
                pass  # read-only users (a users file) keep theirs
            except StoreUnavailable:
                # The password was right; only the upgrade of its hash could not be
                # written (a database fenced read-only, say). It is tried again next time.
                log.warning("could not store an upgraded password hash; kept the old password hash")
        return user

    # --- sign out ------------------------------------------------------------------

    async def logout(self, req: ReservedRequest) -> web.StreamResponse:
        tenant = req.tenant
        if tenant is None:
            return self._page(req, self.renderer.render_error(421, branding=None), 421)
        presession, new = self._presession(req)
        runtime = self._runtime()
        cookie = req.request.cookies.get(self.config.sessions.cookie_name)
        if req.request.method in ("GET", "HEAD"):
            active = await runtime.sessions.load(cookie, tenant.id, touch=False) if cookie else None
            html = self.renderer.render_logout(
                branding=self.branding(tenant),
                csrf_token=runtime.csrf.issue(f"presession:{presession}"),
                return_to=req.request.query.get("rd", "")[:2048],
                user_name=active.user.display_name or active.user.username if active else None,
            )
            response = self._page(req, html)
            if new:
                self._set_presession(response, presession)
            return response
        if req.request.method != "POST":
            return web.Response(status=405, headers={"Allow": "GET, POST"})
        form = await self._form(req)
        if form is None or new or not self._checked(req, form, presession):
            return self._page(
                req,
                self.renderer.render_error(403, branding=self.branding(tenant), detail=_EXPIRED),
                403,
            )
        if cookie:
            # Reads only: signing out needs no write but the deletion.
            active = await runtime.sessions.load(cookie, tenant.id, touch=False)
            everywhere = active is not None and bool(form[EVERYWHERE_FIELD])
            if active is not None and everywhere:
                await runtime.sessions.revoke_user(tenant.id, active.user.id)
            else:
                await runtime.sessions.revoke(cookie)
            if active is not None:
                runtime.audit.record(
                    Event.LOGOUT,
                    tenant=tenant.id,
                    user=active.user.username,
                    ip=req.client_ip,
                    country=active.record.country,
                    user_agent=req.request.headers.get("User-Agent"),
                    session_fp=fingerprint(hash_session_id(cookie)),
                    outcome="everywhere" if everywhere else "ok",
                )
        html = self.renderer.render_logout(
            branding=self.branding(tenant), csrf_token="", signed_out=True
        )
        response = self._page(req, html)
        # The same Domain= the cookie was set with, or the browser keeps it.
        response.del_cookie(
            self.config.sessions.cookie_name,
            path="/",
            domain=cookie_domain_for(tenant, req.host),
        )
        self._set_presession(response, new_presession_id())
        return response

    # --- files ---------------------------------------------------------------------

    async def theme_css(self, req: ReservedRequest) -> web.StreamResponse:
        css = self.renderer.theme_css(self.branding(req.tenant))
        return web.Response(
            text=css,
            content_type="text/css",
            headers={"Cache-Control": "public, max-age=86400"},
        )

    async def static(self, req: ReservedRequest) -> web.StreamResponse:
        name = req.suffix.removeprefix("/static/")
        path = STATIC_DIR / name
        if "/" in name or not name or name.startswith(".") or not path.is_file():
            return web.Response(status=404)
        return _file(path)

    async def asset(self, req: ReservedRequest) -> web.StreamResponse:
        # Only the files of this host's tenant: one tenant's assets are not served on
        # another's domains.
        view = self.branding(req.tenant)
        url = f"{self.prefix}{req.suffix}"
        path = next((a.path for a in view.assets if a.url == url), None) if view else None
        if path is None or not path.is_file():
            return web.Response(status=404)
        return _file(path)


def _port_of(host_header: str) -> str:
    """The explicit port of a Host header (`acme.test:8443`, `[::1]:80`), or ""."""
    _, sep, tail = host_header.rpartition(":")
    return tail if sep and tail.isdigit() else ""


def _same_tenant(found: TenantConfig | None, tenant: TenantConfig | None) -> bool:
    return found is not None and tenant is not None and found.id == tenant.id


def _file(path: Path) -> web.Response:
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return web.Response(
        body=path.read_bytes(),
        content_type=content_type,
        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )
