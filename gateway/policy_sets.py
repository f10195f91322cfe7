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
from policies import (
    Decision,
    PolicyError,
    PolicySet,
    RequestContext,
    decide_fast,
    load_policy_set,
    load_policy_text,
)

log = logging.getLogger("authgate.policy")

# A tenant that names no policy file gets this: nothing passes until an operator
# says what may (fail closed).
_DENY_ALL = load_policy_text("version: 1\ndefault: deny\n", "<no policy files>")


def compile_tenant_policies(tenants: Iterable[TenantConfig]) -> Mapping[str, PolicySet]:
    """Every tenant's policy set; raises PolicyError listing every problem found."""
    compiled: dict[str, PolicySet] = {}
    problems = []
    for tenant in tenants:
        if not tenant.policies:
            compiled[tenant.id] = _DENY_ALL
            continue
        try:
            compiled[tenant.id] = load_policy_set(tenant.policies)
        except PolicyError as exc:
            problems.extend(exc.problems)
    if problems:
        raise PolicyError(problems)
    return MappingProxyType(compiled)


class PolicyRegistry:
    """The live policy sets of a worker."""

    def __init__(
        self, tenants: Iterable[TenantConfig], last_good: Mapping[str, PolicySet] | None = None
    ) -> None:
        """Compile from the files; when they are bad now, start from `last_good` (a
        worker restarted after an invalid edit keeps serving what its siblings serve)."""
        self._tenants = tuple(tenants)
        try:
            self._sets = compile_tenant_policies(self._tenants)
        except PolicyError as exc:
            if last_good is None:
                raise
            for problem in exc.problems:
                log.error("policy files invalid at start, serving the last good set: %s", problem)
            self._sets = last_good

    @property
    def sets(self) -> Mapping[str, PolicySet]:
        return self._sets

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(dict.fromkeys(p for t in self._tenants for p in t.policies))

    def policy_set(self, tenant_id: str) -> PolicySet:
        return self._sets[tenant_id]

    def decide(self, tenant_id: str, context: RequestContext) -> Decision:
        return decide_fast(self._sets[tenant_id], context)

    def reload(self) -> PolicyError | None:
        """Recompile from the files; on error keep the old sets and return the error."""
        try:
            fresh = compile_tenant_policies(self._tenants)
        except PolicyError as exc:
            return exc
        self._sets = fresh
        return None
