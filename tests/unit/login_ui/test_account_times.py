"""How the account page says when a session was last seen or signed in."""

from __future__ import annotations

import calendar

import pytest

from login_ui.account import human_time, iso_time

T = float(calendar.timegm((2026, 11, 24, 6, 40, 0)))


@pytest.mark.parametrize(
    ("ago", "shown"),
    [
        (0, "just now"),
        (-5, "just now"),  # another worker's clock a little ahead
        (59, "just now"),
        (60, "1 minute ago"),
        (5 * 60 + 30, "5 minutes ago"),
        (3600, "1 hour ago"),
        (5 * 3600 + 59 * 60, "5 hours ago"),
        (6 * 3600, "2026-11-24 06:40 UTC"),
        (40 * 86400, "2026-11-24 06:40 UTC"),
    ],
)
def test_recent_times_are_relative_and_older_ones_are_utc_dates(ago: int, shown: str) -> None:
    assert human_time(T, T + ago) == shown


def test_machine_readable_time_is_utc_iso() -> None:
    assert iso_time(T) == "2026-11-24T06:40:00Z"
