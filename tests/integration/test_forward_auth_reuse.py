"""Forward-auth answers the fast path gives again (gateway/reuse.py, `KeptAnswer`):
the same check's bytes from the same trusted proxy, moments after they were decided,
are answered with the answer kept for them (a pass with its identity headers, or the
way to sign in) and a fresh Date, without being parsed or decided again.

What must hold, as for forwarded requests' plans: the answer is the one deciding afresh
would give (but for its Date); nothing the answer rested on can change without the next
check being decided again (a logout, a revocation, a policy reload, another peer, other
bytes, the end of a second); a refusal or any page naming its request id is never kept;
and a check answered again is logged and counted as one decided.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from benchmarks.revocation import logout
from gateway import fast_path
from gateway.fast_path import FastRequest
from tests.integration.test_fast_path import split_answers
from tests.integration.test_fast_path_reuse import (
    POLICY,
    Answer,
    Gateway,
    StartGateway,
    ask,
    keep_at_first_sighting,
    read_answer,
    start_gateway,
)

__all__ = ["keep_at_first_sighting", "start_gateway"]  # the fixtures, used here as there

CHECK = b"GET /.authgate/verify HTTP/1.1\r\nHost: authgate.internal\r\n"


def nginx_check(path: bytes, cookie: str | None = None, *extra: bytes) -> bytes:
    """nginx `auth_request`'s subrequest for https://app.test`path`."""
    lines = [CHECK + b"X-Original-URL: https://app.test" + path]
    if cookie is not None:
        lines.append(b"Cookie: authgate_session=" + cookie.encode())
    lines.extend(extra)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def traefik_check(path: bytes, *extra: bytes) -> bytes:
    """Traefik's forwardAuth request for a browser at https://app.test`path`."""
    lines = [
        CHECK + b"X-Forwarded-Proto: https",
        b"X-Forwarded-Host: app.test",
        b"X-Forwarded-Uri: " + path,
        b"Accept: text/html",
        *extra,
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n"


@pytest.fixture
async def gateway(start_gateway: StartGateway, upstream: Any) -> Gateway:
    return await start_gateway(str(upstream.make_url("")), trusted_proxies=("127.0.0.0/8",))


async def asked(
    gateway: Gateway, raw: bytes, times: int, source: str = "127.0.0.1"
) -> list[Answer]:
    return [await ask(gateway.address, raw, source) for _ in range(times)]


def date_of(answer: Answer) -> bytes | None:
    return answer.header(b"Date")


async def test_the_same_check_again_gets_the_answer_kept_for_it(gateway: Gateway) -> None:
    raw = nginx_check(b"/members/a?q=1", await gateway.session())
    first = await ask(gateway.address, raw)
    assert first.status == 200
    assert first.header(b"Remote-User") == b"alice"
    before = await gateway.reused()
    again = await asked(gateway, raw, 5)
    assert await gateway.reused() - before == 5
    for answer in again:
        # Byte for byte the decided answer, but for the Date (which split_answers drops).
        assert split_answers(answer.raw) == split_answers(first.raw)
        assert date_of(answer) is not None


async def test_the_way_to_sign_in_is_kept_for_a_browser_not_signed_in(gateway: Gateway) -> None:
    raw = traefik_check(b"/members/page?a=1")
    first = await ask(gateway.address, raw)
    assert first.status == 302
    assert first.header(b"Location") == (
        b"https://app.test/.authgate/login?rd=https%3A%2F%2Fapp.test%2Fmembers%2Fpage%3Fa%3D1"
    )
    before = await gateway.reused()
    for answer in await asked(gateway, raw, 3):
        assert split_answers(answer.raw) == split_answers(first.raw)
    assert await gateway.reused() - before == 3


async def test_the_date_of_an_answer_given_again_is_the_current_one(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fast_path, "PLAN_SECONDS", 30.0)
    raw = nginx_check(b"/public/a")
    first = await ask(gateway.address, raw)
    before = await gateway.reused()
    await asyncio.sleep(1.1)  # the next second, at least
    later = await ask(gateway.address, raw)
    assert await gateway.reused() == before + 1, "premise: given again"
    assert (first.status, later.status) == (200, 200)
    assert date_of(later) != date_of(first)


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("not signed in, nginx: a 401 naming its request id", nginx_check(b"/members/a")),
        (
            "an API client not signed in, Traefik: a 401",
            traefik_check(b"/members/a").replace(b"text/html", b"application/json"),
        ),
        ("an unknown host: a 403", CHECK + b"X-Original-URL: https://else.test/\r\n\r\n"),
        ("a bad check: a 400", CHECK + b"X-Original-URL: /relative\r\n\r\n"),
    ],
)
async def test_a_refusal_is_never_kept(gateway: Gateway, name: str, raw: bytes) -> None:
    answers = await asked(gateway, raw, 3)
    assert {answer.status for answer in answers} <= {400, 401, 403}
    assert await gateway.reused() == 0
    assert len({answer.body for answer in answers}) == 3, "each names its own request id"


