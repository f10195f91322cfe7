"""Renders the pages a person sees under the reserved prefix, built once at start-up.

Templates are Jinja2 with autoescaping on for every template. A tenant may
override any template from its own directory (searched first, then the built-in
ones). Styles reach the page only as stylesheets from our own origin:
`{prefix}/static/authgate.css` (the layout, with neutral colours) and
`{prefix}/theme.css` (the tenant's computed colours, `theme_css()`), so the
strict CSP in `headers.py` needs neither 'unsafe-inline' nor a nonce.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import jinja2

from gateway.config.model import TenantConfig
from login_ui.branding import BrandingAsset, BrandingView
from login_ui.headers import security_headers
from login_ui.messages import error_message
from login_ui.theme import theme_for

__all__ = [
    "CSRF_FIELD",
    "EVERYWHERE_FIELD",
    "NEUTRAL_PRIMARY",
    "PASSWORD_FIELD",
    "REMEMBER_FIELD",
    "RETURN_FIELD",
    "STATIC_DIR",
    "TEMPLATE_DIR",
    "USERNAME_FIELD",
    "BrandingAsset",
    "BrandingView",
    "PageRenderer",
    "security_headers",
]

TEMPLATE_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"  # served at {prefix}/static/

# Form field names the handlers read back.
CSRF_FIELD = "csrf_token"
RETURN_FIELD = "rd"
USERNAME_FIELD = "username"
PASSWORD_FIELD = "password"  # noqa: S105 - a form field name, not a secret
REMEMBER_FIELD = "remember_me"
EVERYWHERE_FIELD = "everywhere"

NEUTRAL_PRIMARY = "#334155"  # the look of an unknown host; authgate.css carries its theme

_THEME_CACHE_LIMIT = 4096  # tenants x branding revisions; cleared when exceeded


@dataclass(frozen=True)
class PageUrls:
    """Every URL a template links to, computed by the renderer (templates build none)."""

    stylesheet: str
    theme: str | None
    custom_css: str | None
    login: str
    passkey: str
    logout: str


class PageRenderer:
    """Jinja2 environments (built-in, and one per tenant with overrides) plus theme CSS."""

    def __init__(
        self, prefix: str, template_dirs_by_tenant: Mapping[str, Path] | None = None
    ) -> None:
        self.prefix = prefix.rstrip("/")
        builtin = jinja2.FileSystemLoader(TEMPLATE_DIR)
        self._default = _environment(builtin)
        self._by_tenant = {
            tenant_id: _environment(
                jinja2.ChoiceLoader([jinja2.FileSystemLoader(directory), builtin])
            )
            for tenant_id, directory in (template_dirs_by_tenant or {}).items()
        }
        self._themes: dict[tuple[str, str, str | None, str, str], str] = {}

    @classmethod
    def for_tenants(cls, prefix: str, tenants: Iterable[TenantConfig]) -> PageRenderer:
        """A renderer with every tenant's `branding.templates` directory as its override."""
        return cls(
            prefix,
            {t.id: t.branding.templates for t in tenants if t.branding.templates is not None},
        )

    def branding_for(self, tenant: TenantConfig) -> BrandingView:
        return BrandingView.from_tenant(tenant, self.prefix)

    @property
    def stylesheet_url(self) -> str:
        return f"{self.prefix}/static/authgate.css"

    # --- theme -----------------------------------------------------------------------

    def theme_css(self, branding: BrandingView | None) -> str:
        """The stylesheet served at `{prefix}/theme.css`: computed colours, font, radius."""
        if branding is None:
            branding_key: tuple[str, str, str | None, str, str] = (
                "",
                NEUTRAL_PRIMARY,
                None,
                "",
                "",
            )
        else:
            branding_key = (
                branding.tenant_id,
                branding.primary,
                branding.secondary,
                branding.font_stack,
                branding.corner_radius,
            )
        cached = self._themes.get(branding_key)
        if cached is not None:
            return cached
        if len(self._themes) >= _THEME_CACHE_LIMIT:
            self._themes.clear()
        if branding is None:
            css = theme_for(NEUTRAL_PRIMARY).css_variables()
        else:
            css = theme_for(branding.primary, branding.secondary).css_variables() + (
                f":root {{\n  --ag-font: {branding.font_stack};\n"
                f"  --ag-radius: {branding.corner_radius};\n}}\n"
            )
        self._themes[branding_key] = css
        return css

    def theme_css_url(self, branding: BrandingView) -> str:
        """`{prefix}/theme.css` with a content version, so a rebrand is never served stale."""
        digest = hashlib.sha256(self.theme_css(branding).encode()).hexdigest()[:12]
        return f"{self.prefix}/theme.css?v={digest}"

    # --- pages -----------------------------------------------------------------------

    def render_error(
        self,
        status: int,
        *,
        branding: BrandingView | None,
        request_id: str | None = None,
        detail: str | None = None,
        back_url: str | None = "/",
    ) -> str:
        """A branded error page: title, one line, optional detail and request id, a way back.

        `detail` is shown to the user as is (escaped): never put secrets or internals in it.
        """
        message = error_message(status)
        return self.render_page(
            "error.html",
            branding,
            status=status,
            title=message.title,
            explanation=message.explanation,
            detail=detail,
            request_id=request_id,
            back_url=_local_url(back_url) if back_url is not None else None,
        )

    def render_login(
        self,
        *,
        branding: BrandingView | None,
        csrf_token: str,
        return_to: str = "",
        username: str = "",
        error: str | None = None,
        password_enabled: bool = True,
        passkey_enabled: bool = False,
        remember_me_enabled: bool = True,
        request_id: str | None = None,
    ) -> str:
        """The sign-in page; a plain POST form to `{prefix}/login`, works without JavaScript.

        `return_to` goes back in the `rd` field as given: the handler validates it on POST.
        With `passkey_enabled`, a second form POSTs to `{prefix}/login/passkey`, where
        the WebAuthn handler starts the ceremony (and a script may take over the click).
        """
        return self.render_page(
            "login.html",
            branding,
            csrf_token=csrf_token,
            return_to=return_to,
            username=username,
            error=error,
            password_enabled=password_enabled,
            passkey_enabled=passkey_enabled,
            remember_me_enabled=remember_me_enabled,
            request_id=request_id,
        )

    def render_logout(
        self,
        *,
        branding: BrandingView | None,
        csrf_token: str,
        return_to: str = "",
        user_name: str | None = None,
        signed_out: bool = False,
        cancel_url: str = "/",
    ) -> str:
        """The sign-out confirmation (POST with an "everywhere" option), or its result page."""
        return self.render_page(
            "logout.html",
            branding,
            csrf_token=csrf_token,
            return_to=return_to,
            user_name=user_name,
            signed_out=signed_out,
            cancel_url=_local_url(cancel_url),
        )

    def render_page(self, template: str, branding: BrandingView | None, **values: object) -> str:
        """Any page template with the common context (brand, urls, field names)."""
        environment = self._default
        if branding is not None:
            environment = self._by_tenant.get(branding.tenant_id, self._default)
        urls = PageUrls(
            stylesheet=self.stylesheet_url,
            theme=self.theme_css_url(branding) if branding is not None else None,
            custom_css=branding.custom_css_url if branding is not None else None,
            login=f"{self.prefix}/login",
            passkey=f"{self.prefix}/login/passkey",
            logout=f"{self.prefix}/logout",
        )
        return environment.get_template(template).render(
            brand=branding,
            urls=urls,
            fields=_FIELDS,
            **values,
        )


@dataclass(frozen=True)
class _FieldNames:
    csrf: str = CSRF_FIELD
    return_to: str = RETURN_FIELD
    username: str = USERNAME_FIELD
    password: str = PASSWORD_FIELD
    remember: str = REMEMBER_FIELD
    everywhere: str = EVERYWHERE_FIELD


_FIELDS = _FieldNames()


def _environment(loader: jinja2.BaseLoader) -> jinja2.Environment:
    return jinja2.Environment(
        loader=loader,
        autoescape=True,  # every template, whatever its name: tenant names are data
        undefined=jinja2.StrictUndefined,  # a typo in a template fails loudly in tests
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )


def _local_url(url: str) -> str:
    """A same-site path for a link, or "/": never `//host`, `/\\host` or a scheme."""
    if (
        url.startswith("/")
        and not url.startswith(("//", "/\\"))
        and not any(c in url for c in "\r\n\t\\")
    ):
        return url
    return "/"
