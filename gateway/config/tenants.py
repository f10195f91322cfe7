"""The `tenants` list: each tenant's domains, branding, methods, policy files and routes,
and the checks that span tenants (unique ids, a host pattern owned by one tenant only,
routes only on hosts of their own tenant).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from gateway.config import values as v
from gateway.config.fields import (
    Ctx,
    Entry,
    Field,
    Invalid,
    Reported,
    entries_of,
    mapping,
    parse_entries,
    record,
)
from gateway.config.model import (
    Branding,
    FooterLink,
    RouteConfig,
    TenantConfig,
    TenantSessions,
)
from gateway.tenants import HostIndex
from policies.source import line_of

LOGIN_METHODS = ("password", "passkey", "email_link", "email_code")
MFA_METHODS = ("totp", "webauthn", "backup_codes")

FOOTER_LINK_FIELDS = (
    Field("label", v.text, required=True),
    Field("url", v.link_target, required=True),
)

BRANDING_FIELDS = (
    Field("logo", v.optional(v.url_or_file)),
    Field("favicon", v.optional(v.url_or_file)),
    Field("primary_color", v.color),
    Field("secondary_color", v.optional(v.color)),
    Field("font_stack", v.css_text),
    Field("corner_radius", v.css_length),
    Field("custom_css", v.optional(v.existing_path("file"))),
    Field("templates", v.optional(v.existing_path("folder"))),
    Field(
        "footer_links",
        v.list_of(record(FooterLink, FOOTER_LINK_FIELDS), "links ({label, url})"),
    ),
    Field("support_email", v.optional(v.email)),
)

# `identity_headers` fills two model fields: a preset name, or "custom" plus the mapping.
ROUTE_FIELDS = (
    Field("host", v.host_name, required=True),
    Field("path", v.route_path),
    Field("upstream", v.upstream_url, required=True),
    Field("websockets", v.boolean),
    Field("preserve_host", v.boolean),
    Field("identity_headers", v.identity_headers),
    Field("connect_timeout", v.duration(positive=True)),
    Field("read_timeout", v.duration(positive=True)),
    Field("jwt", v.boolean),
)

# Each key overrides the `sessions` section's for this tenant; null keeps that one.
TENANT_SESSIONS_FIELDS = (
    Field("lifetime", v.optional(v.duration(positive=True))),
    Field("idle_timeout", v.optional(v.duration())),
    Field("remember_me_lifetime", v.optional(v.duration(positive=True))),
    Field("fresh_for", v.optional(v.duration(positive=True))),
)

TENANT_FIELDS = (
    Field("id", v.tenant_id, required=True),
    Field("name", v.text),
    Field("domains", v.list_of(v.host_name, "host names", non_empty=True), required=True),
    Field("branding", record(Branding, BRANDING_FIELDS)),
    Field("login_methods", v.subset(LOGIN_METHODS, "login methods", non_empty=True)),
    Field("mfa_methods", v.subset(MFA_METHODS, "second-factor methods", non_empty=False)),
    Field("policies", v.list_of(v.existing_path("file"), "policy file paths")),
    Field("routes", v.list_of(record(RouteConfig, ROUTE_FIELDS), "routes")),
    Field("default_url", v.optional(v.http_url)),
    Field("cookie_domain", v.optional(v.exact_host_name)),
    Field("signup", v.boolean),
    Field("login_host", v.optional(v.exact_host_name)),
    Field("users_file", v.optional(v.existing_path("file"))),
    Field("sessions", record(TenantSessions, TENANT_SESSIONS_FIELDS)),
)


@dataclass(frozen=True)
class _Draft:
    """What one tenant entry yielded, even when part of it was wrong (for cross checks)."""

    index: int
    ctx: Ctx
    raw: Any
    id: str | None
    domains: tuple[str, ...]
    config: TenantConfig | None


def parse_tenants(value: Any, ctx: Ctx) -> tuple[TenantConfig, ...]:
    """The whole `tenants` list; raises Reported after recording every problem."""
    if value is None:
        raise Invalid("required: a list of at least one tenant")
    if not isinstance(value, list) or not value:
        raise Invalid("expected a list of tenants (at least one)")
    before = len(ctx.problems)
    drafts = [_tenant(i, item, ctx.at(f"[{i}]", line_of(value, i))) for i, item in enumerate(value)]
    _check_unique_ids(drafts)
    _check_domain_owners(drafts)
    if len(ctx.problems) != before:
        raise Reported
    return tuple(d.config for d in drafts if d.config is not None)


def _tenant(index: int, raw: Any, ctx: Ctx) -> _Draft:
    try:
        tenant_map = mapping(raw, ctx, "a mapping (id, domains, routes, ...)")
    except Invalid as exc:
        ctx.report(exc.message)
        return _Draft(index, ctx, raw, None, (), None)
    before = len(ctx.problems)
    here = replace(ctx.where, line=line_of(tenant_map) or ctx.where.line)
    tctx = Ctx(ctx.key, here, ctx.problems)
    entries = entries_of(tenant_map, here)
    kwargs = parse_entries(entries, TENANT_FIELDS, tctx)
    domains: tuple[str, ...] = kwargs.get("domains", ())
    if "domains" in kwargs:
        _check_routes(kwargs.get("routes", ()), domains, entries.get("routes"), tctx)
        _check_default_url(kwargs.get("default_url"), domains, entries.get("default_url"), tctx)
        _check_cookie_domain(kwargs, domains, entries.get("cookie_domain"), tctx)
        _check_login_host(kwargs.get("login_host"), domains, entries.get("login_host"), tctx)
    if "routes" in kwargs:
        kwargs["routes"] = tuple(_custom_headers(r) for r in kwargs["routes"])
    config = None
    if len(ctx.problems) == before:
        kwargs.setdefault("name", kwargs["id"])
        config = TenantConfig(**kwargs)
    return _Draft(index, tctx, tenant_map, kwargs.get("id"), domains, config)


def _custom_headers(route: RouteConfig) -> RouteConfig:
    """A mapping under `identity_headers` becomes the "custom" preset with that map."""
    if isinstance(route.identity_headers, tuple):
        return replace(route, identity_headers="custom", identity_header_map=route.identity_headers)
    return route


def _route_host_ctx(entry: Entry | None, index: int, ctx: Ctx) -> Ctx:
    raw_routes = entry.value if entry is not None else None
    rctx = ctx.child(".routes", entry.where) if entry is not None else ctx.at(".routes")
    rctx = rctx.at(f"[{index}]", line_of(raw_routes, index))
    raw_route = raw_routes[index] if isinstance(raw_routes, list) else None
    return rctx.at(".host", line_of(raw_route, "host"))


def _check_routes(
    routes: tuple[RouteConfig, ...], domains: tuple[str, ...], entry: Entry | None, ctx: Ctx
) -> None:
    seen: dict[tuple[str, str], int] = {}
    for i, route in enumerate(routes):
        host_ctx = _route_host_ctx(entry, i, ctx)
        if not any(v.host_covers(d, route.host) for d in domains):
            host_ctx.report(
                f"{route.host} is not covered by this tenant's domains ({', '.join(domains)})"
            )
        key = (route.host, route.path.rstrip("/") or "/")
        if key in seen:
            host_ctx.report(f"same host and path as routes[{seen[key]}]")
        seen.setdefault(key, i)


def _check_default_url(
    url: str | None, domains: tuple[str, ...], entry: Entry | None, ctx: Ctx
) -> None:
    if url is None or entry is None:
        return
    host = (urlsplit(url).hostname or "").rstrip(".")
    if not any(v.host_covers(d, host) for d in domains):
        ctx.child(".default_url", entry.where).report(
            "must point to one of this tenant's domains"
        )


def _check_cookie_domain(
    kwargs: dict[str, Any], domains: tuple[str, ...], entry: Entry | None, ctx: Ctx
) -> None:
    cookie_domain = kwargs.get("cookie_domain")
    if cookie_domain is None or entry is None:
        return
    cctx = ctx.child(".cookie_domain", entry.where)
    if "." not in cookie_domain:
        cctx.report("expected a domain with at least two labels, like acme.test")
        return
    bases = [d.removeprefix("*.") for d in domains]
    if not any(b == cookie_domain or b.endswith("." + cookie_domain) for b in bases):
        cctx.report("must be one of this tenant's domains or a parent of one")


def _check_login_host(
    host: str | None, domains: tuple[str, ...], entry: Entry | None, ctx: Ctx
) -> None:
    if host is None or entry is None:
        return
    if not any(v.host_covers(d, host) for d in domains):
        ctx.child(".login_host", entry.where).report("must be one of this tenant's domains")


def _check_unique_ids(drafts: list[_Draft]) -> None:
    first: dict[str, _Draft] = {}
    for draft in drafts:
        if draft.id is None:
            continue
        if draft.id in first:
            other = first[draft.id]
            id_ctx = draft.ctx.at(".id", line_of(draft.raw, "id"))
            id_ctx.report(f'tenant id "{draft.id}" is already used by {other.ctx.key}')
        else:
            first[draft.id] = draft


def _check_domain_owners(drafts: list[_Draft]) -> None:
    """A host pattern belongs to one tenant; a route's exact host must resolve to its tenant."""
    owners: dict[str, tuple[_Draft, int | None]] = {}
    for draft in drafts:
        raw_domains = draft.raw.get("domains") if isinstance(draft.raw, dict) else None
        for j, domain in enumerate(draft.domains):
            line = line_of(raw_domains, j)
            if domain in owners and owners[domain][0].id != draft.id:
                owner, owner_line = owners[domain]
                seen = f" (line {owner_line})" if owner_line is not None else ""
                draft.ctx.at(".domains").at(f"[{j}]", line).report(
                    f'{domain} belongs to both tenant "{owner.id}"{seen} and tenant "{draft.id}"'
                )
            owners.setdefault(domain, (draft, line))
    index = HostIndex((domain, d.id) for domain, (d, _) in owners.items())
    for draft in drafts:
        if draft.config is None:
            continue
        raw_routes = draft.raw.get("routes")
        for i, route in enumerate(draft.config.routes):
            owner_id = None if route.host.startswith("*.") else index.get(route.host)
            if owner_id is not None and owner_id != draft.id:
                where = replace(draft.ctx.where, line=line_of(draft.raw, "routes"))
                entry = Entry(raw_routes, where)
                _route_host_ctx(entry, i, draft.ctx).report(
                    f'{route.host} belongs to tenant "{owner_id}", not to this tenant'
                )
