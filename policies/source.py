"""YAML that remembers where each value came from, and problems located at FILE:LINE: key.

Shared by the policy loader and the gateway's config loader (it lives in this pure
package because `gateway` may import `policies`, never the other way round).

`load_yaml_file()` returns plain Python values whose mappings and sequences are
`LocatedDict` / `LocatedList`: ordinary dicts and lists that also know the line of
themselves and of each key or item, so a loader can say `config.yaml:5: tenants[0].domains`.
Duplicate keys are an error (PyYAML would silently keep the last one, which in a
security policy hides a rule from its reader).

The values are built straight from the parser's event stream (libyaml's when PyYAML
has it), without PyYAML's node graph: composing nodes and constructing from them cost
ten times the parsing itself on the 10,000-rule policies some operators generate.
Values are those of `yaml.load(text, Loader=yaml.SafeLoader)`: the same implicit
resolution (YAML 1.1: yes/no/on/off, 0x/0o/sexagesimal ints, .inf, timestamps), the
same standard tags (rare ones are handed to PyYAML's SafeConstructor), an alias is the
anchored object itself, and merge keys (`<<: *base`, `<<: [*a, *b]`) follow the YAML
merge spec: the mapping's own keys override merged ones, an earlier merged mapping
overrides a later one. Problems PyYAML only finds while constructing (a duplicate key,
a bad `!!int`) are reported only when the rest of the stream parses, as PyYAML composes
a whole document before constructing any of it: a syntax error further down wins.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml
from yaml.composer import Composer, ComposerError
from yaml.constructor import SafeConstructor
from yaml.events import (
    AliasEvent,
    DocumentEndEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode


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

    __slots__ = ("key_lines", "line")  # no per-instance __dict__: 10,000s are built at once
    line: int
    key_lines: dict[Any, int]


class LocatedList(list[Any]):
    """A list that knows its own line and the line of each item (1-based)."""

    __slots__ = ("item_lines", "line")
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


# libyaml's C parser when PyYAML was built with it (several times faster on the
# 10,000-rule policies some operators generate); the pure-Python one otherwise.
_SafeBase: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# PyYAML's two composers word an undefined alias differently; ours words it as the one in use.
_NAMES_UNDEFINED_ALIAS: Final = issubclass(_SafeBase, Composer)

_TAG: Final = "tag:yaml.org,2002:"
_STR: Final = _TAG + "str"
_MAP: Final = _TAG + "map"
_SEQ: Final = _TAG + "seq"
_SET: Final = _TAG + "set"
_OMAP: Final = _TAG + "omap"
_PAIRS: Final = _TAG + "pairs"
_MERGE_TAG: Final = _TAG + "merge"
_VALUE_TAG: Final = _TAG + "value"


class _DuplicateKey(Exception):
    def __init__(self, key: object, line: int, first_line: int) -> None:
        self.key = key
        self.line = line
        self.first_line = first_line


class _Invalid(Exception):
    """Invalid YAML found while building values, at a line: `invalid YAML: {what}`."""

    def __init__(self, line: int | None, what: str) -> None:
        self.line = line
        self.what = what


class _Deferred(Exception):
    """A problem PyYAML would find only while constructing: it is raised once the rest of
    the stream has parsed (a syntax or anchor error anywhere would win, as in PyYAML)."""

    def __init__(self, error: Exception) -> None:
        self.error = error


class _Special:
    """A scalar whose tag is `merge` (`<<`) or `value` (`=`): only meaningful as a key."""

    __slots__ = ("tag", "text")

    def __init__(self, tag: str, text: str) -> None:
        self.tag = tag
        self.text = text


_MERGE: Final = _Special(_MERGE_TAG, "<<")  # a merge key, once read as a key
_MISSING: Final = object()
_OPEN: Final = object()  # an anchored collection still being built


def _kind(value: object) -> str:
    """The YAML node kind a built value came from, as PyYAML's messages name it."""
    if isinstance(value, dict | set):
        return "mapping"
    if isinstance(value, list):
        return "sequence"
    return "scalar"


def _short_tag(tag: str) -> str:
    return "!!" + tag[len(_TAG) :] if tag.startswith(_TAG) else tag


