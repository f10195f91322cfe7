"""Tenants kept in the database, beside those of the config, and the live index of both.

Operators with many customers add tenants with `authgate tenant …` instead of
editing the config. A database tenant is stored as one JSON document shaped
exactly like a `tenants[]` entry of the config (its domains in their own table,
whose primary key makes a host belong to one database tenant only), and it is
parsed by the config's own tenant parser: one set of rules, one set of messages.

Workers serve what `TenantDirectory` holds: an immutable `TenantIndex` of the
config's tenants plus the database's, rebuilt whole and swapped in one assignment
by `TenantRefresher` (every few seconds, and at once on a "tenants" event).
A database tenant that conflicts with the config (same id or host) or cannot be
parsed any more is left out, and the problem, naming both owners, is logged.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config.fields import Ctx, Problems, Reported, Where
from gateway.config.model import RouteConfig, TenantConfig
from gateway.config.tenants import parse_tenants
from gateway.errors import AuthgateError
from gateway.policy_sets import DENY_ALL, policy_files
from gateway.stores.base import AlreadyExists, EventBus, Subscription
from gateway.stores.database import Database
from gateway.tenants import TenantIndex
from gateway.watch import Signature, signature
from policies import (
    Decision,
    PolicyError,
    PolicySet,
    RequestContext,
    decide_fast,
    load_policy_set,
)

log = logging.getLogger("authgate.tenants")

TENANTS_CHANNEL = "tenants"  # EventBus channel: "changed" after every write
REFRESH_SECONDS = 3.0

Clock = Callable[[], float]

# A database tenant without policy files: nothing passes until an operator says what
# may (fail closed, as for a config tenant without policies).


class TenantConflict(AuthgateError):
    """An id or a host is already taken by another tenant; the message names both."""


class UnknownTenant(AuthgateError):
    """No database tenant has this id."""


class InvalidTenant(AuthgateError):
    """The edit would leave the tenant invalid; `problems` say why, as the config would."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = tuple(problems)


@dataclass(frozen=True)
class StoredTenant:
    """A database tenant as stored: its parsed config, or the problems that stop it."""

    id: str
    config: TenantConfig | None
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class Setting:
    """One key of a tenant document to set (`None` removes it, back to the default)."""

    key: str
    value: str | bool | tuple[str, ...] | tuple[tuple[str, str], ...] | None


def parse_document(document: Mapping[str, Any], origin: str) -> TenantConfig:
    """A tenant document through the config's parser; raises InvalidTenant with its problems.

    Paths in documents are absolute (the CLI resolves them against its working folder).
    """
    problems = Problems()
    ctx = Ctx("tenants", Where(origin, None, Path("/")), problems)
    try:
        parsed = parse_tenants([dict(document)], ctx)
    except Reported:
        raise InvalidTenant([str(p) for p in problems.items]) from None
    if problems.items or not parsed:
        raise InvalidTenant([str(p) for p in problems.items] or ["invalid tenant"])
    return parsed[0]


def check_conflicts(
    tenant: TenantConfig, others: Iterable[tuple[TenantConfig, str]], *, what: str
) -> list[str]:
    """Problems when `tenant` (from `what`) shares its id or a host pattern with any of
    `others` (each with where it comes from: "config" or "database")."""
    problems: list[str] = []
    for other, source in others:
        if other.id == tenant.id:
            problems.append(f'tenant id "{tenant.id}" is used both in the {source} and the {what}')
            continue
        for domain in tenant.domains:
            if domain in other.domains:
                problems.append(
                    f'{domain} belongs to both tenant "{other.id}" ({source}) and'
                    f' tenant "{tenant.id}" ({what})'
                )
    return problems


