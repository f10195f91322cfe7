"""What one request did, for the access log, the metrics and a trace span.

The pipeline opens a `RequestRecord` per request and puts it in a context variable;
stages fill it in as they learn things (tenant, route, decision, upstream time), and
`RequestObserver.finish` turns it into one access-log line, the request counters
and histograms, and (when enabled) the end of an OpenTelemetry span. Every log line
written while the request runs carries its id through `RequestIdFilter`.

Paths in the log are canonical paths; the query string is never logged (it can carry
tokens), nor any header.
"""

from __future__ import annotations

import contextvars
import logging
import time
from typing import Any, Protocol

from gateway.config.model import Config, RouteConfig, TenantConfig
from gateway.forwarding import BODILESS_STATUSES
from gateway.metrics import NONE, Metrics
from policies import Decision

access_log = logging.getLogger("authgate.access")
log = logging.getLogger("authgate.request_log")

_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"}
)


def normal_method(method: str) -> str:
    """One of the standard methods, or OTHER (a client may send any token)."""
    return method if method in _METHODS else "OTHER"


class RequestRecord:
    """What the pipeline learned about one request. Mutable on purpose: stages write to
    it as they go; it never leaves the request."""

    __slots__ = (
        "decide_seconds",
        "decision",
        "host",
        "method",
        "path",
        "request_id",
        "route",
        "started",
        "streamed_bytes",
        "tenant",
        "upstream_seconds",
    )

    def __init__(
        self,
        request_id: str,
        method: str,
        started: float,
        host: str | None = None,
        path: str | None = None,
        tenant: TenantConfig | None = None,
        route: RouteConfig | None = None,
        decision: Decision | None = None,
    ) -> None:
        self.request_id = request_id
        self.method = method
        self.started = started
        self.host = host
        self.path = path
        self.tenant = tenant
        self.route = route
        self.decision = decision
        self.decide_seconds: float | None = None
        self.upstream_seconds: float | None = None
        self.streamed_bytes: int | None = None


_CURRENT: contextvars.ContextVar[RequestRecord | None] = contextvars.ContextVar(
    "authgate_request", default=None
)


def current() -> RequestRecord | None:
    """The request being handled in this task, if any."""
    return _CURRENT.get()


def current_request_id() -> str | None:
    record = _CURRENT.get()
    return record.request_id if record is not None else None


def note_target(host: str, path: str) -> None:
    """The canonical host and path, once known."""
    record = _CURRENT.get()
    if record is not None:
        record.host = host
        record.path = path


def note_decision(
    tenant: TenantConfig, route: RouteConfig | None, decision: Decision, seconds: float
) -> None:
    """The decision, and how long credentials plus policy took to reach it."""
    record = _CURRENT.get()
    if record is not None:
        record.tenant = tenant
        record.route = route
        record.decision = decision
        record.decide_seconds = seconds


def note_upstream(seconds: float) -> None:
    """Time from sending the request upstream to its response headers."""
    record = _CURRENT.get()
    if record is not None:
        record.upstream_seconds = seconds


def note_streamed(body_bytes: int) -> None:
    """The body bytes of a streamed answer that reached the client's socket: its
    framing (chunk sizes) and head not counted, and fewer than its length if cut."""
    record = _CURRENT.get()
    if record is not None:
        record.streamed_bytes = body_bytes


class Sent(Protocol):
    """What the log and metrics read of an answer: aiohttp's, or the fast path's."""

    @property
    def status(self) -> int: ...

    @property
    def content_length(self) -> int | None: ...


