"""Property tests: for random policies and requests, decide never raises and agrees with a
deliberately naive reference (a plain loop over every rule, no index, no precomputation)."""

from __future__ import annotations

import ipaddress
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from policies import Action, Principal, RequestContext, decide, decide_fast, load_policy_text

HOSTS = ["a.test", "b.a.test", "c.b.a.test", "x.test", "A.test"]
HOST_PATTERNS = ["a.test", "b.a.test", "*.a.test", "*.b.a.test", "x.test", "*.test"]
PATHS = ["/", "/a", "/a/b", "/A/b", "/a/b/c", "/ab", "/b", "/a/", "/static/x.css"]
PATH_PATTERNS = [
    "/a",
    "/a/*",
    "/a/**",
    "/**",
    "/*/b",
    "/a*",
    "/static/*.css",
    "re:/a/.*",
    "re:/A.*",
]
NETS = ["10.0.0.0/8", "10.1.0.0/16", "2001:db8::/32"]
IPS = [None, "10.1.2.3", "10.9.9.9", "192.0.2.1", "2001:db8::1", "::1", "::ffff:10.1.2.3"]
COUNTRIES = [None, "GB", "DE", "FR"]
LEVELS = ["bypass", "one_factor", "two_factor", "deny"]
ROLES = {
    "viewer": ([], ["wiki.read"]),
    "editor": (["viewer"], ["wiki.write"]),
    "admin": (["editor"], ["*"]),
    "boss": ([], ["wiki.*"]),
}

rule_st = st.fixed_dictionaries(
    {"action": st.sampled_from(LEVELS)},
    optional={
        "hosts": st.lists(st.sampled_from(HOST_PATTERNS), min_size=1, max_size=2, unique=True),
        "paths": st.lists(st.sampled_from(PATH_PATTERNS), min_size=1, max_size=2, unique=True),
        "methods": st.lists(st.sampled_from(["GET", "POST"]), min_size=1, unique=True),
        "networks": st.lists(
            st.sampled_from([*NETS, "office"]), min_size=1, max_size=2, unique=True
        ),
        "not_networks": st.lists(st.sampled_from(NETS), min_size=1, max_size=2, unique=True),
        "countries": st.lists(st.sampled_from(["GB", "DE"]), min_size=1, unique=True),
        "not_countries": st.lists(st.sampled_from(["GB", "FR"]), min_size=1, unique=True),
        "subjects": st.fixed_dictionaries(
            {},
            optional={
                "users": st.just(["alice"]),
                "groups": st.just(["staff"]),
                "roles": st.lists(st.sampled_from(sorted(ROLES)), min_size=1, unique=True),
                "permissions": st.lists(
                    st.sampled_from(["wiki.read", "wiki.write", "wiki.*", "x.y"]),
                    min_size=1,
                    unique=True,
                ),
            },
        ).filter(bool),
        "fresh": st.sampled_from(["60s", "1h"]),
        "case_sensitive": st.booleans(),
    },
).map(
    lambda r: {
        k: v for k, v in r.items() if not (k == "fresh" and r["action"] in ("bypass", "deny"))
    }
)

principal_st = st.none() | st.builds(
    Principal,
    user=st.sampled_from(["alice", "bob"]),
    groups=st.frozensets(st.sampled_from(["staff", "ext"])),
    roles=st.frozensets(st.sampled_from([*ROLES, "ghost"])),
    amr=st.lists(st.sampled_from(["pwd", "otp", "mfa", "hwk"]), max_size=3).map(tuple),
    auth_time=st.sampled_from([0.0, 9_000.0, 9_990.0]),
    permissions=st.frozensets(st.sampled_from(["wiki.write", "x.*"]), max_size=1),
)

context_st = st.builds(
    RequestContext,
    host=st.sampled_from(HOSTS),
    path=st.sampled_from(PATHS),
    method=st.sampled_from(["GET", "POST", "get"]),
    ip=st.sampled_from(IPS).map(lambda ip: ipaddress.ip_address(ip) if ip else None),
    country=st.sampled_from(COUNTRIES),
    principal=principal_st,
    now=st.just(10_000.0),
)


def policy_yaml(rules: list[dict[str, object]], default: str) -> str:
    import json

    roles = {
        n: {"inherits": i, "permissions": p} if i else {"permissions": p}
        for n, (i, p) in ROLES.items()
    }
    named = [{"name": f"r{i}", **r} for i, r in enumerate(rules)]
    return json.dumps(
        {"default": default, "networks": {"office": ["10.0.0.0/8"]}, "roles": roles, "rules": named}
    )


# ------------------------------------------------------------ the naive reference


def ref_glob(pattern: str, path: str, cs: bool) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], path, 0 if cs else re.IGNORECASE) is not None
    if not cs:
        pattern, path = pattern.lower(), path.lower()
    pat, segs = pattern.split("/")[1:], path.split("/")[1:]

    def match(i: int, j: int) -> bool:
        if i == len(pat):
            return j == len(segs)
        if pat[i] == "**":
            return any(match(i + 1, k) for k in range(j, len(segs) + 1))
        if j == len(segs):
            return False
        rx = "[^/]*".join(re.escape(x) for x in pat[i].split("*"))
        return re.fullmatch(rx, segs[j]) is not None and match(i + 1, j + 1)

    return match(0, 0)


