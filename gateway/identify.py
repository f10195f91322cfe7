"""Credentials → principal → identity headers: the `identify` stage of the pipeline.

A request is somebody when it carries a live session cookie of this tenant, or
an API key (`Authorization: Bearer agk_…`) of this tenant. Neither credential is
ever forwarded: the API key's Authorization header and our session cookie are
removed from what the upstream receives.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from multidict import CIMultiDict

from gateway.config.model import Config, RouteConfig, TenantConfig
from gateway.identity_headers import PRESETS, HeaderNames, header_names
from gateway.pipeline import NOBODY, Identity
from gateway.request_view import RequestView
from gateway.sessions import RESYNC, ActiveSession, RevocationFollower, SessionManager
from gateway.signing import JwtSigner
from gateway.single_flight import OncePerEntry, SingleFlight, read_ahead_from
from gateway.stores import ApiKeyStore, EventBus, User, UserStore
from gateway.stores.ids import hash_api_key, looks_like_api_key
from policies import Principal

log = logging.getLogger("authgate.identify")

_API_KEY_CACHE_SECONDS = 5.0
_KEY_CACHE_SIZE = 10_000  # API keys held in the cache (and read ahead of) per process
_MARK_USED_SECONDS = 300.0  # a key's last use is written at most this often per process

_STRIP_COOKIE = frozenset({"cookie"})
# Principals and identity headers built per (session, route): the busy sessions' (about
# 1.5 KB each; 10,000 cost 15 MB of RSS in the 100,000-session run). Cleared when full.
_BUILT_LIMIT = 2_048


@dataclass(frozen=True)
class _KeyHolder:
    user: User
    key_id: str
    expires: float | None


class Identifier(RevocationFollower):
    """The pipeline's `identify` hook, built once per worker."""

    def __init__(
        self,
        config: Config,
        sessions: SessionManager,
        users: UserStore,
        apikeys: ApiKeyStore,
        signer: JwtSigner | None,
        *,
        now: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cookie_name = config.sessions.cookie_name
        self.sessions = sessions
        self.users = users
        self.apikeys = apikeys
        self.signer = signer
        self.now = now
        self._monotonic = monotonic
        self._default_names = PRESETS["default"]
        self._names: dict[RouteConfig, HeaderNames] = {
            route: header_names(route) for tenant in config.tenants for route in tenant.routes
        }
        self._key_cache: dict[str, tuple[float, _KeyHolder | None]] = {}
        # A store read shared by a busy key's requests arriving within the cache's
        # bound of its start.
        self._key_reads: SingleFlight[tuple[str, int], _KeyHolder | None] = SingleFlight(
            _API_KEY_CACHE_SECONDS, monotonic
        )
        self._key_read_ahead_for: OncePerEntry[str] = OncePerEntry(_KEY_CACHE_SIZE)
        self._marked: dict[str, float] = {}  # key id → when its last use is next written
        self._marking: set[asyncio.Task[None]] = set()
        self._built: dict[
            tuple[str, RouteConfig | None, str],
            tuple[ActiveSession, Principal, tuple[tuple[str, str], ...]],
        ] = {}

    async def start(self, events: EventBus) -> None:
        """Follow the revocation channel: a revoked API key, or a changed user, leaves
        this process's key cache at once (with the SQL bus: within its poll)."""
        await self.follow(events)

    async def _on_revocation(self, message: str) -> None:
        kind, _, rest = message.partition(":")
        if kind == "apikey":
            self._forget_keys(lambda holder: holder.key_id == rest)
        elif kind == "user":
            _, _, user_id = rest.partition(":")
            self._forget_keys(lambda holder: holder.user.id == user_id)
        elif kind == RESYNC:
            self._key_cache.clear()

    def _forget_keys(self, matches: Callable[[_KeyHolder], bool]) -> None:
        for key_hash, (_, holder) in list(self._key_cache.items()):
            if holder is not None and matches(holder):
                self._key_cache.pop(key_hash, None)

    async def __call__(
        self, request: RequestView, tenant: TenantConfig, route: RouteConfig | None
    ) -> Identity:
        authorization = request.headers.get("Authorization", "")
        if authorization[:7].lower() == "bearer " and authorization[7:11] == "agk_":
            return await self._from_api_key(authorization[7:].strip(), tenant, route)
        cookie_header = request.headers.get("Cookie")
        if not cookie_header or self.cookie_name not in cookie_header:
            return NOBODY
        session_id, other_cookies = split_cookie(cookie_header, self.cookie_name)
        if not session_id:
            return NOBODY
        active = await self.sessions.load(session_id, tenant.id)
        headers: CIMultiDict[str] = CIMultiDict()
        if other_cookies:
            headers["Cookie"] = other_cookies
        if active is None:
            return Identity(principal=None, upstream_headers=headers, strip_headers=_STRIP_COOKIE)
        principal, identity_headers = self._session_identity(active, route, tenant)
        if active.owes_second_factor:
            # Worth nothing upstream until the second factor: no identity is forwarded.
            return Identity(
                principal=principal,
                upstream_headers=headers,
                strip_headers=_STRIP_COOKIE,
                owes_second_factor=True,
            )
        headers.extend(identity_headers)
        self._add_jwt(headers, active.user, active.record.amr, route, tenant, active.id_hash)
        return Identity(
            principal=principal,
            upstream_headers=headers,
            strip_headers=_STRIP_COOKIE,
            still_valid=self.sessions.lease(active),
        )

    def _session_identity(
        self, active: ActiveSession, route: RouteConfig | None, tenant: TenantConfig
    ) -> tuple[Principal, tuple[tuple[str, str], ...]]:
        """The principal and the plain identity headers of a session on a route, built
        once per loaded session: the same ActiveSession object means the same answer
        (the session manager replaces it whenever the record or the user changes)."""
        key = (active.id_hash, route, tenant.id)
        found = self._built.get(key)
        if found is not None and found[0] is active:
            return found[1], found[2]
        record, user = active.record, active.user
        principal = Principal(
            user=user.username,
            groups=frozenset(user.groups),
            roles=frozenset(user.roles),
            amr=record.amr,
            auth_time=record.auth_time,
            session_id=active.id_hash,
        )
        plain: CIMultiDict[str] = CIMultiDict()
        self._add_plain_identity(plain, user, route)
        items = tuple(plain.items())
        if len(self._built) >= _BUILT_LIMIT:
            self._built.clear()
        self._built[key] = (active, principal, items)
        return principal, items

    async def _from_api_key(
        self, key: str, tenant: TenantConfig, route: RouteConfig | None
    ) -> Identity:
        strip = frozenset({"authorization"})
        holder = await self._key_holder(key) if looks_like_api_key(key) else None
        now = self.now()
        if (
            holder is None
            or holder.user.tenant != tenant.id
            or (holder.expires is not None and holder.expires <= now)
        ):
            return Identity(principal=None, strip_headers=strip)
        self._note_use(holder.key_id, now)
        user = holder.user
        principal = Principal(
            user=user.username,
            groups=frozenset(user.groups),
            roles=frozenset(user.roles),
            amr=("apikey",),
            auth_time=now,  # the key is presented afresh with every request
        )
        headers: CIMultiDict[str] = CIMultiDict()
        self._add_plain_identity(headers, user, route)
        self._add_jwt(headers, user, ("apikey",), route, tenant, None)
        return Identity(principal=principal, upstream_headers=headers, strip_headers=strip)

    def _note_use(self, key_id: str, now: float) -> None:
        """Record when a key was last used (what `authgate apikey list` shows), at most
        once per key every few minutes per process, off the request's path: a store
        that cannot take it costs the request nothing."""
        mono = self._monotonic()
        if mono < self._marked.get(key_id, -1e18):
            return
        if len(self._marked) > 10_000:
            self._marked.clear()
        self._marked[key_id] = mono + _MARK_USED_SECONDS
        task = asyncio.ensure_future(self._mark_used(key_id, now))
        self._marking.add(task)
        task.add_done_callback(self._marking.discard)

    async def _mark_used(self, key_id: str, now: float) -> None:
        try:
            await self.apikeys.mark_used(key_id, now)
        except Exception:
            log.warning("could not record an API key's last use", exc_info=True)

    async def _key_holder(self, key: str) -> _KeyHolder | None:
        key_hash = hash_api_key(key)
        mono = self._monotonic()
        cached = self._key_cache.get(key_hash)
        if cached is not None and cached[0] > mono:
            # Read again while the entry serves (once per entry).
            due = mono > read_ahead_from(cached[0], _API_KEY_CACHE_SECONDS)
            if due and self._key_read_ahead_for.first(key_hash, cached):
                self._key_reads.start(self._flight(key_hash), lambda: self._read_key(key_hash))
            return cached[1]
        return await self._key_reads.join(self._flight(key_hash), lambda: self._read_key(key_hash))

    def _flight(self, key_hash: str) -> tuple[str, int]:
        # Keyed by the epoch too: a request arriving after a revocation message does not
        # wait for (and trust) a read begun before it; it reads again.
        return (key_hash, self._epoch)

    async def _read_key(self, key_hash: str) -> _KeyHolder | None:
        """Who holds the key, from the store; cached from when the read began unless a
        revocation arrived meanwhile (the read may predate it)."""
        began, epoch = self._monotonic(), self._epoch
        record = await self.apikeys.get_by_hash(key_hash)
        holder: _KeyHolder | None = None
        if record is not None and not record.revoked:
            user = await self.users.get(record.user_id)
            if user is not None and not user.disabled:
                holder = _KeyHolder(user, record.id, record.expires)
        if holder is None:
            self._key_cache.pop(key_hash, None)  # gone or revoked: ended at once
        if epoch != self._epoch:
            return holder  # a revocation arrived while it was read: not cached
        until = began + _API_KEY_CACHE_SECONDS
        if until <= self._monotonic():
            # Its time is up: a read that hung past the bound (which may end after one
            # begun later, SingleFlight) would replace a fresher entry.
            return holder
        if len(self._key_cache) > _KEY_CACHE_SIZE:
            self._key_cache.clear()
        self._key_cache[key_hash] = (until, holder)
        return holder

    def _names_for(self, route: RouteConfig | None) -> HeaderNames:
        return self._names.get(route, self._default_names) if route else self._default_names

    def _add_plain_identity(
        self, headers: CIMultiDict[str], user: User, route: RouteConfig | None
    ) -> None:
        names = self._names_for(route)
        if names.user:
            headers[names.user] = user.username
        if names.email and user.email:
            headers[names.email] = user.email
        if names.name and user.display_name:
            headers[names.name] = user.display_name
        if names.groups:
            headers[names.groups] = names.groups_separator.join(user.groups)

    def _add_jwt(
        self,
        headers: CIMultiDict[str],
        user: User,
        amr: tuple[str, ...],
        route: RouteConfig | None,
        tenant: TenantConfig,
        cache_key: str | None,
    ) -> None:
        names = self._names_for(route)
        if names.jwt and self.signer is not None and (route is None or route.jwt):
            # aud names the app: the public host its route serves (the tenant for
            # forward-auth requests that match no route of ours).
            audience = route.host if route is not None else tenant.id
            headers[names.jwt] = self.signer.sign(
                audience=audience,
                subject=user.username,
                email=user.email,
                name=user.display_name,
                groups=user.groups,
                amr=amr,
                cache_key=cache_key,
            )


def split_cookie(header: str, name: str) -> tuple[str | None, str]:
    """Our session cookie's value (the last one, as aiohttp's parser reads it; quotes
    removed) and the Cookie header without it (the upstream never needs it)."""
    value: str | None = None
    kept = []
    for part in header.split(";"):
        key, _, rest = part.partition("=")
        key = key.strip()
        if key == name:
            rest = rest.strip()
            if len(rest) >= 2 and rest[0] == rest[-1] == '"':
                rest = rest[1:-1]
            value = rest
        elif key:
            kept.append(part.strip())
    return value, "; ".join(kept)
