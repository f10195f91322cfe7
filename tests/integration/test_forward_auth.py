"""Forward-auth at /.authgate/verify: decided on the canonical original URL."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.integration.conftest import StartGateway, make_config

POLICY = """
version: 1
default: deny
rules:
  - name: public
    paths: ["/public/**"]
    action: bypass
  - name: members
    paths: ["/members/**"]
    action: one_factor
"""


async def verify(
    base: str, headers: dict[str, str] | list[tuple[str, str]]
) -> aiohttp.ClientResponse:
    async with aiohttp.ClientSession() as client:
        resp = await client.get(f"{base}/.authgate/verify", headers=headers, allow_redirects=False)
        await resp.read()
        return resp


@pytest.fixture
async def trusted_gateway(tmp_path: Path, upstream: TestServer, start_gateway: StartGateway) -> str:
    config = make_config(
        tmp_path, str(upstream.make_url("")), policy=POLICY, trusted_proxies=("127.0.0.0/8",)
    )
    return await start_gateway(config)


@pytest.mark.parametrize(
    ("url", "status"),
    [
        ("https://app.test/public/logo.png", 200),
        ("https://APP.test:443/public/a?x=1", 200),
        ("https://app.test/members/x", 401),
        ("https://app.test/public/../members/x", 401),
        ("https://app.test/public/%2e%2e/members/x", 401),
        ("https://app.test/other", 403),
        ("https://unknown.test/public/x", 403),
    ],
)
async def test_nginx_style_original_url_is_decided_canonically(
    trusted_gateway: str, url: str, status: int
) -> None:
    resp = await verify(trusted_gateway, {"Host": "authgate.internal", "X-Original-URL": url})
    assert resp.status == status


async def test_refused_original_paths_are_400(trusted_gateway: str) -> None:
    resp = await verify(trusted_gateway, {"X-Original-URL": "https://app.test/public/..%2fmembers"})
    assert resp.status == 400


async def test_traefik_style_browser_is_redirected_to_login(trusted_gateway: str) -> None:
    resp = await verify(
        trusted_gateway,
        {
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "app.test",
            "X-Forwarded-Uri": "/members/page?a=1",
            "X-Forwarded-Method": "GET",
            "Accept": "text/html",
        },
    )
    assert resp.status == 302
    assert resp.headers["Location"] == (
        "https://app.test/.authgate/login?rd=https%3A%2F%2Fapp.test%2Fmembers%2Fpage%3Fa%3D1"
    )


async def test_untrusted_callers_are_refused(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway
) -> None:
    base = await start_gateway(make_config(tmp_path, str(upstream.make_url("")), policy=POLICY))
    resp = await verify(base, {"X-Original-URL": "https://app.test/public/x"})
    assert resp.status == 403


TRAEFIK = [
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "app.test"),
    ("X-Forwarded-Uri", "/members/secret"),
    ("X-Forwarded-Method", "DELETE"),
    ("Accept", "application/json"),
]


@pytest.mark.parametrize(
    "extra",
    [
        # Traefik and Caddy copy the client's headers: a client-sent X-Original-* beside
        # theirs would choose the path or the method decided on. Never both families.
        [("X-Original-URL", "https://app.test/public/x")],
        [("X-Original-Method", "GET")],
        # One of each header, or the proxy and authgate may read different ones.
        [("X-Forwarded-Uri", "/public/x")],
        [("X-Forwarded-Method", "GET")],
    ],
)
async def test_a_mixed_or_repeated_description_of_the_request_is_400(
    trusted_gateway: str, extra: list[tuple[str, str]]
) -> None:
    assert (await verify(trusted_gateway, TRAEFIK)).status == 401  # as it stands: refused
    assert (await verify(trusted_gateway, [*TRAEFIK, *extra])).status == 400


@pytest.mark.parametrize(
    "described",
    [
        [
            ("X-Original-URL", "https://app.test/public/x"),
            ("X-Original-URL", "https://app.test/members/secret"),
        ],
        [
            ("X-Original-URL", "https://app.test/public/x"),
            ("X-Original-Method", "GET"),
            ("X-Original-Method", "DELETE"),
        ],
        [*TRAEFIK, ("X-Forwarded-Host", "other.test")],
        [*TRAEFIK, ("X-Forwarded-Proto", "http")],
    ],
    ids=["two URLs", "two methods", "two hosts", "two protos"],
)
async def test_any_part_of_either_description_twice_is_400(
    trusted_gateway: str, described: list[tuple[str, str]]
) -> None:
    assert (await verify(trusted_gateway, described[:-1])).status in (200, 401)
    assert (await verify(trusted_gateway, described)).status == 400


@pytest.mark.parametrize(
    "url",
    [
        "https://app.test/public/x#/../../members/secret",  # urlsplit would drop it
        "https://app.test/pub\tlic/x",  # urlsplit would remove the tab
        "https://app.test/public/x y",
    ],
)
async def test_an_original_url_that_urlsplit_would_alter_is_400(
    trusted_gateway: str, url: str
) -> None:
    resp = await verify(trusted_gateway, {"X-Original-URL": url.replace("\\t", "\t")})
    assert resp.status == 400


async def test_an_original_method_without_its_url_is_400(trusted_gateway: str) -> None:
    resp = await verify(trusted_gateway, {"X-Original-Method": "GET"})
    assert resp.status == 400
