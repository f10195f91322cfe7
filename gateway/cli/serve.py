"""`authgate serve`: run the gateway from a config file."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from gateway.cli import EXIT_BAD_INPUT, EXIT_FAILURE, config_path
from gateway.cpu_affinity import available_cpus, describe, worker_cpus
from gateway.errors import ConfigError, StoreUnavailable
from gateway.extensions import default_extensions
from gateway.policy_sets import compile_tenant_policies
from gateway.stores import migrate_storage
from gateway.supervisor import Supervisor, default_worker_count
from gateway.users_file import load_users_files
from policies import PolicyError


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    parser = subparsers.add_parser(
        "serve",
        parents=[common],
        help="run the gateway",
        description="Run the gateway: N worker processes share the port; SIGHUP reloads policies.",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes (default: server.workers; 'auto': one per CPU, within the"
        " cgroup's CPU quota)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gateway.config import load_config
    from gateway.logs import setup_logging

    try:
        config = load_config(config_path(args))
        compile_tenant_policies(
            config.tenants, geoip_configured=config.geoip.database is not None
        )  # refuse to start on a bad policy
        load_users_files(config.tenants)  # or a bad users file
    except (ConfigError, PolicyError) as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_BAD_INPUT
    setup_logging(config.logging)
    workers = args.workers or config.server.workers or default_worker_count()
    if workers < 1:
        print("authgate: --workers must be at least 1", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        cpus = worker_cpus(config.server.cpu_affinity, workers, available_cpus())
    except ValueError as exc:
        print(f"{config_path(args)}: server.cpu_affinity: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if config.storage.startswith("sqlite:"):
        # The embedded database migrates itself; do it once here, before the workers
        # exist, instead of N workers racing for the write lock at start.
        try:
            asyncio.run(migrate_storage(config))
        except StoreUnavailable as exc:
            print(f"authgate: storage: {exc}", file=sys.stderr)
            return EXIT_FAILURE
    logging.getLogger("authgate").debug("starting %d workers", workers)
    if cpus is not None:
        logging.getLogger("authgate").info(
            "workers held to CPUs %s", " ".join(describe(slot) for slot in cpus)
        )
    return Supervisor(config, workers, default_extensions(), cpus).run()
