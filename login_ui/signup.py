"""`{prefix}/signup`: self-service accounts, for tenants that turn it on (`tenants[].signup`).

Off by default: then the page does not exist (404), nor where the tenant offers no
password sign-in. The form is guarded like the login page (SECURITY.md invariant 9):
a CSRF token bound to the pre-session cookie, and `Origin` from our own origin. The
new user has no groups and no roles (policies decide what such a user may reach), is
audited (`user_created`, via signup) and signed in at once with a new session id.
A taken username counts as a failure against the client IP in the Regulator, so the
form cannot be used to test many usernames quickly.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Callable

from aiohttp import web

from gateway.audit import Event
from gateway.csrf import new_presession_id
from gateway.regulation import Attempt
from gateway.reserved import ReservedRequest
from gateway.runtime import Runtime
from gateway.sessions import fingerprint
from gateway.stores import AlreadyExists, User, new_id
from login_ui.forms import posted_form
from login_ui.handlers import PRESESSION_COOKIE, LoginPages
from login_ui.pages import (
    CSRF_FIELD,
    PASSWORD_FIELD,
    RETURN_FIELD,
    USERNAME_FIELD,
    PageRenderer,
)

log = logging.getLogger("authgate.signup")

EMAIL_FIELD = "email"
PASSWORD2_FIELD = "password2"
MIN_PASSWORD = 8
MAX_USERNAME = 64
MAX_EMAIL = 254
_FIELDS = (CSRF_FIELD, RETURN_FIELD, USERNAME_FIELD, EMAIL_FIELD, PASSWORD_FIELD, PASSWORD2_FIELD)
_MAX_FIELD = 1024
_EXPIRED = "This page has expired. Please try again."
_TAKEN = "That username is taken. Please choose another."
_BANNED = "Too many attempts. Please wait before trying again."


def username_problem(username: str) -> str | None:
    """Why a chosen username cannot be used, or None."""
    if not username:
        return "Please choose a username."
    if len(username) > MAX_USERNAME:
        return f"A username has at most {MAX_USERNAME} characters."
    if any(ch.isspace() or unicodedata.category(ch).startswith("C") for ch in username):
        return "A username cannot contain spaces or control characters."
    return None


def email_problem(email: str) -> str | None:
    local, at, domain = email.rpartition("@")
    if (
        not at
        or not local
        or "." not in domain.strip(".")
        or len(email) > MAX_EMAIL
        or any(ch.isspace() or unicodedata.category(ch).startswith("C") for ch in email)
    ):
        return "Please enter a valid e-mail address."
    return None


class SignupPages:
    def __init__(
        self, site: LoginPages, renderer: PageRenderer, runtime: Callable[[], Runtime]
    ) -> None:
        self.site = site
        self.renderer = renderer
        self.runtime = runtime
        self.url = f"{site.prefix}/signup"

    async def page(self, req: ReservedRequest) -> web.StreamResponse:
        tenant = req.tenant
        if tenant is None:
            return self._error(req, 421)
        if not tenant.signup or "password" not in tenant.login_methods:
            return self._error(req, 404)
        presession = self._presession(req)
        if req.request.method in ("GET", "HEAD"):
            return self._form_page(
                req, presession or new_presession_id(), rd=req.request.query.get("rd", "")[:2048]
            )
        if req.request.method != "POST":
            return web.Response(status=405, headers={"Allow": "GET, POST"})
        return await self._post(req, presession)

    # --- helpers -------------------------------------------------------------------

    def _presession(self, req: ReservedRequest) -> str | None:
        value = req.request.cookies.get(PRESESSION_COOKIE, "")
        return value if 30 <= len(value) <= 100 and value.isascii() else None

    def _error(self, req: ReservedRequest, status: int, detail: str | None = None) -> web.Response:
        html = self.renderer.render_error(
            status, branding=self.site.branding(req.tenant), detail=detail
        )
        return self.site.page(req, html, status)

    def _form_page(
        self,
        req: ReservedRequest,
        presession: str,
        *,
        rd: str,
        username: str = "",
        email: str = "",
        error: str | None = None,
        status: int = 200,
    ) -> web.Response:
        runtime = self.runtime()
        html = self.renderer.render_page(
            "signup.html",
            self.site.branding(req.tenant),
            csrf_token=runtime.csrf.issue(f"presession:{presession}"),
            return_to=rd,
            username=username,
            email=email,
            error=error,
            signup_url=self.url,
            min_password=MIN_PASSWORD,
        )
        response = self.site.page(req, html, status)
        if presession != self._presession(req):
            self.site.set_presession(response, presession)
        return response

    async def _form(self, req: ReservedRequest) -> dict[str, str] | None:
        data = await posted_form(req, self.site.config.server.client_timeout)
        if data is None:
            return None
        form: dict[str, str] = {}
        for key in _FIELDS:
            value = data.get(key)
            form[key] = value[:_MAX_FIELD] if isinstance(value, str) else ""
        return form

    # --- the POST ------------------------------------------------------------------

    async def _post(self, req: ReservedRequest, presession: str | None) -> web.StreamResponse:
        tenant = req.tenant
        assert tenant is not None
        form = await self._form(req)
        if form is None:
            return self._error(req, 400)
        runtime = self.runtime()
        rd = form[RETURN_FIELD]
        if (
            presession is None
            or not self.site.same_origin(req)
            or not runtime.csrf.check(form[CSRF_FIELD], f"presession:{presession}")
        ):
            return self._form_page(
                req, presession or new_presession_id(), rd=rd, error=_EXPIRED, status=403
            )
        username = form[USERNAME_FIELD].strip()
        email = form[EMAIL_FIELD].strip()

        def again(error: str, status: int = 400) -> web.Response:
            assert presession is not None
            return self._form_page(
                req, presession, rd=rd, username=username, email=email, error=error, status=status
            )

        problem = username_problem(username) or email_problem(email)
        if problem is None and len(form[PASSWORD_FIELD]) < MIN_PASSWORD:
            problem = f"The password must have at least {MIN_PASSWORD} characters."
        if problem is None and form[PASSWORD_FIELD] != form[PASSWORD2_FIELD]:
            problem = "The two passwords differ."
        if problem is not None:
            return again(problem)
        banned = await runtime.regulator.banned(tenant.id, "", req.client_ip)
        if banned.banned:
            response = again(_BANNED, 429)
            response.headers["Retry-After"] = str(banned.retry_after)
            return response
        now = runtime.sessions.now()
        user = User(
            id=new_id(),
            tenant=tenant.id,
            username=username,
            email=email,
            display_name=None,
            groups=(),
            roles=(),
            disabled=False,
            password_hash=await runtime.hasher.hash(form[PASSWORD_FIELD]),
            created=now,
            updated=now,
        )
        try:
            await runtime.stores.users.create(user)
        except AlreadyExists:
            await runtime.regulator.failed(tenant.id, "", req.client_ip, Attempt(True))
            return again(_TAKEN, 409)
        user_agent = req.request.headers.get("User-Agent")
        runtime.audit.record(
            Event.USER_CREATED,
            tenant=tenant.id,
            user=user.username,
            ip=req.client_ip,
            user_agent=user_agent,
            outcome="ok",
            details={"via": "signup"},
        )
        session_id, record = await runtime.sessions.create(
            user,
            ("pwd",),
            ip=req.client_ip,
            user_agent=user_agent,
            replaces=req.request.cookies.get(self.site.config.sessions.cookie_name) or None,
        )
        runtime.metrics.sign_in(tenant.id, "password", "success")
        runtime.audit.record(
            Event.LOGIN_SUCCESS,
            tenant=tenant.id,
            user=user.username,
            ip=req.client_ip,
            user_agent=user_agent,
            session_fp=fingerprint(record.id_hash),
            outcome="ok",
            details={"via": "signup"},
        )
        log.info("signed up", extra={"tenant": tenant.id, "user": user.username})
        target = self.site.return_url(req, rd)
        response = web.Response(
            status=303, headers={"Location": target, "Cache-Control": "no-store"}
        )
        self.site.set_session_cookie(response, tenant, session_id, record, req.host)
        self.site.set_presession(response, new_presession_id())
        return response