def body_bytes(record: RequestRecord, response: Sent | None) -> int:
    """The answer's body bytes, the same on aiohttp's path and the fast path: a streamed
    answer's as counted while streaming, otherwise its length. Never aiohttp's own
    count, which includes the head and the chunk framing."""
    if record.streamed_bytes is not None:
        return record.streamed_bytes
    if response is None or record.method == "HEAD" or response.status in BODILESS_STATUSES:
        return 0
    return response.content_length or 0


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every record logged while a request is handled (on a
    handler: records of every logger pass through it, in the logging task's context)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            current_id = current_request_id()
            if current_id is not None:
                record.request_id = current_id
        return True


class RequestObserver:
    """Opens and closes the record of each request: metrics, access log, span."""

    def __init__(self, config: Config, metrics: Metrics, *, tracer_provider: Any = None) -> None:
        self.metrics = metrics
        self.access = config.logging.access_log
        self.tracer = tracer(config, tracer_provider)

    def start(self, request_id: str, method: str, started: float) -> contextvars.Token[Any]:
        return _CURRENT.set(RequestRecord(request_id, method, started))

    def adopt(self, record: RequestRecord) -> contextvars.Token[Any]:
        """Make an already opened record the current one (for `finish`)."""
        return _CURRENT.set(record)

    def discard(self, token: contextvars.Token[Any]) -> None:
        """Forget a request another handler will record (the fast path hands it over):
        no metrics, no log line and no span for it, the other handler's only."""
        _CURRENT.reset(token)

    def finish(self, token: contextvars.Token[Any], response: Sent | None) -> None:
        record = _CURRENT.get()
        _CURRENT.reset(token)
        if record is not None:
            self.record(record, response)

    def record(self, record: RequestRecord, response: Sent | None) -> None:
        """Metrics, access log and span of a finished request (`finish` without the
        context variable: the fast path's reused decisions run in no task of their own)."""
        duration = time.perf_counter() - record.started
        # A handler cancelled (client gone) has no response: 499, as nginx says.
        status = response.status if response is not None else 499
        decision = record.decision
        action = decision.action if decision is not None else None
        route = self.metrics.for_route(record.tenant, record.route)
        route.count(action, status)
        route.duration.observe(duration)
        if record.upstream_seconds is not None:
            route.upstream.observe(record.upstream_seconds)
        if record.decide_seconds is not None and record.tenant is not None:
            self.metrics.decision_timer(record.tenant.id).observe(record.decide_seconds)
        if self.access:
            self._access_line(record, response, status, duration)
        if self.tracer is not None:
            _export_span(self.tracer, record, status, duration)

    def _access_line(
        self,
        record: RequestRecord,
        response: Sent | None,
        status: int,
        duration: float,
    ) -> None:
        decision = record.decision
        access_log.info(
            "%s %s%s %d %s %.1fms",
            normal_method(record.method),
            record.host or "-",
            record.path or "",
            status,
            decision.action.name if decision is not None else NONE,
            duration * 1000,
            extra={
                "request_id": record.request_id,
                "tenant": record.tenant.id if record.tenant is not None else None,
                "host": record.host,
                "method": normal_method(record.method),
                "path": record.path,
                "status": status,
                "decision": decision.action.name if decision is not None else None,
                "rule": decision.rule if decision is not None else None,
                "duration_ms": round(duration * 1000, 3),
                "upstream_ms": round(record.upstream_seconds * 1000, 3)
                if record.upstream_seconds is not None
                else None,
                "bytes": body_bytes(record, response),
            },
        )


# --- optional OpenTelemetry (pip install authgate[otel]) ----------------------------


def tracer(config: Config, provider: Any = None) -> Any:
    """An OpenTelemetry tracer when `logging.otel` is on and the packages are installed;
    None otherwise (then no span is ever made). `provider` is for tests."""
    if not config.logging.otel:
        return None
    try:
        from opentelemetry import trace
    except ImportError:
        log.warning("logging.otel is on but opentelemetry is not installed (authgate[otel])")
        return None
    return trace.get_tracer("authgate", tracer_provider=provider)


def _server_kind() -> Any:
    from opentelemetry.trace import SpanKind

    return SpanKind.SERVER


def _export_span(tracer: Any, record: RequestRecord, status: int, duration: float) -> None:
    """The request's span, made once it is recorded: a request handed from the fast path
    to aiohttp's server is started twice but recorded once, and a span started for the
    first start would never end (the SDK and its processors would count it live)."""
    start = time.time_ns() - int(duration * 1e9)
    span = tracer.start_span("authgate request", kind=_server_kind(), start_time=start)
    decision = record.decision
    span.set_attribute("http.request.method", normal_method(record.method))
    span.set_attribute("http.response.status_code", status)
    span.set_attribute("authgate.request_id", record.request_id)
    if record.path is not None:
        span.set_attribute("url.path", record.path)
    if record.host is not None:
        span.set_attribute("server.address", record.host)
    if record.tenant is not None:
        span.set_attribute("authgate.tenant", record.tenant.id)
    span.set_attribute("authgate.decision", decision.action.name if decision else NONE)
    if decision is not None and decision.rule is not None:
        span.set_attribute("authgate.rule", decision.rule)
    span.end()
