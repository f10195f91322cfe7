"""The policy test runner: operator-written cases (`authgate policy test`), with located errors.

A case file:

    policies: [acme.yaml]          # optional, relative to this file; else the CLI's
                                   # -c config, else `X.yaml` beside `X.test.yaml`
    cases:
      - name: admin needs 2FA
        request: {url: "https://wiki.acme.test/admin", method: GET, ip: 10.0.0.5, country: GB}
        principal: {user: alice, groups: [staff], roles: [admin], amr: [pwd], auth_age: 5m}
        expect: SECOND_FACTOR      # ALLOW | LOGIN | SECOND_FACTOR | REAUTH | DENY
        expect_rule: admin-area    # optional; null = the default decided

No `principal` means an anonymous request. Time is fixed (`NOW`) so cases are
deterministic: `auth_age` is how long ago the principal authenticated.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from policies.compiler import PolicySet
from policies.durations import duration_or_none
from policies.engine import decide
from policies.errors import PolicyError, Problem
from policies.loader import FieldReader
from policies.model import Action, Decision, IPAddress, Principal, RequestContext
from policies.source import LocatedDict, LocatedList, SourceError, load_yaml_file, parse_yaml

NOW = 1_700_000_000.0
ACTIONS = tuple(a.value for a in Action)
CASE_FILE_KEYS = ("policies", "cases")
CASE_KEYS = ("name", "request", "principal", "expect", "expect_rule")
REQUEST_KEYS = ("url", "method", "ip", "country")
PRINCIPAL_KEYS = ("user", "groups", "roles", "permissions", "amr", "auth_age")


@dataclass(frozen=True)
class PrincipalCase:
    user: str
    groups: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    permissions: tuple[str, ...] = ()
    amr: tuple[str, ...] = ()
    auth_age: float = 0.0


@dataclass(frozen=True)
class Case:
    name: str
    file: str
    line: int | None
    url: str
    host: str
    path: str
    method: str
    ip: IPAddress | None
    country: str | None
    principal: PrincipalCase | None
    expect: Action
    check_rule: bool  # expect_rule was given
    expect_rule: str | None


@dataclass(frozen=True)
class CaseFile:
    file: str
    policies: tuple[Path, ...]  # absolute; empty when the file names none
    cases: tuple[Case, ...]


@dataclass(frozen=True)
class CaseResult:
    case: Case
    decision: Decision
    passed: bool
    message: str  # "ALLOW by rule 'x'" or what was expected instead


def load_case_file(path: Path) -> CaseFile:
    try:
        data = load_yaml_file(path)
    except SourceError as exc:
        raise PolicyError(exc.problems) from None
    return parse_cases(data, str(path), path.parent)


def parse_case_text(text: str, file: str, base: Path | None = None) -> CaseFile:
    try:
        data = parse_yaml(text, file)
    except SourceError as exc:
        raise PolicyError(exc.problems) from None
    return parse_cases(data, file, base or Path.cwd())


def default_policy_paths(case_file: CaseFile) -> tuple[Path, ...]:
    """The case file's own `policies:`, else `X.yaml` beside `X.test.yaml`, else none."""
    if case_file.policies:
        return case_file.policies
    path = Path(case_file.file)
    if path.name.endswith(".test.yaml"):
        sibling = path.with_name(path.name[: -len(".test.yaml")] + ".yaml")
        if sibling.exists():
            return (sibling.resolve(),)
    return ()


def parse_cases(data: Any, file: str, base: Path) -> CaseFile:
    r = FieldReader(file)
    if not isinstance(data, LocatedDict):
        raise PolicyError([Problem(file, None, "", "a case file must be a mapping with 'cases'")])
    r.check_keys(data, CASE_FILE_KEYS, "")
    policies = tuple(
        (base / text).resolve()
        for text, _, _ in (r.strings(data, "policies", "policies") if "policies" in data else [])
    )
    cases: list[Case] = []
    if "cases" not in data:
        r.problems.append(Problem(file, data.line, "", "missing key 'cases'"))
    elif not isinstance(data["cases"], LocatedList):
        r.problem(data, "cases", "cases", "must be a list")
    else:
        for i in range(len(data["cases"])):
            case = _case(r, data["cases"], i, f"cases[{i}]")
            if case is not None:
                cases.append(case)
    if r.problems:
        raise PolicyError(r.problems)
    return CaseFile(file, policies, tuple(cases))


