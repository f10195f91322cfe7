"""Session ids and API keys: 256 bits from `secrets`, stored only as SHA-256."""

from __future__ import annotations

import hashlib

from gateway.stores.ids import (
    api_key_display_prefix,
    hash_api_key,
    hash_session_id,
    looks_like_api_key,
    looks_like_id_hash,
    new_api_key,
    new_session_id,
)


def test_session_ids_carry_256_bits_and_never_repeat() -> None:
    ids = {new_session_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 43 for i in ids)  # 32 bytes, url-safe base64, no padding


def test_session_id_hash_is_sha256_hex() -> None:
    sid = new_session_id()
    assert hash_session_id(sid) == hashlib.sha256(sid.encode()).hexdigest()
    assert sid not in hash_session_id(sid)


def test_an_id_hash_is_known_by_its_shape() -> None:
    assert looks_like_id_hash(hash_session_id(new_session_id()))
    for value in ("", "ab" * 31, "ab" * 33, "AB" * 32, "g" * 64, new_session_id()):
        assert not looks_like_id_hash(value)


def test_api_keys_have_the_agk_shape() -> None:
    key = new_api_key()
    assert key.startswith("agk_") and len(key) == 47
    assert looks_like_api_key(key)
    assert not looks_like_api_key("agk_short")
    assert not looks_like_api_key("xyz_" + key[4:])
    assert not looks_like_api_key(key[:-1] + "!")


def test_api_key_display_prefix_reveals_only_a_few_characters() -> None:
    key = new_api_key()
    assert api_key_display_prefix(key) == key[:12]
    assert hash_api_key(key) == hashlib.sha256(key.encode()).hexdigest()
