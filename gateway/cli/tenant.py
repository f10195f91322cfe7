"""`authgate tenant …`: tenants kept in the database, served without a restart.

    authgate tenant add ID --name NAME --domain HOST [--domain HOST …]
    authgate tenant list [--json]
    authgate tenant remove ID
    authgate tenant domain add|remove ID HOST
    authgate tenant branding ID [--primary-color C] [--logo FILE|URL] …
    authgate tenant set ID [--login-methods password,passkey] [--signup|--no-signup] …
    authgate tenant route add ID --host HOST --upstream URL [--path /prefix]
    authgate tenant route remove ID --host HOST [--path /prefix]

Every edit is checked by the config's own tenant rules (and against the config's
tenants: a host belongs to one tenant) before it is written, then announced on the
"tenants" event channel so running workers pick it up at once. Relative file paths
(logos, CSS, policy files) are resolved against the current folder and stored
absolute. Config tenants are listed too, but only database tenants can be edited.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from gateway.cli import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_OK, config_path
from gateway.cli.apikey import revoke_key
from gateway.cli.user import end_sessions
from gateway.config import load_config
from gateway.config.model import Config, RouteConfig, TenantConfig
from gateway.errors import ConfigError, StoreUnavailable
from gateway.stores import Stores, open_database, open_stores
from gateway.tenant_store import (
    TENANTS_CHANNEL,
    InvalidTenant,
    Setting,
    TenantConflict,
    TenantStore,
    UnknownTenant,
)

Body = Callable[[Config, TenantStore], Awaitable[int]]


def _run(args: argparse.Namespace, body: Body, *, announce: bool = True) -> int:
    try:
        config = load_config(config_path(args))
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_BAD_INPUT

    async def main() -> int:
        db = await open_database(config)
        stores: Stores | None = None
        try:
            code = await body(config, TenantStore(db, config.tenants))
            if code == EXIT_OK and announce:
                stores = await open_stores(config)
                await stores.events.publish(TENANTS_CHANNEL, "changed")
            return code
        finally:
            if stores is not None:
                await stores.close()
            await db.close()

    try:
        return asyncio.run(main())
    except (TenantConflict, UnknownTenant) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except InvalidTenant as exc:
        for message in exc.problems:
            print(f"error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except StoreUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def _absolute(value: str | None) -> str | None:
    """File paths stored absolute; URLs (and unset values) as given."""
    if value is None or "://" in value or value.startswith("data:"):
        return value
    return str(Path(value).resolve())


def _describe(tenant: TenantConfig, source: str) -> str:
    return f"{tenant.id}\t{tenant.name}\t{source}\t{','.join(tenant.domains)}"


# --- commands ---------------------------------------------------------------------------


def _add(args: argparse.Namespace) -> int:
    async def body(config: Config, store: TenantStore) -> int:
        tenant = await store.add(args.id, args.name or args.id, args.domain)
        print(f"tenant {tenant.id} added: {', '.join(tenant.domains)}")
        return EXIT_OK

    return _run(args, body)


def _list(args: argparse.Namespace) -> int:
    async def body(config: Config, store: TenantStore) -> int:
        stored = await store.list()
        if args.json:
            rows = [
                {"id": t.id, "name": t.name, "source": "config", "domains": list(t.domains)}
                for t in config.tenants
            ] + [
                {
                    "id": s.id,
                    "name": s.config.name if s.config else None,
                    "source": "database",
                    "domains": list(s.config.domains) if s.config else [],
                    "problems": list(s.problems),
                }
                for s in stored
            ]
            print(json.dumps(rows, indent=2))
            return EXIT_OK
        for tenant in config.tenants:
            print(_describe(tenant, "config"))
        for entry in stored:
            if entry.config is not None:
                print(_describe(entry.config, "database"))
            else:
                print(f"{entry.id}\t-\tdatabase (invalid: {'; '.join(entry.problems)})")
        return EXIT_OK

    return _run(args, body, announce=False)


def _remove(args: argparse.Namespace) -> int:
    async def body(config: Config, store: TenantStore) -> int:
        if not await store.remove(args.id):
            print(f"error: no database tenant {args.id!r}", file=sys.stderr)
            return EXIT_BAD_INPUT
        sessions, keys = await _end_access(config, args.id)
        print(f"tenant {args.id} removed; ended {sessions} session(s), revoked {keys} API key(s)")
        return EXIT_OK

    return _run(args, body)


async def _end_access(config: Config, tenant_id: str) -> tuple[int, int]:
    """A removed tenant's sessions and API keys end with it, on every instance: were
    its id used again, they would otherwise be valid once more. Its users are kept
    (they have no way in without a session or a key, and may be wanted back)."""
    stores = await open_stores(config)
    try:
        sessions = 0
        for user_id in {record.user_id for record in await stores.sessions.list(tenant_id)}:
            sessions += await end_sessions(stores, tenant_id, user_id)
        keys = 0
        for key in await stores.apikeys.list(tenant_id):
            if not key.revoked and await revoke_key(stores, key.id):
                keys += 1
        return sessions, keys
    finally:
        await stores.close()


def _domain(args: argparse.Namespace) -> int:
    async def body(config: Config, store: TenantStore) -> int:
        if args.action == "add":
            tenant = await store.add_domain(args.id, args.host)
        else:
            tenant = await store.remove_domain(args.id, args.host)
        print(f"tenant {tenant.id}: {', '.join(tenant.domains)}")
        return EXIT_OK

    return _run(args, body)


_BRANDING_OPTIONS = (
    ("primary_color", "--primary-color", "#RRGGBB"),
    ("secondary_color", "--secondary-color", "#RRGGBB"),
    ("logo", "--logo", "file or https URL"),
    ("favicon", "--favicon", "file or https URL"),
    ("font_stack", "--font-stack", "CSS font-family list"),
    ("corner_radius", "--corner-radius", "CSS length, e.g. 8px"),
    ("custom_css", "--custom-css", "CSS file"),
    ("templates", "--templates", "folder overriding templates"),
    ("support_email", "--support-email", "address"),
)
_PATH_KEYS = frozenset({"logo", "favicon", "custom_css", "templates"})


def _branding(args: argparse.Namespace) -> int:
    settings: list[Setting] = []
    for key, _, _ in _BRANDING_OPTIONS:
        value = getattr(args, key)
        if value is not None:
            value = None if value == "" else value  # "" resets to the default
            settings.append(Setting(key, _absolute(value) if key in _PATH_KEYS else value))
    if args.footer_link is not None:
        links: list[tuple[str, str]] = []
        for item in args.footer_link:
            label, sep, url = item.partition("=")
            if not sep:
                print("error: --footer-link expects LABEL=URL", file=sys.stderr)
                return EXIT_BAD_INPUT
            links.append((label, url))
        settings.append(Setting("footer_links", tuple(links) or None))
    if not settings:
        print("error: nothing to change (see --help)", file=sys.stderr)
        return EXIT_BAD_INPUT

    async def body(config: Config, store: TenantStore) -> int:
        tenant = await store.configure(args.id, settings, section="branding")
        print(f"tenant {tenant.id}: branding updated")
        return EXIT_OK

    return _run(args, body)


def _set(args: argparse.Namespace) -> int:
    settings: list[Setting] = []
    if args.name is not None:
        settings.append(Setting("name", args.name))
    for key in ("login_methods", "mfa_methods"):
        value = getattr(args, key)
        if value is not None:
            settings.append(Setting(key, tuple(m.strip() for m in value.split(",") if m.strip())))
    if args.signup is not None:
        settings.append(Setting("signup", args.signup))
    for key in ("cookie_domain", "login_host", "default_url"):
        value = getattr(args, key)
        if value is not None:
            settings.append(Setting(key, value or None))
    if args.policy is not None:
        paths = tuple(p for p in (_absolute(v) for v in args.policy if v) if p is not None)
        settings.append(Setting("policies", paths or None))
    if not settings:
        print("error: nothing to change (see --help)", file=sys.stderr)
        return EXIT_BAD_INPUT

    async def body(config: Config, store: TenantStore) -> int:
        tenant = await store.configure(args.id, settings)
        print(f"tenant {tenant.id} updated")
        return EXIT_OK

    return _run(args, body)


def _route(args: argparse.Namespace) -> int:
    async def body(config: Config, store: TenantStore) -> int:
        if args.action == "add":
            route = RouteConfig(host=args.host, upstream=args.upstream, path=args.path)
            tenant = await store.add_route(args.id, route)
        else:
            tenant = await store.remove_route(args.id, args.host, args.path)
        routes = ", ".join(f"{r.host}{r.path} -> {r.upstream}" for r in tenant.routes)
        print(f"tenant {tenant.id} routes: {routes or 'none'}")
        return EXIT_OK

    if args.action == "add" and not args.upstream:
        print("error: route add needs --upstream URL", file=sys.stderr)
        return EXIT_BAD_INPUT
    return _run(args, body)


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    tenant = subparsers.add_parser(
        "tenant", parents=[common], help="tenants kept in the database (add, list, domains, …)"
    )
    commands = tenant.add_subparsers(dest="tenant_command", metavar="ACTION", required=True)

    add = commands.add_parser("add", parents=[common], help="add a tenant")
    add.add_argument("id")
    add.add_argument("--name", help="display name (default: the id)")
    add.add_argument("--domain", action="append", required=True, help="a host; repeatable")
    add.set_defaults(func=_add)

    listing = commands.add_parser("list", parents=[common], help="config and database tenants")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=_list)

    remove = commands.add_parser("remove", parents=[common], help="remove a database tenant")
    remove.add_argument("id")
    remove.set_defaults(func=_remove)

    domain = commands.add_parser("domain", parents=[common], help="add or remove a domain")
    domain.add_argument("action", choices=("add", "remove"))
    domain.add_argument("id")
    domain.add_argument("host")
    domain.set_defaults(func=_domain)

    branding = commands.add_parser(
        "branding", parents=[common], help='set branding ("" resets a value)'
    )
    branding.add_argument("id")
    for key, flag, meta in _BRANDING_OPTIONS:
        branding.add_argument(flag, dest=key, metavar=meta.split()[0].upper(), help=meta)
    branding.add_argument(
        "--footer-link", action="append", metavar="LABEL=URL", help="repeatable; replaces all"
    )
    branding.set_defaults(func=_branding)

    settings = commands.add_parser("set", parents=[common], help="switches and policies")
    settings.add_argument("id")
    settings.add_argument("--name")
    settings.add_argument("--login-methods", help="comma-separated: password,passkey")
    settings.add_argument("--mfa-methods", help="comma-separated: totp,webauthn,backup_codes")
    settings.add_argument("--signup", action=argparse.BooleanOptionalAction, default=None)
    settings.add_argument("--cookie-domain", help='a parent domain, "" for host-only')
    settings.add_argument("--login-host", help="the SSO login host")
    settings.add_argument("--default-url")
    settings.add_argument(
        "--policy", action="append", metavar="FILE", help="policy file; repeatable; replaces all"
    )
    settings.set_defaults(func=_set)

    route = commands.add_parser("route", parents=[common], help="add or remove a route")
    route.add_argument("action", choices=("add", "remove"))
    route.add_argument("id")
    route.add_argument("--host", required=True)
    route.add_argument("--path", default="/")
    route.add_argument("--upstream")
    route.set_defaults(func=_route)
