"""What a page needs to know of a tenant's branding, resolved once from the config.

`BrandingView` is the only branding the templates see: URLs are already final
(a logo file becomes `{prefix}/assets/<tenant>/logo.<ext>`), footer links are
limited to safe schemes, and the font stack and radius are checked so that they
cannot break out of the generated stylesheet. The files behind asset URLs are
listed in `assets`, for the handler that serves them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

from gateway.config.model import Branding, FooterLink, TenantConfig
from login_ui.theme import parse_hex

__all__ = ["DEFAULT_PREFIX", "BrandingAsset", "BrandingView"]

DEFAULT_PREFIX = "/.authgate"

_DEFAULT = Branding()
_FONT_STACK = re.compile(r"[\w\s,.'\"-]{1,300}")
_RADIUS = re.compile(r"0|\d{1,3}(\.\d{1,3})?(px|rem|em)")
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9.-]{1,253}\.[A-Za-z]{2,63}")
_EXTENSION = re.compile(r"[a-z0-9]{1,8}")
_HOST_PORT = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?")


@dataclass(frozen=True)
class BrandingAsset:
    """A file served at `url` (under `{prefix}/assets/<tenant>/`) from `path`."""

    url: str
    path: Path


@dataclass(frozen=True)
class BrandingView:
    tenant_id: str
    name: str
    primary: str  # normalised #rrggbb
    secondary: str | None
    font_stack: str
    corner_radius: str
    logo_url: str | None = None
    favicon_url: str | None = None
    custom_css_url: str | None = None
    footer_links: tuple[FooterLink, ...] = ()
    support_email: str | None = None
    assets: tuple[BrandingAsset, ...] = ()
    image_origins: tuple[str, ...] = ()  # remote logo/favicon origins, for the CSP img-src

    @classmethod
    def from_tenant(cls, tenant: TenantConfig, prefix: str = DEFAULT_PREFIX) -> BrandingView:
        """Resolve a tenant's branding; raises ValueError naming the tenant on a bad value."""
        branding = tenant.branding
        base = f"{prefix.rstrip('/')}/assets/{quote(tenant.id, safe='')}"
        assets: list[BrandingAsset] = []
        origins: list[str] = []

        def image(value: str | None, stem: str) -> str | None:
            if value is None or not value.strip():
                return None
            value = value.strip()
            if value.startswith("data:image/"):
                return value
            if "://" in value:
                parts = urlsplit(value)
                if parts.scheme != "https" or not _HOST_PORT.fullmatch(parts.netloc):
                    raise ValueError(f"tenant {tenant.id}: {stem} must be an https URL or a file")
                origin = f"https://{parts.netloc}"
                if origin not in origins:
                    origins.append(origin)
                return value
            return asset(Path(value), stem)

        def asset(path: Path, stem: str) -> str:
            extension = path.suffix.lower().lstrip(".")
            url = f"{base}/{stem}.{extension if _EXTENSION.fullmatch(extension) else 'bin'}"
            assets.append(BrandingAsset(url=url, path=path))
            return url

        try:
            primary = parse_hex(branding.primary_color)
            secondary = parse_hex(branding.secondary_color) if branding.secondary_color else None
        except ValueError as exc:
            raise ValueError(f"tenant {tenant.id}: {exc}") from None
        return cls(
            tenant_id=tenant.id,
            name=tenant.name,
            primary=primary,
            secondary=secondary,
            font_stack=_checked(branding.font_stack, _FONT_STACK, _DEFAULT.font_stack),
            corner_radius=_checked(branding.corner_radius, _RADIUS, _DEFAULT.corner_radius),
            logo_url=image(branding.logo, "logo"),
            favicon_url=image(branding.favicon, "favicon"),
            custom_css_url=asset(branding.custom_css, "custom") if branding.custom_css else None,
            footer_links=tuple(link for link in branding.footer_links if _safe_link(link.url)),
            support_email=(
                branding.support_email
                if branding.support_email and _EMAIL.fullmatch(branding.support_email)
                else None
            ),
            assets=tuple(assets),
            image_origins=tuple(origins),
        )


def _checked(value: str, pattern: re.Pattern[str], default: str) -> str:
    """A CSS value that matches `pattern`, or the default: it lands inside a stylesheet."""
    value = value.strip()
    return value if pattern.fullmatch(value) else default


def _safe_link(url: str) -> bool:
    """https/http/mailto links or same-site paths; never javascript:, data: or `//host`."""
    url = url.strip()
    if any(c in url for c in "\r\n\t\\") or url.startswith("//"):
        return False
    if url.startswith("/"):
        return True
    scheme = urlsplit(url).scheme.lower()
    if scheme == "mailto":
        return True
    return scheme in ("https", "http") and bool(urlsplit(url).netloc)
