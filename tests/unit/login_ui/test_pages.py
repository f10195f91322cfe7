"""Rendering the login, sign-out and error pages for tenants and for an unknown host."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from gateway.config.model import Branding, FooterLink, TenantConfig
from login_ui.pages import (
    NEUTRAL_PRIMARY,
    STATIC_DIR,
    BrandingView,
    PageRenderer,
)
from login_ui.theme import theme_for

PREFIX = "/.authgate"
STATUSES = (400, 403, 404, 421, 429, 500, 502, 503, 504)


class Elements(HTMLParser):
    """Every start tag with its attributes, and the text, of a rendered page."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def find(self, tag: str, **attrs: str) -> list[dict[str, str | None]]:
        return [
            a
            for t, a in self.tags
            if t == tag and all(a.get(k.rstrip("_")) == v for k, v in attrs.items())
        ]

    def one(self, tag: str, **attrs: str) -> dict[str, str | None]:
        found = self.find(tag, **attrs)
        assert len(found) == 1, f"{tag} {attrs}: {found}"
        return found[0]

    @property
    def all_text(self) -> str:
        return " ".join("".join(self.text).split())


def tenant(tenant_id: str, name: str, **branding: object) -> TenantConfig:
    return TenantConfig(
        id=tenant_id,
        name=name,
        domains=(f"{tenant_id}.test",),
        branding=Branding(**branding),  # type: ignore[arg-type]
    )


ACME = tenant(
    "acme",
    "Acme Corp",
    logo="/etc/authgate/acme/logo.svg",
    favicon="/etc/authgate/acme/favicon.png",
    primary_color="#FF6B6B",
    footer_links=(FooterLink("Privacy", "https://acme.test/privacy"),),
    support_email="help@acme.test",
)
GLOBEX = tenant("globex", "Globex Industries", primary_color="#0B0B2B", secondary_color="#047857")


@pytest.fixture
def renderer() -> PageRenderer:
    return PageRenderer(PREFIX)


def brand(renderer: PageRenderer, config: TenantConfig) -> BrandingView:
    return renderer.branding_for(config)


def every_page(renderer: PageRenderer, branding: BrandingView | None) -> list[str]:
    return [
        renderer.render_login(branding=branding, csrf_token="tok", passkey_enabled=True),
        renderer.render_login(branding=branding, csrf_token="tok", error="Wrong password."),
        renderer.render_logout(branding=branding, csrf_token="tok", user_name="alice"),
        renderer.render_logout(branding=branding, csrf_token="tok", signed_out=True),
        *(renderer.render_error(s, branding=branding, request_id="req-1") for s in STATUSES),
    ]


# --- branding on every page ----------------------------------------------------------


@pytest.mark.parametrize("config", [ACME, GLOBEX], ids=["acme", "globex"])
def test_every_page_carries_the_tenants_name_and_theme(
    renderer: PageRenderer, config: TenantConfig
) -> None:
    view = brand(renderer, config)
    for html in every_page(renderer, view):
        page = Elements(html)
        assert config.name in page.all_text
        sheets = [a["href"] for a in page.find("link", rel="stylesheet")]
        assert sheets[0] == f"{PREFIX}/static/authgate.css"
        assert sheets[1] == renderer.theme_css_url(view)
        assert html.startswith("<!doctype html>")
        assert page.one("html")["lang"] == "en"
        assert page.one("meta", name="viewport")["content"] == "width=device-width, initial-scale=1"


def test_a_logo_file_is_served_from_the_tenants_asset_url(renderer: PageRenderer) -> None:
    page = Elements(renderer.render_login(branding=brand(renderer, ACME), csrf_token="t"))
    logo = page.one("img", class_="ag-logo")
    assert logo["src"] == f"{PREFIX}/assets/acme/logo.svg"
    assert logo["alt"] == "Acme Corp"
    assert page.one("link", rel="icon")["href"] == f"{PREFIX}/assets/acme/favicon.png"


def test_a_tenant_without_a_logo_shows_its_name_as_a_wordmark(renderer: PageRenderer) -> None:
    html = renderer.render_login(branding=brand(renderer, GLOBEX), csrf_token="t")
    assert not Elements(html).find("img")
    assert '<span class="ag-wordmark">Globex Industries</span>' in html