async def test_a_session_denied_by_policy_is_never_kept(gateway: Gateway) -> None:
    """alice is not staff."""
    raw = nginx_check(b"/staff/x", await gateway.session())
    assert {a.status for a in await asked(gateway, raw, 3)} == {403}
    assert await gateway.reused() == 0


async def test_an_answer_naming_its_request_id_is_never_kept(gateway: Gateway) -> None:
    """A trusted proxy's X-Request-Id is the check's id: here it is alice's name, which
    her pass names. (Ids the gateway makes are never in a pass; the rule guards a page
    that would name one.)"""
    cookie = await gateway.session()
    raw = nginx_check(b"/members/a", cookie, b"X-Request-Id: alice")
    assert {a.status for a in await asked(gateway, raw, 3)} == {200}
    assert await gateway.reused() == 0
    other = nginx_check(b"/members/a", cookie, b"X-Request-Id: check-7")
    assert {a.status for a in await asked(gateway, other, 3)} == {200}
    assert await gateway.reused() == 2, "premise: a check with its proxy's id is kept"


async def test_a_logout_refuses_the_next_check_at_once(gateway: Gateway) -> None:
    cookie = await gateway.session()
    raw = nginx_check(b"/members/a", cookie)
    assert {a.status for a in await asked(gateway, raw, 3)} == {200}
    assert await gateway.reused() == 2
    async with aiohttp.ClientSession() as client:
        await logout(client, gateway.base, cookie)
    assert (await ask(gateway.address, raw)).status == 401


async def test_a_revocation_in_the_store_refuses_the_next_check_at_once(
    gateway: Gateway,
) -> None:
    raw = nginx_check(b"/members/a", await gateway.session())
    assert {a.status for a in await asked(gateway, raw, 3)} == {200}
    runtime: Any = gateway.server.runtime
    await runtime.sessions.revoke_user(gateway.user.tenant, gateway.user.id)
    assert (await ask(gateway.address, raw)).status == 401


async def test_a_policy_reload_applies_to_the_next_check(gateway: Gateway) -> None:
    raw = nginx_check(b"/public/page")
    assert {a.status for a in await asked(gateway, raw, 3)} == {200}
    assert await gateway.reused() == 2
    gateway.policy.write_text(POLICY.replace("action: bypass", "action: deny"))
    assert gateway.server.reload()
    assert (await ask(gateway.address, raw)).status == 403


async def test_another_proxy_is_decided_afresh(gateway: Gateway) -> None:
    raw = nginx_check(b"/public/page")
    assert {a.status for a in await asked(gateway, raw, 2)} == {200}
    before = await gateway.reused()
    assert (await ask(gateway.address, raw, source="127.0.0.2")).status == 200
    assert await gateway.reused() == before
    assert (await ask(gateway.address, raw, source="127.0.0.2")).status == 200
    assert await gateway.reused() == before + 1


async def test_other_bytes_are_decided_afresh(gateway: Gateway) -> None:
    """Another page, or another client address the proxy names: each decided once,
    never answered with the other's pass."""
    cookie = await gateway.session()
    assert {a.status for a in await asked(gateway, nginx_check(b"/members/a", cookie), 2)} == {200}
    before = await gateway.reused()
    staff = await ask(gateway.address, nginx_check(b"/staff/a", cookie))
    assert staff.status == 403
    forwarded = nginx_check(b"/members/a", cookie, b"X-Forwarded-For: 203.0.113.9")
    assert (await ask(gateway.address, forwarded)).status == 200
    assert await gateway.reused() == before


async def test_a_kept_answer_lives_its_time_at_most(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fast_path, "PLAN_SECONDS", 0.3)
    raw = nginx_check(b"/public/a")
    assert {a.status for a in await asked(gateway, raw, 2)} == {200}
    assert await gateway.reused() == 1, "premise: kept"
    await asyncio.sleep(0.4)
    assert (await ask(gateway.address, raw)).status == 200
    assert await gateway.reused() == 1, "past its time: decided afresh"
    assert (await ask(gateway.address, raw)).status == 200
    assert await gateway.reused() == 2, "and kept again"


