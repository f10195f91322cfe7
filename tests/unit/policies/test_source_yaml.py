"""policies/source.py builds located values straight from the parser's events: the same
values as `yaml.load(text, Loader=yaml.SafeLoader)`, the same lines and problems as the
node-based implementation it replaced (tests/unit/policies/_legacy_yaml.py).

Tables pin the lines and problems explicitly; hypothesis then compares generated
documents (anchors, aliases, merge keys, YAML 1.1 scalars, block and flow styles) with
PyYAML and with the old implementation, over libyaml's parser and the pure-Python one.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from policies import source
from policies.source import LocatedDict, LocatedList, SourceError, parse_yaml
from tests.unit.policies._legacy_yaml import legacy_parse_yaml

BASES = [yaml.CSafeLoader, yaml.SafeLoader]
MERGE = "tag:yaml.org,2002:merge"
VALUE = "tag:yaml.org,2002:value"
NO_CONSTRUCTOR = "invalid YAML: could not determine a constructor for the tag"


@contextmanager
def parser(base: type[yaml.SafeLoader]) -> Iterator[None]:
    """parse_yaml over `base`'s parser: libyaml's, or the pure-Python fallback."""
    with (
        mock.patch.object(source, "_SafeBase", base),
        mock.patch.object(source, "_NAMES_UNDEFINED_ALIAS", issubclass(base, Composer)),
    ):
        yield


def lines(data: Any, path: str = "", out: dict[str, int] | None = None) -> dict[str, int]:
    """Every line a located value knows: "a.b" is key b's line, "a.b{}" / "a.b[]" the line
    of the mapping / list under it, "a[0]" an item's line."""
    out = {} if out is None else out
    if isinstance(data, LocatedDict):
        out[path + "{}"] = data.line
        assert set(data.key_lines) == set(data)
        for key, value in data.items():
            sub = f"{path}.{key}" if path else str(key)
            out[sub] = data.key_lines[key]
            lines(value, sub, out)
    elif isinstance(data, LocatedList):
        out[path + "[]"] = data.line
        assert len(data.item_lines) == len(data)
        for i, value in enumerate(data):
            sub = f"{path}[{i}]"
            out[sub] = data.item_lines[i]
            lines(value, sub, out)
    return out


def same(a: Any, b: Any) -> bool:
    """Equal, with the same types (True is not 1, 1 is not 1.0), key order and NaNs."""
    if isinstance(a, dict):
        return (
            isinstance(b, dict)
            and len(a) == len(b)
            and all(
                same(ka, kb) and same(va, vb)
                for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True)
            )
        )
    if isinstance(a, list | tuple):
        return (type(b) is type(a) or (isinstance(a, list) and isinstance(b, list))) and (
            len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
        )
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return type(a) is type(b) and a == b


def sharing(data: Any) -> list[tuple[str, str]]:
    """Which containers are one object reached twice (an alias): (path, first path)."""
    first: dict[int, str] = {}
    out: list[tuple[str, str]] = []

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict | list):
            if id(value) in first:
                out.append((path, first[id(value)]))
                return
            first[id(value)] = path
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                walk(item, f"{path}/{key!r}")

    walk(data, "")
    return out


def outcome(parse: Any) -> tuple[str, Any]:
    try:
        return "ok", parse()
    except SourceError as exc:
        return "error", str(exc)


# ---------------------------------------------------------------- lines, pinned


