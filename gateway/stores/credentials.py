"""Second factors as stored: TOTP devices, WebAuthn credentials, backup codes.

`CredentialStore` is the Protocol; `SqlCredentialStore` implements it on the
storage database (SQLite or PostgreSQL, through `Database`). The store keeps
only what is safe at rest and knows no cryptography:

- a TOTP seed arrives already encrypted by the caller (`SecretBox`, purpose
  `totp_seed_purpose(...)`), like signing keys;
- a backup code arrives already hashed by the caller (see
  `gateway.identity.backup_codes`: HMAC-SHA256 with a server key);
- WebAuthn public keys are public.

What the store must get right is atomicity, because several worker processes
(and instances) verify factors at once: `use_totp_step`, `update_sign_count`
and `consume_backup_code` are each one conditional UPDATE, so of two concurrent
requests with the same code exactly one wins (SECURITY.md invariant 7).
"""
# ruff: noqa: S608

from __future__ import annotations

import builtins
import json
from dataclasses import dataclass
from typing import Protocol

from gateway.stores.database import Database, Row

__all__ = [
    "BackupCodeCount",
    "CredentialStore",
    "RemovedFactors",
    "SqlCredentialStore",
    "TotpDevice",
    "WebAuthnCredential",
    "totp_seed_purpose",
]


def totp_seed_purpose(device_id: str) -> str:
    """SecretBox purpose of one device's seed: a ciphertext copied onto another
    device's row (another user's) fails to decrypt."""
    return f"totp-seed:{device_id}"


# --- models --------------------------------------------------------------------


@dataclass(frozen=True)
class TotpDevice:
    id: str
    tenant: str
    user_id: str
    name: str
    secret_encrypted: bytes  # SecretBox(purpose=totp_seed_purpose(id)) of the base32 seed
    last_used_step: int  # highest accepted time step; a step <= this is refused
    created: float
    confirmed: bool  # False until the user proved the app works with one correct code


@dataclass(frozen=True)
class WebAuthnCredential:
    id: str  # our record id (shown in forms), not the authenticator's credential id
    tenant: str
    user_id: str
    name: str
    credential_id: bytes  # the authenticator's id, unique across the whole store
    public_key: bytes  # COSE public key
    sign_count: int
    transports: tuple[str, ...]
    aaguid: str
    backup_eligible: bool
    backed_up: bool
    user_handle: bytes
    created: float
    last_used: float | None = None


@dataclass(frozen=True)
class BackupCodeCount:
    total: int
    unused: int


@dataclass(frozen=True)
class RemovedFactors:
    totp_devices: int
    webauthn_credentials: int
    backup_codes: int


class CredentialStore(Protocol):
    # TOTP devices
    async def add_totp(self, device: TotpDevice) -> None: ...

    async def list_totp(self, user_id: str) -> list[TotpDevice]:
        """All of the user's devices (confirmed or not), oldest first."""

    async def get_totp(self, user_id: str, device_id: str) -> TotpDevice | None: ...

    async def confirm_totp(self, user_id: str, device_id: str, step: int) -> bool:
        """Activate an unconfirmed device with the step of its first correct code
        (that code is thereby used). False when already confirmed, gone, or not newer."""

    async def use_totp_step(self, device_id: str, step: int) -> bool:
        """Atomically accept `step` on a confirmed device if it is newer than the last
        accepted one. Of concurrent calls with the same step, at most one is True."""

    async def rename_totp(self, user_id: str, device_id: str, name: str) -> bool: ...

    async def remove_totp(self, user_id: str, device_id: str) -> bool: ...

    async def remove_unconfirmed_totp(self, user_id: str, older_than: float) -> int:
        """Drop abandoned enrolments."""

    # WebAuthn credentials
    async def add_webauthn(self, credential: WebAuthnCredential) -> None:
        """Insert; raises AlreadyExists when the credential id is registered already."""

    async def list_webauthn(self, user_id: str) -> list[WebAuthnCredential]: ...

    async def get_webauthn(self, user_id: str, record_id: str) -> WebAuthnCredential | None: ...

    async def get_webauthn_by_credential_id(
        self, tenant: str, credential_id: bytes
    ) -> WebAuthnCredential | None:
        """For an assertion (also passwordless): the credential in this tenant, or None."""

    async def update_sign_count(self, credential_id: bytes, new: int, at: float) -> bool:
        """Atomically store a newer signature counter (and last use). False when `new`
        does not exceed the stored counter — a possible clone, or a replay — except
        that an authenticator without a counter (stored 0, new 0) is accepted."""

    async def rename_webauthn(self, user_id: str, record_id: str, name: str) -> bool: ...

    async def remove_webauthn(self, user_id: str, record_id: str) -> bool: ...

    # backup codes
    async def replace_backup_codes(
        self, tenant: str, user_id: str, code_hashes: tuple[str, ...], created: float
    ) -> None:
        """Atomically discard the user's codes (used or not) and store these."""

    async def consume_backup_code(self, user_id: str, code_hash: str, at: float) -> bool:
        """Mark an unused code used; True exactly once per code, even under concurrency."""

    async def count_backup_codes(self, user_id: str) -> BackupCodeCount: ...

    # everything
    async def remove_all_for_user(self, user_id: str) -> RemovedFactors:
        """Every second factor and backup code of the user (admin reset-mfa)."""


