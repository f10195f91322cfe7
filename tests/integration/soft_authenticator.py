"""A software WebAuthn authenticator for tests: real ES256 keys, real authenticator
data, `none` attestation, real signatures — and knobs to misbehave.

It answers the JSON options our endpoints send (the shape `options_to_json` makes) with
the JSON a browser posts back (`PublicKeyCredential` serialised as in `webauthn.js`).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import struct
from base64 import urlsafe_b64decode, urlsafe_b64encode
from dataclasses import dataclass, field
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

UP, UV, BE, BS, AT = 0x01, 0x04, 0x08, 0x10, 0x40


def b64url(data: bytes) -> str:
    return urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    return urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class SoftCredential:
    credential_id: bytes
    key: ec.EllipticCurvePrivateKey
    rp_id: str
    user_handle: bytes
    sign_count: int = 0


@dataclass
class SoftAuthenticator:
    """Holds resident credentials per RP; `counter_step=0` models a counterless key."""

    user_verifying: bool = True
    backup_eligible: bool = False
    counter_step: int = 1
    aaguid: bytes = bytes(16)
    credentials: list[SoftCredential] = field(default_factory=list)

    def _flags(self, *, attested: bool) -> int:
        flags = UP | (UV if self.user_verifying else 0)
        if self.backup_eligible:
            flags |= BE | BS
        return flags | (AT if attested else 0)

    # --- navigator.credentials.create ------------------------------------------------

    def create(
        self, options: dict[str, Any] | str, origin: str, *, rp_id: str | None = None
    ) -> dict[str, Any]:
        """A registration response; `rp_id` overrides the RP the authenticator signs for."""
        opts = json.loads(options) if isinstance(options, str) else options
        rp = rp_id or opts["rp"]["id"]
        excluded = {unb64url(c["id"]) for c in opts.get("excludeCredentials", [])}
        if any(c.credential_id in excluded for c in self.credentials if c.rp_id == rp):
            raise RuntimeError("InvalidStateError: an excluded credential is on this device")
        key = ec.generate_private_key(ec.SECP256R1())
        credential = SoftCredential(
            credential_id=secrets.token_bytes(32),
            key=key,
            rp_id=rp,
            user_handle=unb64url(opts["user"]["id"]),
        )
        numbers = key.public_key().public_numbers()
        cose_key = cbor2.dumps(
            {
                1: 2,  # kty: EC2
                3: -7,  # alg: ES256
                -1: 1,  # crv: P-256
                -2: numbers.x.to_bytes(32, "big"),
                -3: numbers.y.to_bytes(32, "big"),
            }
        )
        attested = (
            self.aaguid
            + struct.pack(">H", len(credential.credential_id))
            + credential.credential_id
            + cose_key
        )
        auth_data = (
            hashlib.sha256(rp.encode()).digest()
            + bytes([self._flags(attested=True)])
            + struct.pack(">I", credential.sign_count)
            + attested
        )
        client_data = _client_data("webauthn.create", opts["challenge"], origin)
        attestation = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth_data})
        self.credentials.append(credential)
        return {
            "id": b64url(credential.credential_id),
            "rawId": b64url(credential.credential_id),
            "type": "public-key",
            "response": {
                "clientDataJSON": b64url(client_data),
                "attestationObject": b64url(attestation),
                "transports": ["internal"],
            },
            "clientExtensionResults": {},
            "authenticatorAttachment": "platform",
        }

    # --- navigator.credentials.get ---------------------------------------------------

    def get(
        self,
        options: dict[str, Any] | str,
        origin: str,
        *,
        rp_id: str | None = None,
        credential: SoftCredential | None = None,
        sign_count: int | None = None,
    ) -> dict[str, Any]:
        """An assertion with the first credential allowed for the RP (or `credential`).
        `rp_id` signs for another RP; `sign_count` forces the counter (a clone)."""
        opts = json.loads(options) if isinstance(options, str) else options
        rp = rp_id or opts["rpId"]
        chosen = credential or self._choose(opts, rp)
        if sign_count is None:
            chosen.sign_count += self.counter_step
            count = chosen.sign_count
        else:
            count = sign_count
        auth_data = (
            hashlib.sha256(rp.encode()).digest()
            + bytes([self._flags(attested=False)])
            + struct.pack(">I", count)
        )
        client_data = _client_data("webauthn.get", opts["challenge"], origin)
        signature = chosen.key.sign(
            auth_data + hashlib.sha256(client_data).digest(), ec.ECDSA(hashes.SHA256())
        )
        return {
            "id": b64url(chosen.credential_id),
            "rawId": b64url(chosen.credential_id),
            "type": "public-key",
            "response": {
                "clientDataJSON": b64url(client_data),
                "authenticatorData": b64url(auth_data),
                "signature": b64url(signature),
                "userHandle": b64url(chosen.user_handle),
            },
            "clientExtensionResults": {},
            "authenticatorAttachment": "platform",
        }

    def _choose(self, opts: dict[str, Any], rp: str) -> SoftCredential:
        allowed = {unb64url(c["id"]) for c in opts.get("allowCredentials", [])}
        usable = [
            c
            for c in self.credentials
            if ((c.credential_id in allowed) if allowed else (c.rp_id == rp))
        ]
        if not usable:
            raise RuntimeError("NotAllowedError: no credential for this RP")
        return usable[0]


def _client_data(kind: str, challenge: str, origin: str) -> bytes:
    return json.dumps(
        {"type": kind, "challenge": challenge, "origin": origin, "crossOrigin": False},
        separators=(",", ":"),
    ).encode()
