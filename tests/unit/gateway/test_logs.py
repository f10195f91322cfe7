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


def _occasional_said(
    caplog: pytest.LogCaptureFixture, notes: list[tuple[float, BaseException | None]]
) -> list[str]:
    """What an Occasional (60 s period) said, noted at each (second, cause)."""
    now = [0.0]
    warning = Occasional(logging.getLogger("test.occasional"), "store full", 60, lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.occasional"):
        for second, cause in notes:
            now[0] = second
            warning.note(cause)
    return [r.getMessage() for r in caplog.records]


def test_an_occasional_warning_is_said_once_a_period_with_how_often_it_came(
    caplog: pytest.LogCaptureFixture,
) -> None:
    said = _occasional_said(caplog, [(0, None), (1, None), (2, None), (59, None), (61, None)])
    assert said == [
        "store full (1 time(s) since last said)",
        "store full (4 time(s) since last said)",
    ]


def _wrapped() -> RuntimeError:
    """A store's error wrapping the driver's, whose message holds what must not be logged."""
    try:
        raise RuntimeError("the store is down") from OSError("secret-key-in-message")
    except RuntimeError as exc:
        return exc


def test_an_occasional_warning_names_its_last_cause_by_class_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    said = _occasional_said(
        caplog,
        [
            (0, ConnectionError("refused by 10.0.0.7")),
            (30, TimeoutError("not this one")),  # within the period: counted, not said
            (61, _wrapped()),  # the driver's class is named
        ],
    )
    assert said == [
        "store full (1 time(s) since last said; the last: ConnectionError)",
        "store full (2 time(s) since last said; the last: OSError)",
    ]
