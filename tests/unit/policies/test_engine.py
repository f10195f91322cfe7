"""decide(): first-match semantics, levels, conditions, and the fail-closed choices."""

from __future__ import annotations

import ipaddress

import pytest

from policies import (
    Action,
    Principal,
    RequestContext,
    StepOutcome,
    decide,
    decide_fast,
    load_policy_text,
)

POLICY = """
version: 1
default: deny
networks:
  office: [10.0.0.0/8, "2001:db8::/32"]
roles:
  viewer: {permissions: [wiki.read]}
  editor: {inherits: [viewer], permissions: [wiki.write]}
  admin: {inherits: [editor], permissions: ["*"]}
  wikiboss: {permissions: ["wiki.*"]}
rules:
  - name: public-assets
    hosts: [wiki.example.com]
    paths: ["/static/**", /favicon.ico]
    action: bypass
  - name: admin-area
    hosts: ["*.example.com"]
    paths: ["/admin/**"]
    methods: [GET, POST]
    networks: [office]
    countries: [GB, DE]
    subjects: {roles: [admin]}
    action: two_factor
    fresh: 15m
  - name: blocked-users
    hosts: [wiki.example.com]
    subjects: {users: [mallory]}
    action: deny
  - name: writers
    hosts: [wiki.example.com]
    paths: ["/edit/*"]
    subjects: {permissions: [wiki.write]}
    action: one_factor
  - name: secret
    hosts: [wiki.example.com]
    paths: ["re:/Secret/[0-9]+"]
    case_sensitive: true
    action: deny
  - name: not-from-sanctioned
    hosts: [shop.example.com]
    not_countries: [KP]
    action: bypass
  - name: outside-office-refused
    hosts: [intranet.example.com]
    not_networks: [office]
    action: deny
  - name: intranet
    hosts: [intranet.example.com]
    action: one_factor
  - name: wiki
    hosts: [wiki.example.com]
    action: one_factor
"""

NOW = 10_000.0
ADMIN_2FA = Principal("root", roles=frozenset({"admin"}), amr=("pwd", "otp"), auth_time=NOW - 60)


def user(name: str = "alice", **kw: object) -> Principal:
    base: dict[str, object] = {"amr": ("pwd",), "auth_time": NOW - 60}
    base.update(kw)
    return Principal(name, **base)  # type: ignore[arg-type]


def ctx(
    url: str,
    method: str = "GET",
    ip: str | None = None,
    country: str | None = None,
    principal: Principal | None = None,
) -> RequestContext:
    host, _, path = url.partition("/")
    return RequestContext(
        host, "/" + path, method, ipaddress.ip_address(ip) if ip else None, country, principal, NOW
    )


policy = load_policy_text(POLICY, "policy.yaml")

