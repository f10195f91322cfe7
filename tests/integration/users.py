"""Users for integration tests, written straight into the configured stores."""

from __future__ import annotations

import dataclasses
from typing import Any

from gateway.config.model import Config, PasswordsConfig
from gateway.identity.passwords import PasswordHasher
from gateway.stores import User, new_id, open_stores

# argon2 at its cheapest: tests verify passwords, they don't measure hashing.
CHEAP = PasswordsConfig(time_cost=1, memory_cost=8, parallelism=1)
PASSWORD = "correct horse battery staple"


async def create_user(
    config: Config,
    username: str,
    *,
    password: str | None = PASSWORD,
    tenant: str = "acme",
    **fields: Any,
) -> User:
    """Create one user (with `password` hashed cheaply) and return it."""
    password_hash = await PasswordHasher(CHEAP).hash(password) if password else None
    user = User(
        id=new_id(),
        tenant=tenant,
        username=username,
        email=None,
        display_name=None,
        groups=(),
        roles=(),
        disabled=False,
        password_hash=password_hash,
        created=0.0,
        updated=0.0,
    )
    user = dataclasses.replace(user, **fields)
    stores = await open_stores(config)
    try:
        await stores.users.create(user)
    finally:
        await stores.close()
    return user
