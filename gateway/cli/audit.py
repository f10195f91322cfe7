"""`authgate audit search [--user U] [--event E] [--since 1h] [--json]`: read the trail."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict

from gateway.audit import Event
from gateway.cli import EXIT_OK
from gateway.cli.user import UsageError, run_with_stores
from gateway.config.model import Config
from gateway.stores import Stores
from policies.durations import duration_or_none


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    parser = subparsers.add_parser("audit", parents=[common], help="search the audit trail")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    search = actions.add_parser("search", parents=[common], help="events, newest first")
    search.add_argument("--user")
    search.add_argument("--event", choices=[e.value for e in Event], metavar="EVENT")
    search.add_argument("--since", help="only this recent, like 90s, 15m, 1h, 7d")
    search.add_argument("--tenant")
    search.add_argument("--limit", type=int, default=100)
    search.add_argument("--json", action="store_true", help="one JSON object a line")
    search.set_defaults(func=lambda args: run_with_stores(args, lambda c, s: _search(args, c, s)))


async def _search(args: argparse.Namespace, config: Config, stores: Stores) -> int:
    since = None
    if args.since:
        age = duration_or_none(args.since)
        if age is None:
            raise UsageError(f"--since: invalid duration {args.since!r} (like 90s, 15m, 12h)")
        since = time.time() - age
    rows = await stores.audit.search(
        tenant=args.tenant, user=args.user, event=args.event, since=since, limit=args.limit
    )
    for row in rows:
        if args.json:
            print(json.dumps({**asdict(row), "details": json.loads(row.details)}))
            continue
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row.time))
        fields = [
            f"{name}={value}"
            for name, value in (
                ("tenant", row.tenant),
                ("user", row.user),
                ("ip", row.ip),
                ("country", row.country),
                ("session", row.session_fp),
                ("rule", row.rule),
                ("outcome", row.outcome),
            )
            if value
        ]
        details = "" if row.details == "{}" else f" {row.details}"
        print(f"{when} {row.event} {' '.join(fields)}{details}")
    return EXIT_OK
