"""The gateway's error hierarchy: callers catch what they mean."""

from __future__ import annotations

from policies.source import Problem, SourceError

__all__ = ["AuthError", "AuthgateError", "BadRequest", "ConfigError", "Problem", "StoreUnavailable"]


class AuthgateError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(SourceError, AuthgateError):
    """The configuration is invalid; carries every problem found (FILE:LINE: key: what)."""


class StoreUnavailable(AuthgateError):
    """A store could not answer; the request must fail closed (503)."""


class StoreFull(StoreUnavailable):
    """The store answers reads and deletions but refuses writes (Redis at its
    `maxmemory`): what only needs to read may go on."""


class AuthError(AuthgateError):
    """Authentication failed; subclasses say how."""


class BadRequest(AuthgateError):
    """The client sent something we refuse to interpret (answered with 400 and the reason)."""

    def __init__(self, reason: str, status: int = 400) -> None:
        self.reason = reason
        self.status = status
        super().__init__(reason)
