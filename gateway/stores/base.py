"""What the gateway keeps: value models and the small Protocols every backend implements.

Backends (SQLite, PostgreSQL, Redis) live beside this module; one contract test
suite runs against each. Every method raises `gateway.errors.StoreUnavailable`
when the backend cannot answer, so callers fail closed without knowing which
database library sits underneath.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from gateway.errors import AuthgateError, StoreUnavailable

__all__ = [
    "REVOCATIONS",
    "AlreadyExists",
    "ApiKey",
    "ApiKeyStore",
    "AuditEvent",
    "AuditLog",
    "Ban",
    "EventBus",
    "KeyStore",
    "NotFound",
    "RateLimiter",
    "SchemaOutdated",
    "SessionRecord",
    "SessionStore",
    "SigningKey",
    "Subscription",
    "User",
    "UserStore",
    "api_key_revoked",
    "new_id",
    "normalize_username",
    "session_revoked",
    "user_sessions_revoked",
]


class AlreadyExists(AuthgateError):
    """A unique key is taken (a username within a tenant, a key id, …)."""


class NotFound(AuthgateError):
    """The record to update does not exist."""


class SchemaOutdated(StoreUnavailable):
    """The database schema is older than this code; `authgate migrate` fixes it."""


def new_id() -> str:
    """A random record id (not a secret: ids appear in CLIs and audit rows)."""
    return uuid.uuid4().hex


def normalize_username(username: str) -> str:
    """The key usernames are unique by: `Alice` and `alice` are one user."""
    return username.strip().casefold()


# --- users -------------------------------------------------------------------


# Slots (no per-instance __dict__): each process caches up to sessions.cache_size of
# these and of SessionRecord (gateway/sessions.py), 10,000 by default.
@dataclass(frozen=True, slots=True)
class User:
    id: str
    tenant: str
    username: str  # as the operator typed it; uniqueness uses normalize_username()
    email: str | None
    display_name: str | None
    groups: tuple[str, ...]
    roles: tuple[str, ...]
    disabled: bool
    password_hash: str | None
    created: float
    updated: float


class UserStore(Protocol):
    async def create(self, user: User) -> None:
        """Insert; raises AlreadyExists when the (tenant, username) is taken."""

    async def get(self, user_id: str) -> User | None: ...

    async def get_by_username(self, tenant: str, username: str) -> User | None:
        """Case-insensitive lookup within one tenant."""

    async def list(self, tenant: str) -> list[User]:
        """The tenant's users ordered by username."""

    async def update(self, user: User) -> None:
        """Write the mutable fields (email, display name, groups, roles, disabled,
        password hash, updated) of the user with this id; raises NotFound."""

    async def set_password(self, user_id: str, password_hash: str, updated: float) -> bool:
        """Write the password hash alone, and only while the user is enabled: False when
        the user is gone or disabled (never a whole row written back from a copy read
        earlier, which would undo a disable made meanwhile). NotFound for read-only users."""


# --- sessions ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)  # (slots: see User)
class SessionRecord:
    """A session as stored: keyed by the SHA-256 of the cookie value, never the value."""

    id_hash: str
    tenant: str
    user_id: str
    amr: tuple[str, ...]  # methods used: ("pwd",), ("pwd", "otp"), …
    auth_time: float
    created: float
    last_seen: float
    expires: float
    ip: str | None = None
    user_agent: str | None = None
    country: str | None = None
    remember: bool = False
    data: tuple[tuple[str, str], ...] = ()  # small extras (e.g. pending MFA state)


class SessionStore(Protocol):
    async def create(self, record: SessionRecord) -> None: ...

    async def get(self, id_hash: str) -> SessionRecord | None:
        """The live session, or None when unknown, revoked or expired."""

    async def touch(self, id_hash: str, last_seen: float, expires: float) -> bool:
        """Record activity (the caller rate-limits this); False when the session is gone."""

    async def rotate(self, old_hash: str, new: SessionRecord) -> bool:
        """Atomically replace a session by one with a new id. False (and nothing
        written) when the old one is already gone, so a revoked session can never
        be resurrected by a concurrent rise in level."""

    async def revoke(self, id_hash: str) -> bool: ...

    async def revoke_user(self, tenant: str, user_id: str) -> int:
        """Log out everywhere; returns how many sessions were revoked."""

    async def list_user(self, tenant: str, user_id: str) -> list[SessionRecord]: ...

    async def list(self, tenant: str) -> list[SessionRecord]: ...

    async def count(self, tenant: str) -> int:
        """Live sessions of the tenant, without loading them (a gauge asks this)."""

    async def prune_expired(self, now: float) -> int: ...


# --- API keys ----------------------------------------------------------------


