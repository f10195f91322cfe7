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
    tenant: TenantConfig
    host: str
    path: str  # canonical path
    suffix: str  # the part after the prefix, e.g. "/login"
    client_ip: str
    request_id: str


ReservedHandler = Callable[[ReservedRequest], Awaitable[web.StreamResponse]]


class ReservedRoutes:
    """Suffix → handler, built at start-up; login_ui and the gateway both register here."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix.rstrip("/")
        self._lower_prefix = self.prefix.lower()
        self._handlers: dict[str, ReservedHandler] = {}

    def add(self, suffix: str, handler: ReservedHandler) -> None:
        if suffix in self._handlers:
            raise ValueError(f"reserved path {self.prefix}{suffix} registered twice")
        self._handlers[suffix] = handler

    def suffix_of(self, path: str) -> str | None:
        """The suffix when `path` is under the prefix (any case: it is never forwarded)."""
        lowered = path.lower()
        if lowered == self._lower_prefix:
            return "/"
        if lowered.startswith(self._lower_prefix) and lowered[len(self._lower_prefix)] == "/":
            return path[len(self.prefix) :]
        return None

    def handler(self, suffix: str) -> ReservedHandler | None:
        return self._handlers.get(suffix)
