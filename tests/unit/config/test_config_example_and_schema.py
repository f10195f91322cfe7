# ruff: noqa: E501 - expected messages are kept whole, as an operator reads them
"""config.example.yaml loads cleanly and shows the defaults; the JSON schema accepts it
and names exactly the keys the loader and the model know (so none of them can drift)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from gateway.config import load_config
from gateway.config.fields import accepted_keys
from gateway.config.loader import TOP_LEVEL_KEYS
from gateway.config.model import (
    Branding,
    Config,
    FooterLink,
    GeoipConfig,
    RouteConfig,
    TenantConfig,
)
from gateway.config.sections import SECTIONS
from gateway.config.tenants import (
    BRANDING_FIELDS,
    FOOTER_LINK_FIELDS,
    ROUTE_FIELDS,
    TENANT_FIELDS,
)

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "config.example.yaml"
SCHEMA = json.loads((ROOT / "gateway" / "schema" / "config.schema.json").read_text())


def field_names(model: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(model)}


def test_the_example_loads_cleanly() -> None:
    config = load_config(EXAMPLE, {})
    assert [t.id for t in config.tenants] == ["example"]
    assert config.storage == f"sqlite:///{ROOT}/authgate.db"


def test_the_example_shows_the_defaults() -> None:
    config = load_config(EXAMPLE, {})
    for section in SECTIONS:
        assert getattr(config, section.name) == section.model(), section.name
    tenant = config.tenants[0]
    defaults = TenantConfig(id="x", name="x", domains=("x",))
    assert tenant.branding == Branding()
    assert (tenant.login_methods, tenant.mfa_methods) == (defaults.login_methods, defaults.mfa_methods)
    route = tenant.routes[0]
    assert dataclasses.replace(route, host="h", upstream="u") == RouteConfig(host="h", upstream="u")


def test_the_example_documents_every_key() -> None:
    text = EXAMPLE.read_text()
    for section in SECTIONS:
        for f in section.fields:
            assert f"{f.name}:" in text, f"{section.name}.{f.name}"
    for f in (*TENANT_FIELDS, *BRANDING_FIELDS, *ROUTE_FIELDS):
        assert f"{f.name}:" in text, f.name


def test_the_schema_is_valid_and_accepts_the_example() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.Draft202012Validator(SCHEMA).validate(yaml.safe_load(EXAMPLE.read_text()))


@pytest.mark.parametrize(
    "bad",
    [
        {"tenants": []},
        {"tenants": [{"id": "a", "domains": ["a.test"]}], "sever": {}},
        {"tenants": [{"id": "a", "domains": ["a.test"], "routes": [{"host": "a.test"}]}]},
        {"tenants": [{"id": "A", "domains": ["a.test"]}]},
        {"tenants": [{"id": "a", "domains": ["a.test"]}], "sessions": {"lifetime": "12x"}},
    ],
)
def test_the_schema_refuses_what_the_loader_refuses(bad: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(SCHEMA).validate(bad)


def test_schema_top_level_keys_match_the_loader_and_the_model() -> None:
    assert set(SCHEMA["properties"]) == set(TOP_LEVEL_KEYS)
    model_keys = field_names(Config) - {"source"}
    assert model_keys <= set(TOP_LEVEL_KEYS)
    assert set(TOP_LEVEL_KEYS) - model_keys == {"storage_file"}


@pytest.mark.parametrize("section", SECTIONS, ids=lambda s: s.name)
def test_schema_section_keys_match_the_loader_and_the_model(section: Any) -> None:
    keys = set(accepted_keys(section.fields))
    assert set(SCHEMA["properties"][section.name]["properties"]) == keys
    assert {f.name for f in section.fields} | {
        k for k in keys if k.endswith("_file") and k in field_names(section.model)
    } == field_names(section.model)


@pytest.mark.parametrize(
    ("definition", "fields", "model", "not_keys"),
    [
        ("tenant", TENANT_FIELDS, TenantConfig, set()),
        ("route", ROUTE_FIELDS, RouteConfig, {"identity_header_map"}),
        ("branding", BRANDING_FIELDS, Branding, set()),
    ],
)
def test_schema_tenant_keys_match_the_loader_and_the_model(
    definition: str, fields: Any, model: Any, not_keys: set[str]
) -> None:
    keys = set(accepted_keys(fields))
    assert set(SCHEMA["$defs"][definition]["properties"]) == keys
    assert keys == field_names(model) - not_keys


def test_footer_links_and_geoip_keys_match() -> None:
    footer = SCHEMA["$defs"]["branding"]["properties"]["footer_links"]["items"]["properties"]
    assert set(footer) == set(accepted_keys(FOOTER_LINK_FIELDS)) == field_names(FooterLink)
    assert set(SCHEMA["properties"]["geoip"]["properties"]) == field_names(GeoipConfig)