LINE_CASES = [
    pytest.param(
        "version: 1\n"
        "rules:\n"
        "  - name: a\n"
        "    hosts: [x.example.com, y]\n"
        "    paths:\n"
        "      - /a\n"
        "      - /b\n"
        "  -\n"
        "    name: b\n"
        "    action: deny\n",
        {
            "{}": 1,
            "version": 1,
            "rules": 2,
            "rules[]": 3,
            "rules[0]": 3,
            "rules[0]{}": 3,
            "rules[0].name": 3,
            "rules[0].hosts": 4,
            "rules[0].hosts[]": 4,
            "rules[0].hosts[0]": 4,
            "rules[0].hosts[1]": 4,
            "rules[0].paths": 5,
            "rules[0].paths[]": 6,
            "rules[0].paths[0]": 6,
            "rules[0].paths[1]": 7,
            "rules[1]": 9,
            "rules[1]{}": 9,
            "rules[1].name": 9,
            "rules[1].action": 10,
        },
        id="policy",
    ),
    pytest.param(
        "a:\n- 1\n- k: v\n  j: w\n-\n  - x\n",
        {
            "{}": 1,
            "a": 1,
            "a[]": 2,
            "a[0]": 2,
            "a[1]": 3,
            "a[1]{}": 3,
            "a[1].k": 3,
            "a[1].j": 4,
            "a[2]": 6,
            "a[2][]": 6,
            "a[2][0]": 6,
        },
        id="indentless-sequence",
    ),
    pytest.param(
        "roles: {viewer: {permissions: [wiki.read]},\n"
        "  editor: {inherits: [viewer],\n"
        "    permissions: [wiki.write]}}\n",
        {
            "{}": 1,
            "roles": 1,
            "roles{}": 1,
            "roles.viewer": 1,
            "roles.viewer{}": 1,
            "roles.viewer.permissions": 1,
            "roles.viewer.permissions[]": 1,
            "roles.viewer.permissions[0]": 1,
            "roles.editor": 2,
            "roles.editor{}": 2,
            "roles.editor.inherits": 2,
            "roles.editor.inherits[]": 2,
            "roles.editor.inherits[0]": 2,
            "roles.editor.permissions": 3,
            "roles.editor.permissions[]": 3,
            "roles.editor.permissions[0]": 3,
        },
        id="flow-over-lines",
    ),
    pytest.param(
        "# comment\n\n---\na: 1   # trailing\n# between\n\nb: [ 1,\n  2 ]\n...\n",
        {"{}": 4, "a": 4, "b": 7, "b[]": 7, "b[0]": 7, "b[1]": 8},
        id="comments-and-markers",
    ),
    pytest.param(
        'a: |\n  one\n  two\nb: >-\n  folded\n  text\nc: "double\n  quoted"\n'
        "d: plain\n  continued\ne: 1\n",
        {"{}": 1, "a": 1, "b": 4, "c": 7, "d": 9, "e": 11},
        id="multi-line-scalars",
    ),
    pytest.param(
        "base: &b\n"
        "  x: 1\n"
        "list: &l [1, 2]\n"
        "k: &k name\n"
        "again: *b\n"
        "items:\n"
        "  - *l\n"
        "  - *b\n"
        "  - *k\n"
        "*k : value\n",
        {
            "{}": 1,
            "base": 1,
            "base{}": 1,
            "base.x": 2,
            "list": 3,
            "list[]": 3,
            "list[0]": 3,
            "list[1]": 3,
            "k": 4,
            "again": 5,
            "again{}": 1,  # an alias is the anchored value: its lines are the anchor's
            "again.x": 2,
            "items": 6,
            "items[]": 7,
            "items[0]": 3,
            "items[0][]": 3,
            "items[0][0]": 3,
            "items[0][1]": 3,
            "items[1]": 1,
            "items[1]{}": 1,
            "items[1].x": 2,
            "items[2]": 4,
            "name": 4,  # an aliased key: the anchored scalar's line
        },
        id="anchors-and-aliases",
    ),
    pytest.param(
        "? a\n: 1\n? b\nc:\n",
        {"{}": 1, "a": 1, "b": 3, "c": 4},
        id="explicit-keys",
    ),
    pytest.param(
        "- a\n- - b\n  - c\n- {d: e}\n",
        {
            "[]": 1,
            "[0]": 1,
            "[1]": 2,
            "[1][]": 2,
            "[1][0]": 2,
            "[1][1]": 3,
            "[2]": 4,
            "[2]{}": 4,
            "[2].d": 4,
        },
        id="list-document",
    ),
    pytest.param(
        "base: &base\n"
        "  x: 1\n"
        "  y: 2\n"
        "more: &more {y: 20, z: 30}\n"
        "one:\n"
        "  <<: *base\n"
        "  y: 3\n"
        "two:\n"
        "  w: 0\n"
        "  <<: [*base, *more]\n"
        "three: {<<: {q: 1}, r: 2}\n",
        {
            "{}": 1,
            "base": 1,
            "base{}": 1,
            "base.x": 2,
            "base.y": 3,
            "more": 4,
            "more{}": 4,
            "more.y": 4,
            "more.z": 4,
            "one": 5,
            "one{}": 6,
            "one.x": 2,  # merged: the line of the key in the merged mapping
            "one.y": 7,  # overridden: the mapping's own key
            "two": 8,
            "two{}": 9,
            "two.x": 2,
            "two.y": 3,  # the first merged mapping wins
            "two.z": 4,
            "two.w": 9,
            "three": 11,
            "three{}": 11,
            "three.q": 11,
            "three.r": 11,
        },
        id="merge-keys",
    ),
]


