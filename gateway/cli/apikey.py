"""`authgate apikey create|list|revoke`: keys for machine clients, shown once, stored hashed."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

from gateway.audit import Event, record_now
from gateway.cli import EXIT_OK
from gateway.cli.user import (
    UsageError,
    add_tenant_option,
    find_user,
    pick_tenant,
    run_with_stores,
    shared_now,
)
from gateway.config.durations import parse_duration
from gateway.config.model import Config
from gateway.errors import StoreUnavailable
from gateway.stores import REVOCATIONS, ApiKey, Stores, api_key_revoked, new_id
from gateway.stores.ids import api_key_display_prefix, hash_api_key, new_api_key


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    parser = subparsers.add_parser("apikey", parents=[common], help="manage API keys")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    create = actions.add_parser("create", parents=[common], help="create a key (shown once)")
    create.add_argument("--user", required=True)
    create.add_argument("--name", required=True, help="what the key is for")
    create.add_argument("--expires", help="lifetime such as 90d (default: never)")
    add_tenant_option(create)
    create.set_defaults(func=lambda args: run_with_stores(args, lambda c, s: _create(args, c, s)))

    listing = actions.add_parser("list", parents=[common], help="list keys (never the keys)")
    listing.add_argument("--user", help="only this user's keys")
    add_tenant_option(listing)
    listing.set_defaults(func=lambda args: run_with_stores(args, lambda c, s: _list(args, c, s)))

    revoke = actions.add_parser("revoke", parents=[common], help="revoke a key")
    revoke.add_argument("key_id", help="the key's id (or a unique start of it)")
    add_tenant_option(revoke)
    revoke.set_defaults(func=lambda args: run_with_stores(args, lambda c, s: _revoke(args, c, s)))


async def _create(args: argparse.Namespace, config: Config, stores: Stores) -> int:
    tenant = pick_tenant(config, args.tenant)
    user = await find_user(stores, tenant, args.user)
    now = await shared_now(stores)
    expires = None
    if args.expires:
        try:
            expires = now + parse_duration(args.expires)
        except ValueError as exc:
            raise UsageError(f"--expires: {exc}") from None
    raw = new_api_key()
    key = ApiKey(
        id=new_id(),
        tenant=tenant,
        user_id=user.id,
        name=args.name,
        prefix=api_key_display_prefix(raw),
        key_hash=hash_api_key(raw),
        created=now,
        expires=expires,
    )
    await stores.apikeys.create(key)
    await record_now(
        stores.audit,
        Event.APIKEY_CREATED,
        tenant=tenant,
        user=user.username,
        details={"key_id": key.id, "name": key.name},
    )
    print(f"created API key {key.id} for {user.username}; it is shown only now:", file=sys.stderr)
    print(raw)
    return EXIT_OK


def _when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


async def _list(args: argparse.Namespace, config: Config, stores: Stores) -> int:
    tenant = pick_tenant(config, args.tenant)
    names = {u.id: u.username for u in await stores.users.list(tenant)}
    user_id = (await find_user(stores, tenant, args.user)).id if args.user else None
    keys = await stores.apikeys.list(tenant, user_id)
    now = await shared_now(stores)
    for k in keys:
        if k.revoked:
            state = "revoked"
        elif k.expires is not None and k.expires <= now:
            state = "expired"
        else:
            state = "active"
        print(
            f"{k.id}\t{k.prefix}…\t{names.get(k.user_id, k.user_id)}\t{k.name}"
            f"\tcreated={_when(k.created)}\texpires={_when(k.expires)}"
            f"\tlast_used={_when(k.last_used)}\t{state}"
        )
    if not keys:
        print("no API keys")
    return EXIT_OK


async def _revoke(args: argparse.Namespace, config: Config, stores: Stores) -> int:
    tenant = pick_tenant(config, args.tenant)
    prefix = args.key_id.strip().lower()
    found = [k for k in await stores.apikeys.list(tenant) if k.id.startswith(prefix)]
    if len(found) != 1 or not prefix:
        raise UsageError(f"{len(found)} keys match {args.key_id!r}; give the exact id")
    await revoke_key(stores, found[0].id)
    await record_now(
        stores.audit,
        Event.APIKEY_REVOKED,
        tenant=tenant,
        details={"key_id": found[0].id, "name": found[0].name},
    )
    print(f"revoked API key {found[0].id} ({found[0].name})")
    return EXIT_OK


async def revoke_key(stores: Stores, key_id: str) -> bool:
    """Revoke the key in the store and tell every gateway process: each forgets it now,
    not when its 5 s cache entry ends. False when it was revoked already (or is gone)."""
    try:
        revoked = await stores.apikeys.revoke(key_id)
    except StoreUnavailable:
        # It may be done but not confirmed: told all the same, and the store's own
        # error is what the caller hears (a bus on the same lost server fails too).
        with contextlib.suppress(StoreUnavailable):
            await stores.events.publish(REVOCATIONS, api_key_revoked(key_id))
        raise
    await stores.events.publish(REVOCATIONS, api_key_revoked(key_id))
    return revoked
