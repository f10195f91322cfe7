"""deploy/docker-compose.yml without docker: two `authgate serve` processes sharing one
PostgreSQL database and one Redis, behind Debian's nginx configured from
deploy/compose/nginx/authgate.conf, in front of a real upstream.

The nginx file is the compose one; only where things listen is rewritten (the
`upstream` server lines, `listen`, and the snippets' folder). Each instance's config is
deploy/compose/config.yaml with loopback addresses, a 1 s session cache and cheap
argon2; storage comes from AUTHGATE_STORAGE as in compose, schema by `authgate
migrate` before the instances start (together, as compose starts its replicas). Users
are added and disabled with the CLI against the same config, as
`docker compose run --rm authgate user …` does.

nginx balances round robin over the two instances, so consecutive requests land on
different instances. Which instance answered is read from the instances' own access
logs (one JSON line per request, with its canonical path): every proxied request here
has a path of its own; the login, logout and forward-auth requests are counted before
and after.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import jwt
import pytest
import yaml
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from tests.integration.browser import Browser, hidden
from tests.unit.deploy.tools import (
    DEPLOY,
    NGINX_SNIPPETS,
    free_port,
    nginx_main,
    require_tool,
    wait_for_port,
)

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

COMPOSE = DEPLOY / "compose"
APP = "app.localhost"  # proxy mode: nginx → authgate → upstream
FA = "fa.localhost"  # forward-auth mode: nginx auth_request → upstream
LOGIN_PATH = "/.authgate/login"
LOGOUT_PATH = "/.authgate/logout"
VERIFY_PATH = "/.authgate/verify"
PASSWORD = "correct horse battery staple"
INSTANCES = 2
CACHE_TTL = 1.0  # sessions.cache_ttl of both instances, seconds
SLACK = 1.0
REVOCATION_BOUND = CACHE_TTL + SLACK  # nothing may pass later than this after a revocation
LATE_PROBES = 16  # requests sent after the bound, each of which must be refused
FORGED = {
    "Remote-User": "mallory",
    "Remote-Email": "mallory@evil.test",
    "Remote-Name": "Mallory",
    "Remote-Groups": "admins",
    "X-Authgate-Jwt": "forged.jwt.value",
    "X-Forwarded-User": "mallory",
    "X-Remote-User": "mallory",
    "Remote_User": "mallory",
}
FORGED_VALUES = ("mallory", "admins", "forged.jwt.value")


def origin(host: str) -> str:
    return f"http://{host}"  # nginx listens on plain http; the Host has no port




# --- the deployment --------------------------------------------------------------


@dataclass
class Instance:
    """One `authgate serve` process with its own config file, port and log."""

    number: int
    port: int
    config: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def access_lines(self) -> list[dict[str, Any]]:
        """The access-log lines written so far (complete lines only)."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        found = []
        for line in text.split("\n")[:-1]:
            if not line.startswith("{"):
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("logger") == "authgate.access":
                found.append(entry)
        return found

    def count(self, method: str, path: str) -> int:
        return sum(
            1 for e in self.access_lines() if e.get("method") == method and e.get("path") == path
        )