CASES = [
    # (description, context, action, rule)
    ("static is public", ctx("wiki.example.com/static/app.css"), Action.ALLOW, "public-assets"),
    ("** covers zero segments", ctx("wiki.example.com/static"), Action.ALLOW, "public-assets"),
    ("a prefix matches whole segments", ctx("wiki.example.com/staticky"), Action.LOGIN, "wiki"),
    ("paths are case-insensitive", ctx("wiki.example.com/STATIC/x"), Action.ALLOW, "public-assets"),
    (
        "host is case-insensitive",
        ctx("WIKI.example.com./favicon.ico"),
        Action.ALLOW,
        "public-assets",
    ),
    ("unknown host: default", ctx("nope.test/"), Action.DENY, None),
    (
        "anonymous admin must log in",
        ctx("x.example.com/admin/a", ip="10.0.0.1", country="GB"),
        Action.LOGIN,
        "admin-area",
    ),
    (
        "admin with one factor",
        ctx(
            "x.example.com/admin/a",
            ip="10.0.0.1",
            country="GB",
            principal=user("root", roles=frozenset({"admin"})),
        ),
        Action.SECOND_FACTOR,
        "admin-area",
    ),
    (
        "admin with two factors",
        ctx("x.example.com/admin", ip="10.0.0.1", country="DE", principal=ADMIN_2FA),
        Action.ALLOW,
        "admin-area",
    ),
    (
        "mfa in amr counts as two factors",
        ctx(
            "x.example.com/admin",
            ip="10.0.0.1",
            country="DE",
            principal=user("root", roles=frozenset({"admin"}), amr=("mfa",)),
        ),
        Action.ALLOW,
        "admin-area",
    ),
    (
        "repeated method is one factor",
        ctx(
            "x.example.com/admin",
            ip="10.0.0.1",
            country="DE",
            principal=user("root", roles=frozenset({"admin"}), amr=("pwd", "pwd")),
        ),
        Action.SECOND_FACTOR,
        "admin-area",
    ),
    (
        "stale login must re-authenticate",
        ctx(
            "x.example.com/admin",
            ip="10.0.0.1",
            country="DE",
            principal=user(
                "root", roles=frozenset({"admin"}), amr=("pwd", "otp"), auth_time=NOW - 901
            ),
        ),
        Action.REAUTH,
        "admin-area",
    ),
    (
        "ipv6 office network",
        ctx("x.example.com/admin", ip="2001:db8::1", country="GB", principal=ADMIN_2FA),
        Action.ALLOW,
        "admin-area",
    ),
    (
        "ipv4-mapped ipv6 is its ipv4",
        ctx("x.example.com/admin", ip="::ffff:10.0.0.1", country="GB", principal=ADMIN_2FA),
        Action.ALLOW,
        "admin-area",
    ),
    (
        "outside the office the admin rule does not hold",
        ctx("x.example.com/admin", ip="192.0.2.1", country="GB", principal=ADMIN_2FA),
        Action.DENY,
        None,
    ),
    (
        "unknown country never satisfies countries",
        ctx("x.example.com/admin", ip="10.0.0.1", principal=ADMIN_2FA),
        Action.DENY,
        None,
    ),
    (
        "method not listed",
        ctx(
            "x.example.com/admin", method="DELETE", ip="10.0.0.1", country="GB", principal=ADMIN_2FA
        ),
        Action.DENY,
        None,
    ),
    (
        "inherited role satisfies a role subject? no: editor is not admin",
        ctx(
            "x.example.com/admin",
            ip="10.0.0.1",
            country="GB",
            principal=user("ed", roles=frozenset({"editor"}), amr=("pwd", "otp")),
        ),
        Action.DENY,
        None,
    ),
    (
        "deny for a named user",
        ctx("wiki.example.com/page", principal=user("mallory")),
        Action.DENY,
        "blocked-users",
    ),
    (
        "a deny for subjects does not hold for anonymous",
        ctx("wiki.example.com/page"),
        Action.LOGIN,
        "wiki",
    ),
    (
        "inherited permission",
        ctx("wiki.example.com/edit/x", principal=user(roles=frozenset({"editor"}))),
        Action.ALLOW,
        "writers",
    ),
    (
        "wildcard permission",
        ctx("wiki.example.com/edit/x", principal=user(roles=frozenset({"wikiboss"}))),
        Action.ALLOW,
        "writers",
    ),
    (
        "star permission",
        ctx("wiki.example.com/edit/x", principal=user(roles=frozenset({"admin"}))),
        Action.ALLOW,
        "writers",
    ),
    (
        "direct permission",
        ctx("wiki.example.com/edit/x", principal=user(permissions=frozenset({"wiki.write"}))),
        Action.ALLOW,
        "writers",
    ),
    (
        "viewer lacks the permission",
        ctx("wiki.example.com/edit/x", principal=user(roles=frozenset({"viewer"}))),
        Action.ALLOW,
        "wiki",
    ),
    (
        "* is one segment",
        ctx("wiki.example.com/edit/x/y", principal=user(roles=frozenset({"editor"}))),
        Action.ALLOW,
        "wiki",
    ),
    (
        "anonymous at a subjects rule must log in",
        ctx("wiki.example.com/edit/x"),
        Action.LOGIN,
        "writers",
    ),
    (
        "case-sensitive anchored regex",
        ctx("wiki.example.com/Secret/12", principal=user()),
        Action.DENY,
        "secret",
    ),
    (
        "case-sensitive regex: other case",
        ctx("wiki.example.com/secret/12", principal=user()),
        Action.ALLOW,
        "wiki",
    ),
    (
        "anchored regex: no suffix",
        ctx("wiki.example.com/Secret/12/x", principal=user()),
        Action.ALLOW,
        "wiki",
    ),
    (
        "not_countries: known other country",
        ctx("shop.example.com/", country="FR"),
        Action.ALLOW,
        "not-from-sanctioned",
    ),
    ("not_countries: excluded country", ctx("shop.example.com/", country="KP"), Action.DENY, None),
    (
        "not_countries: unknown country takes the stricter default",
        ctx("shop.example.com/"),
        Action.DENY,
        None,
    ),
    (
        "not_networks deny: unknown ip is denied",
        ctx("intranet.example.com/", principal=user()),
        Action.DENY,
        "outside-office-refused",
    ),
    (
        "not_networks deny: outside",
        ctx("intranet.example.com/", ip="192.0.2.1", principal=user()),
        Action.DENY,
        "outside-office-refused",
    ),
    (
        "not_networks deny: inside",
        ctx("intranet.example.com/", ip="10.9.9.9", principal=user()),
        Action.ALLOW,
        "intranet",
    ),
]


