"""Answers the gateway makes itself: an HTML page for people, JSON for programs.

The look of the pages belongs to `login_ui`; the gateway only needs something that
renders one, so it depends on the small `PageRenderer` protocol and ships a plain
fallback for when no branded renderer is installed.
"""

from __future__ import annotations

import html
import json
from http import HTTPStatus
from typing import Protocol

from aiohttp import web

from gateway.config.model import TenantConfig
from gateway.request_view import RequestView


class PageRenderer(Protocol):
    """Renders the pages the gateway shows; login_ui provides the branded one."""

    def render_error(
        self,
        status: int,
        *,
        tenant: TenantConfig | None,
        request_id: str | None = None,
        detail: str | None = None,
    ) -> str: ...


class PlainPages:
    """A neutral page with no branding, used when login_ui is not wired in."""

    def render_error(
        self,
        status: int,
        *,
        tenant: TenantConfig | None,
        request_id: str | None = None,
        detail: str | None = None,
    ) -> str:
        title = f"{status} {phrase(status)}"
        body = f"<p>{html.escape(detail)}</p>" if detail else ""
        rid = f"<p><small>Request id: {html.escape(request_id)}</small></p>" if request_id else ""
        return (
            f"<!doctype html><html lang=en><meta charset=utf-8>"
            f"<title>{title}</title><h1>{title}</h1>{body}{rid}</html>"
        )


def phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def wants_json(request: RequestView) -> bool:
    """API and XHR clients get JSON; a browser asking for HTML gets a page."""
    if request.headers.get("X-Requested-With", "").lower() == "xmlhttprequest":
        return True
    accept = request.headers.get("Accept", "")
    if not accept:
        return True  # curl, scripts, health checkers
    if "text/html" in accept:
        return False
    return "json" in accept or "*/*" in accept


# Error answers are not cached anywhere and never framed.
_ERROR_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


def error_response(
    request: RequestView,
    status: int,
    *,
    pages: PageRenderer,
    tenant: TenantConfig | None,
    reason: str,
    request_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """A small answer of the right kind; `reason` is shown to the client, so never a secret."""
    extra = {**_ERROR_HEADERS, **(headers or {})}
    if wants_json(request):
        payload: dict[str, object] = {"error": phrase(status), "status": status, "reason": reason}
        if request_id:
            payload["request_id"] = request_id
        return web.Response(
            status=status,
            text=json.dumps(payload),
            content_type="application/json",
            headers=extra,
        )
    page = pages.render_error(status, tenant=tenant, request_id=request_id, detail=reason)
    return web.Response(status=status, text=page, content_type="text/html", headers=extra)
