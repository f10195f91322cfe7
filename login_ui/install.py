"""Wiring login_ui into a gateway server: branded pages everywhere, and the interstitial."""

from __future__ import annotations

from collections.abc import Callable

from gateway.config.model import TenantConfig
from gateway.runtime import Runtime
from gateway.server import GatewayServer
from login_ui.account import AccountPages
from login_ui.branding import BrandingView
from login_ui.handlers import LoginPages
from login_ui.headers import security_headers
from login_ui.mfa import Interstitial, MfaPages
from login_ui.pages import PageRenderer
from login_ui.signup import SignupPages
from login_ui.sso import SsoPages
from login_ui.webauthn import WebAuthnPages
from login_ui.webauthn import install as install_webauthn


class BrandedPages:
    """The gateway's `PageRenderer` protocol, answered with the tenant's branded pages."""

    def __init__(
        self,
        renderer: PageRenderer,
        branding: Callable[[TenantConfig | None], BrandingView | None],
        dev_mode: bool,
    ) -> None:
        self.renderer = renderer
        self._branding = branding  # LoginPages.branding: live tenants, cached per look
        self._dev_mode = dev_mode

    def security_headers(self, tenant: TenantConfig | None) -> tuple[tuple[str, str], ...]:
        """The same CSP, framing, referrer and HSTS headers as every other page of ours."""
        view = self._branding(tenant)
        return security_headers(
            self._dev_mode, image_origins=view.image_origins if view is not None else ()
        )

    def render_error(
        self,
        status: int,
        *,
        tenant: TenantConfig | None,
        request_id: str | None = None,
        detail: str | None = None,
    ) -> str:
        branding = self._branding(tenant)
        return self.renderer.render_error(
            status, branding=branding, request_id=request_id, detail=detail
        )


def login_ui_extension(server: GatewayServer) -> None:
    """Install after the identity extension: its handlers use `server.runtime`."""
    config = server.config
    renderer = PageRenderer.for_tenants(config.server.prefix, config.tenants)

    def runtime() -> Runtime:
        if server.runtime is None:
            raise RuntimeError("login_ui needs the identity extension installed first")
        return server.runtime

    pages = LoginPages(config, renderer, runtime, server.tenants)
    server.hooks.pages = BrandedPages(renderer, pages.branding, config.server.dev_mode)
    sso = SsoPages(pages, runtime)
    pages.sso_redirect = sso.login_redirect
    server.reserved.add("/sso/authorize", sso.authorize)
    server.reserved.add("/sso/callback", sso.callback)
    server.reserved.add("/login", pages.login)
    server.reserved.add("/logout", pages.logout)
    server.reserved.add("/signup", SignupPages(pages, renderer, runtime).page)
    server.reserved.add("/theme.css", pages.theme_css)
    server.reserved.add_prefix("/static/", pages.static)
    server.reserved.add_prefix("/assets/", pages.asset)
    shared = Interstitial(pages, renderer, runtime)
    mfa = MfaPages(shared)
    server.reserved.add("/mfa", mfa.prompt)
    server.reserved.add("/mfa/totp", mfa.totp)
    server.reserved.add("/mfa/backup", mfa.backup)
    server.reserved.add("/mfa/enrol", mfa.enrol)
    server.reserved.add("/account", AccountPages(shared).page)
    install_webauthn(server.reserved, WebAuthnPages(shared))
