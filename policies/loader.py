"""YAML → `PolicyDocument`, checking everything and collecting every problem.

Each problem reads `FILE:LINE: rules[3].actoin: unknown key (did you mean 'action'?)`.
Nothing is reported one at a time: an operator fixes a file in one pass.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Any

from policies.durations import duration_or_none
from policies.errors import Problem, did_you_mean
from policies.matchers import GlobError, PathMatcher
from policies.model import IPNetwork, Level
from policies.source import LocatedDict, LocatedList, line_of
from policies.spec import (
    NameRef,
    NetworkSpec,
    NetworksSpec,
    PolicyDocument,
    RoleSpec,
    RuleSpec,
    SubjectsSpec,
    Where,
)

TOP_KEYS = ("version", "default", "networks", "roles", "rules")
RULE_KEYS = (
    "name",
    "description",
    "hosts",
    "paths",
    "methods",
    "networks",
    "not_networks",
    "countries",
    "not_countries",
    "subjects",
    "action",
    "fresh",
    "case_sensitive",
)
SUBJECT_KEYS = ("users", "groups", "roles", "permissions")
ROLE_KEYS = ("inherits", "permissions")
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE")
LEVELS = tuple(level.value for level in Level)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_COUNTRY = re.compile(r"[A-Z]{2}")
_PERMISSION = re.compile(r"\*|[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*(?:\.\*)?")
_HOST_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


class FieldReader:
    """Walks one file's located YAML, recording problems against FILE:LINE: key."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[Problem] = []

    def where(self, container: object, key: object, path: str) -> Where:
        return Where(self.file, line_of(container, key), path)

    def problem(self, container: object, key: object, path: str, message: str) -> None:
        self.problems.append(Problem(self.file, line_of(container, key), path, message))

    def check_keys(self, mapping: LocatedDict, allowed: tuple[str, ...], path: str) -> None:
        for key in mapping:
            if key not in allowed:
                sub = f"{path}.{key}" if path else str(key)
                hint = did_you_mean(key, allowed) if isinstance(key, str) else ""
                self.problem(mapping, key, sub, f"unknown key{hint}")

    def mapping(self, container: Any, key: object, path: str) -> LocatedDict | None:
        value = container[key]
        if isinstance(value, LocatedDict):
            return value
        self.problem(container, key, path, f"must be a mapping, not {_kind(value)}")
        return None

    def string(self, container: Any, key: object, path: str) -> str | None:
        value = container[key]
        if isinstance(value, str):
            return value
        hint = ""
        if isinstance(value, bool) or value is None:
            hint = " (quote it: YAML reads yes/no/on/off/NO/null as booleans or null)"
        self.problem(container, key, path, f"must be a string, not {_kind(value)}{hint}")
        return None

    def strings(self, container: Any, key: object, path: str) -> list[tuple[str, int, str]]:
        """A non-empty list of strings, as (value, index, path) for each valid item."""
        value = container[key]
        if not isinstance(value, LocatedList):
            self.problem(container, key, path, f"must be a list, not {_kind(value)}")
            return []
        if not value:
            self.problem(container, key, path, "must not be empty (leave the key out instead)")
        out = []
        for i, item in enumerate(value):
            item_path = f"{path}[{i}]"
            if isinstance(item, str):
                out.append((item, i, item_path))
            else:
                self.string(value, i, item_path)  # says what is wrong with it
        return out


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def parse_document(data: Any, file: str) -> tuple[PolicyDocument, list[Problem]]:
    """Parse one file's YAML; problems are returned, never raised, so files can be merged first."""
    r = FieldReader(file)
    empty = PolicyDocument(file, None, (), (), ())
    if data is None:
        r.problems.append(Problem(file, None, "", "empty policy file"))
        return empty, r.problems
    if not isinstance(data, LocatedDict):
        r.problems.append(Problem(file, line_of(data), "", "a policy file must be a mapping"))
        return empty, r.problems
    r.check_keys(data, TOP_KEYS, "")
    if "version" in data and (data["version"] != 1 or isinstance(data["version"], bool)):
        r.problem(data, "version", "version", "unsupported version (only 1 exists)")
    default = None
    if "default" in data:
        default = _level(r, data, "default", "default")
    networks = _networks(r, data) if "networks" in data else ()
    roles = _roles(r, data) if "roles" in data else ()
    rules: list[RuleSpec] = []
    if "rules" in data:
        raw = data["rules"]
        if not isinstance(raw, LocatedList):
            r.problem(data, "rules", "rules", f"must be a list, not {_kind(raw)}")
        else:
            for i in range(len(raw)):
                rule = _rule(r, raw, i, f"rules[{i}]")
                if rule is not None:
                    rules.append(rule)
    return PolicyDocument(file, default, networks, roles, tuple(rules)), r.problems


