"""The shipped examples pass their own cases and validate against the JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from gateway.canonical import canonical_path
from policies import load_policy_set
from policies.testing import default_policy_paths, load_case_file, run_case

EXAMPLES = Path(__file__).parents[3] / "policies" / "examples"
SCHEMA = json.loads((EXAMPLES.parent / "schema" / "policy.schema.json").read_text())
POLICIES = sorted(p for p in EXAMPLES.glob("*.yaml") if not p.name.endswith(".test.yaml"))


def test_there_are_examples_for_each_common_case() -> None:
    assert len(POLICIES) >= 5
    for policy in POLICIES:
        assert policy.with_name(policy.stem + ".test.yaml").exists()


@pytest.mark.parametrize("case_path", sorted(EXAMPLES.glob("*.test.yaml")), ids=lambda p: p.name)
def test_example_cases_pass(case_path: Path) -> None:
    case_file = load_case_file(case_path)
    policy = load_policy_set(default_policy_paths(case_file))
    # Cases are decided on the canonical path, as the gateway and `policy test` do.
    results = [run_case(policy, case, canonical_path) for case in case_file.cases]
    assert results
    assert [r.message for r in results if not r.passed] == []


@pytest.mark.parametrize("policy_path", POLICIES, ids=lambda p: p.name)
def test_examples_validate_against_the_schema(policy_path: Path) -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.validate(
        yaml.safe_load(policy_path.read_text()), SCHEMA, cls=jsonschema.Draft202012Validator
    )


def test_schema_refuses_an_unknown_key() -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"rules": [{"name": "a", "actoin": "deny"}]}, SCHEMA)
