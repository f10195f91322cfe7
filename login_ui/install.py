"""Wiring login_ui into a gateway server: branded pages everywhere, and the interstitial."""

from __future__ import annotations

from gateway.config.model import TenantConfig
from gateway.runtime import Runtime
from gateway.server import GatewayServer
from login_ui.branding import BrandingView
from login_ui.handlers import LoginPages
from login_ui.mfa import Interstitial, MfaPages
from login_ui.pages import PageRenderer


class BrandedPages:
    """The gateway's `PageRenderer` protocol, answered with the tenant's branded pages."""

    def __init__(self, renderer: PageRenderer, tenants: tuple[TenantConfig, ...]) -> None:
        self.renderer = renderer
        self._branding: dict[str, BrandingView] = {t.id: renderer.branding_for(t) for t in tenants}

    def render_error(
        self,
        status: int,
        *,
        tenant: TenantConfig | None,
        request_id: str | None = None,
        detail: str | None = None,
    ) -> str:
        branding = self._branding.get(tenant.id) if tenant is not None else None
        return self.renderer.render_error(
            status, branding=branding, request_id=request_id, detail=detail
        )


def login_ui_extension(server: GatewayServer) -> None:
    """Install after the identity extension: its handlers use `server.runtime`."""
    config = server.config
    renderer = PageRenderer.for_tenants(config.server.prefix, config.tenants)
    server.hooks.pages = BrandedPages(renderer, config.tenants)

    def runtime() -> Runtime:
        if server.runtime is None:
            raise RuntimeError("login_ui needs the identity extension installed first")
        return server.runtime

    pages = LoginPages(config, renderer, runtime)
    server.reserved.add("/login", pages.login)
    server.reserved.add("/logout", pages.logout)
    server.reserved.add("/theme.css", pages.theme_css)
    server.reserved.add_prefix("/static/", pages.static)
    server.reserved.add_prefix("/assets/", pages.asset)
    mfa = MfaPages(Interstitial(pages, renderer, runtime))
    server.reserved.add("/mfa", mfa.prompt)
    server.reserved.add("/mfa/totp", mfa.totp)
    server.reserved.add("/mfa/backup", mfa.backup)
    server.reserved.add("/mfa/enrol", mfa.enrol)
