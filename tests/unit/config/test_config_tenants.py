# ruff: noqa: E501 - expected messages are kept whole, as an operator reads them
"""Tenants: ids, domains (canonical, owned by one tenant), routes on their own hosts,
identity headers, policy files and branding assets next to the config."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.config.conftest import Load, Problems


def tenant(body: str, tid: str = "acme", domains: str = '[acme.test, "*.acme.test"]') -> str:
    """One tenant entry; `body` lines are indented under it."""
    lines = [f"  - id: {tid}", f"    domains: {domains}"]
    lines += [f"    {line}" for line in body.splitlines()]
    return "\n".join(lines) + "\n"


def test_domains_are_lowercased_idna_encoded_and_lose_a_trailing_dot(load: Load) -> None:
    config = load("tenants:\n" + tenant("", domains='[Acme.TEST., "*.Bücher.test"]'))
    assert config.tenants[0].domains == ("acme.test", "*.xn--bcher-kva.test")


@pytest.mark.parametrize(
    ("domains", "message"),
    [
        ("[]", "tenants[0].domains: expected a list of host names (at least one)"),
        ("acme.test", "tenants[0].domains: expected a list of host names"),
        ("[https://acme.test]", "tenants[0].domains[0]: expected a host name, not a URL (drop the scheme)"),
        ("['acme.test:443']", "tenants[0].domains[0]: expected a host name without a port"),
        ("[acme.test/app]", "tenants[0].domains[0]: expected a host name without a path"),
        ("['a.*.test']", "tenants[0].domains[0]: a wildcard is allowed only as the whole first label (*.example.com)"),
        ("['*']", "tenants[0].domains[0]: a wildcard is allowed only as the whole first label (*.example.com)"),
        ("['.']", "tenants[0].domains[0]: not a valid host name"),
        ("[under_score.test]", "tenants[0].domains[0]: not a valid host name"),
        ("[-x.test]", "tenants[0].domains[0]: not a valid host name"),
        ("[acme.test, ACME.test]", "tenants[0].domains[1]: listed twice (also [0])"),
        ("[42]", "tenants[0].domains[0]: expected a host name"),
    ],
)
def test_bad_domains(problems: Problems, domains: str, message: str) -> None:
    assert problems("tenants:\n" + tenant("", domains=domains)) == [f"config.yaml:3: {message}"]


def test_tenant_ids_are_checked_and_unique(problems: Problems) -> None:
    text = "tenants:\n" + tenant("", "Acme") + tenant("", "beta", "[b.test]") + tenant("", "beta", "[c.test]")
    assert problems(text) == [
        "config.yaml:2: tenants[0].id: expected up to 63 lowercase letters, digits and -,"
        " starting with a letter or digit",
        'config.yaml:6: tenants[2].id: tenant id "beta" is already used by tenants[1]',
    ]


def test_a_tenant_needs_id_and_domains(problems: Problems) -> None:
    assert problems("tenants:\n  - name: Acme\n") == [
        "config.yaml:2: tenants[0].id: required",
        "config.yaml:2: tenants[0].domains: required",
    ]


def test_a_tenant_must_be_a_mapping(problems: Problems) -> None:
    assert problems("tenants:\n  - acme\n") == [
        "config.yaml:2: tenants[0]: expected a mapping (id, domains, routes, ...)"
    ]


def test_unknown_tenant_key_suggests(problems: Problems) -> None:
    assert problems("tenants:\n" + tenant("domain: [x.test]")) == [
        'config.yaml:4: tenants[0].domain: unknown key (did you mean "domains"?)'
    ]


def test_one_host_pattern_belongs_to_one_tenant_naming_both(problems: Problems) -> None:
    text = "tenants:\n" + tenant("") + tenant("", "beta", '[beta.test, "*.acme.test"]')
    assert problems(text) == [
        'config.yaml:5: tenants[1].domains[1]: *.acme.test belongs to both tenant "acme" (line 3)'
        ' and tenant "beta"'
    ]


def test_an_exact_host_may_be_carved_out_of_another_tenants_wildcard(load: Load) -> None:
    config = load("tenants:\n" + tenant("") + tenant("", "beta", "[special.acme.test]"))
    assert [t.id for t in config.tenants] == ["acme", "beta"]


def test_name_defaults_to_the_id_and_methods_are_subsets(load: Load, problems: Problems) -> None:
    config = load("tenants:\n" + tenant("name: Acme Corp\nlogin_methods: [password, email_code]\nmfa_methods: []"))
    t = config.tenants[0]
    assert (t.name, t.login_methods, t.mfa_methods) == ("Acme Corp", ("password", "email_code"), ())
    assert load("tenants:\n" + tenant("")).tenants[0].name == "acme"
    assert problems("tenants:\n" + tenant("login_methods: [password, pasword]\nmfa_methods: [sms]")) == [
        "config.yaml:4: tenants[0].login_methods[1]: expected one of: password, passkey, email_link,"
        ' email_code (did you mean "password"?)',
        "config.yaml:5: tenants[0].mfa_methods[0]: expected one of: totp, webauthn, backup_codes",
    ]
    assert problems("tenants:\n" + tenant("login_methods: []")) == [
        "config.yaml:4: tenants[0].login_methods: expected a list of login methods (at least one)"
    ]


def route(lines: str) -> str:
    return "routes:\n" + "\n".join(
        ("  - " if i == 0 else "    ") + line for i, line in enumerate(lines.splitlines())
    )


def test_routes_are_parsed(load: Load) -> None:
    config = load(
        "tenants:\n"
        + tenant(
            route("host: WIKI.acme.test\npath: /app\nupstream: https://10.0.0.5:8443/base\n"
                  "websockets: false\npreserve_host: true\nidentity_headers: authelia\n"
                  "connect_timeout: 2s\nread_timeout: 5m\njwt: false")
        )
    )
    r = config.tenants[0].routes[0]
    assert (r.host, r.path, r.upstream) == ("wiki.acme.test", "/app", "https://10.0.0.5:8443/base")
    assert (r.websockets, r.preserve_host, r.identity_headers, r.jwt) == (False, True, "authelia", False)
    assert (r.connect_timeout, r.read_timeout) == (2.0, 300.0)


def test_a_mapping_of_identity_headers_becomes_custom(load: Load) -> None:
    config = load(
        "tenants:\n"
        + tenant(route("host: acme.test\nupstream: http://u\nidentity_headers: {user: X-User, groups: X-Groups}"))
    )
    r = config.tenants[0].routes[0]
    assert r.identity_headers == "custom"
    assert r.identity_header_map == (("user", "X-User"), ("groups", "X-Groups"))


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ("host: other.test\nupstream: http://u",
         "config.yaml:5: tenants[0].routes[0].host: other.test is not covered by this tenant's"
         " domains (acme.test, *.acme.test)"),
        ("upstream: http://u", "config.yaml:5: tenants[0].routes[0].host: required"),
        ("host: acme.test", "config.yaml:5: tenants[0].routes[0].upstream: required"),
        ("host: acme.test\nupstream: ftp://u",
         "config.yaml:6: tenants[0].routes[0].upstream: expected an http:// or https:// URL with a host"),
        ("host: acme.test\nupstream: 'http://'",
         "config.yaml:6: tenants[0].routes[0].upstream: expected an http:// or https:// URL with a host"),
        ("host: acme.test\nupstream: http://u/?x=1",
         "config.yaml:6: tenants[0].routes[0].upstream: expected an http:// or https:// URL without a ?query"),
        ("host: acme.test\nupstream: http://a@u",
         "config.yaml:6: tenants[0].routes[0].upstream: expected an http:// or https:// URL with a host,"
         " without user@ (credentials do not belong in this URL)"),
        ("host: acme.test\nupstream: http://u\npath: app",
         'config.yaml:7: tenants[0].routes[0].path: expected a path starting with "/"'),
        ("host: acme.test\nupstream: http://u\npath: /a/../b",
         'config.yaml:7: tenants[0].routes[0].path: expected a plain path: no "//", "." or ".." segments'),
        ("host: acme.test\nupstream: http://u\npath: /a%2fb",
         "config.yaml:7: tenants[0].routes[0].path: expected a plain path: no ?, #, %, ;, backslash or spaces"),
        ("host: acme.test\nupstream: http://u\nread_timeout: 0",
         "config.yaml:7: tenants[0].routes[0].read_timeout: expected a duration greater than 0,"
         " like 90s, 15m, 12h or 30d"),
        ("host: acme.test\nupstream: http://u\nidentity_headers: authelai",
         "config.yaml:7: tenants[0].routes[0].identity_headers: expected one of: default, authelia,"
         ' oauth2-proxy, authentik, none (did you mean "authelia"?)'),
        ("host: acme.test\nupstream: http://u\nidentity_headers: {mail: X-Mail}",
         'config.yaml:7: tenants[0].routes[0].identity_headers.mail: unknown claim (did you mean "email"?);'
         " claims are user, email, name, groups, jwt"),
        ("host: acme.test\nupstream: http://u\nidentity_headers: {user: 'X User'}",
         "config.yaml:7: tenants[0].routes[0].identity_headers.user: expected an HTTP header name,"
         " like Remote-User"),
        ("host: acme.test\nupstream: http://u\nidentity_headers: {user: X-A, email: x-a}",
         "config.yaml:7: tenants[0].routes[0].identity_headers.email: header x-a is already used for user"),
        ("host: acme.test\nupstream: http://u\nwebsocket: true",
         'config.yaml:7: tenants[0].routes[0].websocket: unknown key (did you mean "websockets"?)'),
    ],
)
def test_bad_routes(problems: Problems, lines: str, message: str) -> None:
    assert problems("tenants:\n" + tenant(route(lines))) == [message]


def test_wildcard_routes_must_fall_under_a_wildcard_domain(load: Load, problems: Problems) -> None:
    assert load("tenants:\n" + tenant(route("host: '*.apps.acme.test'\nupstream: http://u")))
    assert problems(
        "tenants:\n" + tenant(route("host: '*.acme.test'\nupstream: http://u"), domains="[acme.test]")
    ) == [
        "config.yaml:5: tenants[0].routes[0].host: *.acme.test is not covered by this tenant's"
        " domains (acme.test)"
    ]


def test_the_same_host_and_path_twice_is_refused(problems: Problems) -> None:
    routes = route("host: acme.test\nupstream: http://a") + "\n" + route(
        "host: acme.test\npath: /\nupstream: http://b").removeprefix("routes:\n")
    assert problems("tenants:\n" + tenant(routes)) == [
        "config.yaml:7: tenants[0].routes[1].host: same host and path as routes[0]"
    ]


def test_a_route_on_a_host_owned_by_another_tenant_is_refused(problems: Problems) -> None:
    text = "tenants:\n" + tenant(route("host: wiki.acme.test\nupstream: http://u")) + tenant(
        "", "beta", "[wiki.acme.test]"
    )
    assert problems(text) == [
        'config.yaml:5: tenants[0].routes[0].host: wiki.acme.test belongs to tenant "beta",'
        " not to this tenant"
    ]


def test_policy_files_are_resolved_and_must_exist(load: Load, problems: Problems, folder: Path) -> None:
    (folder / "policies").mkdir()
    (folder / "policies" / "acme.yaml").write_text("version: 1\n")
    config = load("tenants:\n" + tenant("policies: [policies/acme.yaml]"))
    assert config.tenants[0].policies == (folder / "policies" / "acme.yaml",)
    assert problems("tenants:\n" + tenant("policies:\n  - policies/acme.yaml\n  - policies/gone.yaml")) == [
        f"config.yaml:6: tenants[0].policies[1]: file not found: {folder}/policies/gone.yaml"
    ]
    assert problems("tenants:\n" + tenant("policies: [policies]")) == [
        f"config.yaml:4: tenants[0].policies[0]: not a file: {folder}/policies"
    ]


def test_branding_assets_are_urls_or_files_next_to_the_config(
    load: Load, problems: Problems, folder: Path
) -> None:
    (folder / "logo.svg").write_text("<svg/>")
    (folder / "tpl").mkdir()
    config = load(
        "tenants:\n"
        + tenant(
            "branding:\n  logo: logo.svg\n  favicon: https://cdn.test/f.ico\n  primary_color: '#F00'\n"
            "  templates: tpl\n  footer_links: [{label: Privacy, url: /privacy}]\n"
            "  support_email: help@acme.test\n  corner_radius: 0"
        )
    )
    b = config.tenants[0].branding
    assert b.logo == str(folder / "logo.svg")
    assert b.favicon == "https://cdn.test/f.ico"
    assert (b.primary_color, b.templates, b.corner_radius) == ("#F00", folder / "tpl", "0")
    assert b.footer_links[0].label == "Privacy"
    assert problems(
        "tenants:\n"
        + tenant(
            "branding:\n  logo: missing.svg\n  primary_color: red\n  secondary_color:\n"
            "  font_stack: 'x; } body { display: none'\n  footer_links: [{label: X}]\n  custom_css: tpl"
        )
    ) == [
        f"config.yaml:5: tenants[0].branding.logo: file not found: {folder}/missing.svg",
        'config.yaml:6: tenants[0].branding.primary_color: expected a color like "#2563EB" or "#26E"',
        "config.yaml:8: tenants[0].branding.font_stack: must not contain ; { } < > backslashes or"
        " control characters (CSS)",
        "config.yaml:9: tenants[0].branding.footer_links[0].url: required",
        f"config.yaml:10: tenants[0].branding.custom_css: not a file: {folder}/tpl",
    ]


def test_an_unquoted_color_is_explained(problems: Problems) -> None:
    assert problems("tenants:\n" + tenant("branding:\n  primary_color: #2563EB")) == [
        'config.yaml:5: tenants[0].branding.primary_color: expected a color like "#2563EB"'
        " (quote it: # starts a YAML comment)"
    ]


def test_default_url_and_cookie_domain_stay_within_the_tenant(load: Load, problems: Problems) -> None:
    config = load("tenants:\n" + tenant("default_url: https://app.acme.test/home\ncookie_domain: acme.test"))
    assert config.tenants[0].cookie_domain == "acme.test"
    assert problems(
        "tenants:\n" + tenant("default_url: https://evil.test/\ncookie_domain: other.test")
    ) == [
        "config.yaml:4: tenants[0].default_url: must point to one of this tenant's domains",
        "config.yaml:5: tenants[0].cookie_domain: must be one of this tenant's domains or a parent of one",
    ]
    assert problems("tenants:\n" + tenant("cookie_domain: test")) == [
        "config.yaml:4: tenants[0].cookie_domain: expected a domain with at least two labels, like acme.test"
    ]


def test_a_tenant_may_override_session_lifetimes(load: Load, problems: Problems) -> None:
    config = load("tenants:\n" + tenant("sessions:\n  lifetime: 12h\n  idle_timeout: 30m\n  fresh_for: null"))
    own = config.tenants[0].sessions
    assert (own.lifetime, own.idle_timeout, own.remember_me_lifetime, own.fresh_for) == (43200.0, 1800.0, None, None)
    effective = own.over(config.sessions)
    assert (effective.lifetime, effective.fresh_for) == (43200.0, config.sessions.fresh_for)
    assert load("tenants:\n" + tenant("")).tenants[0].sessions.over(config.sessions) == config.sessions
    assert problems("tenants:\n" + tenant("sessions:\n  lifetime: 0\n  refresh_after: 1d")) == [
        "config.yaml:5: tenants[0].sessions.lifetime: expected a duration greater than 0, like 90s, 15m, 12h or 30d",
        'config.yaml:6: tenants[0].sessions.refresh_after: unknown key (did you mean "fresh_for"?)',
    ]
