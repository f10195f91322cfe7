"""deploy/caddy/Caddyfile passes Debian's caddy (`validate` and `adapt`), and the
adapted JSON asks authgate and copies exactly its identity headers."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.unit.deploy.tools import DEPLOY, require_tool

CADDYFILE = DEPLOY / "caddy" / "Caddyfile"
IDENTITY = ["Remote-User", "Remote-Email", "Remote-Name", "Remote-Groups", "X-Authgate-Jwt"]


def caddy(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # Caddy writes its storage under $HOME / $XDG_*: keep it in the test's folder.
    environ = {
        **os.environ,
        "HOME": str(tmp_path),
        "XDG_DATA_HOME": str(tmp_path),
        "XDG_CONFIG_HOME": str(tmp_path),
    }
    return subprocess.run(
        [require_tool("caddy"), *args, "--config", str(CADDYFILE), "--adapter", "caddyfile"],
        capture_output=True,
        text=True,
        timeout=60,
        env=environ,
        check=False,
    )


def handlers(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if "handler" in node:
            yield node
        for value in node.values():
            yield from handlers(value)
    elif isinstance(node, list):
        for item in node:
            yield from handlers(item)


def test_caddy_validates_the_caddyfile(tmp_path: Path) -> None:
    result = caddy(tmp_path, "validate")
    assert result.returncode == 0, result.stderr


def test_forward_auth_asks_the_verify_endpoint_and_copies_identity_headers(
    tmp_path: Path,
) -> None:
    result = caddy(tmp_path, "adapt")
    assert result.returncode == 0, result.stderr
    adapted = json.loads(result.stdout)
    # forward_auth adapts to a reverse_proxy that rewrites to the verify URI and, on
    # 2xx, sets each copied header from the auth response.
    (auth,) = [
        h
        for h in handlers(adapted)
        if h["handler"] == "reverse_proxy" and h.get("rewrite", {}).get("uri")
    ]
    assert auth["rewrite"] == {"method": "GET", "uri": "/.authgate/verify"}
    assert auth["upstreams"] == [{"dial": "authgate:8080"}]
    copied = json.dumps(auth["handle_response"])
    for name in IDENTITY:
        assert f"{{http.reverse_proxy.header.{name}}}" in copied


def test_client_identity_headers_are_deleted_before_the_check(tmp_path: Path) -> None:
    adapted = json.loads(caddy(tmp_path, "adapt").stdout)
    order = [h for h in handlers(adapted) if h["handler"] in ("headers", "reverse_proxy")]
    deleted = [
        name
        for h in order
        if h["handler"] == "headers"
        for name in h.get("request", {}).get("delete", [])
    ]
    assert set(IDENTITY) <= set(deleted)
    first_auth = next(i for i, h in enumerate(order) if h.get("rewrite", {}).get("uri"))
    last_delete = max(i for i, h in enumerate(order) if h.get("request", {}).get("delete"))
    assert last_delete < first_auth
