"""Durations in the config: the one parser lives in the pure core (`policies.durations`)."""

from policies.durations import DURATION_HINT, parse_duration

__all__ = ["DURATION_HINT", "parse_duration"]
