"""Reading a posted form, the one way every page does it."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.web_request import FileField
from multidict import MultiDictProxy

from gateway.reserved import ReservedRequest


async def posted_form(
    req: ReservedRequest, client_timeout: float
) -> MultiDictProxy[str | bytes | bytearray | FileField] | None:
    """The posted form, or None when it cannot be read: larger than the server takes
    (aiohttp refuses it with 413), malformed, or not sent within `client_timeout` (a slow
    client may not hold a read open forever). The caller answers None with a 400."""
    try:
        async with asyncio.timeout(client_timeout):
            return await req.request.post()
    except (ValueError, TimeoutError, web.HTTPException):
        return None
