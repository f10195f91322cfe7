"""Parsed policy files → one immutable `PolicySet`, ready for `decide()`.

Merging follows a tenant's `policies:` list in order: rules are concatenated; `default`
comes from the first file that sets it (none: deny, fail closed); networks and roles
are merged by name, and the same name defined differently is an error naming both
places. Names are resolved, role inheritance is closed (cycles are errors), and
every pattern becomes a matcher here, once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from policies.errors import PolicyError, Problem, did_you_mean
from policies.matchers import NetworkSet, PathMatcher, RuleHostIndex
from policies.model import Action, Decision, IPNetwork, Level
from policies.spec import (
    NetworkSpec,
    NetworksSpec,
    PolicyDocument,
    RoleSpec,
    RuleSpec,
    SubjectsSpec,
)


@dataclass(frozen=True, slots=True)
class CompiledSubjects:
    users: frozenset[str]
    groups: frozenset[str]
    roles: frozenset[str]
    permissions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A rule with every condition turned into a matcher; None means "no such condition"."""

    position: int
    name: str
    level: Level
    spec: RuleSpec
    host_exact: frozenset[str]
    host_suffixes: tuple[str, ...]  # ".example.com" for "*.example.com"
    paths: PathMatcher | None
    methods: frozenset[str] | None
    networks: NetworkSet | None
    not_networks: NetworkSet | None
    countries: frozenset[str] | None
    not_countries: frozenset[str] | None
    subjects: CompiledSubjects | None
    fresh: float | None
    reasons: Mapping[Action, str]  # the Decision.reason for each answer, built once
    # The untraced Decision for each answer, built once: the hot path allocates none.
    decisions: Mapping[Action, Decision]

    def matches_host(self, host: str) -> bool:
        if not self.host_exact and not self.host_suffixes:
            return True
        return host in self.host_exact or any(host.endswith(s) for s in self.host_suffixes)


@dataclass(frozen=True, slots=True)
class PolicySet:
    """An immutable, compiled policy: what `decide()` reads. Reload builds a new one."""

    files: tuple[str, ...]
    default: Level
    rules: tuple[CompiledRule, ...]
    index: RuleHostIndex
    role_closure: Mapping[str, frozenset[str]]  # role → itself and every role it inherits
    role_permissions: Mapping[str, frozenset[str]]  # role → permissions incl. inherited
    networks: Mapping[str, tuple[IPNetwork, ...]]
    default_reasons: Mapping[Action, str]
    default_decisions: Mapping[Action, Decision]


def build_policy_set(
    documents: Sequence[PolicyDocument], prior: Sequence[Problem] = ()
) -> PolicySet:
    """Merge and compile; raises PolicyError listing every problem found, `prior` ones
    (from parsing) included, ordered by file and line."""
    problems: list[Problem] = list(prior)
    default = next((d.default for d in documents if d.default is not None), Level.DENY)
    networks = _merge_networks(documents, problems)
    roles = _merge_roles(documents, problems)
    rules = [rule for d in documents for rule in d.rules]
    _check_rule_names(rules, problems)
    _check_references(rules, networks, roles, problems)
    closure = _close_roles(roles, problems)
    if problems:
        order = {d.file: i for i, d in enumerate(documents)}
        problems.sort(key=lambda p: (order.get(p.file, -1), p.line or 0))
        raise PolicyError(problems)
    role_permissions = {
        name: frozenset(p for r in closure[name] for p in roles[r].permissions) for name in roles
    }
    net_map = {name: spec.networks for name, spec in networks.items()}
    shared = _Shared(net_map)
    compiled = tuple(_compile_rule(i, rule, shared) for i, rule in enumerate(rules))
    return PolicySet(
        files=tuple(d.file for d in documents),
        default=default,
        rules=compiled,
        index=RuleHostIndex([r.spec.hosts for r in compiled]),
        role_closure=closure,
        role_permissions=role_permissions,
        networks=net_map,
        default_reasons=_reasons(None, default, None),
        default_decisions=_decisions(None, _reasons(None, default, None)),
    )


