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

Guessing is slow (invariant 8): every code or key is checked under the one
`gateway.regulation.Regulator` that guards passwords, in its second-factor scope
(`mfa:TENANT:USERNAME`, plus the client IP's counter shared with passwords), so
bans show in `authgate bans list`. A success clears the user's second-factor count.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from gateway.config.model import Config
from gateway.identity.backup_codes import BackupCodes
from gateway.identity.totp import TotpService
from gateway.regulation import SECOND_FACTOR, Attempt, Regulator
from gateway.secretbox import SecretBox
from gateway.sessions import SessionManager
from gateway.stores import SessionRecord
from gateway.stores.credentials import CredentialStore
from policies.engine import has_two_factors

__all__ = [
    "AMR_BACKUP_CODE",
    "AMR_TOTP",
    "BACKUP_CODES",
    "TOTP",
    "WEBAUTHN",
    "Methods",
    "SecondFactors",
    "open_second_factors",
]

AMR_TOTP = "otp"
AMR_BACKUP_CODE = "otp"

# The names of `tenants[].mfa_methods`.
TOTP = "totp"
WEBAUTHN = "webauthn"
BACKUP_CODES = "backup_codes"


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

    def within(self, offered: Collection[str]) -> Methods:
        """Only what the tenant offers (`tenants[].mfa_methods`): the rest cannot be used."""
        return Methods(
            totp=self.totp if TOTP in offered else 0,
            webauthn=self.webauthn if WEBAUTHN in offered else 0,
            backup_codes=self.backup_codes if BACKUP_CODES in offered else 0,
        )


class SecondFactors:
    def __init__(
        self,
        config: Config,
        store: CredentialStore,
        sessions: SessionManager,
        regulator: Regulator,
        totp: TotpService,
        backup_codes: BackupCodes,
        *,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.sessions = sessions
        self.regulator = regulator
        self.totp = totp
        self.backup_codes = backup_codes
        self._now = now

    async def methods(self, user_id: str) -> Methods:
        devices = await self.totp.devices(user_id)
        keys = await self.store.list_webauthn(user_id)
        codes = await self.backup_codes.remaining(user_id)
        return Methods(totp=len(devices), webauthn=len(keys), backup_codes=codes.unused)

    def is_fresh(self, record: SessionRecord) -> bool:
        """Recent enough for sensitive changes (`sessions.fresh_for`, or the tenant's)."""
        tenant = next((t for t in self.config.tenants if t.id == record.tenant), None)
        settings = tenant.sessions.over(self.config.sessions) if tenant else self.config.sessions
        return self._now() - record.auth_time <= settings.fresh_for

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

    async def attempt(self, tenant: str, username: str, ip: str | None) -> Attempt:
        """Before checking a code or key: counted, or refused while banned."""
        return await self.regulator.attempt(tenant, username, ip, scope=SECOND_FACTOR)

    async def failed(self, tenant: str, username: str, ip: str | None, attempt: Attempt) -> None:
        await self.regulator.failed(tenant, username, ip, attempt, scope=SECOND_FACTOR)

    async def succeeded(self, tenant: str, username: str) -> None:
        await self.regulator.succeeded(tenant, username, scope=SECOND_FACTOR)


def open_second_factors(
    config: Config,
    store: CredentialStore,
    sessions: SessionManager,
    regulator: Regulator,
    box: SecretBox,
) -> SecondFactors:
    """The service over a worker's open stores; keys derived from the encryption key.
    Times come from the sessions' clock (the store's time line every instance shares)."""
    now: Callable[[], float] = getattr(sessions, "now", time.time)
    return SecondFactors(
        config,
        store,
        sessions,
        regulator,
        TotpService(store, box, issuer=config.mfa.totp_issuer or "authgate", now=now),
        BackupCodes(store, box.derive("authgate backup-codes v1"), now=now),
        now=now,
    )
