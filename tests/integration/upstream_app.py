"""A real aiohttp upstream for the proxy tests: reports what it received, misbehaves on cue."""

from __future__ import annotations

import asyncio
import hashlib

from aiohttp import WSMsgType, web

RELEASE = web.AppKey("release", asyncio.Event)


async def echo(request: web.Request) -> web.Response:
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        size += len(chunk)
    return web.json_response(
        {
            "method": request.method,
            "raw_path": request.raw_path,
            "query": request.query_string,
            "headers": [[k, v] for k, v in request.headers.items()],
            # as the bytes came: the spelling of each name too
            "raw_headers": [
                [k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers
            ],
            "body_sha256": digest.hexdigest(),
            "body_length": size,
            "chunked": "chunked" in request.headers.get("Transfer-Encoding", ""),
        }
    )


async def stream(request: web.Request) -> web.StreamResponse:
    """First chunk at once; the rest only after the test has seen the first one."""
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    await response.write(b"first\n")
    await asyncio.wait_for(request.app[RELEASE].wait(), timeout=10)
    for i in range(3):
        await response.write(f"more {i}\n".encode())
    await response.write_eof()
    return response


async def sse(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for i in range(3):
        await response.write(f"data: {i}\n\n".encode())
        await asyncio.sleep(0.05)
    await response.write_eof()
    return response


async def download(request: web.Request) -> web.StreamResponse:
    total = int(request.query["bytes"])
    block = b"x" * 65536
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = total
    await response.prepare(request)
    if request.method == "HEAD":
        return response  # a HEAD answer has no body (StreamResponse would write one)
    sent = 0
    while sent < total:
        piece = block[: min(len(block), total - sent)]
        await response.write(piece)
        sent += len(piece)
    await response.write_eof()
    return response


async def chunked(request: web.Request) -> web.StreamResponse:
    """`bytes` bytes in chunks of 1,000, no length given."""
    total = int(request.query["bytes"])
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    for start in range(0, total, 1000):
        await response.write(b"c" * min(1000, total - start))
    await response.write_eof()
    return response


async def empty(request: web.Request) -> web.Response:
    return web.Response(body=b"")


async def broken(request: web.Request) -> web.StreamResponse:
    """Promises `bytes` bytes, sends `sent`, then cuts the connection."""
    response = web.StreamResponse()
    response.content_length = int(request.query["bytes"])
    await response.prepare(request)
    await response.write(b"b" * int(request.query["sent"]))
    assert request.transport is not None
    request.transport.close()
    return response


async def hang(request: web.Request) -> web.Response:
    await asyncio.sleep(30)
    return web.Response(text="too late")


async def headers_out(request: web.Request) -> web.Response:
    response = web.Response(text="ok", status=302)
    response.headers.add("Set-Cookie", "a=1; Path=/")
    response.headers.add("Set-Cookie", "b=2; Path=/; HttpOnly")
    response.headers["Location"] = "http://upstream.internal/elsewhere"
    response.headers["Connection"] = "x-hop-response"
    response.headers["X-Hop-Response"] = "must not pass"
    response.headers["X-End-To-End"] = "passes"
    return response


async def websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(protocols=("chat.v1",))
    await ws.prepare(request)
    async for msg in ws:
        if msg.type is WSMsgType.TEXT:
            if msg.data == "close-me":
                await ws.close(code=4001, message=b"asked to")
                break
            await ws.send_str("echo:" + msg.data)
        elif msg.type is WSMsgType.BINARY:
            await ws.send_bytes(msg.data[::-1])
    return ws


def upstream_app() -> web.Application:
    app = web.Application(client_max_size=0)
    app[RELEASE] = asyncio.Event()
    app.router.add_get("/stream", stream)
    app.router.add_get("/sse", sse)
    app.router.add_get("/download", download)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/broken", broken)
    app.router.add_get("/empty", empty)
    app.router.add_get("/hang", hang)
    app.router.add_get("/headers-out", headers_out)
    app.router.add_get("/ws", websocket)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app
