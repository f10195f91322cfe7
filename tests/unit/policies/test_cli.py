"""`authgate policy check|explain|test` through the real CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import main

EXAMPLES = Path(__file__).parents[3] / "policies" / "examples"


def test_check_accepts_valid_files(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "check", str(EXAMPLES / "geo-fenced.yaml")]) == 0
    assert "ok (3 rules" in capsys.readouterr().out


def test_check_reports_located_errors_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - name: a\n    actoin: deny\n    action: deny\n")
    assert main(["policy", "check", str(bad)]) == 2
    assert (
        f"{bad}:3: rules[0].actoin: unknown key (did you mean 'action'?)" in capsys.readouterr().err
    )


def test_explain_prints_decision_rule_and_trace_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "policy",
            "explain",
            "--policy",
            str(EXAMPLES / "admin-2fa-office.yaml"),
            "https://app.example.com/admin/users",
            "--ip",
            "10.0.0.1",
            "--user",
            "root",
            "--roles",
            "admin",
            "--amr",
            "pwd",
            "--auth-age",
            "1m",
            "--json",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["decision"], out["rule"]) == ("SECOND_FACTOR", "admin-from-office")
    assert out["trace"][0]["outcome"] == "held"


def test_explain_text_and_permissions(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "policy",
            "explain",
            "--policy",
            str(EXAMPLES / "api-keys.yaml"),
            "https://api.example.com/v1/orders",
            "--method",
            "POST",
            "--user",
            "bot",
            "--permissions",
            "api.write",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "decision: ALLOW" in out and "rule:     api-write" in out and "trace:" in out


def test_explain_refuses_a_path_the_gateway_would_refuse(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(
        [
            "policy",
            "explain",
            "--policy",
            str(EXAMPLES / "api-keys.yaml"),
            "https://api.example.com/a%2fb",
        ]
    )
    assert code == 2


def test_test_runs_cases_and_reports_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["policy", "test", *map(str, sorted(EXAMPLES.glob("*.test.yaml")))]) == 0
    assert "PASS" in capsys.readouterr().out
    failing = tmp_path / "f.test.yaml"
    failing.write_text(
        f"policies: [{EXAMPLES / 'geo-fenced.yaml'}]\ncases:\n"
        "  - {name: wrong, request: {url: 'https://hr.example.com/', country: FR}, expect: ALLOW}\n"
    )
    assert main(["policy", "test", str(failing)]) == 1
    assert "FAIL" in capsys.readouterr().out
    broken = tmp_path / "b.test.yaml"
    broken.write_text("cases:\n  - {name: x, request: {url: nope}, expect: MAYBE}\n")
    assert main(["policy", "test", str(broken)]) == 2
    err = capsys.readouterr().err
    assert f"{broken}:2: cases[0].expect: unknown decision 'MAYBE'" in err


def test_test_with_a_config_picks_the_tenant_by_host(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "tenants:\n  - id: hr\n    name: HR\n    domains: [hr.example.com]\n"
        f"    policies: [{EXAMPLES / 'geo-fenced.yaml'}]\n"
        "    routes: [{host: hr.example.com, upstream: 'http://127.0.0.1:9'}]\n"
    )
    cases = tmp_path / "cases.yaml"
    cases.write_text(
        "cases:\n  - {name: gb, request: {url: 'https://hr.example.com/payroll/x', country: GB},"
        " principal: {user: p, amr: [pwd, otp]}, expect: ALLOW}\n"
    )
    code = main(["policy", "test", "-c", str(config), str(cases)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