def _merge_networks(
    documents: Sequence[PolicyDocument], problems: list[Problem]
) -> dict[str, NetworkSpec]:
    merged: dict[str, NetworkSpec] = {}
    for doc in documents:
        for net in doc.networks:
            first = merged.get(net.name)
            if first is None:
                merged[net.name] = net
            elif set(first.networks) != set(net.networks):
                problems.append(
                    Problem(
                        net.where.file,
                        net.where.line,
                        net.where.key,
                        f"network '{net.name}' is already defined differently at {first.where}",
                    )
                )
    return merged


def _merge_roles(
    documents: Sequence[PolicyDocument], problems: list[Problem]
) -> dict[str, RoleSpec]:
    merged: dict[str, RoleSpec] = {}
    for doc in documents:
        for role in doc.roles:
            first = merged.get(role.name)
            if first is None:
                merged[role.name] = role
            elif not first.same_definition(role):
                problems.append(
                    Problem(
                        role.where.file,
                        role.where.line,
                        role.where.key,
                        f"role '{role.name}' is already defined differently at {first.where}",
                    )
                )
    return merged


def _check_rule_names(rules: Sequence[RuleSpec], problems: list[Problem]) -> None:
    seen: dict[str, RuleSpec] = {}
    for rule in rules:
        first = seen.setdefault(rule.name, rule)
        if first is not rule:
            problems.append(
                Problem(
                    rule.where.file,
                    rule.where.line,
                    f"{rule.where.key}.name",
                    f"duplicate rule name '{rule.name}' (first at {first.where})",
                )
            )


def _check_references(
    rules: Sequence[RuleSpec],
    networks: Mapping[str, NetworkSpec],
    roles: Mapping[str, RoleSpec],
    problems: list[Problem],
) -> None:
    def unknown(kind: str, name: str, choices: Sequence[str]) -> str:
        return f"unknown {kind} '{name}'{did_you_mean(name, tuple(choices))}"

    for rule in rules:
        for cond in (rule.networks, rule.not_networks):
            for ref in cond.names if cond is not None else ():
                if ref.name not in networks:
                    problems.append(
                        Problem(
                            ref.where.file,
                            ref.where.line,
                            ref.where.key,
                            unknown("network", ref.name, list(networks)),
                        )
                    )
        for ref in rule.subjects.roles if rule.subjects is not None else ():
            if ref.name not in roles:
                problems.append(
                    Problem(
                        ref.where.file,
                        ref.where.line,
                        ref.where.key,
                        unknown("role", ref.name, list(roles)),
                    )
                )
    for role in roles.values():
        for ref in role.inherits:
            if ref.name not in roles:
                problems.append(
                    Problem(
                        ref.where.file,
                        ref.where.line,
                        ref.where.key,
                        unknown("role", ref.name, list(roles)),
                    )
                )


def _close_roles(
    roles: Mapping[str, RoleSpec], problems: list[Problem]
) -> dict[str, frozenset[str]]:
    """Each role with all it inherits; a cycle is reported once, naming its roles in order."""
    closure: dict[str, frozenset[str]] = {}
    reported: set[frozenset[str]] = set()

    def visit(name: str, stack: list[str]) -> frozenset[str]:
        if name in closure:
            return closure[name]
        if name in stack:
            cycle = [*stack[stack.index(name) :], name]
            key = frozenset(cycle)
            if key not in reported:
                reported.add(key)
                where = roles[cycle[0]].where
                problems.append(
                    Problem(
                        where.file,
                        where.line,
                        f"roles.{cycle[0]}.inherits",
                        "role inheritance cycle: " + " -> ".join(cycle),
                    )
                )
            return frozenset()
        result = {name}
        for ref in roles[name].inherits:
            if ref.name in roles:
                result |= visit(ref.name, [*stack, name])
        closure[name] = frozenset(result)
        return closure[name]

    for name in roles:
        visit(name, [])
    return closure


