"""BrandingView: final URLs, safe links and CSS values, resolved once from the config."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config.model import Branding, FooterLink, TenantConfig
from login_ui.branding import BrandingAsset, BrandingView


def view(prefix: str = "/.authgate", tenant_id: str = "acme", **branding: object) -> BrandingView:
    config = TenantConfig(
        id=tenant_id,
        name="Acme",
        domains=("acme.test",),
        branding=Branding(**branding),  # type: ignore[arg-type]
    )
    return BrandingView.from_tenant(config, prefix)


def test_logo_favicon_and_custom_css_files_become_asset_urls_under_the_prefix() -> None:
    v = view(
        "/_auth/",
        logo="/srv/brand/Logo.SVG",
        favicon="/srv/brand/icon.ico",
        custom_css=Path("/srv/brand/site.css"),
    )
    assert v.logo_url == "/_auth/assets/acme/logo.svg"
    assert v.favicon_url == "/_auth/assets/acme/favicon.ico"
    assert v.custom_css_url == "/_auth/assets/acme/custom.css"
    assert v.assets == (
        BrandingAsset("/_auth/assets/acme/logo.svg", Path("/srv/brand/Logo.SVG")),
        BrandingAsset("/_auth/assets/acme/favicon.ico", Path("/srv/brand/icon.ico")),
        BrandingAsset("/_auth/assets/acme/custom.css", Path("/srv/brand/site.css")),
    )


def test_the_tenant_id_is_quoted_in_asset_urls() -> None:
    assert view(tenant_id="a/b c", logo="/x.png").logo_url == "/.authgate/assets/a%2Fb%20c/logo.png"


def test_an_https_logo_is_kept_and_its_origin_listed_for_the_csp() -> None:
    v = view(logo="https://cdn.acme.test/logo.png", favicon="https://cdn.acme.test/f.ico")
    assert v.logo_url == "https://cdn.acme.test/logo.png"
    assert v.image_origins == ("https://cdn.acme.test",)
    assert v.assets == ()


def test_a_data_uri_logo_needs_no_asset_and_no_origin() -> None:
    v = view(logo="data:image/svg+xml;base64,PHN2Zy8+")
    assert v.logo_url == "data:image/svg+xml;base64,PHN2Zy8+"
    assert v.image_origins == ()


@pytest.mark.parametrize(
    "logo", ["http://cdn.acme.test/logo.png", "ftp://x/logo.png", "https://a;b/x.png"]
)
def test_a_logo_url_that_is_not_plain_https_is_refused(logo: str) -> None:
    with pytest.raises(ValueError, match="tenant acme"):
        view(logo=logo)


def test_a_bad_colour_is_refused_naming_the_tenant() -> None:
    with pytest.raises(ValueError, match="tenant acme"):
        view(primary_color="orange")
    with pytest.raises(ValueError, match="tenant acme"):
        view(secondary_color="#12")


def test_colours_are_normalised() -> None:
    v = view(primary_color="#ABC", secondary_color="#00FF00")
    assert (v.primary, v.secondary) == ("#aabbcc", "#00ff00")


def test_only_safe_footer_links_are_kept() -> None:
    links = (
        FooterLink("Privacy", "https://acme.test/privacy"),
        FooterLink("Help", "/help"),
        FooterLink("Mail", "mailto:help@acme.test"),
        FooterLink("Bad", "javascript:alert(1)"),
        FooterLink("Bad", "JavaScript:alert(1)"),
        FooterLink("Bad", "data:text/html,<script>"),
        FooterLink("Bad", "//evil.test/"),
        FooterLink("Bad", "/\\evil.test"),
        FooterLink("Bad", "https://acme.test/\r\nX: y"),
    )
    assert [link.url for link in view(footer_links=links).footer_links] == [
        "https://acme.test/privacy",
        "/help",
        "mailto:help@acme.test",
    ]


def test_css_values_that_could_escape_the_stylesheet_fall_back_to_defaults() -> None:
    default = Branding()
    hostile = view(font_stack="Inter;}body{display:none", corner_radius="4px;}*{color:red")
    assert hostile.font_stack == default.font_stack
    assert hostile.corner_radius == default.corner_radius
    fine = view(font_stack='"Inter", Arial, sans-serif', corner_radius="0.5rem")
    assert fine.font_stack == '"Inter", Arial, sans-serif'
    assert fine.corner_radius == "0.5rem"


def test_a_malformed_support_email_is_dropped() -> None:
    assert view(support_email="help@acme.test").support_email == "help@acme.test"
    assert view(support_email="x@y?subject=spam").support_email is None
    assert view(support_email="not an email").support_email is None
