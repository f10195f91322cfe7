"""The reserved prefix (`/.authgate/` by default): our own endpoints, never forwarded.

Handlers are registered by suffix (`/health`, `/login`, …) in one table; the
pipeline looks the suffix up once the host has been resolved to a tenant.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.web_request import BaseRequest

from gateway.config.model import TenantConfig


@dataclass(frozen=True)
class ReservedRequest:
    """A request for one of our endpoints, with what the pipeline already worked out."""

    request: BaseRequest
    tenant: TenantConfig | None  # None only for handlers registered with any_host=True
    host: str
    path: str  # canonical path
    suffix: str  # the part after the prefix, e.g. "/login"
    client_ip: str
    request_id: str
    proto: str  # http | https, as the client used it
    host_header: str  # the Host the client sent (validated)

    @property
    def origin(self) -> str:
        """`scheme://host[:port]` as the browser sees this page (for Origin checks)."""
        return f"{self.proto}://{self.host_header.lower()}"


ReservedHandler = Callable[[ReservedRequest], Awaitable[web.StreamResponse]]


class ReservedRoutes:
    """Suffix → handler, built at start-up; login_ui and the gateway both register here."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix.rstrip("/")
        self._lower_prefix = self.prefix.lower()
        self._handlers: dict[str, tuple[ReservedHandler, bool]] = {}
        self._prefixed: list[tuple[str, ReservedHandler, bool]] = []

    def add(self, suffix: str, handler: ReservedHandler, *, any_host: bool = False) -> None:
        """Register `handler` for `{prefix}{suffix}`; `any_host` answers on unknown hosts too
        (health probes and scrapers address the gateway by IP)."""
        if suffix in self._handlers:
            raise ValueError(f"reserved path {self.prefix}{suffix} registered twice")
        self._handlers[suffix] = (handler, any_host)

    def add_prefix(self, suffix_prefix: str, handler: ReservedHandler) -> None:
        """Register `handler` for every suffix under `suffix_prefix` (e.g. "/static/")."""
        self._prefixed.append((suffix_prefix, handler, False))

    def suffix_of(self, path: str) -> str | None:
        """The suffix when `path` is under the prefix (any case: it is never forwarded)."""
        lowered = path.lower()
        if lowered == self._lower_prefix:
            return "/"
        if lowered.startswith(self._lower_prefix) and lowered[len(self._lower_prefix)] == "/":
            return path[len(self.prefix) :]
        return None

    def handler(self, suffix: str, known_host: bool) -> ReservedHandler | None:
        found = self._handlers.get(suffix)
        if found is None:
            for suffix_prefix, handler, any_host in self._prefixed:
                if suffix.startswith(suffix_prefix):
                    found = (handler, any_host)
                    break
            else:
                return None
        if not (known_host or found[1]):
            return None
        return found[0]
