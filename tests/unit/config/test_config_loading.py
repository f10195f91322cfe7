# ruff: noqa: E501 - expected messages are kept whole, as an operator reads them
"""A valid file becomes the typed Config: defaults, parsed values, resolved paths."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from gateway.config import load_config
from gateway.config.model import (
    AuditConfig,
    Config,
    ListenAddress,
    ServerConfig,
    SessionsConfig,
)
from tests.unit.config.conftest import TENANTS, Load


def test_a_file_with_only_a_tenant_gets_every_default(load: Load, folder: Path) -> None:
    config = load('')
    assert config.server == ServerConfig()
    assert config.sessions == SessionsConfig()
    assert config.audit == AuditConfig()
    assert config.source == folder / "config.yaml"
    tenant = config.tenants[0]
    assert (tenant.id, tenant.name, tenant.domains) == ("acme", "acme", ("acme.test", "*.acme.test"))
    assert tenant.routes == ()


def test_the_default_sqlite_file_sits_next_to_the_config(load: Load, folder: Path) -> None:
    assert load('').storage == f"sqlite:///{folder}/authgate.db"


def test_relative_sqlite_path_is_resolved_against_the_config_folder(
    folder: Path, tmp_path: Path
) -> None:
    sub = tmp_path / "etc"
    sub.mkdir()
    (sub / "c.yaml").write_text("storage: sqlite:///data/x.db\n" + TENANTS)
    config = load_config(sub / "c.yaml", {})
    assert config.storage == f"sqlite:////{str(sub).lstrip('/')}/data/x.db"


def test_absolute_sqlite_and_postgres_urls_are_kept(load: Load) -> None:
    assert load("storage: sqlite:////var/lib/a.db\n").storage == "sqlite:////var/lib/a.db"
    url = "postgresql://authgate:pw@db:5432/authgate"
    assert load(f"storage: {url}\n").storage == url
    assert load("storage: postgres://db/x\n").storage == "postgres://db/x"


def test_durations_and_sections_are_parsed(load: Load) -> None:
    config = load(
        """\
        server:
          listen: ["0.0.0.0:9000", "[::1]:9001"]
          workers: 4
          trusted_proxies: [10.0.0.0/8, "2001:db8::/32"]
          prefix: /_auth
          client_timeout: 90s
          path_parameters: strip
        sessions:
          store: redis://127.0.0.1:6379/0
          lifetime: 12h
          idle_timeout: 15m
        logging: {level: debug, format: text}
        """
    )
    assert config.server.listen == (ListenAddress("0.0.0.0", 9000), ListenAddress("::1", 9001))
    assert str(config.server.listen[1]) == "[::1]:9001"
    assert config.server.workers == 4
    assert config.server.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("2001:db8::/32"),
    )
    assert config.server.prefix == "/_auth"
    assert config.server.client_timeout == 90.0
    assert config.server.path_parameters == "strip"
    assert config.sessions.store == "redis://127.0.0.1:6379/0"
    assert config.sessions.lifetime == 43200.0
    assert config.sessions.idle_timeout == 900.0
    assert (config.logging.level, config.logging.format) == ("debug", "text")


def test_a_single_listen_address_and_auto_workers(load: Load) -> None:
    config = load("server: {listen: 'localhost:0', workers: auto}\n")
    assert config.server.listen == (ListenAddress("localhost", 0),)
    assert config.server.workers is None


def test_empty_sections_mean_defaults(load: Load) -> None:
    config = load("server:\nsessions:\nsecrets:\n")
    assert config.server == ServerConfig()


def test_geoip_database_is_made_absolute(load: Load, folder: Path) -> None:
    (folder / "geo").mkdir()
    (folder / "geo" / "city.mmdb").write_bytes(b"x")
    config = load("geoip: {database: geo/city.mmdb}\n")
    assert config.geoip.database == folder / "geo" / "city.mmdb"


def test_the_result_is_the_frozen_model(load: Load) -> None:
    assert isinstance(load(''), Config)
