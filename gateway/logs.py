"""Structured logs: one JSON object a line (or plain text for people at a terminal).

Writing never blocks the event loop: records go to a queue and a thread writes them
(`logging.handlers.QueueListener`). Threads do not survive `fork`, so each worker
starts its own writer after the fork. Every record logged while a request is handled
carries that request's id (`RequestIdFilter`, applied before the record is queued,
in the request's own context).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import queue
import sys
import time
from collections.abc import Callable
from typing import TextIO

from gateway.config.model import LoggingConfig
from gateway.request_log import RequestIdFilter

# Attributes every LogRecord has; anything else was passed with `extra=` and is kept.
_STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


# Records waiting for the writer thread. Under a load the writer cannot keep up with,
# the queue must not become the process's memory: beyond this, records are dropped
# (and counted) instead of queued.
QUEUE_LIMIT = 10_000


class _DroppingQueueHandler(logging.handlers.QueueHandler):
    """Never blocks the event loop and never grows past the queue's bound."""

    dropped = 0

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            _DroppingQueueHandler.dropped += 1


def dropped_log_records() -> int:
    """How many log records were dropped because the writer fell behind."""
    return _DroppingQueueHandler.dropped


class _Writer:
    """The queue in front of the real handler, and the thread that drains it."""

    def __init__(self, target: logging.Handler) -> None:
        self.target = target
        self.queue: queue.Queue[logging.LogRecord] = queue.Queue(QUEUE_LIMIT)
        self.front = _DroppingQueueHandler(self.queue)
        self.front.addFilter(RequestIdFilter())
        self.listener: logging.handlers.QueueListener | None = None

    def start(self) -> None:
        self.listener = logging.handlers.QueueListener(self.queue, self.target)
        self.listener.start()

    def restart_after_fork(self) -> None:
        # The parent's thread (and any lock it held) is not in the child: a new queue
        # and a new thread. Whatever the parent had queued is the parent's to write.
        self.queue = queue.Queue(QUEUE_LIMIT)
        self.front.queue = self.queue
        self.start()

    def stop(self) -> None:
        if self.listener is not None:
            self.listener.stop()  # writes what is queued, then ends the thread
            self.listener = None


_writer: _Writer | None = None


def setup_logging(config: LoggingConfig, stream: TextIO | None = None) -> None:
    """Log to `stream` (stderr) through a background writer; idempotent."""
    global _writer
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    if config.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    flush_logging()
    first = _writer is None
    _writer = _Writer(handler)
    _writer.start()
    if first:
        os.register_at_fork(after_in_child=_restart_after_fork)
    root = logging.getLogger()
    root.handlers[:] = [_writer.front]
    root.setLevel(config.level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # aiosqlite logs every statement with its parameters at DEBUG: hashes of session
    # ids and API keys, password hashes. Never, whatever the configured level.
    logging.getLogger("aiosqlite").setLevel(logging.INFO)


def _restart_after_fork() -> None:
    if _writer is not None:
        _writer.restart_after_fork()


def flush_logging() -> None:
    """Write every queued record and stop the writer thread (at process exit)."""
    if _writer is not None:
        _writer.stop()


class Occasional:
    """A warning for a state that recurs on every request (a full store): said at most
    once per `every` seconds, with how often it came since it was last said."""

    def __init__(
        self,
        logger: logging.Logger,
        message: str,
        every: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger, self._message, self._every, self._clock = logger, message, every, clock
        self._count = 0
        self._next = float("-inf")

    def note(self, cause: BaseException | None = None) -> None:
        """Count one more; say so when the period is over. `cause`: the error behind
        this time, named by its class only (a driver's, when it is wrapped): enough to
        tell a refused write from a dead store, and no message that might hold data."""
        self._count += 1
        now = self._clock()
        if now < self._next:
            return
        if cause is None:
            self._logger.warning("%s (%d time(s) since last said)", self._message, self._count)
        else:
            self._logger.warning(
                "%s (%d time(s) since last said; the last: %s)",
                self._message,
                self._count,
                type(cause.__cause__ or cause).__name__,
            )
        self._count = 0
        self._next = now + self._every
