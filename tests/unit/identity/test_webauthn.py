"""WebAuthn ceremonies against a software authenticator: real keys, authenticator data
and signatures, through the real credential and challenge stores (SQLite)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.config.model import Config, TenantConfig
from gateway.identity.webauthn import (
    AMR_HARDWARE_KEY,
    AMR_USER_VERIFIED,
    ChallengeRefused,
    CounterRegression,
    CredentialRefused,
    Purpose,
    RelyingParty,
    ResponseRefused,
    WebAuthnService,
    relying_party,
)
from gateway.sso import SqlSsoCodes
from gateway.stores import User, open_database
from gateway.stores.credentials import SqlCredentialStore
from gateway.stores.database import Database
from tests.integration.soft_authenticator import SoftAuthenticator

TENANT = TenantConfig(id="acme", name="Acme", domains=("app.acme.test",))
RP = RelyingParty(id="app.acme.test", name="Acme", origin="https://app.acme.test")
SESSION = "session:abc123"


def user(name: str = "alice", tenant: str = "acme") -> User:
    return User(
        id=f"{tenant}-{name}-id",
        tenant=tenant,
        username=name,
        email=None,
        display_name=name.title(),
        groups=(),
        roles=(),
        disabled=False,
        password_hash=None,
        created=0.0,
        updated=0.0,
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    config = Config(
        source=tmp_path / "config.yaml",
        tenants=(TENANT,),
        storage=f"sqlite:///{tmp_path / 'authgate.db'}",
    )
    database = await open_database(config)
    yield database
    await database.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def regressions() -> list[CounterRegression]:
    return []


@pytest.fixture
def service(db: Database, clock: Clock, regressions: list[CounterRegression]) -> WebAuthnService:
    return WebAuthnService(
        SqlCredentialStore(db),
        SqlSsoCodes(db),
        now=clock,
        on_counter_regression=regressions.append,
    )


async def register(
    service: WebAuthnService, authenticator: SoftAuthenticator, who: User | None = None
) -> None:
    who = who or user()
    options = await service.registration_options(RP, who, SESSION)
    response = authenticator.create(options, RP.origin)
    await service.register(RP, who, SESSION, json.dumps(response), "My key")


async def test_registration_stores_the_credential_with_its_public_key_and_flags(
    service: WebAuthnService,
) -> None:
    authenticator = SoftAuthenticator(backup_eligible=True)
    await register(service, authenticator)
    [stored] = await service.list(user().id)
    assert stored.credential_id == authenticator.credentials[0].credential_id
    assert stored.name == "My key"
    assert stored.transports == ("internal",)
    assert stored.backup_eligible and stored.backed_up
    assert stored.user_handle == authenticator.credentials[0].user_handle
    assert stored.sign_count == 0


async def test_registration_options_prefer_resident_keys_and_exclude_existing_ones(
    service: WebAuthnService,
) -> None:
    await register(service, SoftAuthenticator())
    options = json.loads(await service.registration_options(RP, user(), SESSION))
    assert options["rp"] == {"id": "app.acme.test", "name": "Acme"}
    assert options["attestation"] == "none"
    assert options["authenticatorSelection"]["residentKey"] == "preferred"
    assert options["authenticatorSelection"]["userVerification"] == "preferred"
    assert len(options["excludeCredentials"]) == 1


async def test_the_same_authenticator_cannot_register_twice(service: WebAuthnService) -> None:
    authenticator = SoftAuthenticator()
    await register(service, authenticator)
    options = await service.registration_options(RP, user(), SESSION)
    with pytest.raises(RuntimeError, match="InvalidStateError"):
        authenticator.create(options, RP.origin)


async def test_a_second_credential_of_a_user_gets_the_same_user_handle(
    service: WebAuthnService,
) -> None:
    await register(service, SoftAuthenticator())
    await register(service, SoftAuthenticator())
    first, second = await service.list(user().id)
    assert first.user_handle == second.user_handle


async def test_assertion_as_second_factor_with_user_verification(
    service: WebAuthnService,
) -> None:
    authenticator = SoftAuthenticator()
    await register(service, authenticator)
    options = await service.authentication_options(
        RP, "acme", SESSION, Purpose.SECOND_FACTOR, user()
    )
    assertion = await service.authenticate(
        RP,
        "acme",
        SESSION,
        Purpose.SECOND_FACTOR,
        json.dumps(authenticator.get(options, RP.origin)),
        user(),
    )
    assert assertion.user_verified
    assert assertion.amr == (AMR_HARDWARE_KEY, AMR_USER_VERIFIED)
    [stored] = await service.list(user().id)
    assert stored.sign_count == 1


async def test_assertion_without_user_verification_is_one_factor(
    service: WebAuthnService,
) -> None:
    authenticator = SoftAuthenticator(user_verifying=False)
    await register(service, authenticator)
    options = await service.authentication_options(RP, "acme", "presession:x", Purpose.PASSWORDLESS)
    assertion = await service.authenticate(
        RP,
        "acme",
        "presession:x",
        Purpose.PASSWORDLESS,
        json.dumps(authenticator.get(options, RP.origin)),
    )
    assert assertion.amr == (AMR_HARDWARE_KEY,)
    assert assertion.credential.user_id == user().id


async def sign(
    service: WebAuthnService, authenticator: SoftAuthenticator, **tamper: object
) -> object:
    origin = str(tamper.pop("origin", RP.origin))
    options = await service.authentication_options(RP, "acme", SESSION, Purpose.PASSWORDLESS)
    response = authenticator.get(options, origin, **tamper)  # type: ignore[arg-type]
    return await service.authenticate(
        RP, "acme", SESSION, Purpose.PASSWORDLESS, json.dumps(response)
    )


async def test_a_counter_that_does_not_grow_is_refused_and_reported(
    service: WebAuthnService, regressions: list[CounterRegression]
) -> None:
    authenticator = SoftAuthenticator()
    await register(service, authenticator)
    await sign(service, authenticator)
    await sign(service, authenticator)  # counter 2
    with pytest.raises(CounterRegression):
        await sign(service, authenticator, sign_count=2)
    with pytest.raises(CounterRegression):
        await sign(service, authenticator, sign_count=1)
    assert [r.new_count for r in regressions] == [2, 1]
    [stored] = await service.list(user().id)
    assert stored.sign_count == 2


async def test_a_counter_back_to_zero_after_use_is_a_regression(
    service: WebAuthnService,
) -> None:
    authenticator = SoftAuthenticator()
    await register(service, authenticator)
    await sign(service, authenticator)
    with pytest.raises(CounterRegression):
        await sign(service, authenticator, sign_count=0)


async def test_an_authenticator_without_a_counter_keeps_working(
    service: WebAuthnService,
) -> None:
    authenticator = SoftAuthenticator(counter_step=0)
    await register(service, authenticator)
    await sign(service, authenticator)
    await sign(service, authenticator)


async def test_a_response_made_for_another_origin_is_refused(service: WebAuthnService) -> None:
    authenticator = SoftAuthenticator()
    await register(service, authenticator)
    with pytest.raises(ResponseRefused, match="origin"):
        await sign(service, authenticator, origin="https://evil.test")


async def test_a_response_signed_for_another_rp_id_is_refused(service: WebAuthnService) -> None:
    authenticator = SoftAuthenticator()
    await register(service, authenticator)
    with pytest.raises(ResponseRefused, match="RP ID"):
        await sign(
            service, authenticator, rp_id="evil.test", credential=authenticator.credentials[0]
        )


async def test_registration_for_another_origin_or_rp_id_is_refused(
    service: WebAuthnService,
) -> None:
    for tamper in ({"origin": "https://evil.test"}, {"rp_id": "evil.test"}):
        options = await service.registration_options(RP, user(), SESSION)
        origin = str(tamper.pop("origin", RP.origin))
        response = SoftAuthenticator().create(options, origin, **tamper)
        with pytest.raises(ResponseRefused):
            await service.register(RP, user(), SESSION, json.dumps(response), "k")
    assert await service.list(user().id) == []


async def test_a_replayed_assertion_is_refused(service: WebAuthnService) -> None:
    authenticator = SoftAuthenticator()
    await register(service, authenticator)
    options = await service.authentication_options(RP, "acme", SESSION, Purpose.PASSWORDLESS)
    response = json.dumps(authenticator.get(options, RP.origin))
    await service.authenticate(RP, "acme", SESSION, Purpose.PASSWORDLESS, response)
    with pytest.raises(ChallengeRefused):
        await service.authenticate(RP, "acme", SESSION, Purpose.PASSWORDLESS, response)


async def test_a_replayed_registration_is_refused(service: WebAuthnService) -> None:
    options = await service.registration_options(RP, user(), SESSION)
    response = json.dumps(SoftAuthenticator().create(options, RP.origin))
    await service.register(RP, user(), SESSION, response, "k")
    with pytest.raises(ChallengeRefused):
        await service.register(RP, user(), SESSION, response, "k")


async def test_a_challenge_expires_after_five_minutes(
    service: WebAuthnService, clock: Clock
) -> None:
    authenticator = SoftAuthenticator()
    await register(service, authenticator)
    options = await service.authentication_options(RP, "acme", SESSION, Purpose.PASSWORDLESS)
    clock.now += 301
    with pytest.raises(ChallengeRefused):
        await service.authenticate(
            RP,
            "acme",
            SESSION,
            Purpose.PASSWORDLESS,
            json.dumps(authenticator.get(options, RP.origin)),
        )


async def test_a_challenge_is_bound_to_its_session_purpose_and_tenant(
    service: WebAuthnService,
) -> None:
    authenticator = SoftAuthenticator()
    await register(service, authenticator)
    wrong = (
        ("acme", "session:other", Purpose.PASSWORDLESS),
        ("acme", SESSION, Purpose.SECOND_FACTOR),
        ("globex", SESSION, Purpose.PASSWORDLESS),
    )
    for tenant, binding, purpose in wrong:
        options = await service.authentication_options(RP, "acme", SESSION, Purpose.PASSWORDLESS)
        response = json.dumps(authenticator.get(options, RP.origin))
        with pytest.raises(ChallengeRefused):
            await service.authenticate(RP, tenant, binding, purpose, response)


async def test_a_challenge_the_server_never_issued_is_refused(service: WebAuthnService) -> None:
    authenticator = SoftAuthenticator()
    await register(service, authenticator)
    forged = {"rpId": RP.id, "challenge": "A" * 43}
    with pytest.raises(ChallengeRefused):
        await service.authenticate(
            RP,
            "acme",
            SESSION,
            Purpose.PASSWORDLESS,
            json.dumps(authenticator.get(forged, RP.origin)),
        )


async def test_an_unknown_credential_is_refused(service: WebAuthnService) -> None:
    stranger = SoftAuthenticator()
    stranger.create(
        json.loads(await service.registration_options(RP, user("mallory"), SESSION)), RP.origin
    )
    with pytest.raises(CredentialRefused):
        await sign(service, stranger)


async def test_another_users_credential_is_refused_as_a_second_factor(
    service: WebAuthnService,
) -> None:
    bobs = SoftAuthenticator()
    await register(service, bobs, user("bob"))
    options = await service.authentication_options(
        RP, "acme", SESSION, Purpose.SECOND_FACTOR, user("alice")
    )
    response = bobs.get({**json.loads(options), "allowCredentials": []}, RP.origin)
    with pytest.raises(CredentialRefused):
        await service.authenticate(
            RP, "acme", SESSION, Purpose.SECOND_FACTOR, json.dumps(response), user("alice")
        )


async def test_a_credential_of_another_tenant_is_unknown_here(service: WebAuthnService) -> None:
    authenticator = SoftAuthenticator()
    await register(service, authenticator, user("alice", tenant="globex"))
    options = await service.authentication_options(RP, "acme", SESSION, Purpose.PASSWORDLESS)
    with pytest.raises(CredentialRefused):
        await service.authenticate(
            RP,
            "acme",
            SESSION,
            Purpose.PASSWORDLESS,
            json.dumps(authenticator.get(options, RP.origin)),
        )


async def test_a_forged_signature_is_refused(service: WebAuthnService) -> None:
    authenticator = SoftAuthenticator()
    await register(service, authenticator)
    options = await service.authentication_options(RP, "acme", SESSION, Purpose.PASSWORDLESS)
    response = authenticator.get(options, RP.origin)
    impostor = SoftAuthenticator()
    impostor.create({"rp": {"id": RP.id}, "user": {"id": "AAAA"}, "challenge": "x"}, RP.origin)
    # The same bytes signed with another key.
    other = impostor.get(options, RP.origin, credential=impostor.credentials[0])
    response["response"]["signature"] = other["response"]["signature"]
    with pytest.raises(ResponseRefused):
        await service.authenticate(RP, "acme", SESSION, Purpose.PASSWORDLESS, json.dumps(response))


async def test_rename_and_remove_touch_only_the_owners_credential(
    service: WebAuthnService,
) -> None:
    await register(service, SoftAuthenticator())
    [stored] = await service.list(user().id)
    assert not await service.rename(user("bob").id, stored.id, "mine now")
    assert not await service.rename(user().id, stored.id, "\n\t")
    assert await service.rename(user().id, stored.id, "  Laptop\x00 ")
    assert not await service.remove(user("bob").id, stored.id)
    [renamed] = await service.list(user().id)
    assert renamed.name == "Laptop"
    assert await service.remove(user().id, stored.id)
    assert await service.list(user().id) == []


def test_rp_id_is_the_host_or_the_tenants_cookie_domain() -> None:
    shared = TenantConfig(
        id="acme", name="Acme", domains=("*.acme.test",), cookie_domain=".acme.test"
    )
    assert relying_party(TENANT, "app.acme.test", "https://app.acme.test").id == "app.acme.test"
    assert relying_party(shared, "wiki.acme.test", "https://wiki.acme.test").id == "acme.test"
    assert relying_party(shared, "acme-other.test", "https://acme-other.test").id == (
        "acme-other.test"
    )
