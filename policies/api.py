"""Loading entry points: files (a tenant's `policies:` list) or text (tests) → PolicySet."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from policies.compiler import PolicySet, build_policy_set
from policies.errors import PolicyError, Problem
from policies.loader import parse_document
from policies.source import SourceError, load_yaml_file, parse_yaml
from policies.spec import PolicyDocument


def load_policy_set(paths: Sequence[Path]) -> PolicySet:
    """Read, merge in order and compile; raises PolicyError with every problem of every file."""
    if not paths:
        raise PolicyError([Problem("<policies>", None, "", "no policy files given")])
    documents: list[PolicyDocument] = []
    problems: list[Problem] = []
    for path in paths:
        try:
            data = load_yaml_file(Path(path))
        except SourceError as exc:
            problems.extend(exc.problems)
            continue
        document, found = parse_document(data, str(path))
        documents.append(document)
        problems.extend(found)
    return build_policy_set(documents, problems)


def load_policy_text(text: str, file: str = "<policy>") -> PolicySet:
    """One policy from a string, errors naming `file` (handy in tests and the CLI)."""
    try:
        data = parse_yaml(text, file)
    except SourceError as exc:
        raise PolicyError(exc.problems) from None
    document, problems = parse_document(data, file)
    return build_policy_set([document], problems)