@pytest.mark.parametrize("base", BASES, ids=["libyaml", "python"])
@pytest.mark.parametrize(("text", "expected"), LINE_CASES)
def test_lines(base: type[yaml.SafeLoader], text: str, expected: dict[str, int]) -> None:
    with parser(base):
        data = parse_yaml(text, "f.yaml")
    assert lines(data) == expected
    assert same(data, yaml.load(text, Loader=yaml.SafeLoader))


def test_merge_keys_follow_the_yaml_merge_spec() -> None:
    data = parse_yaml(
        "a: &a {k: 1, only_a: 1}\n"
        "b: &b {k: 2, only_b: 2}\n"
        "list: {<<: [*a, *b]}\n"  # the earlier merged mapping wins
        "twice: {<<: *b, <<: *a}\n"  # so does the earlier `<<`
        "own: {k: 3, <<: [*a, *b]}\n"  # the mapping's own key wins, wherever it is
        "nested: {<<: {<<: *a, extra: 1}}\n",
        "f.yaml",
    )
    assert data["list"] == {"k": 1, "only_a": 1, "only_b": 2}
    assert list(data["list"]) == ["k", "only_a", "only_b"]
    assert data["twice"] == {"k": 2, "only_b": 2, "only_a": 1}
    assert data["own"] == {"k": 3, "only_a": 1, "only_b": 2}
    assert data["own"].key_lines == {"k": 5, "only_a": 1, "only_b": 2}
    assert data["nested"] == {"k": 1, "only_a": 1, "extra": 1}


def test_an_alias_is_the_anchored_object() -> None:
    data = parse_yaml("a: &x {k: [1]}\nb: *x\nc: [*x]\nd: {<<: *x}\n", "f.yaml")
    assert data["b"] is data["a"]
    assert data["c"][0] is data["a"]
    assert data["d"] is not data["a"]
    assert data["d"]["k"] is data["a"]["k"]  # merged values are the anchored ones too


def test_scalars_resolve_as_pyyaml_safe_loader_resolves_them() -> None:
    text = "\n".join(f"- {scalar}" for scalar in TRICKY_PLAIN) + "\n"
    data = parse_yaml(text, "f.yaml")
    expected = yaml.load(text, Loader=yaml.SafeLoader)
    assert same(data, expected)
    assert isinstance(data[TRICKY_PLAIN.index("2001-12-14")], datetime.date)


def test_tagged_scalars_are_what_safe_constructor_makes() -> None:
    text = "\n".join(f"- {scalar}" for scalar in TAGGED) + "\n"
    assert same(parse_yaml(text, "f.yaml"), yaml.load(text, Loader=yaml.SafeLoader))


def test_rare_collection_tags() -> None:
    text = "s: !!set {a, b}\no: !!omap [{x: 1}, {y: 2}]\np: !!pairs [{x: 1}, {x: 2}]\n"
    data = parse_yaml(text, "f.yaml")
    assert same(data, yaml.load(text, Loader=yaml.SafeLoader))
    assert data["s"] == {"a", "b"}


def test_an_anchored_equals_key_is_the_string_it_reads_as() -> None:
    # PyYAML retags a `=` key (YAML 1.1's "value" type) as a string, anchored node included.
    data = parse_yaml("&v =: 1\nb: *v\n", "f.yaml")
    assert data == {"=": 1, "b": "="}
    assert lines(data) == {"{}": 1, "=": 1, "b": 2}


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n", "--- ~\n", "---\n...\n"])
def test_an_empty_document_is_none(text: str) -> None:
    assert parse_yaml(text, "f.yaml") is None


# ---------------------------------------------------------------- problems, pinned

