# ruff: noqa: E501 - expected messages are kept whole, as an operator reads them
"""`authgate check-config`: ok and exit 0, or every problem on stderr and exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import main
from tests.unit.config.conftest import TENANTS

BAD = "server:\n  workers: 0\ntenants:\n  - id: acme\n    domains: acme.test\n"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No AUTHGATE_* variables from the outside; work in a temporary folder."""
    for name in list(os.environ):
        if name.startswith("AUTHGATE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_good_config_prints_ok_and_a_summary(clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (clean_env / "config.yaml").write_text(
        TENANTS + "    routes:\n      - {host: acme.test, upstream: 'http://127.0.0.1:9'}\n"
    )
    assert main(["check-config", "-c", "config.yaml"]) == 0
    out, err = capsys.readouterr()
    assert out == "ok: config.yaml: 1 tenant, 1 route, 0 policy files\n"
    assert err == ""


def test_a_bad_config_prints_every_problem_and_exits_2(
    clean_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (clean_env / "config.yaml").write_text(BAD)
    assert main(["-c", "config.yaml", "check-config"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        'config.yaml:2: server.workers: expected "auto" or an integer of at least 1',
        "config.yaml:5: tenants[0].domains: expected a list of host names",
    ]


def test_the_config_defaults_to_authgate_config_then_config_yaml(
    clean_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (clean_env / "config.yaml").write_text(TENANTS)
    (clean_env / "other.yaml").write_text(BAD)
    assert main(["check-config"]) == 0
    monkeypatch.setenv("AUTHGATE_CONFIG", "other.yaml")
    assert main(["check-config"]) == 2
    assert "other.yaml:2: server.workers" in capsys.readouterr().err


def test_a_missing_file_exits_2(clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "-c", "absent.yaml"]) == 2
    assert capsys.readouterr().err == "absent.yaml: file not found\n"


def test_environment_problems_are_reported_too(
    clean_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (clean_env / "config.yaml").write_text(TENANTS)
    monkeypatch.setenv("AUTHGATE_SESSIONS_LIFETIME", "soon")
    assert main(["check-config"]) == 2
    assert capsys.readouterr().err == (
        "$AUTHGATE_SESSIONS_LIFETIME: sessions.lifetime: expected a duration like 90s, 15m, 12h or 30d\n"
    )


def test_policy_files_are_checked_as_well(clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (clean_env / "good.yaml").write_text("version: 1\ndefault: deny\n")
    (clean_env / "config.yaml").write_text(TENANTS + "    policies: [good.yaml]\n")
    assert main(["check-config"]) == 0
    assert capsys.readouterr().out == "ok: config.yaml: 1 tenant, 0 routes, 1 policy file\n"
    (clean_env / "good.yaml").write_text("version: 1\ndefault: maybe\n")
    assert main(["check-config"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{clean_env / 'good.yaml'}:2: default:"), err


def test_python_dash_m_gateway_check_config(clean_env: Path) -> None:
    (clean_env / "config.yaml").write_text(BAD)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHGATE_")}
    root = Path(__file__).resolve().parents[3]
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "-c", "config.yaml"],
        capture_output=True, text=True, env=env, cwd=clean_env, timeout=60, check=False,
    )
    assert done.returncode == 2
    assert "config.yaml:5: tenants[0].domains: expected a list of host names" in done.stderr
