"""Metrics, the store timer, the request-id log filter and the optional span, without a server."""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.config.model import Config, LoggingConfig, RouteConfig, ServerConfig, TenantConfig
from gateway.metrics import Metrics, timed_store
from gateway.request_log import (
    RequestIdFilter,
    RequestObserver,
    normal_method,
    note_decision,
    note_target,
    tracer,
)
from policies import Action, Decision

ROUTE = RouteConfig(host="wiki.acme.test", upstream="http://127.0.0.1:9", path="/docs")
TENANT = TenantConfig(id="acme", name="Acme", domains=("wiki.acme.test",), routes=(ROUTE,))


def config(**logging_options: object) -> Config:
    return Config(
        source=Path("/nowhere/config.yaml"),
        tenants=(TENANT,),
        server=ServerConfig(),
        logging=LoggingConfig(**logging_options),  # type: ignore[arg-type]
    )


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    metrics.flush()  # what a scrape does first
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics.exposition().decode())
        for s in family.samples
    }


def test_requests_are_counted_under_the_route_as_configured_never_the_path() -> None:
    metrics = Metrics(config())
    route = metrics.for_route(TENANT, ROUTE)
    route.count(Action.ALLOW, 200)
    route.count(Action.ALLOW, 200)
    route.count(Action.DENY, 403)
    metrics.for_route(None, None).count(None, 421)
    got = samples(metrics)
    labels = (
        ("decision", "ALLOW"),
        ("route", "wiki.acme.test/docs"),
        ("status", "200"),
        ("tenant", "acme"),
    )
    assert got[("authgate_requests_total", labels)] == 2
    nowhere = (("decision", "-"), ("route", "-"), ("status", "421"), ("tenant", "-"))
    assert got[("authgate_requests_total", nowhere)] == 1


def test_the_hot_path_sums_locally_and_a_flush_hands_over_exactly_once() -> None:
    metrics = Metrics(config())
    route = metrics.for_route(TENANT, ROUTE)
    for amount in (0.0004, 0.003, 0.003, 42.0):
        route.duration.observe(amount)
    route.count(Action.ALLOW, 200)
    raw = {
        (s.name, s.labels.get("le")): s.value
        for family in text_string_to_metric_families(metrics.exposition().decode())
        for s in family.samples
        if s.labels.get("route") == "wiki.acme.test/docs"
    }
    assert raw[("authgate_request_duration_seconds_count", None)] == 0  # not yet handed over
    got = samples(metrics)
    got_again = samples(metrics)  # a second flush adds nothing
    assert got == got_again
    labels = (("route", "wiki.acme.test/docs"), ("tenant", "acme"))
    assert got[("authgate_request_duration_seconds_count", labels)] == 4
    assert got[("authgate_request_duration_seconds_sum", labels)] == pytest.approx(42.0064)
    bucket = {
        le: got[("authgate_request_duration_seconds_bucket", (("le", le), *labels))]
        for le in ("0.0005", "0.0025", "0.005", "30.0", "+Inf")
    }
    assert bucket == {"0.0005": 1, "0.0025": 1, "0.005": 3, "30.0": 3, "+Inf": 4}


def test_label_children_are_bound_once_per_route_and_status() -> None:
    metrics = Metrics(config())
    route = metrics.for_route(TENANT, ROUTE)
    assert metrics.for_route(TENANT, ROUTE) is route
    route.count(Action.ALLOW, 200)
    child = route.requests[Action.ALLOW][200]
    route.count(Action.ALLOW, 200)
    assert route.requests[Action.ALLOW][200] is child


def test_a_route_added_while_serving_gets_its_own_labels() -> None:
    metrics = Metrics(config())
    added = dataclasses.replace(ROUTE, host="new.acme.test")
    metrics.for_route(TENANT, added).count(Action.LOGIN, 302)
    assert any(dict(labels).get("route") == "new.acme.test/docs" for _, labels in samples(metrics))


def test_sign_in_methods_and_results_come_from_fixed_sets() -> None:
    metrics = Metrics(config())
    metrics.sign_in("acme", "totp", "banned")
    metrics.api_key("acme", True)
    with pytest.raises(ValueError):
        metrics.sign_in("acme", "alice", "success")
    with pytest.raises(ValueError):
        metrics.sign_in("acme", "password", "10.0.0.1")
    got = samples(metrics)
    name = "authgate_sign_in_attempts_total"
    assert got[(name, (("method", "totp"), ("result", "banned"), ("tenant", "acme")))] == 1
    assert got[(name, (("method", "apikey"), ("result", "success"), ("tenant", "acme")))] == 1


def test_policy_reloads_start_at_zero_for_both_results() -> None:
    metrics = Metrics(config())
    metrics.policy_reload(ok=False)
    got = samples(metrics)
    assert got[("authgate_policy_reloads_total", (("result", "success"),))] == 0
    assert got[("authgate_policy_reloads_total", (("result", "failure"),))] == 1


@pytest.mark.parametrize(
    ("peer", "allowed"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.1", False),
        ("2001:db8::1", False),
        (None, False),
        ("not an address", False),
    ],
)
def test_the_endpoint_answers_only_peers_in_metrics_networks(
    peer: str | None, allowed: bool
) -> None:
    assert Metrics(config()).peer_allowed(peer) is allowed


def test_metrics_networks_come_from_the_config() -> None:
    cfg = dataclasses.replace(
        config(), server=ServerConfig(metrics_networks=(ipaddress.ip_network("10.0.0.0/8"),))
    )
    metrics = Metrics(cfg)
    assert metrics.peer_allowed("10.1.2.3")
    assert not metrics.peer_allowed("127.0.0.1")


