"""The identity JWT: tokens verify against the published JWKS, and keys rotate safely.

The key store here is an in-memory fake (the signing logic is under test); the
real SQLite/PostgreSQL stores are exercised in tests/integration/test_signing_stores.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import time
from dataclasses import replace
from typing import Any

import jwt
import jwt.utils
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

import gateway.runtime as runtime_module
from gateway.secretbox import SecretBox, SecretBoxError
from gateway.signing import (
    JWKS_MAX_AGE,
    KEY_PURPOSE,
    PUBLISH_AHEAD,
    REFRESH_INTERVAL,
    JwtSigner,
    SigningError,
    new_signing_key,
    rotate_keys,
)
from gateway.stores.base import SigningKey

BOX_KEY = "k" * 40
ISSUER = "https://auth.acme.test"
DAY = 86400.0


class FakeKeyStore:
    """KeyStore protocol in memory; keeps what `add` received, for inspection."""

    def __init__(self) -> None:
        self.rows: dict[str, SigningKey] = {}
        self.added: list[SigningKey] = []
        self.list_calls = 0
        self.hold_next_add: asyncio.Event | None = None  # a slow connection, for one add

    async def _slow_connection(self) -> None:
        gate, self.hold_next_add = self.hold_next_add, None
        if gate is not None:
            await gate.wait()

    # Each method yields once, so concurrent callers interleave as they would on a database.
    async def add(self, key: SigningKey) -> None:
        await asyncio.sleep(0)
        await self._slow_connection()
        self.added.append(key)
        self.rows[key.kid] = key

    async def add_first(self, key: SigningKey, now: float) -> bool:
        await asyncio.sleep(0)
        await self._slow_connection()
        if any(k.retired is None or k.retired > now for k in self.rows.values()):
            return False
        self.added.append(key)
        self.rows[key.kid] = key
        return True

    async def list(self, retired_after: float) -> list[SigningKey]:
        await asyncio.sleep(0)
        self.list_calls += 1
        keys = [k for k in self.rows.values() if k.retired is None or k.retired > retired_after]
        return sorted(keys, key=lambda k: k.created, reverse=True)

    async def retire(self, kid: str, at: float) -> bool:
        await asyncio.sleep(0)
        key = self.rows.get(kid)
        if key is None or key.retired is not None:
            return False
        self.rows[kid] = SigningKey(
            key.kid, key.private_pem_encrypted, key.public_jwk, key.created, at, key.algorithm
        )
        return True

    async def replace_all(self, key: SigningKey) -> None:
        await asyncio.sleep(0)
        self.added.append(key)
        self.rows = {key.kid: key}


class Clock:
    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store() -> FakeKeyStore:
    return FakeKeyStore()


@pytest.fixture
def box() -> SecretBox:
    return SecretBox(BOX_KEY)


@pytest.fixture
async def signer(store: FakeKeyStore, box: SecretBox, clock: Clock) -> JwtSigner:
    signer = JwtSigner(store, box, issuer=ISSUER, lifetime=300, overlap=DAY, now=clock)
    await signer.start()
    return signer


def sign(signer: JwtSigner, **overrides: Any) -> str:
    claims: dict[str, Any] = {
        "audience": "wiki.acme.test",
        "subject": "alice",
        "email": "alice@acme.test",
        "name": "Alice Liddell",
        "groups": ["staff", "wiki-editors"],
        "amr": ["pwd", "otp"],
    }
    claims.update(overrides)
    return signer.sign(**claims)


def verify(token: str, jwks: dict[str, Any], *, audience: str = "wiki.acme.test") -> dict[str, Any]:
    """What an upstream does: pick the JWK by kid, check signature, iss, aud and time."""
    kid = jwt.get_unverified_header(token)["kid"]
    (jwk,) = [k for k in jwks["keys"] if k["kid"] == kid]
    key = jwt.PyJWK(jwk).key
    # PyJWT checks exp against the wall clock, so tests that verify sign at time.time().
    decoded: dict[str, Any] = jwt.decode(
        token,
        key,
        algorithms=["ES256"],
        audience=audience,
        issuer=ISSUER,
        options={"require": ["exp", "iat", "iss", "aud", "sub"]},
    )
    return decoded


def kids(jwks: dict[str, Any]) -> set[str]:
    return {k["kid"] for k in jwks["keys"]}


def kid_of(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


def verifies_at(token: str, jwks: dict[str, Any], now: float) -> bool:
    """What an upstream holding `jwks` decides at `now` (a fake clock, so exp is checked
    here rather than by PyJWT against the wall clock)."""
    matching = [k for k in jwks["keys"] if k["kid"] == kid_of(token)]
    if not matching:
        return False
    claims = jwt.decode(
        token,
        jwt.PyJWK(matching[0]).key,
        algorithms=["ES256"],
        audience="wiki.acme.test",
        issuer=ISSUER,
        options={"verify_exp": False, "verify_iat": False},
    )
    return bool(claims["iat"] <= now < claims["exp"])


# --- tokens ----------------------------------------------------------------------


async def test_a_token_verifies_with_the_published_jwks_and_carries_every_claim(
    signer: JwtSigner, clock: Clock
) -> None:
    clock.now = time.time()
    token = sign(signer)
    claims = verify(token, signer.jwks())
    assert claims == {
        "iss": ISSUER,
        "aud": "wiki.acme.test",
        "sub": "alice",
        "email": "alice@acme.test",
        "name": "Alice Liddell",
        "groups": ["staff", "wiki-editors"],
        "amr": ["pwd", "otp"],
        "iat": int(clock.now),
        "exp": int(clock.now) + 300,
    }
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "ES256"
    assert header["kid"] in kids(signer.jwks())


async def test_unknown_email_and_name_are_left_out_not_null(
    signer: JwtSigner, clock: Clock
) -> None:
    clock.now = time.time()
    claims = verify(sign(signer, email=None, name=None), signer.jwks())
    assert "email" not in claims
    assert "name" not in claims


async def test_the_jwks_publishes_only_public_ec_members(signer: JwtSigner) -> None:
    (jwk,) = signer.jwks()["keys"]
    assert set(jwk) == {"kid", "kty", "crv", "x", "y", "alg", "use"}
    assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"]) == ("EC", "P-256", "ES256", "sig")
    assert json.loads(signer.jwks_json()) == signer.jwks()


def test_every_published_coordinate_has_its_full_32_bytes(box: SecretBox) -> None:
    # RFC 7518 §6.2.1.2: x and y are the full length of the curve's coordinates, leading
    # zero bytes included, and strict JOSE libraries refuse a shorter one. One key in 128
    # has a coordinate below 2**248; PyJWT before 2.10 rendered it short, and an upstream
    # could then verify no token that key signed.
    for _ in range(2000):
        jwk = json.loads(new_signing_key(box, now=0.0).public_jwk)
        for name in ("x", "y"):
            assert len(jwt.utils.base64url_decode(jwk[name])) == 32


def _short(number: int) -> str:
    """A coordinate as PyJWT before 2.10 wrote it: no leading zero bytes."""
    raw = number.to_bytes((number.bit_length() + 7) // 8, "big")
    return jwt.utils.base64url_encode(raw).decode()


async def test_a_key_stored_with_a_short_coordinate_still_signs_and_is_published_whole(
    store: FakeKeyStore, box: SecretBox, clock: Clock
) -> None:
    # What an install that made its key under PyJWT 2.8 holds: the JWK with a short
    # coordinate, and the kid that is its thumbprint. After the upgrade the key must
    # still open (or the gateway would not start) and be published at full length.
    while True:
        private = ec.generate_private_key(ec.SECP256R1())
        numbers = private.public_key().public_numbers()
        if min(numbers.x, numbers.y) < 2**248:
            break
    stored = {"crv": "P-256", "kty": "EC", "x": _short(numbers.x), "y": _short(numbers.y)}
    canonical = json.dumps(stored, separators=(",", ":"), sort_keys=True).encode()
    kid = jwt.utils.base64url_encode(hashlib.sha256(canonical).digest()).decode()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key = SigningKey(
        kid=kid,
        private_pem_encrypted=box.encrypt(pem, KEY_PURPOSE),
        public_jwk=json.dumps(stored, sort_keys=True),
        created=0.0,
        retired=None,
        algorithm="ES256",
    )
    await store.add(key)
    signer = JwtSigner(store, box, issuer=ISSUER, lifetime=300, overlap=DAY, now=clock)
    await signer.start()
    clock.now = time.time()
    token = sign(signer)
    assert kid_of(token) == kid
    (published,) = signer.jwks()["keys"]
    assert published["kid"] == kid
    for name in ("x", "y"):
        assert len(jwt.utils.base64url_decode(published[name])) == 32
    assert verify(token, signer.jwks())["sub"] == "alice"


async def test_a_key_whose_kid_names_another_key_is_refused(
    store: FakeKeyStore, box: SecretBox, clock: Clock
) -> None:
    mine, other = new_signing_key(box, now=0.0), new_signing_key(box, now=0.0)
    await store.add(replace(mine, kid=other.kid))
    signer = JwtSigner(store, box, issuer=ISSUER, lifetime=300, overlap=DAY, now=clock)
    with pytest.raises(SigningError, match="does not match its kid"):
        await signer.start()


async def test_the_kid_is_the_rfc7638_thumbprint_of_the_public_key(signer: JwtSigner) -> None:
    (jwk,) = signer.jwks()["keys"]
    public = {name: jwk[name] for name in ("kty", "crv", "x", "y")}
    assert jwk["kid"] == _rfc7638(public)


def _rfc7638(jwk: dict[str, str]) -> str:
    # An independent computation from the RFC's text (section 3.1).
    import base64
    import hashlib

    text = '{"crv":"%s","kty":"%s","x":"%s","y":"%s"}' % (  # noqa: UP031
        jwk["crv"],
        jwk["kty"],
        jwk["x"],
        jwk["y"],
    )
    return base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()


async def test_a_token_for_another_audience_is_refused(signer: JwtSigner, clock: Clock) -> None:
    clock.now = time.time()
    token = sign(signer, audience="wiki.acme.test")
    with pytest.raises(jwt.InvalidAudienceError):
        verify(token, signer.jwks(), audience="billing.acme.test")


async def test_an_expired_token_is_refused(signer: JwtSigner, clock: Clock) -> None:
    clock.now = time.time() - 301  # signed just over a lifetime ago
    token = sign(signer)
    with pytest.raises(jwt.ExpiredSignatureError):
        jwt.decode(
            token,
            jwt.PyJWK(signer.jwks()["keys"][0]).key,
            algorithms=["ES256"],
            audience="wiki.acme.test",
        )


async def test_a_tampered_token_is_refused(signer: JwtSigner, clock: Clock) -> None:
    clock.now = time.time()
    header, payload, signature = sign(signer).split(".")
    forged_claims = jwt.utils.base64url_decode(payload).replace(b'"alice"', b'"admin"')
    forged = ".".join([header, jwt.utils.base64url_encode(forged_claims).decode(), signature])
    with pytest.raises(jwt.InvalidSignatureError):
        verify(forged, signer.jwks())


async def test_sign_before_start_fails_loudly(store: FakeKeyStore, box: SecretBox) -> None:
    signer = JwtSigner(store, box, issuer=ISSUER)
    with pytest.raises(SigningError):
        sign(signer)


def test_an_overlap_shorter_than_the_lifetime_is_refused(
    store: FakeKeyStore, box: SecretBox
) -> None:
    with pytest.raises(ValueError, match="overlap"):
        JwtSigner(store, box, issuer=ISSUER, lifetime=600, overlap=300)


# --- cache -----------------------------------------------------------------------


async def test_a_cached_token_is_reused_while_half_its_lifetime_remains(
    signer: JwtSigner, clock: Clock
) -> None:
    first = sign(signer, cache_key="s1")
    clock.now += 149
    assert sign(signer, cache_key="s1") == first


async def test_a_cached_token_is_renewed_past_half_its_lifetime(
    signer: JwtSigner, clock: Clock
) -> None:
    first = sign(signer, cache_key="s1")
    clock.now += 150
    renewed = sign(signer, cache_key="s1")
    assert renewed != first
    assert jwt.decode(renewed, options={"verify_signature": False})["iat"] == int(clock.now)
    assert sign(signer, cache_key="s1") == renewed


async def test_the_cache_never_mixes_sessions_audiences_or_claims(signer: JwtSigner) -> None:
    base = sign(signer, cache_key="s1")
    assert sign(signer, cache_key="s2") != base
    assert sign(signer, cache_key="s1", audience="billing.acme.test") != base
    assert sign(signer, cache_key="s1", groups=["staff"]) != base
    assert sign(signer, cache_key="s1", amr=["pwd"]) != base
    assert sign(signer, cache_key="s1", subject="bob") != base
    assert sign(signer, cache_key="s1") == base


async def test_without_a_cache_key_every_call_signs_anew(signer: JwtSigner) -> None:
    # ECDSA signatures are randomised, so two signatures of the same claims differ.
    assert sign(signer) != sign(signer)


async def test_the_cache_is_bounded_and_forgets_the_least_recently_used(
    store: FakeKeyStore, box: SecretBox, clock: Clock
) -> None:
    signer = JwtSigner(store, box, issuer=ISSUER, now=clock, cache_size=2)
    await signer.start()
    one, two = sign(signer, cache_key="s1"), sign(signer, cache_key="s2")
    assert sign(signer, cache_key="s1") == one  # s1 is now the most recently used
    sign(signer, cache_key="s3")  # evicts s2
    assert sign(signer, cache_key="s1") == one
    assert sign(signer, cache_key="s2") != two


async def test_after_a_rotation_cached_tokens_are_resigned_with_the_new_key(
    signer: JwtSigner, store: FakeKeyStore, box: SecretBox, clock: Clock
) -> None:
    old = sign(signer, cache_key="s1")
    new_key = await rotate_keys(store, box, now=clock.now)
    clock.now += PUBLISH_AHEAD + 1
    await signer.refresh()
    fresh = sign(signer, cache_key="s1")
    assert fresh != old
    assert jwt.get_unverified_header(fresh)["kid"] == new_key.kid


# --- keys --------------------------------------------------------------------------


async def test_start_creates_one_key_and_a_second_start_reuses_it(
    store: FakeKeyStore, box: SecretBox, clock: Clock
) -> None:
    first = JwtSigner(store, box, issuer=ISSUER, now=clock)
    await first.start()
    second = JwtSigner(store, box, issuer=ISSUER, now=clock)
    await second.start()
    assert len(store.added) == 1
    assert kids(first.jwks()) == kids(second.jwks()) == {store.added[0].kid}


async def test_two_keys_created_by_a_start_race_are_both_published_and_all_sign_with_one(
    store: FakeKeyStore, box: SecretBox, clock: Clock
) -> None:
    # Both instances found the store empty and each created a key.
    await store.add(new_signing_key(box, now=clock.now))
    await store.add(new_signing_key(box, now=clock.now))
    a = JwtSigner(store, box, issuer=ISSUER, now=clock)
    b = JwtSigner(store, box, issuer=ISSUER, now=clock)
    await a.start()
    await b.start()
    assert len(kids(a.jwks())) == 2
    kid_a = jwt.get_unverified_header(sign(a))["kid"]
    kid_b = jwt.get_unverified_header(sign(b))["kid"]
    assert kid_a == kid_b


async def test_the_private_key_is_never_stored_unencrypted(
    signer: JwtSigner, store: FakeKeyStore, box: SecretBox, clock: Clock
) -> None:
    await rotate_keys(store, box, now=clock.now)
    assert len(store.added) == 2
    for key in store.added:
        assert b"PRIVATE KEY" not in key.private_pem_encrypted
        assert b"PRIVATE" not in key.public_jwk.encode()
        assert '"d"' not in key.public_jwk  # no private EC member in the stored JWK
        pem = box.decrypt(key.private_pem_encrypted, KEY_PURPOSE)
        assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
        # and the blob opens only as a JWT key, not as some other secret
        with pytest.raises(SecretBoxError):
            box.decrypt(key.private_pem_encrypted, "totp-seed")


async def test_a_wrong_encryption_key_fails_loudly_at_start(
    signer: JwtSigner, store: FakeKeyStore, clock: Clock
) -> None:
    other = JwtSigner(store, SecretBox("w" * 40), issuer=ISSUER, now=clock)
    with pytest.raises(SigningError, match="cannot decrypt JWT signing key"):
        await other.start()
    assert len(store.added) == 1  # and it did not paper over it with a key of its own


async def test_signing_decrypts_the_key_once_not_per_token(
    store: FakeKeyStore, clock: Clock
) -> None:
    class CountingBox(SecretBox):
        decrypts = 0

        def decrypt(self, blob: bytes, purpose: str) -> bytes:
            CountingBox.decrypts += 1
            return super().decrypt(blob, purpose)

    counting = CountingBox(BOX_KEY)
    signer = JwtSigner(store, counting, issuer=ISSUER, now=clock)
    await signer.start()
    for _ in range(5):
        sign(signer)
        await signer.refresh()
    assert CountingBox.decrypts == 1


async def test_an_unchanged_refresh_is_one_store_read(
    signer: JwtSigner, store: FakeKeyStore
) -> None:
    before = store.list_calls
    await signer.refresh()
    assert store.list_calls == before + 1


async def test_rotation_keeps_the_old_key_published_for_the_overlap_then_drops_it(
    signer: JwtSigner, store: FakeKeyStore, box: SecretBox, clock: Clock
) -> None:
    clock.now = time.time()
    (old_kid,) = kids(signer.jwks())
    old_token = sign(signer)
    new_key = await rotate_keys(store, box, now=clock.now)
    await signer.refresh()
    assert kids(signer.jwks()) == {old_kid, new_key.kid}
    # A token the old key signed just before the rotation still verifies.
    verify(old_token, signer.jwks())
    clock.now += PUBLISH_AHEAD + 1
    await signer.refresh()
    assert kid_of(sign(signer)) == new_key.kid

    retired = store.rows[old_kid].retired
    assert retired == new_key.created + PUBLISH_AHEAD  # when the new key took over
    clock.now = retired + DAY - 1
    await signer.refresh()
    assert kids(signer.jwks()) == {old_kid, new_key.kid}
    assert old_kid in kids(json.loads(signer.jwks_json()))

    clock.now += 2
    assert kids(signer.jwks()) == {new_key.kid}  # even before the next refresh
    assert kids(json.loads(signer.jwks_json())) == {new_key.kid}
    await signer.refresh()
    assert kids(signer.jwks()) == {new_key.kid}


async def test_rotation_leaves_exactly_one_active_key(
    signer: JwtSigner, store: FakeKeyStore, box: SecretBox, clock: Clock
) -> None:
    for step in range(3):
        await rotate_keys(store, box, now=clock.now + step)
    active = [k for k in store.rows.values() if k.retired is None]
    assert len(active) == 1
    assert active[0].kid == store.added[-1].kid


async def test_a_rotation_at_the_same_instant_as_the_last_one_still_rotates(
    signer: JwtSigner, store: FakeKeyStore, box: SecretBox, clock: Clock
) -> None:
    for _ in range(4):  # kids are random, so a tie broken by kid would fail about half the time
        new_key = await rotate_keys(store, box, now=clock.now)
    clock.now += PUBLISH_AHEAD + 1
    await signer.refresh()
    assert kid_of(sign(signer)) == new_key.kid
    assert [k.kid for k in store.rows.values() if k.retired is None] == [new_key.kid]


async def test_two_concurrent_rotations_leave_exactly_one_active_key(
    signer: JwtSigner, store: FakeKeyStore, box: SecretBox, clock: Clock
) -> None:
    a, b = await asyncio.gather(
        rotate_keys(store, box, now=clock.now), rotate_keys(store, box, now=clock.now)
    )
    active = [k for k in store.rows.values() if k.retired is None]
    assert [k.kid for k in active] in ([a.kid], [b.kid])
    await signer.refresh()
    assert kids(signer.jwks()) == set(store.rows)  # every key still published


async def test_a_rotation_with_the_wrong_encryption_key_is_refused_and_changes_nothing(
    signer: JwtSigner, store: FakeKeyStore, clock: Clock
) -> None:
    before = dict(store.rows)
    with pytest.raises(SigningError, match="cannot decrypt"):
        await rotate_keys(store, SecretBox("w" * 40), now=clock.now + 1)
    assert store.rows == before


async def test_jwks_json_is_cached_until_the_key_set_changes(
    signer: JwtSigner, store: FakeKeyStore, box: SecretBox, clock: Clock
) -> None:
    first = signer.jwks_json()
    await signer.refresh()
    assert signer.jwks_json() is first
    await rotate_keys(store, box, now=clock.now)
    assert signer.jwks_json() is first  # not refreshed yet
    await signer.refresh()
    assert signer.jwks_json() is not first
    assert len(json.loads(signer.jwks_json())["keys"]) == 2


async def test_a_failed_refresh_keeps_the_current_key_set(
    signer: JwtSigner, store: FakeKeyStore, clock: Clock
) -> None:
    # A key another instance made with a different encryption key (a misconfiguration).
    await store.add(new_signing_key(SecretBox("w" * 40), now=clock.now + 1))
    before = signer.jwks()
    with pytest.raises(SigningError):
        await signer.refresh()
    assert signer.jwks() == before
    sign(signer)


async def test_sign_micro_measurement(signer: JwtSigner) -> None:
    """Not an assertion: prints what sign() costs, cold and from the cache."""
    n = 300
    start = time.perf_counter()
    for i in range(n):
        sign(signer, cache_key=f"cold{i}")
    cold = (time.perf_counter() - start) / n * 1e6
    start = time.perf_counter()
    for i in range(n):
        sign(signer, cache_key=f"cold{i}")
    cached = (time.perf_counter() - start) / n * 1e6
    print(f"\nsign(): cold {cold:.1f} µs, cached {cached:.1f} µs")


# --- rotation: published before it signs ----------------------------------------------


async def test_a_rotated_in_key_is_published_at_once_and_signs_only_after_publish_ahead(
    signer: JwtSigner, store: FakeKeyStore, box: SecretBox, clock: Clock
) -> None:
    (old_kid,) = kids(signer.jwks())
    clock.now += 1
    new_key = await rotate_keys(store, box, now=clock.now)
    await signer.refresh()
    assert kids(signer.jwks()) == {old_kid, new_key.kid}
    assert kid_of(sign(signer)) == old_kid
    clock.now += PUBLISH_AHEAD - 1
    await signer.refresh()
    assert kid_of(sign(signer)) == old_kid
    # The store did not change: the switch comes from the schedule alone.
    clock.now += 1
    await signer.refresh()
    assert kid_of(sign(signer)) == new_key.kid
    assert kids(signer.jwks()) == {old_kid, new_key.kid}  # the old one, for the overlap


async def test_every_token_verifies_at_every_instance_and_every_cache_through_a_rotation(
    store: FakeKeyStore, box: SecretBox, clock: Clock
) -> None:
    """Two instances refreshing out of step, and an upstream that refetches the JWKS only
    when its copy is JWKS_MAX_AGE old (no refetch on an unknown kid): not one token
    signed by either instance fails, before, during or after two rotations."""
    a = JwtSigner(store, box, issuer=ISSUER, now=clock)
    b = JwtSigner(store, box, issuer=ISSUER, now=clock)
    await a.start()
    await b.start()
    cached = {"from": a, "jwks": a.jwks(), "at": clock.now}
    start = clock.now
    rotations = {start + 100.0, start + 100.0 + PUBLISH_AHEAD / 2, start + 1000.0}
    signed_kids = set()
    while clock.now < start + 1000.0 + 2 * PUBLISH_AHEAD:
        clock.now += 1.0
        if clock.now in rotations:
            await rotate_keys(store, box, now=clock.now)
        # Each instance reads the store every REFRESH_INTERVAL, b half an interval late.
        if (clock.now - start) % REFRESH_INTERVAL == 0:
            await a.refresh()
        if (clock.now - start) % REFRESH_INTERVAL == REFRESH_INTERVAL / 2:
            await b.refresh()
        if clock.now - cached["at"] >= JWKS_MAX_AGE:
            # The upstream's fetch lands on whichever instance the balancer picks.
            source = b if cached["from"] is a else a
            cached = {"from": source, "jwks": source.jwks(), "at": clock.now}
        for instance in (a, b):
            token = sign(instance)
            signed_kids.add(kid_of(token))
            assert verifies_at(token, a.jwks(), clock.now), clock.now - start
            assert verifies_at(token, b.jwks(), clock.now), clock.now - start
            assert verifies_at(token, cached["jwks"], clock.now), clock.now - start
    assert len(signed_kids) == 4  # the start key and three rotations, all of them used


async def test_withdrawing_signs_with_the_new_key_at_once_and_drops_the_old_keys(
    signer: JwtSigner, store: FakeKeyStore, box: SecretBox, clock: Clock
) -> None:
    pending = await rotate_keys(store, box, now=clock.now)  # a scheduled one, not yet signing
    leaked_token = sign(signer)
    fresh = await rotate_keys(store, box, now=clock.now + 1, withdraw=True)
    await signer.refresh()
    assert set(store.rows) == {fresh.kid}
    assert kids(signer.jwks()) == {fresh.kid}
    assert kid_of(sign(signer)) == fresh.kid
    assert not verifies_at(leaked_token, signer.jwks(), clock.now + 1)
    assert pending.kid not in kids(signer.jwks())
    # and later the schedule has nothing left to switch to
    clock.now += PUBLISH_AHEAD + DAY
    await signer.refresh()
    assert kid_of(sign(signer)) == fresh.kid


async def test_a_second_rotation_before_the_first_signs_keeps_one_signer_and_the_order(
    signer: JwtSigner, store: FakeKeyStore, box: SecretBox, clock: Clock
) -> None:
    (first,) = kids(signer.jwks())
    second = await rotate_keys(store, box, now=clock.now)
    third = await rotate_keys(store, box, now=clock.now + 10)
    expected = [
        (clock.now + 5, first),
        (clock.now + PUBLISH_AHEAD + 5, second.kid),
        (clock.now + 10 + PUBLISH_AHEAD + 1, third.kid),
    ]
    for moment, kid in expected:
        clock.now = moment
        await signer.refresh()
        assert kid_of(sign(signer)) == kid
        assert kids(signer.jwks()) == {first, second.kid, third.kid}


# --- review: races and lags around the schedule --------------------------------------


async def test_instances_starting_together_never_sign_with_a_key_another_lacks(
    store: FakeKeyStore, box: SecretBox
) -> None:
    """B reads the clock first but its write is slower than all of A's start."""
    clock_a, clock_b = Clock(1_700_000_000.5), Clock(1_700_000_000.0)
    a = JwtSigner(store, box, issuer=ISSUER, now=clock_a)
    b = JwtSigner(store, box, issuer=ISSUER, now=clock_b)
    b_write = asyncio.Event()
    store.hold_next_add = b_write
    b_start = asyncio.ensure_future(b.start())
    await asyncio.sleep(0.01)  # B found the store empty and is writing its key (held)
    await a.start()
    b_write.set()
    await b_start
    assert len(store.rows) == 1
    assert kid_of(sign(b)) == kid_of(sign(a))
    assert kids(a.jwks()) == kids(b.jwks()) == set(store.rows)