class _Shared:
    """The immutable parts many rules have in common (a 10,000-rule policy repeats a few
    hosts, methods, networks and subjects), each built once per policy set and shared."""

    def __init__(self, named: Mapping[str, tuple[IPNetwork, ...]]) -> None:
        self.named = named
        self._sets: dict[tuple[str, ...], frozenset[str]] = {}
        self._hosts: dict[tuple[str, ...], tuple[frozenset[str], tuple[str, ...]]] = {}
        self._networks: dict[tuple[tuple[IPNetwork, ...], tuple[str, ...]], NetworkSet] = {}
        self._subjects: dict[
            tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...]],
            CompiledSubjects,
        ] = {}

    def set_of(self, items: tuple[str, ...]) -> frozenset[str]:
        found = self._sets.get(items)
        if found is None:
            found = self._sets[items] = frozenset(items)
        return found

    def hosts(self, hosts: tuple[str, ...]) -> tuple[frozenset[str], tuple[str, ...]]:
        """(exact hosts, ".example.com" suffixes of the "*.example.com" wildcards)."""
        found = self._hosts.get(hosts)
        if found is None:
            found = self._hosts[hosts] = (
                frozenset(h for h in hosts if not h.startswith("*.")),
                tuple(h[1:] for h in hosts if h.startswith("*.")),
            )
        return found

    def network_set(self, spec: NetworksSpec | None) -> NetworkSet | None:
        if spec is None:
            return None
        key = (spec.cidrs, tuple(ref.name for ref in spec.names))
        found = self._networks.get(key)
        if found is None:
            named = self.named
            found = self._networks[key] = NetworkSet.of(
                [*spec.cidrs, *(net for ref in spec.names for net in named[ref.name])]
            )
        return found

    def subjects(self, s: SubjectsSpec) -> CompiledSubjects:
        key = (s.users, s.groups, tuple(r.name for r in s.roles), s.permissions)
        found = self._subjects.get(key)
        if found is None:
            found = self._subjects[key] = CompiledSubjects(
                frozenset(s.users), frozenset(s.groups), frozenset(key[2]), s.permissions
            )
        return found


def _compile_rule(position: int, spec: RuleSpec, shared: _Shared) -> CompiledRule:
    host_exact, host_suffixes = shared.hosts(spec.hosts)
    reasons = _reasons(spec.name, spec.level, spec.fresh)
    return CompiledRule(
        position=position,
        name=spec.name,
        level=spec.level,
        spec=spec,
        host_exact=host_exact,
        host_suffixes=host_suffixes,
        paths=PathMatcher.compile(spec.paths, spec.case_sensitive) if spec.paths else None,
        methods=shared.set_of(spec.methods) if spec.methods else None,
        networks=shared.network_set(spec.networks),
        not_networks=shared.network_set(spec.not_networks),
        countries=shared.set_of(spec.countries) if spec.countries else None,
        not_countries=shared.set_of(spec.not_countries) if spec.not_countries else None,
        subjects=shared.subjects(spec.subjects) if spec.subjects is not None else None,
        fresh=spec.fresh,
        reasons=reasons,
        decisions=_decisions(spec.name, reasons),
    )


def _decisions(name: str | None, reasons: Mapping[Action, str]) -> dict[Action, Decision]:
    return {action: Decision(action, name, reason) for action, reason in reasons.items()}


def _reasons(name: str | None, level: Level, fresh: float | None) -> dict[Action, str]:
    who = f"rule '{name}'" if name is not None else "no rule held; the default"
    written = level.value
    return {
        Action.ALLOW: f"{who} ({written}) allows the request",
        Action.LOGIN: f"{who} ({written}) needs a logged-in user",
        Action.SECOND_FACTOR: f"{who} (two_factor) needs a second factor",
        Action.REAUTH: f"{who} needs an authentication younger than {_age(fresh)}",
        Action.DENY: f"{who} denies the request",
    }


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"