# --- SQL implementation ------------------------------------------------------------

_TOTP_COLUMNS = "id, tenant, user_id, name, secret_encrypted, last_used_step, created, confirmed"

_WEBAUTHN_COLUMNS = (
    "id, tenant, user_id, name, credential_id, public_key, sign_count, transports, aaguid,"
    " backup_eligible, backed_up, user_handle, created, last_used"
)


def _totp(row: Row) -> TotpDevice:
    return TotpDevice(
        id=row[0],
        tenant=row[1],
        user_id=row[2],
        name=row[3],
        secret_encrypted=bytes(row[4]),
        last_used_step=int(row[5]),
        created=float(row[6]),
        confirmed=bool(row[7]),
    )


def _webauthn(row: Row) -> WebAuthnCredential:
    return WebAuthnCredential(
        id=row[0],
        tenant=row[1],
        user_id=row[2],
        name=row[3],
        credential_id=bytes(row[4]),
        public_key=bytes(row[5]),
        sign_count=int(row[6]),
        transports=tuple(str(t) for t in json.loads(row[7])),
        aaguid=row[8],
        backup_eligible=bool(row[9]),
        backed_up=bool(row[10]),
        user_handle=bytes(row[11]),
        created=float(row[12]),
        last_used=None if row[13] is None else float(row[13]),
    )


class SqlCredentialStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # --- TOTP ---------------------------------------------------------------------

    async def add_totp(self, device: TotpDevice) -> None:
        await self._db.execute(
            f"INSERT INTO totp_devices ({_TOTP_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            device.id,
            device.tenant,
            device.user_id,
            device.name,
            device.secret_encrypted,
            device.last_used_step,
            device.created,
            device.confirmed,
        )

    async def list_totp(self, user_id: str) -> builtins.list[TotpDevice]:
        rows = await self._db.fetch(
            f"SELECT {_TOTP_COLUMNS} FROM totp_devices WHERE user_id = ? ORDER BY created, id",
            user_id,
        )
        return [_totp(row) for row in rows]

    async def get_totp(self, user_id: str, device_id: str) -> TotpDevice | None:
        row = await self._db.fetchone(
            f"SELECT {_TOTP_COLUMNS} FROM totp_devices WHERE id = ? AND user_id = ?",
            device_id,
            user_id,
        )
        return _totp(row) if row is not None else None

    async def confirm_totp(self, user_id: str, device_id: str, step: int) -> bool:
        changed = await self._db.execute(
            "UPDATE totp_devices SET confirmed = ?, last_used_step = ?"
            " WHERE id = ? AND user_id = ? AND confirmed = ? AND last_used_step < ?",
            True,
            step,
            device_id,
            user_id,
            False,
            step,
        )
        return changed > 0

    async def use_totp_step(self, device_id: str, step: int) -> bool:
        # One statement: the row lock (PostgreSQL) or the database write lock
        # (SQLite) serialises concurrent callers, and the loser sees the new value.
        # Replicated: a code used must not be usable again after a failover.
        changed = await self._db.execute_replicated(
            "UPDATE totp_devices SET last_used_step = ?"
            " WHERE id = ? AND confirmed = ? AND last_used_step < ?",
            step,
            device_id,
            True,
            step,
        )
        return changed > 0

    async def rename_totp(self, user_id: str, device_id: str, name: str) -> bool:
        changed = await self._db.execute(
            "UPDATE totp_devices SET name = ? WHERE id = ? AND user_id = ?",
            name,
            device_id,
            user_id,
        )
        return changed > 0

    async def remove_totp(self, user_id: str, device_id: str) -> bool:
        changed = await self._db.execute_replicated(
            "DELETE FROM totp_devices WHERE id = ? AND user_id = ?", device_id, user_id
        )
        return changed > 0

    async def remove_unconfirmed_totp(self, user_id: str, older_than: float) -> int:
        return await self._db.execute(
            "DELETE FROM totp_devices WHERE user_id = ? AND confirmed = ? AND created < ?",
            user_id,
            False,
            older_than,
        )

    # --- WebAuthn -------------------------------------------------------------------

    async def add_webauthn(self, credential: WebAuthnCredential) -> None:
        c = credential
        await self._db.execute(
            f"INSERT INTO webauthn_credentials ({_WEBAUTHN_COLUMNS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            c.id,
            c.tenant,
            c.user_id,
            c.name,
            c.credential_id,
            c.public_key,
            c.sign_count,
            json.dumps(list(c.transports)),
            c.aaguid,
            c.backup_eligible,
            c.backed_up,
            c.user_handle,
            c.created,
            c.last_used,
        )

    async def list_webauthn(self, user_id: str) -> builtins.list[WebAuthnCredential]:
        rows = await self._db.fetch(
            f"SELECT {_WEBAUTHN_COLUMNS} FROM webauthn_credentials"
            " WHERE user_id = ? ORDER BY created, id",
            user_id,
        )
        return [_webauthn(row) for row in rows]

    async def get_webauthn(self, user_id: str, record_id: str) -> WebAuthnCredential | None:
        row = await self._db.fetchone(
            f"SELECT {_WEBAUTHN_COLUMNS} FROM webauthn_credentials WHERE id = ? AND user_id = ?",
            record_id,
            user_id,
        )
        return _webauthn(row) if row is not None else None

    async def get_webauthn_by_credential_id(
        self, tenant: str, credential_id: bytes
    ) -> WebAuthnCredential | None:
        row = await self._db.fetchone(
            f"SELECT {_WEBAUTHN_COLUMNS} FROM webauthn_credentials"
            " WHERE credential_id = ? AND tenant = ?",
            credential_id,
            tenant,
        )
        return _webauthn(row) if row is not None else None

    async def update_sign_count(self, credential_id: bytes, new: int, at: float) -> bool:
        if new == 0:
            # No counter on this authenticator: valid only while the stored one is 0 too.
            condition, bound = "sign_count = ?", 0
        else:
            condition, bound = "sign_count < ?", new
        changed = await self._db.execute(
            "UPDATE webauthn_credentials SET sign_count = ?, last_used = ?"
            f" WHERE credential_id = ? AND {condition}",
            new,
            at,
            credential_id,
            bound,
        )
        return changed > 0

    async def rename_webauthn(self, user_id: str, record_id: str, name: str) -> bool:
        changed = await self._db.execute(
            "UPDATE webauthn_credentials SET name = ? WHERE id = ? AND user_id = ?",
            name,
            record_id,
            user_id,
        )
        return changed > 0

    async def remove_webauthn(self, user_id: str, record_id: str) -> bool:
        changed = await self._db.execute_replicated(
            "DELETE FROM webauthn_credentials WHERE id = ? AND user_id = ?", record_id, user_id
        )
        return changed > 0

    # --- backup codes ---------------------------------------------------------------

    async def replace_backup_codes(
        self, tenant: str, user_id: str, code_hashes: tuple[str, ...], created: float
    ) -> None:
        async with self._db.transaction(replicated=True) as tx:
            await tx.execute("DELETE FROM backup_codes WHERE user_id = ?", user_id)
            for code_hash in code_hashes:
                await tx.execute(
                    "INSERT INTO backup_codes (tenant, user_id, code_hash, created, used_at)"
                    " VALUES (?, ?, ?, ?, NULL)",
                    tenant,
                    user_id,
                    code_hash,
                    created,
                )

    async def consume_backup_code(self, user_id: str, code_hash: str, at: float) -> bool:
        changed = await self._db.execute_replicated(
            "UPDATE backup_codes SET used_at = ?"
            " WHERE user_id = ? AND code_hash = ? AND used_at IS NULL",
            at,
            user_id,
            code_hash,
        )
        return changed > 0

    async def count_backup_codes(self, user_id: str) -> BackupCodeCount:
        row = await self._db.fetchone(
            "SELECT COUNT(*), COUNT(*) - COUNT(used_at) FROM backup_codes WHERE user_id = ?",
            user_id,
        )
        if row is None:
            return BackupCodeCount(0, 0)
        return BackupCodeCount(total=int(row[0]), unused=int(row[1]))

    # --- everything -----------------------------------------------------------------

    async def remove_all_for_user(self, user_id: str) -> RemovedFactors:
        async with self._db.transaction(replicated=True) as tx:
            totp = await tx.execute("DELETE FROM totp_devices WHERE user_id = ?", user_id)
            webauthn = await tx.execute(
                "DELETE FROM webauthn_credentials WHERE user_id = ?", user_id
            )
            codes = await tx.execute("DELETE FROM backup_codes WHERE user_id = ?", user_id)
        return RemovedFactors(totp, webauthn, codes)
