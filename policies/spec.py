"""A policy file as parsed: typed, validated values that still know where they came from.

The loader produces these from YAML; the compiler turns them into a `PolicySet`.
Locations survive so that problems found only after merging several files (an
unknown role, a cycle, a conflicting network) still name FILE:LINE.
"""

from __future__ import annotations

from dataclasses import dataclass

from policies.model import IPNetwork, Level


@dataclass(frozen=True, slots=True)
class Where:
    file: str
    line: int | None
    key: str  # e.g. "rules[3].subjects.roles[0]"

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line is not None else self.file


@dataclass(frozen=True, slots=True)
class NameRef:
    """A name that must resolve against the merged policy (a network or a role)."""

    name: str
    where: Where


@dataclass(frozen=True, slots=True)
class SubjectsSpec:
    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    roles: tuple[NameRef, ...] = ()
    permissions: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class NetworksSpec:
    """`networks:` or `not_networks:` of a rule: CIDRs written inline plus named networks."""

    cidrs: tuple[IPNetwork, ...] = ()
    names: tuple[NameRef, ...] = ()


@dataclass(frozen=True, slots=True)
class RuleSpec:
    name: str
    where: Where
    level: Level
    hosts: tuple[str, ...] = ()  # lowercase; "*.example.com" for wildcards
    paths: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()  # uppercase
    networks: NetworksSpec | None = None
    not_networks: NetworksSpec | None = None
    countries: tuple[str, ...] = ()
    not_countries: tuple[str, ...] = ()
    subjects: SubjectsSpec | None = None
    fresh: float | None = None  # seconds
    case_sensitive: bool = False
    description: str = ""


@dataclass(frozen=True, slots=True)
class RoleSpec:
    name: str
    where: Where
    inherits: tuple[NameRef, ...] = ()
    permissions: tuple[str, ...] = ()

    def same_definition(self, other: RoleSpec) -> bool:
        return (
            tuple(r.name for r in self.inherits) == tuple(r.name for r in other.inherits)
            and self.permissions == other.permissions
        )


@dataclass(frozen=True, slots=True)
class NetworkSpec:
    name: str
    where: Where
    networks: tuple[IPNetwork, ...]


@dataclass(frozen=True, slots=True)
class PolicyDocument:
    """One policy file."""

    file: str
    default: Level | None
    networks: tuple[NetworkSpec, ...]
    roles: tuple[RoleSpec, ...]
    rules: tuple[RuleSpec, ...]