async def test_withdrawing_needs_no_old_key_opened(store: FakeKeyStore, clock: Clock) -> None:
    """The likeliest leak is the database with the encryption key: the operator sets a
    new encryption key and withdraws; the old keys are deleted unopened."""
    leaked_box, new_box = SecretBox("leaked" * 8), SecretBox("fresh!" * 8)
    old = JwtSigner(store, leaked_box, issuer=ISSUER, now=clock)
    await old.start()
    (leaked,) = kids(old.jwks())
    with pytest.raises(SigningError, match="cannot decrypt"):
        await rotate_keys(store, new_box, now=clock.now + 1)  # a plain rotation refuses
    fresh = await rotate_keys(store, new_box, now=clock.now + 1, withdraw=True)
    assert set(store.rows) == {fresh.kid}
    gateway = JwtSigner(store, new_box, issuer=ISSUER, now=clock)
    await gateway.start()
    assert kid_of(sign(gateway)) == fresh.kid
    assert leaked not in kids(gateway.jwks())


async def test_an_instance_that_cannot_open_the_replacement_stops_signing_with_the_withdrawn(
    store: FakeKeyStore, clock: Clock
) -> None:
    leaked_box, new_box = SecretBox("leaked" * 8), SecretBox("fresh!" * 8)
    not_updated = JwtSigner(store, leaked_box, issuer=ISSUER, now=clock)
    await not_updated.start()
    sign(not_updated)
    await rotate_keys(store, new_box, now=clock.now + 1, withdraw=True)
    with pytest.raises(SigningError):
        await not_updated.refresh()
    with pytest.raises(SigningError, match="withdrawn"):
        sign(not_updated)
    with pytest.raises(SigningError):
        not_updated.jwks_json()