async def test_a_big_check_is_decided_every_time(gateway: Gateway) -> None:
    raw = nginx_check(b"/public/a", None, b"X-Big-1: " + b"b" * 4500, b"X-Big-2: " + b"b" * 4500)
    assert {a.status for a in await asked(gateway, raw, 3)} == {200}
    assert await gateway.reused() == 0


async def test_an_unknown_session_is_sent_to_sign_in_afresh_every_time(gateway: Gateway) -> None:
    """A cookie that names no session rests on no lease: its way to sign in is never kept
    (the session may exist a moment later, in another worker's store read)."""
    raw = traefik_check(b"/members/a", b"Cookie: authgate_session=" + b"x" * 43)
    assert {a.status for a in await asked(gateway, raw, 3)} == {302}
    assert await gateway.reused() == 0


async def test_without_a_session_cache_a_pass_is_never_kept(
    start_gateway: StartGateway, upstream: Any
) -> None:
    gateway = await start_gateway(
        str(upstream.make_url("")), cache_ttl=0.0, trusted_proxies=("127.0.0.0/8",)
    )
    raw = nginx_check(b"/members/a", await gateway.session())
    assert {a.status for a in await asked(gateway, raw, 3)} == {200}
    assert await gateway.reused() == 0
    nobody = traefik_check(b"/members/a")  # no credential: nothing to rest on, kept
    assert {a.status for a in await asked(gateway, nobody, 3)} == {302}
    assert await gateway.reused() == 2


def fast_request(raw: bytes, remote: str = "127.0.0.1") -> FastRequest:
    """`raw` as the fast path hands it to the pipeline."""
    head = raw.decode().split("\r\n")
    fields = [tuple(line.split(": ", 1)) for line in head[1:] if line]
    target = head[0].split(" ")[1]
    return FastRequest("GET", target, CIMultiDictProxy(CIMultiDict(fields)), remote, False)


async def test_a_refusal_rests_on_nothing(gateway: Gateway) -> None:
    """What `_keep` is offered: a refusal is never offered for keeping, whether or not
    its page names its request id (which alone would keep it out)."""
    pipeline = gateway.server._fast.pipeline  # type: ignore[union-attr]
    cookie = await gateway.session()
    refused = {
        "not signed in, nginx (401)": (nginx_check(b"/members/a"), True),
        "an API client (401)": (
            traefik_check(b"/members/a").replace(b"text/html", b"application/json"),
            True,
        ),
        "denied by policy (403)": (nginx_check(b"/staff/a", cookie), True),
        "an unknown host (403)": (CHECK + b"X-Original-URL: https://else.test/\r\n\r\n", True),
        "not a trusted proxy (403)": (nginx_check(b"/members/a", cookie), False),
    }
    for name, (raw, trusted) in refused.items():
        page, reusable = await pipeline._forward_auth(
            fast_request(raw), peer_trusted=trusted, ip=None, request_id="r"
        )
        assert page.status in (401, 403), name
        assert reusable is None, name
    for raw in (nginx_check(b"/members/a", cookie), traefik_check(b"/members/a")):
        page, reusable = await pipeline._forward_auth(
            fast_request(raw), peer_trusted=True, ip=None, request_id="r"
        )
        assert page.status in (200, 302)
        assert reusable is not None and reusable()


async def test_a_check_given_again_is_logged_and_counted_as_one_decided(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    raw = nginx_check(b"/members/a", await gateway.session())
    with caplog.at_level(logging.INFO, logger="authgate.access"):
        await asked(gateway, raw, 3)
    lines = [r for r in caplog.records if r.name == "authgate.access" and "verify" in r.path]
    assert len(lines) == 3
    fields = ("tenant", "host", "method", "path", "status", "decision", "rule", "bytes")
    decided, *again = [{name: getattr(r, name) for name in fields} for r in lines]
    assert decided["decision"] == "ALLOW" and decided["tenant"] == "acme"
    assert again == [decided, decided]
    assert len({r.request_id for r in lines}) == 3
    assert await gateway.reused() == 2


async def test_checks_on_one_kept_alive_connection_are_given_again_in_turn(
    gateway: Gateway,
) -> None:
    """As nginx sends them (its upstream keepalive): each answered whole, then the
    connection read on for the next."""
    cookie = await gateway.session()
    passes, signs_in = nginx_check(b"/members/a", cookie), traefik_check(b"/members/b")
    host, port = gateway.address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        statuses = []
        for raw in [passes, signs_in] * 4:
            writer.write(raw)
            statuses.append((await read_answer(reader)).status)
    finally:
        writer.close()
    assert statuses == [200, 302] * 4
    assert await gateway.reused() == 6
