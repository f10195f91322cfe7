"""`AUTHGATE_<SECTION>_<KEY>` environment variables that override keys of the file.

Every key of the non-tenant sections can be overridden (`AUTHGATE_SESSIONS_LIFETIME=12h`,
`AUTHGATE_SERVER_LISTEN=0.0.0.0:9000`), as can `AUTHGATE_STORAGE` and the `_FILE`
variants of secrets (`AUTHGATE_SECRETS_ENCRYPTION_KEY_FILE`). Values go through the same
parsers as the file; problems name the variable instead of a line. List keys take
comma-separated items. Relative paths in variables are relative to the working directory.

A variable that is not a setting but is spelt close to one is reported (a typo would
otherwise be silently ignored); other `AUTHGATE_*` variables (`AUTHGATE_CONFIG`, …) are
left alone.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gateway.config.fields import Entry, Field, Problems, Where, file_companion
from gateway.config.sections import SECTIONS, TOP_LEVEL

PREFIX = "AUTHGATE_"


@dataclass(frozen=True)
class Setting:
    """The key a variable sets: `section` is None for top-level keys such as `storage`."""

    section: str | None
    key: str
    field: Field
    from_file: bool  # the variable names a file holding the secret


def _settings() -> dict[str, Setting]:
    table: dict[str, Setting] = {}

    def add(section: str | None, fields: Sequence[Field]) -> None:
        stem = PREFIX + (f"{section.upper()}_" if section else "")
        for f in fields:
            table[stem + f.name.upper()] = Setting(section, f.name, f, False)
            if f.secret:
                companion = file_companion(f.name)
                table[stem + companion.upper()] = Setting(section, companion, f, True)

    add(None, TOP_LEVEL)
    for section in SECTIONS:
        add(section.name, section.fields)
    return table


SETTINGS = _settings()


@dataclass(frozen=True)
class Override:
    setting: Setting
    entry: Entry


def overrides(environ: Mapping[str, str], cwd: Path, problems: Problems) -> list[Override]:
    """The overrides present in `environ`; near-miss names are recorded as problems."""
    found: list[Override] = []
    for name in sorted(environ):
        if not name.startswith(PREFIX):
            continue
        where = Where(f"${name}", None, cwd)
        setting = SETTINGS.get(name)
        if setting is None:
            close = difflib.get_close_matches(name, list(SETTINGS), n=1, cutoff=0.85)
            if close:
                problems.add(where, "", f"unknown setting (did you mean {close[0]}?)")
            continue
        found.append(Override(setting, Entry(_value(environ[name], setting), where)))
    return found


def _value(text: str, setting: Setting) -> Any:
    """The variable's text as the parser expects it: strings stay strings, lists split."""
    if setting.from_file or setting.field.env == "text":
        return text
    if setting.field.env == "list":
        return [item.strip() for item in text.split(",") if item.strip()]
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    # Only scalars: `AUTHGATE_X={a: b}` must not smuggle a structure past the parsers.
    return value if isinstance(value, str | int | float | bool) or value is None else text


def apply(
    entries: dict[Any, Entry], section: str | None, found: Sequence[Override]
) -> dict[Any, Entry]:
    """`entries` of one section with the environment's values laid over them.

    Setting a secret or its `_file` form from the environment replaces both forms given
    in the file, so the file's value cannot conflict with the operator's override.
    """
    merged = dict(entries)
    for override in found:
        s = override.setting
        if s.section != section:
            continue
        if s.field.secret:
            merged.pop(s.field.name, None)
            merged.pop(file_companion(s.field.name), None)
        merged[s.key] = override.entry
    return merged
