"""`/.authgate/metrics` scraped after known traffic through a real gateway.

Counters move by exactly the traffic sent; no label value is a user name, an address
or a request path; the endpoint refuses peers outside `server.metrics_networks`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from gateway.config.model import Config, SessionsConfig
from gateway.extensions import default_extensions
from tests.integration.browser import Browser, hidden
from tests.integration.conftest import StartGateway, make_config
from tests.integration.test_identity_flow import CHEAP, PASSWORD, add_alice

# Every test here runs on aiohttp's server and on the fast path (conftest).
BOTH_PATHS = True

POLICY = """
version: 1
default: deny
rules:
  - name: public
    paths: ["/public/**"]
    action: bypass
  - name: secret
    paths: ["/secret/**"]
    action: deny
  - name: members
    action: one_factor
"""

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample by (name, sorted labels)."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def label_values(samples: Samples) -> set[str]:
    return {v for _, labels in samples for _, v in labels}


async def scrape(client: aiohttp.ClientSession, base: str) -> Samples:
    async with client.get(f"{base}/.authgate/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        return parse(await resp.text())


def configure(tmp_path: Path, upstream: TestServer, **server: object) -> Config:
    config = make_config(tmp_path, str(upstream.make_url("")), policy=POLICY, **server)
    return dataclasses.replace(config, sessions=SessionsConfig(), passwords=CHEAP)


async def sign_in(browser: Browser, password: str) -> int:
    resp, page = await browser.request("GET", "/.authgate/login?rd=http://app.test/members/x")
    assert resp.status == 200
    form = {
        "csrf_token": hidden(page, "csrf_token"),
        "rd": hidden(page, "rd"),
        "username": "alice",
        "password": password,
    }
    resp, _ = await browser.request("POST", "/.authgate/login", data=form, Origin="http://app.test")
    return resp.status


async def test_counters_move_by_the_traffic_sent_and_labels_stay_bounded(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    config = configure(tmp_path, upstream)
    _, api_key = await add_alice(config)
    base = await start_gateway(config, tuple(default_extensions()))
    before = await scrape(client, base)
    route = dict(tenant="acme", route="app.test/")

    browser = Browser(base, client)
    for i in range(3):
        resp, _ = await browser.request("GET", f"/public/alice/{i}?token=t{i}")
        assert resp.status == 200
    for _ in range(2):
        resp, _ = await browser.request("GET", "/secret/x")
        assert resp.status == 403
    resp, _ = await browser.request("GET", "/members/page")
    assert resp.status == 302
    assert await sign_in(browser, "wrong password") == 401
    assert await sign_in(browser, PASSWORD) == 303
    resp, _ = await browser.request("GET", "/members/page")
    assert resp.status == 200
    for key in (api_key, api_key, "agk_not_a_real_key_at_all_000000"):
        async with client.get(
            f"{base}/members/api",
            headers={
                "Host": "app.test",
                "Authorization": f"Bearer {key}",
                "Accept": "application/json",
            },
        ) as api:
            assert api.status in (200, 401)

    after = await scrape(client, base)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    requests = "authgate_requests_total"
    assert moved(requests, **route, decision="ALLOW", status="200") == 3 + 1 + 2
    assert moved(requests, **route, decision="DENY", status="403") == 2
    assert moved(requests, **route, decision="LOGIN", status="302") == 1
    assert moved(requests, **route, decision="LOGIN", status="401") == 1
    signs = "authgate_sign_in_attempts_total"
    assert moved(signs, tenant="acme", method="password", result="failure") == 1
    assert moved(signs, tenant="acme", method="password", result="success") == 1
    assert moved(signs, tenant="acme", method="apikey", result="success") == 2
    assert moved(signs, tenant="acme", method="apikey", result="failure") == 1
    assert moved("authgate_request_duration_seconds_count", **route) == 3 + 2 + 1 + 1 + 3
    assert moved("authgate_upstream_duration_seconds_count", **route) == 3 + 1 + 2
    assert moved("authgate_decision_duration_seconds_count", tenant="acme") == 3 + 2 + 1 + 1 + 3
    assert value(after, "authgate_active_sessions", tenant="acme") >= 0
    assert any(name == "authgate_store_duration_seconds_count" for name, _ in after)
    assert value(after, "authgate_store_errors_total", store="sessions") == 0

    values = label_values(after)
    for forbidden in ("alice", "127.0.0.1", "/public/alice/0", "/members/page", "/secret/x"):
        assert not any(forbidden in v for v in values), forbidden
    assert not any(v.startswith("/") for v in values)
    assert not any("token" in v for v in values)


async def test_upstream_connections_are_counted_and_kept_alive(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    base = await start_gateway(configure(tmp_path, upstream))
    before = await scrape(client, base)
    assert value(before, "authgate_upstream_connections") == 0
    for i in range(5):  # one after the other: one kept-alive connection serves them all
        async with client.get(f"{base}/public/{i}", headers={"Host": "app.test"}) as resp:
            assert resp.status == 200
    after = await scrape(client, base)
    assert value(after, "authgate_upstream_connections_opened_total") == 1
    assert value(after, "authgate_upstream_connections") == 1

    await upstream.close()  # the upstream goes away: the gateway sees its connection end
    for _ in range(50):
        gone = await scrape(client, base)
        if value(gone, "authgate_upstream_connections") == 0:
            break
        await asyncio.sleep(0.05)
    assert value(gone, "authgate_upstream_connections") == 0


async def test_metrics_refuses_a_peer_outside_metrics_networks_even_with_forwarded_for(
    tmp_path: Path, upstream: TestServer, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    config = configure(
        tmp_path,
        upstream,
        metrics_networks=(ipaddress.ip_network("10.9.0.0/16"),),
        trusted_proxies=(ipaddress.ip_network("127.0.0.0/8"),),
    )
    base = await start_gateway(config)
    async with client.get(
        f"{base}/.authgate/metrics", headers={"X-Forwarded-For": "10.9.1.1"}
    ) as resp:
        assert resp.status == 403
        assert "authgate_requests" not in await resp.text()


async def test_policy_reloads_are_counted_by_result(
    tmp_path: Path, upstream: TestServer, client: aiohttp.ClientSession
) -> None:
    from gateway.server import GatewayServer

    config = configure(tmp_path, upstream)
    server = GatewayServer(config)
    await server.start()
    try:
        host, port = server.addresses[0]
        base = f"http://{host}:{port}"
        assert server.reload() is True
        (tmp_path / "policy.yaml").write_text("version: 1\nrules: [{actoin: bypass}]\n")
        assert server.reload() is False
        assert server.reload() is False
        samples = await scrape(client, base)
        assert value(samples, "authgate_policy_reloads_total", result="success") == 1
        assert value(samples, "authgate_policy_reloads_total", result="failure") == 2
    finally:
        await server.stop()


@pytest.mark.slow
def test_one_scrape_counts_the_requests_of_every_serve_worker(tmp_path: Path) -> None:
    import http.client
    import tempfile
    import threading
    import time
    from http.server import ThreadingHTTPServer

    from prometheus_client.multiprocess import MultiProcessCollector

    from gateway.metrics import FLUSH_SECONDS
    from tests.integration.test_serve import (
        _Upstream,
        free_port,
        get,
        start_serving,
        worker_pids,
        write_config,
    )

    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    port = free_port()
    config = write_config(tmp_path, port, upstream.server_address[1])
    process = start_serving(config, port)
    try:
        for i in range(20):  # a new connection each: SO_REUSEPORT spreads them over workers
            assert get(port, f"/open/{i}")[0] == 200
        # Each worker hands its counts to the shared files at least every FLUSH_SECONDS
        # (the scraped worker flushes its own at the scrape).
        time.sleep(FLUSH_SECONDS + 0.5)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/.authgate/metrics", headers={"Host": "app.test"})
        resp = conn.getresponse()
        samples = parse(resp.read().decode())
        conn.close()
        assert resp.status == 200
        requests = "authgate_requests_total"
        labels = dict(tenant="acme", route="app.test/", decision="ALLOW", status="200")
        assert value(samples, requests, **labels) == 20
        duration = "authgate_request_duration_seconds_count"
        assert value(samples, duration, tenant="acme", route="app.test/") == 20
        # The upstream answers HTTP/1.0 and closes: a connection per request, summed over
        # the workers, and none left open (the gauge is the sum over live workers).
        assert value(samples, "authgate_upstream_connections_opened_total") == 20
        assert value(samples, "authgate_upstream_connections") == 0

        # ...and both workers served some of them: read each worker's own file.
        workers = worker_pids(process.pid)
        directory = next(
            Path(tempfile.gettempdir()).glob(f"authgate-metrics-*/counter_{workers[0]}.db")
        ).parent
        per_worker = []
        for pid in workers:
            files = [str(directory / f"counter_{pid}.db")]
            merged = MultiProcessCollector.merge(files, accumulate=False)  # type: ignore[no-untyped-call]
            per_worker.append(
                sum(
                    s.value
                    for family in merged
                    for s in family.samples
                    if s.name == requests and s.labels.get("route") == "app.test/"
                )
            )
        assert sum(per_worker) == 20
        assert all(count > 0 for count in per_worker), per_worker
    finally:
        process.terminate()
        process.wait(timeout=20)
        upstream.shutdown()
        upstream.server_close()
    assert not directory.exists()  # the per-serve directory is removed at exit
