"""The keys of every section except `tenants`, with their parsers.

The order of `SECTIONS` is the order of `Config`'s fields; a test keeps these tables,
the dataclasses and the JSON schema in agreement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.config import values as v
from gateway.config.fields import Field
from gateway.config.model import (
    AuditConfig,
    GeoipConfig,
    LoggingConfig,
    MfaConfig,
    PasswordsConfig,
    RegulationConfig,
    SecretsConfig,
    ServerConfig,
    SessionsConfig,
    StoresConfig,
)


@dataclass(frozen=True)
class Section:
    """A mapping at the top level of the file, built into one model dataclass."""

    name: str
    model: Any
    fields: tuple[Field, ...]


_ACTIONS = ("step_up", "deny", "notify")

SERVER = Section(
    "server",
    ServerConfig,
    (
        Field(
            "listen",
            v.list_of(v.listen_address, "host:port addresses", non_empty=True, scalar_ok=True),
            env="list",
        ),
        Field("workers", v.workers),
        Field("trusted_proxies", v.list_of(v.network, "networks (CIDR)"), env="list"),
        Field("prefix", v.reserved_prefix, env="text"),
        Field("dev_mode", v.boolean),
        Field("public_url", v.optional(v.http_url)),
        Field("max_header_size", v.integer(1024, 1024 * 1024)),
        Field("max_body_size", v.integer(1024)),
        Field("client_timeout", v.duration(positive=True)),
        Field("keepalive_timeout", v.duration(positive=True)),
        Field("shutdown_timeout", v.duration()),
        Field("metrics_networks", v.list_of(v.network, "networks (CIDR)"), env="list"),
        Field("path_parameters", v.choice("reject", "strip"), env="text"),
        Field("fast_path", v.boolean),
        Field("cpu_affinity", v.cpu_affinity),
    ),
)

SESSIONS = Section(
    "sessions",
    SessionsConfig,
    (
        Field("store", v.session_store, env="text", secret=True),
        Field("cookie_name", v.header_name, env="text"),
        Field("lifetime", v.duration(positive=True)),
        Field("refresh_after", v.duration(positive=True)),
        Field("fresh_for", v.duration(positive=True)),
        Field("idle_timeout", v.duration()),
        Field("remember_me_lifetime", v.duration(positive=True)),
        Field("cache_ttl", v.duration()),
        Field("redis_prefix", v.text, env="text"),
        Field("cache_size", v.integer(minimum=0)),
    ),
)

SECRETS = Section(
    "secrets",
    SecretsConfig,
    (Field("encryption_key", v.secret_text, env="text", secret=True, keep_file_path=True),),
)

PASSWORDS = Section(
    "passwords",
    PasswordsConfig,
    (
        Field("time_cost", v.integer(1, 100)),
        Field("memory_cost", v.integer(8, 4 * 1024 * 1024)),
        Field("parallelism", v.integer(1, 64)),
    ),
)

MFA = Section(
    "mfa",
    MfaConfig,
    (
        Field("enrollment", v.choice("required_at_first_prompt", "deny"), env="text"),
        Field("totp_issuer", v.optional(v.text), env="text"),
    ),
)

REGULATION = Section(
    "regulation",
    RegulationConfig,
    (
        Field("max_retries", v.integer(1)),
        Field("find_time", v.duration(positive=True)),
        Field("ban_time", v.duration(positive=True)),
    ),
)

GEOIP = Section(
    "geoip",
    GeoipConfig,
    (
        Field("database", v.optional(v.existing_path("file"))),
        Field("asn_database", v.optional(v.existing_path("file"))),
        Field("impossible_travel_kmh", v.positive_number),
        Field("on_impossible_travel", v.choice(*_ACTIONS), env="text"),
        Field("on_new_country", v.choice(*_ACTIONS), env="text"),
    ),
)

AUDIT = Section("audit", AuditConfig, (Field("retention", v.duration(positive=True)),))

STORES = Section(
    "stores",
    StoresConfig,
    (
        Field("breaker_threshold", v.integer(1, 1000)),
        Field("breaker_window", v.duration(positive=True)),
        Field("breaker_cool_off", v.duration(positive=True)),
        Field("breaker_max_cool_off", v.duration(positive=True)),
    ),
)

LOGGING = Section(
    "logging",
    LoggingConfig,
    (
        Field("level", v.choice("debug", "info", "warning", "error"), env="text"),
        Field("format", v.choice("json", "text"), env="text"),
        Field("access_log", v.boolean),
        Field("otel", v.boolean),
    ),
)

SECTIONS: tuple[Section, ...] = (
    SERVER,
    SESSIONS,
    SECRETS,
    PASSWORDS,
    MFA,
    REGULATION,
    GEOIP,
    AUDIT,
    STORES,
    LOGGING,
)

# Scalar keys at the top level (besides the sections and `tenants`).
TOP_LEVEL = (Field("storage", v.storage_url, env="text", secret=True),)
