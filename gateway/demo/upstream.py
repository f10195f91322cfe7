"""A tiny upstream that shows the request it received, so you see what the gateway passes on."""

from __future__ import annotations

import html

from aiohttp import web

# Headers the gateway adds or controls, shown first and highlighted.
_GATEWAY_HEADERS = (
    "remote-user",
    "remote-email",
    "remote-name",
    "remote-groups",
    "x-authgate-jwt",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
)

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:60rem;padding:0 1rem;color:#1f2937}
h1{font-size:1.4rem}table{border-collapse:collapse;width:100%}
td,th{border-bottom:1px solid #e5e7eb;padding:.4rem .6rem;text-align:left;vertical-align:top;
font-family:ui-monospace,monospace;font-size:.9rem;word-break:break-all}
tr.ours td{background:#eff6ff}code{background:#f3f4f6;padding:.1rem .3rem;border-radius:4px}
"""


def _row(name: str, value: str, ours: bool) -> str:
    cls = ' class="ours"' if ours else ""
    return f"<tr{cls}><td>{html.escape(name)}</td><td>{html.escape(value)}</td></tr>"


async def show_request(request: web.Request) -> web.Response:
    body = await request.read()
    items = list(request.headers.items())
    ours = [(k, v) for k, v in items if k.lower() in _GATEWAY_HEADERS]
    rest = [(k, v) for k, v in items if k.lower() not in _GATEWAY_HEADERS]
    rows = "".join(_row(k, v, True) for k, v in ours) + "".join(_row(k, v, False) for k, v in rest)
    page = (
        "<!doctype html><html lang=en><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<title>demo upstream</title><style>{_STYLE}</style>"
        "<h1>The demo upstream received this request</h1>"
        f"<p><code>{html.escape(request.method)} {html.escape(request.raw_path)}</code>"
        f" &middot; body: {len(body)} bytes</p>"
        "<p>Highlighted rows are set by authgate; anything a client sends under those names"
        " is removed first.</p>"
        "<p>This page is public. <a href='/members/'>/members/</a> needs a sign-in"
        " (<code>alice</code> / <code>alice</code>): then <code>Remote-User</code> and a"
        " signed <code>X-Authgate-Jwt</code> appear here."
        " <a href='/.authgate/logout'>Sign out</a>.</p>"
        f"<table><tr><th>header</th><th>value</th></tr>{rows}</table></html>"
    )
    return web.Response(text=page, content_type="text/html")


def demo_upstream_app() -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", show_request)
    return app
