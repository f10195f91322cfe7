"""ApiKeyStore and KeyStore contracts, on every SQL backend."""

from __future__ import annotations

import pytest

from gateway.stores.base import AlreadyExists, ApiKey, SigningKey, new_id
from gateway.stores.ids import api_key_display_prefix, hash_api_key, new_api_key
from gateway.stores.sql import SqlApiKeyStore, SqlKeyStore


def api_key(user_id: str = "u1", tenant: str = "acme", created: float = 1.0) -> ApiKey:
    raw = new_api_key()
    return ApiKey(
        id=new_id(),
        tenant=tenant,
        user_id=user_id,
        name="ci",
        prefix=api_key_display_prefix(raw),
        key_hash=hash_api_key(raw),
        created=created,
        expires=None,
    )


async def test_a_key_is_found_by_its_hash(apikeys: SqlApiKeyStore) -> None:
    key = api_key()
    await apikeys.create(key)
    assert await apikeys.get_by_hash(key.key_hash) == key
    assert await apikeys.get_by_hash(hash_api_key(new_api_key())) is None


async def test_revoked_keys_stay_visible_as_revoked(apikeys: SqlApiKeyStore) -> None:
    key = api_key()
    await apikeys.create(key)
    assert await apikeys.revoke(key.id) is True
    assert await apikeys.revoke(key.id) is False
    got = await apikeys.get_by_hash(key.key_hash)
    assert got is not None and got.revoked


async def test_listing_by_tenant_and_by_user(apikeys: SqlApiKeyStore) -> None:
    a, b, c = api_key("u1", created=1), api_key("u2", created=2), api_key(tenant="globex")
    for key in (a, b, c):
        await apikeys.create(key)
    assert await apikeys.list("acme") == [a, b]
    assert await apikeys.list("acme", "u2") == [b]


async def test_mark_used_records_the_time(apikeys: SqlApiKeyStore) -> None:
    key = api_key()
    await apikeys.create(key)
    await apikeys.mark_used(key.id, 42.0)
    got = await apikeys.get_by_hash(key.key_hash)
    assert got is not None and got.last_used == 42.0


def signing_key(kid: str, created: float) -> SigningKey:
    return SigningKey(
        kid=kid,
        private_pem_encrypted=b"\x00encrypted\xff",
        public_jwk='{"kty": "EC"}',
        created=created,
    )


async def test_signing_keys_list_active_and_recently_retired(signing_keys: SqlKeyStore) -> None:
    old, middle, new = signing_key("k1", 1.0), signing_key("k2", 2.0), signing_key("k3", 3.0)
    for key in (old, middle, new):
        await signing_keys.add(key)
    assert await signing_keys.retire("k1", 10.0) is True
    assert await signing_keys.retire("k2", 100.0) is True
    assert await signing_keys.retire("k2", 200.0) is False
    listed = await signing_keys.list(retired_after=50.0)
    assert [k.kid for k in listed] == ["k3", "k2"]
    assert listed[0] == new
    assert listed[1].retired == 100.0


async def test_a_kid_is_unique(signing_keys: SqlKeyStore) -> None:
    await signing_keys.add(signing_key("k1", 1.0))
    with pytest.raises(AlreadyExists):
        await signing_keys.add(signing_key("k1", 2.0))
