"""Single-use codes (cross-domain SSO hand-offs, WebAuthn challenges): what a code
stands for, and its store in the database. The Redis store is
`gateway.stores.redis.RedisSsoCodeStore`, beside the sessions it hands over.

A code is only ever kept as a hash. Taking one removes it in the step that decides
who took it, so however many requests race for a code, one wins."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Protocol

from gateway.stores.database import Database


@dataclass(frozen=True)
class SsoGrant:
    """What a code stands for: a live session of `tenant`, handed to `target_host`."""

    tenant: str
    session_tag: str  # the id hash of the source session (a hash, never a cookie value)
    target_host: str
    expires: float

    def encoded(self) -> str:
        return json.dumps([self.tenant, self.session_tag, self.target_host, self.expires])

    @classmethod
    def decoded(cls, text: str) -> SsoGrant:
        tenant, tag, host, expires = json.loads(text)
        return cls(str(tenant), str(tag), str(host), float(expires))


class SsoCodeStore(Protocol):
    async def put(self, code_hash: str, grant: SsoGrant, ttl: float) -> None: ...

    async def take(self, code_hash: str, now: float) -> SsoGrant | None:
        """Remove and return the grant in one atomic step; None when unknown or expired."""

    async def prune(self, now: float) -> int: ...


class SqlSsoCodes:
    """Codes in the storage database (`sso_codes`, schema 4)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def put(self, code_hash: str, grant: SsoGrant, ttl: float) -> None:
        await self._db.execute(
            "INSERT INTO sso_codes (code_hash, tenant, session_tag, target_host, expires)"
            " VALUES (?, ?, ?, ?, ?)",
            code_hash,
            grant.tenant,
            grant.session_tag,
            grant.target_host,
            grant.expires,
        )

    async def take(self, code_hash: str, now: float) -> SsoGrant | None:
        # Replicated: a code taken must not be taken again after a failover.
        async with self._db.transaction(replicated=True) as tx:
            row = await tx.fetchone(
                "SELECT tenant, session_tag, target_host, expires FROM sso_codes"
                " WHERE code_hash = ?",
                code_hash,
            )
            if row is None:
                return None
            # Only the request whose DELETE removed the row may use it.
            if await tx.execute("DELETE FROM sso_codes WHERE code_hash = ?", code_hash) != 1:
                return None
        grant = SsoGrant(str(row[0]), str(row[1]), str(row[2]), float(row[3]))
        return grant if grant.expires > now else None

    async def prune(self, now: float) -> int:
        return await self._db.execute("DELETE FROM sso_codes WHERE expires <= ?", now)
