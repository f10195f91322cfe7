"""The audit trail: who did what, from where, with which outcome.

Every event is written twice: at once as one structured log line (logger
`authgate.audit`, a JSON object a line with the JSON formatter), and to the
`AuditLog` store through a bounded queue drained by one task, so a burst of
`access_denied` never waits on the database: when the queue is full the row is
dropped and counted (the log line was still written). Rows never carry a secret:
sessions appear only as `gateway.sessions.fingerprint()` tags, and details are
checked to be plain scalars.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gateway.stores import AuditEvent, AuditLog
from gateway.stores.breaker import CircuitOpen

log = logging.getLogger("authgate.audit")

QUEUE_SIZE = 10_000  # rows waiting for the database; beyond this they are dropped
PRUNE_SECONDS = 3600.0
# While the database's circuit breaker is open, the writer waits this long and tries the
# same row again (the rows queue meanwhile, up to QUEUE_SIZE) rather than lose each at once.
CIRCUIT_RETRY_SECONDS = 0.5
STOP_SECONDS = 5.0  # at shutdown, how long queued rows may take to reach the database

# A detail value: what can appear in one JSON object field of an audit row.
Detail = str | int | float | bool | None


class Event(enum.StrEnum):
    LOGIN_SUCCESS = "login_success"
    LOGIN_FAILURE = "login_failure"
    MFA_SUCCESS = "mfa_success"
    MFA_FAILURE = "mfa_failure"
    LOGOUT = "logout"
    SESSION_REVOKED = "session_revoked"
    ACCESS_DENIED = "access_denied"
    BANNED = "banned"
    IMPOSSIBLE_TRAVEL = "impossible_travel"
    NEW_COUNTRY = "new_country"
    POLICY_RELOADED = "policy_reloaded"
    POLICY_RELOAD_FAILED = "policy_reload_failed"
    USER_CREATED = "user_created"
    USER_DISABLED = "user_disabled"
    APIKEY_CREATED = "apikey_created"
    APIKEY_REVOKED = "apikey_revoked"
    MFA_ENROLLED = "mfa_enrolled"
    MFA_REMOVED = "mfa_removed"


@dataclass(frozen=True)
class AuditStats:
    """How the writer is doing (for metrics and tests)."""

    queued: int
    written: int
    dropped: int
    failed: int


def make_event(
    event: Event,
    *,
    time_: float,
    tenant: str | None = None,
    user: str | None = None,
    ip: str | None = None,
    country: str | None = None,
    user_agent: str | None = None,
    session_fp: str | None = None,
    rule: str | None = None,
    outcome: str | None = None,
    details: Mapping[str, Detail] | None = None,
) -> AuditEvent:
    """One audit row; `details` must be scalars (no nested secrets smuggled in objects)."""
    for key, value in (details or {}).items():
        if not isinstance(value, str | int | float | bool | type(None)):
            raise TypeError(f"audit detail {key!r} must be a scalar, not {type(value).__name__}")
    return AuditEvent(
        time=time_,
        event=Event(event).value,
        tenant=tenant,
        user=user,
        ip=ip,
        country=country,
        user_agent=(user_agent or "")[:256] or None,
        session_fp=session_fp,
        rule=rule,
        outcome=outcome,
        details=json.dumps(dict(details or {}), sort_keys=True, separators=(",", ":")),
    )


def log_event(row: AuditEvent) -> None:
    """The log line of an audit row: message = event name, fields as structured extras."""
    log.info(
        "audit: %s",
        row.event,
        extra={
            "audit_event": row.event,
            "audit_time": row.time,
            "tenant": row.tenant,
            "user": row.user,
            "ip": row.ip,
            "country": row.country,
            "user_agent": row.user_agent,
            "session_fp": row.session_fp,
            "rule": row.rule,
            "outcome": row.outcome,
            "details": json.loads(row.details),
        },
    )


async def write_now(store: AuditLog, row: AuditEvent) -> None:
    """Log and store one event, waiting for the database (CLI commands: no queue there)."""
    log_event(row)
    await store.append(row)


async def record_now(
    store: AuditLog,
    event: Event,
    *,
    tenant: str | None = None,
    user: str | None = None,
    session_fp: str | None = None,
    outcome: str | None = "ok",
    details: Mapping[str, Detail] | None = None,
) -> None:
    """An operator action from the CLI: logged and stored at once (no worker queue)."""
    row = make_event(
        event,
        time_=time.time(),
        tenant=tenant,
        user=user,
        user_agent="authgate-cli",
        session_fp=session_fp,
        outcome=outcome,
        details=details,
    )
    await write_now(store, row)


class AuditTrail:
    """The worker's audit writer: `record()` never blocks, a task stores the rows."""

    def __init__(
        self,
        store: AuditLog,
        *,
        retention: float,
        now: Callable[[], float] = time.time,
        queue_size: int = QUEUE_SIZE,
    ) -> None:
        self.store = store
        self.retention = retention
        self.now = now
        self._queue: asyncio.Queue[AuditEvent] = asyncio.Queue(maxsize=queue_size)
        self._task: asyncio.Task[None] | None = None
        self._written = 0
        self._dropped = 0
        self._failed = 0

    def record(
        self,
        event: Event,
        *,
        tenant: str | None = None,
        user: str | None = None,
        ip: str | None = None,
        country: str | None = None,
        user_agent: str | None = None,
        session_fp: str | None = None,
        rule: str | None = None,
        outcome: str | None = None,
        details: Mapping[str, Detail] | None = None,
    ) -> AuditEvent:
        """Log the event now and queue its row; drops the row (counted) when the queue is full."""
        row = make_event(
            event,
            time_=self.now(),
            tenant=tenant,
            user=user,
            ip=ip,
            country=country,
            user_agent=user_agent,
            session_fp=session_fp,
            rule=rule,
            outcome=outcome,
            details=details,
        )
        log_event(row)
        try:
            self._queue.put_nowait(row)
        except asyncio.QueueFull:
            self._dropped += 1
        return row

    def stats(self) -> AuditStats:
        return AuditStats(self._queue.qsize(), self._written, self._dropped, self._failed)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._drain())

    async def flush(self) -> None:
        """Wait until every queued row has been handled (tests, shutdown)."""
        await self._queue.join()

    async def stop(self) -> None:
        """Store what is queued (bounded by STOP_SECONDS), then stop the writer."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), STOP_SECONDS)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def prune(self) -> int:
        """Delete rows older than the retention period; returns how many."""
        if self.retention <= 0:
            return 0
        return await self.store.prune(self.now() - self.retention)

    async def _drain(self) -> None:
        while True:
            row = await self._queue.get()
            try:
                while True:
                    try:
                        await self.store.append(row)
                        break
                    except CircuitOpen:
                        await asyncio.sleep(CIRCUIT_RETRY_SECONDS)
                self._written += 1
            except Exception:
                # The log line already carries the event; the row is lost, loudly.
                self._failed += 1
                log.exception("could not store an audit row (%s)", row.event)
            finally:
                self._queue.task_done()
