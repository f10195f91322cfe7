"""The proxy core through a running gateway and a real upstream, both on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.integration.conftest import StartGateway, make_config
from tests.integration.test_fast_path import whole_answers
from tests.integration.upstream_app import RELEASE

# Every test here runs on aiohttp's server and on the fast path (conftest).
BOTH_PATHS = True

HOST = {"Host": "app.test"}


async def gateway_for(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway, **kw: object
) -> str:
    return await start_gateway(make_config(tmp_path, str(upstream.make_url("")), **kw))


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
async def test_methods_query_and_body_arrive_intact(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway, method: str
) -> None:
    base = await gateway_for(tmp_path, upstream, start_gateway)
    body = os.urandom(3 * 1024 * 1024) if method in ("POST", "PUT", "PATCH") else None
    async with (
        aiohttp.ClientSession() as client,
        client.request(method, f"{base}/echo/a?x=1&x=2&y=%20z", headers=HOST, data=body) as resp,
    ):
        assert resp.status == 200
        seen = await resp.json()
    assert seen["method"] == method
    assert seen["raw_path"] == "/echo/a?x=1&x=2&y=%20z"
    if body is not None:
        assert seen["body_length"] == len(body)
        assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()
        # A request with Content-Length is not turned into a chunked one.
        assert not seen["chunked"]


async def test_repeated_headers_arrive_in_order(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway
) -> None:
    base = await gateway_for(tmp_path, upstream, start_gateway)
    async with aiohttp.ClientSession() as client:
        headers = [("Host", "app.test"), ("X-Multi", "one"), ("X-Multi", "two"), ("Cookie", "a=1")]
        async with client.get(f"{base}/echo", headers=headers) as resp:
            seen = await resp.json()
    values = [v for k, v in seen["headers"] if k.lower() == "x-multi"]
    assert values == ["one", "two"]
    host = [v for k, v in seen["headers"] if k.lower() == "host"]
    assert host == [f"127.0.0.1:{upstream.port}"]


async def test_chunked_request_body_streams_upstream(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway
) -> None:
    base = await gateway_for(tmp_path, upstream, start_gateway)
    parts = [os.urandom(100_000) for _ in range(5)]

    async def generate():  # type: ignore[no-untyped-def]
        for part in parts:
            yield part

    async with aiohttp.ClientSession() as client:
        async with client.post(f"{base}/upload", headers=HOST, data=generate()) as resp:
            seen = await resp.json()
    assert seen["body_length"] == sum(map(len, parts))
    assert seen["body_sha256"] == hashlib.sha256(b"".join(parts)).hexdigest()


async def test_streamed_response_arrives_chunk_by_chunk(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway
) -> None:
    base = await gateway_for(tmp_path, upstream, start_gateway)
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{base}/stream", headers=HOST) as resp:
            # The upstream holds the rest back until we have seen the first chunk:
            # if the gateway buffered, this read would never complete.
            first = await asyncio.wait_for(resp.content.readline(), timeout=5)
            assert first == b"first\n"
            upstream.app[RELEASE].set()
            rest = await asyncio.wait_for(resp.content.read(), timeout=5)
    assert rest == b"more 0\nmore 1\nmore 2\n"


async def test_server_sent_events_flow(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway
) -> None:
    base = await gateway_for(tmp_path, upstream, start_gateway)
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{base}/sse", headers=HOST) as resp:
            assert resp.headers["Content-Type"] == "text/event-stream"
            events = [line async for line in resp.content if line.startswith(b"data:")]
    assert events == [b"data: 0\n", b"data: 1\n", b"data: 2\n"]


async def test_websocket_echoes_both_ways_with_close_code(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway
) -> None:
    base = await gateway_for(tmp_path, upstream, start_gateway)
    async with (
        aiohttp.ClientSession() as client,
        client.ws_connect(f"{base}/ws", headers=HOST, protocols=("chat.v1",)) as ws,
    ):
        assert ws.protocol == "chat.v1"
        await ws.send_str("hello")
        assert (await ws.receive_str(timeout=5)) == "echo:hello"
        await ws.send_bytes(b"abc")
        assert (await ws.receive_bytes(timeout=5)) == b"cba"
        await ws.send_str("close-me")
        msg = await ws.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 4001


async def test_unknown_host_gets_421_and_upstream_is_not_contacted(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway
) -> None:
    base = await gateway_for(tmp_path, upstream, start_gateway)
    before = upstream.handler.requests_count if upstream.handler else 0
    async with aiohttp.ClientSession() as client:
        for host in ("evil.test", "app.test.evil.test", "xapp.test", "localhost"):
            async with client.get(f"{base}/echo", headers={"Host": host}) as resp:
                assert resp.status == 421
    after = upstream.handler.requests_count if upstream.handler else 0
    assert after == before


async def test_host_matching_ignores_case_port_and_trailing_dot(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway
) -> None:
    base = await gateway_for(tmp_path, upstream, start_gateway)
    async with aiohttp.ClientSession() as client:
        for host in ("APP.test", "app.test.", "app.test:8443"):
            async with client.get(f"{base}/echo", headers={"Host": host}) as resp:
                assert resp.status == 200, host


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_dead_upstream_is_502_in_under_a_second(
    tmp_path: Path, start_gateway: StartGateway
) -> None:
    config = make_config(tmp_path, f"http://127.0.0.1:{_closed_port()}")
    base = await start_gateway(config)
    async with aiohttp.ClientSession() as client:
        started = time.monotonic()
        async with client.get(f"{base}/x", headers={**HOST, "Accept": "text/html"}) as resp:
            elapsed = time.monotonic() - started
            assert resp.status == 502
            assert "text/html" in resp.headers["Content-Type"]
        async with client.get(f"{base}/x", headers={**HOST, "Accept": "application/json"}) as resp:
            assert resp.status == 502
            assert (await resp.json())["status"] == 502
    assert elapsed < 1.0


async def test_hung_upstream_is_504_after_its_read_timeout(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway
) -> None:
    base = await gateway_for(tmp_path, upstream, start_gateway, route={"read_timeout": 0.5})
    async with aiohttp.ClientSession() as client:
        started = time.monotonic()
        async with client.get(f"{base}/hang", headers=HOST) as resp:
            assert resp.status == 504
        assert time.monotonic() - started < 5


async def test_connection_named_and_hop_by_hop_headers_are_dropped_both_ways(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway
) -> None:
    base = await gateway_for(tmp_path, upstream, start_gateway)
    async with aiohttp.ClientSession() as client:
        headers = {
            **HOST,
            "Connection": "keep-alive, X-Secret-Hop",
            "X-Secret-Hop": "must not pass",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Proxy-Authorization": "Basic Zm9vOmJhcg==",
            "X-Kept": "yes",
        }
        async with client.get(f"{base}/echo", headers=headers) as resp:
            seen = {k.lower(): v for k, v in (await resp.json())["headers"]}
        async with client.get(f"{base}/headers-out", headers=HOST, allow_redirects=False) as resp:
            assert resp.status == 302
            assert "X-Hop-Response" not in resp.headers
            assert resp.headers["X-End-To-End"] == "passes"
            # Location and Set-Cookie are the upstream's business: untouched, repeats kept.
            assert resp.headers["Location"] == "http://upstream.internal/elsewhere"
            assert resp.headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/; HttpOnly"]
    for name in ("x-secret-hop", "keep-alive", "te", "proxy-authorization"):
        assert name not in seen
    assert seen["x-kept"] == "yes"


async def test_untrusted_client_cannot_forge_forwarded_headers(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway
) -> None:
    base = await gateway_for(tmp_path, upstream, start_gateway)
    async with aiohttp.ClientSession() as client:
        headers = {
            **HOST,
            "X-Forwarded-For": "6.6.6.6",
            "X-Forwarded-Host": "admin.test",
            "X-Forwarded-Proto": "https",
            "X-Real-IP": "6.6.6.6",
            "X-Request-Id": "forged",
        }
        async with client.get(f"{base}/echo", headers=headers) as resp:
            seen = {k.lower(): v for k, v in (await resp.json())["headers"]}
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-host"] == "app.test"
    assert seen["x-forwarded-proto"] == "http"
    assert "x-real-ip" not in seen
    assert seen["x-request-id"] != "forged"


async def test_trusted_proxy_chain_is_appended_to(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway
) -> None:
    base = await gateway_for(tmp_path, upstream, start_gateway, trusted_proxies=("127.0.0.0/8",))
    async with aiohttp.ClientSession() as client:
        headers = {**HOST, "X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
        async with client.get(f"{base}/echo", headers=headers) as resp:
            seen = {k.lower(): v for k, v in (await resp.json())["headers"]}
    assert seen["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "https"


@pytest.mark.parametrize(
    ("raw", "forwarded"),
    [
        ("/a/%2e%2e/echo/x", "/echo/x"),
        ("//echo//x", "/echo/x"),
        ("/%65cho/x", "/echo/x"),
        ("/echo/caf%C3%A9?q=%2F", "/echo/caf%C3%A9?q=%2F"),
    ],
)
async def test_the_path_forwarded_is_the_canonical_one(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway, raw: str, forwarded: str
) -> None:
    base = await gateway_for(tmp_path, upstream, start_gateway)
    status, body = await raw_request(base, f"GET {raw} HTTP/1.1\r\nHost: app.test\r\n\r\n")
    assert status == 200
    assert f'"raw_path": "{forwarded}"' in body


@pytest.mark.parametrize(
    "raw",
    ["/a/..%2fadmin", "/a%252fb", "/admin;x", "/%00", "/a\\b", "/%5cadmin", "/%c0%ae%c0%ae/admin"],
)
async def test_refused_paths_get_400_with_a_reason(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway, raw: str
) -> None:
    base = await gateway_for(tmp_path, upstream, start_gateway)
    status, body = await raw_request(
        base, f"GET {raw} HTTP/1.1\r\nHost: app.test\r\nAccept: application/json\r\n\r\n"
    )
    assert status == 400
    assert '"reason"' in body


async def test_reserved_prefix_is_never_forwarded_in_any_case(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway
) -> None:
    base = await gateway_for(tmp_path, upstream, start_gateway)
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{base}/.authgate/health", headers=HOST) as resp:
            assert resp.status == 200
            assert (await resp.json())["status"] == "ok"
        for path in ("/.AUTHGATE/unknown", "/.authgate/../.authgate/nope", "/%2eauthgate/x"):
            status, body = await raw_request(base, f"GET {path} HTTP/1.1\r\nHost: app.test\r\n\r\n")
            assert status == 404, path
            assert "raw_path" not in body


async def test_oversized_header_is_refused(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway
) -> None:
    base = await gateway_for(tmp_path, upstream, start_gateway)
    status, _ = await raw_request(
        base, f"GET /echo HTTP/1.1\r\nHost: app.test\r\nX-Big: {'a' * 20000}\r\n\r\n"
    )
    assert status == 431 or status == 400


async def raw_request(base: str, head: str) -> tuple[int, str]:
    """Send bytes exactly as written (no client-side normalisation of the path), on a
    kept-alive connection (so that the fast path, when on, serves what it may); read
    the one answer."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head.encode("latin-1"))
        await writer.drain()
        answer = bytearray()
        while not whole_answers(answer):
            data = await asyncio.wait_for(reader.read(65536), timeout=10)
            if not data:
                break
            answer += data
    finally:
        writer.close()
    status_line, _, rest = answer.decode("latin-1").partition("\r\n")
    return int(status_line.split()[1]), rest


