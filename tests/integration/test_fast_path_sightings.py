"""When the fast path keeps a decision for reuse (gateway/reuse.py): only for bytes that
come a second time from the same peer. A request unlike any before it costs no plan."""

from __future__ import annotations

from typing import Any

from tests.integration.test_fast_path_reuse import (
    Gateway,
    StartGateway,
    ask,
    request,
    start_gateway,
)

__all__ = ["start_gateway"]  # the fixture, used here as in test_fast_path_reuse


async def test_a_decision_is_kept_when_its_bytes_come_a_second_time(
    start_gateway: StartGateway, upstream: Any
) -> None:
    gateway: Gateway = await start_gateway(str(upstream.make_url("")))
    await kept_at_the_second_sighting(gateway, request(b"/members/a", await gateway.session()))


async def kept_at_the_second_sighting(gateway: Gateway, raw: bytes) -> None:
    """`raw` decided once and not kept, decided again and kept, then served on it."""
    plans = gateway.server._fast.plans  # type: ignore[union-attr]
    assert (await ask(gateway.address, raw)).status == 200
    assert not plans.by_key, "decided once: not kept"
    assert (await ask(gateway.address, raw)).status == 200
    assert len(plans.by_key) == 1, "decided a second time: kept"
    assert await gateway.reused() == 0
    for _ in range(3):
        assert (await ask(gateway.address, raw)).status == 200
    assert await gateway.reused() == 3


async def test_the_same_bytes_from_another_peer_are_a_first_sighting(
    start_gateway: StartGateway, upstream: Any
) -> None:
    gateway: Gateway = await start_gateway(str(upstream.make_url("")))
    plans = gateway.server._fast.plans  # type: ignore[union-attr]
    raw = request(b"/public/a")
    assert (await ask(gateway.address, raw)).status == 200
    assert (await ask(gateway.address, raw, source="127.0.0.2")).status == 200
    assert not plans.by_key, "each peer has decided these bytes once"
    assert (await ask(gateway.address, raw, source="127.0.0.2")).status == 200
    assert [key[0] for key in plans.by_key] == ["127.0.0.2"]


async def test_requests_unlike_any_before_them_keep_no_plan(
    start_gateway: StartGateway, upstream: Any
) -> None:
    gateway: Gateway = await start_gateway(str(upstream.make_url("")))
    plans = gateway.server._fast.plans  # type: ignore[union-attr]
    cookie = await gateway.session()
    for number in range(20):
        raw = request(b"/members/a?n=%d" % number, cookie)
        assert (await ask(gateway.address, raw)).status == 200
    assert not plans.by_key
    assert await gateway.reused() == 0


async def test_a_reload_forgets_what_was_seen(start_gateway: StartGateway, upstream: Any) -> None:
    gateway: Gateway = await start_gateway(str(upstream.make_url("")))
    plans = gateway.server._fast.plans  # type: ignore[union-attr]
    raw = request(b"/public/a")
    assert (await ask(gateway.address, raw)).status == 200
    assert gateway.server.reload()
    assert (await ask(gateway.address, raw)).status == 200
    assert not plans.by_key, "seen before the reload only: decided afresh, not kept"
    assert (await ask(gateway.address, raw)).status == 200
    assert len(plans.by_key) == 1


async def test_a_forward_auth_answer_is_kept_when_its_check_comes_a_second_time(
    start_gateway: StartGateway, upstream: Any
) -> None:
    gateway: Gateway = await start_gateway(
        str(upstream.make_url("")), trusted_proxies=("127.0.0.0/8",)
    )
    raw = (
        b"GET /.authgate/verify HTTP/1.1\r\nHost: authgate.internal\r\n"
        b"X-Original-URL: https://app.test/members/a\r\n"
        b"Cookie: authgate_session=" + (await gateway.session()).encode() + b"\r\n\r\n"
    )
    await kept_at_the_second_sighting(gateway, raw)
