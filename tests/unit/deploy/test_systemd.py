"""deploy/systemd/authgate.service: the hardening options are there, and systemd
itself accepts the unit (when systemd-analyze is installed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.unit.deploy.tools import DEPLOY

UNIT = DEPLOY / "systemd" / "authgate.service"


def service_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Service":
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("DynamicUser", "yes"),
        ("CapabilityBoundingSet", ""),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("RestrictNamespaces", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("LockPersonality", "yes"),
        ("SystemCallArchitectures", "native"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("LoadCredential", "encryption.key:/etc/authgate/encryption.key"),
    ],
)
def test_the_unit_sets(key: str, value: str) -> None:
    assert service_settings()[key] == [value]


def test_the_service_serves_the_config_it_checked_first() -> None:
    settings = service_settings()
    (start,) = settings["ExecStart"]
    (check,) = settings["ExecStartPre"]
    assert start.split()[1:] == ["serve", "-c", "/etc/authgate/config.yaml"]
    assert check.split()[1:] == ["check-config", "-c", "/etc/authgate/config.yaml"]
    assert settings["StateDirectory"] == ["authgate"]


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (optional: only this check needs it)")
    # verify insists that ExecStart exists; the unit's path is the operator's venv.
    unit = tmp_path / "authgate.service"
    unit.write_text(UNIT.read_text().replace("/opt/authgate/bin/authgate", "/bin/true"))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # unknown keys are only warnings: none allowed
