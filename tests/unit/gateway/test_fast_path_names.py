"""The fast path reads a field's name once per name it has seen (gateway/fast_path.py):
the same reading whether the name was seen before, or comes after the record is full."""

from __future__ import annotations

import pytest

from gateway import fast_path


@pytest.mark.parametrize(
    ("name", "reading"),
    [
        (b"accept", (b"accept", None, "Accept")),  # spelled as aiohttp's parser spells it
        (b"X-Custom", (b"x-custom", None, "X-Custom")),
        (b"Content-Length", (b"content-length", False, "Content-Length")),  # not plain
        (b"HOST", (b"host", True, "Host")),  # one of aiohttp's singletons
    ],
)
def test_a_name_reads_the_same_seen_or_not_and_past_the_limit(
    monkeypatch: pytest.MonkeyPatch, name: bytes, reading: tuple[bytes, bool | None, str]
) -> None:
    seen: dict[bytes, tuple[bytes, bool | None, str]] = {}
    monkeypatch.setattr(fast_path, "_NAMES_SEEN", seen)
    assert fast_path._name_seen(name) == reading
    assert seen[name] == reading
    full = {b"x-%d" % n: (b"x", None, "x") for n in range(fast_path._NAMES_LIMIT)}
    monkeypatch.setattr(fast_path, "_NAMES_SEEN", full)
    assert fast_path._name_seen(name) == reading
    assert name not in full and len(full) == fast_path._NAMES_LIMIT


def test_a_long_name_is_read_but_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[bytes, tuple[bytes, bool | None, str]] = {}
    monkeypatch.setattr(fast_path, "_NAMES_SEEN", seen)
    longest = b"X" * fast_path._NAME_KEPT_BYTES
    too_long = longest + b"Y"
    assert fast_path._name_seen(too_long) == (too_long.lower(), None, too_long.decode())
    assert fast_path._name_seen(longest) == (longest.lower(), None, longest.decode())
    assert list(seen) == [longest]