# The problem as the old implementation words it: unchanged.
SAME_PROBLEMS = [
    ("a: 1\na: 2\n", "f.yaml:2: a: duplicate key (first at line 1)"),
    ("x:\n  a: 1\n  b: 2\n  a: 3\n", "f.yaml:4: a: duplicate key (first at line 2)"),
    ("{a: 1, b: 2, a: 3}\n", "f.yaml:1: a: duplicate key (first at line 1)"),
    ("1: a\n0x1: b\n", "f.yaml:2: 1: duplicate key (first at line 1)"),
    ("yes: a\ntrue: b\n", "f.yaml:2: True: duplicate key (first at line 1)"),
    ("a: 1\n'a': 2\n", "f.yaml:2: a: duplicate key (first at line 1)"),
    ("&k a: 1\n*k : 2\n", "f.yaml:1: a: duplicate key (first at line 1)"),
    (
        "server:\n  listen: [\ntenants: x\n",
        "f.yaml:4: invalid YAML: did not find expected ',' or ']'",
    ),
    ("a: *nothing\n", "f.yaml:1: invalid YAML: found undefined alias"),
    ("a: &x 1\nb: &x 2\n", "f.yaml:2: invalid YAML: second occurrence"),
    ("a: 1\n---\nb: 2\n", "f.yaml:2: invalid YAML: but found another document"),
    ("a: !foo 1\n", f"f.yaml:1: {NO_CONSTRUCTOR} '!foo'"),
    ("a: !foo {b: 1}\n", f"f.yaml:1: {NO_CONSTRUCTOR} '!foo'"),
    (
        "a: !!binary 'a'\n",
        "f.yaml:1: invalid YAML: failed to decode base64 data: Invalid base64-encoded string: "
        "number of data characters (1) cannot be 1 more than a multiple of 4",
    ),
    ("a: <<\n", f"f.yaml:1: {NO_CONSTRUCTOR} {MERGE!r}"),
    ("a: =\n", f"f.yaml:1: {NO_CONSTRUCTOR} {VALUE!r}"),
    ("a: &x [1, *x]\n", "f.yaml:1: invalid YAML: found unconstructable recursive node"),
    ("a:\n  - &x {b: [*x]}\n", "f.yaml:2: invalid YAML: found unconstructable recursive node"),
    (
        "a: 1\n<<: 2\n",
        "f.yaml:2: invalid YAML: "
        "expected a mapping or list of mappings for merging, but found scalar",
    ),
    (
        "a: &x {b: 1}\nc:\n  <<: [*x,\n    3]\n",
        "f.yaml:4: invalid YAML: expected a mapping for merging, but found scalar",
    ),
    ("a: !!omap [1]\n", "f.yaml:1: invalid YAML: expected a mapping of length 1, but found scalar"),
    ('a: "\\x"\n', "f.yaml:1: invalid YAML: did not find expected hexdecimal number"),
    # A problem found while constructing loses to a syntax or anchor problem further down:
    # PyYAML composes the whole document before constructing any of it.
    ("a: 1\na: 2\nb: [\n", "f.yaml:4: invalid YAML: did not find expected node content"),
    ("a: !foo 1\nb: *nothing\n", "f.yaml:2: invalid YAML: found undefined alias"),
    ("a: &x [*x]\nb: &x 1\n", "f.yaml:2: invalid YAML: second occurrence"),
    ("a: 1\na: 2\n---\nb: 1\n", "f.yaml:3: invalid YAML: but found another document"),
    # Two problems found while constructing: the first in the document.
    ("a: !foo 1\nb: 1\nb: 2\n", f"f.yaml:1: {NO_CONSTRUCTOR} '!foo'"),
    ("a: [1, {b: 1, b: 2}]\na: 3\n", "f.yaml:1: b: duplicate key (first at line 1)"),
    ("a: {b: !foo 1}\na: 3\n", f"f.yaml:1: {NO_CONSTRUCTOR} '!foo'"),
]


@pytest.mark.parametrize("base", BASES, ids=["libyaml", "python"])
@pytest.mark.parametrize(("text", "expected"), SAME_PROBLEMS)
def test_problems_as_before(base: type[yaml.SafeLoader], text: str, expected: str) -> None:
    with parser(base), pytest.raises(SourceError) as raised:
        parse_yaml(text, "f.yaml")
    with pytest.raises(SourceError) as before:
        legacy_parse_yaml(text, "f.yaml", base)
    assert str(raised.value) == str(before.value)
    if base is yaml.SafeLoader:
        if "did not find expected" in expected:
            return  # the pure-Python scanner words syntax errors its own way
        if "found undefined alias" in expected:
            expected += " 'nothing'"  # the pure-Python composer names the alias
    assert str(raised.value) == expected