async def test_client_sent_identity_headers_never_arrive(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway
) -> None:
    base = await gateway_for(tmp_path, upstream, start_gateway)
    forged = [
        ("Host", "app.test"),
        ("Remote-User", "admin"),
        ("remote-user", "admin2"),
        ("REMOTE-GROUPS", "admins"),
        ("Remote-Email", "a@b"),
        ("X-Authgate-Jwt", "eyJ.forged.jwt"),
        ("X-Forwarded-User", "admin"),
        ("X-authentik-username", "admin"),
        ("X-Auth-Request-User", "admin"),
    ]
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{base}/echo", headers=forged) as resp:
            seen = {k.lower() for k, _ in (await resp.json())["headers"]}
    for name, _ in forged[1:]:
        assert name.lower() not in seen


async def test_headers_that_would_change_what_the_app_serves_never_arrive(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway
) -> None:
    # Underscored names: WSGI and CGI read `Remote_User` as `Remote-User`. The others
    # make some frameworks serve another path or method, or believe another client.
    base = await gateway_for(tmp_path, upstream, start_gateway)
    forged = [
        ("Remote_User", "admin"),
        ("Remote_Groups", "admins"),
        ("X_Authgate_Jwt", "eyJ.forged.jwt"),
        ("Any_Underscored", "x"),
        ("X-Rewrite-URL", "/admin"),
        ("X-HTTP-Method-Override", "DELETE"),
        ("X-HTTP-Method", "DELETE"),
        ("X-Method-Override", "DELETE"),
        ("True-Client-IP", "10.0.0.1"),
        ("X-Client-IP", "10.0.0.1"),
        ("CF-Connecting-IP", "10.0.0.1"),
    ]
    async with aiohttp.ClientSession() as client:
        async with client.get(
            f"{base}/echo", headers=[("Host", "app.test"), ("X-Kept", "yes"), *forged]
        ) as resp:
            seen = {k.lower() for k, _ in (await resp.json())["headers"]}
    assert "x-kept" in seen
    for name, _ in forged:
        assert name.lower() not in seen, name


