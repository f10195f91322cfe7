# ruff: noqa: E501 - expected messages are kept whole, as an operator reads them
"""Bad values are reported as `config.yaml:LINE: key.path: what is wrong`, all at once."""

from __future__ import annotations

import pytest

from tests.unit.config.conftest import Problems


def test_the_issue_example_names_file_line_and_key(problems: Problems) -> None:
    assert problems(
        """\
        server:
          listen: 127.0.0.1:0
        tenants:
          - id: acme
            domains: acme.test
        """
    ) == ["config.yaml:5: tenants[0].domains: expected a list of host names"]


def test_every_problem_is_reported_in_one_run_in_line_order(problems: Problems) -> None:
    assert problems(
        """\
        server:
          listn: 127.0.0.1:0
          workers: 0
        sessions:
          lifetime: 12x
        logging:
          level: loud
        """
    ) == [
        'config.yaml:2: server.listn: unknown key (did you mean "listen"?)',
        'config.yaml:3: server.workers: expected "auto" or an integer of at least 1',
        "config.yaml:5: sessions.lifetime: expected a duration like 90s, 15m, 12h or 30d",
        "config.yaml:7: logging.level: expected one of: debug, info, warning, error",
    ]


def test_unknown_top_level_key_suggests_the_section(problems: Problems) -> None:
    assert problems("sesions:\n  lifetime: 1d\n") == [
        'config.yaml:1: sesions: unknown key (did you mean "sessions"?)'
    ]


def test_unknown_key_without_a_near_miss_has_no_suggestion(problems: Problems) -> None:
    assert problems("server:\n  zzz: 1\n") == ["config.yaml:2: server.zzz: unknown key"]


def test_a_section_that_is_not_a_mapping(problems: Problems) -> None:
    assert problems("server: [1, 2]\n") == ["config.yaml:1: server: expected a mapping"]


def test_the_file_must_be_a_mapping(problems: Problems) -> None:
    assert problems("- tenants: []\n") == [
        "config.yaml:1: expected a mapping of sections (server, storage, sessions, tenants, ...)"
    ]


def test_tenants_are_required(problems: Problems) -> None:
    assert problems("logging: {}\ntenants:\n") == [
        "config.yaml:2: tenants: required: a list of at least one tenant"
    ]
    assert problems("tenants: []\n") == [
        "config.yaml:1: tenants: expected a list of tenants (at least one)"
    ]


def test_an_empty_file_needs_tenants(folder: object, problems: Problems) -> None:
    assert problems("# nothing yet\ntenants: null\n") == [
        "config.yaml:2: tenants: required: a list of at least one tenant"
    ]


def test_invalid_yaml_and_duplicate_keys_are_located(problems: Problems) -> None:
    assert problems("server:\n  listen: [\ntenants: x\n")[0].startswith("config.yaml:4: invalid YAML")
    assert problems("server: {}\nserver: {}\ntenants: []\n") == [
        "config.yaml:2: server: duplicate key (first at line 1)"
    ]