class _Builder:
    """Builds located values from a parser's events, one document, depth first.

    The common events (plain and quoted scalars without anchor or tag) are handled
    inline in `_mapping` and `_sequence`; everything else goes through `_node`.
    """

    def __init__(self, get_event: Callable[[], Any]) -> None:
        self.get = get_event
        # Plain scalar text → its value: resolution and construction once per distinct text
        # (values of plain scalars are immutable: str, int, float, bool, None, datetime).
        self.cache: dict[str, Any] = {}
        # Anchor → (value, line of the anchored node); _OPEN while a collection is built.
        self.anchors: dict[str, tuple[Any, int]] = {}
        self._constructor: SafeConstructor | None = None

    # ------------------------------------------------------------ document

    def document(self) -> Any:
        get = self.get
        get()  # STREAM-START
        if get().__class__ is StreamEndEvent:  # else DOCUMENT-START
            return None
        data = self._value(get())[0]
        get()  # DOCUMENT-END
        self._expect_stream_end()
        return data

    def _expect_stream_end(self) -> None:
        event = self.get()
        if event.__class__ is not StreamEndEvent:
            raise ComposerError(
                "expected a single document in the stream",
                None,
                "but found another document",
                event.start_mark,
            )

    def drain(self) -> None:
        """Read the rest of the stream after a deferred problem, checking what PyYAML's
        composer checks: the syntax, anchors and aliases, a single document."""
        get = self.get
        anchors = self.anchors
        while True:
            event = get()
            cls = event.__class__
            if cls is AliasEvent:
                if event.anchor not in anchors:
                    raise self._undefined_alias(event)
            elif cls is ScalarEvent or cls is MappingStartEvent or cls is SequenceStartEvent:
                if event.anchor is not None:
                    self._open(event)
            elif cls is DocumentEndEvent:
                self._expect_stream_end()
                return
            elif cls is StreamEndEvent:
                return

    # ------------------------------------------------------------ nodes

    def _value(self, event: Any) -> tuple[Any, int]:
        """A node in a value position (an item, a mapping value, the document)."""
        value, line = self._node(event)
        if value.__class__ is _Special:
            raise _Deferred(
                _Invalid(line, f"could not determine a constructor for the tag {value.tag!r}")
            )
        return value, line

    def _key(self, event: Any) -> tuple[Any, int]:
        """A node in a key position: `<<` is a merge key, `=` is the string '='."""
        value, line = self._node(event)
        if value.__class__ is _Special:
            if value.tag == _MERGE_TAG:
                return _MERGE, line
            value = value.text  # PyYAML retags a `value` key as a string, anchored node too
            if event.__class__ is ScalarEvent and event.anchor is not None:
                self.anchors[event.anchor] = (value, line)
            return value, line
        try:
            hash(value)
        except TypeError:
            raise _Deferred(_Invalid(line, "found unhashable key")) from None
        return value, line

    def _node(self, event: Any) -> tuple[Any, int]:
        cls = event.__class__
        if cls is ScalarEvent:
            return self._scalar(event), event.start_mark.line + 1
        if cls is MappingStartEvent:
            return self._mapping(event), event.start_mark.line + 1
        if cls is SequenceStartEvent:
            return self._sequence(event), event.start_mark.line + 1
        if cls is AliasEvent:
            found = self.anchors.get(event.anchor)
            if found is None:
                raise self._undefined_alias(event)
            if found[0] is _OPEN:
                raise _Deferred(_Invalid(found[1], "found unconstructable recursive node"))
            return found
        raise _Invalid(event.start_mark.line + 1, f"unexpected {cls.__name__}")  # pragma: no cover

    def _undefined_alias(self, event: Any) -> ComposerError:
        what = f"found undefined alias {event.anchor!r}" if _NAMES_UNDEFINED_ALIAS else ""
        return ComposerError(None, None, what or "found undefined alias", event.start_mark)

    def _open(self, event: Any) -> None:
        """Register the anchor of a node that starts (PyYAML refuses it twice)."""
        anchor = event.anchor
        found = self.anchors.get(anchor)
        if found is not None:
            raise ComposerError(
                f"found duplicate anchor {anchor!r}; first occurrence",
                None,
                "second occurrence",
                event.start_mark,
            )
        self.anchors[anchor] = (_OPEN, event.start_mark.line + 1)

    # ------------------------------------------------------------ scalars

    def _scalar(self, event: Any) -> Any:
        anchor = event.anchor
        if anchor is not None:
            self._open(event)
        implicit = event.implicit
        if implicit[0]:  # plain, untagged (or tagged `!`): resolved from its text
            value = self.cache.get(event.value, _MISSING)
            if value is _MISSING:
                value = self._plain(event)
        elif implicit[1]:  # quoted or block, untagged
            value = event.value
        else:
            value = self._tagged(event.tag, event)
        if anchor is not None:
            self.anchors[anchor] = (value, event.start_mark.line + 1)
        return value

    def _plain(self, event: Any) -> Any:
        text: str = event.value
        tag = _STR
        resolvers = _SafeBase.yaml_implicit_resolvers
        for candidate, regexp in (*resolvers.get(text[:1], ()), *resolvers.get(None, ())):
            if regexp.match(text):
                tag = candidate
                break
        if tag == _STR:
            value: Any = text
        elif tag == _MERGE_TAG:  # specials are never cached: their meaning depends on the place
            return _MERGE
        elif tag == _VALUE_TAG:
            return _Special(tag, text)
        else:
            value = self._construct(ScalarNode(tag, text, event.start_mark, event.end_mark))
        self.cache[text] = value
        return value

    def _plain_value(self, event: Any) -> Any:
        """A plain scalar in a value position, not yet in the cache."""
        value = self._plain(event)
        if value.__class__ is _Special:
            return self._value(event)[0]  # raises the located problem
        return value

    def _tagged(self, tag: str, event: Any) -> Any:
        if tag == _STR:
            return event.value
        if tag == _MERGE_TAG:
            return _MERGE
        if tag == _VALUE_TAG:
            return _Special(tag, event.value)
        node = ScalarNode(tag, event.value, event.start_mark, event.end_mark, style=event.style)
        return self._construct(node)

    def _construct(self, node: Node) -> Any:
        """A value for a tag we do not build ourselves: what PyYAML's SafeConstructor makes."""
        if self._constructor is None:
            self._constructor = SafeConstructor()
        try:
            return self._constructor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            raise _Deferred(exc) from None
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            # PyYAML lets these escape (`!!int abc`, a 2024-02-30 timestamp): located here.
            if isinstance(node, ScalarNode):
                written = repr(node.value)
            else:
                written = "a mapping" if isinstance(node, MappingNode) else "a sequence"
            detail = f": {exc}" if isinstance(exc, ValueError) else ""
            line = node.start_mark.line + 1
            raise _Deferred(
                _Invalid(line, f"cannot read {written} as {_short_tag(node.tag)}{detail}")
            ) from None

    def _refuse(self, event: Any, node: Node) -> None:
        """A collection tag we do not build: SafeConstructor's own complaint about it."""
        self._construct(node)
        kind = "mapping" if isinstance(node, MappingNode) else "sequence"
        line = event.start_mark.line + 1
        raise _Deferred(_Invalid(line, f"cannot read a {kind} as {_short_tag(node.tag)}"))

    # ------------------------------------------------------------ collections

    def _mapping(self, start: Any) -> Any:
        line = start.start_mark.line + 1
        anchor = start.anchor
        if anchor is not None:
            self._open(start)
        tag = start.tag
        if tag is not None and tag != "!" and tag != _MAP and tag != _SET:
            self._refuse(start, MappingNode(tag, [], start.start_mark, start.end_mark))
        data = LocatedDict()
        data.line = line
        lines: dict[Any, int] = {}
        data.key_lines = lines
        merges: list[tuple[Any, int]] | None = None
        get = self.get
        cache = self.cache
        while True:
            # ---- the key
            event = get()
            cls = event.__class__
            if cls is ScalarEvent and event.anchor is None and event.implicit[0]:
                key = cache.get(event.value, _MISSING)
                if key is _MISSING:
                    key = self._key(event)[0]
                key_line = event.start_mark.line + 1
            elif cls is MappingEndEvent:
                break
            else:
                key, key_line = self._key(event)
            # ---- its value
            event = get()
            cls = event.__class__
            value_line = 0  # looked up when needed
            if cls is ScalarEvent and event.anchor is None:
                implicit = event.implicit
                if implicit[0]:
                    value = cache.get(event.value, _MISSING)
                    if value is _MISSING:
                        value = self._plain_value(event)
                elif implicit[1]:
                    value = event.value
                else:
                    value = self._value(event)[0]
            elif cls is MappingStartEvent:  # directly: one Python frame per level of nesting
                value = self._mapping(event)
            elif cls is SequenceStartEvent:
                value = self._sequence(event)
            else:
                value, value_line = self._value(event)
            if key is _MERGE:
                if not value_line:
                    value_line = event.start_mark.line + 1
                merges = self._merge_sources(merges, value, value_line)
                continue
            if key in data:
                raise _Deferred(_DuplicateKey(key, key_line, lines[key]))
            data[key] = value
            lines[key] = key_line
        if merges is not None:
            data = _merged(data, merges)
        result: Any = set(data) if tag == _SET else data
        if anchor is not None:
            self.anchors[anchor] = (result, line)
        return result

    def _merge_sources(
        self, merges: list[tuple[Any, int]] | None, value: Any, value_line: int
    ) -> list[tuple[Any, int]]:
        """The mappings a `<<` key merges, with their lines, after those of earlier `<<`s."""
        sources = merges if merges is not None else []
        if isinstance(value, LocatedDict | set):
            sources.append((value, value_line))
        elif isinstance(value, LocatedList):
            for item, item_line in zip(value, value.item_lines, strict=True):
                if not isinstance(item, LocatedDict | set):
                    what = f"expected a mapping for merging, but found {_kind(item)}"
                    raise _Deferred(_Invalid(item_line, what))
                sources.append((item, item_line))
        else:
            what = f"expected a mapping or list of mappings for merging, but found {_kind(value)}"
            raise _Deferred(_Invalid(value_line, what))
        return sources

    def _sequence(self, start: Any) -> Any:
        line = start.start_mark.line + 1
        anchor = start.anchor
        if anchor is not None:
            self._open(start)
        tag = start.tag
        if tag is not None and tag != "!" and tag != _SEQ and tag != _OMAP and tag != _PAIRS:
            self._refuse(start, SequenceNode(tag, [], start.start_mark, start.end_mark))
        items = LocatedList()
        items.line = line
        lines: list[int] = []
        items.item_lines = lines
        append = items.append
        append_line = lines.append
        get = self.get
        cache = self.cache
        while True:
            event = get()
            cls = event.__class__
            # The scalar fast path of `_mapping`, inlined here too on purpose: a method
            # call per scalar (some 100,000 in a 10,000-rule file) costs a few percent.
            if cls is ScalarEvent and event.anchor is None:
                implicit = event.implicit
                if implicit[0]:
                    value = cache.get(event.value, _MISSING)
                    if value is _MISSING:
                        value = self._plain_value(event)
                elif implicit[1]:
                    value = event.value
                else:
                    value = self._value(event)[0]
                append(value)
                append_line(event.start_mark.line + 1)
            elif cls is SequenceEndEvent:
                break
            elif cls is MappingStartEvent:  # directly: one Python frame per level of nesting
                append(self._mapping(event))
                append_line(event.start_mark.line + 1)
            elif cls is SequenceStartEvent:
                append(self._sequence(event))
                append_line(event.start_mark.line + 1)
            else:
                value, value_line = self._value(event)
                append(value)
                append_line(value_line)
        result: Any = items
        if tag in (_OMAP, _PAIRS):
            result = _pairs(items)
        if anchor is not None:
            self.anchors[anchor] = (result, line)
        return result


