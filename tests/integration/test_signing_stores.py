"""The identity JWT over the real key stores (SQLite, PostgreSQL), as several gateway
instances share them: each instance has its own connection, like a separate process."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import jwt
import pytest

from gateway.cli import common_options
from gateway.cli import keys as keys_cli
from gateway.config import load_config
from gateway.secretbox import SecretBox, load_secret_box
from gateway.signing import PUBLISH_AHEAD, JwtSigner, SigningError, rotate_keys
from gateway.stores import open_stores
from gateway.stores.database import Database
from gateway.stores.postgres import open_postgres
from gateway.stores.sql import SqlKeyStore
from gateway.stores.sqlite import open_sqlite

ISSUER = "https://auth.acme.test"
DAY = 86400.0
BOX = SecretBox("an encryption key of at least 32 characters")

OpenDatabase = Callable[[], Awaitable[Database]]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def connect(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OpenDatabase]:
    """Opens connections to one database; each call is another gateway instance's."""
    if request.param == "sqlite":
        path = tmp_path / "authgate.db"

        async def opener() -> Database:
            return await open_sqlite(path)
    else:
        url = request.getfixturevalue("postgres_clean")  # tests/conftest.py: migrated, empty

        async def opener() -> Database:
            return await open_postgres(url)

    opened: list[Database] = []

    async def tracked() -> Database:
        db = await opener()
        opened.append(db)
        return db

    yield tracked
    for db in opened:
        await db.close()


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def verify(token: str, signer: JwtSigner, audience: str = "wiki.acme.test") -> dict[str, Any]:
    kid = jwt.get_unverified_header(token)["kid"]
    (jwk,) = [k for k in signer.jwks()["keys"] if k["kid"] == kid]
    claims: dict[str, Any] = jwt.decode(
        token, jwt.PyJWK(jwk).key, algorithms=["ES256"], audience=audience, issuer=ISSUER
    )
    return claims


def sign(signer: JwtSigner, audience: str = "wiki.acme.test") -> str:
    return signer.sign(
        audience=audience,
        subject="alice",
        email="alice@acme.test",
        name="Alice",
        groups=["staff"],
        amr=["pwd", "otp"],
        cache_key="session-hash",
    )


def kids(signer: JwtSigner) -> set[str]:
    return {k["kid"] for k in signer.jwks()["keys"]}


async def test_a_token_verifies_against_the_jwks_of_a_store_backed_signer(
    connect: OpenDatabase,
) -> None:
    signer = JwtSigner(SqlKeyStore(await connect()), BOX, issuer=ISSUER)
    await signer.start()
    token = sign(signer)
    claims = verify(token, signer)
    assert (claims["sub"], claims["aud"], claims["groups"], claims["amr"]) == (
        "alice",
        "wiki.acme.test",
        ["staff"],
        ["pwd", "otp"],
    )
    assert claims["exp"] - claims["iat"] == 300
    with pytest.raises(jwt.InvalidAudienceError):
        verify(token, signer, audience="billing.acme.test")


async def test_the_stored_private_key_is_encrypted(connect: OpenDatabase) -> None:
    db = await connect()
    signer = JwtSigner(SqlKeyStore(db), BOX, issuer=ISSUER)
    await signer.start()
    rows = await db.fetch("SELECT private_pem_encrypted, public_jwk FROM signing_keys")
    assert len(rows) == 1
    blob, public = bytes(rows[0][0]), rows[0][1]
    assert b"PRIVATE" not in blob and b"BEGIN" not in blob
    assert '"d"' not in public
    assert BOX.decrypt(blob, "jwt-signing-key").startswith(b"-----BEGIN PRIVATE KEY-----")


async def test_a_wrong_encryption_key_fails_at_start(connect: OpenDatabase) -> None:
    await JwtSigner(SqlKeyStore(await connect()), BOX, issuer=ISSUER).start()
    wrong = JwtSigner(SqlKeyStore(await connect()), SecretBox("w" * 40), issuer=ISSUER)
    with pytest.raises(SigningError, match="cannot decrypt"):
        await wrong.start()


