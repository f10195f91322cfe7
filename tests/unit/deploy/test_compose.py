"""deploy/docker-compose.yml: two gateways behind nginx, sharing PostgreSQL and Redis,
migrated first, with a config the gateway accepts. (No Docker engine here: the file
is parsed and checked, not run.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from gateway.config.loader import load_config
from policies import load_policy_set
from tests.unit.deploy.tools import DEPLOY

COMPOSE = DEPLOY / "docker-compose.yml"


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())  # resolves the << anchors
    return loaded


def services() -> dict[str, Any]:
    found: dict[str, Any] = compose()["services"]
    return found


def test_the_stack_has_the_gateway_its_stores_nginx_and_a_demo_upstream() -> None:
    assert {"authgate", "postgres", "redis", "nginx", "whoami", "migrate"} <= services().keys()


def test_two_gateway_replicas_run_after_migrations() -> None:
    gateway = services()["authgate"]
    assert gateway["deploy"]["replicas"] >= 2
    assert gateway["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services()["migrate"]["command"][0] == "migrate"
    assert services()["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_the_gateway_image_is_built_from_the_deploy_dockerfile() -> None:
    build = services()["authgate"]["build"]
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == (
        DEPLOY / "Dockerfile"
    )


def test_the_gateways_run_read_only_without_capabilities() -> None:
    gateway = services()["authgate"]
    assert gateway["read_only"] is True
    assert gateway["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in gateway["security_opt"]


def test_only_nginx_publishes_a_port() -> None:
    published = [name for name, service in services().items() if service.get("ports")]
    assert published == ["nginx"]


def test_every_mounted_file_exists_except_the_generated_key() -> None:
    for name, service in services().items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), f"{name}: {source}"
    key = compose()["secrets"]["authgate_encryption_key"]["file"]
    assert key == "./compose/encryption.key"  # made by the operator, see the file's header


def test_authgate_trusts_exactly_nginxs_fixed_address(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("k" * 40)
    environ = {
        "AUTHGATE_STORAGE": "postgresql://authgate:pw@postgres:5432/authgate",
        "AUTHGATE_SECRETS_ENCRYPTION_KEY_FILE": str(tmp_path / "key"),
    }
    config = load_config(DEPLOY / "compose" / "config.yaml", environ=environ)
    nginx_address = services()["nginx"]["networks"]["authgate"]["ipv4_address"]
    assert [str(n) for n in config.server.trusted_proxies] == [f"{nginx_address}/32"]
    assert config.sessions.store.startswith("redis://redis:")
    for tenant in config.tenants:
        load_policy_set(tenant.policies)


def test_nginx_uses_the_shared_snippets() -> None:
    volumes = services()["nginx"]["volumes"]
    assert "./nginx/snippets:/etc/nginx/snippets:ro" in volumes
    conf = (DEPLOY / "compose" / "nginx" / "authgate.conf").read_text()
    assert "include snippets/authgate-authrequest.conf;" in conf
    assert "include snippets/authgate-identity.conf;" in conf
