"""Debian's nginx with `auth_request`, configured from deploy/nginx/snippets, in front
of a real upstream, asking a real authgate about every request.

The nginx configuration includes the very snippet files operators install; only the
`upstream` blocks (where authgate and the app listen) are written by the test.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from gateway.reserved import ReservedRequest
from gateway.server import GatewayServer
from tests.integration.conftest import StartGateway, make_config, user_from_cookie
from tests.unit.deploy.tools import (
    NGINX_SNIPPETS,
    free_port,
    nginx_main,
    require_tool,
    wait_for_port,
)

POLICY = """
version: 1
default: deny
rules:
  - name: public
    paths: ["/public/**"]
    action: bypass
  - name: members
    paths: ["/**"]
    action: one_factor
"""

HOST = "app.test"
BROWSER = {"Host": HOST, "Accept": "text/html,application/xhtml+xml"}
API = {"Host": HOST, "Accept": "application/json"}
SIGNED_IN_COOKIE = "test_user=alice"


async def login_page(req: ReservedRequest) -> web.StreamResponse:
    return web.Response(text="authgate login page", content_type="text/html")


def signed_in_by_cookie(server: GatewayServer) -> None:
    server.hooks.identify = user_from_cookie
    server.reserved.add("/login", login_page)


@dataclass(frozen=True)
class Nginx:
    base: str
    error_log: Path


def nginx_http_block(port: int, authgate: str, app: str) -> str:
    return f"""
    upstream authgate {{ server {authgate}; keepalive 4; }}
    upstream app {{ server {app}; keepalive 4; }}
    server {{
        listen 127.0.0.1:{port};
        server_name {HOST};
        include {NGINX_SNIPPETS}/authgate-authrequest.conf;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            include {NGINX_SNIPPETS}/authgate-identity.conf;
        }}
    }}
"""


@pytest.fixture
def nginx_binary() -> str:
    return require_tool("nginx")


@pytest.fixture
async def nginx(
    nginx_binary: str, tmp_path: Path, upstream: TestServer, start_gateway: StartGateway
) -> AsyncIterator[Nginx]:
    config = make_config(
        tmp_path,
        str(upstream.make_url("")),
        policy=POLICY,
        hosts=(HOST,),
        trusted_proxies=("127.0.0.0/8",),
    )
    gateway = await start_gateway(config, (signed_in_by_cookie,))
    prefix = tmp_path / "nginx"
    port = free_port()
    app = f"{upstream.host}:{upstream.port}"
    conf = prefix / "nginx.conf"
    prefix.mkdir()
    conf.write_text(nginx_main(prefix, nginx_http_block(port, gateway.split("//")[1], app)))
    log = prefix / "error.log"
    process = subprocess.Popen(
        [nginx_binary, "-c", str(conf), "-p", str(prefix), "-e", str(log), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await wait_for_port(port, process, log)
        yield Nginx(f"http://127.0.0.1:{port}", log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass(frozen=True)
class Answer:
    status: int
    headers: CIMultiDict[str]
    body: bytes

    def upstream_saw(self) -> dict[str, object]:
        """The echo upstream's report of the request it received."""
        seen: dict[str, object] = json.loads(self.body)
        return seen

    def upstream_headers(self) -> CIMultiDict[str]:
        pairs = self.upstream_saw()["headers"]
        assert isinstance(pairs, list)
        return CIMultiDict((str(k), str(v)) for k, v in pairs)


async def get(
    nginx: Nginx, path: str, headers: dict[str, str], method: str = "GET", data: bytes = b""
) -> Answer:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as client:
        async with client.request(
            method,
            nginx.base + path,
            headers=headers,
            data=data or None,
            allow_redirects=False,
            skip_auto_headers=("Accept",) if "Accept" not in headers else (),
        ) as resp:
            return Answer(resp.status, CIMultiDict(resp.headers), await resp.read())


@pytest.fixture
def no_nginx_alerts(nginx: Nginx) -> Iterator[Nginx]:
    yield nginx
    alerts = [
        line
        for line in nginx.error_log.read_text().splitlines()
        if "[emerg]" in line or "[alert]" in line or "[crit]" in line
    ]
    assert alerts == []


