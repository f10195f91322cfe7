"""`load_config()`: one YAML file plus `AUTHGATE_*` variables → a typed, checked `Config`.

Every problem is collected before anything is raised, so an operator fixes a file in one
pass. Problems read `FILE:LINE: key.path: what is wrong`; those from the environment name
the variable instead (`$AUTHGATE_SESSIONS_LIFETIME: sessions.lifetime: …`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.config import environment
from gateway.config.fields import (
    Ctx,
    Entry,
    Invalid,
    Problems,
    Reported,
    Where,
    accepted_keys,
    did_you_mean,
    entries_of,
    parse_entries,
)
from gateway.config.model import Config
from gateway.config.sections import SECTIONS, TOP_LEVEL, Section
from gateway.config.tenants import parse_tenants
from gateway.errors import ConfigError
from policies.source import Problem, SourceError, line_of, load_yaml_file

DEFAULT_STORAGE = "sqlite:///authgate.db"
TOP_LEVEL_KEYS = (
    *(s.name for s in SECTIONS),
    *accepted_keys(TOP_LEVEL),
    "tenants",
)


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read, check and build the configuration; raise ConfigError listing every problem.

    `environ` defaults to `os.environ`; pass `{}` to ignore the environment.
    """
    environ = os.environ if environ is None else environ
    label = str(path)
    try:
        raw = load_yaml_file(path)
    except SourceError as exc:
        raise ConfigError(exc.problems) from None
    source = Path(os.path.abspath(path))
    file_where = Where(label, None, source.parent)
    problems = Problems()
    root = Ctx("", file_where, problems)

    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.add(
            Where(label, line_of(raw) or 1, source.parent),
            "",
            "expected a mapping of sections (server, storage, sessions, tenants, ...)",
        )
        raise ConfigError(problems.items)

    found = environment.overrides(environ, Path.cwd(), problems)
    entries = entries_of(raw, file_where)
    for key, entry in entries.items():
        if key not in TOP_LEVEL_KEYS:
            root.child(str(key), entry.where).report(
                f"unknown key{did_you_mean(str(key), TOP_LEVEL_KEYS)}"
            )

    kwargs: dict[str, Any] = {}
    top = {k: e for k, e in entries.items() if k in accepted_keys(TOP_LEVEL)}
    top = environment.apply(top, None, found)
    if "storage" not in top and "storage_file" not in top:
        # The default SQLite file lives next to the config file, like any relative path.
        top["storage"] = Entry(DEFAULT_STORAGE, file_where)
    kwargs.update(parse_entries(top, TOP_LEVEL, root))
    origins: dict[str, dict[Any, Entry]] = {}
    for section in SECTIONS:
        built, origins[section.name] = _section(section, entries.get(section.name), found, root)
        if built is not None:
            kwargs[section.name] = built
    tenants_entry = entries.get("tenants")
    tctx = root.child("tenants", tenants_entry.where) if tenants_entry else root.at("tenants")
    try:
        kwargs["tenants"] = parse_tenants(
            tenants_entry.value if tenants_entry else None, tctx
        )
    except Invalid as exc:
        tctx.report(exc.message)
    except Reported:
        pass

    if not problems.items:
        _check_relations(kwargs, origins, root)
    if problems.items:
        raise ConfigError(_ordered(problems.items, label))
    return Config(source=source, **kwargs)


def _section(
    section: Section, entry: Entry | None, found: list[environment.Override], root: Ctx
) -> tuple[Any, dict[Any, Entry]]:
    """One section's dataclass (None after recording its problems), and where each key
    came from."""
    value = entry.value if entry is not None else None
    where = entry.where if entry is not None else root.where
    ctx = root.child(section.name, where)
    if value is not None and not isinstance(value, dict):
        ctx.report("expected a mapping")
        value = None
    inner = Where(where.file, line_of(value) if value is not None else where.line, where.base_dir)
    section_entries = entries_of(value, inner) if value is not None else {}
    before = len(root.problems)
    merged = environment.apply(section_entries, section.name, found)
    parsed = parse_entries(merged, section.fields, ctx)
    if len(root.problems) != before:
        return None, merged
    return section.model(**parsed), merged


def _check_relations(
    kwargs: dict[str, Any], origins: dict[str, dict[Any, Entry]], root: Ctx
) -> None:
    """Relations between keys that each look fine alone."""

    def report(section: str, key: str, message: str) -> None:
        entry = origins[section].get(key)
        where = entry.where if entry is not None else root.where
        root.child(f"{section}.{key}", where).report(message)

    # (A refresh_after longer than the lifetime is allowed: it only turns rolling
    # refresh off, and AUTHGATE_SESSIONS_LIFETIME=12h alone must stay valid.)
    passwords = kwargs["passwords"]
    if passwords.memory_cost < 8 * passwords.parallelism:
        report(
            "passwords",
            "memory_cost",
            "must be at least 8 times passwords.parallelism (argon2 requires it)",
        )


def _ordered(problems: list[Problem], label: str) -> list[Problem]:
    """File problems by line, then those from the environment."""
    return sorted(problems, key=lambda p: (p.file != label, p.file, p.line or 0))