def _level(r: FieldReader, container: LocatedDict, key: str, path: str) -> Level | None:
    text = r.string(container, key, path)
    if text is None:
        return None
    if text not in LEVELS:
        hint = did_you_mean(text, LEVELS) or f" (one of {', '.join(LEVELS)})"
        r.problem(container, key, path, f"unknown action '{text}'{hint}")
        return None
    return Level(text)


def _cidr(r: FieldReader, container: Any, key: object, path: str, text: str) -> IPNetwork | None:
    net = _parse_cidr(text)
    if isinstance(net, str):
        r.problem(container, key, path, net)
        return None
    return net


@functools.lru_cache(maxsize=4096)
def _parse_cidr(text: str) -> IPNetwork | str:
    """The network `text` names, or what is wrong with it (networks are immutable: shared)."""
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        return f"invalid CIDR '{text}': {exc}"


def _looks_like_cidr(text: str) -> bool:
    return ":" in text or "/" in text or text[:1].isdigit()


def _networks(r: FieldReader, data: LocatedDict) -> tuple[NetworkSpec, ...]:
    block = r.mapping(data, "networks", "networks")
    if block is None:
        return ()
    out = []
    for name in block:
        path = f"networks.{name}"
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            r.problem(block, name, path, "a network name is letters, digits, '_', '-', '.'")
            continue
        nets = []
        for text, i, item_path in r.strings(block, name, path):
            net = _cidr(r, block[name], i, item_path, text)
            if net is not None:
                nets.append(net)
        out.append(NetworkSpec(name, r.where(block, name, path), tuple(nets)))
    return tuple(out)


def _permissions(r: FieldReader, container: Any, key: object, path: str) -> tuple[str, ...]:
    out = []
    for text, i, item_path in r.strings(container, key, path):
        if _PERMISSION.fullmatch(text):
            out.append(text)
        else:
            r.problem(
                container[key],
                i,
                item_path,
                f"invalid permission '{text}' "
                "(dotted names; '*' only alone or as the last part: 'wiki.*')",
            )
    return tuple(out)


def _roles(r: FieldReader, data: LocatedDict) -> tuple[RoleSpec, ...]:
    block = r.mapping(data, "roles", "roles")
    if block is None:
        return ()
    out = []
    for name in block:
        path = f"roles.{name}"
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            r.problem(block, name, path, "a role name is letters, digits, '_', '-', '.'")
            continue
        body = r.mapping(block, name, path)
        if body is None:
            continue
        r.check_keys(body, ROLE_KEYS, path)
        inherits = tuple(
            NameRef(text, r.where(body["inherits"], i, item_path))
            for text, i, item_path in (
                r.strings(body, "inherits", f"{path}.inherits") if "inherits" in body else []
            )
        )
        permissions = (
            _permissions(r, body, "permissions", f"{path}.permissions")
            if "permissions" in body
            else ()
        )
        out.append(RoleSpec(name, r.where(block, name, path), inherits, permissions))
    return tuple(out)


def _host(r: FieldReader, container: Any, i: int, path: str, text: str) -> str | None:
    host, problem = _parse_host(text)
    if problem is not None:
        r.problem(container, i, path, problem)
    return host


@functools.lru_cache(maxsize=8192)
def _parse_host(text: str) -> tuple[str | None, str | None]:
    """(the host pattern `text` is, None) or (None, what is wrong with it)."""
    host = text.lower().rstrip(".")
    labels = host[2:].split(".") if host.startswith("*.") else host.split(".")
    if host == "*":
        return None, "'*' alone is not a host pattern (leave out `hosts` to match every host)"
    if not all(_HOST_LABEL.fullmatch(label) for label in labels):
        return None, f"invalid host pattern '{text}' (a host name, or '*.' and a domain)"
    return host, None


def _networks_condition(r: FieldReader, rule: LocatedDict, key: str, path: str) -> NetworksSpec:
    cidrs: list[IPNetwork] = []
    names: list[NameRef] = []
    for text, i, item_path in r.strings(rule, key, f"{path}.{key}"):
        if _looks_like_cidr(text):
            net = _cidr(r, rule[key], i, item_path, text)
            if net is not None:
                cidrs.append(net)
        else:
            names.append(NameRef(text, r.where(rule[key], i, item_path)))
    return NetworksSpec(tuple(cidrs), tuple(names))


def _countries(r: FieldReader, rule: LocatedDict, key: str, path: str) -> tuple[str, ...]:
    out = []
    for text, i, item_path in r.strings(rule, key, f"{path}.{key}"):
        if _COUNTRY.fullmatch(text):
            out.append(text)
        else:
            r.problem(
                rule[key],
                i,
                item_path,
                f"invalid country '{text}' (ISO 3166 code: two capital letters, e.g. GB)",
            )
    return tuple(out)


