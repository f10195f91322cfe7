"""`authgate migrate`: bring the storage database's schema up to date."""

from __future__ import annotations

import argparse
import asyncio
import sys

from gateway.cli import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_OK, config_path
from gateway.config import load_config
from gateway.errors import ConfigError, StoreUnavailable
from gateway.stores import migrate_storage


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    parser = subparsers.add_parser(
        "migrate",
        parents=[common],
        help="apply pending schema migrations to the storage database",
        description="Apply pending schema migrations to `storage` (SQLite or PostgreSQL)."
        " Safe to run on several instances at once.",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(config_path(args))
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        applied = asyncio.run(migrate_storage(config))
    except StoreUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if not applied:
        print("up to date")
    for name in applied:
        print(f"applied {name}")
    return EXIT_OK
