"""The request id: believed from trusted proxies only, forwarded upstream, and on every
log line written about the request, including its one access-log line."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.config.model import LoggingConfig, SessionsConfig
from gateway.extensions import default_extensions
from gateway.logs import flush_logging, setup_logging
from tests.integration.browser import Browser, hidden
from tests.integration.conftest import StartGateway, make_config
from tests.integration.test_identity_flow import CHEAP, add_alice

# Every test here runs on aiohttp's server and on the fast path (conftest).
BOTH_PATHS = True


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """The real logging set-up (JSON, background writer) into a buffer; restored after."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    buffer = io.StringIO()
    setup_logging(LoggingConfig(level="info", format="json"), stream=buffer)
    yield buffer
    flush_logging()
    root.handlers[:], level = saved
    root.setLevel(level)


def lines(buffer: io.StringIO) -> list[dict[str, object]]:
    flush_logging()
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


def echo_request_id(body: str) -> list[str]:
    return [v for k, v in json.loads(body)["headers"] if k.lower() == "x-request-id"]


async def test_a_trusted_proxys_request_id_is_used_and_forwarded(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    config = make_config(tmp_path, str(upstream.make_url("")), trusted_proxies=("127.0.0.0/8",))
    base = await start_gateway(config)
    async with client.get(
        f"{base}/x", headers={"Host": "app.test", "X-Request-Id": "edge-42"}
    ) as resp:
        assert echo_request_id(await resp.text()) == ["edge-42"]


async def test_a_clients_request_id_is_replaced_by_ours(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    config = make_config(tmp_path, str(upstream.make_url("")))  # 127.0.0.1 not trusted
    base = await start_gateway(config)
    seen = []
    for _ in range(2):
        async with client.get(
            f"{base}/x", headers={"Host": "app.test", "X-Request-Id": "forged"}
        ) as resp:
            seen.extend(echo_request_id(await resp.text()))
    assert len(seen) == 2
    assert "forged" not in seen
    assert seen[0] != seen[1]
    assert all(len(v) == 24 for v in seen)


async def test_every_log_line_of_a_request_carries_its_id_and_one_access_line(
    tmp_path: Path,
    upstream: TestServer,
    start_gateway: StartGateway,
    client: aiohttp.ClientSession,
    json_logs: io.StringIO,
) -> None:
    config = make_config(tmp_path, str(upstream.make_url("")), trusted_proxies=("127.0.0.0/8",))
    config = dataclasses.replace(config, sessions=SessionsConfig(), passwords=CHEAP)
    await add_alice(config)
    base = await start_gateway(config, tuple(default_extensions()))
    browser = Browser(base, client)
    resp, page = await browser.request("GET", "/.authgate/login?rd=http://app.test/x")
    form = {
        "csrf_token": hidden(page, "csrf_token"),
        "rd": hidden(page, "rd"),
        "username": "alice",
        "password": "not her password",
    }
    lines(json_logs)
    json_logs.seek(0)
    json_logs.truncate()
    setup_logging(LoggingConfig(level="info", format="json"), stream=json_logs)

    # a failed sign-in logs at least twice: the failure, and the access line
    resp, _ = await browser.request(
        "POST", "/.authgate/login?next=secret-token", data=form,
        Origin="http://app.test", **{"X-Request-Id": "req-7"},
    )
    assert resp.status == 401
    written = lines(json_logs)
    assert len(written) >= 2
    assert {line.get("request_id") for line in written} == {"req-7"}
    access = [line for line in written if line["logger"] == "authgate.access"]
    assert len(access) == 1
    entry = access[0]
    assert entry["method"] == "POST"
    assert entry["host"] == "app.test"
    assert entry["path"] == "/.authgate/login"
    assert entry["status"] == 401
    assert entry["tenant"] is None or entry["tenant"] == "acme"
    assert isinstance(entry["duration_ms"], float)
    assert "secret-token" not in json_logs.getvalue()  # never the query string


async def test_the_access_log_can_be_turned_off(
    tmp_path: Path,
    upstream: TestServer,
    start_gateway: StartGateway,
    client: aiohttp.ClientSession,
    json_logs: io.StringIO,
) -> None:
    config = make_config(tmp_path, str(upstream.make_url("")))
    config = dataclasses.replace(config, logging=LoggingConfig(access_log=False))
    base = await start_gateway(config)
    async with client.get(f"{base}/x", headers={"Host": "app.test"}) as resp:
        assert resp.status == 200
    assert not [line for line in lines(json_logs) if line["logger"] == "authgate.access"]


async def test_an_allowed_request_logs_decision_rule_and_upstream_time(
    tmp_path: Path,
    upstream: TestServer,
    start_gateway: StartGateway,
    client: aiohttp.ClientSession,
    json_logs: io.StringIO,
) -> None:
    config = make_config(tmp_path, str(upstream.make_url("")))
    base = await start_gateway(config)
    async with client.get(f"{base}/a/../b/c?token=q-secret", headers={"Host": "App.Test"}) as resp:
        assert resp.status == 200
    (entry,) = [line for line in lines(json_logs) if line["logger"] == "authgate.access"]
    assert entry["path"] == "/b/c"
    assert entry["host"] == "app.test"
    assert entry["decision"] == "ALLOW"
    assert entry["rule"] == "everything"
    assert entry["tenant"] == "acme"
    assert isinstance(entry["upstream_ms"], float)
    assert entry["bytes"] > 0
    # (not a hex string: a request id, random hex, may contain one)
    assert "q-secret" not in json.dumps(entry)


@pytest.mark.parametrize(
    ("method", "path", "status", "body_bytes"),
    [
        ("GET", "/chunked?bytes=150000", 200, 150_000),
        # Cut after 70,000 of 100,000 bytes: the client got a 200 and 70,000 bytes.
        ("GET", "/broken?bytes=100000&sent=70000", 200, 70_000),
        ("GET", "/empty", 200, 0),  # Content-Length: 0 (aiohttp's count: its head)
        ("HEAD", "/x", 200, 0),
        ("HEAD", "/.authgate/login", 404, 0),  # a page of ours (GET only), no body sent
    ],
    ids=["chunked", "cut-short", "empty", "head", "head-of-our-page"],
)
async def test_the_access_log_counts_the_body_bytes_the_client_got(
    method: str,
    path: str,
    status: int,
    body_bytes: int,
    tmp_path: Path,
    upstream: TestServer,
    start_gateway: StartGateway,
    client: aiohttp.ClientSession,
    json_logs: io.StringIO,
) -> None:
    """The body only, the same on both paths: not the head or the chunk framing, and
    not the length an answer promised when it was cut short."""
    base = await start_gateway(make_config(tmp_path, str(upstream.make_url(""))))
    async with client.request(method, f"{base}{path}", headers={"Host": "app.test"}) as resp:
        assert resp.status == status
        got = 0
        with contextlib.suppress(aiohttp.ClientPayloadError):
            async for chunk in resp.content.iter_any():
                got += len(chunk)
    assert got == body_bytes
    (entry,) = [line for line in lines(json_logs) if line["logger"] == "authgate.access"]
    assert (entry["status"], entry["bytes"]) == (status, body_bytes)
