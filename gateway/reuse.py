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
  (a session's end, a sign-in's age) is at most that late. The session's own end and
  its idle limit are exact: the lease ends with them, on the session's clock.

Which decisions are kept: only those whose bytes come a second time (from the same peer,
since the record of sightings was last cleared: when full, at a reload, when the tenants
change). A request unlike any before it, much of real traffic, costs no plan that nobody
would use: keeping one for every such request cost about 11 % of its CPU: two thirds for
holding thousands of short-lived plans (the garbage collector walks them; a full table
is dropped at once), a third for building them. So the same bytes are decided twice,
then reused.

What is reused is the upstream request head (with a fresh request id) and what the
access log and metrics say of the decision; the answer is read and written afresh
each time, as on the fast path (small answers from callbacks; anything streamed, an
upstream that closed an idle connection, or no idle connection to send on, through the
fast path's own coroutine).

A forward-auth check's answer is kept the same way (`KeptAnswer`): its bytes, from the
same proxy, under the same bounds, are given the same answer again with the current
Date (`GivenAgain`). Only a pass and the way to sign in are kept, and never an answer
that names its request id: both are made of the check's bytes and its identity alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.answer_bytes import RelayedHead, Sent, cut_by_error, relayed_head
from gateway.config.model import RouteConfig, TenantConfig
from gateway.proxy import UpstreamError, UpstreamTarget
from gateway.request_log import RequestRecord
from gateway.upstream_client import ONE_READ_KEPT, UpstreamResponse, _Connection
from policies import Decision

if TYPE_CHECKING:
    from gateway.fast_path import FastConnection, FastRequest, FastServer

log = logging.getLogger("authgate.fast_path")

PLAN_SECONDS = 1.0  # the longest a decision is reused
# Per worker, plans are all forgotten when there would be more than this many, or when
# they would hold more than this many bytes of requests and heads (a request head may
# be 64 KB: a count alone bounds little).
_PLANS_LIMIT = 4096
_BYTES_LIMIT = 16 * 1024 * 1024
MAX_PLANNED = 8192  # bytes of a request that is planned; bigger ones are decided each time
# Upstream answers relayed on reused decisions, remembered by their bytes: at most this
# many, each no bigger than the connection keeps one whole (so ~2 MB a worker at most,
# both copies counted).
_ANSWERS_LIMIT = 256
# Keys decided once (by their hash): a plan is made when the same key is decided again.
# All forgotten when there would be more than this many (ints: no work for the GC).
_SEEN_LIMIT = 4096
MAX_REMEMBERED_ANSWER = ONE_READ_KEPT

# (peer address, TLS, the request's bytes)
PlanKey = tuple[str | None, bool, bytes]


class Decided:
    """A decision made for some request bytes, and what the access log and metrics read
    of it: the same bytes from the same peer are served on it while `still_valid` says
    yes, until `until`."""

    __slots__ = ("decision", "given_id", "host", "path", "route", "still_valid", "tenant", "until")

    def __init__(
        self,
        given_id: str | None,
        record: RequestRecord,
        until: float,
        still_valid: Callable[[], bool],
    ) -> None:
        self.given_id = given_id  # a trusted proxy's X-Request-Id, else None
        self.host = record.host
        self.path = record.path
        self.tenant: TenantConfig | None = record.tenant
        self.route: RouteConfig | None = record.route
        self.decision: Decision | None = record.decision
        self.until = until
        self.still_valid = still_valid

    def record(self, request_id: str, started: float) -> RequestRecord:
        """The access log's and the metrics' record of one request served on it."""
        return RequestRecord(
            request_id, "GET", started, self.host, self.path, self.tenant, self.route, self.decision
        )

    def size(self) -> int:
        """Bytes it holds, roughly (twice over: what it keeps, and what that was made of)."""
        raise NotImplementedError


class Plan(Decided):
    """An allowed request's decision, ready to be forwarded again."""

    __slots__ = ("head_after", "head_before", "request", "target", "upstreams")

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
        super().__init__(given_id, record, until, still_valid)
        self.request = request  # what error pages are negotiated on (same bytes)
        self.head_before, self.head_after = head  # the upstream head, around the id
        self.target = target
        # The worker's upstream client, looked up once (its pool keeps the one it made).
        self.upstreams = target.pool.client

    def size(self) -> int:
        # The head, and the parsed request the plan keeps for error pages.
        return 2 * (len(self.head_before) + len(self.head_after))


class KeptAnswer(Decided):
    """A forward-auth check's answer (a pass, or the way to sign in), given again as it
    was but for its Date. Never one that names its request id (the pipeline's error
    pages do): the caller checks."""

    __slots__ = ("body", "head")

    def __init__(
        self,
        head: RelayedHead,
        body: bytes,
        given_id: str | None,
        record: RequestRecord,
        until: float,
        still_valid: Callable[[], bool],
    ) -> None:
        super().__init__(given_id, record, until, still_valid)
        self.head = head
        self.body = body

    def size(self) -> int:
        return 2 * (len(self.head.lines) + len(self.body))


def split_head(head: bytes, request_id: str) -> tuple[bytes, bytes] | None:
    """The upstream head in two, around its one X-Request-Id value; None unless that
    header is there once and the id nowhere else."""
    marker = b"\r\nX-Request-Id: " + request_id.encode() + b"\r\n"
    if head.count(marker) != 1 or head.count(request_id.encode()) != 1:
        return None
    before, after = head.split(marker)
    return before + b"\r\nX-Request-Id: ", b"\r\n" + after


class Plans:
    """One worker's plans, by (peer address, TLS, request bytes)."""

    def __init__(self) -> None:
        self.by_key: dict[PlanKey, Decided] = {}
        self.generation = 0  # moves on at every clear: a decision made across one is not kept
        self._bytes = 0  # held by the plans, roughly: keys and heads, twice over
        # The client's bytes for an upstream answer's bytes, with what the access log and
        # metrics read of it (one Sent for every time it is relayed: it is never changed).
        self.answers: dict[bytes, tuple[bytes, Sent]] = {}
        self._seen: set[int] = set()  # hashes of keys decided since the last clear

    def seen_before(self, key: PlanKey, generation: int) -> bool:
        """Whether `key` was decided before (since the record was last cleared); it is
        recorded now either way, unless it was decided across a clear (`generation`):
        then it is neither kept nor seen. Two keys with one hash only make a plan
        early: a plan is still found by its whole key."""
        if generation != self.generation:
            return False
        mark = hash(key)
        if mark in self._seen:
            return True
        if len(self._seen) >= _SEEN_LIMIT:
            self._seen.clear()
        self._seen.add(mark)
        return False

    def remember_answer(self, upstream: bytes, client: bytes, sent: Sent) -> None:
        """`client` is what an upstream answer of exactly these bytes becomes: the same
        bytes again are relayed as that, without reading them again. Only for answers
        the rewrite turns into the same bytes whenever it runs: ones that bring their own
        Date (the caller checks), whole in one read, small."""
        if len(upstream) > MAX_REMEMBERED_ANSWER:
            return
        if len(self.answers) >= _ANSWERS_LIMIT:
            self.answers.clear()
        self.answers[upstream] = (client, sent)

    def keep(self, key: PlanKey, plan: Decided, generation: int) -> None:
        if generation != self.generation:
            return
        self.discard(key)  # (two connections deciding the same bytes at once)
        size = _size(key, plan)
        if len(self.by_key) >= _PLANS_LIMIT or self._bytes + size > _BYTES_LIMIT:
            self.by_key.clear()
            self._bytes = 0
        self._bytes += size
        self.by_key[key] = plan

    def discard(self, key: PlanKey) -> None:
        plan = self.by_key.pop(key, None)
        if plan is not None:
            self._bytes -= _size(key, plan)

    def forget_expired(self, now: float) -> None:
        """Drop plans past their time (else only the same bytes coming again would)."""
        for key in [key for key, plan in self.by_key.items() if plan.until <= now]:
            self.discard(key)

    def clear(self) -> None:
        """Forget every plan (the policy or the tenants changed)."""
        self.generation += 1
        self.by_key.clear()
        self._bytes = 0
        self.answers.clear()
        self._seen.clear()


def _size(key: PlanKey, decided: Decided) -> int:
    return 2 * len(key[2]) + decided.size()


class ServedAgain:
    """A request served on a decision made before: the fast connection's `serving`
    while it lasts. Written, it is recorded and counted once the client has taken it
    (`taken`); `cancel` when the client goes away; `finished` for a stop."""

    __slots__ = ("_ended", "_finished", "_sent", "_settled", "conn", "record", "server")

    def __init__(self, server: FastServer, conn: FastConnection, record: RequestRecord) -> None:
        self.server = server
        self.conn = conn
        self.record = record
        self._finished: asyncio.Future[None] | None = None
        self._ended = False  # written or cut short (or handed to a task, which records it)
        self._sent: Sent | None = None  # written, not yet taken by the client
        self._settled = False  # nothing left for a stop to wait for

    def check_time(self) -> None:
        """Called every second by the fast server's sweep (nothing to time by default)."""

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
        """Cut short (None: the client went away, recorded as a 499; or `cut`: recorded
        as it says), or written: recorded and counted once the client has taken it
        (`taken`), and the connection read on."""
        self._ended = True
        conn = self.conn
        if sent is None or sent.cut:
            self.server.pipeline.observer.record(self.record, sent)
            conn.serving = None
            self.settle()
            return
        self._sent = sent
        try:
            conn.answered_once_taken()
        except Exception:
            # Reading on (the bytes sent meanwhile) failed: that is no longer this
            # request's to record; the connection is cut.
            log.exception("unhandled error reading on after a reused decision")
            conn.serving = None
            conn.abort()
            self.settle()

    def taken(self) -> None:
        """The client has taken the answer (the fast connection reads on): recorded
        and counted as the fast path records an answer it drained."""
        sent, self._sent = self._sent, None
        if sent is not None:
            server = self.server
            server.pipeline.observer.record(self.record, sent)
            server.served.count += 1
            server.reused.count += 1
        self.settle()

    def settle(self) -> None:
        """Nothing left to wait for: answered and taken, cut short, or its task done."""
        self._settled = True
        if self._finished is not None and not self._finished.done():
            self._finished.set_result(None)

    def cancel(self) -> None:
        """The client went away: so does its request (499), as on the fast path."""
        if self._ended:
            # Written but not taken (cut short: a 499, as on the fast path), or handed
            # to a task (which is cancelled itself and settles this when done).
            if self._sent is not None:
                self._sent = None
                if self.conn.serving is self:
                    self.conn.serving = None
                self.server.pipeline.observer.record(self.record, None)
                self.settle()
            return
        self._stop()
        self._end(None)

    def _stop(self) -> None:
        """Stop what is still under way (the client went away before its answer)."""

    def finished(self) -> asyncio.Future[None]:
        """Done once answered and taken, cut short, or its task done (for a stop)."""
        if self._finished is None:
            self._finished = self.server.loop.create_future()
            if self._settled:
                self._finished.set_result(None)
        return self._finished


class GivenAgain(ServedAgain):
    """A forward-auth check answered with the answer kept for its bytes: written at once."""

    __slots__ = ()

    def give(self, kept: KeptAnswer) -> None:
        self._write(*kept.head.whole(kept.body))  # (this second's Date)


class ReusedExchange(ServedAgain):
    """One request forwarded on a plan over an idle upstream connection, driven by the
    connection's listener and a read timer."""

    __slots__ = ("_answer", "head", "plan", "sent_at", "upstream")

    def __init__(
        self,
        server: FastServer,
        conn: FastConnection,
        plan: Plan,
        record: RequestRecord,
        head: bytes,
        upstream: _Connection,
    ) -> None:
        super().__init__(server, conn, record)
        self.head = head
        self.plan = plan
        self.upstream: _Connection | None = upstream
        self.sent_at = time.perf_counter()
        self._answer: tuple[UpstreamResponse, RelayedHead] | None = None
        upstream.listener = self.step
        upstream.known_answers = server.plans.answers
        # No timer of its own (one per request cost ~5 % of a reused request's CPU):
        # the fast server's sweep calls check_time every second.

    # -- driven by the upstream connection ----------------------------------------

    def step(self) -> None:
        """The answer moved on (or failed): act when there is something to do. (One
        method, not a guard around another: it runs on every reused request.)"""
        try:
            upstream = self.upstream
            if upstream is None:
                return
            if upstream.head_done and self._answer is None:
                self.record.upstream_seconds = time.perf_counter() - self.sent_at
                if upstream.one_read is not None:
                    known = self.server.plans.answers.get(upstream.one_read)
                    if known is not None:
                        # Its very bytes were relayed before: the same client bytes, as
                        # the rewrite (relayed_head) made them then and would make them
                        # now. Never fed to llhttp, it holds no body chunks: it was read
                        # to its end.
                        self._detach(close=False)
                        upstream.release()
                        self._write(*known)
                        return
                response = UpstreamResponse(upstream, self.plan.target.read_timeout, None)
                try:
                    answer = relayed_head(response, "GET")
                except UpstreamError as exc:
                    self._detach(close=True)
                    self._page(exc.status, exc.reason)
                    return
                self._answer = (response, answer)
                if not answer.small:
                    # Streamed: the fast path's coroutine relays it, with back-pressure.
                    self._hand_to_task(response)
                    return
            if self._answer is not None and upstream.complete:
                self._relay_whole(upstream, *self._answer)
            elif upstream.failure is not None:
                self._failed(upstream)
        except Exception:
            self._broke()

    def _broke(self) -> None:
        # After the request went upstream nothing is sent twice: cut, as the fast path
        # does when its answer breaks off (recorded once).
        log.exception(
            "unhandled error on the fast path", extra={"request_id": self.record.request_id}
        )
        try:
            self._detach(close=True)
            self.conn.abort()
            if not self._ended:
                self._end(cut_by_error())
        except Exception:  # (recording it failed too: the connection is cut anyway)
            log.exception("unhandled error cutting a reused exchange")
            self._ended = True
            self.settle()

    def _relay_whole(
        self, upstream: _Connection, response: UpstreamResponse, answer: RelayedHead
    ) -> None:
        """A small answer, read whole: rewritten and relayed, and remembered when the
        connection stays open."""
        # Whole, even if the upstream then sent bytes out of turn (the connection is
        # closed, not pooled, as on the fast path).
        # (The head was checked when it was read: relayed_head.)
        data, sent = answer.whole(response.take_body())
        # Remembered only when the connection stays open: a known answer is then taken
        # without parsing (upstream_client), as the keep-alive answer it was.
        whole = upstream.one_read if upstream.keep_alive else None
        self._detach(close=False)
        response.finish()
        if whole is not None and answer.dated:
            self.server.plans.remember_answer(whole, data, sent)
        self._write(data, sent)

    def _failed(self, upstream: _Connection) -> None:
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

    def check_time(self) -> None:
        """Called every second: a 504 once the upstream has sent nothing for the read
        timeout (so up to a second later than it, the granularity of the sweep)."""
        try:
            self._time_out()
        except Exception:
            self._broke()

    def _time_out(self) -> None:
        upstream = self.upstream
        if upstream is None or upstream.idle_for() < self.plan.target.read_timeout:
            return
        self._detach(close=True)
        self._page(504, "the upstream did not answer in time")

    # -- ending -------------------------------------------------------------------

    def _detach(self, *, close: bool) -> None:
        """Done with the upstream connection: closed, or left to the caller (to pool,
        or to a task that reads the rest of the answer)."""
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
        self._detach(close=False)  # the connection, if any, is the response's from now on
        task = self.server.loop.create_task(
            self.server.reused_in_task(self.conn, self.plan, self.record, sending)
        )
        self._ended = True  # the task records it
        self.conn.serving = task
        task.add_done_callback(lambda _: self.settle())

    def _page(self, status: int, reason: str) -> None:
        """One of the pipeline's error pages, as the fast path would write it."""
        plan = self.plan
        page = self.server.pipeline.error(
            plan.request, status, plan.tenant, reason, self.record.request_id
        )
        data, sent = self.server.page_bytes(page)
        self._write(data, sent)

    # -- the fast connection's `serving` ------------------------------------------

    def _stop(self) -> None:
        self._detach(close=True)
