"""The baseline: the least a correct aiohttp reverse proxy does, and nothing more.

`python -m benchmarks.minimal_proxy --port P --upstream http://127.0.0.1:U --workers N`

Per worker: aiohttp's low-level server on uvloop (the same stack authgate runs on),
one pooled keep-alive `ClientSession`, request and response bodies streamed, hop-by-hop
headers dropped and `X-Forwarded-For` set — the protocol work any honest proxy must do.
No host routing, no path canonicalisation, no policy: the gap between this and
authgate is the price of authgate's own work. N workers share the port through
SO_REUSEPORT, like `authgate serve --workers N`.
"""

from __future__ import annotations

import asyncio
import signal

import aiohttp
from aiohttp import web
from aiohttp.web_request import BaseRequest
from multidict import CIMultiDict, CIMultiDictProxy

from benchmarks._harness import proxy_main, reuseport_socket

HOP_BY_HOP = frozenset(
    {
        "connection",
        "proxy-connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
        "host",
        "content-length",
    }
)


def _end_to_end(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in HOP_BY_HOP)


class MinimalProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.client: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self.client = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=60),
        )

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()

    async def __call__(self, request: BaseRequest) -> web.StreamResponse:
        assert self.client is not None
        headers = _end_to_end(request.headers)
        headers["X-Forwarded-For"] = request.remote or ""
        body = request.content if request.body_exists else None
        try:
            upstream = await self.client.request(
                request.method,
                self.upstream + request.raw_path,
                headers=headers,
                data=body,
                allow_redirects=False,
            )
        except (TimeoutError, aiohttp.ClientError):
            return web.Response(status=502, text="bad gateway\n")
        async with upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            response.headers.extend(_end_to_end(upstream.headers))
            length = upstream.headers.get("Content-Length")
            if length is not None and length.isdigit():
                response.content_length = int(length)
            else:
                response.enable_chunked_encoding()
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response


async def _serve(port: int, upstream: str) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    proxy = MinimalProxy(upstream)
    await proxy.start()
    runner = web.ServerRunner(web.Server(proxy, access_log=None), handle_signals=False)
    await runner.setup()
    await web.SockSite(runner, reuseport_socket(port)).start()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await proxy.close()


def main() -> None:
    proxy_main("A minimal aiohttp reverse proxy (baseline).", _serve)


if __name__ == "__main__":
    main()
