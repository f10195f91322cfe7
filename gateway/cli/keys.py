"""`authgate keys rotate|list`: the keys that sign the identity JWT.

Rotation adds a new key and retires the old ones; running gateways pick it up at
their next key refresh (about 30 s) and keep publishing the old keys in the JWKS
for the overlap, so tokens already handed to upstreams stay verifiable.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from gateway.cli import EXIT_FAILURE, EXIT_OK
from gateway.cli.user import run_with_stores
from gateway.config.model import Config
from gateway.secretbox import load_secret_box
from gateway.signing import DEFAULT_OVERLAP, SigningError, rotate_keys
from gateway.stores import SigningKey, Stores


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    parser = subparsers.add_parser("keys", parents=[common], help="manage JWT signing keys")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    rotate = actions.add_parser(
        "rotate", parents=[common], help="start signing with a new key; retire the old ones"
    )
    rotate.set_defaults(func=lambda args: run_with_stores(args, lambda c, s: _rotate(c, s)))

    listing = actions.add_parser("list", parents=[common], help="list signing keys")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(func=lambda args: run_with_stores(args, lambda c, s: _list(args, s)))


def _when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _state(key: SigningKey, signing_kid: str | None, now: float) -> str:
    if key.retired is None:
        return "signing" if key.kid == signing_kid else "active"
    until = key.retired + DEFAULT_OVERLAP
    return f"published until {_when(until)}" if until > now else "retired"


async def _rotate(config: Config, stores: Stores) -> int:
    box = load_secret_box(config)
    now = time.time()
    before = [k.kid for k in await stores.keys.list(retired_after=now) if k.retired is None]
    try:
        new = await rotate_keys(stores.keys, box, now=now)
    except SigningError as exc:
        print(f"error: {exc}; nothing was changed", file=sys.stderr)
        return EXIT_FAILURE
    print(f"new signing key {new.kid}")
    for kid in before:
        print(f"retired {kid} (published until {_when(now + DEFAULT_OVERLAP)})")
    print("running gateways switch at their next key refresh (about 30 s)")
    return EXIT_OK


async def _list(args: argparse.Namespace, stores: Stores) -> int:
    now = time.time()
    keys = await stores.keys.list(retired_after=0.0)  # every key, even long retired
    active = [k for k in keys if k.retired is None]
    signing_kid = max(active, key=lambda k: (k.created, k.kid)).kid if active else None
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
