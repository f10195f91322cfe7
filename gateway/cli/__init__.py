"""The `authgate` command line. Each subcommand lives in its own module with a `register()`."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

# Subcommand modules, in the order `--help` lists them. Each has
# `register(subparsers, common)`; the parser it adds sets `func(args) -> int`.
COMMANDS = (
    "serve",
    "demo",
    "check_config",
    "migrate",
    "policy",
    "user",
    "sessions",
    "apikey",
    "keys",
    "bans",
    "audit",
    "tenant",
)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2


def common_options() -> argparse.ArgumentParser:
    """Options every subcommand accepts, so `-c` works before or after the subcommand."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c",
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        help="config file (default: $AUTHGATE_CONFIG, else ./config.yaml)",
    )
    return common


def config_path(args: argparse.Namespace) -> Path:
    """The config file this invocation uses: -c, then $AUTHGATE_CONFIG, then ./config.yaml."""
    given = getattr(args, "config", None)
    if given is not None:
        return Path(given)
    return Path(os.environ.get("AUTHGATE_CONFIG", "config.yaml"))


def build_parser() -> argparse.ArgumentParser:
    common = common_options()
    parser = argparse.ArgumentParser(
        prog="authgate",
        description="Reverse-proxy authentication gateway.",
        parents=[common],
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"gateway.cli.{name}")
        module.register(subparsers, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return int(func(args))
    except KeyboardInterrupt:
        return 130
