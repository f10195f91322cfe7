"""`.ci/floors.txt` pins every dependency at the lowest version pyproject.toml allows,
so that .ci/run's second pass tests what an installer may really pick."""

from __future__ import annotations

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


def floors() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in FLOORS.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = Version(version)
    return pins


def declared_floors() -> dict[str, Version]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    found: dict[str, Version] = {}
    for text in project["dependencies"]:
        requirement = Requirement(text)
        lows = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
        assert lows, f"{text}: no lower bound"
        found[canonicalize_name(requirement.name)] = max(lows)
    return found


def test_every_dependency_is_pinned_at_its_floor() -> None:
    pins, declared = floors(), declared_floors()
    assert {name: pins.get(name) for name in declared} == declared
    assert set(pins) - set(declared) == VIA_EXTRAS


def test_ci_runs_the_second_pass_with_the_floors() -> None:
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"pip install .*-c \.ci/floors\.txt", script)