def test_two_tenants_get_different_theme_stylesheets(renderer: PageRenderer) -> None:
    acme, globex = brand(renderer, ACME), brand(renderer, GLOBEX)
    assert renderer.theme_css_url(acme) != renderer.theme_css_url(globex)
    assert renderer.theme_css_url(acme).startswith(f"{PREFIX}/theme.css?v=")


def test_footer_links_and_support_email_are_shown(renderer: PageRenderer) -> None:
    page = Elements(renderer.render_error(404, branding=brand(renderer, ACME)))
    assert page.one("a", href="https://acme.test/privacy")["rel"] == "noopener noreferrer"
    assert page.find("a", href="mailto:help@acme.test")


def test_an_unknown_host_gets_a_neutral_page_without_any_tenant(renderer: PageRenderer) -> None:
    for html in every_page(renderer, None):
        page = Elements(html)
        sheets = [a["href"] for a in page.find("link", rel="stylesheet")]
        assert sheets == [f"{PREFIX}/static/authgate.css"]  # neutral colours live there
        assert not page.find("img")
        assert "ag-neutral" in (page.one("body")["class"] or "")
        assert "Acme" not in html


def test_a_tenant_name_with_markup_is_escaped_everywhere(renderer: PageRenderer) -> None:
    evil = brand(renderer, tenant("evil", '<script>alert("x")</script>Evil & Co'))
    for html in every_page(renderer, evil):
        assert "<script>" not in html
        assert "&lt;script&gt;" in html
        assert "Evil &amp; Co" in html


def test_user_supplied_values_are_escaped(renderer: PageRenderer) -> None:
    html = renderer.render_login(
        branding=None,
        csrf_token='"><script>',
        return_to='/x"><script>alert(1)</script>',
        username='"><img src=x onerror=alert(1)>',
        error="<b>bad</b>",
    )
    assert "<script>" not in html
    assert "<img" not in html
    assert "<b>" not in html
    page = Elements(html)
    assert page.one("input", name="rd")["value"] == '/x"><script>alert(1)</script>'
    assert page.one("input", name="username")["value"] == '"><img src=x onerror=alert(1)>'


# --- safe pages ----------------------------------------------------------------------


@pytest.mark.parametrize("config", [ACME, GLOBEX, None], ids=["acme", "globex", "neutral"])
def test_pages_have_no_inline_styles_or_scripts_so_a_strict_csp_holds(
    renderer: PageRenderer, config: TenantConfig | None
) -> None:
    view = brand(renderer, config) if config else None
    for html in every_page(renderer, view):
        assert "<style" not in html
        assert " style=" not in html
        # Scripts only as files from our own origin (webauthn.js), never inline.
        scripts = re.findall(r"<script[^>]*>.*?</script>", html, re.S)
        assert html.count("<script") == len(scripts)
        for script in scripts:
            assert re.fullmatch(r'<script src="/[^"]*/static/[a-z]+\.js" defer></script>', script)
        assert not re.search(r"\son[a-z]+=", html)  # no inline event handlers


@pytest.mark.parametrize("config", [GLOBEX, None], ids=["default-branding", "neutral"])
def test_default_pages_make_no_external_requests(
    renderer: PageRenderer, config: TenantConfig | None
) -> None:
    view = brand(renderer, config) if config else None
    for html in every_page(renderer, view):
        for _, attrs in Elements(html).tags:
            for name in ("src", "href", "action", "srcset"):
                value = attrs.get(name) or ""
                assert not re.match(r"\s*(https?:)?//", value), f"{name}={value}"
    css = (STATIC_DIR / "authgate.css").read_text()
    assert "http://" not in css
    assert "https://" not in css
    assert "@import" not in css
    assert "url(" not in css
    assert "@font-face" not in css


# --- error pages ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "title", "phrase"),
    [
        (400, "Bad request", "could not be understood"),
        (403, "Access denied", "do not have permission"),
        (404, "Page not found", "nothing at this address"),
        (421, "Unknown site", "not served here"),
        (429, "Too many attempts", "wait a little"),
        (500, "Something went wrong", "unexpected error"),
        (502, "Application unavailable", "did not answer correctly"),
        (503, "Temporarily unavailable", "briefly unavailable"),
        (504, "Application timed out", "too long to respond"),
    ],
)
def test_each_error_status_has_its_own_title_and_explanation(
    renderer: PageRenderer, status: int, title: str, phrase: str
) -> None:
    page = Elements(renderer.render_error(status, branding=brand(renderer, ACME)))
    assert f'<h1 class="ag-title">{title}</h1>' in renderer.render_error(status, branding=None)
    assert f"Error {status}" in page.all_text
    assert phrase in page.all_text
    assert f"{title} · Acme Corp" in page.all_text  # the <title>


