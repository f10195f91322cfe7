"""The values `decide()` takes and returns: plain frozen dataclasses, no I/O types.

The gateway fills a `RequestContext` from the canonical request and its session;
`decide()` answers a `Decision`. The same values serve the proxy, forward-auth,
`authgate policy explain`, the policy test runner and the audit log.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Action(enum.Enum):
    """What the gateway must do with the request."""

    ALLOW = "ALLOW"
    LOGIN = "LOGIN"
    SECOND_FACTOR = "SECOND_FACTOR"
    REAUTH = "REAUTH"
    DENY = "DENY"

    # Enum hashes a member by its name, in Python, on every dict lookup (the metrics
    # count each request by action). Members are singletons compared by identity, so
    # the identity hash agrees with equality and costs no Python call.
    __hash__ = object.__hash__


# How much an answer withholds, for the one place two answers are compared (an
# unknown country or IP under `not_countries`/`not_networks`): the stricter wins.
STRICTNESS: dict[Action, int] = {
    Action.ALLOW: 0,
    Action.REAUTH: 1,
    Action.SECOND_FACTOR: 2,
    Action.LOGIN: 3,
    Action.DENY: 4,
}


class Level(enum.Enum):
    """The level a rule requires (the `action:` key of a rule and of `default:`)."""

    BYPASS = "bypass"
    ONE_FACTOR = "one_factor"
    TWO_FACTOR = "two_factor"
    DENY = "deny"


@dataclass(frozen=True)
class Principal:
    """Who is asking, as the session (or API key) says.

    `amr` lists the authentication methods used (RFC 8176 names: pwd, otp, hwk, …).
    `auth_time` is the epoch second of the last full authentication.
    `permissions` are granted directly (an API key's scopes, `--permissions` in the
    CLI), on top of those the policy's roles give.
    """

    user: str
    groups: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset()
    amr: tuple[str, ...] = ()
    auth_time: float = 0.0
    session_id: str | None = None
    permissions: frozenset[str] = frozenset()


@dataclass(frozen=True)
class RequestContext:
    """The canonical request: host lowercase without port, path canonical.

    (gateway/canonical.py makes both; `decide` sees exactly what is forwarded.)
    """

    host: str
    path: str
    method: str
    ip: IPAddress | None = None
    country: str | None = None  # ISO 3166-1 alpha-2, None when unknown
    principal: Principal | None = None
    now: float = 0.0


class StepOutcome(enum.Enum):
    HELD = "held"
    NOT_HELD = "not held"
    # A `not_countries`/`not_networks` condition met an unknown country or IP: the
    # rule both may and may not hold, so the stricter of the two answers is taken.
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class TraceStep:
    """One rule tried: whether it held and why (the first failing condition)."""

    index: int
    rule: str
    outcome: StepOutcome
    reason: str


@dataclass(frozen=True)
class Decision:
    action: Action
    rule: str | None  # None: no rule held, the policy's default decided
    reason: str
    trace: tuple[TraceStep, ...] = field(default=())
