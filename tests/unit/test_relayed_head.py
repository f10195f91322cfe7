"""The fast path's one-pass rewrite of an upstream's answer head (`relayed_head`)
writes, refuses and frames exactly what the text way does (`answer_head`, which the
full server's path uses, then `response_head`, which writes our own pages)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from gateway import answer_bytes
from gateway.answer_bytes import relayed_head, response_head
from gateway.proxy import UpstreamError, answer_head
from gateway.upstream_client import UpstreamResponse


@dataclass
class _Answered:
    """What an upstream connection holds once an answer's head has been read."""

    status: int
    reason: bytes
    raw_headers: list[tuple[bytes, bytes]] = field(default_factory=list)


def _response(status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> UpstreamResponse:
    return UpstreamResponse(_Answered(status, reason, headers), 1.0, None)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _one_date(monkeypatch: pytest.MonkeyPatch) -> None:
    # Both ways write the current second when the upstream sent no Date: held still,
    # so that a second turning between them is not a difference.
    monkeypatch.setattr(answer_bytes, "rfc822_formatted_time", lambda: "Sun, 06 Dec 2026")


def _text_way(
    response: UpstreamResponse, method: str, length: int | None
) -> tuple[bytes, int | None, bool, bool] | int:
    try:
        answer = answer_head(response, method)
        head = response_head(answer.status, answer.reason, answer.headers, length)
    except UpstreamError as exc:
        return exc.status
    return head, answer.length, answer.no_body, answer.small


def _one_pass(
    response: UpstreamResponse, method: str, length: int | None
) -> tuple[bytes, int | None, bool, bool] | int:
    try:
        answer = relayed_head(response, method)
    except UpstreamError as exc:
        return exc.status
    return answer.head(length), answer.length, answer.no_body, answer.small


NGINX = [
    (b"Server", b"nginx/1.22.1"),
    (b"Date", b"Sun, 06 Dec 2026 03:50:00 GMT"),
    (b"Content-Type", b"text/plain"),
    (b"Content-Length", b"2"),
    (b"Connection", b"keep-alive"),
]

CASES: dict[str, tuple[int, bytes, list[tuple[bytes, bytes]]]] = {
    "nginx's": (200, b"OK", NGINX),
    "no Date, Server nor type": (200, b"OK", [(b"Content-Length", b"5")]),
    "no headers at all": (200, b"", []),
    "names in any case": (
        200,
        b"OK",
        [(b"content-type", b"a/b"), (b"DATE", b"d"), (b"sErVeR", b"s"), (b"x-a", b"1")],
    ),
    "chunked, with a length too": (
        200,
        b"OK",
        [(b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"9"), (b"Date", b"d")],
    ),
    "two lengths": (200, b"OK", [(b"Content-Length", b"3"), (b"Content-Length", b"7")]),
    "a length that is not a number": (200, b"OK", [(b"Content-Length", b"1e3")]),
    "every hop-by-hop header": (
        200,
        b"OK",
        [
            (name, b"x")
            for name in (
                b"Connection",
                b"Proxy-Connection",
                b"Keep-Alive",
                b"TE",
                b"Trailer",
                b"Upgrade",
                b"Proxy-Authenticate",
                b"Proxy-Authorization",
            )
        ]
        + [(b"X-Kept", b"yes")],
    ),
    "Connection naming a header": (
        200,
        b"OK",
        [(b"Connection", b"keep-alive, X-Secret"), (b"X-Secret", b"s"), (b"Date", b"d")],
    ),
    "Connection naming the type": (
        200,
        b"OK",
        [(b"Connection", b"Content-Type"), (b"Content-Type", b"t"), (b"Content-Length", b"4")],
    ),
    "Connection twice": (
        200,
        b"OK",
        [(b"Connection", b"keep-alive"), (b"Connection", b"x-b"), (b"X-B", b"1")],
    ),
    "Connection: close, and a header named Close": (
        200,
        b"OK",
        [(b"Connection", b"close"), (b"Close", b"1"), (b"Date", b"d")],
    ),
    "UTF-8 beyond ASCII": (200, b"OK", [(b"X-Name", "Zoë ☃".encode()), (b"Date", b"d")]),
    "a value that is not UTF-8": (200, b"OK", [(b"X-Name", b"\xff\xfe"), (b"X-B", b"b")]),
    "a protective value that is not UTF-8": (
        200,
        b"OK",
        [(b"Content-Security-Policy", b"default-src \xff")],
    ),
    "a control character in a value": (200, b"OK", [(b"X-A", b"a\x01b")]),
    "a bare LF in a value": (200, b"OK", [(b"X-A", b"a\nb")]),
    "a CR in a name": (200, b"OK", [(b"X\rA", b"a")]),
    "a tab in a value": (200, b"OK", [(b"X-A", b"a\tb")]),
    "DEL in a value": (200, b"OK", [(b"X-A", b"a\x7fb")]),
    "a reason of its own": (200, b"Fine Thanks", [(b"Content-Length", b"0")]),
    "a reason that is not printable": (200, b"O\x01K", [(b"Content-Length", b"0")]),
    "204": (204, b"No Content", [(b"Content-Length", b"0"), (b"Date", b"d")]),
    "304 with a length": (304, b"Not Modified", [(b"Content-Length", b"12"), (b"ETag", b"e")]),
    "an unknown status": (599, b"", [(b"Content-Length", b"1")]),
    "103": (103, b"Early Hints", [(b"Link", b"</a.css>; rel=preload")]),
}


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("length", [None, 0, 2, 70000])
@pytest.mark.parametrize("case", list(CASES))
def test_one_pass_writes_what_the_text_way_writes(
    case: str, method: str, length: int | None
) -> None:
    status, reason, headers = CASES[case]
    response = _response(status, reason, headers)
    assert _one_pass(response, method, length) == _text_way(response, method, length)


def test_nginxs_answer_is_rewritten_as_aiohttp_writes_it() -> None:
    head = relayed_head(_response(200, b"OK", NGINX), "GET").head(2)
    assert head == (
        b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 06 Dec 2026 03:50:00 GMT\r\n"
        b"Content-Type: text/plain\r\nContent-Length: 2\r\n\r\n"
    )


def test_a_control_character_is_a_502_before_any_body_is_read() -> None:
    with pytest.raises(UpstreamError) as refused:
        relayed_head(_response(200, b"OK", [(b"X-A", b"a\x00b")]), "GET")
    assert refused.value.status == 502


NAMES = [
    b"Content-Type",
    b"content-length",
    b"Transfer-Encoding",
    b"Date",
    b"Server",
    b"Connection",
    b"Keep-Alive",
    b"X-Secret",
    b"x-secret",
    b"Set-Cookie",
    b"Strict-Transport-Security",
    b"Close",
    b"ETag",
]
VALUES = [
    b"",
    b"1",
    b"42",
    b"keep-alive",
    b"close",
    b"keep-alive, x-secret",
    b"Content-Type",
    b"chunked",
    b"a=b; Path=/",
    "Zoë".encode(),
    b"\xc3",
    b"\xff",
    b"a\x02b",
    b"a\rb",
    b"a\tb",
]


def test_random_heads_are_written_alike() -> None:
    chooser = random.Random(20261206)
    for _ in range(3000):
        headers = [
            (chooser.choice(NAMES), chooser.choice(VALUES)) for _ in range(chooser.randint(0, 7))
        ]
        status = chooser.choice([200, 200, 201, 204, 304, 404, 500])
        reason = chooser.choice([b"OK", b"", b"Whatever", b"X\x7f"])
        method = chooser.choice(["GET", "GET", "HEAD"])
        length = chooser.choice([None, 0, 5])
        response = _response(status, reason, headers)
        assert _one_pass(response, method, length) == _text_way(response, method, length), (
            status,
            reason,
            headers,
            method,
            length,
        )


def test_a_long_connection_value_is_read_but_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    kept: dict[bytes, bool] = {}
    monkeypatch.setattr(answer_bytes, "_NAMES_MORE", kept)
    long_value = b"keep-alive, " + b"x" * answer_bytes._NAMES_MORE_KEPT_BYTES
    headers = [(b"Connection", long_value), (b"X" * answer_bytes._NAMES_MORE_KEPT_BYTES, b"1")]
    response = _response(200, b"OK", headers)
    assert _one_pass(response, "GET", 1) == _text_way(response, "GET", 1)
    assert kept == {}
    response = _response(200, b"OK", [(b"Connection", b"keep-alive")])
    assert _one_pass(response, "GET", 1) == _text_way(response, "GET", 1)
    assert kept == {b"keep-alive": False}
