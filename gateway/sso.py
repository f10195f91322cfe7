"""SSO across a tenant's unrelated domains: single-use codes that carry a sign-in over.

Cookies cannot be shared between `acme.test` and `acme-wiki.test`. A domain without
a session sends the browser to the tenant's login host; when the user is signed in
there, that host issues a code bound to (tenant, target host, the signed-in session)
and redirects to the target, which redeems the code for a session of its own (a new
id, the same user, methods and authentication time, never outliving the source).

A code is 256 bits from `secrets`; only its SHA-256 is stored, for at most
`CODE_TTL` seconds. Redeeming deletes it in the same step that reads it, so a code
works once, however many requests race for it; a code presented on another host
or tenant than it was issued for is burned and refused.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from gateway.config.model import TenantConfig, sso_login_host
from gateway.stores.base import SessionRecord, SessionStore, UserStore
from gateway.stores.ids import hash_session_id, new_session_id
from gateway.stores.sso_codes import SqlSsoCodes, SsoCodeStore, SsoGrant

__all__ = [
    "CODE_TTL",
    "SqlSsoCodes",
    "SsoCodeStore",
    "SsoCodes",
    "SsoGrant",
    "SsoSession",
    "cookie_domain_for",
    "shares_session",
    "sso_hosts",
]

CODE_TTL = 60.0  # seconds; a hand-off is two redirects, so this is generous
_CODE = re.compile(r"[A-Za-z0-9_-]{43}")

Clock = Callable[[], float]


@dataclass(frozen=True)
class SsoSession:
    """The session a redeemed code became: the cookie value to set, and its record."""

    session_id: str
    record: SessionRecord


def _hash(code: str) -> str:
    return hashlib.sha256(code.encode("ascii")).hexdigest()


class SsoCodes:
    """Issues and redeems hand-off codes; the only way a session crosses domains."""

    def __init__(
        self,
        codes: SsoCodeStore,
        sessions: SessionStore,
        users: UserStore,
        *,
        now: Clock = time.time,
        ttl: float = CODE_TTL,
    ) -> None:
        if not 0 < ttl <= CODE_TTL:
            raise ValueError(f"an SSO code lives at most {CODE_TTL:.0f} seconds")
        self._codes = codes
        self._sessions = sessions
        self._users = users
        self._now = now
        self._ttl = ttl

    @property
    def store(self) -> SsoCodeStore:
        """The single-use code store (WebAuthn keeps its challenges there too)."""
        return self._codes

    async def issue(self, source: SessionRecord, target_host: str) -> str:
        """A code for `target_host` (a host of the source session's tenant: the caller checks)."""
        code = secrets.token_urlsafe(32)
        grant = SsoGrant(source.tenant, source.id_hash, target_host, self._now() + self._ttl)
        await self._codes.put(_hash(code), grant, self._ttl)
        return code

    async def redeem(self, code: str, tenant: str, host: str) -> SsoSession | None:
        """A new session on `host` for a valid code issued for exactly (tenant, host); the
        code is consumed whatever the outcome."""
        if not _CODE.fullmatch(code):
            return None
        now = self._now()
        grant = await self._codes.take(_hash(code), now)
        if grant is None or grant.tenant != tenant or grant.target_host != host:
            return None
        source = await self._sessions.get(grant.session_tag)
        if source is None or source.tenant != tenant or source.expires <= now:
            return None
        user = await self._users.get(source.user_id)
        if user is None or user.disabled or user.tenant != tenant:
            return None
        session_id = new_session_id()
        # Same user, methods and authentication time (SSO is not a fresh sign-in), and
        # never longer-lived than the session it came from.
        record = replace(
            source,
            id_hash=hash_session_id(session_id),
            created=now,
            last_seen=now,
            data=(),
        )
        await self._sessions.create(record)
        # A "log out everywhere" that ran between reading the source and creating the
        # child did not see the child: if the source is gone now, so is the child.
        if await self._sessions.get(grant.session_tag) is None:
            await self._sessions.revoke(record.id_hash)
            return None
        return SsoSession(session_id, record)

    async def prune(self) -> int:
        return await self._codes.prune(self._now())


def cookie_domain_for(tenant: TenantConfig, host: str) -> str | None:
    """The Domain= of a session cookie set on `host`: the tenant's `cookie_domain` when
    `host` lies under it (one session for its subdomains), else host-only (None): a
    browser drops a cookie whose Domain does not cover the host that sets it."""
    parent = tenant.cookie_domain
    if parent is not None and (host == parent or host.endswith("." + parent)):
        return parent
    return None


def shares_session(tenant: TenantConfig, host: str, other: str) -> bool:
    """Whether a session cookie set on `host` is also sent to `other`."""
    if host == other:
        return True
    parent = cookie_domain_for(tenant, host)
    return parent is not None and cookie_domain_for(tenant, other) == parent


def sso_hosts(tenant: TenantConfig) -> tuple[str, ...]:
    """The tenant's exact domains that do not share a cookie with its login host: the
    ones an SSO hand-off may target (wildcards are covered by their cookie domain)."""
    login_host = sso_login_host(tenant)
    if login_host is None:
        return ()
    return tuple(
        d
        for d in tenant.domains
        if not d.startswith("*.") and not shares_session(tenant, login_host, d)
    )
