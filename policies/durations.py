"""Durations as operators write them: `90s`, `15m`, `12h`, `30d`, `1h30m`, or plain seconds.

Plain numbers are accepted as seconds (YAML `idle_timeout: 0` is the integer 0, and an
environment variable `AUTHGATE_SERVER_CLIENT_TIMEOUT=60` reads naturally). Units: `ms`,
`s`, `m`, `h`, `d`, `w`; several may be chained from largest to smallest (`1h30m`).
Negative, infinite and non-numeric values are refused.
"""

from __future__ import annotations

import math
import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w))+")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")

DURATION_HINT = "expected a duration like 90s, 15m, 12h or 30d"


def parse_duration(text: str | int | float) -> float:
    """Seconds in `text`; raises ValueError (with a message fit for an operator) otherwise."""
    if isinstance(text, bool):  # YAML `yes`/`no` would otherwise pass as 1/0
        raise ValueError(DURATION_HINT)
    if isinstance(text, int | float):
        seconds = float(text)
    elif isinstance(text, str):
        stripped = text.strip()
        if _NUMBER.fullmatch(stripped):
            seconds = float(stripped)
        elif _WHOLE.fullmatch(stripped):
            parts = [(float(n), unit) for n, unit in _PART.findall(stripped)]
            sizes = [_UNITS[unit] for _, unit in parts]
            if sizes != sorted(sizes, reverse=True) or len(set(sizes)) != len(sizes):
                raise ValueError(f"{DURATION_HINT}; chain units from largest to smallest (1h30m)")
            seconds = sum(n * _UNITS[unit] for n, unit in parts)
        else:
            raise ValueError(DURATION_HINT)
    else:
        raise ValueError(DURATION_HINT)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{DURATION_HINT} (not negative)")
    return seconds


def duration_or_none(text: str) -> float | None:
    """Seconds, or None when `text` is not a duration (the caller reports where)."""
    try:
        return parse_duration(text)
    except ValueError:
        return None