def ref_roles(names: frozenset[str]) -> tuple[set[str], set[str]]:
    roles, perms, todo = set(), set(), list(names)
    while todo:
        r = todo.pop()
        if r in roles:
            continue
        roles.add(r)
        if r in ROLES:
            todo.extend(ROLES[r][0])
            perms.update(ROLES[r][1])
    return roles, perms


def ref_covers(granted: set[str], need: str) -> bool:
    return any(
        g == need or g == "*" or (g.endswith(".*") and need.startswith(g[:-1])) for g in granted
    )


def ref_in(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, nets: list[str]) -> bool:
    if ip.version == 6 and ip.ipv4_mapped:  # type: ignore[union-attr]
        ip = ip.ipv4_mapped  # type: ignore[union-attr]
    cidrs = [
        ipaddress.ip_network("10.0.0.0/8") if n == "office" else ipaddress.ip_network(n)
        for n in nets
    ]
    return any(ip.version == c.version and ip in c for c in cidrs)


def ref_answer(level: str, has_subjects: bool, fresh: str | None, ctx: RequestContext) -> Action:
    p = ctx.principal
    if level == "deny":
        return Action.DENY
    if p is None:
        return Action.ALLOW if level == "bypass" and not has_subjects else Action.LOGIN
    if level == "bypass":
        return Action.ALLOW
    if fresh and ctx.now - p.auth_time > {"60s": 60, "1h": 3600}[fresh]:
        return Action.REAUTH
    if level == "two_factor" and not ("mfa" in p.amr or len(set(p.amr)) >= 2):
        return Action.SECOND_FACTOR
    return Action.ALLOW


RANK = [Action.ALLOW, Action.REAUTH, Action.SECOND_FACTOR, Action.LOGIN, Action.DENY]


def reference(rules: list[dict], default: str, ctx: RequestContext) -> tuple[Action, str | None]:  # type: ignore[type-arg]
    host = ctx.host.lower()
    pending: tuple[Action, str] | None = None
    for i, r in enumerate(rules):
        unknown = False
        if "hosts" in r and not any(
            host == h or (h.startswith("*.") and host.endswith(h[1:])) for h in r["hosts"]
        ):
            continue
        if "paths" in r and not any(
            ref_glob(p, ctx.path, r.get("case_sensitive", False)) for p in r["paths"]
        ):
            continue
        if "methods" in r and ctx.method.upper() not in r["methods"]:
            continue
        if "networks" in r and (ctx.ip is None or not ref_in(ctx.ip, r["networks"])):
            continue
        if "not_networks" in r:
            if ctx.ip is None:
                unknown = True
            elif ref_in(ctx.ip, r["not_networks"]):
                continue
        if "countries" in r and ctx.country not in r["countries"]:
            continue
        if "not_countries" in r:
            if ctx.country is None:
                unknown = True
            elif ctx.country in r["not_countries"]:
                continue
        if "subjects" in r:
            s, p = r["subjects"], ctx.principal
            if p is None:
                if r["action"] == "deny":
                    continue
            else:
                roles, perms = ref_roles(p.roles)
                perms |= p.permissions
                if not (
                    p.user in s.get("users", [])
                    or p.groups & set(s.get("groups", []))
                    or roles & set(s.get("roles", []))
                    or any(ref_covers(perms, x) for x in s.get("permissions", []))
                ):
                    continue
        action = ref_answer(r["action"], "subjects" in r, r.get("fresh"), ctx)
        if unknown:
            if pending is None or RANK.index(action) > RANK.index(pending[0]):
                pending = (action, f"r{i}")
            continue
        if pending is not None and RANK.index(pending[0]) > RANK.index(action):
            return pending
        return action, f"r{i}"
    action = ref_answer(default, False, None, ctx)
    if pending is not None and RANK.index(pending[0]) > RANK.index(action):
        return pending
    return action, None


@settings(max_examples=300, deadline=None)
@given(
    st.lists(rule_st, max_size=8),
    st.sampled_from(LEVELS),
    st.lists(context_st, min_size=1, max_size=5),
)
def test_decide_agrees_with_the_naive_reference(
    rules: list[dict],
    default: str,  # type: ignore[type-arg]
    contexts: list[RequestContext],
) -> None:
    policy = load_policy_text(policy_yaml(rules, default), "random.yaml")
    for ctx in contexts:
        expected = reference(rules, default, ctx)
        traced = decide(policy, ctx)
        fast = decide_fast(policy, ctx)
        assert (traced.action, traced.rule) == expected
        assert (fast.action, fast.rule) == expected


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30), st.text(max_size=10), st.text(max_size=6), principal_st)
def test_decide_never_raises_on_odd_requests(
    host: str, path: str, method: str, principal: Principal | None
) -> None:
    policy = load_policy_text(
        policy_yaml(
            [
                {"action": "bypass", "paths": ["/a/**"]},
                {"action": "one_factor", "hosts": ["*.a.test"]},
            ],
            "deny",
        ),
        "p.yaml",
    )
    ctx = RequestContext(host, path, method, None, None, principal, 0.0)
    assert decide(policy, ctx).action == decide_fast(policy, ctx).action
