"""Security headers of every page under the reserved prefix."""

from __future__ import annotations

import pytest

from login_ui.headers import CONTENT_SECURITY_POLICY, security_headers


def test_production_pages_get_a_strict_csp_framing_and_transport_headers() -> None:
    headers = dict(security_headers(dev_mode=False))
    assert headers["Content-Security-Policy"] == (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    )
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "same-origin"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Strict-Transport-Security"] == "max-age=31536000"


def test_dev_mode_has_no_hsts_but_keeps_everything_else() -> None:
    dev = dict(security_headers(dev_mode=True))
    assert "Strict-Transport-Security" not in dev
    assert dev["Content-Security-Policy"] == CONTENT_SECURITY_POLICY


def test_the_csp_never_allows_inline_code() -> None:
    assert "unsafe" not in CONTENT_SECURITY_POLICY
    assert "*" not in CONTENT_SECURITY_POLICY


def test_remote_logo_origins_and_sso_form_targets_widen_only_their_directive() -> None:
    csp = dict(
        security_headers(
            dev_mode=False,
            image_origins=("https://cdn.acme.test",),
            form_targets=("https://acme-wiki.test",),
        )
    )["Content-Security-Policy"]
    assert "img-src 'self' data: https://cdn.acme.test;" in csp
    assert csp.endswith("form-action 'self' https://acme-wiki.test")
    assert "script-src 'self';" in csp


@pytest.mark.parametrize("origin", ["https://a.test; script-src *", "'unsafe-inline'", "*", ""])
def test_anything_but_an_origin_is_refused(origin: str) -> None:
    with pytest.raises(ValueError):
        security_headers(dev_mode=False, image_origins=(origin,))
