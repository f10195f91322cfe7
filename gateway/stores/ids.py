"""Opaque secrets handed to clients, and the only form of them we ever store.

Session ids and API keys are 256-bit random values from `secrets`, so a plain
SHA-256 is the right storage hash: nothing can be brute-forced out of 2**256
candidates, and the lookup must be cheap because it runs on every request. A
slow password hash (argon2) exists to protect low-entropy human passwords and
would only turn each authenticated request into a deliberate CPU burn.
"""

from __future__ import annotations

import hashlib
import secrets

API_KEY_PREFIX = "agk_"
API_KEY_DISPLAY_CHARS = 8  # characters after "agk_" kept for display ("agk_AbCdEfGh…")


def new_session_id() -> str:
    """A fresh session id: 32 random bytes (256 bits), url-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


def hash_session_id(session_id: str) -> str:
    """The form a session id takes in storage and in logs (hex SHA-256)."""
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()


def looks_like_id_hash(value: str) -> bool:
    """Whether `value` has the shape `hash_session_id` gives (64 lowercase hex digits)."""
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def new_api_key() -> str:
    """A fresh API key: `agk_` + 43 url-safe characters (256 bits)."""
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    """The form an API key takes in storage (hex SHA-256 of the whole key)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def api_key_display_prefix(key: str) -> str:
    """The harmless head of a key shown in listings so a person can tell keys apart."""
    return key[: len(API_KEY_PREFIX) + API_KEY_DISPLAY_CHARS]


def looks_like_api_key(value: str) -> bool:
    """Cheap shape check before a store lookup (`agk_` + 43 url-safe characters)."""
    body = value[len(API_KEY_PREFIX) :]
    return (
        value.startswith(API_KEY_PREFIX)
        and len(body) == 43
        and all(c.isascii() and (c.isalnum() or c in "-_") for c in body)
    )
