"""Users for integration tests, written straight into the configured stores."""

from __future__ import annotations

import dataclasses
from typing import Any

from gateway.config.model import Config, PasswordsConfig
from gateway.identity.passwords import PasswordHasher
from gateway.stores import ApiKey, Stores, User, new_id, open_stores
from gateway.stores.ids import api_key_display_prefix, hash_api_key, new_api_key

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


async def store_api_key(stores: Stores, user: User) -> tuple[str, ApiKey]:
    """A new API key of `user` in these open stores: the key (shown once) and its row."""
    key = new_api_key()
    record = ApiKey(
        id=new_id(),
        tenant=user.tenant,
        user_id=user.id,
        name="ci",
        prefix=api_key_display_prefix(key),
        key_hash=hash_api_key(key),
        created=0.0,
        expires=None,
    )
    await stores.apikeys.create(record)
    return key, record
