"""The identity JWT (DESIGN section 5): ES256 tokens for upstreams, and the JWKS to check them.

Keys live in the `KeyStore`, private halves encrypted with the `SecretBox`, so every
gateway instance signs with the same key and publishes the same set. The hot path
(`sign`) is synchronous and never touches the store or decrypts anything: `start()`
and `refresh()` load the key set into memory; the server calls `refresh()` every
few seconds to pick up a rotation done by another instance or by `authgate keys rotate`.

Choices:
- no `nbf`: it would equal `iat` (we never issue future-dated tokens), and an
  upstream whose clock lags by a second would refuse a fresh token for nothing;
- `email` and `name` are left out when unknown rather than sent as null, as OIDC does;
- a retired key stays published for `overlap` (at least `lifetime`), so every token it
  signed can be verified until it expires, whatever instance or cache it came from;
- a rotated-in key is published `PUBLISH_AHEAD` before it signs, so no upstream ever
  meets a kid that its copy of the JWKS (cached up to `JWKS_MAX_AGE`) or another
  instance (which reads the keys every `REFRESH_INTERVAL`) does not know yet. Only a
  rotation that withdraws leaked keys skips the wait: it signs with the new key at once.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from gateway.errors import AuthgateError
from gateway.secretbox import SecretBox, SecretBoxError
from gateway.stores.base import KeyStore, SigningKey

__all__ = [
    "ALGORITHM",
    "DEFAULT_LIFETIME",
    "DEFAULT_OVERLAP",
    "JWKS_MAX_AGE",
    "KEY_PURPOSE",
    "PUBLISH_AHEAD",
    "REFRESH_INTERVAL",
    "JwtSigner",
    "SigningError",
    "new_signing_key",
    "rotate_keys",
    "signing_key",
]

log = logging.getLogger("authgate.signing")

ALGORITHM = "ES256"
KEY_PURPOSE = "jwt-signing-key"  # SecretBox associated data: the blob opens only as a JWT key
DEFAULT_LIFETIME = 300.0
DEFAULT_OVERLAP = 86400.0
DEFAULT_CACHE_SIZE = 10_000
REFRESH_INTERVAL = 30.0  # seconds between two reads of the key set by a running gateway
JWKS_MAX_AGE = 300  # seconds; Cache-Control max-age of /.authgate/jwks.json
# Every instance has read the new key (twice over, for clock skew) and every JWKS cache
# that honours max-age has expired by the time the key starts signing.
PUBLISH_AHEAD = JWKS_MAX_AGE + 2 * REFRESH_INTERVAL
_MIN_STEP = 0.001  # seconds; well above float resolution at today's epoch times

Clock = Callable[[], float]
Jwk = dict[str, str]


class SigningError(AuthgateError):
    """The signing keys cannot be used: undecryptable (wrong encryption key), corrupt,
    or not loaded yet."""


# --- keys ----------------------------------------------------------------------


def _public_jwk(public_key: ec.EllipticCurvePublicKey) -> Jwk:
    """The RFC 7517 members of an EC public key (kty, crv, x, y), as PyJWT renders them,
    each coordinate at its full length."""
    rendered = ECAlgorithm.to_jwk(public_key, as_dict=True)
    return _full_coordinates({name: str(rendered[name]) for name in ("kty", "crv", "x", "y")})


# RFC 7518 §6.2.1.2: a P-256 coordinate is always 32 bytes, leading zero bytes included;
# strict JOSE libraries refuse a shorter one. PyJWT before 2.10 left the zero bytes out
# (one key in 128 has a coordinate below 2**248), and keys stored then keep that form:
# their kid is the thumbprint of it.
_COORDINATE_BYTES = 32


def _refit_coordinates(jwk: Jwk, fit: Callable[[bytes], bytes]) -> Jwk:
    """`jwk` with x and y (base64url) decoded, passed through `fit`, encoded again."""
    out = dict(jwk)
    for name in ("x", "y"):
        raw = base64.urlsafe_b64decode(jwk[name] + "=" * (-len(jwk[name]) % 4))
        out[name] = base64.urlsafe_b64encode(fit(raw)).rstrip(b"=").decode()
    return out


def _full_coordinates(jwk: Jwk) -> Jwk:
    """`jwk` with x and y at 32 bytes (a key stored by an older PyJWT may lack zeros)."""
    return _refit_coordinates(jwk, lambda raw: raw.rjust(_COORDINATE_BYTES, b"\0"))


def _short_coordinates(jwk: Jwk) -> Jwk:
    """`jwk` as PyJWT before 2.10 rendered it: x and y without their leading zero bytes."""
    return _refit_coordinates(jwk, lambda raw: raw.lstrip(b"\0") or b"\0")


def _thumbprint(jwk: Jwk) -> str:
    """RFC 7638 thumbprint: SHA-256 of the required members, sorted, no whitespace."""
    canonical = json.dumps(
        {name: jwk[name] for name in ("crv", "kty", "x", "y")},
        separators=(",", ":"),
        sort_keys=True,
    )
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def new_signing_key(box: SecretBox, *, now: float) -> SigningKey:
    """A fresh P-256 key, its private half encrypted (never stored in clear)."""
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    jwk = _public_jwk(private.public_key())
    return SigningKey(
        kid=_thumbprint(jwk),
        private_pem_encrypted=box.encrypt(pem, KEY_PURPOSE),
        public_jwk=json.dumps(jwk, sort_keys=True),
        created=now,
        retired=None,
        algorithm=ALGORITHM,
    )


def _open_private_key(key: SigningKey, box: SecretBox) -> ec.EllipticCurvePrivateKey:
    """Decrypt and load a stored private key, checking that it is the key its kid names
    (a row whose halves do not match would sign tokens nobody can verify)."""
    try:
        pem = box.decrypt(key.private_pem_encrypted, KEY_PURPOSE)
    except SecretBoxError as exc:
        raise SigningError(
            f"cannot decrypt JWT signing key {key.kid}: {exc}"
            " (is secrets.encryption_key the one the key was created with?)"
        ) from None
    private = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(private, ec.EllipticCurvePrivateKey) or not isinstance(
        private.curve, ec.SECP256R1
    ):
        raise SigningError(f"JWT signing key {key.kid} is not a P-256 key")
    jwk = _public_jwk(private.public_key())
    # A key made under PyJWT before 2.10 was named by the thumbprint of its short form.
    if key.kid not in (_thumbprint(jwk), _thumbprint(_short_coordinates(jwk))):
        raise SigningError(f"JWT signing key {key.kid}: private key does not match its kid")
    return private


def _newest_first(key: SigningKey) -> tuple[float, str]:
    # The kid breaks ties, so every instance picks the same key from the same set.
    return (key.created, key.kid)


def signing_key(keys: Sequence[SigningKey], now: float) -> SigningKey | None:
    """The key that signs at `now`: the newest one neither retired nor younger than
    PUBLISH_AHEAD. While no key is that old (the first key of all, keys made by
    instances starting together, the key a withdrawal left), the oldest key not retired:
    the one that signed first goes on signing until its successor comes of age."""
    live = [key for key in keys if key.retired is None or key.retired > now]
    ready = [key for key in live if key.created + PUBLISH_AHEAD <= now]
    if ready:
        return max(ready, key=_newest_first)
    return min(live, key=_newest_first, default=None)


def _next_switch(keys: Sequence[SigningKey], now: float) -> float:
    """When `signing_key` may answer differently for the same keys: a key comes of age
    or one is retired."""
    moments = [key.created + PUBLISH_AHEAD for key in keys]
    moments += [key.retired for key in keys if key.retired is not None]
    return min((moment for moment in moments if moment > now), default=math.inf)


def _published_jwk(key: SigningKey) -> Jwk:
    stored = json.loads(key.public_jwk)
    jwk = _full_coordinates({name: str(stored[name]) for name in ("kty", "crv", "x", "y")})
    jwk.update(kid=key.kid, alg=key.algorithm, use="sig")
    return jwk


async def rotate_keys(
    keys: KeyStore, box: SecretBox, *, now: float, withdraw: bool = False
) -> SigningKey:
    """Add a new signing key. It is published at once and signs from PUBLISH_AHEAD on;
    every older active key is retired at that moment (and stays published for the
    overlap after it). With `withdraw` (the old keys may have leaked), the old keys are
    deleted instead, atomically with the new key's arrival: the new key signs at once
    and tokens the old ones signed stop verifying. Without `withdraw`, raises
    SigningError, changing nothing, when `box` cannot open the current keys (a wrong
    encryption key); a withdrawal needs no old key opened, so it also serves to start
    afresh under a new encryption key. Two concurrent rotations leave exactly one active
    key (each retires only keys older than its own, and "older" is a total order); two
    concurrent withdrawals leave one key, the last one's."""
    # The new key must be strictly the newest even when the clock did not move (or this
    # host's clock lags the one that made the current key); a tie would be broken by kid
    # and could leave the old key signing.
    current = await keys.list(retired_after=now)
    for key in current:
        if key.retired is None and not withdraw:
            # A rotation with the wrong encryption key would leave every instance unable to
            # open the new key while the old one is retired: refuse before changing anything.
            _open_private_key(key, box)
    newest = max((key.created for key in current), default=now)
    new = new_signing_key(box, now=now if now > newest else newest + _MIN_STEP)
    if withdraw:
        await keys.replace_all(new)
        log.warning("JWT signing keys withdrawn; new kid %s signs now", new.kid)
        return new
    await keys.add(new)
    takes_over = new.created + PUBLISH_AHEAD
    for key in await keys.list(retired_after=now):
        if key.retired is None and _newest_first(key) < _newest_first(new):
            await keys.retire(key.kid, takes_over)
    log.info("JWT signing key rotated: new kid %s, signing from %.0f", new.kid, takes_over)
    return new


