"""Backup codes: ten one-time codes, shown once, stored as keyed hashes.

Each code is 10 characters of base32 (50 bits), shown as `ABCDE-FGHIJ`.
Storage: HMAC-SHA256 under a server key derived from the encryption key (not
argon2). Why: 50 random bits cannot be guessed online (attempts are rate
limited and a code works once), and with a keyed hash a stolen database alone
gives nothing to brute-force offline; the key lives outside the database. A
slow hash would cost ten argon2 runs per attempt (one per stored code, since a
salted hash cannot be looked up), a CPU lever for anyone who can submit codes.
The user id is part of the MAC, so one user's hashes say nothing about another's.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable

from gateway.stores.credentials import BackupCodeCount, CredentialStore

__all__ = ["CODE_COUNT", "BackupCodes", "normalize_backup_code"]

CODE_COUNT = 10
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"  # base32: 5 bits a character
_LENGTH = 10


def normalize_backup_code(code: str) -> str | None:
    """Upper case without spaces or dashes; None when it cannot be a code."""
    cleaned = "".join(c for c in code if c not in " -\t").upper()
    if len(cleaned) != _LENGTH or any(c not in _ALPHABET for c in cleaned):
        return None
    return cleaned


def _new_code() -> str:
    raw = "".join(secrets.choice(_ALPHABET) for _ in range(_LENGTH))
    return f"{raw[:5]}-{raw[5:]}"


class BackupCodes:
    def __init__(
        self, store: CredentialStore, key: bytes, *, now: Callable[[], float] = time.time
    ) -> None:
        if len(key) < 32:
            raise ValueError("the backup code key must be at least 32 bytes")
        self._store = store
        self._key = key
        self._now = now

    def _hash(self, user_id: str, normalized: str) -> str:
        message = f"{user_id}\0{normalized}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    async def regenerate(self, tenant: str, user_id: str) -> tuple[str, ...]:
        """New codes replace every old one; the plain codes exist only in the return value."""
        codes = tuple(_new_code() for _ in range(CODE_COUNT))
        hashes = tuple(self._hash(user_id, c.replace("-", "")) for c in codes)
        await self._store.replace_backup_codes(tenant, user_id, hashes, self._now())
        return codes

    async def use(self, user_id: str, code: str) -> bool:
        """True once per valid code; the code is spent by this call."""
        normalized = normalize_backup_code(code)
        if normalized is None:
            return False
        return await self._store.consume_backup_code(
            user_id, self._hash(user_id, normalized), self._now()
        )

    async def remaining(self, user_id: str) -> BackupCodeCount:
        return await self._store.count_backup_codes(user_id)
