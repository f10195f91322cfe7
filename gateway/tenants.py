"""Host → tenant → route, resolved from indexes built once at load time.

Hosts given here are already canonical (lowercase, no port, no trailing dot).
A tenant domain is exact (`acme.test`) or a wildcard (`*.acme.test`, which covers
any depth of subdomain but not `acme.test` itself). Exact beats wildcard, and a
longer wildcard suffix beats a shorter one. Routes match on host the same way,
then on the longest path prefix made of whole segments.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from gateway.config.model import RouteConfig, TenantConfig

T = TypeVar("T")


class HostIndex(Generic[T]):
    """Exact hosts in a dict, wildcard suffixes walked label by label: O(labels) per lookup."""

    def __init__(self, entries: Iterable[tuple[str, T]]) -> None:
        self._exact: dict[str, T] = {}
        self._wildcard: dict[str, T] = {}  # "acme.test" for "*.acme.test"
        for pattern, value in entries:
            pattern = pattern.lower().rstrip(".")
            if pattern.startswith("*."):
                self._wildcard.setdefault(pattern[2:], value)
            else:
                self._exact.setdefault(pattern, value)

    def get(self, host: str) -> T | None:
        found = self._exact.get(host)
        if found is not None:
            return found
        # Strip one label at a time: the longest matching wildcard suffix wins.
        dot = host.find(".")
        while dot != -1:
            found = self._wildcard.get(host[dot + 1 :])
            if found is not None:
                return found
            dot = host.find(".", dot + 1)
        return None


def path_has_prefix(path: str, prefix: str) -> bool:
    """True when `prefix` covers `path` in whole segments (`/app` covers `/app/x`, not `/apple`)."""
    if prefix == "/" or path == prefix:
        return True
    base = prefix.rstrip("/")
    return path.startswith(base) and (len(path) == len(base) or path[len(base)] == "/")


@dataclass(frozen=True)
class RouteTable:
    """The routes of one host pattern, longest prefix first."""

    routes: tuple[RouteConfig, ...]

    def match(self, path: str) -> RouteConfig | None:
        for route in self.routes:
            if path_has_prefix(path, route.path):
                return route
        return None


class TenantIndex:
    """Resolves a canonical host to its tenant, and (tenant, host, path) to its route.

    Routes are indexed per tenant: a route can only ever serve a host of its own
    tenant, whatever wildcards two tenants' route hosts share.
    """

    def __init__(self, tenants: Iterable[TenantConfig]) -> None:
        tenants = tuple(tenants)
        self.tenants = tenants
        self._tenants = HostIndex((domain, t) for t in tenants for domain in t.domains)
        self._routes: dict[str, HostIndex[RouteTable]] = {}
        for tenant in tenants:
            by_host: dict[str, list[RouteConfig]] = {}
            for route in tenant.routes:
                by_host.setdefault(route.host.lower(), []).append(route)
            self._routes[tenant.id] = HostIndex(
                (host, RouteTable(tuple(sorted(rs, key=_prefix_length, reverse=True))))
                for host, rs in by_host.items()
            )

    def tenant_for_host(self, host: str) -> TenantConfig | None:
        return self._tenants.get(host)

    def route_for(self, tenant: TenantConfig, host: str, path: str) -> RouteConfig | None:
        index = self._routes.get(tenant.id)
        table = index.get(host) if index is not None else None
        return table.match(path) if table is not None else None


def _prefix_length(route: RouteConfig) -> int:
    return len(route.path.rstrip("/"))
