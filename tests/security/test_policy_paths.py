"""Path forms replayed against policies: no form of a path reaches a rule meant for another.

Each raw path goes through the gateway's canonicaliser first (as every request does);
what it refuses never reaches `decide`, what it accepts is decided in canonical form.
"""

from __future__ import annotations

import pytest

from gateway.canonical import canonical_path
from gateway.errors import BadRequest
from policies import Action, RequestContext, decide_fast, load_policy_text

POLICY = load_policy_text(
    """
default: deny
rules:
  - {name: static, paths: ["/static/**"], action: bypass}
  - {name: public, paths: ["/public/**"], action: bypass}
  - {name: admin-locked, paths: ["/admin/**"], action: deny}
  - {name: app, action: one_factor}
""",
    "security.yaml",
)


def decided(raw: str) -> tuple[Action, str | None] | str:
    try:
        path = canonical_path(raw)
    except BadRequest:
        return "400"
    d = decide_fast(POLICY, RequestContext("app.test", path, "GET"))
    return d.action, d.rule


ESCAPES = [
    "/static/../admin",
    "/static/%2e%2e/admin",
    "/static/%2E%2E/admin",
    "/static/.%2e/admin",
    "/static/./../admin/users",
    "/static//../admin",
    "/static/..;/admin",
    "/static/%2fadmin",
    "/static/..%2fadmin",
    "/static/..%5cadmin",
    "/static\\..\\admin",
    "/static/%252e%252e/admin",
    "/static/%00/../admin",
    "/static/%c0%ae%c0%ae/admin",
    "/public/../admin",
    "/./admin",
    "//admin",
    "/ADMIN",
    "/Admin/users",
    "/admin;x=1",
    "/admin/",
    "/%61dmin",
]


@pytest.mark.parametrize("raw", ESCAPES)
def test_no_path_form_escapes_a_bypass_rule_into_the_admin_area(raw: str) -> None:
    assert decided(raw) in ("400", (Action.DENY, "admin-locked"))


@pytest.mark.parametrize(
    "raw", ["/publicity", "/staticfiles/x", "/public-x", "/static.css", "/publicx/../x"]
)
def test_a_prefix_matches_whole_segments_only(raw: str) -> None:
    assert decided(raw) in ("400", (Action.LOGIN, "app"))


@pytest.mark.parametrize(
    "raw", ["/static", "/static/", "/static/a/b.css", "/STATIC/a", "/x/../static/a"]
)
def test_the_bypass_covers_its_own_paths(raw: str) -> None:
    assert decided(raw) == (Action.ALLOW, "static")
