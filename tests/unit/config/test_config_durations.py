
from __future__ import annotations

import pytest

from gateway.config import parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90.0),
        ("15m", 900.0),
        ("12h", 43200.0),
        ("30d", 2592000.0),
        ("2w", 1209600.0),
        ("500ms", 0.5),
        ("1.5h", 5400.0),
        ("1h30m", 5400.0),
        ("1d12h", 129600.0),
        ("0", 0.0),
        (0, 0.0),
        (60, 60.0),
        ("60", 60.0),
        (2.5, 2.5),
    ],
)
def test_durations_in_every_unit_and_plain_seconds(text: str | int | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "s", "-5s", "5 s", "5sec", "1.h", "h1", "30m1h", "1h1h", "inf", "nan"]
)
def test_malformed_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="expected a duration like 90s, 15m, 12h or 30d"):
        parse_duration(text)


@pytest.mark.parametrize("value", [True, False, -1, float("inf"), float("nan"), None, [1]])
def test_non_durations_are_refused(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)  # type: ignore[arg-type]
