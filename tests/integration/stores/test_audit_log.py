"""AuditLog contract, on every SQL backend."""

from __future__ import annotations

from gateway.stores.base import AuditEvent
from gateway.stores.sql import SqlAuditLog


async def test_search_filters_and_returns_newest_first(audit: SqlAuditLog) -> None:
    events = [
        AuditEvent(time=1.0, event="login.failure", tenant="acme", user="alice", ip="192.0.2.1"),
        AuditEvent(time=2.0, event="login.success", tenant="acme", user="alice", outcome="ok"),
        AuditEvent(time=3.0, event="login.success", tenant="acme", user="bob"),
        AuditEvent(time=4.0, event="login.success", tenant="globex", user="alice"),
    ]
    for event in events:
        await audit.append(event)
    assert await audit.search(tenant="acme", user="alice") == [events[1], events[0]]
    assert await audit.search(event="login.success", since=2.5) == [events[3], events[2]]
    assert await audit.search(limit=1) == [events[3]]


async def test_all_fields_round_trip(audit: SqlAuditLog) -> None:
    event = AuditEvent(
        time=5.5,
        event="access.denied",
        tenant="acme",
        user="alice",
        ip="2001:db8::1",
        country="DE",
        user_agent="curl/8",
        session_fp="3f2a9c",
        rule="admin-area",
        outcome="deny",
        details='{"path": "/admin"}',
    )
    await audit.append(event)
    assert await audit.search() == [event]


async def test_prune_drops_old_events(audit: SqlAuditLog) -> None:
    for t in (1.0, 2.0, 3.0):
        await audit.append(AuditEvent(time=t, event="x"))
    assert await audit.prune(before=2.5) == 2
    assert [e.time for e in await audit.search()] == [3.0]