@dataclass
class Deployment:
    nginx: str  # nginx's base URL: every request of the test goes there
    instances: list[Instance]
    env: dict[str, str]
    nonce: str = field(default_factory=lambda: secrets.token_hex(3))

    @property
    def numbers(self) -> set[int]:
        return {i.number for i in self.instances}

    def path(self, label: str) -> str:
        """A protected path no other request of this test has (the logs tell them apart)."""
        return f"/members/{label}-{self.nonce}"

    async def served(self, paths: Collection[str]) -> dict[str, tuple[int, int]]:
        """For each path: the instance that answered it and the status it answered."""
        wanted = set(paths)
        deadline = time.monotonic() + 5
        while True:
            seen: dict[str, list[tuple[int, int]]] = {}
            for instance in self.instances:
                for entry in instance.access_lines():
                    if entry.get("path") in wanted:
                        answer = (instance.number, int(entry["status"]))
                        seen.setdefault(entry["path"], []).append(answer)
            if set(seen) == wanted or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        missing = wanted - set(seen)
        assert not missing, f"no instance logged {sorted(missing)[:5]}"
        twice = {p: s for p, s in seen.items() if len(s) != 1}
        assert not twice, f"answered more than once: {twice}"
        return {p: s[0] for p, s in seen.items()}

    def counts(self, method: str, path: str) -> list[int]:
        return [i.count(method, path) for i in self.instances]

    async def who_served(self, method: str, path: str, before: Sequence[int]) -> int:
        """The instance whose count of `method path` grew by one since `before`."""
        deadline = time.monotonic() + 5
        while True:
            now = self.counts(method, path)
            if sum(now) > sum(before) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.02)
        assert sum(now) == sum(before) + 1, f"{method} {path}: counts {before} → {now}"
        (grown,) = (i for i, (a, b) in enumerate(zip(before, now, strict=True)) if b > a)
        return self.instances[grown].number

    async def cli(self, *args: str, stdin: str = "", instance: int = 0) -> str:
        """`authgate ARGS -c CONFIG` with an instance's config and environment."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            *args,
            "-c",
            str(self.instances[instance].config),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        try:
            out, _ = await asyncio.wait_for(process.communicate(stdin.encode()), timeout=30)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        text = out.decode(errors="replace")
        assert process.returncode == 0, f"authgate {' '.join(args)}: {text}"
        return text


def instance_config(
    directory: Path, port: int, upstream_port: int, redis_prefix: str, key_file: Path
) -> Path:
    """deploy/compose/config.yaml, with loopback addresses where compose has its network."""
    config: dict[str, Any] = yaml.safe_load((COMPOSE / "config.yaml").read_text())
    server = config["server"]
    assert server["trusted_proxies"] == ["172.30.57.10/32"]  # nginx's compose address …
    server["trusted_proxies"] = ["127.0.0.1/32"]  # … and here
    server["listen"] = f"127.0.0.1:{port}"
    server["shutdown_timeout"] = "2s"
    assert server["workers"] == 1 and server["dev_mode"] is True
    sessions = config["sessions"]
    assert sessions["store"] == "redis://redis:6379/0"
    sessions["store"] = "redis://127.0.0.1:6379/0"
    sessions["redis_prefix"] = redis_prefix  # this test's keys only
    sessions["cache_ttl"] = f"{CACHE_TTL:g}s"
    config["secrets"]["encryption_key_file"] = str(key_file)  # one secret for both
    config["passwords"] = {"time_cost": 1, "memory_cost": 8, "parallelism": 1}
    (tenant,) = config["tenants"]
    assert tenant["domains"] == [APP, FA]
    tenant["policies"] = [str(COMPOSE / p) for p in tenant["policies"]]
    for route in tenant["routes"]:
        assert route["upstream"] == "http://whoami:80"
        route["upstream"] = f"http://127.0.0.1:{upstream_port}"
    directory.mkdir()
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def rewrite(
    text: str, pattern: str, replacement: str | Callable[[re.Match[str]], str], count: int
) -> str:
    new, found = re.subn(pattern, replacement, text, flags=re.MULTILINE)
    assert found == count, f"{pattern!r} found {found} times in the compose nginx file"
    return new


def nginx_conf(prefix: Path, port: int, instances: Sequence[Instance], upstream_port: int) -> Path:
    """deploy/compose/nginx/authgate.conf; only the addresses and the snippets' folder differ."""
    text = (COMPOSE / "nginx" / "authgate.conf").read_text()

    def both_instances(match: re.Match[str]) -> str:
        # Docker's DNS gives nginx both replicas under one name; here they are two lines.
        indent, options = match.group(1), match.group(2) or ""
        return "\n".join(f"{indent}server 127.0.0.1:{i.port}{options};" for i in instances)

    text = rewrite(text, r"^(\s*)server authgate:8080( [^;]*)?;", both_instances, 1)
    text = rewrite(text, r"^(\s*)server whoami:80;", rf"\1server 127.0.0.1:{upstream_port};", 1)
    text = rewrite(text, r"^(\s*)listen 80;", rf"\1listen 127.0.0.1:{port};", 2)
    text = rewrite(text, r"include snippets/", f"include {NGINX_SNIPPETS}/", 2)
    prefix.mkdir()
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_main(prefix, text))
    return conf


async def wait_ready(instance: Instance, client: aiohttp.ClientSession) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert instance.process is not None
        if instance.process.poll() is not None:
            pytest.fail(f"instance {instance.number} exited: {instance.log.read_text()}")
        with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
            async with client.get(
                f"{instance.base}/.authgate/ready",
                headers={"Host": APP},
                timeout=aiohttp.ClientTimeout(total=2),
            ) as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.1)
    pytest.fail(f"instance {instance.number} not ready: {instance.log.read_text()}")