def test_an_unlisted_status_gets_a_generic_message_of_its_class(renderer: PageRenderer) -> None:
    assert "Request not completed" in renderer.render_error(418, branding=None)
    assert "Something went wrong" in renderer.render_error(507, branding=None)


def test_the_request_id_and_detail_are_shown_when_given(renderer: PageRenderer) -> None:
    html = renderer.render_error(
        429, branding=brand(renderer, ACME), request_id="01HZX<b>", detail="Try again in 5 minutes."
    )
    page = Elements(html)
    assert "Reference: 01HZX<b>" in page.all_text
    assert "Try again in 5 minutes." in page.all_text
    assert page.find("a", href="mailto:help@acme.test?subject=Reference%2001HZX%3Cb%3E")
    assert "Reference" not in renderer.render_error(429, branding=None)


def test_the_way_back_is_a_local_link_only(renderer: PageRenderer) -> None:
    def back(url: str | None) -> list[str | None]:
        html = renderer.render_error(404, branding=None, back_url=url)
        return [a["href"] for a in Elements(html).find("a", class_="ag-button")]

    assert back("/") == ["/"]
    assert back("/wiki/page?x=1") == ["/wiki/page?x=1"]
    for hostile in ("//evil.test", "/\\evil.test", "https://evil.test", "javascript:alert(1)"):
        assert back(hostile) == ["/"]
    assert back(None) == []


# --- login ---------------------------------------------------------------------------


def test_the_login_form_posts_with_labelled_fields_and_autocomplete(
    renderer: PageRenderer,
) -> None:
    html = renderer.render_login(
        branding=brand(renderer, ACME), csrf_token="csrf-123", return_to="https://wiki.acme.test/x"
    )
    page = Elements(html)
    form = page.one("form", class_="ag-form")
    assert form["method"] == "post"
    assert form["action"] == f"{PREFIX}/login"
    assert page.one("input", name="csrf_token") == {
        "type": "hidden",
        "name": "csrf_token",
        "value": "csrf-123",
    }
    assert page.one("input", name="rd")["value"] == "https://wiki.acme.test/x"
    username = page.one("input", name="username")
    password = page.one("input", name="password")
    assert username["autocomplete"] == "username"
    assert password["autocomplete"] == "current-password"
    assert password["type"] == "password"
    assert "required" in username and "required" in password
    for field in (username, password):
        label = page.one("label", for_=field["id"] or "")
        assert label is not None
    assert "Username" in page.all_text and "Password" in page.all_text
    remember = page.one("input", name="remember_me")
    assert remember["type"] == "checkbox"
    assert page.one("label", for_=remember["id"] or "")
    assert page.one("button", type="submit")
    assert not page.find("div", role="alert")
    assert "autofocus" in username


def test_a_login_error_is_announced_and_tied_to_the_fields(renderer: PageRenderer) -> None:
    page = Elements(
        renderer.render_login(
            branding=None, csrf_token="t", username="alice", error="Incorrect username or password."
        )
    )
    alert = page.one("div", role="alert")
    assert alert["id"] == "ag-error"
    assert "Incorrect username or password." in page.all_text
    username = page.one("input", name="username")
    assert username["value"] == "alice"
    assert username["aria-invalid"] == "true"
    assert username["aria-describedby"] == "ag-error"
    assert "autofocus" in page.one("input", name="password")  # straight to the password


def test_the_passkey_button_is_shown_only_when_passkey_is_enabled(
    renderer: PageRenderer,
) -> None:
    without = renderer.render_login(branding=None, csrf_token="t")
    assert "passkey" not in without.lower()
    page = Elements(
        renderer.render_login(branding=None, csrf_token="t", return_to="/a", passkey_enabled=True)
    )
    form = page.one("form", class_="ag-passkey")
    assert form["action"] == f"{PREFIX}/login/passkey"
    assert form["method"] == "post"
    assert "Sign in with a passkey" in page.all_text
    assert len(page.find("input", name="csrf_token")) == 2
    assert len(page.find("input", name="rd", value="/a")) == 2