class TenantStore:
    """The database tenants: CRUD on documents, each edit validated before it is written."""

    def __init__(
        self,
        db: Database,
        config_tenants: Sequence[TenantConfig] = (),
        *,
        clock: Clock = time.time,
    ) -> None:
        self._db = db
        self._config_tenants = tuple(config_tenants)
        self._clock = clock

    # --- reading ---------------------------------------------------------------------

    async def list(self) -> list[StoredTenant]:
        """Every database tenant, parsed (or with its problems), ordered by id."""
        rows = await self._db.fetch("SELECT id, document FROM tenants ORDER BY id")
        domains = await self._domains()
        found: builtins.list[StoredTenant] = []
        for tenant_id, text in rows:
            document = {**json.loads(text), "domains": domains.get(tenant_id, [])}
            try:
                found.append(StoredTenant(tenant_id, parse_document(document, _origin(tenant_id))))
            except InvalidTenant as exc:
                found.append(StoredTenant(tenant_id, None, exc.problems))
        return found

    async def get(self, tenant_id: str) -> StoredTenant | None:
        return next((t for t in await self.list() if t.id == tenant_id), None)

    async def revision(self) -> tuple[int, float]:
        """Changes whenever a tenant is added, edited or removed (cheap to poll)."""
        row = await self._db.fetchone("SELECT COUNT(*), MAX(updated) FROM tenants")
        if row is None:
            return (0, 0.0)
        return (int(row[0]), float(row[1] or 0.0))

    async def _domains(self, tenant_id: str | None = None) -> dict[str, builtins.list[str]]:
        if tenant_id is None:
            rows = await self._db.fetch(
                "SELECT tenant, domain FROM tenant_domains ORDER BY tenant, position"
            )
        else:
            rows = await self._db.fetch(
                "SELECT tenant, domain FROM tenant_domains WHERE tenant = ? ORDER BY position",
                tenant_id,
            )
        by_tenant: dict[str, builtins.list[str]] = {}
        for owner, domain in rows:
            by_tenant.setdefault(owner, []).append(domain)
        return by_tenant

    async def _document(self, tenant_id: str) -> dict[str, Any]:
        row = await self._db.fetchone("SELECT document FROM tenants WHERE id = ?", tenant_id)
        if row is None:
            raise UnknownTenant(f"no database tenant {tenant_id!r}")
        document: dict[str, Any] = json.loads(row[0])
        document["domains"] = (await self._domains(tenant_id)).get(tenant_id, [])
        return document

    # --- writing ---------------------------------------------------------------------

    async def add(self, tenant_id: str, name: str, domains: Sequence[str]) -> TenantConfig:
        """A new tenant with these domains; raises TenantConflict, InvalidTenant."""
        document: dict[str, Any] = {"id": tenant_id, "name": name, "domains": list(domains)}
        tenant = await self._validated(document)
        now = self._clock()
        try:
            async with self._db.transaction() as tx:
                await tx.execute(
                    "INSERT INTO tenants (id, document, created, updated) VALUES (?, ?, ?, ?)",
                    tenant_id,
                    _stored(document),
                    now,
                    await self._next_updated(tx),
                )
                await _insert_domains(tx, tenant_id, tenant.domains, 0)
        except AlreadyExists:
            raise await self._conflict(tenant) from None
        return tenant

    async def remove(self, tenant_id: str) -> bool:
        async with self._db.transaction() as tx:
            await tx.execute("DELETE FROM tenant_domains WHERE tenant = ?", tenant_id)
            removed = await tx.execute("DELETE FROM tenants WHERE id = ?", tenant_id)
        return removed > 0

    async def add_domain(self, tenant_id: str, host: str) -> TenantConfig:
        document = await self._document(tenant_id)
        if host in document["domains"]:
            return await self._validated(document)
        document["domains"] = [*document["domains"], host]
        tenant = await self._validated(document)
        try:
            async with self._db.transaction() as tx:
                await _insert_domains(tx, tenant_id, (host,), len(document["domains"]) - 1)
                await self._touch(tx, tenant_id, document)
        except AlreadyExists:
            raise await self._conflict(tenant) from None
        return tenant

    async def remove_domain(self, tenant_id: str, host: str) -> TenantConfig:
        document = await self._document(tenant_id)
        document["domains"] = [d for d in document["domains"] if d != host]
        tenant = await self._validated(document)
        async with self._db.transaction() as tx:
            await tx.execute(
                "DELETE FROM tenant_domains WHERE tenant = ? AND domain = ?", tenant_id, host
            )
            await self._touch(tx, tenant_id, document)
        return tenant

    async def configure(
        self, tenant_id: str, settings: Sequence[Setting], *, section: str | None = None
    ) -> TenantConfig:
        """Set keys of the tenant (or of one of its sections, e.g. "branding")."""
        document = await self._document(tenant_id)
        target = document
        if section is not None:
            target = dict(document.get(section) or {})
            document[section] = target
        for setting in settings:
            if setting.value is None:
                target.pop(setting.key, None)
            else:
                target[setting.key] = _plain(setting.value)
        tenant = await self._validated(document)
        async with self._db.transaction() as tx:
            await self._touch(tx, tenant_id, document)
        return tenant

    async def add_route(self, tenant_id: str, route: RouteConfig) -> TenantConfig:
        document = await self._document(tenant_id)
        entry: dict[str, Any] = {"host": route.host, "path": route.path, "upstream": route.upstream}
        if not route.websockets:
            entry["websockets"] = False
        if route.preserve_host:
            entry["preserve_host"] = True
        if route.identity_headers != "default":
            entry["identity_headers"] = route.identity_headers
        document["routes"] = [*document.get("routes", []), entry]
        tenant = await self._validated(document)
        async with self._db.transaction() as tx:
            await self._touch(tx, tenant_id, document)
        return tenant

    async def remove_route(self, tenant_id: str, host: str, path: str = "/") -> TenantConfig:
        document = await self._document(tenant_id)
        routes = document.get("routes", [])
        kept = [r for r in routes if not (r["host"] == host and r.get("path", "/") == path)]
        if len(kept) == len(routes):
            raise InvalidTenant([f"tenant {tenant_id} has no route for {host}{path}"])
        document["routes"] = kept
        tenant = await self._validated(document)
        async with self._db.transaction() as tx:
            await self._touch(tx, tenant_id, document)
        return tenant

    async def _touch(self, tx: Database, tenant_id: str, document: dict[str, Any]) -> None:
        await tx.execute(
            "UPDATE tenants SET document = ?, updated = ? WHERE id = ?",
            _stored(document),
            await self._next_updated(tx),
            tenant_id,
        )

    async def _next_updated(self, tx: Database) -> float:
        """Later than every edit stored so far, whatever this host's clock says: pollers
        compare (COUNT, MAX(updated)), so an edit made from a host whose clock is behind
        another's (or after a step back) must still move the maximum."""
        row = await tx.fetchone("SELECT MAX(updated) FROM tenants")
        latest = float(row[0]) if row is not None and row[0] is not None else 0.0
        return max(self._clock(), latest + 0.001)

    async def _validated(self, document: dict[str, Any]) -> TenantConfig:
        tenant = parse_document(document, _origin(str(document.get("id"))))
        others: list[tuple[TenantConfig, str]] = [(t, "config") for t in self._config_tenants]
        problems = check_conflicts(tenant, others, what="database")
        if problems:
            raise TenantConflict("; ".join(problems))
        return tenant

    async def _conflict(self, tenant: TenantConfig) -> TenantConflict:
        """The database said a key is taken: find out whose it is, to name them."""
        for domain in tenant.domains:
            owner = await self._db.fetchone(
                "SELECT tenant FROM tenant_domains WHERE domain = ?", domain
            )
            if owner is not None and owner[0] != tenant.id:
                return TenantConflict(
                    f'{domain} belongs to both tenant "{owner[0]}" (database) and'
                    f' tenant "{tenant.id}" (database)'
                )
        row = await self._db.fetchone("SELECT id FROM tenants WHERE id = ?", tenant.id)
        if row is not None:
            return TenantConflict(f'tenant id "{tenant.id}" is already in the database')
        return TenantConflict(f'tenant "{tenant.id}": a domain or id is already taken')


