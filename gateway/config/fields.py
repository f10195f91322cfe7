"""The machinery every config section shares: where a value came from, how problems are
collected, and how a mapping of keys becomes keyword arguments for a model dataclass.

A parser is a function `(value, ctx) -> parsed`. It raises `Invalid(message)` when the
value as a whole is wrong (the caller records it at the value's place), or reports
finer-grained problems itself through `ctx` and raises `Reported` (nothing more to add).
Either way loading continues, so one run lists every problem in the file.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from policies.source import Problem, line_of


class Invalid(Exception):
    """The value is wrong; `message` says what was expected (never echoes a secret)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Reported(Exception):
    """The value is wrong and the parser already recorded why."""


@dataclass(frozen=True)
class Where:
    """The origin of a value: a file line or an environment variable (`$AUTHGATE_…`).

    `base_dir` is the folder relative paths in this value are resolved against: the
    config file's folder for the file, the working directory for the environment.
    """

    file: str
    line: int | None
    base_dir: Path

    def resolve(self, text: str) -> Path:
        """An absolute, normalised path (symlinks are kept: the operator named this path)."""
        return Path(os.path.normpath(self.base_dir / Path(text).expanduser()))


class Problems:
    """Collects every problem found in one load."""

    def __init__(self) -> None:
        self.items: list[Problem] = []

    def add(self, where: Where, key: str, message: str) -> None:
        self.items.append(Problem(where.file, where.line, key, message))

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True)
class Ctx:
    """A value's key path (`tenants[0].domains`) and origin, and where to report problems."""

    key: str
    where: Where
    problems: Problems = field(compare=False)

    def at(self, sub: str, line: int | None = None) -> Ctx:
        """The context of a child: `sub` is `.name` or `[i]`; `line` when known."""
        where = self.where if line is None else replace(self.where, line=line)
        key = f"{self.key}{sub}" if self.key or sub.startswith("[") else sub.lstrip(".")
        return Ctx(key, where, self.problems)

    def child(self, sub: str, where: Where) -> Ctx:
        """The context of a child whose origin is known exactly (a key's own line)."""
        return Ctx(self.at(sub).key, where, self.problems)

    def report(self, message: str) -> None:
        self.problems.add(self.where, self.key, message)


Parser = Callable[[Any, Ctx], Any]
EnvKind = Literal["text", "yaml", "list"]


@dataclass(frozen=True)
class Field:
    """One key of a section. `secret` keys also accept `<name>_file` (read at load)."""

    name: str
    parse: Parser
    env: EnvKind = "yaml"  # how an environment variable's text becomes a value
    secret: bool = False
    required: bool = False
    keep_file_path: bool = False  # the model also has `<name>_file`: store the path there


@dataclass(frozen=True)
class Entry:
    """A raw value with its origin, before parsing."""

    value: Any
    where: Where


def file_companion(name: str) -> str:
    return f"{name}_file"


def accepted_keys(fields: Sequence[Field]) -> list[str]:
    """Every key a mapping with these fields may contain (secrets' `_file` companions too)."""
    keys = [f.name for f in fields]
    keys += [
        file_companion(f.name)
        for f in fields
        if f.secret and file_companion(f.name) not in keys
    ]
    return keys


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    """` (did you mean "x"?)` when a choice is close to `word`, else an empty string."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def entries_of(raw: Mapping[Any, Any], where: Where) -> dict[Any, Entry]:
    """The keys of a YAML mapping with the line each one is on."""
    return {key: Entry(value, replace(where, line=line_of(raw, key))) for key, value in raw.items()}


def parse_entries(
    entries: Mapping[Any, Entry], fields: Sequence[Field], ctx: Ctx
) -> dict[str, Any]:
    """Parse the known keys into keyword arguments; report unknown keys and bad values.

    Keys that are missing are left out (the dataclass default applies), unless required.
    A secret `X` may come from `X_file` instead: the file is read here, its content
    (without the trailing newline) becomes `X`, and the path is kept when the model has
    an `X_file` field too.
    """
    keys = accepted_keys(fields)
    out: dict[str, Any] = {}
    for key, given in entries.items():
        if not isinstance(key, str) or key not in keys:
            ctx.child(f".{key}", given.where).report(f"unknown key{did_you_mean(str(key), keys)}")
    for f in fields:
        entry: Entry | None = entries.get(f.name)
        companion = file_companion(f.name) if f.secret else None
        from_file = entries.get(companion) if companion is not None else None
        if entry is not None and from_file is not None:
            ctx.child(f".{companion}", from_file.where).report(
                f"set either {f.name} or {companion}, not both"
            )
            continue
        if from_file is not None and companion is not None:
            fctx = ctx.child(f".{companion}", from_file.where)
            secret = _read_secret_file(from_file.value, fctx)
            if secret is None:
                continue
            path, text = secret
            if f.keep_file_path:
                out[companion] = path
            entry = Entry(text, from_file.where)
            vctx = fctx
        elif entry is not None:
            vctx = ctx.child(f".{f.name}", entry.where)
        else:
            if f.required:
                ctx.at(f".{f.name}").report("required")
            continue
        try:
            out[f.name] = f.parse(entry.value, vctx)
        except Invalid as exc:
            vctx.report(exc.message)
        except Reported:
            pass
    return out


def _read_secret_file(value: Any, ctx: Ctx) -> tuple[Path, str] | None:
    if not isinstance(value, str) or not value:
        ctx.report("expected a file path")
        return None
    path = ctx.where.resolve(value)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        ctx.report(f"file not found: {path}")
        return None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        ctx.report(f"cannot read {path}: {reason}")
        return None
    text = text.rstrip("\r\n")
    if not text:
        ctx.report(f"file is empty: {path}")
        return None
    return path, text


def mapping(value: Any, ctx: Ctx, what: str = "a mapping") -> Mapping[Any, Any]:
    """`value` as a mapping (null counts as empty), or Invalid."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise Invalid(f"expected {what}")
    return value


def record(cls: Callable[..., Any], fields: Sequence[Field], what: str = "a mapping") -> Parser:
    """A parser for a nested mapping that builds `cls(**parsed keys)`."""

    def parse(value: Any, ctx: Ctx) -> Any:
        raw = mapping(value, ctx, what)
        before = len(ctx.problems)
        here = replace(ctx.where, line=line_of(raw) or ctx.where.line)
        kwargs = parse_entries(entries_of(raw, here), fields, Ctx(ctx.key, here, ctx.problems))
        if len(ctx.problems) != before:
            raise Reported
        return cls(**kwargs)

    return parse