def _case(r: FieldReader, cases: LocatedList, i: int, path: str) -> Case | None:
    body = r.mapping(cases, i, path)
    if body is None:
        return None
    before = len(r.problems)
    r.check_keys(body, CASE_KEYS, path)
    for key in ("name", "request", "expect"):
        if key not in body:
            r.problem(cases, i, path, f"missing key '{key}'")
    name = r.string(body, "name", f"{path}.name") if "name" in body else None
    request = _request(r, body, f"{path}.request") if "request" in body else None
    principal = _principal(r, body, f"{path}.principal") if "principal" in body else None
    expect = None
    if "expect" in body:
        text = r.string(body, "expect", f"{path}.expect")
        if text is not None and text.upper() in ACTIONS:
            expect = Action(text.upper())
        elif text is not None:
            r.problem(
                body,
                "expect",
                f"{path}.expect",
                f"unknown decision '{text}' (one of {', '.join(ACTIONS)})",
            )
    expect_rule = None
    if "expect_rule" in body and body["expect_rule"] is not None:
        expect_rule = r.string(body, "expect_rule", f"{path}.expect_rule")
    if len(r.problems) != before or name is None or request is None or expect is None:
        return None
    url, host, req_path, method, ip, country = request
    return Case(
        name,
        r.file,
        cases.item_lines[i],
        url,
        host,
        req_path,
        method,
        ip,
        country,
        principal,
        expect,
        "expect_rule" in body,
        expect_rule,
    )


def _request(
    r: FieldReader, body: LocatedDict, path: str
) -> tuple[str, str, str, str, IPAddress | None, str | None] | None:
    block = r.mapping(body, "request", path)
    if block is None:
        return None
    r.check_keys(block, REQUEST_KEYS, path)
    if "url" not in block:
        r.problem(body, "request", path, "missing key 'url'")
        return None
    url = r.string(block, "url", f"{path}.url")
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        r.problem(block, "url", f"{path}.url", f"not an absolute http(s) URL: '{url}'")
        return None
    method = "GET"
    if "method" in block:
        method = (r.string(block, "method", f"{path}.method") or "GET").upper()
    ip = None
    if "ip" in block and (text := r.string(block, "ip", f"{path}.ip")) is not None:
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            r.problem(block, "ip", f"{path}.ip", f"invalid IP address '{text}'")
    country = None
    if "country" in block and block["country"] is not None:
        country = r.string(block, "country", f"{path}.country")
    return url, parts.hostname.rstrip("."), parts.path or "/", method, ip, country


def _principal(r: FieldReader, body: LocatedDict, path: str) -> PrincipalCase | None:
    if body["principal"] is None:
        return None
    block = r.mapping(body, "principal", path)
    if block is None:
        return None
    r.check_keys(block, PRINCIPAL_KEYS, path)
    if "user" not in block:
        r.problem(body, "principal", path, "missing key 'user'")
        return None
    user = r.string(block, "user", f"{path}.user")

    def names(key: str) -> tuple[str, ...]:
        if key not in block or block[key] == []:
            return ()
        return tuple(t for t, _, _ in r.strings(block, key, f"{path}.{key}"))

    age = 0.0
    if (
        "auth_age" in block
        and (text := r.string(block, "auth_age", f"{path}.auth_age")) is not None
    ):
        parsed = duration_or_none(text)
        if parsed is None:
            r.problem(
                block, "auth_age", f"{path}.auth_age", f"invalid duration '{text}' (like 90s, 15m)"
            )
        else:
            age = parsed
    if user is None:
        return None
    return PrincipalCase(
        user, names("groups"), names("roles"), names("permissions"), names("amr"), age
    )


def context_for(
    case: Case, now: float = NOW, canonicalize: Callable[[str], str] | None = None
) -> RequestContext:
    principal = None
    if case.principal is not None:
        p = case.principal
        principal = Principal(
            user=p.user,
            groups=frozenset(p.groups),
            roles=frozenset(p.roles),
            amr=p.amr,
            auth_time=now - p.auth_age,
            permissions=frozenset(p.permissions),
        )
    path = canonicalize(case.path) if canonicalize is not None else case.path
    return RequestContext(
        case.host.lower(), path, case.method, case.ip, case.country, principal, now
    )


def run_case(
    policy: PolicySet, case: Case, canonicalize: Callable[[str], str] | None = None
) -> CaseResult:
    decision = decide(policy, context_for(case, NOW, canonicalize))
    by = f"rule '{decision.rule}'" if decision.rule is not None else "the default"
    got = f"{decision.action.value} by {by}"
    if decision.action is not case.expect:
        return CaseResult(case, decision, False, f"expected {case.expect.value}, got {got}")
    if case.check_rule and decision.rule != case.expect_rule:
        want = f"rule '{case.expect_rule}'" if case.expect_rule is not None else "the default"
        return CaseResult(
            case, decision, False, f"expected {case.expect.value} by {want}, got {got}"
        )
    return CaseResult(case, decision, True, got)
