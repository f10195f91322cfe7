"""Decisions the fast path reuses: the same request bytes from the same peer, moments
after they were decided, are forwarded on that decision without being parsed or
decided again, and the exchange is driven from callbacks, with no task.

Why this is the same answer: everything the pipeline reads of a request is in its
bytes, its peer address and whether it came over TLS, and those are the key. What
else a decision rests on is bounded:

- the identity: a plan is used only while the identity's `still_valid` says yes. For a
  session, that is while its entry in the per-process session cache is the very one
  the decision read: every revocation (of the session, of the user, a resync), every
  change of the user, every touch and every fresh read replaces or drops that entry,
  so a revoked session is refused by the next request, as without plans. API keys and
  a session that owes a second factor are never reused;
- the policy and the tenants: a reload clears every plan (and a decision made across a
  reload is not kept);
- the clock: a plan lives PLAN_SECONDS at most, so a decision that turns on the time
  (a session's end, a sign-in's age) is at most that late. The session's own end is
  exact: the lease ends with it.

What is reused is the upstream request head (with a fresh request id) and what the
access log and metrics say of the decision; the answer is read and written afresh
each time, as on the fast path (small answers from callbacks; anything streamed, an
upstream that closed an idle connection, or no idle connection to send on, through the
fast path's own coroutine).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.answer_bytes import Sent, response_head
from gateway.config.model import RouteConfig, TenantConfig
from gateway.proxy import AnswerHead, UpstreamError, UpstreamTarget, answer_head
from gateway.request_log import RequestRecord
from gateway.upstream_client import UpstreamResponse, _Connection
from policies import Decision

if TYPE_CHECKING:
    from gateway.fast_path import FastConnection, FastRequest, FastServer

log = logging.getLogger("authgate.fast_path")

PLAN_SECONDS = 1.0  # the longest a decision is reused
_PEERS_LIMIT = 4096  # peers with plans, per worker (all forgotten when more come)
_PLANS_PER_PEER = 256  # plans per peer (forgotten when more come)


class Plan:
    """A decision made for some request bytes, ready to be forwarded again."""

    __slots__ = (
        "decision",
        "given_id",
        "head_after",
        "head_before",
        "host",
        "path",
        "request",
        "route",
        "still_valid",
        "target",
        "tenant",
        "until",
    )

    def __init__(
        self,
        request: FastRequest,
        head: tuple[bytes, bytes],
        given_id: str | None,
        target: UpstreamTarget,
        record: RequestRecord,
        until: float,
        still_valid: Callable[[], bool],
    ) -> None:
        self.request = request  # what error pages are negotiated on (same bytes)
        self.head_before, self.head_after = head  # the upstream head, around the id
        self.given_id = given_id  # a trusted proxy's X-Request-Id, else None
        self.target = target
        self.host = record.host
        self.path = record.path
        self.tenant: TenantConfig | None = record.tenant
        self.route: RouteConfig | None = record.route
        self.decision: Decision | None = record.decision
        self.until = until
        self.still_valid = still_valid

    def record(self, request_id: str, started: float) -> RequestRecord:
        """The access log's and the metrics' record of one request served on it."""
        record = RequestRecord(request_id, "GET", started)
        record.host = self.host
        record.path = self.path
        record.tenant = self.tenant
        record.route = self.route
        record.decision = self.decision
        return record


def split_head(head: bytes, request_id: str) -> tuple[bytes, bytes] | None:
    """The upstream head in two, around its one X-Request-Id value; None when that
    header is not there exactly once."""
    marker = b"\r\nX-Request-Id: " + request_id.encode() + b"\r\n"
    if head.count(marker) != 1:
        return None
    before, after = head.split(marker)
    return before + b"\r\nX-Request-Id: ", b"\r\n" + after


class Plans:
    """One worker's plans: (peer address, TLS) → request bytes → plan."""

    def __init__(self) -> None:
        self._by_peer: dict[tuple[str | None, bool], dict[bytes, Plan]] = {}
        self.generation = 0  # moves on at every clear: a decision made across one is not kept

    def for_peer(self, remote: str | None, secure: bool) -> dict[bytes, Plan]:
        book = self._by_peer.get((remote, secure))
        if book is None:
            if len(self._by_peer) >= _PEERS_LIMIT:
                self._forget_peers()
            book = self._by_peer[(remote, secure)] = {}
        return book

    def keep(self, book: dict[bytes, Plan], data: bytes, plan: Plan, generation: int) -> None:
        if generation != self.generation:
            return
        if len(book) >= _PLANS_PER_PEER:
            book.clear()
        book[data] = plan

    def clear(self) -> None:
        """Forget every plan (the policy or the tenants changed)."""
        self.generation += 1
        self._forget_peers()

    def _forget_peers(self) -> None:
        # Connections hold their peer's book: emptied, not only dropped from here.
        for book in self._by_peer.values():
            book.clear()
        self._by_peer.clear()