async def test_instances_starting_together_publish_the_same_keys_and_sign_with_one(
    connect: OpenDatabase,
) -> None:
    databases = [await connect() for _ in range(4)]
    for _ in range(5):  # the race went wrong in 2-3 runs of 10 before the first key was atomic
        for db in databases:
            await db.execute("DELETE FROM signing_keys")
        signers = [JwtSigner(SqlKeyStore(db), BOX, issuer=ISSUER) for db in databases]
        await asyncio.gather(*(s.start() for s in signers))  # no refresh afterwards
        assert len(await SqlKeyStore(databases[0]).list(retired_after=0.0)) == 1
        assert len({frozenset(kids(s)) for s in signers}) == 1
        assert len({jwt.get_unverified_header(sign(s))["kid"] for s in signers}) == 1
        token = sign(signers[0])
        for s in signers:
            verify(token, s)


async def test_a_database_lock_holds_only_inside_a_transaction(connect: OpenDatabase) -> None:
    db = await connect()
    with pytest.raises(RuntimeError, match="inside a transaction"):
        await db.lock("authgate signing keys")
    async with db.transaction() as tx:
        await tx.lock("authgate signing keys")


async def test_two_concurrent_withdrawals_leave_one_key(connect: OpenDatabase) -> None:
    store = SqlKeyStore(await connect())
    await JwtSigner(store, BOX, issuer=ISSUER).start()
    hosts = (SqlKeyStore(await connect()), SqlKeyStore(await connect()))
    for _ in range(10):  # deleting "older keys" after the insert left two in about 1 of 20
        now = time.time()
        first, second = await asyncio.gather(
            *(rotate_keys(host, BOX, now=now, withdraw=True) for host in hosts)
        )
        left = [k.kid for k in await store.list(retired_after=0.0)]
        assert len(left) == 1 and left[0] in {first.kid, second.kid}


async def test_a_rotation_by_one_instance_reaches_the_other_after_refresh(
    connect: OpenDatabase,
) -> None:
    clock = Clock()
    a = JwtSigner(SqlKeyStore(await connect()), BOX, issuer=ISSUER, now=clock)
    b = JwtSigner(SqlKeyStore(await connect()), BOX, issuer=ISSUER, now=clock)
    await a.start()
    await b.start()
    (old_kid,) = kids(b)
    old_token = sign(b)

    new_key = await rotate_keys(SqlKeyStore(await connect()), BOX, now=clock.now)
    await a.refresh()
    assert kids(b) == {old_kid}  # b has not looked yet
    await b.refresh()
    assert kids(a) == kids(b) == {old_kid, new_key.kid}
    assert json.loads(b.jwks_json())["keys"] == b.jwks()["keys"]
    assert jwt.get_unverified_header(sign(a))["kid"] == old_kid  # published first
    verify(old_token, a)  # signed by the key about to retire, verifiable anywhere

    clock.now += PUBLISH_AHEAD + 1
    await a.refresh()
    await b.refresh()
    new_token = sign(b)
    assert jwt.get_unverified_header(new_token)["kid"] == new_key.kid
    assert kids(a) == kids(b) == {old_kid, new_key.kid}

    clock.now += DAY + 1
    await a.refresh()
    await b.refresh()
    assert kids(a) == kids(b) == {new_key.kid}


async def test_a_rotation_in_the_same_instant_survives_the_database_round_trip(
    connect: OpenDatabase,
) -> None:
    store = SqlKeyStore(await connect())
    clock = Clock()
    clock.now = 1_700_000_000.0
    signer = JwtSigner(store, BOX, issuer=ISSUER, now=clock)
    await signer.start()
    for _ in range(3):
        new_key = await rotate_keys(store, BOX, now=clock.now)
    clock.now += PUBLISH_AHEAD + 1
    await signer.refresh()
    assert jwt.get_unverified_header(sign(signer, audience=new_key.kid))["kid"] == new_key.kid
    active = [k for k in await store.list(retired_after=0.0) if k.retired is None]
    assert [k.kid for k in active] == [new_key.kid]


