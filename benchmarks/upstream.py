"""The fast upstream every proxy scenario forwards to: a tiny fixed `200 ok`.

Two implementations, chosen by `python -m benchmarks.proxy --upstream`:

* `nginx` (default) — nginx answering `return 200 "ok\\n"`. On a 2-core machine the
  upstream's CPU comes out of the same two cores as the proxy under test and wrk. nginx
  spends a small fraction of what any Python server does per request, so the figures
  measure the proxies, not the upstream, and the differences between them stay visible.
  An aiohttp upstream costs about as much CPU per request as the proxy itself: it would
  roughly halve every proxy's throughput and squeeze all ratios towards 1.
* `aiohttp` — this module run as `python -m benchmarks.upstream --port P --workers N`:
  aiohttp's low-level server on uvloop, N processes sharing the port (SO_REUSEPORT).
  Useful to see a "Python behind Python" deployment, not for the headline ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from aiohttp import web
from aiohttp.web_request import BaseRequest

from benchmarks._harness import install_uvloop, reuseport_socket, run_forked_workers

BODY = b"ok\n"


def nginx_http_block(port: int) -> str:
    """The `server` block (inside `http`) of the nginx upstream."""
    return (
        "    server {\n"
        f"        listen 127.0.0.1:{port} reuseport backlog=4096;\n"
        "        default_type text/plain;\n"
        '        location / { return 200 "ok\\n"; }\n'
        "    }\n"
    )


# ------------------------------------------------------------------- aiohttp upstream


async def _answer(request: BaseRequest) -> web.StreamResponse:
    return web.Response(body=BODY, content_type="text/plain")


async def _serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    runner = web.ServerRunner(web.Server(_answer, access_log=None), handle_signals=False)
    await runner.setup()
    await web.SockSite(runner, reuseport_socket(port)).start()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def _worker(port: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    install_uvloop()
    asyncio.run(_serve(port))


def main() -> None:
    parser = argparse.ArgumentParser(description="A fast aiohttp upstream answering 200 ok.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    run_forked_workers(_worker, (args.port,), args.workers)


if __name__ == "__main__":
    main()
