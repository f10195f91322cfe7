"""The log writer: a bounded queue that drops (and counts) rather than grows."""

from __future__ import annotations

import io
import logging

import pytest

from gateway.config.model import LoggingConfig
from gateway.logs import QUEUE_LIMIT, Occasional, _Writer, dropped_log_records
from gateway.metrics import Metrics
from tests.unit.gateway.test_metrics import config


def test_a_writer_that_falls_behind_drops_and_counts_instead_of_growing() -> None:
    target = logging.StreamHandler(io.StringIO())
    writer = _Writer(target)  # not started: nothing drains the queue
    record = logging.makeLogRecord({"msg": "hello", "levelno": logging.INFO})
    before = dropped_log_records()
    for _ in range(QUEUE_LIMIT + 25):
        writer.front.handle(record)
    assert writer.queue.qsize() == QUEUE_LIMIT
    assert dropped_log_records() - before == 25
    scraped = Metrics(config()).exposition().decode()
    assert f"authgate_log_records_dropped_total {float(dropped_log_records())}" in scraped


def test_json_lines_carry_extra_fields() -> None:
    from gateway.logs import JsonFormatter

    record = logging.makeLogRecord({"msg": "sign-in", "tenant": "acme", "levelname": "INFO"})
    line = JsonFormatter().format(record)
    assert '"tenant": "acme"' in line and '"message": "sign-in"' in line
    assert LoggingConfig().format == "json"


def test_an_occasional_warning_is_said_once_a_period_with_how_often_it_came(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    warning = Occasional(logging.getLogger("test.occasional"), "store full", 60, lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.occasional"):
        for second in (0, 1, 2, 59):
            now[0] = second
            warning.note()
        now[0] = 61
        warning.note()
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        "store full (1 time(s) since last said)",
        "store full (4 time(s) since last said)",
    ]


def test_an_occasional_warning_names_its_last_cause_by_class_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    warning = Occasional(logging.getLogger("test.occasional"), "write failed", 60, lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.occasional"):
        warning.note(ConnectionError("refused by 10.0.0.7"))
        now[0] = 30
        warning.note(TimeoutError("not this one"))  # within the period: counted, not said
        now[0] = 61
        try:  # a store's error wrapping the driver's: the driver's class is named
            raise RuntimeError("the store is down") from OSError("secret-key-in-message")
        except RuntimeError as exc:
            warning.note(exc)
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        "write failed (1 time(s) since last said; the last: ConnectionError)",
        "write failed (2 time(s) since last said; the last: OSError)",
    ]
