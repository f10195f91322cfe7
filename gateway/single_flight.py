"""One store read per key at a time, and reads ahead of a cache entry's end.

The per-process caches in front of a store (sessions, API keys) meet two hazards under
load. When a busy entry ends, every request in flight would ask the store at once (a
herd); `SingleFlight` makes the first caller's read everyone's. And all of them would
wait for that read: every lifetime of the entry, everything it serves stalls for one
store round trip (2-20 ms measured for a SQLite read in a loaded worker, the p99 of a
busy session). `read_ahead_from` says when an entry that still serves should be read
again in the background, so that nobody waits.

Reading ahead never stretches a cache's bound: the entry serves until its own end, and
the read renews it only from when that read began.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

# An entry still asked for in the last this much of its lifetime is read again.
READ_AHEAD = 0.25

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def read_ahead_from(until: float, lifetime: float) -> float:
    """When an entry that serves until `until`, of `lifetime` in all, enters its last
    READ_AHEAD part: from then on, a use of it reads it again."""
    return until - lifetime * READ_AHEAD


class OncePerEntry(Generic[K]):
    """Which cache entries a read ahead was begun for: one per entry, so that a read that
    fails (the store is down) is not begun again on every request the entry serves; its
    end meets the outage instead. Forgets everything when it holds `limit` keys."""

    def __init__(self, limit: int) -> None:
        self._begun: dict[K, object] = {}
        self._limit = max(limit, 1)

    def first(self, key: K, entry: object) -> bool:
        """Whether no read ahead was begun yet for `entry` (the cache's value for `key`,
        compared by identity); from now on one was."""
        if self._begun.get(key) is entry:
            return False
        if len(self._begun) >= self._limit:
            self._begun.clear()
        self._begun[key] = entry
        return True


class SingleFlight(Generic[K, V]):
    """At most one `work` per key under way; callers arriving meanwhile share its
    outcome."""

    def __init__(self) -> None:
        self._pending: dict[K, asyncio.Future[V]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def start(self, key: K, work: Callable[[], Awaitable[V]]) -> asyncio.Future[V]:
        """The work under way for `key`, or `work` begun as it (nobody need await it)."""
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.ensure_future(work())
            # A failure nobody awaits (a read ahead, or all callers gone) is retrieved.
            pending.add_done_callback(_retrieve)
            self._pending[key] = pending
            pending.add_done_callback(lambda _: self._pending.pop(key, None))
        return pending

    async def join(self, key: K, work: Callable[[], Awaitable[V]]) -> V:
        """The outcome of the work under way for `key` (begun by `work` if none is).
        Shielded: a caller that goes away does not cancel the others' answer."""
        return await asyncio.shield(self.start(key, work))


def _retrieve(future: asyncio.Future[V]) -> None:
    if not future.cancelled():
        future.exception()
