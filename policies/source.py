"""YAML that remembers where each value came from, and problems located at FILE:LINE: key.

Shared by the policy loader and the gateway's config loader (it lives in this pure
package because `gateway` may import `policies`, never the other way round).

`load_yaml_file()` returns plain Python values whose mappings and sequences are
`LocatedDict` / `LocatedList`: ordinary dicts and lists that also know the line of
themselves and of each key or item, so a loader can say `config.yaml:5: tenants[0].domains`.
Duplicate keys are an error (PyYAML would silently keep the last one, which in a
security policy hides a rule from its reader).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input file."""

    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class SourceError(Exception):
    """An input file is invalid; carries every problem found, not only the first."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class LocatedDict(dict[Any, Any]):
    """A dict that knows its own line and the line of each key (1-based)."""

    line: int
    key_lines: dict[Any, int]


class LocatedList(list[Any]):
    """A list that knows its own line and the line of each item (1-based)."""

    line: int
    item_lines: list[int]


def line_of(container: object, key: object = None) -> int | None:
    """The line of `container[key]`, or of the container itself when key is None."""
    if key is None:
        return getattr(container, "line", None)
    if isinstance(container, LocatedDict):
        return container.key_lines.get(key, container.line)
    if isinstance(container, LocatedList) and isinstance(key, int):
        if 0 <= key < len(container.item_lines):
            return container.item_lines[key]
        return container.line
    return None


class _DuplicateKey(Exception):
    def __init__(self, key: object, line: int, first_line: int) -> None:
        self.key = key
        self.line = line
        self.first_line = first_line


# libyaml's C parser when PyYAML was built with it (several times faster on the
# 10,000-rule policies some operators generate); the pure-Python one otherwise.
_SafeBase: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _LocatingLoader(_SafeBase):  # type: ignore[valid-type,misc]
    """A safe loader whose containers carry line numbers and which refuses duplicate keys."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> LocatedDict:
        self.flatten_mapping(node)
        result = LocatedDict()
        result.line = node.start_mark.line + 1
        result.key_lines = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            value = self.construct_object(value_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in result.key_lines:
                raise _DuplicateKey(key, line, result.key_lines[key])
            result[key] = value
            result.key_lines[key] = line
        return result

    def construct_sequence(self, node: SequenceNode, deep: bool = False) -> LocatedList:
        result = LocatedList(self.construct_object(child, deep=True) for child in node.value)
        result.line = node.start_mark.line + 1
        result.item_lines = [child.start_mark.line + 1 for child in node.value]
        return result


def _construct_located_mapping(loader: _LocatingLoader, node: Node) -> LocatedDict:
    assert isinstance(node, MappingNode)
    return loader.construct_mapping(node)


def _construct_located_sequence(loader: _LocatingLoader, node: Node) -> LocatedList:
    assert isinstance(node, SequenceNode)
    return loader.construct_sequence(node)


_LocatingLoader.add_constructor("tag:yaml.org,2002:map", _construct_located_mapping)
_LocatingLoader.add_constructor("tag:yaml.org,2002:seq", _construct_located_sequence)


def parse_yaml(text: str, file: str) -> Any:
    """Parse one YAML document from `text`; errors name `file` and the line."""
    try:
        return yaml.load(text, Loader=_LocatingLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as dup:
        raise SourceError(
            [
                Problem(
                    file, dup.line, str(dup.key), f"duplicate key (first at line {dup.first_line})"
                )
            ]
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        what = exc.problem or exc.context or "invalid YAML"
        raise SourceError([Problem(file, line, "", f"invalid YAML: {what}")]) from None
    except yaml.YAMLError as exc:
        raise SourceError([Problem(file, None, "", f"invalid YAML: {exc}")]) from None


def load_yaml_file(path: Path) -> Any:
    """Read and parse a YAML file; a missing or unreadable file is a located problem too."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SourceError([Problem(str(path), None, "", "file not found")]) from None
    except UnicodeDecodeError:
        raise SourceError([Problem(str(path), None, "", "not UTF-8 text")]) from None
    except OSError as exc:
        raise SourceError([Problem(str(path), None, "", f"cannot read: {exc.strerror}")]) from None
    return parse_yaml(text, str(path))
