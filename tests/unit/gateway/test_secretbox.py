"""Secrets at rest: AES-GCM under the operator's key, bound to their purpose."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from gateway.config.model import Config, SecretsConfig, TenantConfig
from gateway.secretbox import SecretBox, SecretBoxError, load_secret_box

KEY = "k" * 32


def test_round_trip_and_fresh_nonce_each_time() -> None:
    box = SecretBox(KEY)
    a = box.encrypt(b"seed", "totp")
    b = box.encrypt(b"seed", "totp")
    assert a != b
    assert box.decrypt(a, "totp") == b"seed"
    assert b"seed" not in a


def test_wrong_key_wrong_purpose_and_tampering_fail() -> None:
    blob = SecretBox(KEY).encrypt(b"seed", "totp")
    with pytest.raises(SecretBoxError):
        SecretBox("x" * 32).decrypt(blob, "totp")
    with pytest.raises(SecretBoxError):
        SecretBox(KEY).decrypt(blob, "jwt-signing-key")
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(SecretBoxError):
        SecretBox(KEY).decrypt(tampered, "totp")
    with pytest.raises(SecretBoxError):
        SecretBox(KEY).decrypt(b"short", "totp")


def test_short_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 32"):
        SecretBox("too short")


def _config(tmp_path: Path, secrets: SecretsConfig) -> Config:
    tenant = TenantConfig(id="t", name="t", domains=("t.test",))
    return Config(source=tmp_path / "config.yaml", tenants=(tenant,), secrets=secrets)


def test_without_a_configured_key_one_is_generated_once_private(tmp_path: Path) -> None:
    box = load_secret_box(_config(tmp_path, SecretsConfig()))
    key_file = tmp_path / "encryption.key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    again = load_secret_box(_config(tmp_path, SecretsConfig()))
    assert again.decrypt(box.encrypt(b"x", "p"), "p") == b"x"


def test_a_configured_key_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_secret_box(_config(tmp_path, SecretsConfig(encryption_key_file=tmp_path / "nope")))
