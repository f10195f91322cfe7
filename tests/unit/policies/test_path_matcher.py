"""Path patterns against paths, both case modes: the table the fast matcher must keep."""

from __future__ import annotations

import re

import pytest

from policies.matchers import PathMatcher

CASES = [
    # (patterns, path, case_sensitive, matches)
    (["/static/**"], "/static", True, True),
    (["/static/**"], "/static/", True, True),
    (["/static/**"], "/static/a/b.css", True, True),
    (["/static/**"], "/staticx", True, False),
    (["/static/**"], "/Static/a", True, False),
    (["/static/**"], "/Static/a", False, True),
    (["/**"], "/", True, True),
    (["/**"], "/anything/at/all", True, True),
    (["/health"], "/health", True, True),
    (["/health"], "/health/", True, False),
    (["/health"], "/HEALTH", False, True),
    (["/api/*/items"], "/api/v1/items", True, True),
    (["/api/*/items"], "/api/v1/x/items", True, False),
    (["/api/*/items"], "/API/V1/ITEMS", False, True),
    (["re:/debug/.*"], "/debug/x", True, True),
    (["re:/debug/.*"], "/DEBUG/x", True, False),
    (["re:/debug/.*"], "/DEBUG/x", False, True),
    (["re:/debug/.*"], "/x/debug/x", False, False),  # fully anchored
    (["re:(?i)/Admin"], "/admin", True, True),  # an inline flag is the operator's own
    (["/a", "/b/**", "re:/c[0-9]"], "/c7", True, True),
    (["/a", "/b/**", "re:/c[0-9]"], "/b", True, True),
    (["/a", "/b/**", "re:/c[0-9]"], "/d", True, False),
]


@pytest.mark.parametrize(("patterns", "path", "case_sensitive", "expected"), CASES)
def test_path_patterns(
    patterns: list[str], path: str, case_sensitive: bool, expected: bool
) -> None:
    matcher = PathMatcher.compile(patterns, case_sensitive)
    assert matcher.matches(path, path.lower()) is expected


def test_a_matcher_built_directly_derives_its_lookups_too() -> None:
    # No way to construct a matcher whose fast lookups are empty (a deny rule that
    # matched nothing would let requests through).
    matcher = PathMatcher(True, frozenset({"/a"}), ("/s",), (re.compile("/x.*"),))
    assert matcher.matches("/a", "/a")
    assert matcher.matches("/s/1", "/s/1")
    assert matcher.matches("/xy", "/xy")
    assert not matcher.matches("/b", "/b")
