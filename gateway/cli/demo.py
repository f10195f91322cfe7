"""`authgate demo`: see the gateway work in one command, with nothing to configure."""

from __future__ import annotations

import argparse
import asyncio
import logging

from gateway.cli import EXIT_BAD_INPUT
from gateway.config.model import ListenAddress


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    parser = subparsers.add_parser(
        "demo",
        parents=[common],
        help="run the gateway on embedded defaults in front of a demo upstream",
    )
    parser.add_argument(
        "--listen", default="127.0.0.1:8080", help="HOST:PORT (default 127.0.0.1:8080)"
    )
    parser.set_defaults(func=run)


def parse_listen(text: str) -> ListenAddress | None:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        return None
    return ListenAddress(host.strip("[]") or "127.0.0.1", int(port))


def run(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo
    from gateway.extensions import default_extensions
    from gateway.supervisor import install_event_loop_policy

    listen = parse_listen(args.listen)
    if listen is None:
        print(f"authgate demo: --listen expects HOST:PORT, got {args.listen!r}")
        return EXIT_BAD_INPUT
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    install_event_loop_policy()
    try:
        asyncio.run(run_demo(listen, default_extensions()))
    except KeyboardInterrupt:
        pass
    return 0