# Where the old implementation answered badly: located problems now.
NEW_PROBLEMS = [
    # It raised a bare ValueError / KeyError / AttributeError / AssertionError / TypeError.
    (
        "port: !!int abc\n",
        "f.yaml:1: invalid YAML: cannot read 'abc' as !!int: "
        "invalid literal for int() with base 10: 'abc'",
    ),
    ("on: !!bool maybe\n", "f.yaml:1: invalid YAML: cannot read 'maybe' as !!bool"),
    (
        "day: 2024-02-30\n",
        "f.yaml:1: invalid YAML: cannot read '2024-02-30' as !!timestamp: "
        "day is out of range for month",
    ),
    ("a: !!timestamp soon\n", "f.yaml:1: invalid YAML: cannot read 'soon' as !!timestamp"),
    ("a: !!map [1]\n", "f.yaml:1: invalid YAML: expected a mapping node, but found sequence"),
    ("a: !!seq {b: 1}\n", "f.yaml:1: invalid YAML: expected a sequence node, but found mapping"),
    ("a: !!str {b: 1}\n", "f.yaml:1: invalid YAML: expected a scalar node, but found mapping"),
    ("a: !!map b\n", "f.yaml:1: invalid YAML: expected a mapping node, but found scalar"),
    ("? [a]\n: 1\n", "f.yaml:1: invalid YAML: found unhashable key"),
    ("a: &x {k: 1}\n*x : 1\n", "f.yaml:1: invalid YAML: found unhashable key"),
    # It read a mapping merging itself as a duplicate key.
    ("a: &x {b: 1, <<: *x}\n", "f.yaml:1: invalid YAML: found unconstructable recursive node"),
    # A duplicate inside a merged mapping written in place: only some were found.
    ("d: {<<: {a: 1, a: 2}}\n", "f.yaml:1: a: duplicate key (first at line 1)"),
    # It let a RecursionError escape (libyaml refuses such a document itself).
    ("[" * 1200 + "]" * 1200, "f.yaml: invalid YAML: nested too deeply"),
]


@pytest.mark.parametrize("base", BASES, ids=["libyaml", "python"])
@pytest.mark.parametrize(("text", "expected"), NEW_PROBLEMS)
def test_problems_now_located(base: type[yaml.SafeLoader], text: str, expected: str) -> None:
    if base is yaml.CSafeLoader and "nested too deeply" in expected:
        expected = "f.yaml:1: invalid YAML: exceeded maximum nesting depth"
    with parser(base), pytest.raises(SourceError) as raised:
        parse_yaml(text, "f.yaml")
    assert str(raised.value) == expected


# Merges the old implementation refused as duplicate keys; PyYAML and the merge spec agree.
def test_a_mapping_overrides_what_it_merges() -> None:
    text = "base: &b {a: 1, c: 3}\nd:\n  <<: *b\n  a: 2\n"
    data = parse_yaml(text, "f.yaml")
    assert same(data, yaml.load(text, Loader=yaml.SafeLoader))
    assert data["d"].key_lines == {"a": 4, "c": 1}
    with pytest.raises(SourceError, match="duplicate key"):
        legacy_parse_yaml(text, "f.yaml", yaml.CSafeLoader)


# ---------------------------------------------------------------- generated documents

TRICKY_PLAIN = [
    # null, bool (YAML 1.1), int, float, timestamp, str
    "~", "null", "Null", "NULL",
    "yes", "No", "ON", "off", "y", "n", "true", "False", "TRUE",
    "0", "-0", "+12", "012", "0o17", "0x1F", "-0x1f", "0b101", "0b1_0", "1_000", "190:20:30",
    "-1:30", "1.5", "-.5", "1e3", "1.0e+3", "6.8523015e+5", "1_0.5", "685_230.15", "190:20:30.15",
    ".inf", "-.Inf", "+.INF", ".nan", ".NaN", "0.", "+1", "1.2.3", "0x", "0b2", "1e", "09",
    "2001-12-14", "2001-12-14t21:59:43.10-05:00", "2001-12-14 21:59:43.10 -5",
    "2002-12-14T00:00:00Z", "2001-1-1", "hello", "hello world", "/static/**", "re:/debug/.*",
    "app0.example.com", "wiki.read", "15m", "10.0.0.0/8", "2001:db8::/32", "a:b", "a#b",
]  # fmt: skip
TAGGED = [
    "!!str 12", "!!str yes", "!!int '12'", "!!int 0x1f", "!!float 1", "!!float '.inf'",
    "!!bool yes", "!!bool 'off'", "!!null ''", "!!null x", "!!binary aGVsbG8=",
    "!!timestamp 2001-01-01", "! 12", "! yes", "!<tag:yaml.org,2002:int> 7", "!!str",
]  # fmt: skip
QUOTED = ["'yes'", '"12"', "''", '""', "'a: b'", '"tab\\tnew\\nline"', "'it''s'", '"*.x.y"']
KEYS = ["a", "b", "name", "yes", "no", "on", "1", "0x1", "1.0", "~", "null", "'a'", '"b"']
KEYS += ["2001-12-14", "=", "!!str 1", "/path", "x y"]