@dataclass(frozen=True)
class ApiKey:
    id: str
    tenant: str
    user_id: str
    name: str
    prefix: str  # "agk_" + a few characters, for display only
    key_hash: str  # hex SHA-256 of the whole key
    created: float
    expires: float | None
    last_used: float | None = None
    revoked: bool = False


class ApiKeyStore(Protocol):
    async def create(self, key: ApiKey) -> None: ...

    async def get_by_hash(self, key_hash: str) -> ApiKey | None:
        """The key whatever its state; the caller checks `revoked` and `expires`."""

    async def list(self, tenant: str, user_id: str | None = None) -> list[ApiKey]: ...

    async def revoke(self, key_id: str) -> bool: ...

    async def mark_used(self, key_id: str, at: float) -> None: ...


# --- signing keys (identity JWT) ------------------------------------------------


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_pem_encrypted: bytes  # encrypted by the caller with the configured key
    public_jwk: str  # JSON text of the public JWK
    created: float
    retired: float | None = None
    algorithm: str = "ES256"


class KeyStore(Protocol):
    async def add(self, key: SigningKey) -> None: ...

    async def add_first(self, key: SigningKey, now: float) -> bool:
        """Add `key` only when no key is active at `now` (retired neither in the past nor
        at all), atomically: of instances starting together on an empty store, one adds
        its key and the others find it. True when `key` was added."""

    async def list(self, retired_after: float) -> list[SigningKey]:
        """Active keys and keys retired after the given time, newest first."""

    async def retire(self, kid: str, at: float) -> bool:
        """Retire an active key at `at` (which may lie ahead); False when it was not active."""

    async def replace_all(self, key: SigningKey) -> None:
        """Add `key` and delete every other key outright (they may have leaked), at once:
        the store is never without a key, and of two replacements at once the last wins."""


# --- audit -------------------------------------------------------------------


@dataclass(frozen=True)
class AuditEvent:
    """One audit row. Never holds a secret: `session_fp` is a short fingerprint."""

    time: float
    event: str  # "login.success", "login.failure", "session.revoked", …
    tenant: str | None = None
    user: str | None = None
    ip: str | None = None
    country: str | None = None
    user_agent: str | None = None
    session_fp: str | None = None
    rule: str | None = None
    outcome: str | None = None
    details: str = "{}"  # JSON object text


class AuditLog(Protocol):
    async def append(self, event: AuditEvent) -> None: ...

    async def search(
        self,
        *,
        tenant: str | None = None,
        user: str | None = None,
        event: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[AuditEvent]:
        """Matching events, newest first."""

    async def prune(self, before: float) -> int: ...


# --- rate limiting -----------------------------------------------------------


@dataclass(frozen=True)
class Ban:
    key: str
    until: float


class RateLimiter(Protocol):
    async def hit(self, key: str, window_s: float) -> int:
        """Count one event for `key` in the current fixed window; returns the count
        so far, including this one. Atomic across processes and instances."""

    async def release(self, key: str, window_s: float) -> None:
        """Take back one event counted by `hit` in the current window (never below 0):
        an attempt counted before it was checked, which turned out right."""

    async def ban(self, key: str, seconds: float) -> float:
        """Ban `key`; returns the time the ban ends."""

    async def banned_until(self, key: str) -> float | None: ...

    async def clear(self, key: str) -> None:
        """Forget the key's counters and ban (a successful login, an operator unban)."""

    async def list_bans(self) -> list[Ban]: ...


# --- events (revocation fan-out) ------------------------------------------------

REVOCATIONS = "revocations"
# Delivered by a bus to its subscribers after a gap in which messages may have been
# lost (a broken subscription, failed polls): drop whatever was cached.
RESYNC = "resync:"


def session_revoked(id_hash: str) -> str:
    """The REVOCATIONS message that drops one session from every process's cache."""
    return f"session:{id_hash}"


def user_sessions_revoked(tenant: str, user_id: str) -> str:
    """The REVOCATIONS message that drops all of a user's cached sessions."""
    return f"user:{tenant}:{user_id}"


# Not a revocation: a session's use that a full store refused to write, so that every
# process reads it over the stored last use (and none idles out a session in use).
SESSION_USED = "used"


def session_used(id_hash: str, at: float) -> str:
    """The REVOCATIONS message that tells every process a session was used at `at`."""
    return f"{SESSION_USED}:{id_hash}:{at!r}"


def api_key_revoked(key_id: str) -> str:
    """The REVOCATIONS message that drops one API key from every process's cache."""
    return f"apikey:{key_id}"


Callback = Callable[[str], Awaitable[None]]


class Subscription(Protocol):
    async def close(self) -> None: ...


class EventBus(Protocol):
    async def publish(self, channel: str, message: str) -> None: ...

    async def subscribe(self, channel: str, callback: Callback) -> Subscription:
        """Deliver every later message on `channel`, from any process, to `callback`
        (awaited in order). Returns once the subscription is live."""
