"""deploy/Dockerfile, read as instructions (no Docker engine here to build it):
multi-stage, non-root, a curl-free health check, the documented entrypoint."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from tests.unit.deploy.tools import DEPLOY, REPO

DOCKERFILE = DEPLOY / "Dockerfile"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def instructions() -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, arguments = line.partition(" ")
            found.append(Instruction(keyword.upper(), arguments.strip()))
    return found


def runtime_stage() -> list[Instruction]:
    steps = instructions()
    last_from = max(i for i, step in enumerate(steps) if step.keyword == "FROM")
    return steps[last_from:]


def test_the_image_is_built_in_two_stages_from_a_wheel() -> None:
    stages = [step.arguments for step in instructions() if step.keyword == "FROM"]
    assert len(stages) == 2
    assert stages[0].endswith("AS build")
    runtime = " ".join(step.arguments for step in runtime_stage() if step.keyword == "RUN")
    assert "from=build" in runtime
    assert "--no-index" in runtime


def test_the_runtime_runs_as_a_non_root_user() -> None:
    users = [step.arguments for step in runtime_stage() if step.keyword == "USER"]
    assert users
    assert users[-1].split(":")[0] not in ("0", "root")


def test_the_health_check_asks_health_with_python_not_curl() -> None:
    (check,) = [step.arguments for step in runtime_stage() if step.keyword == "HEALTHCHECK"]
    command = json.loads(check[check.index("CMD") + 3 :].strip())
    assert command[0] == "python"
    assert "urllib.request" in command[-1]
    assert "curl" not in check
    env = " ".join(step.arguments for step in runtime_stage() if step.keyword == "ENV")
    assert "AUTHGATE_HEALTH_URL=http://127.0.0.1:8080/.authgate/health" in env


def test_entrypoint_and_command_serve_the_mounted_config() -> None:
    steps = runtime_stage()
    (entrypoint,) = [json.loads(s.arguments) for s in steps if s.keyword == "ENTRYPOINT"]
    (command,) = [json.loads(s.arguments) for s in steps if s.keyword == "CMD"]
    assert entrypoint == ["authgate"]
    assert command == ["serve", "-c", "/etc/authgate/config.yaml"]


def test_everything_the_build_copies_exists_and_is_let_through_dockerignore() -> None:
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for step in instructions():
        if step.keyword == "COPY" and "--from" not in step.arguments:
            *sources, _ = step.arguments.split()
            for source in sources:
                assert (REPO / source).exists(), source
                assert source.rstrip("/") in allowed, source