class Doc:
    """Draws a YAML document as text, in document order so anchors precede their aliases."""

    def __init__(self, data: st.DataObject, merges: bool) -> None:
        self.data = data
        self.merges = merges
        self.anchors: list[tuple[str, str]] = []  # (name, "scalar" | "mapping" | "sequence")
        self.count = 0

    def draw(self, strategy: st.SearchStrategy[Any]) -> Any:
        return self.data.draw(strategy)

    def pick(self, *choices: Any) -> Any:
        return self.draw(st.sampled_from(choices))

    def anchor(self) -> str:
        """Maybe an anchor (`&aN `) for the node about to be written; `register` it after."""
        if not self.draw(st.booleans()):
            return ""
        self.count += 1
        return f"&a{self.count} "

    def register(self, prop: str, kind: str) -> None:
        if prop:
            self.anchors.append((prop.strip()[1:], kind))

    def alias(self, *kinds: str) -> str | None:
        names = [name for name, kind in self.anchors if kind in kinds]
        return f"*{self.pick(*names)}" if names else None

    def key(self, used: set[str]) -> str:
        """A key for a mapping whose keys so far are `used`: mostly a new one."""
        alias = self.alias("scalar") if self.draw(st.integers(0, 9)) == 0 else None
        if alias:
            return alias + " "
        fresh = [key for key in KEYS if key not in used]
        key = str(self.pick(*(fresh if fresh and self.draw(st.integers(0, 9)) else KEYS)))
        used.add(key)
        # (Not an anchored `=`: SafeLoader reads its alias as '=' or refuses it, depending
        # on whether the alias is constructed before or after the key; we read '=' always.)
        prop = self.anchor() if key != "=" and self.draw(st.integers(0, 5)) == 0 else ""
        self.register(prop, "scalar")
        return prop + key

    def scalar(self, flow: bool) -> str:
        kind = self.pick("plain", "plain", "quoted", "tagged")
        if kind == "plain":
            text = str(self.pick(*TRICKY_PLAIN))
        elif kind == "quoted":
            text = str(self.pick(*QUOTED))
        else:
            text = str(self.pick(*TAGGED[:-1]))
        prop = self.anchor()
        self.register(prop, "scalar")
        return prop + text

    def flow(self, depth: int) -> str:
        kind = self.pick("scalar", "scalar", "alias", "sequence", "mapping")
        if kind == "alias" or (kind != "scalar" and depth > 2):
            return self.alias("scalar", "mapping", "sequence") or self.scalar(True)
        if kind == "scalar":
            return self.scalar(True)
        prop = self.anchor()
        n = self.draw(st.integers(0, 3))
        if kind == "sequence":
            text = "[" + ", ".join(self.flow(depth + 1) for _ in range(n)) + "]"
        else:
            used: set[str] = set()
            pairs = self.merge_pairs() + [
                f"{self.key(used)}: {self.flow(depth + 1)}" for _ in range(n)
            ]
            text = "{" + ", ".join(pairs) + "}"
        self.register(prop, kind)
        return prop + text

    def merge_pairs(self) -> list[str]:
        if not self.merges or not self.draw(st.booleans()):
            return []
        names = [f"*{name}" for name, kind in self.anchors if kind == "mapping"]
        form = self.pick("inline", "alias", "list") if names else "inline"
        if form == "inline":
            used: set[str] = set()
            pairs = (f"{self.key(used)}: {self.scalar(True)}" for _ in range(2))
            value = "{" + ", ".join(pairs) + "}"
        elif form == "alias":
            value = self.pick(*names)
        else:
            chosen = self.draw(st.lists(st.sampled_from(names), min_size=1, max_size=3))
            value = "[" + ", ".join(chosen) + "]"
        return [f"<<: {value}"]

    def block_mapping(self, indent: int, depth: int) -> list[str]:
        pad = " " * indent
        out = [pad + pair for pair in self.merge_pairs()]
        used: set[str] = set()
        for _ in range(self.draw(st.integers(1, 4))):
            key = self.key(used)
            kind = self.pick("scalar", "scalar", "flow", "block", "alias", "literal", "empty")
            if kind == "block" and depth < 3:
                block_kind = self.pick("mapping", "sequence")
                prop = self.anchor()
                out.append(f"{pad}{key}:{' ' + prop.strip() if prop else ''}")
                if block_kind == "sequence" and self.draw(st.booleans()):
                    out += self.block_sequence(indent, depth + 1)  # indentless
                else:
                    out += self.block(block_kind, indent + 2, depth + 1)
                self.register(prop, block_kind)
            elif kind == "literal":
                body = self.draw(st.lists(st.sampled_from(["one", "two x", ""]), min_size=1))
                out.append(f"{pad}{key}: {self.pick('|', '>', '|-', '>+')}")
                out += [f"{pad}  {line}" if line else "" for line in body]
            elif kind == "empty":
                out.append(f"{pad}{key}:")
            elif kind == "alias" and (alias := self.alias("scalar", "mapping", "sequence")):
                out.append(f"{pad}{key}: {alias}")
            elif kind == "flow":
                out.append(f"{pad}{key}: {self.flow(depth + 1)}")
            else:
                out.append(f"{pad}{key}: {self.scalar(False)}")
            if self.draw(st.integers(0, 7)) == 0:
                out.append(self.pick("", f"{pad}# a comment"))
        return out

    def block_sequence(self, indent: int, depth: int) -> list[str]:
        pad = " " * indent
        out = []
        for _ in range(self.draw(st.integers(1, 4))):
            kind = self.pick("scalar", "flow", "compact", "nested", "alias")
            if kind == "compact" and depth < 3:  # - k: v\n  j: w
                inner = self.block_mapping(indent + 2, depth + 1)
                out += [f"{pad}- {inner[0].lstrip()}", *inner[1:]]
            elif kind == "nested" and depth < 3:
                block_kind = self.pick("mapping", "sequence")
                prop = self.anchor()
                out.append(f"{pad}-{' ' + prop.strip() if prop else ''}")
                out += self.block(block_kind, indent + 2, depth + 1)
                self.register(prop, block_kind)
            elif kind == "alias" and (alias := self.alias("scalar", "mapping", "sequence")):
                out.append(f"{pad}- {alias}")
            elif kind == "flow":
                out.append(f"{pad}- {self.flow(depth + 1)}")
            else:
                out.append(f"{pad}- {self.scalar(False)}")
        return out

    def block(self, kind: str, indent: int, depth: int) -> list[str]:
        if kind == "mapping":
            return self.block_mapping(indent, depth)
        return self.block_sequence(indent, depth)

    def document(self) -> str:
        head = self.pick("", "---\n", "# head\n\n")
        kind = self.pick("mapping", "mapping", "mapping", "sequence", "flow")
        if kind == "flow":
            return head + self.flow(0) + "\n"
        return head + "\n".join(self.block(kind, 0, 0)) + "\n"


