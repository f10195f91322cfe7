"""The servers `python -m benchmarks` compares, each started from a generated config.

Every scenario is a `Scenario`: where wrk goes, which headers it sends (the Host, a
session cookie), which processes serve it (for CPU per request) and which of them
are authgate's workers (for RSS per worker). Sessions are created straight through
the stores before the gateway starts, as a person signing in would have left them.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks import upstream as fast_upstream
from benchmarks._harness import (
    LOOPBACK,
    BenchmarkError,
    ManagedProcess,
    free_port,
    start_nginx,
    start_process,
    wait_until_serving,
)

BENCH_HOST = "bench.test"
REPO = Path(__file__).resolve().parent.parent
NGINX_SNIPPETS = REPO / "deploy" / "nginx" / "snippets"
COOKIE_NAME = "authgate_session"
REDIS_URL = "redis://127.0.0.1:6379/0"

# (a): the whole pipeline, no identity.
BYPASS_POLICY = f"""\
version: 1
default: deny
rules:
  - name: bench-bypass
    hosts: [{BENCH_HOST}]
    action: bypass
"""

# (b), (c), (d): the request is decided by the third rule, on the user's group, after
# two that do not hold (a path that does not match, a role the user lacks).
SESSION_POLICY = f"""\
version: 1
default: deny
roles:
  member: {{ permissions: [app.use] }}
  admin: {{ inherits: [member], permissions: ["*"] }}
rules:
  - name: static
    hosts: [{BENCH_HOST}]
    paths: ["/static/**"]
    action: bypass
  - name: admin-area
    hosts: [{BENCH_HOST}]
    paths: ["/admin/**"]
    subjects: {{ roles: [admin] }}
    action: two_factor
  - name: members
    hosts: [{BENCH_HOST}]
    subjects: {{ groups: [staff] }}
    action: one_factor