async def _insert_domains(tx: Database, tenant_id: str, domains: Iterable[str], start: int) -> None:
    for position, domain in enumerate(domains, start):
        await tx.execute(
            "INSERT INTO tenant_domains (domain, tenant, position) VALUES (?, ?, ?)",
            domain,
            tenant_id,
            position,
        )


def _origin(tenant_id: str) -> str:
    return f"database tenant {tenant_id}"


def _stored(document: Mapping[str, Any]) -> str:
    return json.dumps({k: v for k, v in document.items() if k != "domains"}, sort_keys=True)


def _plain(value: object) -> Any:
    """Tuples become JSON lists; pairs become mappings (footer links)."""
    if isinstance(value, tuple):
        if value and all(isinstance(item, tuple) and len(item) == 2 for item in value):
            return [{"label": label, "url": url} for label, url in value]
        return list(value)
    return value


# --- the live index of a worker ------------------------------------------------------


def merge_tenants(
    config_tenants: Sequence[TenantConfig], stored: Iterable[StoredTenant]
) -> tuple[tuple[TenantConfig, ...], list[str]]:
    """Config tenants plus the database tenants that conflict with none before them."""
    merged: list[tuple[TenantConfig, str]] = [(t, "config") for t in config_tenants]
    problems: list[str] = []
    for entry in stored:
        if entry.config is None:
            problems.extend(entry.problems)
            continue
        clash = check_conflicts(entry.config, merged, what="database")
        if clash:
            problems.extend(clash)
            continue
        merged.append((entry.config, "database"))
    return tuple(t for t, _ in merged), problems


