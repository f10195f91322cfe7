"""Every YAML file in deploy/ parses (all documents), and Kubernetes-shaped documents
name what they are."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.unit.deploy.tools import DEPLOY

YAML_FILES = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])


def test_the_deploy_kit_has_yaml_files() -> None:
    assert len(YAML_FILES) >= 10


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_document_parses_to_a_mapping(path: Path) -> None:
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert documents
    assert all(isinstance(d, dict) for d in documents)


@pytest.mark.parametrize(
    "path", sorted((DEPLOY / "kubernetes").glob("*.yaml")), ids=lambda p: p.name
)
def test_kubernetes_documents_have_kind_and_name(path: Path) -> None:
    for document in yaml.safe_load_all(path.read_text()):
        assert document["apiVersion"]
        assert document["kind"]
        if document["kind"] != "Kustomization":
            assert document["metadata"]["name"]
