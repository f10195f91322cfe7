"""WebAuthn ceremonies (security keys and passkeys) around py_webauthn 3.x.

All the cryptography is the `webauthn` library's: this module decides what to
ask for, keeps the challenge, and checks what the library cannot know —
whose challenge it was, whose credential it is, and whether the counter went
backwards (SECURITY.md invariant 7).

Relying party. The RP ID is the host the page is served on, or the tenant's
`cookie_domain` when the host is that domain or under it: the operator who
shares sessions across `*.acme.test` also wants a passkey made on
`wiki.acme.test` to work on `app.acme.test`. The expected origin is exactly
`{proto}://{Host}` of the request (`ReservedRequest.origin`).

Challenges. 32 random bytes, stored server-side for `CHALLENGE_TTL` seconds
under a hash, with the purpose, tenant, RP ID, origin and a hash of what the
ceremony is bound to (the session, or the pre-session cookie on the login
page). Verification first *takes* the challenge (atomic remove), so a
challenge works once, whatever the outcome: a replayed response finds nothing.

Counter. The library's own counter check is bypassed (stored count passed as
0) so that the signature is verified first; then a verified response whose
counter did not grow (when either counter is non-zero) is refused and
reported as a possible cloned authenticator. The store's conditional update
settles races between workers.

amr (RFC 8176 names). A WebAuthn success adds `hwk` (proof of possession of a
hardware-protected key) and, when the authenticator verified the user (PIN or
biometric, the UV flag), `user` as well. The policy engine counts two distinct
values as two factors, so a passkey with UV alone is a two-factor sign-in
(possession + verification on the device); without UV it is one factor.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import base64url_to_bytes, bytes_to_base64url
from webauthn.helpers.exceptions import (
    InvalidAuthenticationResponse,
    InvalidRegistrationResponse,
)
from webauthn.helpers.structs import (
    AttestationConveyancePreference,
    AuthenticatorSelectionCriteria,
    AuthenticatorTransport,
    CredentialDeviceType,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from gateway.config.model import TenantConfig
from gateway.sso import SsoCodeStore, SsoGrant
from gateway.stores import AlreadyExists, User, new_id
from gateway.stores.credentials import CredentialStore, WebAuthnCredential

__all__ = [
    "AMR_HARDWARE_KEY",
    "AMR_USER_VERIFIED",
    "CHALLENGE_TTL",
    "Assertion",
    "ChallengeRefused",
    "CounterRegression",
    "CredentialRefused",
    "Purpose",
    "RelyingParty",
    "ResponseRefused",
    "WebAuthnError",
    "WebAuthnService",
    "amr_for",
    "credential_id_text",
    "relying_party",
]

log = logging.getLogger("authgate.webauthn")

AMR_HARDWARE_KEY = "hwk"
AMR_USER_VERIFIED = "user"
CHALLENGE_TTL = 300.0  # seconds; also the timeout the browser is given
MAX_RESPONSE = 32 * 1024  # bytes of credential JSON we are willing to parse
MAX_NAME = 64
_KNOWN_TRANSPORTS = frozenset(t.value for t in AuthenticatorTransport)


class Purpose(enum.StrEnum):
    REGISTER = "register"
    SECOND_FACTOR = "mfa"
    PASSWORDLESS = "login"


# --- errors --------------------------------------------------------------------------


class WebAuthnError(Exception):
    """A ceremony refused; the message is safe to log (no secrets), not to show."""


class ChallengeRefused(WebAuthnError):
    """Unknown, used, expired, or issued for another purpose, session, host or tenant."""


class ResponseRefused(WebAuthnError):
    """The library refused the response: origin, RP ID, type, flags or signature."""


class CredentialRefused(WebAuthnError):
    """Unknown credential, another user's or tenant's, or already registered."""


class CounterRegression(WebAuthnError):
    """A correctly signed assertion whose counter did not grow: a possible clone."""

    def __init__(self, credential: WebAuthnCredential, new_count: int) -> None:
        super().__init__(
            f"signature counter regression on credential {credential.id}:"
            f" stored {credential.sign_count}, presented {new_count}"
        )
        self.credential = credential
        self.new_count = new_count


# --- relying party -------------------------------------------------------------------


@dataclass(frozen=True)
class RelyingParty:
    id: str  # RP ID: a registrable suffix of the origin's host
    name: str  # shown by the authenticator
    origin: str  # the exact origin clientDataJSON must name


def relying_party(tenant: TenantConfig, host: str, origin: str) -> RelyingParty:
    """The RP for a page of `tenant` served on `host` (canonical) at `origin`."""
    rp_id = host
    parent = (tenant.cookie_domain or "").lstrip(".").lower()
    if parent and (host == parent or host.endswith("." + parent)):
        rp_id = parent
    return RelyingParty(id=rp_id, name=tenant.name, origin=origin)


# --- results -------------------------------------------------------------------------


@dataclass(frozen=True)
class Assertion:
    """A verified assertion: whose credential it was, and whether the user was verified."""

    credential: WebAuthnCredential
    user_verified: bool

    @property
    def amr(self) -> tuple[str, ...]:
        return amr_for(self.user_verified)


def amr_for(user_verified: bool) -> tuple[str, ...]:
    return (AMR_HARDWARE_KEY, AMR_USER_VERIFIED) if user_verified else (AMR_HARDWARE_KEY,)


@dataclass(frozen=True)
class _Presented:
    """What we read from a response before verifying it: its challenge and credential id."""

    challenge: bytes
    credential_id: bytes
    user_handle: bytes | None


# --- the service ---------------------------------------------------------------------


def _binding_tag(binding: str) -> str:
    return hashlib.sha256(b"authgate webauthn binding v1\0" + binding.encode()).hexdigest()


def _challenge_key(challenge: bytes) -> str:
    # Domain-separated from SSO code hashes (sha256 of the code text), which share
    # the store: no SSO code can ever name a challenge entry, nor the reverse.
    return hashlib.sha256(b"authgate webauthn challenge v1\0" + challenge).hexdigest()


def _scope(purpose: Purpose, rp: RelyingParty) -> str:
    return f"webauthn:{purpose.value}:{rp.id}:{rp.origin}"


class WebAuthnService:
    """Registration and assertion for one worker; all state is in the stores.

    `binding` ties a ceremony to who started it: `"session:<session id hash>"` for a
    signed-in user, `"presession:<authgate_csrf cookie>"` on the login page.
    Challenges live in a single-use code store (the SSO code store: SQL or Redis,
    atomic take, expiry), under a key no SSO code can hash to.
    """

    def __init__(
        self,
        credentials: CredentialStore,
        challenges: SsoCodeStore,
        *,
        now: Callable[[], float] = time.time,
        on_counter_regression: Callable[[CounterRegression], None] | None = None,
    ) -> None:
        self.credentials = credentials
        self.challenges = challenges
        self._now = now
        self._on_regression = on_counter_regression

    # --- challenges ------------------------------------------------------------------

    async def _new_challenge(
        self, purpose: Purpose, rp: RelyingParty, tenant: str, binding: str
    ) -> bytes:
        challenge = secrets.token_bytes(32)
        grant = SsoGrant(
            tenant=tenant,
            session_tag=_binding_tag(binding),
            target_host=_scope(purpose, rp),
            expires=self._now() + CHALLENGE_TTL,
        )
        await self.challenges.put(_challenge_key(challenge), grant, CHALLENGE_TTL)
        return challenge

    async def _take_challenge(
        self, challenge: bytes, purpose: Purpose, rp: RelyingParty, tenant: str, binding: str
    ) -> None:
        """Consume the challenge; refuse it unless it is ours, for exactly this ceremony."""
        grant = await self.challenges.take(_challenge_key(challenge), self._now())
        if grant is None:
            raise ChallengeRefused("unknown, used or expired challenge")
        same = (
            grant.tenant == tenant
            and grant.target_host == _scope(purpose, rp)
            and hmac.compare_digest(grant.session_tag, _binding_tag(binding))
        )
        if not same:
            raise ChallengeRefused("challenge issued for another ceremony")

    # --- registration ----------------------------------------------------------------

    async def registration_options(self, rp: RelyingParty, user: User, binding: str) -> str:
        """PublicKeyCredentialCreationOptions as JSON for `navigator.credentials.create`."""
        existing = await self.credentials.list_webauthn(user.id)
        challenge = await self._new_challenge(Purpose.REGISTER, rp, user.tenant, binding)
        options = generate_registration_options(
            rp_id=rp.id,
            rp_name=rp.name,
            user_id=_user_handle(existing, user),
            user_name=user.username,
            user_display_name=user.display_name or user.username,
            challenge=challenge,
            timeout=int(CHALLENGE_TTL * 1000),
            attestation=AttestationConveyancePreference.NONE,
            authenticator_selection=AuthenticatorSelectionCriteria(
                resident_key=ResidentKeyRequirement.PREFERRED,
                user_verification=UserVerificationRequirement.PREFERRED,
            ),
            exclude_credentials=[_descriptor(c) for c in existing],
        )
        return options_to_json(options)

    async def register(
        self, rp: RelyingParty, user: User, binding: str, response_json: str, name: str
    ) -> WebAuthnCredential:
        """Verify an attestation (`none` or any other format: we do not check vendors)
        and store the new credential under `name`."""
        presented = _read_response(response_json, "webauthn.create")
        await self._take_challenge(presented.challenge, Purpose.REGISTER, rp, user.tenant, binding)
        existing = await self.credentials.list_webauthn(user.id)
        try:
            verified = verify_registration_response(
                credential=response_json,
                expected_challenge=presented.challenge,
                expected_rp_id=rp.id,
                expected_origin=rp.origin,
                require_user_verification=False,
            )
        except (InvalidRegistrationResponse, ValueError, KeyError, TypeError) as exc:
            raise ResponseRefused(f"registration refused: {exc}") from exc
        record = WebAuthnCredential(
            id=new_id(),
            tenant=user.tenant,
            user_id=user.id,
            name=_clean_name(name) or "Passkey",
            credential_id=verified.credential_id,
            public_key=verified.credential_public_key,
            sign_count=verified.sign_count,
            transports=_transports(response_json),
            aaguid=verified.aaguid,
            backup_eligible=verified.credential_device_type is CredentialDeviceType.MULTI_DEVICE,
            backed_up=verified.credential_backed_up,
            user_handle=_user_handle(existing, user),
            created=self._now(),
        )
        try:
            await self.credentials.add_webauthn(record)
        except AlreadyExists as exc:
            raise CredentialRefused("credential already registered") from exc
        return record

    # --- assertion -------------------------------------------------------------------

    async def authentication_options(
        self,
        rp: RelyingParty,
        tenant: str,
        binding: str,
        purpose: Purpose,
        user: User | None = None,
    ) -> str:
        """PublicKeyCredentialRequestOptions as JSON. With a `user` (second factor) the
        browser is told which credentials to use; without (passwordless) it offers the
        discoverable ones it holds for this RP."""
        allow: list[PublicKeyCredentialDescriptor] = []
        if user is not None:
            allow = [_descriptor(c) for c in await self.credentials.list_webauthn(user.id)]
        challenge = await self._new_challenge(purpose, rp, tenant, binding)
        options = generate_authentication_options(
            rp_id=rp.id,
            challenge=challenge,
            timeout=int(CHALLENGE_TTL * 1000),
            allow_credentials=allow,
            user_verification=UserVerificationRequirement.PREFERRED,
        )
        return options_to_json(options)

    async def authenticate(
        self,
        rp: RelyingParty,
        tenant: str,
        binding: str,
        purpose: Purpose,
        response_json: str,
        user: User | None = None,
    ) -> Assertion:
        """Verify an assertion. With `user`, the credential must be theirs; without, the
        credential's owner is the one signing in (its user handle must match)."""
        presented = _read_response(response_json, "webauthn.get")
        await self._take_challenge(presented.challenge, purpose, rp, tenant, binding)
        credential = await self.credentials.get_webauthn_by_credential_id(
            tenant, presented.credential_id
        )
        if credential is None or credential.tenant != tenant:
            raise CredentialRefused("unknown credential")
        if user is not None and credential.user_id != user.id:
            raise CredentialRefused("credential of another user")
        if presented.user_handle is not None and not hmac.compare_digest(
            presented.user_handle, credential.user_handle
        ):
            raise CredentialRefused("user handle does not match the credential")
        if user is None and presented.user_handle is None:
            # A discoverable credential always returns its user handle; without one the
            # browser used a non-resident key the server never named.
            raise CredentialRefused("no user handle in a passwordless assertion")
        try:
            verified = verify_authentication_response(
                credential=response_json,
                expected_challenge=presented.challenge,
                expected_rp_id=rp.id,
                expected_origin=rp.origin,
                credential_public_key=credential.public_key,
                credential_current_sign_count=0,  # checked below, after the signature
                require_user_verification=False,
            )
        except (InvalidAuthenticationResponse, ValueError, KeyError, TypeError) as exc:
            raise ResponseRefused(f"assertion refused: {exc}") from exc
        new_count = verified.new_sign_count
        regressed = (new_count > 0 or credential.sign_count > 0) and (
            new_count <= credential.sign_count
        )
        if regressed or not await self.credentials.update_sign_count(
            credential.credential_id, new_count, self._now()
        ):
            error = CounterRegression(credential, new_count)
            log.warning(
                "webauthn signature counter regression",
                extra={
                    "tenant": tenant,
                    "user_id": credential.user_id,
                    "credential": credential.id,
                    "stored_count": credential.sign_count,
                    "presented_count": new_count,
                },
            )
            if self._on_regression is not None:
                self._on_regression(error)
            raise error
        return Assertion(credential=credential, user_verified=verified.user_verified)

    # --- management ------------------------------------------------------------------

    async def list(self, user_id: str) -> list[WebAuthnCredential]:
        return await self.credentials.list_webauthn(user_id)

    async def rename(self, user_id: str, record_id: str, name: str) -> bool:
        cleaned = _clean_name(name)
        if not cleaned:
            return False
        return await self.credentials.rename_webauthn(user_id, record_id, cleaned)

    async def remove(self, user_id: str, record_id: str) -> bool:
        return await self.credentials.remove_webauthn(user_id, record_id)


