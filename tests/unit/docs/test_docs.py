"""The operator documentation stays true: the configuration reference is regenerated
from the schema and must match, every example key is in it, every relative link
resolves, and every `authgate <command>` the docs mention exists."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.schema import reference

ROOT = Path(__file__).resolve().parents[3]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
LINKED = [*PAGES, ROOT / "README.md"]
_LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")
_COMMAND = re.compile(r"(?:\bauthgate|python -m gateway) ([a-z][a-z-]+)\b")
_CODE = re.compile(r"```.*?```|`[^`\n]+`", re.DOTALL)


def _generated() -> str:
    schema = json.loads(reference.SCHEMA_PATH.read_text(encoding="utf-8"))
    example = reference.EXAMPLE_PATH.read_text(encoding="utf-8")
    return reference.document(reference.INTRO, schema, example)


def test_the_configuration_reference_matches_the_schema() -> None:
    committed = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert committed == _generated(), (
        "docs/configuration.md is stale: python -m gateway.schema.reference > docs/configuration.md"
    )


def test_the_reference_module_runs_as_a_program() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway.schema.reference"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout == _generated()


def _dotted_keys(node: object, prefix: str = "") -> set[str]:
    keys: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            keys.add(path)
            keys |= _dotted_keys(value, path)
    elif isinstance(node, list):
        for item in node:
            keys |= _dotted_keys(item, prefix)
    return keys


def test_every_key_of_the_example_config_is_in_the_reference() -> None:
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    example = yaml.safe_load(reference.EXAMPLE_PATH.read_text(encoding="utf-8"))
    missing = sorted(k for k in _dotted_keys(example) if f"`{k}`" not in text)
    assert not missing


def test_a_commented_out_key_keeps_its_own_comment() -> None:
    comments = reference.example_comments(
        "secrets:\n"
        "  # Key in a file.\n"
        "  # key_file: /etc/k\n"
        "  # null: prose, not a key\n"
        "  size: 1\n"
    )
    assert comments == {
        "secrets.key_file": "Key in a file.",
        "secrets.size": "null: prose, not a key",
    }


@pytest.mark.parametrize("page", LINKED, ids=lambda p: p.name)
def test_every_relative_link_points_to_an_existing_file(page: Path) -> None:
    broken = []
    for match in _LINK.finditer(page.read_text(encoding="utf-8")):
        target = match.group("target")
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # http(s), mailto: and links inside the page
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            broken.append(target)
    assert not broken


def _cli_commands() -> set[str]:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    # argparse lists sub-commands as "    name    help" under "positional arguments".
    return set(re.findall(r"^ {4}([a-z][a-z-]+)\b", done.stdout, re.MULTILINE))


def test_the_docs_name_only_commands_that_exist() -> None:
    # Commands are looked for in code (`authgate user add`, fenced blocks), not in
    # prose, where "authgate is …" is a sentence.
    commands = _cli_commands()
    assert {"serve", "demo", "migrate", "policy", "user"} <= commands
    mentioned = {
        (page.name, name)
        for page in LINKED
        for code in _CODE.findall(page.read_text(encoding="utf-8"))
        for name in _COMMAND.findall(code)
    }
    assert sorted(m for m in mentioned if m[1] not in commands) == []


def test_the_documentation_has_its_pages() -> None:
    names = {p.name for p in PAGES}
    assert {
        "README.md",
        "getting-started.md",
        "configuration.md",
        "policies.md",
        "integrations.md",
        "legacy-app.md",
        "multi-tenant.md",
        "scaling.md",
        "security.md",
        "operations.md",
    } <= names