class ReusedExchange:
    """One request forwarded on a plan over an idle upstream connection, driven by the
    connection's listener and a read timer. The fast connection's `serving` while it
    lasts (`cancel` when the client goes away)."""

    __slots__ = (
        "_answer",
        "_finished",
        "_timer",
        "conn",
        "head",
        "plan",
        "record",
        "sent_at",
        "server",
        "upstream",
    )

    def __init__(
        self,
        server: FastServer,
        conn: FastConnection,
        plan: Plan,
        record: RequestRecord,
        head: bytes,
        upstream: _Connection,
    ) -> None:
        self.server = server
        self.head = head
        self.conn = conn
        self.plan = plan
        self.record = record
        self.upstream: _Connection | None = upstream
        self.sent_at = time.perf_counter()
        self._answer: tuple[UpstreamResponse, AnswerHead] | None = None
        self._finished: asyncio.Future[None] | None = None
        upstream.listener = self.step
        self._timer: asyncio.TimerHandle | None = server.loop.call_later(
            plan.target.read_timeout, self._check_time
        )

    # -- driven by the upstream connection ----------------------------------------

    def step(self) -> None:
        """The answer moved on (or failed): act when there is something to do."""
        try:
            self._step()
        except Exception:
            # After the request went upstream nothing is sent twice: cut, as the fast
            # path does when its answer breaks off.
            log.exception(
                "unhandled error on the fast path", extra={"request_id": self.record.request_id}
            )
            self._detach(close=True)
            self.conn.abort()
            self._end(None)

    def _step(self) -> None:
        upstream = self.upstream
        if upstream is None:
            return
        if upstream.failure is not None:
            answer_begun = self._answer is not None
            again = upstream.closed_before_answering()
            self._detach(close=True)
            if again:
                # Closed while idle: sent again on a fresh connection (a GET does
                # nothing twice), as the full path and the fast path do.
                self._hand_to_task(self.head)
            elif answer_begun:
                self._page(502, "the upstream broke off its answer")
            else:
                self._page(502, "the upstream could not be reached")
            return
        if not upstream.head_done:
            return
        if self._answer is None:
            self.record.upstream_seconds = time.perf_counter() - self.sent_at
            response = UpstreamResponse(upstream, self.plan.target.read_timeout, None)
            try:
                answer = answer_head(response, "GET")
            except UpstreamError as exc:
                self._detach(close=True)
                self._page(exc.status, exc.reason)
                return
            self._answer = (response, answer)
            if not answer.small:
                # Streamed: the fast path's coroutine relays it, with back-pressure.
                self._hand_to_task(response)
                return
        if not upstream.complete:
            return
        response, answer = self._answer
        body = response.take_body()
        self._detach(close=False)
        response.finish()
        self._write(
            response_head(answer.status, answer.reason, answer.headers, len(body)) + body,
            Sent(answer.status, len(body), len(body)),
        )

    def _check_time(self) -> None:
        self._timer = None
        upstream = self.upstream
        if upstream is None:
            return
        limit = self.plan.target.read_timeout
        idle = upstream.idle_for()
        if idle < limit:  # bytes moved meanwhile: the clock restarts from then
            self._timer = self.server.loop.call_later(limit - idle, self._check_time)
            return
        self._detach(close=True)
        self._page(504, "the upstream did not answer in time")

    # -- ending -------------------------------------------------------------------

    def _detach(self, *, close: bool) -> None:
        """Done with the upstream connection: closed (unless pooled by the caller)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        upstream, self.upstream = self.upstream, None
        if upstream is None:
            return
        upstream.listener = None
        if close:
            upstream.close()
            upstream.pool.forget(upstream)

    def _hand_to_task(self, sending: bytes | UpstreamResponse) -> None:
        """The rest is the fast path's coroutine's: the head sent again on a fresh
        connection, or the answer begun on this one relayed as a stream."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.upstream is not None:  # the connection is the response's from now on
            self.upstream.listener = None
            self.upstream = None
        task = self.server.loop.create_task(
            self.server.reused_in_task(self.conn, self.plan, self.record, sending)
        )
        self.conn.serving = task
        self._settle()

    def _page(self, status: int, reason: str) -> None:
        """One of the pipeline's error pages, as the fast path would write it."""
        plan = self.plan
        page = self.server.pipeline.error(
            plan.request, status, plan.tenant, reason, self.record.request_id
        )
        data, sent = self.server.page_bytes(page)
        self._write(data, sent)

    def _write(self, data: bytes, sent: Sent) -> None:
        conn = self.conn
        try:
            conn.write(data)
        except ConnectionResetError:
            conn.abort()
            self._end(None)
            return
        self._end(sent)

    def _end(self, sent: Sent | None) -> None:
        """Recorded (None: cut short, a 499 as the fast path records it), counted, and
        the connection read on (once the client has taken the answer)."""
        server = self.server
        server.pipeline.observer.record(self.record, sent)
        self._settle()
        if sent is None:
            self.conn.serving = None
            return
        server.served.inc()
        server.reused.inc()
        self.conn.answered_once_taken()

    def _settle(self) -> None:
        if self._finished is not None and not self._finished.done():
            self._finished.set_result(None)

    # -- the fast connection's `serving` ------------------------------------------

    def cancel(self) -> None:
        """The client went away: so does its request (499), as on the fast path."""
        if self.upstream is None:
            return  # answered already, or handed to a task (which is cancelled itself)
        self._detach(close=True)
        self._end(None)

    def finished(self) -> asyncio.Future[None]:
        """Done once answered, cut short or handed to a task (for a stop to wait on)."""
        if self._finished is None:
            self._finished = self.server.loop.create_future()
            if self.upstream is None:
                self._finished.set_result(None)
        return self._finished