def literal_duplicates(text: str) -> bool:
    """Whether a mapping, as written, has one key twice (merge keys aside)."""
    constructor = SafeConstructor()
    seen: set[int] = set()

    def key_of(node: Node) -> Any:
        if node.tag == VALUE:
            return node.value
        return constructor.construct_object(node, deep=True)

    def walk(node: Node) -> bool:
        if id(node) in seen:
            return False
        seen.add(id(node))
        if isinstance(node, MappingNode):
            keys = [key_of(k) for k, _ in node.value if k.tag != MERGE]
            if len(keys) != len(set(keys)):
                return True
            return any(walk(k) or walk(v) for k, v in node.value)
        if isinstance(node, SequenceNode):
            return any(walk(item) for item in node.value)
        return False

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    return root is not None and walk(root)


def expected_lines(text: str) -> dict[str, int]:
    """`lines()` of a document, worked out from PyYAML's node graph, merge keys applied
    as the merge spec says (the mapping's own keys first, then earlier merged mappings)."""
    constructor = SafeConstructor()

    def pairs(node: MappingNode) -> dict[Any, tuple[int, Node]]:
        merged: dict[Any, tuple[int, Node]] = {}
        own: dict[Any, tuple[int, Node]] = {}
        for key_node, value_node in node.value:
            if key_node.tag == MERGE:
                sources = [value_node] if isinstance(value_node, MappingNode) else value_node.value
                for src in sources:
                    for key, found in pairs(src).items():
                        merged.setdefault(key, found)
            else:
                key = (
                    key_node.value
                    if key_node.tag == VALUE
                    else constructor.construct_object(key_node, deep=True)
                )
                own[key] = (key_node.start_mark.line + 1, value_node)
        return {**merged, **own}

    def walk(node: Node, path: str, out: dict[str, int]) -> None:
        if isinstance(node, MappingNode):
            out[path + "{}"] = node.start_mark.line + 1
            for key, (line, value_node) in pairs(node).items():
                sub = f"{path}.{key}" if path else str(key)
                out[sub] = line
                walk(value_node, sub, out)
        elif isinstance(node, SequenceNode):
            out[path + "[]"] = node.start_mark.line + 1
            for i, item in enumerate(node.value):
                sub = f"{path}[{i}]"
                out[sub] = item.start_mark.line + 1
                walk(item, sub, out)
        else:
            assert isinstance(node, ScalarNode)

    out: dict[str, int] = {}
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is not None:
        walk(root, "", out)
    return out


