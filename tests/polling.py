"""Waiting, in a test, for something another task or process does."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def until(
    predicate: Callable[[], bool | Awaitable[bool]], what: str, timeout: float
) -> float:
    """Poll until `predicate` holds; returns when it did (monotonic). Fails, naming
    `what`, when it has not within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        held = predicate()
        if held if isinstance(held, bool) else await held:
            return time.monotonic()
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.05)
