"""Step-up to a second factor: which methods a user has, what a success changes,
and how fast guesses may come.

A success adds the method's RFC 8176 name to the session's `amr`, sets
`auth_time` and rotates the session id (`SessionManager.elevate`), so a cookie
captured before the step-up is worth nothing after it. Names used:

- `otp` for a TOTP code (RFC 8176: one-time password, RFC 6238);
- `otp` for a backup code too: it is a one-time password from a printed list.
  RFC 8176 has no closer name (`kba` means knowledge questions), and consumers
  of the JWT should not need to learn a private one. Audit rows tell them apart;
- `hwk` / `swk` for WebAuthn (the WebAuthn flow adds them).

The policy engine counts two distinct `amr` values as two factors: `pwd` + `otp`.

Guessing is slow (invariant 8): failures count per user and per client IP within
`regulation.find_time`; after `regulation.max_retries` the key is banned for
`regulation.ban_time`, and a success clears the user's counter.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.config.model import Config
from gateway.identity.backup_codes import BackupCodes
from gateway.identity.totp import TotpService
from gateway.secretbox import SecretBox
from gateway.sessions import SessionManager
from gateway.stores import RateLimiter, SessionRecord
from gateway.stores.credentials import CredentialStore
from policies.engine import has_two_factors

__all__ = ["AMR_BACKUP_CODE", "AMR_TOTP", "Methods", "SecondFactors", "open_second_factors"]

AMR_TOTP = "otp"
AMR_BACKUP_CODE = "otp"


@dataclass(frozen=True)
class Methods:
    """What a user can step up with."""

    totp: int  # confirmed devices
    webauthn: int
    backup_codes: int  # unused codes

    @property
    def any(self) -> bool:
        """A real second factor is enrolled (backup codes alone are a fallback, not one)."""
        return self.totp > 0 or self.webauthn > 0


class SecondFactors:
    def __init__(
        self,
        config: Config,
        store: CredentialStore,
        sessions: SessionManager,
        limiter: RateLimiter,
        totp: TotpService,
        backup_codes: BackupCodes,
        *,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.sessions = sessions
        self.limiter = limiter
        self.totp = totp
        self.backup_codes = backup_codes
        self._now = now

    async def methods(self, user_id: str) -> Methods:
        devices = await self.totp.devices(user_id)
        keys = await self.store.list_webauthn(user_id)
        codes = await self.backup_codes.remaining(user_id)
        return Methods(totp=len(devices), webauthn=len(keys), backup_codes=codes.unused)

    def is_fresh(self, record: SessionRecord) -> bool:
        """Recent enough for sensitive changes (`sessions.fresh_for`)."""
        return self._now() - record.auth_time <= self.config.sessions.fresh_for

    @staticmethod
    def has_two_factors(record: SessionRecord) -> bool:
        return has_two_factors(record.amr)

    async def elevate(
        self, session_id: str, record: SessionRecord, method: str
    ) -> tuple[str, SessionRecord] | None:
        """Rotate to a new session id whose amr includes `method`; None if the session died."""
        amr = record.amr if method in record.amr else (*record.amr, method)
        return await self.sessions.elevate(session_id, amr)

    # --- guessing ----------------------------------------------------------------

    def _keys(self, user_id: str, ip: str | None) -> tuple[str, ...]:
        keys = [f"mfa:user:{user_id}"]
        if ip:
            keys.append(f"mfa:ip:{ip}")
        return tuple(keys)

    async def retry_after(self, user_id: str, ip: str | None) -> float | None:
        """Seconds until a banned user or client may try again; None when not banned."""
        now = self._now()
        for key in self._keys(user_id, ip):
            until = await self.limiter.banned_until(key)
            if until is not None and until > now:
                return until - now
        return None

    async def failed(self, user_id: str, ip: str | None) -> None:
        regulation = self.config.regulation
        for key in self._keys(user_id, ip):
            if await self.limiter.hit(key, regulation.find_time) >= regulation.max_retries:
                await self.limiter.ban(key, regulation.ban_time)

    async def succeeded(self, user_id: str) -> None:
        await self.limiter.clear(f"mfa:user:{user_id}")


def open_second_factors(
    config: Config,
    store: CredentialStore,
    sessions: SessionManager,
    limiter: RateLimiter,
    box: SecretBox,
) -> SecondFactors:
    """The service over a worker's open stores; keys derived from the encryption key."""
    return SecondFactors(
        config,
        store,
        sessions,
        limiter,
        TotpService(store, box, issuer=config.mfa.totp_issuer or "authgate"),
        BackupCodes(store, box.derive("authgate backup-codes v1")),
    )