async def test_a_client_trickling_its_request_head_is_dropped(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway
) -> None:
    base = await gateway_for(tmp_path, upstream, start_gateway, client_timeout=1.0)
    host, port = base.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /echo HTTP/1.1\r\nHost: app.test\r\n")
    started = time.monotonic()
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        for _ in range(20):
            await asyncio.sleep(0.25)
            writer.write(b"X-Slow: 1\r\n")
            await writer.drain()
        await asyncio.wait_for(reader.readexactly(1), timeout=5)
    assert time.monotonic() - started < 4
    writer.close()


async def test_small_and_large_answers_keep_their_headers_and_bodies(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway
) -> None:
    base = await gateway_for(tmp_path, upstream, start_gateway)
    async with aiohttp.ClientSession(auto_decompress=False) as client:
        for size in (0, 1, 65536, 65537, 300_000):
            async with client.get(f"{base}/download?bytes={size}", headers=HOST) as resp:
                body = await resp.read()
                assert resp.status == 200
                assert resp.headers["Content-Length"] == str(size)
                assert resp.headers["Content-Type"] == "application/octet-stream"
                assert body == b"x" * size
            async with client.head(f"{base}/download?bytes={size}", headers=HOST) as resp:
                assert resp.headers.get("Content-Length") in (str(size), None)
                assert await resp.read() == b""
        async with client.get(f"{base}/headers-out", headers=HOST, allow_redirects=False) as resp:
            assert resp.headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/; HttpOnly"]
            assert resp.headers["Content-Type"].startswith("text/plain")
