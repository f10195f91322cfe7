"""TOTP (RFC 6238) second factor: enrolment, verification, replay refusal.

Codes are 6 digits over 30-second steps, SHA-1, as every authenticator app
expects. A code is accepted for the current step and one step either side
(clock drift), and only once: the store accepts a step only if it is newer than
the last one accepted on that device, in one atomic UPDATE, so two workers
racing with the same code cannot both win (SECURITY.md invariant 7).

Seeds are encrypted at rest with the SecretBox, bound to their device id.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass

import pyotp
import segno

from gateway.secretbox import SecretBox
from gateway.stores.base import new_id
from gateway.stores.credentials import CredentialStore, TotpDevice, totp_seed_purpose

__all__ = [
    "DIGITS",
    "MAX_DEVICES",
    "PENDING_SECONDS",
    "STEP_SECONDS",
    "Enrolment",
    "TotpService",
    "clean_name",
    "matching_step",
    "normalize_code",
    "qr_svg",
]

STEP_SECONDS = 30
DIGITS = 6
DRIFT_STEPS = 1
MAX_DEVICES = 10  # per user: enough for every phone, few enough to list
PENDING_SECONDS = 900.0  # an enrolment not confirmed within this is dropped
MAX_NAME = 64


@dataclass(frozen=True)
class Enrolment:
    """A device waiting for its first code: show `uri` as a QR code and `secret` as text."""

    device: TotpDevice
    secret: str
    uri: str


def normalize_code(code: str) -> str | None:
    """Digits only (apps show "123 456"); None when it cannot be a code."""
    digits = "".join(code.split())
    if len(digits) != DIGITS or not digits.isascii() or not digits.isdigit():
        return None
    return digits


def matching_step(secret: str, code: str, now: float) -> int | None:
    """The time step within ±1 of `now` whose code is `code` (the newest one on a
    collision), or None. Comparison in constant time."""
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS)
    current = int(now // STEP_SECONDS)
    found: int | None = None
    for step in range(current - DRIFT_STEPS, current + DRIFT_STEPS + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            found = step
    return found


def qr_svg(uri: str) -> str:
    """An inline <svg> of the QR code (no script, no style: fits the strict CSP)."""
    return str(segno.make(uri, error="m").svg_inline(scale=4, border=2, title="QR code"))


def clean_name(name: str, default: str) -> str:
    """A device name as shown in lists: printable, trimmed, bounded."""
    kept = "".join(c for c in name if c.isprintable()).strip()[:MAX_NAME]
    return kept or default


class TotpService:
    def __init__(
        self,
        store: CredentialStore,
        box: SecretBox,
        *,
        issuer: str,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._box = box
        self._issuer = issuer
        self._now = now

    async def devices(self, user_id: str) -> list[TotpDevice]:
        """The user's confirmed devices."""
        return [d for d in await self._store.list_totp(user_id) if d.confirmed]

    async def start(
        self, tenant: str, user_id: str, account: str, name: str, *, issuer: str | None = None
    ) -> Enrolment | None:
        """A new unconfirmed device with a fresh seed; None when the user has too many."""
        now = self._now()
        await self._store.remove_unconfirmed_totp(user_id, older_than=now - PENDING_SECONDS)
        if len(await self._store.list_totp(user_id)) >= MAX_DEVICES:
            return None
        secret = pyotp.random_base32()
        device_id = new_id()
        device = TotpDevice(
            id=device_id,
            tenant=tenant,
            user_id=user_id,
            name=clean_name(name, "Authenticator app"),
            secret_encrypted=self._box.encrypt(secret.encode(), totp_seed_purpose(device_id)),
            last_used_step=0,
            created=now,
            confirmed=False,
        )
        await self._store.add_totp(device)
        return Enrolment(device, secret, self._uri(secret, account, issuer))

    async def pending(self, user_id: str, device_id: str, account: str) -> Enrolment | None:
        """An unconfirmed device again (to re-show the QR code after a wrong code)."""
        device = await self._store.get_totp(user_id, device_id)
        if device is None or device.confirmed or device.created < self._now() - PENDING_SECONDS:
            return None
        secret = self._secret(device)
        return Enrolment(device, secret, self._uri(secret, account, None))

    async def confirm(self, user_id: str, device_id: str, code: str) -> bool:
        """Activate a pending device with a correct code (which is then used up)."""
        digits = normalize_code(code)
        device = await self._store.get_totp(user_id, device_id)
        if digits is None or device is None or device.confirmed:
            return False
        if device.created < self._now() - PENDING_SECONDS:
            return False
        step = matching_step(self._secret(device), digits, self._now())
        return step is not None and await self._store.confirm_totp(user_id, device_id, step)

    async def verify(self, user_id: str, code: str) -> TotpDevice | None:
        """The confirmed device this code is valid for, now and for the first time."""
        digits = normalize_code(code)
        if digits is None:
            return None
        now = self._now()
        for device in await self.devices(user_id):
            step = matching_step(self._secret(device), digits, now)
            if step is not None and await self._store.use_totp_step(device.id, step):
                return device
        return None

    def _secret(self, device: TotpDevice) -> str:
        return self._box.decrypt(device.secret_encrypted, totp_seed_purpose(device.id)).decode()

    def _uri(self, secret: str, account: str, issuer: str | None) -> str:
        return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS).provisioning_uri(
            name=account, issuer_name=issuer or self._issuer
        )
