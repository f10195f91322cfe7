"""The Kubernetes manifests: the fields that make the gateway highly available, safe
to run, and correctly probed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config.loader import load_config
from policies import load_policy_set
from tests.unit.deploy.tools import DEPLOY

K8S = DEPLOY / "kubernetes"


def documents() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        found.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return found


def one(kind: str, name: str, namespace: str = "authgate") -> dict[str, Any]:
    matches = [
        d
        for d in documents()
        if d["kind"] == kind
        and d["metadata"]["name"] == name
        and d["metadata"].get("namespace") == namespace
    ]
    assert len(matches) == 1, f"{kind}/{name} in {namespace}: {len(matches)} found"
    return matches[0]


def gateway_container() -> dict[str, Any]:
    pod = one("Deployment", "authgate")["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "authgate"]
    return container


def test_the_deployment_runs_at_least_two_replicas_and_rolls_without_a_gap() -> None:
    spec = one("Deployment", "authgate")["spec"]
    assert spec["replicas"] >= 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_readiness_asks_ready_and_liveness_asks_health() -> None:
    container = gateway_container()
    assert container["readinessProbe"]["httpGet"]["path"] == "/.authgate/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/.authgate/health"
    port_names = {p["name"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"]["port"] in port_names


def test_the_gateway_runs_as_non_root_on_a_read_only_root_filesystem() -> None:
    pod = one("Deployment", "authgate")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    container = gateway_container()["securityContext"]
    assert container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"]["drop"] == ["ALL"]


def test_a_disruption_budget_keeps_a_gateway_up() -> None:
    pdb = one("PodDisruptionBudget", "authgate")
    deployment = one("Deployment", "authgate")
    assert pdb["spec"]["minAvailable"] >= 1
    assert pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    selector = pdb["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_the_service_selects_the_gateway_pods() -> None:
    service = one("Service", "authgate")
    labels = one("Deployment", "authgate")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["port"] == 8080


def test_config_policies_and_secrets_are_mounted_from_their_objects() -> None:
    pod = one("Deployment", "authgate")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in gateway_container()["volumeMounts"]}
    config_map = volumes[mounts["/etc/authgate/config.yaml"]]["configMap"]["name"]
    policies = volumes[mounts["/etc/authgate/policies"]]["configMap"]["name"]
    secret = volumes[mounts["/etc/authgate/secrets"]]["secret"]["secretName"]
    assert "config.yaml" in one("ConfigMap", config_map)["data"]
    assert one("ConfigMap", policies)["data"]
    assert {"encryption-key", "storage-url"} <= one("Secret", secret)["stringData"].keys()


def test_the_placeholder_key_is_too_short_for_the_gateway_to_start_with() -> None:
    from gateway.secretbox import MIN_KEY_CHARS, SecretBox

    key = one("Secret", "authgate-secrets")["stringData"]["encryption-key"]
    with pytest.raises(ValueError):
        SecretBox(key)
    assert len(key) < MIN_KEY_CHARS


def test_the_configmaps_hold_a_config_and_policies_the_gateway_accepts(tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    (tmp_path / "config.yaml").write_text(
        one("ConfigMap", "authgate-config")["data"]["config.yaml"]
    )
    for name, text in one("ConfigMap", "authgate-policies")["data"].items():
        (tmp_path / "policies" / name).write_text(text)
    (tmp_path / "key").write_text("k" * 40)
    environ = {
        "AUTHGATE_STORAGE": "postgresql://authgate@db.test:5432/authgate",
        "AUTHGATE_SECRETS_ENCRYPTION_KEY_FILE": str(tmp_path / "key"),
    }
    config = load_config(tmp_path / "config.yaml", environ=environ)
    assert config.server.listen[0].host == "0.0.0.0"
    assert config.server.trusted_proxies
    for tenant in config.tenants:
        load_policy_set(tenant.policies)


def test_the_ingress_example_asks_authgate_and_serves_its_pages_unprotected() -> None:
    app = one("Ingress", "wiki", namespace="wiki")
    annotations = app["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/auth-url"].endswith("/.authgate/verify")
    assert "/.authgate/login" in annotations["nginx.ingress.kubernetes.io/auth-signin"]
    copied = annotations["nginx.ingress.kubernetes.io/auth-response-headers"].split(",")
    assert copied == [
        "Remote-User",
        "Remote-Email",
        "Remote-Name",
        "Remote-Groups",
        "X-Authgate-Jwt",
    ]
    pages = one("Ingress", "wiki-authgate", namespace="wiki")
    assert not any(
        k.startswith("nginx.ingress.kubernetes.io/auth")
        for k in pages["metadata"].get("annotations", {})
    )
    (path,) = pages["spec"]["rules"][0]["http"]["paths"]
    assert path["path"] == "/.authgate/"
    assert (
        path["backend"]["service"]["name"]
        == one("Service", "authgate", namespace="wiki")["metadata"]["name"]
    )


def test_kustomize_builds_the_gateway_objects() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (optional: only this check needs it)")
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(result.stdout) if d)
    assert kinds == sorted(
        [
            "Namespace",
            "ConfigMap",
            "ConfigMap",
            "Secret",
            "Deployment",
            "Service",
            "PodDisruptionBudget",
        ]
    )
