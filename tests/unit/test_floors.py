"""`.ci/floors.txt` pins every dependency, and every package of the test and otel extras,
at the lowest version pyproject.toml allows, so that .ci/run's second pass tests what an
installer may really pick."""

from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
FLOORS = ROOT / ".ci" / "floors.txt"
# Pulled in by an extra of ours (redis[hiredis]), not named on its own.
VIA_EXTRAS = {"hiredis"}
# The extras whose floors the second pass installs (authgate[otel] is what operators add).
EXTRAS = ("test", "otel")
# Linters of the test extra: .ci/run runs them in .venv, at the newest versions, never in
# the floors' virtualenv, so they have no floor to test (types-PyYAML declares none).
LINTERS = {"ruff", "mypy", "types-pyyaml"}


def floors() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in FLOORS.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = Version(version)
    return pins


def declared_floors() -> dict[str, Version]:
    """The lower bound of every runtime dependency and of every package the test and otel
    extras name (but the linters); a package named twice must have one floor."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    found: dict[str, Version] = {}
    for text in [*project["dependencies"], *(t for extra in EXTRAS for t in extras[extra])]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        if name in LINTERS:
            continue
        lows = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
        assert lows, f"{text}: no lower bound"
        assert found.setdefault(name, max(lows)) == max(lows), f"{text}: two floors"
    return found


def test_every_dependency_is_pinned_at_its_floor() -> None:
    pins, declared = floors(), declared_floors()
    assert {name: pins.get(name) for name in declared} == declared
    assert set(pins) - set(declared) == VIA_EXTRAS


def test_the_linters_are_the_only_packages_of_the_extras_left_unpinned() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    named = {
        canonicalize_name(Requirement(text).name)
        for extra in EXTRAS
        for text in project["optional-dependencies"][extra]
    }
    assert named - set(floors()) == LINTERS


def test_ci_runs_the_second_pass_with_the_floors() -> None:
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"pip install .*'\.\[test,otel\]' -c \.ci/floors\.txt", script)


def test_the_otel_extra_imports() -> None:
    # The tracing tests (tests/unit/gateway/test_metrics.py) skip when OpenTelemetry's SDK
    # cannot be imported; a [test] install has it, so a failed import must fail here.
    for module in (
        "opentelemetry.trace",
        "opentelemetry.sdk.trace",
        "opentelemetry.sdk.trace.export",
        "opentelemetry.sdk.trace.export.in_memory_span_exporter",
    ):
        importlib.import_module(module)
