"""Secrets at rest (TOTP seeds, JWT private keys): AES-256-GCM with the configured key.

The operator's key is any string of at least 32 characters (or a file holding
one); HKDF-SHA256 turns it into the AES key, so a passphrase and a random base64
string both work. Each value is bound to what it is (`purpose`, passed as GCM
associated data), so a ciphertext copied from one column to another fails to open.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.config.model import Config
from gateway.errors import AuthgateError

log = logging.getLogger("authgate.secrets")

_VERSION = b"\x01"
_NONCE_BYTES = 12
MIN_KEY_CHARS = 32


class SecretBoxError(AuthgateError):
    """A value could not be decrypted: wrong key, or the data was tampered with."""


class SecretBox:
    def __init__(self, key_material: str | bytes) -> None:
        material = key_material.encode() if isinstance(key_material, str) else key_material
        if len(material) < MIN_KEY_CHARS:
            raise ValueError(f"the encryption key must be at least {MIN_KEY_CHARS} characters")
        self._material = material
        self._aead = AESGCM(self.derive("authgate secretbox v1"))

    def derive(self, purpose: str) -> bytes:
        """A 32-byte key of its own for `purpose` (CSRF HMAC, …), from the same secret."""
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose.encode()).derive(
            self._material
        )

    def encrypt(self, plaintext: bytes, purpose: str) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext, purpose.encode())

    def decrypt(self, blob: bytes, purpose: str) -> bytes:
        if len(blob) < 1 + _NONCE_BYTES + 16 or blob[:1] != _VERSION:
            raise SecretBoxError("not an authgate secret (unknown format)")
        nonce, body = blob[1 : 1 + _NONCE_BYTES], blob[1 + _NONCE_BYTES :]
        try:
            return self._aead.decrypt(nonce, body, purpose.encode())
        except InvalidTag:
            raise SecretBoxError("cannot decrypt: wrong encryption key or tampered data") from None


def default_key_file(config: Config) -> Path:
    return config.source.parent / "encryption.key"


def load_secret_box(config: Config) -> SecretBox:
    """The configured key; with none configured, a key file beside the config, created
    once (0600) so the embedded defaults work with zero set-up."""
    if config.secrets.encryption_key:
        return SecretBox(config.secrets.encryption_key)
    path = config.secrets.encryption_key_file or default_key_file(config)
    if not path.exists() and config.secrets.encryption_key_file is None:
        log.warning("no secrets.encryption_key configured; generating %s", path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(48) + "\n")
    return SecretBox(path.read_text().strip())