"""


@dataclass(frozen=True)
class Scenario:
    """A server ready to be measured."""

    key: str
    label: str
    port: int
    processes: tuple[ManagedProcess, ...]  # everything serving it (CPU is summed over them)
    rss_from: ManagedProcess  # whose workers' peak RSS is reported
    headers: tuple[str, ...] = ()  # besides Host: the session cookie
    lua: str = ""  # wrk Lua run before the suite's own script (a `request` of its own)

    def serving_pids(self) -> list[int]:
        return [pid for process in self.processes for pid in process.worker_pids()]


@dataclass(frozen=True)
class AuthgateSetup:
    """How one authgate instance is configured."""

    name: str
    policy: str
    session_store: str = "storage"
    redis_prefix: str = "authgate:"
    trusted_proxies: tuple[str, ...] = ()
    signed_in: bool = True  # requests carry the cookie of a session made before start
    fast_path: bool = True  # server.fast_path (on by default)
    cpu_affinity: str = "none"  # server.cpu_affinity


# ----------------------------------------------------------------------- baselines


def start_upstream(workers: int, tmp: Path) -> Scenario:
    port = free_port()
    block = fast_upstream.nginx_http_block(port)
    process = start_nginx("upstream (nginx)", tmp / "upstream", workers, block)
    wait_until_serving(process, port)
    return Scenario("direct", "direct → upstream", port, (process,), process)


def start_nginx_proxy(workers: int, tmp: Path, upstream_port: int) -> Scenario:
    port = free_port()
    body = (
        f"    upstream backend {{ server {LOOPBACK}:{upstream_port}; keepalive 128; }}\n"
        "    server {\n"
        f"        listen {LOOPBACK}:{port} reuseport backlog=4096;\n"
        "        location / {\n"
        "            proxy_pass http://backend;\n"
        "            proxy_http_version 1.1;\n"
        '            proxy_set_header Connection "";\n'
        "            proxy_set_header Host $host;\n"
        "            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
        "        }\n"
        "    }\n"
    )
    process = start_nginx("nginx proxy", tmp / "nginx-proxy", workers, body)
    wait_until_serving(process, port, BENCH_HOST)
    return Scenario("nginx", "nginx reverse proxy", port, (process,), process)


def _start_python_proxy(
    key: str, label: str, module: str, workers: int, tmp: Path, upstream_port: int
) -> Scenario:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        module,
        "--port",
        str(port),
        "--upstream",
        f"http://{LOOPBACK}:{upstream_port}",
        "--workers",
        str(workers),
    ]
    process = start_process(label, argv, tmp / f"{key}.log", cwd=REPO)
    wait_until_serving(process, port, BENCH_HOST)
    return Scenario(key, label, port, (process,), process)


def start_minimal_proxy(workers: int, tmp: Path, upstream_port: int) -> Scenario:
    return _start_python_proxy(
        "minimal", "minimal aiohttp proxy", "benchmarks.minimal_proxy", workers, tmp, upstream_port
    )


def start_floor_proxy(workers: int, tmp: Path, upstream_port: int) -> Scenario:
    """The Python floor (`benchmarks/floor_proxy.py`): bytes relayed, nothing else."""
    return _start_python_proxy(
        "floor",
        "Python floor (bytes relayed)",
        "benchmarks.floor_proxy",
        workers,
        tmp,
        upstream_port,
    )


# ------------------------------------------------------------------------ authgate


def authgate_config(folder: Path, port: int, upstream_port: int, setup: AuthgateSetup) -> Path:
    """One tenant, one route to the upstream; the policy and session store of `setup`."""
    (folder / "policy.yaml").write_text(setup.policy, encoding="utf-8")
    trusted = ", ".join(setup.trusted_proxies)
    config = folder / "config.yaml"
    # Only keys that differ from the defaults: older builds (compared against) lack them.
    fast_path = "" if setup.fast_path else "  fast_path: false\n"
    if setup.cpu_affinity != "none":
        fast_path += f"  cpu_affinity: {setup.cpu_affinity}\n"
    config.write_text(
        "server:\n"
        f"  listen: {LOOPBACK}:{port}\n"
        "  shutdown_timeout: 2s\n"
        f"  trusted_proxies: [{trusted}]\n"
        f"{fast_path}"
        "storage: sqlite:///authgate.db\n"
        "sessions:\n"
        f"  store: {setup.session_store}\n"
        f'  redis_prefix: "{setup.redis_prefix}"\n'
        "secrets:\n"
        f"  encryption_key: {secrets.token_urlsafe(48)}\n"
        # No access log in any scenario (nginx: access_log off; the minimal proxy: none).
        "logging:\n"
        "  level: warning\n"
        "  access_log: false\n"
        "tenants:\n"
        "  - id: bench\n"
        "    name: Bench\n"
        f"    domains: [{BENCH_HOST}]\n"
        "    policies: [policy.yaml]\n"
        "    routes:\n"
        f"      - host: {BENCH_HOST}\n"
        f"        upstream: http://{LOOPBACK}:{upstream_port}\n",
        encoding="utf-8",
    )
    return config


async def _signed_in(config_path: Path) -> str:
    """A user (group staff, role member) and a live password session; the cookie value."""
    from gateway.config.loader import load_config
    from gateway.sessions import SessionManager
    from gateway.stores import User, new_id, open_stores

    config = load_config(config_path, environ={})
    stores = await open_stores(config)
    try:
        now = time.time()
        user = User(
            id=new_id(),
            tenant="bench",
            username="alice",
            email="alice@bench.test",
            display_name="Alice Bench",
            groups=("staff", "dev"),
            roles=("member",),
            disabled=False,
            password_hash=None,
            created=now,
            updated=now,
        )
        await stores.users.create(user)
        manager = SessionManager(stores.sessions, stores.users, stores.events, config.sessions)
        cookie, _ = await manager.create(user, ("pwd",), ip=LOOPBACK, user_agent="wrk")
        return cookie
    finally:
        await stores.close()


def _check_config(config: Path) -> None:
    check = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "-c", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    if check.returncode != 0:
        raise BenchmarkError(
            f"authgate check-config refused the generated config ({check.returncode}):\n"
            f"{check.stdout}{check.stderr}"
        )


def start_authgate(
    workers: int, tmp: Path, upstream_port: int, setup: AuthgateSetup, signed_in: bool
) -> tuple[ManagedProcess, int, str | None]:
    """authgate serving `setup`; with `signed_in`, a session made first (its cookie)."""
    folder = tmp / setup.name
    folder.mkdir()
    port = free_port()
    config = authgate_config(folder, port, upstream_port, setup)
    _check_config(config)
    cookie = asyncio.run(_signed_in(config)) if signed_in else None
    process = start_process(
        f"authgate ({setup.name})",
        [sys.executable, "-m", "gateway", "serve", "-c", str(config), "--workers", str(workers)],
        folder / "serve.log",
        cwd=REPO,
    )
    return process, port, cookie


# What Chrome sent with a page request (2026), apart from Host and Cookie.
BROWSER_HEADERS = (
    "Connection: keep-alive",
    'sec-ch-ua: "Chromium";v="142", "Google Chrome";v="142", "Not_A Brand";v="99"',
    "sec-ch-ua-mobile: ?0",
    'sec-ch-ua-platform: "Linux"',
    "Upgrade-Insecure-Requests: 1",
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/142.0.0.0 Safari/537.36",
    "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
    "image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7",
    "Sec-Fetch-Site: same-origin",
    "Sec-Fetch-Mode: navigate",
    "Sec-Fetch-User: ?1",
    "Sec-Fetch-Dest: document",
    "Referer: https://bench.example/reports/2026/q3?view=summary",
    "Accept-Encoding: gzip, deflate, br, zstd",
    "Accept-Language: en-GB,en;q=0.9,de;q=0.8",
)
BROWSER_COOKIES = "_ga=GA1.1.1234567890.1764900000; theme=dark; consent=analytics%3Dno"


# A session cookie for proxies that need none, so that every proxy reads the same bytes.
PLACEHOLDER_SESSION = f"Cookie: {COOKIE_NAME}={'x' * 43}"


def browser_headers(headers: tuple[str, ...]) -> tuple[str, ...]:
    """`headers` (the session cookie, or a placeholder of its size when there is none) as
    a browser sends them: with the 14 other fields of BROWSER_HEADERS and three more
    cookies, 16 fields in all with Host."""
    cookies = [h for h in headers if h.startswith("Cookie: ")] or [PLACEHOLDER_SESSION]
    others = [h for h in headers if not h.startswith("Cookie: ")]
    cookie = f"Cookie: {BROWSER_COOKIES}" + "".join(f"; {c[8:]}" for c in cookies)
    return (*BROWSER_HEADERS, *others, cookie)


def cookie_header(cookie: str | None) -> tuple[str, ...]:
    return (f"Cookie: {COOKIE_NAME}={cookie}",) if cookie else ()


def start_authgate_scenario(
    key: str, label: str, workers: int, tmp: Path, upstream_port: int, setup: AuthgateSetup
) -> Scenario:
    process, port, cookie = start_authgate(workers, tmp, upstream_port, setup, setup.signed_in)
    headers = cookie_header(cookie)
    try:
        wait_until_serving(process, port, BENCH_HOST, timeout=60, headers=headers)
    except BenchmarkError:
        process.stop()
        raise
    return Scenario(key, label, port, (process,), process, headers)


def forward_auth_block(port: int, authgate_port: int, upstream_port: int) -> str:
    """nginx with the operators' own snippet files: auth_request to authgate, then the app."""
    return (
        f"    upstream authgate {{ server {LOOPBACK}:{authgate_port}; keepalive 128; }}\n"
        f"    upstream app {{ server {LOOPBACK}:{upstream_port}; keepalive 128; }}\n"
        "    server {\n"
        f"        listen {LOOPBACK}:{port} reuseport backlog=4096;\n"
        f"        server_name {BENCH_HOST};\n"
        f"        include {NGINX_SNIPPETS}/authgate-authrequest.conf;\n"
        "        location / {\n"
        "            proxy_pass http://app;\n"
        "            proxy_http_version 1.1;\n"
        '            proxy_set_header Connection "";\n'
        "            proxy_set_header Host $host;\n"
        f"            include {NGINX_SNIPPETS}/authgate-identity.conf;\n"
        "        }\n"
        "    }\n"
    )


