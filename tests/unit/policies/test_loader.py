# ruff: noqa: E501  (the expected messages are kept whole, as an operator reads them)
"""The loader reports every problem as FILE:LINE: key: message, and merges files in order."""

from __future__ import annotations

from pathlib import Path

import pytest

from policies import Action, PolicyError, RequestContext, decide, load_policy_set, load_policy_text


def problems(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load_policy_text(text, "p.yaml")
    return [str(p) for p in caught.value.problems]


def test_unknown_key_suggests_the_near_miss() -> None:
    assert problems("rules:\n  - name: a\n    actoin: deny\n    action: deny\n") == [
        "p.yaml:3: rules[0].actoin: unknown key (did you mean 'action'?)"
    ]


def test_every_problem_is_reported_in_one_pass() -> None:
    text = """rules:
  - name: a
    action: allow
  - name: b
    action: one_factor
    networks: [10.0.0.1/8]
    countries: [gb]
    methods: [GTE]
    fresh: 10x
    paths: ["static/**", "/a**", "re:("]
"""
    assert problems(text) == [
        "p.yaml:3: rules[0].action: unknown action 'allow' (one of bypass, one_factor, two_factor, deny)",
        "p.yaml:6: rules[1].networks[0]: invalid CIDR '10.0.0.1/8': 10.0.0.1/8 has host bits set",
        "p.yaml:7: rules[1].countries[0]: invalid country 'gb' (ISO 3166 code: two capital letters, e.g. GB)",
        "p.yaml:8: rules[1].methods[0]: unknown method 'GTE' (did you mean 'GET'?)",
        "p.yaml:9: rules[1].fresh: invalid duration '10x' (like 90s, 15m, 12h, 30d)",
        "p.yaml:10: rules[1].paths[0]: invalid path pattern 'static/**': must start with '/' (or 're:' for a regex)",
        "p.yaml:10: rules[1].paths[1]: invalid path pattern '/a**': '**' must be a whole segment, as in '/a/**'",
        "p.yaml:10: rules[1].paths[2]: invalid path pattern 're:(': invalid regex: missing ), "
        "unterminated subpattern at position 0",
    ]


def test_norway_is_not_false() -> None:
    assert problems("rules:\n  - {name: a, countries: [NO], action: deny}\n") == [
        "p.yaml:2: rules[0].countries[0]: must be a string, not a boolean "
        "(quote it: YAML reads yes/no/on/off/NO/null as booleans or null)"
    ]


def test_role_cycle_names_the_roles() -> None:
    text = "roles:\n  a: {inherits: [b]}\n  b: {inherits: [a]}\n  c: {inherits: [nobody]}\n"
    assert problems(text) == [
        "p.yaml:2: roles.a.inherits: role inheritance cycle: a -> b -> a",
        "p.yaml:4: roles.c.inherits[0]: unknown role 'nobody'",
    ]


def test_unknown_names_are_checked_after_merging() -> None:
    text = "rules:\n  - {name: a, networks: [ofice], subjects: {roles: [admn]}, action: deny}\n"
    assert problems(text) == [
        "p.yaml:2: rules[0].networks[0]: unknown network 'ofice'",
        "p.yaml:2: rules[0].subjects.roles[0]: unknown role 'admn'",
    ]


def test_unknown_role_in_subjects_and_missing_keys() -> None:
    text = "roles:\n  admin: {}\nrules:\n  - subjects: {roles: [admn]}\n  - {name: x, action: deny, fresh: 5m}\n"
    assert problems(text) == [
        "p.yaml:4: rules[0]: missing key 'name'",
        "p.yaml:4: rules[0]: missing key 'action'",
        "p.yaml:5: rules[1].fresh: has no effect with action deny",
    ]


def test_types_and_empty_lists() -> None:
    text = "default: 3\nrules:\n  - {name: a, hosts: [], action: bypass, case_sensitive: 'yes'}\n  - 7\n"
    assert problems(text) == [
        "p.yaml:1: default: must be a string, not a number",
        "p.yaml:3: rules[0].hosts: must not be empty (leave the key out instead)",
        "p.yaml:3: rules[0].case_sensitive: must be true or false, not a string",
        "p.yaml:4: rules[1]: must be a mapping, not a number",
    ]


def test_duplicate_rule_names_and_yaml_errors() -> None:
    assert problems("rules:\n  - {name: a, action: deny}\n  - {name: a, action: deny}\n") == [
        "p.yaml:3: rules[1].name: duplicate rule name 'a' (first at p.yaml:2)"
    ]
    # The wording is libyaml's or PyYAML's, whichever parses; the location is ours.
    (problem,) = problems("rules: [\n")
    assert problem.startswith("p.yaml:2: invalid YAML: ")


def test_files_merge_in_order(tmp_path: Path) -> None:
    first = tmp_path / "a.yaml"
    second = tmp_path / "b.yaml"
    first.write_text(
        "networks: {office: [10.0.0.0/8]}\nrules:\n  - {name: one, paths: [/a], action: deny}\n"
    )
    second.write_text(
        "default: bypass\nnetworks: {office: [10.0.0.0/8]}\n"
        "rules:\n  - {name: two, paths: [/a, /b], networks: [office], action: one_factor}\n"
    )
    policy = load_policy_set([first, second])
    assert policy.default.value == "bypass"
    assert [r.name for r in policy.rules] == ["one", "two"]
    assert decide(policy, RequestContext("h", "/a", "GET")).action is Action.DENY


def test_conflicting_definitions_name_both_places(tmp_path: Path) -> None:
    first = tmp_path / "a.yaml"
    second = tmp_path / "b.yaml"
    first.write_text("networks: {office: [10.0.0.0/8]}\nroles: {r: {permissions: [x]}}\n")
    second.write_text("roles: {r: {permissions: [y]}}\nnetworks: {office: [192.168.0.0/16]}\n")
    with pytest.raises(PolicyError) as caught:
        load_policy_set([first, second])
    assert [str(p) for p in caught.value.problems] == [
        f"{second}:1: roles.r: role 'r' is already defined differently at {first}:2",
        f"{second}:2: networks.office: network 'office' is already defined differently at {first}:1",
    ]


def test_missing_file_is_a_located_problem(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy_set([tmp_path / "nope.yaml"])
    assert str(caught.value) == f"{tmp_path / 'nope.yaml'}: file not found"
