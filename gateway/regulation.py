"""Brute-force regulation: failed factor attempts per username and per client IP.

The username counter is taken *before* the password (or code) is checked, with
one atomic `RateLimiter.hit`: when 20 guesses arrive at once on many workers,
exactly `max_retries` of them are verified and the rest are refused without
touching the hasher. A success clears the user's counter, so a person who signs
in correctly is not punished for the attempts before. The IP counter counts
failures only (after the check): colleagues behind one NAT who sign in
correctly never add up to a ban.

Counters are keyed by the normalised username whether or not the account
exists, so a ban looks the same for an unknown user (SECURITY.md invariant 8).
Bans live under keys of their own (`ban:…`), apart from the counters, so a ban
can be set before its counter is reset: any attempt that raced past the ban
check finds the ban on its second look. Counters are fixed windows of
`find_time`: at a window boundary up to 2 * max_retries - 1 failures can land
in one `find_time`; the bound holds within a window.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.audit import AuditTrail, Event
from gateway.config.model import RegulationConfig
from gateway.stores import RateLimiter, normalize_username

log = logging.getLogger("authgate.regulation")

_USER = "user"
_IP = "ip"


def user_key(tenant: str, username: str) -> str:
    """The counter key of a username in a tenant (whether or not the user exists)."""
    return f"{_USER}:{tenant}:{normalize_username(username)}"


def ip_key(tenant: str, ip: str) -> str:
    return f"{_IP}:{tenant}:{ip}"


def _ban_key(key: str) -> str:
    return f"ban:{key}"


@dataclass(frozen=True)
class Attempt:
    """The outcome of asking to try a factor: go ahead, or wait `retry_after` seconds."""

    allowed: bool
    retry_after: int = 0  # whole seconds, for the Retry-After header
    user_count: int = 0  # this attempt's place in the user's window (0 when refused)

    @property
    def banned(self) -> bool:
        return not self.allowed


@dataclass(frozen=True)
class BanView:
    """A ban as operators see it (`authgate bans list`): the key without our prefix."""

    key: str
    until: float


class Regulator:
    """Counts failed first- and second-factor attempts and bans over the limit."""

    def __init__(
        self,
        limiter: RateLimiter,
        config: RegulationConfig,
        *,
        audit: AuditTrail | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.limiter = limiter
        self.config = config
        self.audit = audit
        self.now = now

    # --- the login and MFA handlers call these ---------------------------------

    async def attempt(self, tenant: str, username: str, ip: str | None) -> Attempt:
        """Before checking a factor: may this username from this IP try now?

        Counts the attempt against the username; refuses (without a count) while the
        username or the IP is banned, and bans the username once the count passes
        `max_retries`. Call `failed()` or `succeeded()` after the check.
        """
        ukey = user_key(tenant, username)
        ikey = ip_key(tenant, ip) if ip else None
        refused = await self._banned(ukey, ikey)
        if refused is not None:
            return refused
        count = await self.limiter.hit(ukey, self.config.find_time)
        # Second look: a concurrent attempt may have set the ban after our first one.
        refused = await self._banned(ukey, ikey)
        if refused is not None:
            return refused
        if count > self.config.max_retries:
            if count > self.config.max_retries + 1:  # the one just before us is banning
                return Attempt(False, self._retry_after(self.now() + self.config.ban_time))
            until = await self._ban(ukey, tenant, username=username, ip=ip)
            return Attempt(False, self._retry_after(until))
        return Attempt(True, user_count=count)

    async def failed(self, tenant: str, username: str, ip: str | None, attempt: Attempt) -> None:
        """After a wrong factor: ban the username at `max_retries`, count the IP."""
        if attempt.user_count >= self.config.max_retries:
            await self._ban(user_key(tenant, username), tenant, username=username, ip=ip)
        if ip:
            ikey = ip_key(tenant, ip)
            if await self.limiter.hit(ikey, self.config.find_time) >= self.config.max_retries:
                await self._ban(ikey, tenant, username=username, ip=ip)

    async def succeeded(self, tenant: str, username: str) -> None:
        """After a correct factor: the user's counter starts again from zero."""
        await self.limiter.clear(user_key(tenant, username))

    async def banned(self, tenant: str, username: str, ip: str | None) -> Attempt:
        """Whether the username or the IP is banned now, without counting anything."""
        refused = await self._banned(user_key(tenant, username), ip_key(tenant, ip) if ip else None)
        return refused if refused is not None else Attempt(True)

    # --- operators (authgate bans) --------------------------------------------

    async def list_bans(self) -> list[BanView]:
        return [
            BanView(ban.key.removeprefix("ban:"), ban.until)
            for ban in await self.limiter.list_bans()
            if ban.key.startswith("ban:")
        ]

    async def clear(self, key: str) -> bool:
        """Lift the ban on `key` (as `list_bans` shows it) and reset its counter."""
        existed = await self.limiter.banned_until(_ban_key(key)) is not None
        await self.limiter.clear(_ban_key(key))
        await self.limiter.clear(key)
        return existed

    # --- internals ---------------------------------------------------------------

    async def _banned(self, ukey: str, ikey: str | None) -> Attempt | None:
        until = await self.limiter.banned_until(_ban_key(ukey))
        if until is None and ikey is not None:
            until = await self.limiter.banned_until(_ban_key(ikey))
        return Attempt(False, self._retry_after(until)) if until is not None else None

    async def _ban(self, key: str, tenant: str, *, username: str, ip: str | None) -> float:
        # Ban first, then reset the counter: an attempt that counts in between still
        # finds the ban on its second look, and after the ban the count starts afresh.
        until = await self.limiter.ban(_ban_key(key), self.config.ban_time)
        await self.limiter.clear(key)
        log.warning(
            "banned %s for %.0f s",
            key.split(":", 1)[0],
            self.config.ban_time,
            extra={"tenant": tenant, "ip": ip},
        )
        if self.audit is not None:
            self.audit.record(
                Event.BANNED,
                tenant=tenant,
                user=username,
                ip=ip,
                outcome="banned",
                details={"scope": key.split(":", 1)[0], "until": round(until, 3)},
            )
        return until

    def _retry_after(self, until: float) -> int:
        return max(1, math.ceil(until - self.now()))