def test_a_missing_file_is_a_config_error(folder: object) -> None:
    from pathlib import Path

    from gateway.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"nope\.yaml: file not found"):
        load_config(Path("nope.yaml"), {})


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("listen: 127.0.0.1", 'server.listen: expected "host:port", like 127.0.0.1:8080 or [::1]:8080'),
        ("listen: '::1:8080'", "server.listen: an IPv6 address goes in brackets, like [::1]:8080"),
        ("listen: '[zz]:80'", "server.listen: not an IPv6 address in brackets;"
         ' expected "host:port", like 127.0.0.1:8080 or [::1]:8080'),
        ("listen: 'host:99999'", "server.listen: expected a port from 0 to 65535 after the colon"),
        ("listen: []", "server.listen: expected a list of host:port addresses (at least one)"),
        ("workers: many", 'server.workers: expected "auto" or an integer of at least 1'),
        ("workers: true", 'server.workers: expected "auto" or an integer of at least 1'),
        ("trusted_proxies: 10.0.0.0/8", "server.trusted_proxies: expected a list of networks (CIDR)"),
        ("trusted_proxies: [10.0.0.1/8]",
         "server.trusted_proxies[0]: expected a network in CIDR notation: 10.0.0.1/8 has host bits set"),
        ("metrics_networks: [10.0.0.0/8, 10.0.0.0/8]", "server.metrics_networks[1]: listed twice (also [0])"),
        ("prefix: auth", 'server.prefix: expected a path starting with "/", like /.authgate'),
        ("prefix: /auth/", 'server.prefix: expected no trailing "/", like /.authgate'),
        ("prefix: /", 'server.prefix: cannot be "/": it would reserve every path'),
        ("prefix: /a//b", "server.prefix: may contain only letters, digits and . _ ~ - between single slashes"),
        ("prefix: /a/../b", 'server.prefix: must not contain "." or ".." segments'),
        ("dev_mode: yes please", "server.dev_mode: expected true or false"),
        ("public_url: ftp://x", "server.public_url: expected an http:// or https:// URL with a host"),
        ("max_header_size: 10", "server.max_header_size: expected an integer from 1024 to 1048576"),
        ("client_timeout: 0", "server.client_timeout: expected a duration greater than 0, like 90s, 15m, 12h or 30d"),
        ("shutdown_timeout: -1s", "server.shutdown_timeout: expected a duration like 90s, 15m, 12h or 30d"),
        ("path_parameters: keep", "server.path_parameters: expected one of: reject, strip"),
    ],
)
def test_server_values(problems: Problems, line: str, message: str) -> None:
    assert problems(f"server:\n  {line}\n") == [f"config.yaml:2: {message}"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("storage: mysql://root:hunter2@db/x",
         "storage: expected sqlite:///relative.db, sqlite:////absolute.db or postgresql://user@host:5432/db"),
        ("storage: sqlite://x.db",
         "storage: expected sqlite:///relative.db, sqlite:////absolute.db or postgresql://user@host:5432/db"),
        ("storage: postgresql://db/x?wait_replicas=17",
         "storage: wait_replicas must be 0 to 16, not '17'"),
        ("storage: postgresql://db/x?sslmode=require&wait_replicas=one",
         "storage: wait_replicas must be 0 to 16, not 'one'"),
        ("sessions:\n  store: memcached://x",
         'sessions.store: expected "storage" or a redis://, rediss:// or redis+sentinel:// URL'),
        ("sessions:\n  store: redis://",
         'sessions.store: expected "storage" or a redis://, rediss:// or redis+sentinel:// URL with a host'),
        ("sessions:\n  cookie_name: 'a b'",
         "sessions.cookie_name: expected an HTTP header name, like Remote-User"),
        ("passwords:\n  time_cost: 0", "passwords.time_cost: expected an integer from 1 to 100"),
        ("mfa:\n  enrollment: later",
         "mfa.enrollment: expected one of: required_at_first_prompt, deny"),
        ("regulation:\n  max_retries: 0", "regulation.max_retries: expected an integer of at least 1"),
        ("geoip:\n  impossible_travel_kmh: 0",
         "geoip.impossible_travel_kmh: expected a number greater than 0"),
        ("geoip:\n  on_new_country: dney",
         'geoip.on_new_country: expected one of: step_up, deny, notify (did you mean "deny"?)'),
        ("audit:\n  retention: forever", "audit.retention: expected a duration like 90s, 15m, 12h or 30d"),
    ],
)
def test_other_section_values(problems: Problems, text: str, message: str) -> None:
    line = text.count("\n") + 1
    assert problems(text + "\n") == [f"config.yaml:{line}: {message}"]


def test_storage_problems_never_show_the_url(problems: Problems) -> None:
    shown = problems("storage: mysql://root:hunter2@db/x\nsessions:\n  store: memcached://:pw@x\n")
    assert not any("hunter2" in p or ":pw@" in p for p in shown)


def test_a_missing_geoip_database_is_reported_with_its_absolute_path(
    problems: Problems, folder: object
) -> None:
    assert problems("geoip:\n  database: geo.mmdb\n") == [
        f"config.yaml:2: geoip.database: file not found: {folder}/geo.mmdb"
    ]


def test_argon2_memory_must_cover_the_lanes(problems: Problems) -> None:
    assert problems("passwords:\n  memory_cost: 64\n  parallelism: 16\n") == [
        "config.yaml:2: passwords.memory_cost: must be at least 8 times passwords.parallelism"
        " (argon2 requires it)"
    ]
