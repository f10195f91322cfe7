"""CredentialStore contract (TOTP devices, WebAuthn credentials, backup codes) on
every SQL backend, including the races a second factor must win exactly once."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.stores.base import AlreadyExists, new_id
from gateway.stores.credentials import (
    BackupCodeCount,
    RemovedFactors,
    SqlCredentialStore,
    TotpDevice,
    WebAuthnCredential,
)
from gateway.stores.database import Database
from gateway.stores.postgres import open_postgres
from gateway.stores.sqlite import open_sqlite


@pytest.fixture
def credentials(database: Database) -> SqlCredentialStore:
    return SqlCredentialStore(database)


@pytest.fixture
async def other_process_credentials(
    database: Database, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[SqlCredentialStore]:
    """The same database through a connection of its own, as another worker holds it."""
    param = request.node.callspec.params["database"]
    if param == "sqlite":
        db: Database = await open_sqlite(tmp_path / "authgate.db")
    else:
        db = await open_postgres(request.getfixturevalue("postgres_url"))
    yield SqlCredentialStore(db)
    await db.close()


def totp(user_id: str = "u1", **fields: object) -> TotpDevice:
    base = TotpDevice(
        id=new_id(),
        tenant="acme",
        user_id=user_id,
        name="phone",
        secret_encrypted=b"\x01sealed-seed",
        last_used_step=0,
        created=1000.0,
        confirmed=True,
    )
    return dataclasses.replace(base, **fields)  # type: ignore[arg-type]


def passkey(user_id: str = "u1", **fields: object) -> WebAuthnCredential:
    base = WebAuthnCredential(
        id=new_id(),
        tenant="acme",
        user_id=user_id,
        name="yubikey",
        credential_id=new_id().encode() + b"\x00\xff",
        public_key=b"\xa5\x01\x02cose",
        sign_count=5,
        transports=("usb", "nfc"),
        aaguid="00000000-0000-0000-0000-000000000000",
        backup_eligible=True,
        backed_up=False,
        user_handle=b"\x10" * 32,
        created=1000.0,
    )
    return dataclasses.replace(base, **fields)  # type: ignore[arg-type]


# --- TOTP ------------------------------------------------------------------------


async def test_a_totp_device_reads_back_equal(credentials: SqlCredentialStore) -> None:
    device = totp()
    await credentials.add_totp(device)
    assert await credentials.get_totp("u1", device.id) == device
    assert await credentials.list_totp("u1") == [device]


async def test_totp_devices_are_visible_only_to_their_user(
    credentials: SqlCredentialStore,
) -> None:
    device = totp("u1")
    await credentials.add_totp(device)
    assert await credentials.get_totp("u2", device.id) is None
    assert await credentials.list_totp("u2") == []
    assert not await credentials.rename_totp("u2", device.id, "mine now")
    assert not await credentials.remove_totp("u2", device.id)
    assert await credentials.get_totp("u1", device.id) == device


async def test_a_step_is_accepted_once_and_older_steps_never(
    credentials: SqlCredentialStore,
) -> None:
    device = totp()
    await credentials.add_totp(device)
    assert await credentials.use_totp_step(device.id, 100)
    assert not await credentials.use_totp_step(device.id, 100)
    assert not await credentials.use_totp_step(device.id, 99)
    assert await credentials.use_totp_step(device.id, 101)
    stored = await credentials.get_totp("u1", device.id)
    assert stored is not None and stored.last_used_step == 101


async def test_concurrent_uses_of_one_step_succeed_exactly_once(
    credentials: SqlCredentialStore, other_process_credentials: SqlCredentialStore
) -> None:
    device = totp()
    await credentials.add_totp(device)
    stores = [credentials, other_process_credentials] * 10
    results = await asyncio.gather(*(s.use_totp_step(device.id, 500) for s in stores))
    assert results.count(True) == 1


async def test_an_unconfirmed_device_verifies_nothing_until_confirmed(
    credentials: SqlCredentialStore,
) -> None:
    device = totp(confirmed=False)
    await credentials.add_totp(device)
    assert not await credentials.use_totp_step(device.id, 100)
    assert await credentials.confirm_totp("u1", device.id, 100)
    assert not await credentials.confirm_totp("u1", device.id, 101)  # already confirmed
    # The enrolment code's step counts as used.
    assert not await credentials.use_totp_step(device.id, 100)
    assert await credentials.use_totp_step(device.id, 101)


async def test_another_user_cannot_confirm_a_device(credentials: SqlCredentialStore) -> None:
    device = totp(confirmed=False)
    await credentials.add_totp(device)
    assert not await credentials.confirm_totp("u2", device.id, 100)


async def test_rename_and_remove_a_totp_device(credentials: SqlCredentialStore) -> None:
    device = totp()
    await credentials.add_totp(device)
    assert await credentials.rename_totp("u1", device.id, "work phone")
    assert [d.name for d in await credentials.list_totp("u1")] == ["work phone"]
    assert await credentials.remove_totp("u1", device.id)
    assert not await credentials.remove_totp("u1", device.id)
    assert await credentials.list_totp("u1") == []


async def test_abandoned_enrolments_are_dropped(credentials: SqlCredentialStore) -> None:
    old = totp(confirmed=False, created=100.0)
    recent = totp(confirmed=False, created=5000.0)
    active = totp(confirmed=True, created=100.0)
    for device in (old, recent, active):
        await credentials.add_totp(device)
    assert await credentials.remove_unconfirmed_totp("u1", older_than=1000.0) == 1
    assert {d.id for d in await credentials.list_totp("u1")} == {recent.id, active.id}


# --- WebAuthn ----------------------------------------------------------------------


async def test_a_webauthn_credential_reads_back_equal(credentials: SqlCredentialStore) -> None:
    cred = passkey(last_used=1234.5)
    await credentials.add_webauthn(cred)
    assert await credentials.get_webauthn("u1", cred.id) == cred
    assert await credentials.list_webauthn("u1") == [cred]
    assert await credentials.get_webauthn_by_credential_id("acme", cred.credential_id) == cred


async def test_credential_ids_are_unique(credentials: SqlCredentialStore) -> None:
    cred = passkey()
    await credentials.add_webauthn(cred)
    with pytest.raises(AlreadyExists):
        await credentials.add_webauthn(passkey("u2", credential_id=cred.credential_id))


async def test_a_credential_is_found_only_in_its_tenant(credentials: SqlCredentialStore) -> None:
    cred = passkey()
    await credentials.add_webauthn(cred)
    assert await credentials.get_webauthn_by_credential_id("globex", cred.credential_id) is None
    assert await credentials.get_webauthn("u2", cred.id) is None


async def test_the_signature_counter_only_moves_forward(credentials: SqlCredentialStore) -> None:
    cred = passkey(sign_count=5)
    await credentials.add_webauthn(cred)
    assert not await credentials.update_sign_count(cred.credential_id, 5, 2000.0)
    assert not await credentials.update_sign_count(cred.credential_id, 4, 2000.0)
    assert not await credentials.update_sign_count(cred.credential_id, 0, 2000.0)
    assert await credentials.update_sign_count(cred.credential_id, 6, 2000.0)
    stored = await credentials.get_webauthn("u1", cred.id)
    assert stored is not None and (stored.sign_count, stored.last_used) == (6, 2000.0)


async def test_an_authenticator_without_a_counter_stays_usable(
    credentials: SqlCredentialStore,
) -> None:
    cred = passkey(sign_count=0)
    await credentials.add_webauthn(cred)
    assert await credentials.update_sign_count(cred.credential_id, 0, 2000.0)
    assert await credentials.update_sign_count(cred.credential_id, 0, 3000.0)
    assert await credentials.update_sign_count(cred.credential_id, 1, 4000.0)
    assert not await credentials.update_sign_count(cred.credential_id, 0, 5000.0)


async def test_concurrent_assertions_with_one_counter_succeed_once(
    credentials: SqlCredentialStore, other_process_credentials: SqlCredentialStore
) -> None:
    cred = passkey(sign_count=5)
    await credentials.add_webauthn(cred)
    stores = [credentials, other_process_credentials] * 10
    results = await asyncio.gather(
        *(s.update_sign_count(cred.credential_id, 6, 2000.0) for s in stores)
    )
    assert results.count(True) == 1


async def test_rename_and_remove_a_webauthn_credential(credentials: SqlCredentialStore) -> None:
    cred = passkey()
    await credentials.add_webauthn(cred)
    assert not await credentials.rename_webauthn("u2", cred.id, "stolen")
    assert await credentials.rename_webauthn("u1", cred.id, "laptop")
    assert [c.name for c in await credentials.list_webauthn("u1")] == ["laptop"]
    assert not await credentials.remove_webauthn("u2", cred.id)
    assert await credentials.remove_webauthn("u1", cred.id)
    assert await credentials.list_webauthn("u1") == []


# --- backup codes ----------------------------------------------------------------


async def test_a_backup_code_is_consumed_once(credentials: SqlCredentialStore) -> None:
    await credentials.replace_backup_codes("acme", "u1", ("h1", "h2", "h3"), 1000.0)
    assert await credentials.count_backup_codes("u1") == BackupCodeCount(total=3, unused=3)
    assert await credentials.consume_backup_code("u1", "h2", 2000.0)
    assert not await credentials.consume_backup_code("u1", "h2", 2001.0)
    assert not await credentials.consume_backup_code("u2", "h1", 2001.0)  # not theirs
    assert not await credentials.consume_backup_code("u1", "nope", 2001.0)
    assert await credentials.count_backup_codes("u1") == BackupCodeCount(total=3, unused=2)


async def test_concurrent_uses_of_one_backup_code_succeed_once(
    credentials: SqlCredentialStore, other_process_credentials: SqlCredentialStore
) -> None:
    await credentials.replace_backup_codes("acme", "u1", ("h1",), 1000.0)
    stores = [credentials, other_process_credentials] * 10
    results = await asyncio.gather(*(s.consume_backup_code("u1", "h1", 2000.0) for s in stores))
    assert results.count(True) == 1


async def test_regenerating_backup_codes_discards_the_old_ones(
    credentials: SqlCredentialStore,
) -> None:
    await credentials.replace_backup_codes("acme", "u1", ("old1", "old2"), 1000.0)
    await credentials.consume_backup_code("u1", "old1", 1500.0)
    await credentials.replace_backup_codes("acme", "u1", ("new1",), 2000.0)
    assert not await credentials.consume_backup_code("u1", "old2", 2500.0)
    assert await credentials.count_backup_codes("u1") == BackupCodeCount(total=1, unused=1)
    assert await credentials.consume_backup_code("u1", "new1", 2500.0)


async def test_a_user_without_codes_has_none(credentials: SqlCredentialStore) -> None:
    assert await credentials.count_backup_codes("nobody") == BackupCodeCount(0, 0)


# --- reset ------------------------------------------------------------------------


async def test_remove_all_for_user_leaves_other_users_alone(
    credentials: SqlCredentialStore,
) -> None:
    await credentials.add_totp(totp("u1"))
    await credentials.add_totp(totp("u1", confirmed=False))
    await credentials.add_webauthn(passkey("u1"))
    await credentials.replace_backup_codes("acme", "u1", ("a", "b"), 1000.0)
    keep = totp("u2")
    await credentials.add_totp(keep)
    await credentials.replace_backup_codes("acme", "u2", ("a",), 1000.0)

    removed = await credentials.remove_all_for_user("u1")

    assert removed == RemovedFactors(totp_devices=2, webauthn_credentials=1, backup_codes=2)
    assert await credentials.list_totp("u1") == []
    assert await credentials.list_webauthn("u1") == []
    assert await credentials.count_backup_codes("u1") == BackupCodeCount(0, 0)
    assert await credentials.list_totp("u2") == [keep]
    assert await credentials.count_backup_codes("u2") == BackupCodeCount(1, 1)
