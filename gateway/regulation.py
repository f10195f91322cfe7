"""Brute-force regulation: failed factor attempts per username and per client IP.

One regime for every factor: passwords and passkey sign-ins count under the
`user` scope, second factors (TOTP, backup codes, WebAuthn step-up) under the
`mfa` scope of the same username, and both share the client IP's counter. The
scopes are apart so that a correct password (which clears the `user` counter)
never resets the count of guessed codes: a thief who knows the password still
gets `max_retries` code guesses per window, not `max_retries` per sign-in.

The username counter is taken *before* the password (or code) is checked, with
one atomic `RateLimiter.hit`: when 20 guesses arrive at once on many workers,
exactly `max_retries` of them are verified and the rest are refused without
touching the hasher. A success clears the user's counter, so a person who signs
in correctly is not punished for the attempts before. The IP counter counts
failures only (after the check): colleagues behind one NAT who sign in
correctly never add up to a ban.

Counters are keyed by the normalised username whether or not the account
exists, so a ban looks the same for an unknown user (SECURITY.md invariant 8).
Bans live under keys of their own (`ban:…`), apart from the counters, and a
counter is never reset while attempts may race on it: each ban starts a new
counter generation instead, so the first attempt after a ban starts from zero.
Counters are fixed windows of
`find_time`: at a window boundary up to 2 * max_retries - 1 failures can land
in one `find_time`; the bound holds within a window.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from gateway.audit import AuditTrail, Event
from gateway.config.model import RegulationConfig
from gateway.errors import StoreUnavailable
from gateway.stores import RateLimiter, normalize_username

T = TypeVar("T")
log = logging.getLogger("authgate.regulation")

_USER = "user"
_IP = "ip"
FIRST_FACTOR = _USER
SECOND_FACTOR = "mfa"


def user_key(tenant: str, username: str, scope: str = FIRST_FACTOR) -> str:
    """The counter key of a username in a tenant (whether or not the user exists)."""
    return f"{scope}:{tenant}:{normalize_username(username)}"


def ip_key(tenant: str, ip: str) -> str:
    return f"{_IP}:{tenant}:{ip}"


def _ban_key(key: str) -> str:
    return f"ban:{key}"


def _generation_key(key: str) -> str:
    return f"gen:{key}"


@dataclass(frozen=True)
class Attempt:
    """The outcome of asking to try a factor: go ahead, or wait `retry_after` seconds."""

    allowed: bool
    retry_after: int = 0  # whole seconds, for the Retry-After header
    user_count: int = 0  # this attempt's place in the user's window (0 when refused)
    # First factor: the IP counter this attempt was counted in before the check (given
    # back by `succeeded`), and its place there.
    ip_counter: str | None = None
    ip_count: int = 0
    # The user's counter this attempt was counted in (given back by `unchecked`).
    user_counter: str | None = None
    # The time just before its counts were taken: they are given back only while their
    # window is still the current one (see Regulator._give_back).
    counted_at: float = 0.0

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

    async def attempt(
        self, tenant: str, username: str, ip: str | None, *, scope: str = FIRST_FACTOR
    ) -> Attempt:
        """Before checking a factor: may this username from this IP try now?

        Counts the attempt against the username (and, for passwords, the IP); refuses
        (without a count) while the username (in this scope) or the IP is banned, and
        bans either once its count passes `max_retries`. Call `failed()` or
        `succeeded()` after the check.
        """
        ukey = user_key(tenant, username, scope)
        ikey = ip_key(tenant, ip) if ip else None
        # The generation is read before the ban: whoever sees a new generation also
        # sees the ban set before it, so no attempt counts in a fresh counter mid-ban.
        counter = await self._counter(ukey)
        refused = await self._banned(ukey, ikey)
        if refused is not None:
            return refused
        # Passwords are sprayed over many usernames from one address, many at once: the
        # IP is counted before the check (a right password gives its count back), so
        # no more than max_retries guesses from it are ever checked, however many are
        # in flight when its ban lands.
        ip_counter: str | None = None
        ip_count = 0
        counted_at = self.now()
        if ikey is not None and scope == FIRST_FACTOR:
            ip_counter = await self._counter(ikey)
            ip_count = await self.limiter.hit(ip_counter, self.config.find_time)
            if ip_count > self.config.max_retries:
                if ip_count > self.config.max_retries + 1:  # another attempt is banning
                    return Attempt(False, self._retry_after(self.now() + self.config.ban_time))
                until = await self._ban(ikey, tenant, username=username, ip=ip)
                return Attempt(False, self._retry_after(until))
        count = await self.limiter.hit(counter, self.config.find_time)
        if count > self.config.max_retries:
            if ip_counter is not None:  # refused, never checked: not the IP's guess
                await self._give_back(ip_counter, counted_at)
            if count > self.config.max_retries + 1:  # the one just before us is banning
                return Attempt(False, self._retry_after(self.now() + self.config.ban_time))
            until = await self._ban(ukey, tenant, username=username, ip=ip)
            return Attempt(False, self._retry_after(until))
        return Attempt(
            True,
            user_count=count,
            ip_counter=ip_counter,
            ip_count=ip_count,
            user_counter=counter,
            counted_at=counted_at,
        )

    async def failed(
        self,
        tenant: str,
        username: str,
        ip: str | None,
        attempt: Attempt,
        *,
        scope: str = FIRST_FACTOR,
    ) -> None:
        """After a wrong factor: ban the username at `max_retries`, count the IP."""
        if attempt.user_count >= self.config.max_retries:
            await self._ban(user_key(tenant, username, scope), tenant, username=username, ip=ip)
        if not ip:
            return
        ikey = ip_key(tenant, ip)
        if attempt.ip_counter is not None:  # counted before the check already
            ip_count = attempt.ip_count
        else:
            counter = await self._counter(ikey)
            ip_count = await self.limiter.hit(counter, self.config.find_time)
        if ip_count >= self.config.max_retries:
            await self._ban(ikey, tenant, username=username, ip=ip)

    async def succeeded(
        self,
        tenant: str,
        username: str,
        *,
        scope: str = FIRST_FACTOR,
        attempt: Attempt | None = None,
    ) -> None:
        """After a correct factor: the user's counter (in this scope) starts from zero,
        and the IP gets back the count `attempt` took before the check.

        A store that cannot do either does not undo the sign-in (the factor was right;
        the session may already have been rotated): the counts are left as they were,
        which errs on the strict side, and said so."""
        ukey = user_key(tenant, username, scope)
        try:
            await self.limiter.clear(await self._counter(ukey))
            if attempt is not None and attempt.ip_counter is not None:
                await self._give_back(attempt.ip_counter, attempt.counted_at)
        except StoreUnavailable:
            log.warning("could not reset the failed-attempt counts after a correct factor")

    async def checked(self, attempt: Attempt, check: Awaitable[T]) -> T:
        """Run the check of a factor (a password, a code, a key) the attempt was counted
        for. A store that cannot answer checked no guess: the counts are given back
        (`unchecked`) and the StoreUnavailable goes on (a 503)."""
        try:
            return await check
        except StoreUnavailable:
            await self.unchecked(attempt)
            raise

    async def unchecked(self, attempt: Attempt) -> None:
        """The factor could not be checked (the user store did not answer): the attempt
        was no guess, so both its counts are given back. Otherwise everyone who tries
        again a few times while the database fails over is banned once it is back.
        A limiter that cannot take them back leaves them (the strict side), and says so."""
        try:
            if attempt.user_counter is not None:
                await self._give_back(attempt.user_counter, attempt.counted_at)
            if attempt.ip_counter is not None:
                await self._give_back(attempt.ip_counter, attempt.counted_at)
        except StoreUnavailable:
            log.warning("could not give back the counts of an attempt that was not checked")

    async def banned(
        self, tenant: str, username: str, ip: str | None, *, scope: str = FIRST_FACTOR
    ) -> Attempt:
        """Whether the username or the IP is banned now, without counting anything."""
        refused = await self._banned(
            user_key(tenant, username, scope), ip_key(tenant, ip) if ip else None
        )
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
        counter = await self._counter(key)
        await self.limiter.clear(_ban_key(key))
        await self.limiter.clear(counter)
        return existed

    # --- internals ---------------------------------------------------------------

    async def _counter(self, key: str) -> str:
        """The counter of `key` in its current generation: each ban starts a new one, so
        the count after a ban starts from zero without ever resetting a live counter
        (a reset would let racing attempts through; counts only ever go up)."""
        generation = await self.limiter.banned_until(_generation_key(key))
        return f"{key}@{generation!r}" if generation is not None else key

    async def _give_back(self, counter: str, counted_at: float) -> None:
        """Take back a count taken at `counted_at` or just after, if its fixed window is
        still the current one. Once that window is over its count went with it, and a
        release would take a count from the next window instead, one that may be a real
        guess (attempts in flight at a window's edge, all given back, were as many more
        guesses there). A count taken just after a window began is kept: the strict side."""
        window = self.config.find_time
        if math.floor(counted_at / window) != math.floor(self.now() / window):
            return
        await self.limiter.release(counter, window)

    async def _banned(self, ukey: str, ikey: str | None) -> Attempt | None:
        until = await self.limiter.banned_until(_ban_key(ukey))
        if until is None and ikey is not None:
            until = await self.limiter.banned_until(_ban_key(ikey))
        return Attempt(False, self._retry_after(until)) if until is not None else None

    async def _ban(self, key: str, tenant: str, *, username: str, ip: str | None) -> float:
        # Ban first, then start a new counter generation (see attempt() for the order).
        # The generation marker outlives the ban by find_time, so the old counter's
        # fixed window is over before the marker lapses and the plain key is reused.
        until = await self.limiter.ban(_ban_key(key), self.config.ban_time)
        await self.limiter.ban(_generation_key(key), self.config.ban_time + self.config.find_time)
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