class _Store:
    async def get(self, key: str) -> str:
        return key.upper()

    async def broken(self) -> None:
        raise ConnectionError("down")

    def name(self) -> str:
        return "plain"


async def test_a_timed_store_counts_latency_and_errors_and_passes_results_through() -> None:
    metrics = Metrics(config())
    store = timed_store(_Store(), "sessions", metrics)
    assert await store.get("a") == "A"
    assert await store.get("b") == "B"
    with pytest.raises(ConnectionError):
        await store.broken()
    assert store.name() == "plain"
    got = samples(metrics)
    count = "authgate_store_duration_seconds_count"
    assert got[(count, (("op", "get"), ("store", "sessions")))] == 2
    assert got[(count, (("op", "broken"), ("store", "sessions")))] == 1
    assert got[("authgate_store_errors_total", (("store", "sessions"),))] == 1


async def test_active_sessions_are_counted_on_scrape() -> None:
    metrics = Metrics(config())

    async def count() -> list[tuple[str, int]]:
        return [("acme", 3)]

    metrics.count_active_sessions(count)
    text = metrics.exposition(await metrics._active()).decode()
    assert 'authgate_active_sessions{tenant="acme"} 3.0' in text


async def test_a_hung_session_store_does_not_hold_up_scrapes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio

    from gateway import metrics as metrics_module

    monkeypatch.setattr(metrics_module, "ACTIVE_SESSIONS_TIMEOUT", 0.05)
    metrics = Metrics(config())
    calls = 0

    async def hangs() -> list[tuple[str, int]]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(3600)
        return []

    metrics.count_active_sessions(hangs)
    assert await asyncio.wait_for(metrics._active(), 2) == ()
    assert await asyncio.wait_for(metrics._active(), 2) == ()
    assert calls == 1  # the failure is remembered: the next scrape does not wait again


@pytest.mark.parametrize(
    ("method", "normal"), [("GET", "GET"), ("PROPFIND", "OTHER"), ("get", "OTHER")]
)
def test_methods_are_normalised_to_a_fixed_set(method: str, normal: str) -> None:
    assert normal_method(method) == normal


def test_log_records_written_during_a_request_carry_its_id() -> None:
    observer = RequestObserver(config(access_log=False), Metrics(config()))
    record = logging.makeLogRecord({"msg": "x"})
    assert RequestIdFilter().filter(record)
    assert not hasattr(record, "request_id")
    token = observer.start("rid-1", "GET", 0.0)
    inside = logging.makeLogRecord({"msg": "y"})
    RequestIdFilter().filter(inside)
    observer.finish(token, None)
    assert inside.request_id == "rid-1"
    after = logging.makeLogRecord({"msg": "z"})
    RequestIdFilter().filter(after)
    assert not hasattr(after, "request_id")


def test_a_request_that_never_answered_is_counted_as_499() -> None:
    metrics = Metrics(config())
    observer = RequestObserver(config(access_log=False), metrics)
    token = observer.start("rid", "GET", 0.0)
    note_decision(TENANT, ROUTE, Decision(Action.ALLOW, "r", "why"), 0.001)
    observer.finish(token, None)
    labels = (
        ("decision", "ALLOW"),
        ("route", "wiki.acme.test/docs"),
        ("status", "499"),
        ("tenant", "acme"),
    )
    assert samples(metrics)[("authgate_requests_total", labels)] == 1


def test_tracing_is_off_unless_configured() -> None:
    assert tracer(config()) is None
    observer = RequestObserver(config(), Metrics(config()))
    token = observer.start("rid", "GET", 0.0)
    observer.finish(token, None)  # no span made, nothing to end


def test_a_request_handed_over_starts_no_span_and_one_recorded_starts_one_that_ends() -> None:
    # The fast path starts a request, then hands it to aiohttp's server, which starts
    # and records it again: one span, started and ended, covering the whole time.
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider

    class Counting(SpanProcessor):
        def __init__(self) -> None:
            self.started = 0
            self.ended: list[ReadableSpan] = []

        def on_start(self, span: Span, parent_context: object = None) -> None:
            self.started += 1

        def on_end(self, span: ReadableSpan) -> None:
            self.ended.append(span)

    counting = Counting()
    provider = TracerProvider()
    provider.add_span_processor(counting)
    observer = RequestObserver(config(otel=True), Metrics(config()), tracer_provider=provider)
    began = time.perf_counter() - 0.25  # the request began a quarter of a second ago
    observer.discard(observer.start("rid-1", "GET", began))
    assert counting.started == 0 and counting.ended == []
    observer.finish(observer.start("rid-1", "GET", began), None)
    assert counting.started == 1
    (span,) = counting.ended
    assert span.start_time is not None and span.end_time is not None
    assert 0.2 <= (span.end_time - span.start_time) / 1e9 < 5.0


def test_a_span_per_request_with_canonical_path_and_decision() -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    observer = RequestObserver(config(otel=True), Metrics(config()), tracer_provider=provider)
    token = observer.start("rid-9", "GET", 0.0)
    note_target("wiki.acme.test", "/docs/page")
    note_decision(TENANT, ROUTE, Decision(Action.DENY, "admins-only", "why"), 0.0)
    observer.finish(token, None)
    (span,) = exporter.get_finished_spans()
    attributes = dict(span.attributes or {})
    assert attributes["url.path"] == "/docs/page"
    assert attributes["authgate.decision"] == "DENY"
    assert attributes["authgate.rule"] == "admins-only"
    assert attributes["authgate.request_id"] == "rid-9"