async def test_withdrawing_deletes_the_old_keys_from_the_database(
    connect: OpenDatabase,
) -> None:
    store = SqlKeyStore(await connect())
    signer = JwtSigner(store, BOX, issuer=ISSUER)
    await signer.start()
    (leaked,) = kids(signer)
    await rotate_keys(store, BOX, now=time.time())  # scheduled, published, not yet signing
    fresh = await rotate_keys(store, BOX, now=time.time(), withdraw=True)
    assert [k.kid for k in await store.list(retired_after=0.0)] == [fresh.kid]
    await signer.refresh()
    assert kids(signer) == {fresh.kid}
    assert jwt.get_unverified_header(sign(signer))["kid"] == fresh.kid
    assert leaked not in {k.kid for k in await store.list(retired_after=0.0)}  # gone


# --- authgate keys rotate|list -------------------------------------------------------

CONFIG = """
storage: sqlite:///authgate.db
secrets: {encryption_key: "an encryption key of at least 32 characters"}
tenants:
  - id: acme
    name: Acme
    domains: [acme.test]
"""


def run_cli(config_file: Path, *argv: str) -> int:
    common = common_options()
    parser = argparse.ArgumentParser(parents=[common])
    keys_cli.register(parser.add_subparsers(dest="command"), common)
    args = parser.parse_args(["-c", str(config_file), *argv])
    return int(args.func(args))


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    for name in list(os.environ):
        if name.startswith("AUTHGATE_"):
            monkeypatch.delenv(name)
    return path


def test_keys_rotate_then_list(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(config_file, "keys", "list") == 0
    assert "no signing keys" in capsys.readouterr().out

    assert run_cli(config_file, "keys", "rotate") == 0
    first = capsys.readouterr().out.split()[3]
    assert run_cli(config_file, "keys", "rotate") == 0
    out = capsys.readouterr().out
    second = out.split()[3]
    assert f"retired {first}" in out

    assert "published now; running gateways sign with it from " in out

    assert run_cli(config_file, "keys", "list", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    # The first key goes on signing until every cache has seen the second one.
    assert [(r["kid"], r["state"]) for r in rows] == [(second, "next"), (first, "signing")]
    assert run_cli(config_file, "keys", "list") == 0
    text = capsys.readouterr().out
    assert "PRIVATE" not in text
    assert f"{first}\tES256\tcreated " in text
    assert "next (signs from " in text

    async def gateway_signs_with_the_rotated_key() -> str:
        config = load_config(config_file, {})
        stores = await open_stores(config)
        try:
            signer = JwtSigner(stores.keys, load_secret_box(config), issuer=ISSUER)
            await signer.start()
            return str(jwt.get_unverified_header(sign(signer))["kid"])
        finally:
            await stores.close()

    assert asyncio.run(gateway_signs_with_the_rotated_key()) == first

    assert run_cli(config_file, "keys", "rotate", "--withdraw-old") == 0
    out = capsys.readouterr().out
    third = out.split()[3]
    assert f"withdrew {first}" in out and f"withdrew {second}" in out
    assert run_cli(config_file, "keys", "list", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["kid"], r["state"]) for r in rows] == [(third, "signing")]
    assert asyncio.run(gateway_signs_with_the_rotated_key()) == third


def test_keys_rotate_with_the_wrong_encryption_key_changes_nothing(
    config_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run_cli(config_file, "keys", "rotate") == 0
    capsys.readouterr()
    monkeypatch.setenv("AUTHGATE_SECRETS_ENCRYPTION_KEY", "another key, also 32 characters long!")
    assert run_cli(config_file, "keys", "rotate") == 1
    assert "nothing was changed" in capsys.readouterr().err
    monkeypatch.delenv("AUTHGATE_SECRETS_ENCRYPTION_KEY")
    assert run_cli(config_file, "keys", "list", "--json") == 0
    assert [r["state"] for r in json.loads(capsys.readouterr().out)] == ["signing"]