def _merged(data: LocatedDict, merges: list[tuple[Any, int]]) -> LocatedDict:
    """`data` (a mapping's own keys) over its merged mappings, the first merged one first."""
    result = LocatedDict()
    result.line = data.line
    lines: dict[Any, int] = {}
    result.key_lines = lines
    for source, source_line in merges:
        for key in source:
            if key not in result:
                if isinstance(source, LocatedDict):
                    result[key] = source[key]
                    lines[key] = source.key_lines[key]
                else:  # a !!set: its keys, null values
                    result[key] = None
                    lines[key] = source_line
    for key, value in data.items():
        result[key] = value
        lines[key] = data.key_lines[key]
    return result


def _pairs(items: LocatedList) -> list[tuple[Any, Any]]:
    """A `!!omap` or `!!pairs` sequence: a list of (key, value), as SafeConstructor makes it."""
    out = []
    for item, line in zip(items, items.item_lines, strict=True):
        if isinstance(item, set):
            item = dict.fromkeys(item)
        if not isinstance(item, dict):
            raise _Deferred(
                _Invalid(line, f"expected a mapping of length 1, but found {_kind(item)}")
            )
        if len(item) != 1:
            raise _Deferred(
                _Invalid(line, f"expected a single mapping item, but found {len(item)} items")
            )
        out.append(next(iter(item.items())))
    return out


def parse_yaml(text: str, file: str) -> Any:
    """Parse one YAML document from `text`; errors name `file` and the line."""
    try:
        loader = _SafeBase(text)
        try:
            builder = _Builder(loader.get_event)
            try:
                return builder.document()
            except _Deferred as deferred:
                builder.drain()
                raise deferred.error from None
        finally:
            loader.dispose()
    except _DuplicateKey as dup:
        raise SourceError(
            [
                Problem(
                    file, dup.line, str(dup.key), f"duplicate key (first at line {dup.first_line})"
                )
            ]
        ) from None
    except _Invalid as exc:
        raise SourceError([Problem(file, exc.line, "", f"invalid YAML: {exc.what}")]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        what = exc.problem or exc.context or "invalid YAML"
        raise SourceError([Problem(file, line, "", f"invalid YAML: {what}")]) from None
    except yaml.YAMLError as exc:
        raise SourceError([Problem(file, None, "", f"invalid YAML: {exc}")]) from None
    except RecursionError:
        raise SourceError([Problem(file, None, "", "invalid YAML: nested too deeply")]) from None


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
