"""TOTP codes: ±1 step, constant-format input, replay refusal, sealed seeds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pyotp
import pytest

from gateway.identity.totp import TotpService, matching_step, normalize_code, qr_svg
from gateway.secretbox import SecretBox, SecretBoxError
from gateway.stores.credentials import SqlCredentialStore, totp_seed_purpose
from gateway.stores.sqlite import open_sqlite

SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
NOW = 1_700_000_015.0  # inside step 56_666_667
STEP = int(NOW // 30)


def code_at(step: int) -> str:
    return pyotp.TOTP(SECRET).at(step * 30)


def test_a_code_matches_its_own_step_and_one_either_side() -> None:
    assert matching_step(SECRET, code_at(STEP), NOW) == STEP
    assert matching_step(SECRET, code_at(STEP - 1), NOW) == STEP - 1
    assert matching_step(SECRET, code_at(STEP + 1), NOW) == STEP + 1
    assert matching_step(SECRET, code_at(STEP - 2), NOW) is None
    assert matching_step(SECRET, code_at(STEP + 2), NOW) is None


@pytest.mark.parametrize("raw", ["123 456", " 123456 ", "123\u00a0456"])
def test_codes_may_carry_spaces(raw: str) -> None:
    assert normalize_code(raw) == "123456"


@pytest.mark.parametrize("raw", ["", "12345", "1234567", "12345a", "١٢٣٤٥٦"])
def test_anything_else_is_not_a_code(raw: str) -> None:
    assert normalize_code(raw) is None


def test_the_qr_code_is_plain_inline_svg() -> None:
    svg = qr_svg(pyotp.TOTP(SECRET).provisioning_uri(name="alice", issuer_name="Acme"))
    assert svg.startswith("<svg") and "<script" not in svg and "style=" not in svg


@pytest.fixture
async def service(
    tmp_path: Path,
) -> AsyncIterator[tuple[TotpService, SqlCredentialStore, list[float]]]:
    db = await open_sqlite(tmp_path / "a.db")
    store = SqlCredentialStore(db)
    clock = [NOW]
    box = SecretBox("k" * 40)
    yield TotpService(store, box, issuer="Acme", now=lambda: clock[0]), store, clock
    await db.close()


async def enrolled(service: TotpService, store: SqlCredentialStore, clock: list[float]) -> str:
    enrolment = await service.start("acme", "u1", "alice", "phone")
    assert enrolment is not None
    totp = pyotp.TOTP(enrolment.secret)
    assert not await service.verify("u1", totp.at(clock[0]))  # not active yet
    assert await service.confirm("u1", enrolment.device.id, totp.at(clock[0]))
    return enrolment.secret


async def test_a_code_is_accepted_once_and_an_older_one_never(
    service: tuple[TotpService, SqlCredentialStore, list[float]],
) -> None:
    totp_service, store, clock = service
    secret = await enrolled(totp_service, store, clock)
    totp = pyotp.TOTP(secret)
    # The enrolment code is spent.
    assert await totp_service.verify("u1", totp.at(clock[0])) is None
    clock[0] += 30
    code = totp.at(clock[0])
    assert await totp_service.verify("u1", code) is not None
    assert await totp_service.verify("u1", code) is None
    # The previous step is still within the window, but older than the one used.
    assert await totp_service.verify("u1", totp.at(clock[0] - 30)) is None


async def test_the_seed_is_sealed_and_bound_to_its_device(
    service: tuple[TotpService, SqlCredentialStore, list[float]],
) -> None:
    totp_service, store, _ = service
    enrolment = await totp_service.start("acme", "u1", "alice", "phone")
    assert enrolment is not None
    stored = await store.get_totp("u1", enrolment.device.id)
    assert stored is not None and enrolment.secret.encode() not in stored.secret_encrypted
    box = SecretBox("k" * 40)
    assert (
        box.decrypt(stored.secret_encrypted, totp_seed_purpose(stored.id))
        == enrolment.secret.encode()
    )
    with pytest.raises(SecretBoxError):
        box.decrypt(stored.secret_encrypted, totp_seed_purpose("another-device"))


async def test_an_enrolment_expires_unconfirmed(
    service: tuple[TotpService, SqlCredentialStore, list[float]],
) -> None:
    totp_service, _, clock = service
    enrolment = await totp_service.start("acme", "u1", "alice", "phone")
    assert enrolment is not None
    clock[0] += 3600
    code = pyotp.TOTP(enrolment.secret).at(clock[0])
    assert not await totp_service.confirm("u1", enrolment.device.id, code)
