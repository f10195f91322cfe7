"""The fast path's start-up check of its request reader (gateway/fast_path.py)."""

from __future__ import annotations

import httptools
import pytest

from gateway import fast_path


class _LenientParser:
    """A reader that takes everything, as httptools before 0.6.4 took folded fields."""

    def __init__(self, protocol: object) -> None:
        pass

    def feed_data(self, data: bytes) -> None:
        pass


def test_the_installed_reader_is_strict_enough() -> None:
    assert fast_path.unavailable_reason() is None


def test_a_reader_that_accepts_what_aiohttp_refuses_keeps_the_fast_path_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(httptools, "HttpRequestParser", _LenientParser)
    reason = fast_path.unavailable_reason()
    assert reason is not None
    assert "accepts requests aiohttp refuses" in reason
    assert "a folded field, a space before the colon, a bare LF ending the head" in reason
    assert "upgrade it to 0.6.4 or later" in reason


def test_aiohttps_pure_python_parser_keeps_the_fast_path_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class PurePython:
        __module__ = "aiohttp.http_parser"

    monkeypatch.setattr(fast_path, "HttpRequestParser", PurePython)
    assert fast_path.unavailable_reason() == (
        "aiohttp runs without its C parser (AIOHTTP_NO_EXTENSIONS?)"
    )
