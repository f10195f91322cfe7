"""The SSO hand-off between a tenant's unrelated domains, as top-level GET redirects.

    wiki.other.test/x  →  wiki.other.test{prefix}/login?rd=…        (no session here)
                       →  login.acme.test{prefix}/sso/authorize?rd=…  (the login host)
                       →  [sign in there first, if needed, then back to authorize]
                       →  wiki.other.test{prefix}/sso/callback?code=…&rd=…
                       →  wiki.other.test/x                           (own session cookie)

Only GETs and redirects: the session cookie is SameSite=Lax, which a top-level GET
carries, and the strict CSP's form-action (checked on the redirects after the
sign-in POST) lists the tenant's other domains (`LoginPages.page_headers`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from urllib.parse import quote, urlsplit

from aiohttp import web

from gateway.config.model import sso_login_host
from gateway.reserved import ReservedRequest
from gateway.runtime import Runtime
from gateway.sessions import fingerprint
from gateway.sso import shares_session
from login_ui.handlers import LoginPages

log = logging.getLogger("authgate.sso")

_INVALID = "This sign-in link has expired or was already used. Please try again."


def _redirect(location: str) -> web.Response:
    return web.Response(
        status=302,
        headers={
            "Location": location,
            "Cache-Control": "no-store",
            "Referrer-Policy": "no-referrer",
        },
    )


def _port_suffix(host_header: str) -> str:
    _, sep, tail = host_header.rpartition(":")
    return f":{tail}" if sep and tail.isdigit() else ""


class SsoPages:
    """`{prefix}/sso/authorize` (on the login host) and `{prefix}/sso/callback` (on the
    target), plus the hook that sends a sign-in on another domain to the login host."""

    def __init__(self, site: LoginPages, runtime: Callable[[], Runtime]) -> None:
        self.site = site
        self.prefix = site.prefix
        self._runtime = runtime

    def login_redirect(self, req: ReservedRequest, rd: str) -> web.Response | None:
        """Where the login page sends the browser instead of showing a form: the tenant's
        login host, when this host does not share its session cookie; else None."""
        tenant = req.tenant
        if tenant is None:
            return None
        login_host = sso_login_host(tenant)
        if login_host is None or shares_session(tenant, login_host, req.host):
            return None
        target = self.site.return_url(req, rd)
        origin = f"{req.proto}://{login_host}{_port_suffix(req.host_header)}"
        return _redirect(f"{origin}{self.prefix}/sso/authorize?rd={quote(target, safe='')}")

    async def authorize(self, req: ReservedRequest) -> web.StreamResponse:
        tenant = req.tenant
        if tenant is None:
            return self._error(req, 421)
        if req.request.method not in ("GET", "HEAD"):
            return web.Response(status=405, headers={"Allow": "GET"})
        # The target: a URL on one of this tenant's hosts (checked), else the default.
        target = self.site.return_url(req, req.request.query.get("rd", "")[:2048])
        parts = urlsplit(target)
        target_host = (parts.hostname or req.host).rstrip(".").lower()
        if shares_session(tenant, req.host, target_host):
            return _redirect(target)  # the cookie already reaches it
        runtime = self._runtime()
        cookie = req.request.cookies.get(runtime.config.sessions.cookie_name)
        active = await runtime.sessions.load(cookie, tenant.id) if cookie else None
        if active is None:
            here = f"{req.origin}{self.prefix}/sso/authorize?rd={quote(target, safe='')}"
            return _redirect(f"{self.prefix}/login?rd={quote(here, safe='')}")
        code = await runtime.sso.issue(active.record, target_host)
        log.info(
            "sso code issued",
            extra={
                "tenant": tenant.id,
                "target_host": target_host,
                "session": fingerprint(active.id_hash),
                "request_id": req.request_id,
            },
        )
        callback = (
            f"{parts.scheme}://{parts.netloc}{self.prefix}/sso/callback"
            f"?code={quote(code, safe='')}&rd={quote(target, safe='')}"
        )
        return _redirect(callback)

    async def callback(self, req: ReservedRequest) -> web.StreamResponse:
        tenant = req.tenant
        if tenant is None:
            return self._error(req, 421)
        if req.request.method not in ("GET", "HEAD"):
            return web.Response(status=405, headers={"Allow": "GET"})
        runtime = self._runtime()
        code = req.request.query.get("code", "")[:128]
        session = await runtime.sso.redeem(code, tenant.id, req.host)
        if session is None:
            log.info(
                "sso code refused",
                extra={"tenant": tenant.id, "host": req.host, "request_id": req.request_id},
            )
            return self._error(req, 403, _INVALID)
        target = self.site.return_url(req, req.request.query.get("rd", "")[:2048])
        response = _redirect(target)
        self.site.set_session_cookie(response, tenant, session.session_id, session.record, req.host)
        return response

    def _error(self, req: ReservedRequest, status: int, detail: str | None = None) -> web.Response:
        html = self.site.renderer.render_error(
            status, branding=self.site.branding(req.tenant), detail=detail
        )
        return self.site.page(req, html, status)
