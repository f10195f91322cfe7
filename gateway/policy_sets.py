"""Each tenant's compiled policy set, swapped atomically on reload.

A reload compiles every tenant's files into new sets first and swaps the whole
mapping in one assignment; if any file is invalid, nothing changes and the error
(with file and line) is returned for the caller to log and count.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType

from gateway.config.model import TenantConfig
from gateway.watch import Signature, signatures
from policies import (
    Decision,
    PolicyError,
    PolicySet,
    RequestContext,
    decide_fast,
    load_policy_set,
    load_policy_text,
)
from policies.source import Problem

log = logging.getLogger("authgate.policy")

# A tenant that names no policy file gets this: nothing passes until an operator
# says what may (fail closed).
DENY_ALL = load_policy_text("version: 1\ndefault: deny\n", "<no policy files>")


def policy_files(tenants: Iterable[TenantConfig]) -> tuple[Path, ...]:
    """Every policy file these tenants name, once each, in order."""
    return tuple(dict.fromkeys(p for t in tenants for p in t.policies))


def uses_countries(policy_set: PolicySet) -> bool:
    """Whether any rule looks at the client's country (the pipeline then looks it up)."""
    return any(r.countries is not None or r.not_countries is not None for r in policy_set.rules)


def country_rules_without_geoip(sets: Iterable[PolicySet]) -> list[Problem]:
    """One problem per rule that uses countries, for when no GeoIP database is configured:
    such a rule could never see a country, so starting would silently change its meaning."""
    problems: list[Problem] = []
    seen: set[tuple[str, int | None, str]] = set()
    for policy_set in sets:
        for rule in policy_set.rules:
            if rule.countries is None and rule.not_countries is None:
                continue
            where = rule.spec.where
            key = "countries" if rule.countries is not None else "not_countries"
            if (where.file, where.line, key) in seen:
                continue
            seen.add((where.file, where.line, key))
            problems.append(
                Problem(
                    where.file,
                    where.line,
                    f"{where.key}.{key}" if where.key else key,
                    f"rule '{rule.name}' uses {key} but geoip.database is not configured",
                )
            )
    return problems


def compile_tenant_policies(
    tenants: Iterable[TenantConfig], *, geoip_configured: bool = True
) -> Mapping[str, PolicySet]:
    """Every tenant's policy set; raises PolicyError listing every problem found.

    With `geoip_configured=False`, a rule using `countries`/`not_countries` is a problem.
    """
    compiled: dict[str, PolicySet] = {}
    problems = []
    for tenant in tenants:
        if not tenant.policies:
            compiled[tenant.id] = DENY_ALL
            continue
        try:
            compiled[tenant.id] = load_policy_set(tenant.policies)
        except PolicyError as exc:
            problems.extend(exc.problems)
    if not problems and not geoip_configured:
        problems.extend(country_rules_without_geoip(compiled.values()))
    if problems:
        raise PolicyError(problems)
    return MappingProxyType(compiled)


class PolicyRegistry:
    """The live policy sets of a worker."""

    def __init__(
        self,
        tenants: Iterable[TenantConfig],
        last_good: Mapping[str, PolicySet] | None = None,
        *,
        geoip_configured: bool = True,
    ) -> None:
        """Compile from the files; when they are bad now, start from `last_good` (a
        worker restarted after an invalid edit keeps serving what its siblings serve)."""
        self._tenants = tuple(tenants)
        self._geoip = geoip_configured
        # Taken before the files are read: the watcher counts any later edit as one.
        self.read_as: list[Signature] = signatures(self.files)
        try:
            self._sets = compile_tenant_policies(self._tenants, geoip_configured=self._geoip)
        except PolicyError as exc:
            if last_good is None:
                raise
            for problem in exc.problems:
                log.error("policy files invalid at start, serving the last good set: %s", problem)
            self._sets = last_good
        self._countries = _country_tenants(self._sets)
        self._anonymous = _AnonymousDecisions(self._sets)

    @property
    def sets(self) -> Mapping[str, PolicySet]:
        return self._sets

    @property
    def files(self) -> tuple[Path, ...]:
        return policy_files(self._tenants)

    def policy_set(self, tenant_id: str) -> PolicySet:
        return self._sets[tenant_id]

    def uses_countries(self, tenant_id: str) -> bool:
        """Whether the tenant's rules look at countries (True for a tenant not known
        here, e.g. one added from the database: looking up is the safe side)."""
        return tenant_id in self._countries or tenant_id not in self._sets

    def decide(self, tenant_id: str, context: RequestContext) -> Decision:
        if context.principal is None:
            return self._anonymous.decide(tenant_id, self._sets[tenant_id], context)
        return decide_fast(self._sets[tenant_id], context)

    def reload(self) -> PolicyError | None:
        """Recompile from the files; on error keep the old sets and return the error."""
        try:
            fresh = compile_tenant_policies(self._tenants, geoip_configured=self._geoip)
        except PolicyError as exc:
            return exc
        self._countries = _country_tenants(fresh)
        self._anonymous = _AnonymousDecisions(fresh)
        self._sets = fresh
        return None


class _AnonymousDecisions:
    """Decisions for anonymous requests, remembered per (tenant, host, path, method).

    Without a principal, and in a policy set with no network or country conditions,
    `decide` depends on nothing else, so the answer can be kept: most anonymous
    traffic (public assets, bypass routes) repeats a small set of URLs. Built anew
    with every policy set, so a reload never serves a stale answer.
    """

    LIMIT = 50_000  # entries; the whole map is dropped when full (cheap, bounded)

    def __init__(self, sets: Mapping[str, PolicySet]) -> None:
        self._static = frozenset(tenant for tenant, ps in sets.items() if _address_free(ps))
        self._known: dict[tuple[str, str, str, str], Decision] = {}

    def decide(self, tenant_id: str, policy: PolicySet, context: RequestContext) -> Decision:
        if tenant_id not in self._static:
            return decide_fast(policy, context)
        key = (tenant_id, context.host, context.path, context.method)
        found = self._known.get(key)
        if found is None:
            found = decide_fast(policy, context)
            if len(self._known) >= self.LIMIT:
                self._known = {}
            self._known[key] = found
        return found


def _address_free(policy: PolicySet) -> bool:
    """No rule looks at the client's address or country."""
    return all(
        rule.networks is None
        and rule.not_networks is None
        and rule.countries is None
        and rule.not_countries is None
        for rule in policy.rules
    )


def _country_tenants(sets: Mapping[str, PolicySet]) -> frozenset[str]:
    return frozenset(tenant for tenant, ps in sets.items() if uses_countries(ps))
