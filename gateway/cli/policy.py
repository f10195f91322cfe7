"""`authgate policy check|explain|test`: what operators run when a rule does not do what they meant.

`explain` and `test` canonicalise the URL's path as the gateway does (gateway.canonical),
so they decide exactly what a live request would. `--permissions` grants permissions
directly to the principal (as an API key's scopes would), on top of those its roles give.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from gateway.cli import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_OK, config_path
from gateway.errors import AuthgateError, BadRequest, ConfigError
from policies import PolicyError, PolicySet, Principal, RequestContext, decide, load_policy_set
from policies.durations import duration_or_none
from policies.explain import explain_data, explain_text
from policies.testing import NOW, default_policy_paths, load_case_file, run_case


class _Usage(Exception):
    """Bad input named on the command line (exit 2)."""


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    parser = subparsers.add_parser(
        "policy", parents=[common], help="check, explain and test policies"
    )
    commands = parser.add_subparsers(dest="policy_command", metavar="ACTION")

    def usage(_: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT

    parser.set_defaults(func=usage)

    check = commands.add_parser(
        "check", parents=[common], help="validate policy files (exit 2 on errors)"
    )
    check.add_argument("files", nargs="+", type=Path, metavar="FILE")
    check.set_defaults(func=run_check)

    explain = commands.add_parser(
        "explain", parents=[common], help="decide one request and show why"
    )
    explain.add_argument("url", metavar="URL")
    explain.add_argument(
        "--policy",
        type=Path,
        action="append",
        metavar="FILE",
        help="policy file(s), merged in order (instead of the config's tenant)",
    )
    explain.add_argument("--method", default="GET")
    explain.add_argument("--ip")
    explain.add_argument("--country")
    explain.add_argument("--user", help="the principal; without it the request is anonymous")
    explain.add_argument("--groups", default="", help="comma-separated")
    explain.add_argument("--roles", default="", help="comma-separated")
    explain.add_argument(
        "--permissions",
        default="",
        help="comma-separated permissions granted directly (like API key scopes)",
    )
    explain.add_argument("--amr", default="pwd", help="authentication methods used (default: pwd)")
    explain.add_argument("--auth-age", default="0s", help="time since the last login, e.g. 10m")
    explain.add_argument("--json", action="store_true", help="print a JSON object")
    explain.set_defaults(func=run_explain)

    test = commands.add_parser("test", parents=[common], help="run policy test cases")
    test.add_argument("files", nargs="+", type=Path, metavar="FILE")
    test.set_defaults(func=run_test)


def _split(text: str) -> frozenset[str]:
    return frozenset(part.strip() for part in text.split(",") if part.strip())


def _print_problems(error: AuthgateError | PolicyError | ConfigError) -> None:
    problems = getattr(error, "problems", None)
    for problem in problems or [error]:
        print(problem, file=sys.stderr)


def run_check(args: argparse.Namespace) -> int:
    failed = False
    for path in args.files:
        try:
            policy = load_policy_set([path])
        except PolicyError as exc:
            _print_problems(exc)
            failed = True
            continue
        print(f"{path}: ok ({len(policy.rules)} rules, default {policy.default.value})")
    return EXIT_BAD_INPUT if failed else EXIT_OK


def _explicit_config(args: argparse.Namespace) -> Path | None:
    """-c or $AUTHGATE_CONFIG; unlike serve, no fallback to ./config.yaml."""
    if getattr(args, "config", None) is not None or os.environ.get("AUTHGATE_CONFIG"):
        return config_path(args)
    return None


def _tenant_policy_resolver(config_file: Path) -> Callable[[str], PolicySet]:
    """host → the policy set of the tenant that owns it, loaded once per tenant."""
    from gateway.config import load_config
    from gateway.tenants import TenantIndex

    config = load_config(config_file)
    index = TenantIndex(config.tenants)
    loaded: dict[str, PolicySet] = {}

    def resolve(host: str) -> PolicySet:
        tenant = index.tenant_for_host(host)
        if tenant is None:
            raise _Usage(f"{config_file}: no tenant serves host '{host}'")
        if tenant.id not in loaded:
            if not tenant.policies:
                raise _Usage(f"{config_file}: tenant '{tenant.id}' names no policy files")
            loaded[tenant.id] = load_policy_set(tenant.policies)
        return loaded[tenant.id]

    return resolve


def _canonical(path: str) -> str:
    from gateway.canonical import canonical_path

    return canonical_path(path)


def _host(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _Usage(f"not an absolute http(s) URL: {url}")
    return parts.hostname.rstrip("."), parts.path or "/"


def _context(args: argparse.Namespace, host: str, path: str) -> RequestContext:
    ip = None
    if args.ip:
        try:
            ip = ipaddress.ip_address(args.ip)
        except ValueError:
            raise _Usage(f"--ip: invalid IP address '{args.ip}'") from None
    age = duration_or_none(args.auth_age)
    if age is None:
        raise _Usage(f"--auth-age: invalid duration '{args.auth_age}' (like 90s, 15m, 12h)")
    principal = None
    if args.user:
        principal = Principal(
            user=args.user,
            groups=_split(args.groups),
            roles=_split(args.roles),
            amr=tuple(sorted(_split(args.amr))),
            auth_time=NOW - age,
            permissions=_split(args.permissions),
        )
    country = args.country.upper() if args.country else None
    return RequestContext(host, _canonical(path), args.method.upper(), ip, country, principal, NOW)


def run_explain(args: argparse.Namespace) -> int:
    try:
        host, path = _host(args.url)
        if args.policy:
            policy = load_policy_set(args.policy)
        else:
            policy = _tenant_policy_resolver(config_path(args))(host)
        ctx = _context(args, host, path)
        if ctx.country is None and ctx.ip is not None:
            ctx = dataclasses.replace(ctx, country=_country_of(config_path(args), str(ctx.ip)))
    except (PolicyError, ConfigError) as exc:
        _print_problems(exc)
        return EXIT_BAD_INPUT
    except BadRequest as exc:
        print(f"{args.url}: the gateway refuses this path with 400: {exc.reason}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except _Usage as exc:
        print(exc, file=sys.stderr)
        return EXIT_BAD_INPUT
    decision = decide(policy, ctx)
    if args.json:
        print(json.dumps({"url": args.url, "path": ctx.path, **explain_data(decision)}, indent=2))
    else:
        print(explain_text(decision, ctx))
    return EXIT_OK


def _country_of(config_file: Path, ip: str) -> str | None:
    """--ip without --country: the country from the configured GeoIP database, if any
    (the same lookup the pipeline makes)."""
    from gateway.config import load_config
    from geoip import GeoDatabaseError, GeoReader

    if not config_file.is_file():
        return None
    database = load_config(config_file).geoip.database
    if database is None:
        return None
    try:
        with GeoReader(database) as reader:
            country = reader.lookup(ip).country
    except GeoDatabaseError as exc:
        raise _Usage(f"geoip.database: {exc}") from None
    print(f"--ip {ip}: country {country or 'unknown'} (from {database})", file=sys.stderr)
    return country


def _always(policy: PolicySet) -> Callable[[str], PolicySet]:
    return lambda _host: policy


def run_test(args: argparse.Namespace) -> int:
    config_file = _explicit_config(args)
    by_config: Callable[[str], PolicySet] | None = None
    passed = failed = 0
    bad_input = False
    for path in args.files:
        try:
            case_file = load_case_file(path)
            # The case file's own `policies:` first, then -c CONFIG, then X.yaml beside it.
            if case_file.policies or config_file is None:
                paths = default_policy_paths(case_file)
                if not paths:
                    raise _Usage(f"{path}: no policy: add 'policies:' to it, or use -c CONFIG")
                resolve = _always(load_policy_set(paths))
            else:
                if by_config is None:
                    by_config = _tenant_policy_resolver(config_file)
                resolve = by_config
            results = [run_case(resolve(c.host), c, _canonical) for c in case_file.cases]
        except (PolicyError, ConfigError) as exc:
            _print_problems(exc)
            bad_input = True
            continue
        except BadRequest as exc:
            print(f"{path}: a case URL is refused with 400: {exc.reason}", file=sys.stderr)
            bad_input = True
            continue
        except _Usage as exc:
            print(exc, file=sys.stderr)
            bad_input = True
            continue
        for result in results:
            mark = "PASS" if result.passed else "FAIL"
            where = f"{result.case.file}:{result.case.line}"
            print(f"{mark} {where}: {result.case.name}: {result.message}")
            passed += result.passed
            failed += not result.passed
    print(f"{passed} passed, {failed} failed")
    if bad_input:
        return EXIT_BAD_INPUT
    return EXIT_FAILURE if failed else EXIT_OK