# --- the signer ------------------------------------------------------------------


@dataclass(frozen=True)
class _KeySet:
    """What one load of the store gave: the key to sign with and the keys to publish."""

    signing_kid: str
    private_key: ec.EllipticCurvePrivateKey
    published: tuple[SigningKey, ...]
    fingerprint: tuple[tuple[str, float | None], ...]  # (kid, retired): changes ⇔ set changes
    switch_at: float  # from then on another key may be the one to sign with


@dataclass(frozen=True, slots=True)  # one per cached token: no per-instance __dict__
class _CachedToken:
    token: str
    kid: str
    renew_at: float  # past this, less than half the lifetime is left


CacheKey = tuple[str, str, str, str | None, str | None, tuple[str, ...], tuple[str, ...]]


class JwtSigner:
    """Signs identity JWTs with the newest active key and publishes the JWKS."""

    def __init__(
        self,
        keys: KeyStore,
        box: SecretBox,
        *,
        issuer: str,
        lifetime: float = DEFAULT_LIFETIME,
        overlap: float = DEFAULT_OVERLAP,
        now: Clock = time.time,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        if lifetime < 1:
            raise ValueError("the JWT lifetime must be at least one second")
        if overlap < lifetime:
            # Otherwise a token could outlive the publication of the key that signed it.
            raise ValueError("the key overlap must be at least the JWT lifetime")
        self._keys = keys
        self._box = box
        self._issuer = issuer
        self._lifetime = math.ceil(lifetime)
        self._overlap = overlap
        self._now = now
        self._cache_size = cache_size
        self._cache: OrderedDict[CacheKey, _CachedToken] = OrderedDict()
        self._set: _KeySet | None = None
        # Decrypted private keys by kid, so a refresh that changes nothing decrypts nothing.
        self._private: dict[str, ec.EllipticCurvePrivateKey] = {}
        self._jwks_json: bytes | None = None
        self._jwks_until = math.inf
        self._read_at = -math.inf  # when the key set was last read from the store

    # -- loading ------------------------------------------------------------------

    async def start(self) -> None:
        """Load the keys, creating the first one when the store has no active key.
        Raises SigningError when the key cannot be decrypted (wrong encryption key)."""
        await self.refresh()

    async def refresh(self) -> None:
        """Re-read the key set (another instance may have rotated). One store query when
        nothing changed; on any error the previous key set stays in use."""
        now = self._now()
        stored = await self._keys.list(retired_after=now - self._overlap)
        if not any(key.retired is None for key in stored):
            # Of instances starting together on an empty store, one adds its key and
            # the others find it: none signs with a key the others do not publish.
            created = new_signing_key(self._box, now=now)
            if await self._keys.add_first(created, now):
                log.info("JWT signing key created: kid %s", created.kid)
            stored = await self._keys.list(retired_after=now - self._overlap)
        self._read_at = now
        fingerprint = tuple(sorted((key.kid, key.retired) for key in stored))
        if (
            self._set is not None
            and self._set.fingerprint == fingerprint
            and now < self._set.switch_at
        ):
            return
        signing = signing_key(stored, now)
        try:
            if signing is None:
                raise SigningError("the key store has no active JWT signing key")
            # Every key that signs now or may sign later is opened here, so a key this
            # instance cannot open fails the refresh when published, not when it is due.
            private = {
                key.kid: self._private.get(key.kid) or _open_private_key(key, self._box)
                for key in stored
                if key.retired is None or key.retired > now
            }
        except SigningError:
            if self._set is not None and self._set.signing_kid not in {k.kid for k in stored}:
                # The key in use was withdrawn (it may have leaked): stop signing with it
                # rather than go on until this instance can open the new one.
                log.error("the JWT signing key in use was withdrawn; signing stops")
                self._set, self._private, self._jwks_json = None, {}, None
            raise
        self._private = private
        self._set = _KeySet(
            signing_kid=signing.kid,
            private_key=private[signing.kid],
            published=tuple(sorted(stored, key=_newest_first, reverse=True)),
            fingerprint=fingerprint,
            switch_at=_next_switch(stored, now),
        )
        self._jwks_json = None

    def _key_set(self) -> _KeySet:
        if self._set is None:
            raise SigningError(
                "no JWT signing key in use: JwtSigner.start() was not awaited, or the key"
                " in use was withdrawn and the new one cannot be opened"
            )
        return self._set

    # -- signing ------------------------------------------------------------------

    def sign(
        self,
        *,
        audience: str,
        subject: str,
        email: str | None,
        name: str | None,
        groups: Sequence[str],
        amr: Sequence[str],
        cache_key: str | None = None,
    ) -> str:
        """An ES256 JWT for one upstream (`audience`). With `cache_key` (the session id
        hash), the same token is handed out again while at least half its lifetime is
        left, so a busy session costs one signature per half-lifetime per route."""
        key_set = self._key_set()
        now = self._now()
        groups_t, amr_t = tuple(groups), tuple(amr)
        lookup: CacheKey | None = None
        if cache_key is not None:
            lookup = (cache_key, audience, subject, email, name, groups_t, amr_t)
            hit = self._cache.get(lookup)
            if hit is not None and now < hit.renew_at and hit.kid == key_set.signing_kid:
                self._cache.move_to_end(lookup)
                return hit.token
        iat = int(now)
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "aud": audience,
            "sub": subject,
            "groups": list(groups_t),
            "amr": list(amr_t),
            "iat": iat,
            "exp": iat + self._lifetime,
        }
        if email is not None:
            claims["email"] = email
        if name is not None:
            claims["name"] = name
        token = jwt.encode(
            claims, key_set.private_key, algorithm=ALGORITHM, headers={"kid": key_set.signing_kid}
        )
        if lookup is not None:
            self._cache[lookup] = _CachedToken(token, key_set.signing_kid, iat + self._lifetime / 2)
            self._cache.move_to_end(lookup)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return token

    # -- publishing ---------------------------------------------------------------

    def jwks(self) -> dict[str, list[Jwk]]:
        """The JWK Set: active keys, and keys retired less than `overlap` ago."""
        cutoff = self._now() - self._overlap
        return {
            "keys": [
                _published_jwk(key)
                for key in self._key_set().published
                if key.retired is None or key.retired > cutoff
            ]
        }

    def jwks_max_age(self) -> int:
        """How long a copy of the JWKS served now may be cached. A key added after our
        last read signs PUBLISH_AHEAD after it at the earliest; less one refresh
        interval for clocks that disagree, that is how long the copy stays complete.
        Reads every REFRESH_INTERVAL keep it at JWKS_MAX_AGE; when they lag (a store
        fault), it shrinks, down to 0."""
        left = self._read_at + PUBLISH_AHEAD - REFRESH_INTERVAL - self._now()
        return 0 if left <= 0 else min(JWKS_MAX_AGE, math.floor(left))

    def jwks_json(self) -> bytes:
        """`jwks()` as the body of `/.authgate/jwks.json`, rebuilt only when the set changes
        (a refresh saw a new set, or a retired key's overlap ran out)."""
        key_set = self._key_set()
        now = self._now()
        if self._jwks_json is None or now >= self._jwks_until:
            self._jwks_json = json.dumps(self.jwks(), separators=(",", ":")).encode()
            self._jwks_until = min(
                (
                    key.retired + self._overlap
                    for key in key_set.published
                    if key.retired is not None and key.retired + self._overlap > now
                ),
                default=math.inf,
            )
        return self._jwks_json
