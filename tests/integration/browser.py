"""A tiny browser for integration tests: cookies by name, a fixed Host, no auto-redirects."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from http.cookies import SimpleCookie

import aiohttp


@dataclass
class Browser:
    """Just enough of a browser: cookies by name, a fixed Host, no automatic redirects."""

    base: str
    client: aiohttp.ClientSession
    host: str = "app.test"
    cookies: dict[str, str] = dataclasses.field(default_factory=dict)
    last_set_cookies: list[str] = dataclasses.field(default_factory=list)

    async def request(
        self, method: str, path: str, *, data: dict[str, str] | None = None, **headers: str
    ) -> tuple[aiohttp.ClientResponse, str]:
        sent = {"Host": self.host, "Accept": "text/html", **headers}
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        async with self.client.request(
            method, self.base + path, headers=sent, data=data, allow_redirects=False
        ) as resp:
            body = await resp.text()
        self.last_set_cookies = resp.headers.getall("Set-Cookie", [])
        for raw in self.last_set_cookies:
            jar: SimpleCookie = SimpleCookie()
            jar.load(raw)
            for name, morsel in jar.items():
                if morsel["max-age"] == "0" or morsel.value == "":
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value
        return resp, body


def hidden(html: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert found, f"no hidden field {name}"
    return found.group(1)
