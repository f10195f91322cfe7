"""Durations as operators write them: `90s`, `15m`, `12h`, `30d`."""

from __future__ import annotations

import re

_DURATION = re.compile(r"([0-9]+)([smhd])")
_UNIT = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float | None:
    """Seconds, or None when `text` is not a duration (the caller reports where)."""
    found = _DURATION.fullmatch(text.strip())
    if found is None:
        return None
    return int(found.group(1)) * _UNIT[found.group(2)]