def start_forward_auth(workers: int, tmp: Path, upstream_port: int) -> Scenario:
    """(d): nginx `auth_request` asks authgate's /.authgate/verify about every request."""
    setup = AuthgateSetup("forward-auth", SESSION_POLICY, trusted_proxies=("127.0.0.1/32",))
    authgate, authgate_port, cookie = start_authgate(workers, tmp, upstream_port, setup, True)
    headers = cookie_header(cookie)
    started: list[ManagedProcess] = [authgate]
    try:
        port = free_port()
        block = forward_auth_block(port, authgate_port, upstream_port)
        nginx = start_nginx("nginx auth_request", tmp / "nginx-forward-auth", workers, block)
        started.append(nginx)
        wait_until_serving(nginx, port, BENCH_HOST, timeout=60, headers=headers)
    except BaseException:
        for process in reversed(started):
            process.stop()
        raise
    label = "authgate (d) forward-auth behind nginx"
    return Scenario("forward_auth", label, port, (nginx, authgate), authgate, headers)


async def delete_redis_prefix(url: str, prefix: str) -> int:
    """Delete the keys under a run's own prefix (never anything else); how many."""
    from gateway.stores.redis import open_redis

    handle = open_redis(url)
    deleted = 0
    try:
        keys = [key async for key in handle.client.scan_iter(match=f"{prefix}*", count=1000)]
        for start in range(0, len(keys), 500):
            deleted += int(await handle.client.delete(*keys[start : start + 500]))
    finally:
        await handle.close()
    return deleted


def run_prefix() -> str:
    return f"authgate-bench-{secrets.token_hex(4)}:"


def stop_all(processes: Sequence[ManagedProcess]) -> None:
    for process in reversed(processes):
        process.stop()