def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    with contextlib.suppress(OSError):
        return [int(child) for child in path.read_text().split()]
    return []


def stop(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM (authgate drains, nginx exits), SIGKILL to the session it leads when that
    takes too long; and no child of it (an authgate worker, an nginx worker) left over."""
    if process is None or process.returncode is not None:
        return
    started = children(process.pid)
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # start_new_session: its own group
            process.wait(timeout=5)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(Path(f"/proc/{c}").exists() for c in started):
        time.sleep(0.05)
    for child in started:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    # No cookie jar: the Browser (or the test) sends exactly the cookies it means to.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


@pytest.fixture
def nginx_binary() -> str:
    return require_tool("nginx")


@pytest.fixture
async def deployment(
    tmp_path: Path,
    nginx_binary: str,
    upstream: TestServer,
    postgres_clean: str,
    redis_prefix: str,
    client: aiohttp.ClientSession,
) -> AsyncIterator[Deployment]:
    assert upstream.port is not None
    key_file = tmp_path / "encryption.key"  # compose's authgate_encryption_key secret
    key_file.write_text(secrets.token_urlsafe(48) + "\n")
    key_file.chmod(0o600)
    instances = []
    for number in range(INSTANCES):
        directory = tmp_path / f"authgate-{number}"
        port = free_port()
        config = instance_config(directory, port, upstream.port, redis_prefix, key_file)
        instances.append(Instance(number, port, config, directory / "authgate.log"))
    nginx_port = free_port()
    prefix = tmp_path / "nginx"
    conf = nginx_conf(prefix, nginx_port, instances, upstream.port)
    nginx_log = prefix / "error.log"
    env = {**os.environ, "AUTHGATE_STORAGE": postgres_clean}
    dep = Deployment(f"http://127.0.0.1:{nginx_port}", instances, env)
    nginx: subprocess.Popen[bytes] | None = None
    try:
        await dep.cli("migrate")  # compose's `migrate` service, before any gateway starts
        for instance in instances:  # then the replicas, together
            with instance.log.open("wb") as log:
                instance.process = subprocess.Popen(
                    [sys.executable, "-m", "gateway", "serve", "-c", str(instance.config)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
        for instance in instances:
            await wait_ready(instance, client)
        nginx_args = [nginx_binary, "-c", str(conf), "-p", str(prefix), "-e", str(nginx_log)]
        checked = subprocess.run([*nginx_args, "-t"], capture_output=True, text=True, timeout=30)
        assert checked.returncode == 0, checked.stderr
        nginx = subprocess.Popen(
            [*nginx_args, "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        await wait_for_port(nginx_port, nginx, nginx_log)
        yield dep
    finally:
        for process in (nginx, *(i.process for i in instances)):
            try:
                stop(process)
            except Exception as exc:  # stop the others anyway
                print(f"could not stop {process}: {exc!r}", file=sys.stderr)
    alerts = [
        line
        for line in nginx_log.read_text().splitlines()
        if "[emerg]" in line or "[alert]" in line or "[crit]" in line
    ]
    assert alerts == []
    for instance in instances:
        assert instance.process is not None
        assert instance.process.returncode == 0, instance.log.read_text()[-3000:]


# --- requests through nginx ------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    headers: CIMultiDict[str]
    body: str

    def upstream_headers(self) -> CIMultiDict[str]:
        """The headers the upstream received (its echo); fails when it was not reached."""
        assert self.status == 200, f"{self.status}: {self.body[:300]}"
        pairs = json.loads(self.body)["headers"]
        return CIMultiDict((str(k), str(v)) for k, v in pairs)

    def reached_upstream(self) -> bool:
        return '"raw_path"' in self.body


async def fetch(
    client: aiohttp.ClientSession,
    dep: Deployment,
    path: str,
    *,
    host: str = APP,
    json_client: bool = False,
    cookie: str | None = None,
    forged: bool = True,
) -> Answer:
    """GET through nginx as a browser or an API client, with forged identity headers."""
    headers = {
        "Host": host,
        "Accept": "application/json" if json_client else "text/html,application/xhtml+xml",
        **(FORGED if forged else {}),
    }
    if cookie is not None:
        headers["Cookie"] = f"authgate_session={cookie}"
    async with client.get(dep.nginx + path, headers=headers, allow_redirects=False) as resp:
        return Answer(resp.status, CIMultiDict(resp.headers), await resp.text())


def assert_refused(answer: Answer, path: str, *, json_client: bool, host: str = APP) -> None:
    """Not signed in: a browser is sent to the login page with its way back, an API
    client gets 401; the upstream never sees the request."""
    assert not answer.reached_upstream(), answer
    if json_client:
        assert answer.status == 401, answer
        assert "Location" not in answer.headers
        return
    assert answer.status == 302, answer
    location = urlsplit(answer.headers["Location"])
    assert location.path == LOGIN_PATH
    assert location.netloc in ("", host)
    assert parse_qs(location.query)["rd"] == [f"{origin(host)}{path}"]


def assert_identity(answer: Answer) -> str:
    """alice's identity, and nothing of the forged one, reached the upstream; its JWT."""
    seen = answer.upstream_headers()
    assert seen.getall("Remote-User") == ["alice"], seen
    assert seen.getall("Remote-Email") == ["alice@example.test"]
    assert seen.getall("Remote-Name") == ["Alice Example"]
    assert seen.getall("Remote-Groups") == ["staff,dev"]
    for name in ("X-Forwarded-User", "X-Remote-User", "Remote_User"):
        assert name not in seen
    for name, value in seen.items():
        assert not any(forged in value for forged in FORGED_VALUES), (name, value)
    (token,) = seen.getall("X-Authgate-Jwt")
    return token


async def sign_in(dep: Deployment, browser: Browser, label: str) -> tuple[str, int, int]:
    """As a browser: protected page → login page → form POST → back to the page.
    Returns the session cookie and the instances that served the form's GET and POST."""
    host = browser.host
    target = dep.path(label)
    resp, _ = await browser.request("GET", target)
    assert resp.status == 302
    location = urlsplit(resp.headers["Location"])
    assert location.netloc in ("", host)
    assert parse_qs(location.query)["rd"] == [f"{origin(host)}{target}"]
    before = dep.counts("GET", LOGIN_PATH)
    resp, page = await browser.request("GET", f"{location.path}?{location.query}")
    assert resp.status == 200, page[:500]
    get_on = await dep.who_served("GET", LOGIN_PATH, before)
    form = {
        "csrf_token": hidden(page, "csrf_token"),
        "rd": hidden(page, "rd"),
        "username": "alice",
        "password": PASSWORD,
    }
    before = dep.counts("POST", LOGIN_PATH)
    resp, page = await browser.request("POST", LOGIN_PATH, data=form, Origin=origin(host))
    post_on = await dep.who_served("POST", LOGIN_PATH, before)
    assert get_on != post_on, "round robin sent the login form's GET and POST to one instance"
    assert resp.status == 303, (
        f"the form of instance {get_on}, posted to instance {post_on}: {resp.status} {page[:800]}"
    )
    assert resp.headers["Location"] == f"{origin(host)}{target}"
    assert "authgate_session" in browser.cookies
    return browser.cookies["authgate_session"], get_on, post_on


async def proxied_as_alice(
    dep: Deployment, client: aiohttp.ClientSession, cookie: str, label: str, count: int
) -> dict[int, list[str]]:
    """`count` requests with the session through nginx's proxy mode: every one reaches
    the upstream as alice, and both instances serve them. The JWTs, by instance."""
    paths = [dep.path(f"{label}-{i}") for i in range(count)]
    answers = [await fetch(client, dep, path, cookie=cookie) for path in paths]
    served = await dep.served(paths)
    tokens: dict[int, list[str]] = {}
    for path, answer in zip(paths, answers, strict=True):
        token = assert_identity(answer)
        assert "authgate_session" not in answer.upstream_headers().get("Cookie", "")
        instance, status = served[path]
        assert status == 200
        tokens.setdefault(instance, []).append(token)
    assert set(tokens) == dep.numbers, f"served by {sorted(tokens)} only"
    return tokens


async def forwarded_as_alice(
    dep: Deployment, client: aiohttp.ClientSession, cookie: str, label: str, count: int
) -> dict[int, list[str]]:
    """The same through nginx's forward-auth mode (auth_request to /.authgate/verify)."""
    tokens: dict[int, list[str]] = {}
    for i in range(count):
        before = dep.counts("GET", VERIFY_PATH)
        answer = await fetch(client, dep, dep.path(f"{label}-{i}"), host=FA, cookie=cookie)
        instance = await dep.who_served("GET", VERIFY_PATH, before)
        tokens.setdefault(instance, []).append(assert_identity(answer))
    assert set(tokens) == dep.numbers, f"decided by {sorted(tokens)} only"
    return tokens


@dataclass(frozen=True)
class Probe:
    path: str
    json_client: bool
    sent: float  # time.monotonic() when it was sent
    answer: Answer


async def refused_everywhere_after(
    dep: Deployment, client: aiohttp.ClientSession, cookie: str, since: float, label: str
) -> float | None:
    """From `since` (the revocation) on, keep using the cookie through nginx. Nothing may
    pass later than REVOCATION_BOUND after it: browsers go to the login page, API
    clients get 401, from both instances. Returns how late a request still passed."""
    deadline = since + REVOCATION_BOUND
    probes: list[Probe] = []
    i = 0
    while sum(p.sent > deadline for p in probes) < LATE_PROBES:
        # Two of each kind in turn: round robin then gives each kind both instances.
        json_client = (i // 2) % 2 == 1
        path = dep.path(f"{label}-{i}")
        sent = time.monotonic()
        answer = await fetch(client, dep, path, json_client=json_client, cookie=cookie)
        probes.append(Probe(path, json_client, sent, answer))
        i += 1
        await asyncio.sleep(0.02)
    served = await dep.served([p.path for p in probes])
    late = [p for p in probes if p.sent > deadline]
    for probe in late:
        assert_refused(probe.answer, probe.path, json_client=probe.json_client)
    for json_client in (False, True):
        answered_by = {served[p.path][0] for p in late if p.json_client is json_client}
        assert answered_by == dep.numbers, ("API" if json_client else "browser", answered_by)
    passed = [p.sent - since for p in probes if p.answer.status == 200]
    return max(passed, default=None)


async def forward_auth_refused(
    dep: Deployment, client: aiohttp.ClientSession, cookie: str | None, label: str
) -> None:
    """In forward-auth mode too: refused by both instances, the app never reached."""
    before = dep.counts("GET", VERIFY_PATH)
    probes = 8
    for i in range(probes):
        path = dep.path(f"{label}-{i}")
        json_client = i >= probes // 2
        answer = await fetch(client, dep, path, host=FA, json_client=json_client, cookie=cookie)
        assert_refused(answer, path, json_client=json_client, host=FA)
    # Each refusal is two verify requests: auth_request's, then @authgate_login's.
    deadline = time.monotonic() + 5
    while True:
        grown = [b - a for a, b in zip(before, dep.counts("GET", VERIFY_PATH), strict=True)]
        if sum(grown) >= 2 * probes or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.02)
    assert sum(grown) == 2 * probes, f"verify requests by instance: {grown}"
    assert all(n > 0 for n in grown), f"verify requests by instance: {grown}"


async def jwks_of(client: aiohttp.ClientSession, instance: Instance) -> dict[str, Any]:
    """/.authgate/jwks.json straight from one instance, not through nginx: kid → JWK."""
    url = f"{instance.base}/.authgate/jwks.json"
    async with client.get(url, headers={"Host": APP}) as resp:
        assert resp.status == 200
        keys: dict[str, Any] = {k["kid"]: k for k in json.loads(await resp.text())["keys"]}
        return keys


def verify(token: str, jwks: dict[str, Any], audience: str) -> dict[str, Any]:
    kid = jwt.get_unverified_header(token)["kid"]
    if kid not in jwks:
        raise jwt.InvalidKeyError(f"kid {kid} is not published there")
    claims: dict[str, Any] = jwt.decode(
        token, jwt.PyJWK(jwks[kid]).key, algorithms=["ES256"], audience=audience, issuer="authgate"
    )
    return claims


async def jwt_problems(
    dep: Deployment, client: aiohttp.ClientSession, tokens: dict[str, dict[int, list[str]]]
) -> list[str]:
    """Every JWT (by audience, by the instance that signed it) must verify with the JWKS
    of each instance, fetched from that instance directly: what does not."""
    key_sets = {i.number: await jwks_of(client, i) for i in dep.instances}
    problems = []
    for audience, by_signer in tokens.items():
        for signer, signed in by_signer.items():
            for number, jwks in key_sets.items():
                for token in signed:
                    try:
                        claims = verify(token, jwks, audience)
                    except jwt.PyJWTError as exc:
                        kid = jwt.get_unverified_header(token)["kid"]
                        problems.append(
                            f"a JWT signed by instance {signer} (kid {kid[:12]}…) does not"
                            f" verify with instance {number}'s JWKS: {exc}"
                        )
                        break
                    assert claims["sub"] == "alice"
                    assert claims["email"] == "alice@example.test"
                    assert claims["groups"] == ["staff", "dev"]
                    assert claims["amr"] == ["pwd"]
    if problems:
        published = {n: sorted(k[:12] for k in keys) for n, keys in key_sets.items()}
        problems.append(f"published kids by instance: {published}")
    return problems


# --- the test --------------------------------------------------------------------


async def test_two_instances_behind_nginx_share_sign_in_sessions_and_revocation(
    deployment: Deployment, client: aiohttp.ClientSession
) -> None:
    dep = deployment
    # compose's README: `docker compose run --rm authgate user add alice …`
    await dep.cli(
        "user",
        "add",
        "alice",
        "--email",
        "alice@example.test",
        "--name",
        "Alice Example",
        "--groups",
        "staff,dev",
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )

    # 5. No session: browsers go to the login page, API clients get 401, from both
    # instances (two of each kind in turn, so round robin gives each kind both).
    anonymous = [(dep.path(f"anonymous-{i}"), (i // 2) % 2 == 1) for i in range(8)]
    for path, json_client in anonymous:
        answer = await fetch(client, dep, path, json_client=json_client)
        assert_refused(answer, path, json_client=json_client)
    served = await dep.served([path for path, _ in anonymous])
    for kind in (False, True):
        assert {served[p][0] for p, j in anonymous if j is kind} == dep.numbers
    await forward_auth_refused(dep, client, None, "fa-anonymous")
    # 3. A forged identity never reaches the upstream, on a public path either.
    for host in (APP, FA, APP, FA):
        seen = (await fetch(client, dep, "/public/x", host=host)).upstream_headers()
        assert not any(name in seen for name in FORGED), seen
        assert not any(v in value for value in seen.values() for v in FORGED_VALUES), seen

    # 1. Sign in as a browser does, though the form's GET and POST land on different
    # instances (checked in sign_in).
    browser = Browser(dep.nginx, client, host=APP)
    cookie, _, _ = await sign_in(dep, browser, "welcome")

    # 2. The session passes on both instances, many times; the upstream gets alice, never
    # mallory, and a JWT that verifies against the JWKS of either instance. The same on
    # the forward-auth host, signed in there through its own login page.
    app_tokens = await proxied_as_alice(dep, client, cookie, "signed-in", 24)
    fa_browser = Browser(dep.nginx, client, host=FA)
    fa_cookie, _, _ = await sign_in(dep, fa_browser, "fa-welcome")
    fa_tokens = await forwarded_as_alice(dep, client, fa_cookie, "fa-signed-in", 6)
    # (Checked at the end, so that a failure here does not hide the revocation checks.)
    jwks_failures = await jwt_problems(dep, client, {APP: app_tokens, FA: fa_tokens})

    # 4a. Logout through nginx. The cookie, cached by both instances a moment ago, passes
    # on neither after the bound; the other session (the forward-auth host's) lives on.
    await proxied_as_alice(dep, client, cookie, "just-before-logout", 4)
    resp, page = await browser.request("GET", LOGOUT_PATH)
    assert resp.status == 200
    form = {"csrf_token": hidden(page, "csrf_token")}
    resp, _ = await browser.request("POST", LOGOUT_PATH, data=form, Origin=origin(APP))
    revoked_at = time.monotonic()
    assert resp.status == 200
    assert "authgate_session" not in browser.cookies
    late = await refused_everywhere_after(dep, client, cookie, revoked_at, "after-logout")
    print(f"after logout, the last request that passed was sent {late} s after it")
    await forwarded_as_alice(dep, client, fa_cookie, "fa-still-signed-in", 4)

    # 4b. Sign in again; then `authgate user disable` (the CLI, against the second
    # instance's config) ends both of alice's sessions on both instances, both modes.
    cookie, _, _ = await sign_in(dep, browser, "welcome-back")
    await proxied_as_alice(dep, client, cookie, "signed-in-again", 4)
    await forwarded_as_alice(dep, client, fa_cookie, "fa-before-disable", 2)
    out = await dep.cli("user", "disable", "alice", instance=1)
    revoked_at = time.monotonic()
    assert "ended 2 session(s)" in out, out
    late = await refused_everywhere_after(dep, client, cookie, revoked_at, "after-disable")
    print(f"after user disable, the last request that passed was sent {late} s after it")
    await forward_auth_refused(dep, client, fa_cookie, "fa-after-disable")

    # 2, continued: the JWTs of both instances verify with the JWKS of both instances.
    assert jwks_failures == []
