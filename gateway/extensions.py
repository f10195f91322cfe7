"""The extensions a full gateway runs with (the composition root's one list)."""

from __future__ import annotations

from gateway.server import Extension


def default_extensions() -> list[Extension]:
    return []
