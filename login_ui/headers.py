"""Security headers for every page under the reserved prefix (issue 6, "safe pages")."""

from __future__ import annotations

import re

__all__ = ["CONTENT_SECURITY_POLICY", "security_headers"]

# Styles and scripts come only from our own origin: the tenant's colours are a
# stylesheet (`{prefix}/theme.css`), not an inline <style>, so no 'unsafe-inline'
# and no per-request nonce is needed — and the pages stay cacheable byte for byte.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)

# One year; no includeSubDomains or preload: the hosts are the tenants' domains, and
# a gateway must not decide HTTPS-only for subdomains it does not serve.
_HSTS = "max-age=31536000"
_ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?")


def security_headers(
    dev_mode: bool,
    *,
    image_origins: tuple[str, ...] = (),
    form_targets: tuple[str, ...] = (),
) -> tuple[tuple[str, str], ...]:
    """The headers to add to a page; HSTS only outside dev mode (plain http there).

    `image_origins` widens img-src for a tenant whose logo is a remote https URL
    (see `BrandingView.image_origins`). `form_targets` widens form-action: browsers
    apply it to the redirect that follows a form POST, so a login that ends on
    another of the tenant's domains (SSO hand-off) must list that origin.
    """
    for origin in (*image_origins, *form_targets):
        if not _ORIGIN.fullmatch(origin):  # it lands inside a header: no ';' or spaces
            raise ValueError(f"not an origin: {origin!r}")
    policy = CONTENT_SECURITY_POLICY
    if image_origins:
        policy = policy.replace(
            "img-src 'self' data:", "img-src 'self' data: " + " ".join(image_origins)
        )
    if form_targets:
        policy = policy.replace(
            "form-action 'self'", "form-action 'self' " + " ".join(form_targets)
        )
    headers: list[tuple[str, str]] = [
        ("Content-Security-Policy", policy),
        ("X-Frame-Options", "DENY"),
        # same-origin: our URLs carry the return address (`rd`), which can name internal
        # paths, so no other site learns them. Not no-referrer: under it browsers send
        # `Origin: null` on every POST (Fetch spec), and the forms' Origin check (SECURITY
        # invariant 9) then refuses every real sign-in.
        ("Referrer-Policy", "same-origin"),
        ("X-Content-Type-Options", "nosniff"),
        ("Cross-Origin-Opener-Policy", "same-origin"),
    ]
    if not dev_mode:
        headers.append(("Strict-Transport-Security", _HSTS))
    return tuple(headers)
