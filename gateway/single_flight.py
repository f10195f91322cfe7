"""Store reads shared by the requests that need them at once, and reads ahead of a
cache entry's end.

The per-process caches in front of a store (sessions, API keys) meet two hazards under
load. When a busy entry ends, every request in flight would ask the store at once (a
herd); `SingleFlight` makes the first caller's read that of everyone arriving within
the cache's bound of its start. And all of them would
wait for that read: every lifetime of the entry, everything it serves stalls for one
store round trip (2-20 ms measured for a SQLite read in a loaded worker, the p99 of a
busy session). `read_ahead_from` says when an entry that still serves should be read
again in the background, so that nobody waits.

Reading ahead never stretches a cache's bound: the entry serves until its own end, and
the read renews it only from when that read began. Nor does sharing a read: a caller
shares one begun at most the bound ago (`max_age`), else it begins its own. A read that
hangs in a store could otherwise hand, say, a revoked session to requests arriving long
after the revocation, when the message that should have ended it was lost. A bound of
0 (no cache) shares nothing: each request reads for itself.
"""

from __future__ import annotations

import asyncio
import math
import time
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
    """One `work` per key shared by the callers arriving within `max_age` seconds (on
    `monotonic`) of its start (counted from its start, not from the last caller's
    arrival). A caller arriving later begins the work afresh, and later callers share
    that one; the old one still answers those who were waiting for it."""

    def __init__(
        self, max_age: float = math.inf, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._pending: dict[K, tuple[float, asyncio.Future[V]]] = {}
        self._running: set[asyncio.Future[V]] = set()  # (replaced ones too)
        self._max_age = max_age
        self._monotonic = monotonic

    def __len__(self) -> int:
        """How many pieces of work are still running (shared or replaced)."""
        return len(self._running)

    def start(self, key: K, work: Callable[[], Awaitable[V]]) -> asyncio.Future[V]:
        """The work under way for `key`, or `work` begun as it (nobody need await it)."""
        now = self._monotonic()
        under_way = self._pending.get(key)
        if under_way is not None and self._max_age > 0 and now - under_way[0] <= self._max_age:
            return under_way[1]
        pending = asyncio.ensure_future(work())
        # A failure nobody awaits (a read ahead, or all callers gone) is retrieved.
        pending.add_done_callback(_retrieve)
        self._pending[key] = (now, pending)
        self._running.add(pending)
        pending.add_done_callback(lambda done: self._forget(key, done))
        return pending

    def _forget(self, key: K, done: asyncio.Future[V]) -> None:
        self._running.discard(done)
        under_way = self._pending.get(key)
        if under_way is not None and under_way[1] is done:  # (not a later one for the key)
            del self._pending[key]

    async def join(self, key: K, work: Callable[[], Awaitable[V]]) -> V:
        """The outcome of the work under way for `key` (begun by `work` if none is).
        Shielded: a caller that goes away does not cancel the others' answer."""
        return await asyncio.shield(self.start(key, work))


def _retrieve(future: asyncio.Future[V]) -> None:
    if not future.cancelled():
        future.exception()