def _subjects(r: FieldReader, rule: LocatedDict, path: str) -> SubjectsSpec | None:
    path = f"{path}.subjects"
    block = r.mapping(rule, "subjects", path)
    if block is None:
        return None
    r.check_keys(block, SUBJECT_KEYS, path)
    if not any(k in block for k in SUBJECT_KEYS):
        r.problem(
            rule, "subjects", path, "must name at least one of users, groups, roles, permissions"
        )
        return None
    users = (
        tuple(t for t, _, _ in r.strings(block, "users", f"{path}.users"))
        if "users" in block
        else ()
    )
    groups = (
        tuple(t for t, _, _ in r.strings(block, "groups", f"{path}.groups"))
        if "groups" in block
        else ()
    )
    roles = tuple(
        NameRef(t, r.where(block["roles"], i, p))
        for t, i, p in (r.strings(block, "roles", f"{path}.roles") if "roles" in block else [])
    )
    permissions = (
        _permissions(r, block, "permissions", f"{path}.permissions")
        if "permissions" in block
        else ()
    )
    return SubjectsSpec(users, groups, roles, permissions)


def _rule(r: FieldReader, rules: LocatedList, index: int, path: str) -> RuleSpec | None:
    rule = r.mapping(rules, index, path)
    if rule is None:
        return None
    before = len(r.problems)
    r.check_keys(rule, RULE_KEYS, path)
    name = r.string(rule, "name", f"{path}.name") if "name" in rule else None
    if "name" not in rule:
        r.problem(rules, index, path, "missing key 'name'")
    elif name is not None and not name.strip():
        r.problem(rule, "name", f"{path}.name", "must not be empty")
    level = None
    if "action" not in rule:
        r.problem(rules, index, path, "missing key 'action'")
    else:
        level = _level(r, rule, "action", f"{path}.action")
    hosts = tuple(
        h
        for t, i, p in (r.strings(rule, "hosts", f"{path}.hosts") if "hosts" in rule else [])
        if (h := _host(r, rule["hosts"], i, p, t)) is not None
    )
    case_sensitive = False
    if "case_sensitive" in rule:
        value = rule["case_sensitive"]
        if isinstance(value, bool):
            case_sensitive = value
        else:
            r.problem(
                rule,
                "case_sensitive",
                f"{path}.case_sensitive",
                f"must be true or false, not {_kind(value)}",
            )
    paths = []
    for text, i, item_path in r.strings(rule, "paths", f"{path}.paths") if "paths" in rule else []:
        try:
            PathMatcher.check(text, case_sensitive)
        except GlobError as exc:
            r.problem(rule["paths"], i, item_path, f"invalid path pattern '{text}': {exc}")
            continue
        paths.append(text)
    methods = []
    for text, i, item_path in (
        r.strings(rule, "methods", f"{path}.methods") if "methods" in rule else []
    ):
        if text.upper() in METHODS:
            methods.append(text.upper())
        else:
            hint = did_you_mean(text.upper(), METHODS) or f" (one of {', '.join(METHODS)})"
            r.problem(rule["methods"], i, item_path, f"unknown method '{text}'{hint}")
    networks = _networks_condition(r, rule, "networks", path) if "networks" in rule else None
    not_networks = (
        _networks_condition(r, rule, "not_networks", path) if "not_networks" in rule else None
    )
    countries = _countries(r, rule, "countries", path) if "countries" in rule else ()
    not_countries = _countries(r, rule, "not_countries", path) if "not_countries" in rule else ()
    subjects = _subjects(r, rule, path) if "subjects" in rule else None
    fresh = None
    if "fresh" in rule:
        written = r.string(rule, "fresh", f"{path}.fresh")
        if written is not None:
            fresh = duration_or_none(written)
            if fresh is None or fresh <= 0:
                r.problem(
                    rule,
                    "fresh",
                    f"{path}.fresh",
                    f"invalid duration '{written}' (like 90s, 15m, 12h, 30d)",
                )
            elif level in (Level.BYPASS, Level.DENY):
                r.problem(
                    rule, "fresh", f"{path}.fresh", f"has no effect with action {level.value}"
                )
    description = ""
    if "description" in rule:
        description = r.string(rule, "description", f"{path}.description") or ""
    if len(r.problems) != before or name is None or level is None:
        return None
    return RuleSpec(
        name=name,
        where=r.where(rules, index, path),
        level=level,
        hosts=hosts,
        paths=tuple(paths),
        methods=tuple(methods),
        networks=networks,
        not_networks=not_networks,
        countries=countries,
        not_countries=not_countries,
        subjects=subjects,
        fresh=fresh,
        case_sensitive=case_sensitive,
        description=description,
    )
