"""The typed configuration: parsed once at start, never looked at as YAML again.

Every field has a default except `tenants`. Durations are seconds (float).
Paths are absolute (resolved against the config file's folder by the loader).
"""

from __future__ import annotations

import ipaddress
from dataclasses import astuple, dataclass, field, replace
from pathlib import Path
from typing import Literal

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DAY = 86400.0
HOUR = 3600.0


@dataclass(frozen=True)
class ListenAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ServerConfig:
    listen: tuple[ListenAddress, ...] = (ListenAddress("127.0.0.1", 8080),)
    workers: int | None = None  # None = "auto" = CPU count
    trusted_proxies: tuple[IPNetwork, ...] = ()
    prefix: str = "/.authgate"
    dev_mode: bool = False
    public_url: str | None = None  # scheme to assume for redirects when behind TLS termination
    max_header_size: int = 8190  # bytes, per header line and per field
    max_body_size: int = 1024 * 1024  # bytes, bodies of our own endpoints (not proxied ones)
    client_timeout: float = 60.0  # seconds a client may take to send its request head
    keepalive_timeout: float = 75.0
    shutdown_timeout: float = 15.0  # bound on draining in-flight requests at SIGTERM
    metrics_networks: tuple[IPNetwork, ...] = (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    # How `;params` in a request path are treated: refused with 400, or cut off before
    # the policy sees the path (the cut path is also the one forwarded).
    path_parameters: Literal["reject", "strip"] = "reject"
    # Plain allowed GETs served by gateway/fast_path.py; everything else by aiohttp.
    fast_path: bool = True
    # CPUs each worker process runs on (gateway/cpu_affinity.py): "none" (the kernel
    # decides), "auto" (one of the CPUs this process may use, per worker), or CPU numbers.
    cpu_affinity: str | tuple[int, ...] = "none"


@dataclass(frozen=True)
class SessionsConfig:
    store: str = "storage"  # "storage" or a Redis URL (gateway/stores/redis_urls.py)
    cookie_name: str = "authgate_session"
    lifetime: float = 30 * DAY
    refresh_after: float = DAY
    fresh_for: float = HOUR
    idle_timeout: float = 0.0  # 0 = off
    remember_me_lifetime: float = 30 * DAY
    cache_ttl: float = 2.0  # per-process session cache bound
    redis_prefix: str = "authgate:"  # key prefix in Redis (several gateways may share one)
    cache_size: int = 10_000  # sessions each process caches at most (least recently used go)


@dataclass(frozen=True)
class SecretsConfig:
    encryption_key: str | None = field(default=None, repr=False)
    encryption_key_file: Path | None = None


@dataclass(frozen=True)
class PasswordsConfig:
    """argon2id parameters; defaults at least OWASP's (m=19 MiB, t=2, p=1)."""

    time_cost: int = 2
    memory_cost: int = 19456  # KiB
    parallelism: int = 1


@dataclass(frozen=True)
class MfaConfig:
    enrollment: Literal["required_at_first_prompt", "deny"] = "required_at_first_prompt"
    totp_issuer: str | None = None


@dataclass(frozen=True)
class RegulationConfig:
    max_retries: int = 3
    find_time: float = 120.0
    ban_time: float = 300.0


@dataclass(frozen=True)
class GeoipConfig:
    database: Path | None = None
    asn_database: Path | None = None
    impossible_travel_kmh: float = 1000.0
    on_impossible_travel: Literal["step_up", "deny", "notify"] = "step_up"
    on_new_country: Literal["step_up", "deny", "notify"] = "notify"


@dataclass(frozen=True)
class AuditConfig:
    retention: float = 90 * DAY


@dataclass(frozen=True)
class StoresConfig:
    """The circuit breaker in front of each store client (gateway/stores/breaker.py)."""

    breaker_threshold: int = 3  # outage failures in a row that open it
    breaker_window: float = 10.0  # s: a failure further from the last starts the count anew
    breaker_cool_off: float = 1.0  # s: the first cool-off once open
    breaker_max_cool_off: float = 5.0  # s: the longest, while probes keep failing


@dataclass(frozen=True)
class LoggingConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"
    access_log: bool = True  # one line per request (never the query string)
    otel: bool = False  # a span per request, when authgate[otel] is installed


@dataclass(frozen=True)
class FooterLink:
    label: str
    url: str


@dataclass(frozen=True)
class Branding:
    logo: str | None = None  # URL or absolute file path
    favicon: str | None = None
    primary_color: str = "#2563EB"
    secondary_color: str | None = None
    font_stack: str = (
        'system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif'
    )
    corner_radius: str = "8px"
    custom_css: Path | None = None
    templates: Path | None = None  # a directory overriding the built-in templates
    footer_links: tuple[FooterLink, ...] = ()
    support_email: str | None = None


IdentityHeaders = str  # preset name ("default", "authelia", "oauth2-proxy", "authentik", "none")


@dataclass(frozen=True)
class RouteConfig:
    host: str  # exact host or "*.example.com"; lowercased, no port
    upstream: str  # http(s)://host:port[/base]
    path: str = "/"  # prefix, whole segments
    websockets: bool = True
    preserve_host: bool = False
    identity_headers: IdentityHeaders = "default"
    identity_header_map: tuple[tuple[str, str], ...] = ()  # custom: (claim, header name)
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    jwt: bool = True

    def __hash__(self) -> int:
        # A route keys dicts on every request (its upstream, its identity headers' names,
        # a session's identity built for it): the hash of its ten fields is made once.
        found: int | None = self.__dict__.get("_hash")
        if found is None:
            found = hash(astuple(self))
            object.__setattr__(self, "_hash", found)
        return found

    def __getstate__(self) -> dict[str, object]:
        # Not pickled: another process hashes strings with another seed.
        return {name: value for name, value in self.__dict__.items() if name != "_hash"}


@dataclass(frozen=True)
class TenantSessions:
    """A tenant's own session lifetimes (`tenants[].sessions`); None = the `sessions` value."""

    lifetime: float | None = None
    idle_timeout: float | None = None
    remember_me_lifetime: float | None = None
    fresh_for: float | None = None

    def over(self, base: SessionsConfig) -> SessionsConfig:
        """`base` with this tenant's overrides applied."""
        return replace(
            base,
            lifetime=base.lifetime if self.lifetime is None else self.lifetime,
            idle_timeout=base.idle_timeout if self.idle_timeout is None else self.idle_timeout,
            remember_me_lifetime=base.remember_me_lifetime
            if self.remember_me_lifetime is None
            else self.remember_me_lifetime,
            fresh_for=base.fresh_for if self.fresh_for is None else self.fresh_for,
        )


@dataclass(frozen=True)
class TenantConfig:
    id: str
    name: str
    domains: tuple[str, ...]
    branding: Branding = Branding()
    login_methods: tuple[str, ...] = ("password", "passkey")
    mfa_methods: tuple[str, ...] = ("totp", "webauthn", "backup_codes")
    policies: tuple[Path, ...] = ()
    routes: tuple[RouteConfig, ...] = ()
    default_url: str | None = None  # where to land after login when rd is refused
    cookie_domain: str | None = None  # None = host-only
    signup: bool = False
    # The host where SSO across the tenant's unrelated domains signs in; None = no
    # hand-off: each domain (or cookie_domain family) signs in on its own.
    login_host: str | None = None
    users_file: Path | None = None  # optional read-only YAML users source
    sessions: TenantSessions = TenantSessions()


def sso_login_host(tenant: TenantConfig) -> str | None:
    """The tenant's primary login host, when SSO across its domains is on.

    Opt-in rather than "the first domain": a tenant whose domains are aliases of one
    machine (the demo's localhost, 127.0.0.1, [::1]) would otherwise bounce every
    sign-in to the first of them."""
    return tenant.login_host


@dataclass(frozen=True)
class Config:
    source: Path  # the file this was read from (absolute)
    tenants: tuple[TenantConfig, ...]
    server: ServerConfig = ServerConfig()
    storage: str = "sqlite:///authgate.db"  # resolved: sqlite:////abs/path.db or postgresql://…
    sessions: SessionsConfig = SessionsConfig()
    secrets: SecretsConfig = SecretsConfig()
    passwords: PasswordsConfig = PasswordsConfig()
    mfa: MfaConfig = MfaConfig()
    regulation: RegulationConfig = RegulationConfig()
    geoip: GeoipConfig = GeoipConfig()
    audit: AuditConfig = AuditConfig()
    stores: StoresConfig = StoresConfig()
    logging: LoggingConfig = LoggingConfig()
