"""`authgate bans list|clear [KEY]`: who is banned for failed sign-in or factor attempts."""

from __future__ import annotations

import argparse
import json
import time

from gateway.cli import EXIT_FAILURE, EXIT_OK
from gateway.cli.user import run_with_stores, shared_now
from gateway.config.model import Config
from gateway.regulation import Regulator
from gateway.stores import Stores


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    parser = subparsers.add_parser(
        "bans",
        parents=[common],
        help="list or lift brute-force bans",
        description=(
            "Ban keys look like user:TENANT:USERNAME (passwords, passkeys), "
            "mfa:TENANT:USERNAME (second factors) or ip:TENANT:ADDRESS."
        ),
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", parents=[common], help="bans in force now")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=lambda args: run_with_stores(args, lambda c, s: _list(args, c, s)))
    clear = actions.add_parser(
        "clear", parents=[common], help="lift one ban (KEY as listed), or every ban"
    )
    clear.add_argument("key", nargs="?", metavar="KEY")
    clear.set_defaults(func=lambda args: run_with_stores(args, lambda c, s: _clear(args, c, s)))


def _regulator(config: Config, stores: Stores) -> Regulator:
    return Regulator(stores.limiter, config.regulation)


async def _list(args: argparse.Namespace, config: Config, stores: Stores) -> int:
    bans = await _regulator(config, stores).list_bans()
    now = await shared_now(stores)
    if args.json:
        print(json.dumps([{"key": b.key, "until": b.until} for b in bans], indent=2))
        return EXIT_OK
    if not bans:
        print("no bans")
    for ban in bans:
        until = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ban.until))
        print(f"{ban.key}\tuntil {until} ({max(0, round(ban.until - now))} s left)")
    return EXIT_OK


async def _clear(args: argparse.Namespace, config: Config, stores: Stores) -> int:
    regulator = _regulator(config, stores)
    keys = [args.key] if args.key else [b.key for b in await regulator.list_bans()]
    lifted = 0
    for key in keys:
        lifted += await regulator.clear(key)
    if args.key and not lifted:
        print(f"no ban on {args.key}")
        return EXIT_FAILURE
    print(f"lifted {lifted} ban(s)")
    return EXIT_OK