@pytest.mark.parametrize(
    ("context", "action", "rule"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_decides_as_the_table_says(
    context: RequestContext, action: Action, rule: str | None
) -> None:
    decision = decide(policy, context)
    assert (decision.action, decision.rule) == (action, rule)
    fast = decide_fast(policy, context)
    assert (fast.action, fast.rule, fast.reason) == (
        decision.action,
        decision.rule,
        decision.reason,
    )
    assert fast.trace == ()


def test_trace_explains_each_rule_tried_until_the_deciding_one() -> None:
    decision = decide(policy, ctx("wiki.example.com/staticky"))
    assert [s.rule for s in decision.trace][-1] == "wiki"
    assert decision.trace[-1].outcome is StepOutcome.HELD
    assert decision.trace[0].outcome is StepOutcome.NOT_HELD
    assert "/staticky" in decision.trace[0].reason


def test_unknown_condition_is_marked_in_the_trace() -> None:
    decision = decide(policy, ctx("shop.example.com/"))
    assert any(
        s.outcome is StepOutcome.UNKNOWN and s.rule == "not-from-sanctioned" for s in decision.trace
    )


def test_not_countries_with_deny_denies_an_unknown_country() -> None:
    p = load_policy_text(
        "default: bypass\nrules:\n  - {name: only-gb, not_countries: [GB], action: deny}\n",
        "p.yaml",
    )
    assert decide(p, ctx("a.test/")).action is Action.DENY
    assert decide(p, ctx("a.test/", country="GB")).action is Action.ALLOW


def test_default_applies_the_level_to_the_principal() -> None:
    p = load_policy_text("default: two_factor\n", "p.yaml")
    assert decide(p, ctx("a.test/")).action is Action.LOGIN
    assert decide(p, ctx("a.test/", principal=user())).action is Action.SECOND_FACTOR
    assert decide(p, ctx("a.test/", principal=user(amr=("pwd", "hwk")))).action is Action.ALLOW


def test_no_default_means_deny() -> None:
    p = load_policy_text("rules: []\n", "p.yaml")
    assert decide(p, ctx("a.test/", principal=ADMIN_2FA)).action is Action.DENY


def test_wildcard_host_covers_subdomains_of_any_depth_but_not_the_apex() -> None:
    p = load_policy_text(
        "rules:\n  - {name: w, hosts: ['*.example.com'], action: bypass}\n", "p.yaml"
    )
    assert decide_fast(p, ctx("a.b.example.com/")).action is Action.ALLOW
    assert decide_fast(p, ctx("example.com/")).action is Action.DENY
    assert decide_fast(p, ctx("badexample.com/")).action is Action.DENY


def test_rule_order_is_kept_across_exact_wildcard_and_hostless_rules() -> None:
    p = load_policy_text(
        """
rules:
  - {name: any, paths: [/a], action: deny}
  - {name: wild, hosts: ['*.example.com'], paths: [/b], action: deny}
  - {name: exact, hosts: [x.example.com], action: one_factor}
  - {name: later-wild, hosts: ['*.example.com'], action: bypass}
""",
        "p.yaml",
    )
    assert decide_fast(p, ctx("x.example.com/a")).rule == "any"
    assert decide_fast(p, ctx("x.example.com/b")).rule == "wild"
    assert decide_fast(p, ctx("x.example.com/c")).rule == "exact"
    assert decide_fast(p, ctx("y.example.com/c")).rule == "later-wild"