@pytest.mark.parametrize("base", BASES, ids=["libyaml", "python"])
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_generated_documents_as_before(base: type[yaml.SafeLoader], data: st.DataObject) -> None:
    """Without merge keys: values, lines and problems exactly as the old implementation's,
    values exactly as PyYAML's SafeLoader makes them."""
    text = Doc(data, merges=False).document()
    with parser(base):
        new = outcome(lambda: parse_yaml(text, "f.yaml"))
    old = outcome(lambda: legacy_parse_yaml(text, "f.yaml", base))
    assert new[0] == old[0], (text, new, old)
    if new[0] == "error":
        assert new[1] == old[1], text
        return
    assert same(new[1], old[1]), text
    assert lines(new[1]) == lines(old[1]), text
    assert sharing(new[1]) == sharing(old[1]), text
    safe = yaml.load(text, Loader=base)  # noqa: S506
    assert same(new[1], safe), text
    assert sharing(new[1]) == sharing(safe), text


class SpecMergeLoader(yaml.SafeLoader):
    """SafeLoader with merge keys as the merge spec says: a mapping's own keys override
    merged ones, an earlier merged mapping overrides a later one, at any depth.

    (PyYAML 6.0.4's own flatten_mapping tells merged keys apart by the identity of their
    text: a key merged from two mappings is kept once or twice depending on whether
    Python shares the str objects, and a mapping that overrides a key it merged passes
    the merged value on when merged itself.)
    """

    def flatten_mapping(self, node: MappingNode) -> None:
        merged: list[tuple[Node, Node]] = []
        own: list[tuple[Node, Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag == MERGE:
                sources = [value_node] if isinstance(value_node, MappingNode) else value_node.value
                for src in sources:
                    self.flatten_mapping(src)
                    merged += src.value
            else:
                if key_node.tag == VALUE:
                    key_node.tag = "tag:yaml.org,2002:str"  # as SafeConstructor does
                own.append((key_node, value_node))
        own_keys = {self.construct_object(k, deep=True): (k, v) for k, v in own}
        pairs: dict[Any, tuple[Node, Node]] = {}
        for key_node, value_node in merged:
            key = self.construct_object(key_node, deep=True)
            if key not in pairs:  # an own key overrides the value, as a dict keeps the key
                pairs[key] = (key_node, own_keys.pop(key, (None, value_node))[1])
        node.value = [*pairs.values(), *own_keys.values()]


@pytest.mark.parametrize("base", BASES, ids=["libyaml", "python"])
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_generated_documents_with_merge_keys(
    base: type[yaml.SafeLoader], data: st.DataObject
) -> None:
    """With merge keys: values and lines as the merge spec says, and a duplicate key is a
    problem exactly when a mapping is written with one key twice."""
    text = Doc(data, merges=True).document()
    with parser(base):
        new = outcome(lambda: parse_yaml(text, "f.yaml"))
    if literal_duplicates(text):
        assert new[0] == "error" and "duplicate key" in new[1], (text, new)
        return
    assert new[0] == "ok", (text, new)
    assert same(new[1], yaml.load(text, Loader=SpecMergeLoader)), text  # noqa: S506
    assert lines(new[1]) == expected_lines(text), text
