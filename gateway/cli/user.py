"""`authgate user add|list|disable|passwd|reset-mfa`: the users of a tenant.

Also home of the small runner the store-backed commands share (`run_with_stores`,
`pick_tenant`): load the config, open the stores, map errors to exit codes.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import getpass
import json
import sys
import time
from collections.abc import Awaitable, Callable

from gateway.audit import Event, record_now
from gateway.cli import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_OK, config_path
from gateway.config import load_config
from gateway.config.model import Config
from gateway.errors import ConfigError, StoreUnavailable
from gateway.identity.passwords import PasswordHasher
from gateway.stores import (
    REVOCATIONS,
    AlreadyExists,
    NotFound,
    Stores,
    User,
    new_id,
    open_stores,
    user_sessions_revoked,
)
from gateway.users_file import with_users_files


class UsageError(Exception):
    """Bad input found after parsing (unknown user, ambiguous tenant…): exit 2."""


Body = Callable[[Config, Stores], Awaitable[int]]


async def shared_now(stores: Stores) -> float:
    """The time on the store's clock, which the gateways stamp and compare shared state
    with (gateway.clock): a key, an expiry or a listing made from a host whose clock is
    off would otherwise be off by as much everywhere."""
    source = stores.time_source
    return await source() if source is not None else time.time()


def run_with_stores(args: argparse.Namespace, body: Body) -> int:
    """Load the config, open the stores, run `body`; errors become messages and exit codes."""
    try:
        config = load_config(config_path(args))
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_BAD_INPUT

    async def main() -> int:
        stores = await open_stores(config)
        try:
            # The users files too: `sessions revoke --user` must reach a file user.
            return await body(config, with_users_files(stores, config.tenants))
        finally:
            await stores.close()

    try:
        return asyncio.run(main())
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except StoreUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except ConfigError as exc:  # a users file that does not load
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_BAD_INPUT
    except NotFound as exc:  # a users-file user is read-only
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


def pick_tenant(config: Config, given: str | None) -> str:
    """`--tenant`, which may be left out when the config has exactly one tenant."""
    ids = [t.id for t in config.tenants]
    if given is not None:
        if given not in ids:
            raise UsageError(f"unknown tenant {given!r} (configured: {', '.join(ids)})")
        return given
    if len(ids) == 1:
        return ids[0]
    raise UsageError(f"--tenant is required (configured: {', '.join(ids) or 'none'})")


async def find_user(stores: Stores, tenant: str, username: str) -> User:
    user = await stores.users.get_by_username(tenant, username)
    if user is None:
        raise UsageError(f"no user {username!r} in tenant {tenant!r}")
    return user


def add_tenant_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tenant", help="tenant id (optional when there is one tenant)")


def read_password(from_stdin: bool) -> str:
    """One line from stdin (`--password-stdin` or piped), else asked twice on the terminal."""
    if from_stdin or not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat password: ") != password:
            raise UsageError("the passwords differ")
    if not password:
        raise UsageError("empty password")
    return password


def _split(text: str | None) -> tuple[str, ...]:
    return tuple(item.strip() for item in (text or "").split(",") if item.strip())


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    parser = subparsers.add_parser("user", parents=[common], help="manage users")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    add = actions.add_parser("add", parents=[common], help="add a user (asks for a password)")
    add.add_argument("username")
    add.add_argument("--email")
    add.add_argument("--name", dest="display_name", help="full name")
    add.add_argument("--groups", help="comma-separated")
    add.add_argument("--roles", help="comma-separated")
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    add.add_argument("--no-password", action="store_true", help="no password (passkey/SSO only)")
    add_tenant_option(add)
    add.set_defaults(func=lambda args: run_with_stores(args, lambda c, s: _add(args, c, s)))

    listing = actions.add_parser("list", parents=[common], help="list users")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    add_tenant_option(listing)
    listing.set_defaults(func=lambda args: run_with_stores(args, lambda c, s: _list(args, c, s)))

    disable = actions.add_parser(
        "disable", parents=[common], help="disable a user and end their sessions"
    )
    disable.add_argument("username")
    add_tenant_option(disable)
    disable.set_defaults(func=lambda args: run_with_stores(args, lambda c, s: _disable(args, c, s)))

    passwd = actions.add_parser("passwd", parents=[common], help="set a user's password")
    passwd.add_argument("username")
    passwd.add_argument("--password-stdin", action="store_true")
    passwd.add_argument(
        "--keep-sessions",
        action="store_true",
        help="do not end the user's sessions (they are ended by default)",
    )
    add_tenant_option(passwd)
    passwd.set_defaults(func=lambda args: run_with_stores(args, lambda c, s: _passwd(args, c, s)))

    reset_mfa = actions.add_parser(
        "reset-mfa",
        parents=[common],
        help="remove a user's second factors and backup codes and end their sessions",
    )
    reset_mfa.add_argument("username")
    add_tenant_option(reset_mfa)
    reset_mfa.set_defaults(
        func=lambda args: run_with_stores(args, lambda c, s: _reset_mfa(args, c, s))
    )

    hashing = actions.add_parser(
        "hash-password",
        help="print an argon2id hash for a users file (needs no config or database)",
    )
    hashing.add_argument("--password-stdin", action="store_true")
    hashing.set_defaults(func=_hash_password)


def _hash_password(args: argparse.Namespace) -> int:
    try:
        password = read_password(args.password_stdin)
    except UsageError as exc:
        print(f"authgate user hash-password: {exc}", file=sys.stderr)
        return 2
    print(asyncio.run(PasswordHasher().hash(password)))
    return 0


async def _add(args: argparse.Namespace, config: Config, stores: Stores) -> int:
    tenant = pick_tenant(config, args.tenant)
    password_hash = None
    if not args.no_password:
        password = read_password(args.password_stdin)
        password_hash = await PasswordHasher(config.passwords).hash(password)
    now = await shared_now(stores)
    user = User(
        id=new_id(),
        tenant=tenant,
        username=args.username.strip(),
        email=args.email,
        display_name=args.display_name,
        groups=_split(args.groups),
        roles=_split(args.roles),
        disabled=False,
        password_hash=password_hash,
        created=now,
        updated=now,
    )
    try:
        await stores.users.create(user)
    except AlreadyExists:
        raise UsageError(f"user {user.username!r} already exists in tenant {tenant!r}") from None
    await record_now(stores.audit, Event.USER_CREATED, tenant=tenant, user=user.username)
    print(f"added user {user.username} to tenant {tenant} (id {user.id})")
    return EXIT_OK


async def _list(args: argparse.Namespace, config: Config, stores: Stores) -> int:
    tenant = pick_tenant(config, args.tenant)
    users = await stores.users.list(tenant)
    if args.json:
        rows = [
            {
                "id": u.id,
                "tenant": u.tenant,
                "username": u.username,
                "email": u.email,
                "name": u.display_name,
                "groups": list(u.groups),
                "roles": list(u.roles),
                "disabled": u.disabled,
                "has_password": u.password_hash is not None,
                "created": u.created,
            }
            for u in users
        ]
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    for u in users:
        state = "disabled" if u.disabled else "active"
        print(
            f"{u.username}\t{u.email or '-'}\t{u.display_name or '-'}"
            f"\tgroups={','.join(u.groups) or '-'}\troles={','.join(u.roles) or '-'}\t{state}"
        )
    return EXIT_OK


async def _disable(args: argparse.Namespace, config: Config, stores: Stores) -> int:
    tenant = pick_tenant(config, args.tenant)
    user = await find_user(stores, tenant, args.username)
    await stores.users.update(dataclasses.replace(user, disabled=True, updated=time.time()))
    ended = await end_sessions(stores, tenant, user.id)
    await record_now(
        stores.audit,
        Event.USER_DISABLED,
        tenant=tenant,
        user=user.username,
        details={"sessions_ended": ended},
    )
    print(f"disabled {user.username}; ended {ended} session(s)")
    return EXIT_OK


async def _reset_mfa(args: argparse.Namespace, config: Config, stores: Stores) -> int:
    """For a user who lost their device: they sign in with the password and enrol anew
    (under `mfa.enrollment: required_at_first_prompt`)."""
    tenant = pick_tenant(config, args.tenant)
    user = await find_user(stores, tenant, args.username)
    removed = await stores.credentials.remove_all_for_user(user.id)
    ended = await end_sessions(stores, tenant, user.id)
    print(
        f"reset second factors of {user.username}: removed {removed.totp_devices} TOTP"
        f" device(s), {removed.webauthn_credentials} security key(s)/passkey(s),"
        f" {removed.backup_codes} backup code(s); ended {ended} session(s)"
    )
    return EXIT_OK


async def _passwd(args: argparse.Namespace, config: Config, stores: Stores) -> int:
    tenant = pick_tenant(config, args.tenant)
    user = await find_user(stores, tenant, args.username)
    password = read_password(args.password_stdin)
    password_hash = await PasswordHasher(config.passwords).hash(password)
    await stores.users.update(
        dataclasses.replace(user, password_hash=password_hash, updated=time.time())
    )
    if args.keep_sessions:
        print(f"password of {user.username} changed; sessions kept")
        return EXIT_OK
    # A reset is what an operator does when a password leaked: whoever used it is out.
    ended = await end_sessions(stores, tenant, user.id)
    print(f"password of {user.username} changed; ended {ended} session(s)")
    return EXIT_OK


async def end_sessions(stores: Stores, tenant: str, user_id: str) -> int:
    """Log the user out everywhere: from the store, and from every process's cache."""
    ended = await stores.sessions.revoke_user(tenant, user_id)
    await stores.events.publish(REVOCATIONS, user_sessions_revoked(tenant, user_id))
    return ended
