"""The fast path's plan store (gateway/reuse.py): its bounds and its forgetting."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from gateway import reuse
from gateway.answer_bytes import Sent
from gateway.pipeline import always
from gateway.request_log import RequestRecord
from gateway.reuse import Plan, Plans, split_head


def plan(until: float = 10.0, head: bytes = b"h" * 100) -> Plan:
    target: Any = SimpleNamespace(pool=SimpleNamespace(client=object()))
    request: Any = object()
    return Plan(request, (head, b""), None, target, RequestRecord("i", "GET", 0.0), until, always)


def test_a_head_is_split_around_its_one_request_id() -> None:
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: abc\r\nX-B: 1\r\n\r\n"
    before, after = split_head(head, "abc") or (b"", b"")
    assert before + b"xyz" + after == head.replace(b"abc", b"xyz")
    twice = head.replace(b"X-B: 1", b"X-Request-Id: abc")
    assert split_head(twice, "abc") is None
    assert split_head(head, "abd") is None


def test_plans_are_all_forgotten_past_the_count_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reuse, "_PLANS_LIMIT", 3)
    plans = Plans()
    for i in range(3):
        plans.keep(("p", False, b"%d" % i), plan(), plans.generation)
    assert len(plans.by_key) == 3
    plans.keep(("p", False, b"3"), plan(), plans.generation)
    assert list(plans.by_key) == [("p", False, b"3")]


def test_plans_are_all_forgotten_past_the_byte_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reuse, "_BYTES_LIMIT", 1000)
    plans = Plans()
    for i in range(10):
        plans.keep(("p", False, b"k%d" % i), plan(head=b"h" * 200), plans.generation)
        # each is 2 * (3 + 200) bytes: never more than two held at once
        assert len(plans.by_key) <= 2


def test_expired_plans_are_dropped_and_their_bytes_freed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reuse, "_BYTES_LIMIT", 1000)
    plans = Plans()
    plans.keep(("p", False, b"old"), plan(until=1.0, head=b"h" * 200), plans.generation)
    plans.keep(("p", False, b"new"), plan(until=5.0, head=b"h" * 200), plans.generation)
    plans.forget_expired(2.0)
    assert list(plans.by_key) == [("p", False, b"new")]
    # the freed bytes make room: one more fits without forgetting the live one
    plans.keep(("p", False, b"more"), plan(until=5.0, head=b"h" * 200), plans.generation)
    assert len(plans.by_key) == 2


def test_a_decision_made_across_a_clear_is_not_kept() -> None:
    plans = Plans()
    generation = plans.generation  # a request begins deciding …
    plans.keep(("p", False, b"a"), plan(), generation)
    plans.clear()  # … a reload comes …
    assert plans.by_key == {}
    plans.keep(("p", False, b"b"), plan(), generation)  # … and its decision lands
    assert plans.by_key == {}
    plans.keep(("p", False, b"c"), plan(), plans.generation)
    assert list(plans.by_key) == [("p", False, b"c")]


def test_a_key_is_seen_from_its_second_decision_and_not_across_a_clear() -> None:
    plans = Plans()
    key = ("p", False, b"GET / HTTP/1.1")
    assert not plans.seen_before(key, plans.generation)  # the first decision
    assert plans.seen_before(key, plans.generation)  # the second: kept
    generation = plans.generation  # a request begins deciding …
    plans.clear()  # … a reload comes, and forgets what was seen …
    assert not plans.seen_before(key, generation)  # … its decision is neither kept …
    assert not plans.seen_before(key, plans.generation)  # … nor recorded as seen
    assert plans.seen_before(key, plans.generation)


def test_a_plan_replaced_or_discarded_gives_its_bytes_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found by review: bytes of replaced and discarded plans stayed counted, so the
    store forgot everything for no reason every so often."""
    monkeypatch.setattr(reuse, "_BYTES_LIMIT", 1000)
    plans = Plans()
    plans.keep(("p", False, b"b"), plan(head=b"h" * 200), plans.generation)
    for _ in range(10):
        plans.keep(("p", False, b"a"), plan(head=b"h" * 200), plans.generation)
        plans.discard(("p", False, b"c"))  # nothing there: nothing given back
    for _ in range(10):
        plans.discard(("p", False, b"a"))
        plans.keep(("p", False, b"a"), plan(head=b"h" * 200), plans.generation)
    assert set(plans.by_key) == {("p", False, b"a"), ("p", False, b"b")}


def test_remembered_answers_are_small_bounded_and_forgotten_with_the_plans(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reuse, "_ANSWERS_LIMIT", 2)
    plans = Plans()
    ok, missing, other = Sent(200, 1), Sent(404, 2), Sent(200, 3)
    plans.remember_answer(b"u" * (reuse.MAX_REMEMBERED_ANSWER + 1), b"c", ok)
    assert plans.answers == {}
    plans.remember_answer(b"u1", b"c1", ok)
    plans.remember_answer(b"u2", b"c2", missing)
    assert plans.answers == {b"u1": (b"c1", ok), b"u2": (b"c2", missing)}
    plans.remember_answer(b"u3", b"c3", other)
    assert plans.answers == {b"u3": (b"c3", other)}
    plans.clear()
    assert plans.answers == {}