async def test_public_paths_pass_through_nginx_to_the_upstream(no_nginx_alerts: Nginx) -> None:
    answer = await get(no_nginx_alerts, "/public/x?a=1", BROWSER)
    assert answer.status == 200
    seen = answer.upstream_saw()
    assert seen["raw_path"] == "/public/x?a=1"
    assert answer.upstream_headers()["Host"] == HOST


async def test_a_browser_is_sent_to_the_login_page_with_its_return_address(
    nginx: Nginx,
) -> None:
    answer = await get(nginx, "/private/x?a=1&b=2", BROWSER)
    assert answer.status == 302
    assert answer.headers["Location"] == (
        "http://app.test/.authgate/login?rd=http%3A%2F%2Fapp.test%2Fprivate%2Fx%3Fa%3D1%26b%3D2"
    )
    assert b"raw_path" not in answer.body


async def test_the_login_page_is_served_by_authgate_on_the_apps_host(nginx: Nginx) -> None:
    answer = await get(nginx, "/.authgate/login?rd=http%3A%2F%2Fapp.test%2Fprivate", BROWSER)
    assert answer.status == 200
    assert answer.body == b"authgate login page"


async def test_an_api_client_gets_401_not_a_redirect(nginx: Nginx) -> None:
    answer = await get(nginx, "/private/x", API)
    assert answer.status == 401
    assert "Location" not in answer.headers
    assert b"raw_path" not in answer.body


async def test_a_post_body_is_not_sent_to_authgate_and_the_browser_still_goes_to_login(
    nginx: Nginx,
) -> None:
    answer = await get(nginx, "/private/form", BROWSER, method="POST", data=b"x" * 100_000)
    assert answer.status == 302
    assert "/.authgate/login?rd=" in answer.headers["Location"]


@pytest.mark.parametrize(
    "path", ["/public/%2e%2e/private/x", "/public/../private/x", "/PUBLIC/%2E%2E/private"]
)
async def test_dot_segments_cannot_climb_out_of_a_public_path(nginx: Nginx, path: str) -> None:
    answer = await get(nginx, path, API)
    assert answer.status == 401
    assert b"raw_path" not in answer.body


async def test_a_path_authgate_refuses_fails_closed(nginx: Nginx) -> None:
    # authgate answers 400 to the subrequest; auth_request turns anything but 2xx,
    # 401 and 403 into 500: the request does not pass.
    answer = await get(nginx, "/public/..%2fprivate", API)
    assert answer.status == 500
    assert b"raw_path" not in answer.body


async def test_a_client_made_identity_never_reaches_the_upstream(nginx: Nginx) -> None:
    forged = {
        **BROWSER,
        "Remote-User": "admin",
        "remote-groups": "admins",
        "X-Authgate-Jwt": "forged",
        "X-Forwarded-User": "admin",
        "Remote_User": "admin",
    }
    answer = await get(nginx, "/public/x", forged)
    assert answer.status == 200
    seen = answer.upstream_headers()
    for name in ("Remote-User", "Remote-Groups", "X-Authgate-Jwt", "X-Forwarded-User"):
        assert name not in seen
    assert "admin" not in [value for _, value in seen.items()]


async def test_a_signed_in_user_reaches_the_upstream_with_authgates_identity(
    nginx: Nginx,
) -> None:
    headers = {**BROWSER, "Cookie": SIGNED_IN_COOKIE, "Remote-User": "admin"}
    answer = await get(nginx, "/private/x", headers)
    assert answer.status == 200
    seen = answer.upstream_headers()
    assert seen.getall("Remote-User") == ["alice"]
    assert seen["Remote-Email"] == "alice@acme.test"
    assert seen["Remote-Groups"] == "staff,dev"
    assert "Remote-Name" not in seen  # authgate sent none: nginx sends none


async def test_health_answers_through_nginx(nginx: Nginx) -> None:
    answer = await get(nginx, "/.authgate/health", {"Host": HOST})
    assert answer.status == 200
    assert json.loads(answer.body) == {"status": "ok"}
