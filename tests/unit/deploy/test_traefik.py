"""deploy/traefik: the forwardAuth middleware asks authgate and copies its identity."""

from __future__ import annotations

from typing import Any

import yaml

from tests.unit.deploy.tools import DEPLOY

IDENTITY = ["Remote-User", "Remote-Email", "Remote-Name", "Remote-Groups", "X-Authgate-Jwt"]


def dynamic() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "traefik" / "dynamic.yml").read_text())
    return loaded["http"]


def test_forward_auth_asks_the_verify_endpoint_and_copies_identity_headers() -> None:
    forward_auth = dynamic()["middlewares"]["authgate"]["forwardAuth"]
    assert forward_auth["address"] == "http://authgate:8080/.authgate/verify"
    assert forward_auth["trustForwardHeader"] is True
    assert forward_auth["authResponseHeaders"] == IDENTITY


def test_the_app_router_is_protected_and_authgates_pages_are_not() -> None:
    routers = dynamic()["routers"]
    assert routers["wiki"]["middlewares"][-1] == "authgate"
    pages = routers["wiki-authgate"]
    assert "PathPrefix(`/.authgate/`)" in pages["rule"]
    assert "middlewares" not in pages
    assert pages["priority"] > 0
    assert dynamic()["services"][pages["service"]]["loadBalancer"]["healthCheck"]["path"] == (
        "/.authgate/ready"
    )


def test_other_gateways_identity_names_are_removed_before_the_check() -> None:
    routers = dynamic()["routers"]
    strip = dynamic()["middlewares"]["authgate-strip-identity"]["headers"]["customRequestHeaders"]
    assert routers["wiki"]["middlewares"].index("authgate-strip-identity") < routers["wiki"][
        "middlewares"
    ].index("authgate")
    assert set(strip.values()) == {""}
    assert "X-Forwarded-User" in strip


def test_the_static_configuration_reads_the_dynamic_file() -> None:
    static = yaml.safe_load((DEPLOY / "traefik" / "traefik.yml").read_text())
    assert static["providers"]["file"]["filename"].endswith("dynamic.yml")
    assert "websecure" in static["entryPoints"]
