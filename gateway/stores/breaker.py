"""A circuit breaker for one store client (one per worker per backend).

A hung server (SIGSTOP, a dead host behind an open NAT entry: connections open,
nothing answers) would otherwise make every request that needs it wait the whole store
deadline before its 503: under load, thousands of client connections held for 5 s each.
Once the server has shown it is out, the breaker opens and every call fails at once
with `StoreUnavailable` (a 503: fail closed, nothing is ever let through unasked):

- closed: calls run. A call that hits the deadline or loses its connection is an
  outage failure; THRESHOLD of them in a row, with no call answered in between and
  each within WINDOW of the one before, open the breaker. Any answer (a reply error
  such as WRONGTYPE, OOM or a unique violation included: the server answered) resets
  the count. Why not one: under a burst a healthy store may leave one call waiting
  out the deadline for a pooled connection while the others are answered; one such
  call must not black the store out for everyone. Why "in a row": a hung store
  answers nothing, so the first deadline brings every call in flight down together
  and THRESHOLD is reached at once, while a slow but live store keeps answering and
  keeps resetting the count.
- open: every call fails at once ("circuit open") for a cool-off of COOL_OFF s,
  doubled (up to MAX_COOL_OFF) each time the store is found still out.
- half-open: after the cool-off one call (a request's, or readiness's `ping`) is let
  through as the probe, under the usual deadline; the others still fail at once. Its
  answer closes the breaker, its outage failure opens it again; a probe cancelled by
  its caller decides nothing, and the next call probes instead.

A failure of a call that started before the breaker opened decides nothing either
(it only repeats what opened it); an answer from such a call closes it (the server
is evidently back). The caller's own cancellation is never a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Callable, Iterator

from gateway.errors import StoreUnavailable

log = logging.getLogger("authgate.stores.breaker")

THRESHOLD = 3  # outage failures in a row (no answer between them) that open the breaker
WINDOW = 10.0  # s: a failure further than this from the one before starts the count anew
COOL_OFF = 1.0  # s: the first cool-off once open
MAX_COOL_OFF = 5.0  # s: the longest, while the store keeps failing its probes


def configure(*, threshold: int, window: float, cool_off: float, max_cool_off: float) -> None:
    """This process's numbers (the config's `stores` section) for breakers made from now
    on: called before the stores open."""
    global THRESHOLD, WINDOW, COOL_OFF, MAX_COOL_OFF
    THRESHOLD, WINDOW, COOL_OFF, MAX_COOL_OFF = threshold, window, cool_off, max_cool_off


class CircuitOpen(StoreUnavailable):
    """Refused without asking the store: its breaker is open (a 503, like any
    StoreUnavailable; a background writer may wait and try again instead)."""


# This process's breakers, and how often each store's opened: read by gateway.metrics.
_breakers: weakref.WeakSet[Breaker] = weakref.WeakSet()
openings: dict[str, int] = {}


def circuits() -> dict[str, tuple[int, int]]:
    """By store name: how many of this process's breakers are open now, and how many
    times they opened."""
    found = {name: (0, count) for name, count in openings.items()}
    for breaker in list(_breakers):
        open_now, count = found.get(breaker.name, (0, 0))
        found[breaker.name] = (open_now + breaker.is_open, count)
    return found


class Breaker:
    def __init__(
        self,
        name: str,
        *,
        where: str = "",
        clock: Callable[[], float] = time.monotonic,
        threshold: int | None = None,
        window: float | None = None,
        cool_off: float | None = None,
        max_cool_off: float | None = None,
    ) -> None:
        """Unset numbers are the module's, as they are when the breaker is made."""
        self.name = name  # the store, as the metrics name it
        self._said = f"{name} {where}" if where else name  # and which server, in logs
        self._clock = clock
        self._threshold = max(1, THRESHOLD if threshold is None else threshold)
        self._window = WINDOW if window is None else window
        self._base = COOL_OFF if cool_off is None else cool_off
        self._max = max(self._base, MAX_COOL_OFF if max_cool_off is None else max_cool_off)
        self._failures = 0
        self._last_failure = 0.0
        self._cool_off = self._base
        self._open_until: float | None = None  # None: closed
        self._probing = False
        self._opened_at = 0.0
        self.epoch = 0  # moves on each `forget`: failures of calls begun before say nothing
        _breakers.add(self)

    @property
    def is_open(self) -> bool:
        """Open or half-open: calls are refused, but for the one probe."""
        return self._open_until is not None

    def admit(self) -> bool:
        """Before a call: raises StoreUnavailable while open; True if this call is the
        half-open probe (hand it back to `record`)."""
        if self._open_until is None:
            return False
        if self._probing or self._clock() < self._open_until:
            raise CircuitOpen(f"{self._said}: circuit open")
        self._probing = True
        return True

    def record(self, probe: bool, answered: bool | None, epoch: int | None = None) -> None:
        """After a call: `answered` True if the server answered (a reply error
        included), False for an outage failure (deadline, connection lost), None when
        the call says nothing about the server (the caller's cancellation). `epoch`:
        the breaker's when the call began; an outcome from before a `forget` was the
        old server's, and counts for nothing."""
        if epoch not in (None, self.epoch):
            # A call to the server before a `forget`: it says nothing of this one, and
            # its probe's place was freed by the `forget` already.
            return
        if probe:
            self._probing = False
        if answered is None:
            return
        if answered:
            self._failures = 0
            if self._open_until is not None:
                self._close()
            return
        now = self._clock()
        if self._open_until is not None:
            if probe:
                self._cool_off = min(self._cool_off * 2, self._max)
                self._open_until = now + self._cool_off
                log.debug("%s: probe failed; circuit open %.1f s more", self._said, self._cool_off)
            return
        if self._failures and now - self._last_failure > self._window:
            self._failures = 0
        self._failures += 1
        self._last_failure = now
        if self._failures >= self._threshold:
            self._open(now)

    def forget(self, reason: str) -> None:
        """The client now talks to another server (a Sentinel switched to a new master):
        what the breaker learned of the old one says nothing of it. Closed at once,
        rather than refusing a healthy master for the rest of a cool-off."""
        self._failures = 0
        self.epoch += 1  # calls still out to the old server fail; that is not this one
        if self._open_until is not None:
            log.warning("%s: %s; circuit closed", self._said, reason)
            self._reset()

    def _open(self, now: float) -> None:
        self._cool_off = self._base
        self._open_until = now + self._cool_off
        self._opened_at = now
        openings[self.name] = openings.get(self.name, 0) + 1
        log.error(
            "%s: %d calls in a row got no answer; circuit open: calls fail at once (503)"
            " and one probe every %.0f-%.0f s tests the store",
            self._said,
            self._failures,
            self._base,
            self._max,
        )

    def _close(self) -> None:
        log.warning(
            "%s: the store answers again; circuit closed after %.1f s",
            self._said,
            self._clock() - self._opened_at,
        )
        self._reset()

    def _reset(self) -> None:
        self._open_until = None
        self._probing = False
        self._failures = 0
        self._cool_off = self._base


@contextlib.contextmanager
def watched(
    breaker: Breaker | None,
    is_outage: Callable[[BaseException], bool],
    *,
    success: bool | None = True,
) -> Iterator[None]:
    """Around one store call: refused at once (CircuitOpen) while `breaker` is open, and
    its outcome reported to it: an answer, an outage failure (`is_outage`), or nothing
    at all for the caller's own cancellation. Without a breaker, only the call.
    `success`: what a call that returns says (None: nothing, as for a connection taken
    from a pool, which proves nothing of the server)."""
    epoch = breaker.epoch if breaker is not None else None
    probe = breaker.admit() if breaker is not None else False
    answered: bool | None = None
    try:
        yield
        answered = success
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        answered = not is_outage(exc)
        raise
    finally:
        if breaker is not None:
            breaker.record(probe, answered, epoch)
