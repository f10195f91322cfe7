"""`authgate keys rotate|list`: the keys that sign the identity JWT.

Rotation adds a new key that every gateway publishes at its next key refresh and signs
with six minutes later (PUBLISH_AHEAD), when every instance and every JWKS cache knows
it; the old keys sign until then and stay published for the overlap after it, so tokens
already handed to upstreams stay verifiable. `--withdraw-old` is for a leak: the old
keys are deleted, and the new one signs at every gateway's next refresh (about 30 s).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from gateway.cli import EXIT_FAILURE, EXIT_OK
from gateway.cli.user import run_with_stores, shared_now
from gateway.config.model import Config
from gateway.secretbox import load_secret_box
from gateway.signing import (
    DEFAULT_OVERLAP,
    PUBLISH_AHEAD,
    REFRESH_INTERVAL,
    SigningError,
    rotate_keys,
    signing_key,
)
from gateway.stores import SigningKey, Stores


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    parser = subparsers.add_parser("keys", parents=[common], help="manage JWT signing keys")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    rotate = actions.add_parser(
        "rotate",
        parents=[common],
        help="publish a new key now, sign with it in six minutes; retire the old ones then",
    )
    rotate.add_argument(
        "--withdraw-old",
        action="store_true",
        help="the old keys may have leaked: delete them and sign with the new key at once"
        " (tokens they signed stop verifying)",
    )
    rotate.set_defaults(
        func=lambda args: run_with_stores(args, lambda c, s: _rotate(c, s, args.withdraw_old))
    )

    listing = actions.add_parser("list", parents=[common], help="list signing keys")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(func=lambda args: run_with_stores(args, lambda c, s: _list(args, s)))


def _when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _state(key: SigningKey, signing_kid: str | None, now: float) -> str:
    if key.kid == signing_kid:
        return "signing"
    if key.retired is None or key.retired > now:
        return f"next (signs from {_when(key.created + PUBLISH_AHEAD)})"
    until = key.retired + DEFAULT_OVERLAP
    return f"published until {_when(until)}" if until > now else "retired"


async def _rotate(config: Config, stores: Stores, withdraw: bool) -> int:
    box = load_secret_box(config)
    now = await shared_now(stores)
    before = [k.kid for k in await stores.keys.list(retired_after=0.0 if withdraw else now)]
    try:
        new = await rotate_keys(stores.keys, box, now=now, withdraw=withdraw)
    except SigningError as exc:
        print(f"error: {exc}; nothing was changed", file=sys.stderr)
        return EXIT_FAILURE
    print(f"new signing key {new.kid}")
    if withdraw:
        for kid in before:
            print(f"withdrew {kid}: tokens it signed no longer verify")
        print(
            "running gateways sign with the new key at their next refresh"
            f" (within {REFRESH_INTERVAL:.0f} s)"
        )
        return EXIT_OK
    if not before:
        print("no other key: gateways sign with it at once")
        return EXIT_OK
    takes_over = new.created + PUBLISH_AHEAD
    print(f"published now; running gateways sign with it from {_when(takes_over)}")
    for key in await stores.keys.list(retired_after=now):
        if key.kid in before and key.retired is not None:
            print(
                f"retired {key.kid} from then"
                f" (published until {_when(key.retired + DEFAULT_OVERLAP)})"
            )
    return EXIT_OK


async def _list(args: argparse.Namespace, stores: Stores) -> int:
    now = await shared_now(stores)
    keys = await stores.keys.list(retired_after=0.0)  # every key, even long retired
    signing = signing_key(keys, now)
    signing_kid = signing.kid if signing else None
    if args.json:
        rows = [
            {
                "kid": k.kid,
                "algorithm": k.algorithm,
                "created": k.created,
                "retired": k.retired,
                "state": _state(k, signing_kid, now).split(" ")[0],
            }
            for k in keys
        ]
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not keys:
        print("no signing keys (the gateway creates one when it starts)")
    for k in keys:
        print(
            f"{k.kid}\t{k.algorithm}\tcreated {_when(k.created)}"
            f"\tretired {_when(k.retired)}\t{_state(k, signing_kid, now)}"
        )
    return EXIT_OK