# --- helpers -------------------------------------------------------------------------


def _user_handle(existing: list[WebAuthnCredential], user: User) -> bytes:
    """The user's WebAuthn user.id: the one already given to an authenticator, else a
    hash of (tenant, user id) — stable, so options and verification agree without
    keeping it anywhere, and opaque: no username or e-mail reaches the authenticator."""
    for credential in existing:
        if credential.user_handle:
            return credential.user_handle
    return hashlib.sha256(f"authgate webauthn user v1\0{user.tenant}\0{user.id}".encode()).digest()


def _descriptor(credential: WebAuthnCredential) -> PublicKeyCredentialDescriptor:
    transports = [
        AuthenticatorTransport(t) for t in credential.transports if t in _KNOWN_TRANSPORTS
    ]
    return PublicKeyCredentialDescriptor(id=credential.credential_id, transports=transports or None)


def _clean_name(name: str) -> str:
    printable = "".join(ch for ch in name if ch.isprintable())
    return printable.strip()[:MAX_NAME]


def _load(response_json: str) -> dict[str, object]:
    if len(response_json) > MAX_RESPONSE:
        raise ResponseRefused("response too large")
    try:
        data = json.loads(response_json)
    except ValueError as exc:
        raise ResponseRefused("response is not JSON") from exc
    if not isinstance(data, dict):
        raise ResponseRefused("response is not an object")
    return data