def test_a_passkey_only_tenant_gets_no_password_form(renderer: PageRenderer) -> None:
    page = Elements(
        renderer.render_login(
            branding=None, csrf_token="t", password_enabled=False, passkey_enabled=True
        )
    )
    assert not page.find("input", name="password")
    assert page.find("form", class_="ag-passkey")


def test_remember_me_can_be_switched_off(renderer: PageRenderer) -> None:
    page = Elements(renderer.render_login(branding=None, csrf_token="t", remember_me_enabled=False))
    assert not page.find("input", name="remember_me")


# --- logout --------------------------------------------------------------------------


def test_the_logout_page_confirms_with_an_everywhere_option(renderer: PageRenderer) -> None:
    page = Elements(
        renderer.render_logout(
            branding=brand(renderer, ACME), csrf_token="c", user_name="<alice>", return_to="/bye"
        )
    )
    form = page.one("form", class_="ag-form")
    assert (form["method"], form["action"]) == ("post", f"{PREFIX}/logout")
    assert page.one("input", name="csrf_token")["value"] == "c"
    assert page.one("input", name="rd")["value"] == "/bye"
    everywhere = page.one("input", name="everywhere")
    assert everywhere["type"] == "checkbox"
    assert page.one("label", for_=everywhere["id"] or "")
    assert "You are signed in as <alice>. Do you want to sign out of Acme Corp?" in page.all_text
    assert page.find("a", href="/")  # cancel


def test_the_signed_out_page_offers_to_sign_in_again(renderer: PageRenderer) -> None:
    page = Elements(renderer.render_logout(branding=None, csrf_token="c", signed_out=True))
    assert "You are signed out" in page.all_text
    assert page.find("a", href=f"{PREFIX}/login")
    assert not page.find("form")


# --- theme stylesheet ----------------------------------------------------------------


def test_the_theme_css_holds_the_computed_colours_font_and_radius(
    renderer: PageRenderer,
) -> None:
    view = brand(renderer, tenant("r", "R", primary_color="#FFFF00", corner_radius="12px"))
    css = renderer.theme_css(view)
    theme = theme_for("#FFFF00")
    assert f"--ag-button-bg: {theme.button_background};" in css
    assert f"--ag-button-text: {theme.button_text};" in css
    assert f"--ag-link: {theme.link_on_card};" in css
    assert f"--ag-focus-ring: {theme.focus_ring};" in css
    assert "--ag-radius: 12px;" in css
    assert f"--ag-font: {Branding().font_stack};" in css
    assert renderer.theme_css(view) is css  # cached


def test_a_rebrand_changes_the_theme_url(renderer: PageRenderer) -> None:
    before = renderer.theme_css_url(brand(renderer, tenant("a", "A", primary_color="#112233")))
    after = renderer.theme_css_url(brand(renderer, tenant("a", "A", primary_color="#332211")))
    assert before != after


def test_the_neutral_theme_in_the_static_css_is_the_computed_one() -> None:
    css = (STATIC_DIR / "authgate.css").read_text()
    block = css.split("/* neutral-theme:start */\n")[1].split("/* neutral-theme:end */")[0]
    assert block == theme_for(NEUTRAL_PRIMARY).css_variables()
    assert PageRenderer(PREFIX).theme_css(None) == block


# --- per-tenant templates ------------------------------------------------------------


def test_a_tenant_can_override_a_template_and_keeps_the_others(tmp_path: Path) -> None:
    (tmp_path / "login.html").write_text(
        '{% extends "base.html" %}{% block content %}<p>Custom {{ brand.name }}</p>{% endblock %}'
    )
    custom = tenant("acme", "Acme <Corp>", templates=tmp_path)
    renderer = PageRenderer.for_tenants(PREFIX, [custom, GLOBEX])
    acme_view, globex_view = renderer.branding_for(custom), renderer.branding_for(GLOBEX)
    assert "<p>Custom Acme &lt;Corp&gt;</p>" in renderer.render_login(
        branding=acme_view, csrf_token="t"
    )
    assert "Custom" not in renderer.render_login(branding=globex_view, csrf_token="t")
    assert "Access denied" in renderer.render_error(403, branding=acme_view)  # built-in
