"""Credentials → principal → identity headers: the `identify` stage of the pipeline.

A request is somebody when it carries a live session cookie of this tenant, or
an API key (`Authorization: Bearer agk_…`) of this tenant. Neither credential is
ever forwarded: the API key's Authorization header and our session cookie are
removed from what the upstream receives.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp.web_request import BaseRequest
from multidict import CIMultiDict

from gateway.config.model import Config, RouteConfig, TenantConfig
from gateway.identity_headers import PRESETS, HeaderNames, header_names
from gateway.pipeline import Identity
from gateway.sessions import SessionManager
from gateway.signing import JwtSigner
from gateway.stores import ApiKeyStore, User, UserStore
from gateway.stores.ids import hash_api_key, looks_like_api_key
from policies import Principal

_API_KEY_CACHE_SECONDS = 5.0
_NOBODY = Identity(principal=None)


@dataclass(frozen=True)
class _KeyHolder:
    user: User
    key_id: str
    expires: float | None


class Identifier:
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
    ) -> None:
        self.cookie_name = config.sessions.cookie_name
        self.sessions = sessions
        self.users = users
        self.apikeys = apikeys
        self.signer = signer
        self.now = now
        self._default_names = PRESETS["default"]
        self._names: dict[RouteConfig, HeaderNames] = {
            route: header_names(route) for tenant in config.tenants for route in tenant.routes
        }
        self._key_cache: dict[str, tuple[float, _KeyHolder | None]] = {}

    async def __call__(
        self, request: BaseRequest, tenant: TenantConfig, route: RouteConfig | None
    ) -> Identity:
        authorization = request.headers.get("Authorization", "")
        if authorization[:7].lower() == "bearer " and authorization[7:11] == "agk_":
            return await self._from_api_key(authorization[7:].strip(), tenant, route)
        cookie_header = request.headers.get("Cookie")
        if not cookie_header or self.cookie_name not in cookie_header:
            return _NOBODY
        session_id = request.cookies.get(self.cookie_name)
        if not session_id:
            return _NOBODY
        active = await self.sessions.load(session_id, tenant.id)
        strip = frozenset({"cookie"})
        headers = CIMultiDict[str]()
        other_cookies = _without_cookie(cookie_header, self.cookie_name)
        if other_cookies:
            headers["Cookie"] = other_cookies
        if active is None:
            return Identity(principal=None, upstream_headers=headers, strip_headers=strip)
        record, user = active.record, active.user
        principal = Principal(
            user=user.username,
            groups=frozenset(user.groups),
            roles=frozenset(user.roles),
            amr=record.amr,
            auth_time=record.auth_time,
            session_id=active.id_hash,
        )
        if active.owes_second_factor:
            # Worth nothing upstream until the second factor: no identity is forwarded.
            return Identity(
                principal=principal,
                upstream_headers=headers,
                strip_headers=strip,
                owes_second_factor=True,
            )
        self._add_identity(headers, user, record.amr, route, tenant, active.id_hash)
        return Identity(principal=principal, upstream_headers=headers, strip_headers=strip)

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
        user = holder.user
        principal = Principal(
            user=user.username,
            groups=frozenset(user.groups),
            roles=frozenset(user.roles),
            amr=("apikey",),
            auth_time=now,  # the key is presented afresh with every request
        )
        headers = CIMultiDict[str]()
        self._add_identity(headers, user, ("apikey",), route, tenant, None)
        return Identity(principal=principal, upstream_headers=headers, strip_headers=strip)

    async def _key_holder(self, key: str) -> _KeyHolder | None:
        key_hash = hash_api_key(key)
        mono = time.monotonic()
        cached = self._key_cache.get(key_hash)
        if cached is not None and cached[0] > mono:
            return cached[1]
        record = await self.apikeys.get_by_hash(key_hash)
        holder: _KeyHolder | None = None
        if record is not None and not record.revoked:
            user = await self.users.get(record.user_id)
            if user is not None and not user.disabled:
                holder = _KeyHolder(user, record.id, record.expires)
        if len(self._key_cache) > 10_000:
            self._key_cache.clear()
        self._key_cache[key_hash] = (mono + _API_KEY_CACHE_SECONDS, holder)
        return holder

    def _add_identity(
        self,
        headers: CIMultiDict[str],
        user: User,
        amr: tuple[str, ...],
        route: RouteConfig | None,
        tenant: TenantConfig,
        cache_key: str | None,
    ) -> None:
        names = self._names.get(route, self._default_names) if route else self._default_names
        if names.user:
            headers[names.user] = user.username
        if names.email and user.email:
            headers[names.email] = user.email
        if names.name and user.display_name:
            headers[names.name] = user.display_name
        if names.groups:
            headers[names.groups] = names.groups_separator.join(user.groups)
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


def _without_cookie(header: str, name: str) -> str:
    """The Cookie header minus our session cookie (the upstream never needs it)."""
    kept = []
    for part in header.split(";"):
        key = part.split("=", 1)[0].strip()
        if key and key != name:
            kept.append(part.strip())
    return "; ".join(kept)
