"""The node-based `parse_yaml` policies/source.py had before it built values from the event
stream (PyYAML composes a node graph, then a SafeLoader subclass constructs located values).

Kept only as the oracle the event-stream builder is compared with in test_source_yaml.py:
same values, same lines, same problems, for documents without merge keys (with them, this
one refused an explicit key overriding a merged one as a duplicate).
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from policies.source import LocatedDict, LocatedList, Problem, SourceError


class _DuplicateKey(Exception):
    def __init__(self, key: object, line: int, first_line: int) -> None:
        self.key = key
        self.line = line
        self.first_line = first_line


def _legacy_loader(base: type[yaml.SafeLoader]) -> type[yaml.SafeLoader]:
    class Legacy(base):  # type: ignore[valid-type,misc]
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

    def mapping(loader: Any, node: Node) -> LocatedDict:
        assert isinstance(node, MappingNode)
        return loader.construct_mapping(node)  # type: ignore[no-any-return]

    def sequence(loader: Any, node: Node) -> LocatedList:
        assert isinstance(node, SequenceNode)
        return loader.construct_sequence(node)  # type: ignore[no-any-return]

    Legacy.add_constructor("tag:yaml.org,2002:map", mapping)
    Legacy.add_constructor("tag:yaml.org,2002:seq", sequence)
    return Legacy


_LOADERS = {base: _legacy_loader(base) for base in (yaml.SafeLoader, yaml.CSafeLoader)}


def legacy_parse_yaml(text: str, file: str, base: type[yaml.SafeLoader]) -> Any:
    """What `parse_yaml(text, file)` answered, with `base`'s parser (C or pure Python)."""
    try:
        return yaml.load(text, Loader=_LOADERS[base])  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as dup:
        message = f"duplicate key (first at line {dup.first_line})"
        raise SourceError([Problem(file, dup.line, str(dup.key), message)]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        what = exc.problem or exc.context or "invalid YAML"
        raise SourceError([Problem(file, line, "", f"invalid YAML: {what}")]) from None
    except yaml.YAMLError as exc:
        raise SourceError([Problem(file, None, "", f"invalid YAML: {exc}")]) from None
