"""Helpers: write a config.yaml into a temporary folder and load it from there, so that
problems read `config.yaml:LINE: …` exactly as an operator would see them."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config
from gateway.config.model import Config

TENANTS = """\
tenants:
  - id: acme
    domains: [acme.test, "*.acme.test"]
"""

Load = Callable[..., Config]
Problems = Callable[..., list[str]]


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _write(folder: Path, text: str) -> Path:
    """Write `text` dedented; a text without `tenants:` gets the one-tenant block appended."""
    text = textwrap.dedent(text)
    if "tenants:" not in text:
        text += TENANTS
    path = folder / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return Path("config.yaml")


@pytest.fixture
def load(folder: Path) -> Load:
    """Load `text` (dedented) as config.yaml; `env` replaces the environment."""

    def run(text: str, env: Mapping[str, str] | None = None) -> Config:
        return load_config(_write(folder, text), env or {})

    return run


@pytest.fixture
def problems(folder: Path) -> Problems:
    """The problems loading `text` reports, as the lines an operator reads."""

    def run(text: str, env: Mapping[str, str] | None = None) -> list[str]:
        with pytest.raises(ConfigError) as caught:
            load_config(_write(folder, text), env or {})
        return [str(p) for p in caught.value.problems]

    return run
