"""`authgate sessions list|revoke`: see and end sessions; running gateways hear of it at once."""

from __future__ import annotations

import argparse
import time

from gateway.audit import Event, record_now
from gateway.cli import EXIT_OK
from gateway.cli.user import (
    UsageError,
    add_tenant_option,
    find_user,
    pick_tenant,
    run_with_stores,
)
from gateway.config.model import Config
from gateway.sessions import fingerprint
from gateway.stores import (
    REVOCATIONS,
    SessionRecord,
    Stores,
    session_revoked,
    user_sessions_revoked,
)

MIN_PREFIX = 6  # characters of a session hash needed to name it


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    parser = subparsers.add_parser("sessions", parents=[common], help="list or revoke sessions")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    listing = actions.add_parser("list", parents=[common], help="list live sessions")
    listing.add_argument("--user", help="only this user's sessions")
    add_tenant_option(listing)
    listing.set_defaults(func=lambda args: run_with_stores(args, lambda c, s: _list(args, c, s)))

    revoke = actions.add_parser("revoke", parents=[common], help="end sessions now")
    target = revoke.add_mutually_exclusive_group(required=True)
    target.add_argument("--user", help="every session of this user (log out everywhere)")
    target.add_argument("id_prefix", nargs="?", help="the start of a session id as listed")
    add_tenant_option(revoke)
    revoke.set_defaults(func=lambda args: run_with_stores(args, lambda c, s: _revoke(args, c, s)))


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


async def _list(args: argparse.Namespace, config: Config, stores: Stores) -> int:
    tenant = pick_tenant(config, args.tenant)
    names = {u.id: u.username for u in await stores.users.list(tenant)}
    if args.user:
        user = await find_user(stores, tenant, args.user)
        sessions = await stores.sessions.list_user(tenant, user.id)
    else:
        sessions = await stores.sessions.list(tenant)
    for s in sessions:
        print(
            f"{s.id_hash[:12]}\t{names.get(s.user_id, s.user_id)}\tamr={'+'.join(s.amr)}"
            f"\tcreated={_when(s.created)}\tseen={_when(s.last_seen)}"
            f"\texpires={_when(s.expires)}\t{s.ip or '-'}\t{s.country or '-'}"
        )
    if not sessions:
        print("no sessions")
    return EXIT_OK


async def _revoke(args: argparse.Namespace, config: Config, stores: Stores) -> int:
    tenant = pick_tenant(config, args.tenant)
    if args.user:
        user = await find_user(stores, tenant, args.user)
        count = await stores.sessions.revoke_user(tenant, user.id)
        await stores.events.publish(REVOCATIONS, user_sessions_revoked(tenant, user.id))
        await record_now(
            stores.audit,
            Event.SESSION_REVOKED,
            tenant=tenant,
            user=user.username,
            outcome="everywhere",
            details={"by": "operator", "sessions": count},
        )
        print(f"revoked {count} session(s) of {user.username}")
        return EXIT_OK
    session = _one(await stores.sessions.list(tenant), args.id_prefix)
    await stores.sessions.revoke(session.id_hash)
    await stores.events.publish(REVOCATIONS, session_revoked(session.id_hash))
    owner = await stores.users.get(session.user_id)
    await record_now(
        stores.audit,
        Event.SESSION_REVOKED,
        tenant=tenant,
        user=owner.username if owner is not None else session.user_id,
        session_fp=fingerprint(session.id_hash),
        details={"by": "operator"},
    )
    print(f"revoked session {session.id_hash[:12]}")
    return EXIT_OK


def _one(sessions: list[SessionRecord], prefix: str) -> SessionRecord:
    prefix = prefix.strip().lower()
    if len(prefix) < MIN_PREFIX:
        raise UsageError(f"give at least {MIN_PREFIX} characters of the session id")
    found = [s for s in sessions if s.id_hash.startswith(prefix)]
    if not found:
        raise UsageError(f"no live session starts with {prefix!r}")
    if len(found) > 1:
        raise UsageError(f"{len(found)} sessions start with {prefix!r}; give more characters")
    return found[0]
