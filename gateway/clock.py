"""One clock for the timestamps instances share (issue #8: instances on several hosts).

Every instance writes absolute times into shared state (session `expires`, `last_seen`,
`auth_time`, bans, rate-limit windows, signing-key `created`, SSO codes, WebAuthn
challenges) and compares them with its own clock when another instance reads them. Two
hosts never agree exactly, and a host whose NTP is broken may be off by minutes: its
fixed windows fall apart from the others' (rate limits counted apart), bans and codes
look over early or late, sessions idle out early, and the keys it signs with come of
age early.

So an instance does not use its own wall clock for shared state: it reads the clock of
the store they all share (Redis `TIME` when sessions live in Redis, else PostgreSQL's
`clock_timestamp()`), once at start and every `SAMPLE_INTERVAL` after, and keeps the
difference (`offset`). Every instance then stamps and compares on the store's time
line, to within a round trip. A sample whose round trip took longer than
`MAX_ROUND_TRIP` is not trusted (the previous offset stays).

Between two readings `now()` counts on from the last one with the monotonic clock, not
the wall clock: NTP may step this host's wall clock (at boot, after a suspend, when
it finds it far off), and `time.time() + offset` would step with it, shared state
judged up to a minute off until the next reading. The steady clock (CLOCK_BOOTTIME:
monotonic, and counting a suspend) never steps; NTP only slews its rate (at most 500
ppm, 30 ms a minute). When the two disagree by more than `JUMP` (a step, or a paused
VM whose steady clock stood still), one of them is wrong and only the store can say
which: it is read again at once (then at most once a second while it cannot be), and
until then the steady clock serves. After a pause it lags by the pause until that
reading, a round trip when the store answers; while it does not, what needs the store
fails closed anyway.

The offset is also a health signal (the `authgate_clock_offset_seconds` gauge): more
than `WARN_OFFSET` is logged as a warning (NTP wants looking at), more than `LOUD_OFFSET`
as an error. It does not make the instance unready: on the store's time line it agrees
with the others, and were the store's clock the wrong one, every instance would go
unready together. What the store's clock cannot fix is the outside world's: upstreams
check JWTs and phones make TOTP codes on their own clocks, so the store's host wants NTP
as much as the gateways' do. An instance is not ready until its first reading. With
SQLite (one host) there is nothing to agree with: the local clock is used as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable

from gateway.logs import Occasional

log = logging.getLogger("authgate.clock")

SAMPLE_INTERVAL = 60.0  # seconds between two readings of the store's clock
# Until the first reading is taken (the one at start failed or was too slow to trust),
# the instance is unready and its offset unknown: tried again this often, not once a minute.
FIRST_SAMPLE_RETRY = 1.0
MAX_ROUND_TRIP = 1.0  # seconds; a slower reading says too little about the offset
WARN_OFFSET = 1.0  # seconds; NTP keeps hosts within tens of ms
LOUD_OFFSET = 30.0  # seconds; one TOTP step: logged as an error

# Seconds by which the wall clock and the steady one may part before the store's clock is
# read again at once (NTP slews them apart by at most 30 ms between two readings).
JUMP = 1.0

Source = Callable[[], Awaitable[float]]


def _steady() -> float:
    """Never steps, and counts a suspend (CLOCK_BOOTTIME); time.monotonic elsewhere."""
    return time.clock_gettime(_BOOTTIME)


_BOOTTIME = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


class SharedClock:
    """The store's time, as this host's wall clock plus a measured offset."""

    def __init__(
        self,
        source: Source | None,
        reference: str,
        *,
        local: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = _steady,
        on_offset: Callable[[str, float], None] | None = None,
    ) -> None:
        self._local = local
        self._on_offset = on_offset
        self._monotonic = monotonic
        self._jumped = asyncio.Event()  # the wall and steady clocks parted: read again
        self.attach(source, reference)

    def attach(self, source: Source | None, reference: str) -> None:
        """Read `reference`'s clock through `source` from now on (None: the local clock)."""
        self._source: Source | None = source
        self.reference = reference  # "redis", "postgresql" or "local" (no source)
        self.offset = 0.0  # seconds to add to the local clock (as last read; the gauge)
        self._anchor: tuple[float, float] | None = None  # (store time, steady) last read
        self._warning = Occasional(
            log,
            f"this host's clock differs from the {reference} server's; check NTP on both",
            every=600.0,
            clock=self._monotonic,
        )
        self._jump_seen = Occasional(
            log,
            f"this host's wall clock jumped (a step, or a pause); reading the {reference}"
            " server's clock again",
            clock=self._monotonic,
        )
        self._unread = Occasional(
            log, f"could not read the {reference} server's clock", clock=self._monotonic
        )

    @property
    def sampled(self) -> bool:
        """The store's clock was read (always, with none to read)."""
        return self._source is None or self._anchor is not None

    def now(self) -> float:
        anchor = self._anchor
        walled = self._local() + self.offset
        if anchor is None:  # no store clock (SQLite), or not read yet
            return walled
        shared = anchor[0] + (self._monotonic() - anchor[1])
        if abs(walled - shared) > JUMP:
            # One of the two is wrong, and only the store can say which: it is read at
            # once. Meanwhile the steady clock serves. The later of the two would keep
            # expiries safe but stamp times in the future into what is shared (a
            # session's `expires`, a JWT's `iat`) after a step of the wall clock, the
            # common case (NTP at boot), and stamps outlive the moment.
            self._jumped.set()
        return shared

    async def sample(self) -> float:
        """Read the store's clock once; returns the offset in force after it. Raises
        what the store raises (the previous offset stays)."""
        if self._source is None:
            return self.offset
        before, ticked = self._local(), self._monotonic()
        theirs = await self._source()
        after, ticks = self._local(), self._monotonic()
        if not 0 <= ticks - ticked <= MAX_ROUND_TRIP or not math.isfinite(theirs):
            log.info("clock reading of the %s server skipped (slow answer)", self.reference)
            return self.offset
        self.offset = theirs - (before + after) / 2
        self._anchor = (theirs, (ticked + ticks) / 2)
        if self._on_offset is not None:
            self._on_offset(self.reference, self.offset)
        if abs(self.offset) > LOUD_OFFSET:
            log.error(
                "this host's clock is %+.1f s off the %s server's; shared state follows"
                " the %s server's clock, which must itself be right (JWTs, TOTP codes)",
                -self.offset,
                self.reference,
                self.reference,
            )
        elif abs(self.offset) > WARN_OFFSET:
            self._warning.note()
            log.debug("clock offset to %s: %+.3f s", self.reference, self.offset)
        return self.offset

    async def ready(self) -> bool:
        """Readiness: the store's clock was read (once is enough: the offset is kept)."""
        return self.sampled

    async def follow(self) -> None:
        """Sample every SAMPLE_INTERVAL until cancelled; a failed reading is retried
        (every FIRST_SAMPLE_RETRY while there has been none)."""
        while True:
            wait = SAMPLE_INTERVAL if self.sampled else FIRST_SAMPLE_RETRY
            jumped = False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._jumped.wait()
                jumped = True
                self._jump_seen.note()
            try:
                await self.sample()
            except Exception as exc:
                self._unread.note(exc)
            self._jumped.clear()  # what requests saw during the reading, it answered
            if jumped:
                # Until a reading ends the disagreement every request sees it again: a
                # reading at most this often, whatever the store answers.
                await asyncio.sleep(FIRST_SAMPLE_RETRY)