async def test_two_concurrent_withdrawals_leave_one_key(
    signer: JwtSigner, store: FakeKeyStore, box: SecretBox, clock: Clock
) -> None:
    first, second = await asyncio.gather(
        rotate_keys(store, box, now=clock.now + 1, withdraw=True),
        rotate_keys(store, box, now=clock.now + 1, withdraw=True),
    )
    assert len(store.rows) == 1 and set(store.rows) <= {first.kid, second.kid}


async def test_a_jwks_copy_is_never_cached_past_a_key_it_lacks_starting_to_sign(
    store: FakeKeyStore, box: SecretBox, clock: Clock
) -> None:
    """A reads the keys every 30 s. B read them at T0 and then not for 105 s (its store
    was unreachable, say), then every 30 s again. An upstream takes a copy from B every
    second and keeps it for the max-age B gave it; whenever A signs, every copy still
    kept has its kid."""
    a = JwtSigner(store, box, issuer=ISSUER, now=clock)
    b = JwtSigner(store, box, issuer=ISSUER, now=clock)
    await a.start()
    await b.start()
    start = clock.now
    new = await rotate_keys(store, box, now=start + 1)
    copies: list[tuple[set[str], float]] = []  # (kids, kept until)
    while clock.now < new.created + PUBLISH_AHEAD + 60:
        clock.now += 1
        if (clock.now - start) % REFRESH_INTERVAL == 0:
            await a.refresh()
        if clock.now - start >= 105 and (clock.now - start - 105) % REFRESH_INTERVAL == 0:
            await b.refresh()
        copies.append((kids(b.jwks()), clock.now + b.jwks_max_age()))
        kid = kid_of(sign(a))
        for copy_kids, until in copies:
            assert until <= clock.now or kid in copy_kids, clock.now - start
    assert kid_of(sign(a)) == new.kid
    assert b.jwks_max_age() == JWKS_MAX_AGE  # back to normal once B reads again


async def test_key_reads_keep_their_pace_however_long_one_takes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    interval = 0.05
    monkeypatch.setattr(runtime_module, "REFRESH_INTERVAL", interval)
    loop = asyncio.get_running_loop()
    started: list[float] = []

    class SlowSigner:
        async def refresh(self) -> None:
            started.append(loop.time())
            if len(started) == 3:
                await asyncio.sleep(interval * 0.8)  # one slow read
            if len(started) == 5:
                raise SigningError("the store is down")  # and one failed read

    task = asyncio.ensure_future(runtime_module._follow_keys(SlowSigner()))  # type: ignore[arg-type]
    await asyncio.sleep(interval * 9.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(started) >= 8
    gaps = [later - earlier for earlier, later in itertools.pairwise(started)]
    assert max(gaps) < interval * 1.5, gaps  # the slow read did not push the next one back


async def test_a_signer_that_never_read_the_keys_gives_its_jwks_no_max_age(
    store: FakeKeyStore, box: SecretBox, clock: Clock
) -> None:
    assert JwtSigner(store, box, issuer=ISSUER, now=clock).jwks_max_age() == 0
