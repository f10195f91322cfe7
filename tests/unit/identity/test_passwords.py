"""PasswordHasher: argon2id with configured parameters, run off the event loop."""

from __future__ import annotations

import threading

import pytest

from gateway.config.model import PasswordsConfig
from gateway.identity.passwords import PasswordHasher

CHEAP = PasswordsConfig(time_cost=1, memory_cost=8, parallelism=1)


@pytest.fixture
def hasher() -> PasswordHasher:
    return PasswordHasher(CHEAP)


async def test_a_hash_verifies_its_password_only(hasher: PasswordHasher) -> None:
    hashed = await hasher.hash("correct horse")
    assert hashed.startswith("$argon2id$")
    assert "correct horse" not in hashed
    assert await hasher.verify(hashed, "correct horse") is True
    assert await hasher.verify(hashed, "Correct horse") is False


async def test_the_same_password_hashes_differently_each_time(hasher: PasswordHasher) -> None:
    assert await hasher.hash("pw") != await hasher.hash("pw")


async def test_a_malformed_hash_verifies_nothing(hasher: PasswordHasher) -> None:
    assert await hasher.verify("not-a-hash", "pw") is False
    assert await hasher.verify("", "") is False


async def test_dummy_verification_always_fails(hasher: PasswordHasher) -> None:
    assert await hasher.verify_dummy("anything") is False
    assert await hasher.verify_dummy("") is False


async def test_changed_parameters_ask_for_a_rehash(hasher: PasswordHasher) -> None:
    hashed = await hasher.hash("pw")
    assert hasher.needs_rehash(hashed) is False
    stronger = PasswordHasher(PasswordsConfig(time_cost=2, memory_cost=16, parallelism=1))
    assert stronger.needs_rehash(hashed) is True
    assert hasher.needs_rehash("garbage") is True


def test_defaults_are_at_least_owasp() -> None:
    config = PasswordsConfig()
    assert config.memory_cost >= 19456 and config.time_cost >= 2 and config.parallelism >= 1


async def test_hashing_runs_off_the_event_loop_thread(
    hasher: PasswordHasher, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    inner = hasher._hasher

    class Recording:
        def hash(self, password: str) -> str:
            seen.append(threading.get_ident())
            return inner.hash(password)

    monkeypatch.setattr(hasher, "_hasher", Recording())
    await hasher.hash("pw")
    assert seen and seen[0] != threading.get_ident()
