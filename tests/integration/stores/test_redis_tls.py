"""`rediss://` against a real redis-server speaking TLS only on its TLS port, with a
certificate from a CA made here: sessions go over TLS when the CA is named, and a
server the gateway cannot verify is refused, never used unverified."""

from __future__ import annotations

import datetime
import ipaddress
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.stores.redis import RedisSessionStore, open_redis
from tests.integration.servers import RedisServer, spare_port, start_redis
from tests.integration.stores.test_session_store import record as session_record
from tests.unit.deploy.tools import write_pem

pytestmark = pytest.mark.redis


@dataclass(frozen=True)
class TlsRedis:
    server: RedisServer
    tls_port: int
    ca: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write_ca_and_server_cert(folder: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate for 127.0.0.1 signed by it (one day, ECDSA P-256)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("authgate test CA"))
        .issuer_name(_name("authgate test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = folder / "ca.pem", folder / "server.pem", folder / "key.pem"
    write_pem(ca_path, ca_cert)
    write_pem(cert_path, cert)
    write_pem(key_path, key)
    return ca_path, cert_path, key_path


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    folder = tmp_path_factory.mktemp("redis-tls")
    ca, cert, key = _write_ca_and_server_cert(folder)
    tls_port = spare_port()
    options = ("--tls-port", str(tls_port), "--tls-cert-file", str(cert))
    options += ("--tls-key-file", str(key), "--tls-ca-cert-file", str(ca))
    options += ("--tls-auth-clients", "no")
    # The plain port stays open only for the harness's readiness check.
    server = start_redis(folder, options=options)
    yield TlsRedis(server, tls_port, ca)
    server.stop(kill=True)


async def test_sessions_go_over_tls_when_the_ca_is_named(tls_redis: TlsRedis) -> None:
    handle = open_redis(f"rediss://127.0.0.1:{tls_redis.tls_port}/0?ssl_ca_certs={tls_redis.ca}")
    try:
        assert await handle.ping()
        store = RedisSessionStore(handle.client, f"tls{secrets.token_hex(4)}:")
        record = session_record()
        await store.create(record)
        assert await store.get(record.id_hash) == record
        assert await store.revoke(record.id_hash)
    finally:
        await handle.close()


async def test_the_tls_port_speaks_nothing_else(tls_redis: TlsRedis) -> None:
    # Proof that the test above went over TLS: plain redis:// on that port gets nowhere.
    handle = open_redis(f"redis://127.0.0.1:{tls_redis.tls_port}/0")
    try:
        assert not await handle.ping()
    finally:
        await handle.close()


async def test_a_server_that_cannot_be_verified_is_refused(tls_redis: TlsRedis) -> None:
    # No CA named: the system store does not know ours, so the handshake fails and the
    # store reports itself down (protected routes then answer 503), never unverified.
    handle = open_redis(f"rediss://127.0.0.1:{tls_redis.tls_port}/0")
    try:
        assert not await handle.ping()
    finally:
        await handle.close()
