# ruff: noqa: E501 - expected messages are kept whole, as an operator reads them
"""AUTHGATE_<SECTION>_<KEY> overrides, and secrets read from files."""

from __future__ import annotations

from pathlib import Path

from gateway.config.model import ListenAddress
from tests.unit.config.conftest import Load, Problems

KEY = "k3y-that-must-never-be-printed-0123456789"


def test_environment_overrides_the_file(load: Load) -> None:
    config = load(
        "server:\n  listen: 127.0.0.1:1\nsessions:\n  lifetime: 30d\n",
        {
            "AUTHGATE_SESSIONS_LIFETIME": "12h",
            "AUTHGATE_SERVER_LISTEN": "0.0.0.0:9000",
            "AUTHGATE_SERVER_WORKERS": "3",
            "AUTHGATE_SERVER_DEV_MODE": "true",
            "AUTHGATE_STORAGE": "postgresql://u@db/authgate",
            "AUTHGATE_SECRETS_ENCRYPTION_KEY": "123456",
            "AUTHGATE_LOGGING_LEVEL": "debug",
        },
    )
    assert config.sessions.lifetime == 43200.0
    assert config.server.listen == (ListenAddress("0.0.0.0", 9000),)
    assert config.server.workers == 3
    assert config.server.dev_mode is True
    assert config.storage == "postgresql://u@db/authgate"
    assert config.secrets.encryption_key == "123456"  # text stays text, never a number
    assert config.logging.level == "debug"


def test_list_keys_take_comma_separated_items(load: Load) -> None:
    config = load("", {"AUTHGATE_SERVER_TRUSTED_PROXIES": "10.0.0.0/8, 192.168.0.0/16",
                       "AUTHGATE_SERVER_LISTEN": "127.0.0.1:1,[::1]:2"})
    assert [str(n) for n in config.server.trusted_proxies] == ["10.0.0.0/8", "192.168.0.0/16"]
    assert [str(a) for a in config.server.listen] == ["127.0.0.1:1", "[::1]:2"]


def test_environment_problems_name_the_variable(problems: Problems) -> None:
    assert problems(
        "sessions:\n  lifetime: nonsense\n",
        {"AUTHGATE_SERVER_WORKERS": "zero", "AUTHGATE_SESSIONS_FRESH_FOR": "-1"},
    ) == [
        "config.yaml:2: sessions.lifetime: expected a duration like 90s, 15m, 12h or 30d",
        '$AUTHGATE_SERVER_WORKERS: server.workers: expected "auto" or an integer of at least 1',
        "$AUTHGATE_SESSIONS_FRESH_FOR: sessions.fresh_for: expected a duration like 90s, 15m, 12h or 30d (not negative)",
    ]


def test_an_environment_override_replaces_a_bad_file_value(load: Load) -> None:
    config = load("sessions:\n  lifetime: nonsense\n", {"AUTHGATE_SESSIONS_LIFETIME": "1h"})
    assert config.sessions.lifetime == 3600.0


def test_a_misspelt_variable_is_reported_others_are_ignored(problems: Problems, load: Load) -> None:
    assert problems("", {"AUTHGATE_SESSIONS_LIFETIM": "1h"}) == [
        "$AUTHGATE_SESSIONS_LIFETIM: unknown setting (did you mean AUTHGATE_SESSIONS_LIFETIME?)"
    ]
    assert load("", {"AUTHGATE_CONFIG": "x.yaml", "AUTHGATE_TEST_PG_HOST": "db", "HOME": "/"})


def test_a_secret_comes_from_a_file_relative_to_the_config(load: Load, folder: Path) -> None:
    (folder / "keys").mkdir()
    (folder / "keys" / "enc.key").write_text(KEY + "\n")
    config = load("secrets:\n  encryption_key_file: keys/enc.key\n")
    assert config.secrets.encryption_key == KEY
    assert config.secrets.encryption_key_file == folder / "keys" / "enc.key"


def test_a_missing_or_empty_secret_file_is_an_error(problems: Problems, folder: Path) -> None:
    assert problems("secrets:\n  encryption_key_file: gone.key\n") == [
        f"config.yaml:2: secrets.encryption_key_file: file not found: {folder}/gone.key"
    ]
    (folder / "empty.key").write_text("\n")
    assert problems("secrets:\n  encryption_key_file: empty.key\n") == [
        f"config.yaml:2: secrets.encryption_key_file: file is empty: {folder}/empty.key"
    ]


def test_a_secret_and_its_file_together_are_refused(problems: Problems, folder: Path) -> None:
    (folder / "enc.key").write_text(KEY)
    shown = problems(f"secrets:\n  encryption_key: {KEY}\n  encryption_key_file: enc.key\n")
    assert shown == [
        "config.yaml:3: secrets.encryption_key_file: set either encryption_key or"
        " encryption_key_file, not both"
    ]


def test_the_environment_secret_replaces_both_forms_in_the_file(load: Load) -> None:
    config = load(
        "secrets:\n  encryption_key_file: gone.key\n", {"AUTHGATE_SECRETS_ENCRYPTION_KEY": KEY}
    )
    assert config.secrets.encryption_key == KEY
    assert config.secrets.encryption_key_file is None


def test_secret_files_from_the_environment_are_relative_to_the_working_directory(
    load: Load, folder: Path
) -> None:
    (folder / "env.key").write_text(KEY)
    config = load("", {"AUTHGATE_SECRETS_ENCRYPTION_KEY_FILE": "env.key"})
    assert config.secrets.encryption_key == KEY


def test_storage_and_session_store_urls_can_come_from_files(load: Load, folder: Path) -> None:
    (folder / "db.url").write_text("postgresql://authgate:s3cret@db/authgate\n")
    (folder / "redis.url").write_text("redis://:s3cret@cache:6379/0")
    config = load("storage_file: db.url\nsessions:\n  store_file: redis.url\n")
    assert config.storage == "postgresql://authgate:s3cret@db/authgate"
    assert config.sessions.store == "redis://:s3cret@cache:6379/0"


def test_secrets_never_appear_in_problems(problems: Problems, folder: Path) -> None:
    (folder / "bad.url").write_text(f"mysql://root:{KEY}@db/x")
    shown = problems(
        "storage_file: bad.url\nsecrets:\n  encryption_key: ''\n",
        {"AUTHGATE_SESSIONS_STORE": f"memcached://:{KEY}@x", "AUTHGATE_SERVER_WORKERS": KEY},
    )
    assert len(shown) == 4
    assert all(KEY not in line for line in shown), shown


def test_the_secret_is_kept_out_of_the_models_repr(load: Load) -> None:
    config = load("", {"AUTHGATE_SECRETS_ENCRYPTION_KEY": KEY})
    assert KEY not in repr(config)
