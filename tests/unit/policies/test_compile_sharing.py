# ruff: noqa: E501  (the expected messages are kept whole, as an operator reads them)
"""Loading shares what rules have in common (matchers, sets, parsed hosts and CIDRs) and
still reports every problem where it is written, however often the same text recurs."""

from __future__ import annotations

import ipaddress
import re

import pytest

from policies import PolicyError, Principal, RequestContext, decide, load_policy_text
from policies.matchers import GlobError, PathMatcher

POLICY = """\
networks:
  office: [10.0.0.0/8]
roles:
  viewer: {permissions: [wiki.read]}
rules:
  - name: a
    hosts: [x.test, "*.y.test"]
    paths: ["/static/**", /favicon.ico, "/api/*/items", "re:/debug/.*"]
    methods: [GET, post]
    networks: [office, 192.0.2.0/24]
    countries: [GB]
    subjects: {roles: [viewer]}
    action: one_factor
  - name: b
    hosts: [X.test, "*.y.test."]
    paths: ["/static/**", /favicon.ico, "/api/*/items", "re:/debug/.*"]
    methods: [GET, POST]
    networks: [office, 192.0.2.0/24]
    countries: [GB]
    subjects: {roles: [viewer]}
    action: two_factor
"""


def test_rules_with_the_same_conditions_share_their_immutable_parts() -> None:
    a, b = load_policy_text(POLICY, "p.yaml").rules
    assert a.paths is b.paths
    assert a.host_exact is b.host_exact and a.host_exact == frozenset({"x.test"})
    assert a.host_suffixes is b.host_suffixes and a.host_suffixes == (".y.test",)
    assert a.methods is b.methods and a.methods == frozenset({"GET", "POST"})
    assert a.networks is b.networks
    assert a.countries is b.countries
    assert a.subjects is b.subjects
    # What names the rule is its own.
    assert a.decisions is not b.decisions
    assert a.reasons[next(iter(a.reasons))].startswith("rule 'a'")


def test_shared_parts_decide_as_before() -> None:
    policy = load_policy_text(POLICY, "p.yaml")
    alice = Principal("alice", roles=frozenset({"viewer"}), amr=("pwd",), auth_time=1000.0)
    ip = ipaddress.ip_address("10.1.2.3")
    ctx = RequestContext("x.test", "/static/app.css", "GET", ip, "GB", alice, 1100.0)
    assert decide(policy, ctx).rule == "a"
    ctx = RequestContext("x.test", "/API/1/ITEMS", "POST", ip, "GB", alice, 1100.0)
    assert decide(policy, ctx).rule == "a"
    ctx = RequestContext("x.test", "/nothing", "POST", ip, "GB", alice, 1100.0)
    assert decide(policy, ctx).rule is None


def test_path_matchers_are_compiled_once_per_patterns() -> None:
    patterns = ["/static/**", "/a/*/b", "/exact", "re:/x.*"]
    first = PathMatcher.compile(patterns, False)
    assert PathMatcher.compile(tuple(patterns), False) is first
    assert PathMatcher.compile(patterns, True) is not first
    assert PathMatcher.compile(patterns, True).exact == frozenset({"/exact"})
    assert first.prefixes == ("/static",)
    assert [r.pattern for r in first.regexes] == ["/a/[^/]*/b", "/x.*"]


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("static/**", "must start with '/' (or 're:' for a regex)"),
        ("/a**", "'**' must be a whole segment, as in '/a/**'"),
        ("re:(", "invalid regex: missing ), unterminated subpattern at position 0"),
    ],
)
def test_a_bad_pattern_fails_every_time(pattern: str, message: str) -> None:
    for _ in range(2):  # a failure is not cached as a success
        with pytest.raises(GlobError, match=re.escape(message)):
            PathMatcher.check(pattern, False)
        with pytest.raises(GlobError):
            PathMatcher.compile(["/ok", pattern], False)


def test_the_same_bad_text_is_reported_at_each_place() -> None:
    rule = "  - name: {name}\n    hosts: ['*', 'bad host']\n    networks: [10.0.0.1/8]\n    paths: [x]\n    action: deny\n"
    text = "rules:\n" + rule.format(name="a") + rule.format(name="b")
    with pytest.raises(PolicyError) as caught:
        load_policy_text(text, "p.yaml")
    assert [str(p) for p in caught.value.problems] == [
        f"p.yaml:{line}: rules[{i}].{key}: {message}"
        for i, first in ((0, 3), (1, 8))
        for line, key, message in (
            (
                first,
                "hosts[0]",
                "'*' alone is not a host pattern (leave out `hosts` to match every host)",
            ),
            (
                first,
                "hosts[1]",
                "invalid host pattern 'bad host' (a host name, or '*.' and a domain)",
            ),
            (first + 1, "networks[0]", "invalid CIDR '10.0.0.1/8': 10.0.0.1/8 has host bits set"),
            (
                first + 2,
                "paths[0]",
                "invalid path pattern 'x': must start with '/' (or 're:' for a regex)",
            ),
        )
    ]
