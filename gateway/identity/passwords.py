"""argon2id password hashing, off the event loop.

Hashing is deliberately slow (tens of milliseconds at OWASP's parameters), so
it runs in the default thread pool: argon2-cffi releases the GIL, and the
event loop keeps serving other requests meanwhile. `verify_dummy` spends the
same work on an unknown username as on a wrong password, so response time
does not reveal which usernames exist (SECURITY 8).
"""

from __future__ import annotations

import asyncio
import secrets

import argon2
from argon2.exceptions import InvalidHashError, VerificationError

from gateway.config.model import PasswordsConfig

__all__ = ["PasswordHasher"]


class PasswordHasher:
    def __init__(self, config: PasswordsConfig | None = None) -> None:
        config = config or PasswordsConfig()
        self._hasher = argon2.PasswordHasher(
            time_cost=config.time_cost,
            memory_cost=config.memory_cost,
            parallelism=config.parallelism,
            type=argon2.Type.ID,
        )
        self._dummy_hash: str | None = None

    async def hash(self, password: str) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._hasher.hash, password)

    async def verify(self, password_hash: str, password: str) -> bool:
        """True when `password` matches; False for a mismatch or a malformed hash."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._verify_sync, password_hash, password)

    def needs_rehash(self, password_hash: str) -> bool:
        """True when the hash was made with other parameters (rehash at next login)."""
        try:
            return self._hasher.check_needs_rehash(password_hash)
        except InvalidHashError:
            return True

    async def verify_dummy(self, password: str) -> bool:
        """Verify against a hash no password matches; always False, at full cost."""
        if self._dummy_hash is None:  # made once, lazily; a race only makes it twice
            self._dummy_hash = await self.hash(secrets.token_urlsafe(32))
        await self.verify(self._dummy_hash, password)
        return False

    def _verify_sync(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False
