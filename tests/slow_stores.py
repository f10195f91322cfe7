"""Real stores made slow on purpose, to place an event inside a store read for certain
(a revocation arriving while a session or key is being read)."""

from __future__ import annotations

import asyncio

from gateway.stores import User, UserStore


class GatedUsers:
    """The real user store, whose reads wait at `gate` while armed (a slow database).
    `entered` is set when a read is waiting; `once` disarms after the first read."""

    def __init__(self, inner: UserStore, *, armed: bool = False, once: bool = False) -> None:
        self.inner = inner
        self.armed = armed
        self.once = once
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def get(self, user_id: str) -> User | None:
        if self.armed:
            if self.once:
                self.armed = False
            self.entered.set()
            await self.gate.wait()
        return await self.inner.get(user_id)
