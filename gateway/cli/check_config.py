"""`authgate check-config`: load the config (and its tenants' policy files) and say `ok`,
or print every problem on stderr and exit 2 — the same checks `serve` makes at start."""

from __future__ import annotations

import argparse
import sys

from gateway.cli import EXIT_BAD_INPUT, EXIT_OK, config_path
from gateway.config import load_config
from gateway.config.model import Config
from gateway.errors import ConfigError
from gateway.policy_sets import compile_tenant_policies
from policies import PolicyError


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    parser = subparsers.add_parser(
        "check-config",
        parents=[common],
        help="check the config file and its policy files",
        description="Check the config file (with AUTHGATE_* overrides) and every policy file"
        " it names; print ok, or every problem as FILE:LINE: key: what is wrong.",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path = config_path(args)
    try:
        config = load_config(path)
        policy_files = _check_policies(config)
    except (ConfigError, PolicyError) as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"ok: {path}: {summary(config, policy_files)}")
    return EXIT_OK


def _check_policies(config: Config) -> int:
    """Compile every tenant's policy files as `serve` would; raise PolicyError listing all
    their problems. Returns how many policy files there are."""
    compile_tenant_policies(config.tenants, geoip_configured=config.geoip.database is not None)
    return len({p for t in config.tenants for p in t.policies})


def summary(config: Config, policy_files: int) -> str:
    """`2 tenants, 5 routes, 3 policy files`."""

    def count(n: int, word: str) -> str:
        return f"{n} {word}" if n == 1 else f"{n} {word}s"

    routes = sum(len(t.routes) for t in config.tenants)
    return ", ".join(
        (
            count(len(config.tenants), "tenant"),
            count(routes, "route"),
            count(policy_files, "policy file"),
        )
    )
