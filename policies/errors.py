"""The error a policy file (or a policy test file) raises: every problem, located."""

from __future__ import annotations

import difflib

from policies.source import Problem, SourceError

__all__ = ["PolicyError", "Problem", "did_you_mean"]


class PolicyError(SourceError):
    """A policy is invalid; `problems` lists each as FILE:LINE: key: message."""


def did_you_mean(word: str, choices: tuple[str, ...]) -> str:
    """` (did you mean 'action'?)` for a near miss, else an empty string."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