class TenantDirectory:
    """A worker's current tenants: one immutable TenantIndex, replaced whole.

    Policies of config tenants come from the PolicyRegistry (reloaded on file
    changes); those of database tenants are compiled here when the tenant changes.
    """

    def __init__(self, config_tenants: Sequence[TenantConfig], registry: Any) -> None:
        self._config_tenants = tuple(config_tenants)
        self._config_ids = frozenset(t.id for t in config_tenants)
        self._registry = registry  # PolicyRegistry (decide/sets); Any avoids an import cycle
        self.index = TenantIndex(self._config_tenants)
        self._by_id = {t.id: t for t in self._config_tenants}
        self._db_policies: Mapping[str, PolicySet] = {}
        # Compiled per (files, their stat signatures): an edited file is compiled anew
        # at the next refresh, like the config tenants' files are reloaded.
        self._compiled: dict[tuple[tuple[Path, Signature], ...], PolicySet] = {}
        self._policy_files: tuple[Path, ...] = ()
        self.on_replace: list[Callable[[], None]] = []  # told after every `replace`

    @property
    def tenants(self) -> tuple[TenantConfig, ...]:
        return self.index.tenants

    def tenant(self, tenant_id: str) -> TenantConfig | None:
        return self._by_id.get(tenant_id)

    def tenant_for_host(self, host: str) -> TenantConfig | None:
        return self.index.tenant_for_host(host)

    def route_for(self, tenant: TenantConfig, host: str, path: str) -> RouteConfig | None:
        return self.index.route_for(tenant, host, path)

    def decide(self, tenant_id: str, context: RequestContext) -> Decision:
        if tenant_id in self._config_ids:
            decision: Decision = self._registry.decide(tenant_id, context)
            return decision
        return decide_fast(self._db_policies[tenant_id], context)

    def replace(self, stored: Iterable[StoredTenant]) -> list[str]:
        """Swap in the config tenants plus `stored`; returns the problems (tenants left out)."""
        tenants, problems = merge_tenants(self._config_tenants, stored)
        self._policy_files = policy_files(t for t in tenants if t.id not in self._config_ids)
        policies: dict[str, PolicySet] = {}
        kept: list[TenantConfig] = []
        for tenant in tenants:
            if tenant.id in self._config_ids:
                kept.append(tenant)
                continue
            try:
                policies[tenant.id] = self._policy_set(tenant.policies)
            except PolicyError as exc:
                problems.extend(f"tenant {tenant.id}: {p}" for p in exc.problems)
                continue
            kept.append(tenant)
        index = TenantIndex(kept)
        # Policies first: a request that finds a new tenant in the index finds its policies.
        self._db_policies = policies
        self._by_id = {t.id: t for t in kept}
        self.index = index
        for told in self.on_replace:
            told()
        return problems

    def policy_files_signature(self) -> tuple[tuple[Path, Signature], ...]:
        """The database tenants' policy files as they are on disk now: when this moves,
        the tenants must be swapped in again (their policies compiled anew)."""
        return tuple((path, signature(path)) for path in self._policy_files)

    def _policy_set(self, files: tuple[Path, ...]) -> PolicySet:
        key = tuple((path, signature(path)) for path in files)
        cached = self._compiled.get(key)
        if cached is None:
            cached = load_policy_set(files) if files else DENY_ALL
            if len(self._compiled) > 1000:  # old signatures of edited files
                self._compiled.clear()
            self._compiled[key] = cached
        return cached


class TenantRefresher:
    """Keeps a TenantDirectory in step with the database: polls a cheap revision every
    `interval` seconds and reloads at once when a "tenants" event arrives."""

    def __init__(
        self,
        directory: TenantDirectory,
        store: TenantStore,
        events: EventBus | None = None,
        *,
        interval: float = REFRESH_SECONDS,
    ) -> None:
        self.directory = directory
        self.store = store
        self.events = events
        self.interval = interval
        self._revision: tuple[object, ...] | None = None
        self._task: asyncio.Task[None] | None = None
        self._subscription: Subscription | None = None
        self._wake = asyncio.Event()
        self._forced = False

    async def refresh(self, *, force: bool = False) -> bool:
        """Reload when the tenants table or a database tenant's policy file moved (or
        `force`); True when the index was replaced."""
        revision = (await self.store.revision(), self.directory.policy_files_signature())
        if not force and revision == self._revision:
            return False
        stored = await self.store.list()
        for problem in self.directory.replace(stored):
            log.error("database tenant left out: %s", problem)
        self._revision = revision
        return True

    async def start(self) -> None:
        await self.refresh(force=True)
        if self.events is not None:
            self._subscription = await self.events.subscribe(TENANTS_CHANNEL, self._on_event)
        self._task = asyncio.ensure_future(self._run())

    async def _on_event(self, message: str) -> None:
        # Told that something changed: reload whatever the revision says.
        self._forced = True
        self._wake.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            forced, self._forced = self._forced, False
            try:
                await self.refresh(force=forced)
            except Exception:
                log.exception("tenant refresh failed; serving the tenants loaded before")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._subscription is not None:
            await self._subscription.close()
            self._subscription = None
