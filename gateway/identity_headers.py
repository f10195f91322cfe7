"""Identity header names: our default, the presets of other gateways, custom mappings.

Whatever names a route uses, every name any route or preset could use is removed
from incoming requests before forwarding (SECURITY.md invariant 3): a client that
sends `Remote-User: admin` or `X-Forwarded-User: admin` gets nothing from it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gateway.config.model import Config, RouteConfig


@dataclass(frozen=True)
class HeaderNames:
    """Which header carries which claim for one route; None = not sent."""

    user: str | None
    email: str | None
    name: str | None
    groups: str | None
    jwt: str | None
    groups_separator: str = ","


PRESETS: dict[str, HeaderNames] = {
    "default": HeaderNames(
        "Remote-User", "Remote-Email", "Remote-Name", "Remote-Groups", "X-Authgate-Jwt"
    ),
    "authelia": HeaderNames(
        "Remote-User", "Remote-Email", "Remote-Name", "Remote-Groups", "X-Authgate-Jwt"
    ),
    "oauth2-proxy": HeaderNames(
        "X-Forwarded-User",
        "X-Forwarded-Email",
        "X-Forwarded-Preferred-Username",
        "X-Forwarded-Groups",
        "X-Authgate-Jwt",
    ),
    "authentik": HeaderNames(
        "X-authentik-username",
        "X-authentik-email",
        "X-authentik-name",
        "X-authentik-groups",
        "X-authentik-jwt",
        groups_separator="|",
    ),
    "none": HeaderNames(None, None, None, None, None),
}

CLAIMS = ("user", "email", "name", "groups", "jwt")

# Names no client may ever set, whatever the routes say: our own namespace and the
# usual identity headers of other gateways that upstream apps may be reading.
_ALWAYS_STRIPPED = frozenset(
    {
        "x-remote-user",
        "x-authentik-uid",
        "x-authentik-meta-provider",
        "x-auth-request-user",
        "x-auth-request-email",
        "x-auth-request-groups",
        "x-auth-request-preferred-username",
        "x-auth-request-access-token",
        "x-forwarded-access-token",
        "x-webauth-user",
    }
)


def header_names(route: RouteConfig) -> HeaderNames:
    if route.identity_headers == "custom":
        mapping = dict(route.identity_header_map)
        return HeaderNames(
            user=mapping.get("user"),
            email=mapping.get("email"),
            name=mapping.get("name"),
            groups=mapping.get("groups"),
            jwt=mapping.get("jwt"),
        )
    return PRESETS[route.identity_headers]


def _names(names: HeaderNames) -> Iterable[str]:
    for value in (names.user, names.email, names.name, names.groups, names.jwt):
        if value:
            yield value.lower()


def stripped_header_names(config: Config) -> frozenset[str]:
    """Every identity header name any preset or route of this config uses (lowercase)."""
    found = set(_ALWAYS_STRIPPED)
    for preset in PRESETS.values():
        found.update(_names(preset))
    for tenant in config.tenants:
        for route in tenant.routes:
            found.update(_names(header_names(route)))
    return frozenset(found)