def _read_response(response_json: str, expected_type: str) -> _Presented:
    """The challenge and credential id a response claims, read before verification so
    that the right challenge can be taken from the store (the library then checks
    every one of these against the signed data)."""
    data = _load(response_json)
    response = data.get("response")
    raw_id = data.get("rawId")
    if not isinstance(response, dict) or not isinstance(raw_id, str):
        raise ResponseRefused("malformed credential")
    client_data_b64 = response.get("clientDataJSON")
    handle_b64 = response.get("userHandle")
    try:
        client_data = json.loads(base64url_to_bytes(str(client_data_b64)))
        challenge = base64url_to_bytes(str(client_data["challenge"]))
        credential_id = base64url_to_bytes(raw_id)
        user_handle = base64url_to_bytes(handle_b64) if isinstance(handle_b64, str) else None
    except (ValueError, KeyError, TypeError) as exc:
        raise ResponseRefused("malformed clientDataJSON") from exc
    if not isinstance(client_data, dict) or client_data.get("type") != expected_type:
        raise ResponseRefused("wrong ceremony type")
    if user_handle == b"":
        user_handle = None
    return _Presented(challenge=challenge, credential_id=credential_id, user_handle=user_handle)


def _transports(response_json: str) -> tuple[str, ...]:
    response = _load(response_json).get("response")
    found = response.get("transports") if isinstance(response, dict) else None
    if not isinstance(found, list):
        return ()
    return tuple(str(t) for t in found if t in _KNOWN_TRANSPORTS)[:8]


def credential_id_text(credential: WebAuthnCredential) -> str:
    """The authenticator's credential id in base64url (for display and tests)."""
    return bytes_to_base64url(credential.credential_id)
