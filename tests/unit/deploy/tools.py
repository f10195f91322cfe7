"""What the deploy tests share: where deploy/ is, the Debian tools they drive, and a
throwaway certificate for nginx files that terminate TLS."""

from __future__ import annotations

import asyncio
import datetime
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"
NGINX_SNIPPETS = DEPLOY / "nginx" / "snippets"


def require_tool(name: str) -> str:
    """The tool's path; skip without it, except under CI=true, where .ci/run installs it."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")
    if path is None:
        message = f"{name} is not installed (Debian: apt-get install {name})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}; CI=true must not skip it")
        pytest.skip(message)
    return path


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A one-day self-signed certificate and key (PEM) for `nginx -t`."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "authgate.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    write_pem(cert_path, cert)
    write_pem(key_path, key)
    return cert_path, key_path


def write_pem(path: Path, item: x509.Certificate | ec.EllipticCurvePrivateKey) -> None:
    """A certificate, or an unencrypted PKCS#8 private key, as PEM."""
    if isinstance(item, x509.Certificate):
        path.write_bytes(item.public_bytes(serialization.Encoding.PEM))
        return
    path.write_bytes(
        item.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def nginx_main(prefix: Path, http_body: str) -> str:
    """A self-contained nginx.conf: pid, logs and temp files under `prefix`.

    Debian's nginx has /var/lib/nginx compiled in for temp files and drops workers
    to `nobody` when started as root; both would reach outside the test's folder.
    """
    temp = prefix / "temp"
    temp.mkdir(parents=True, exist_ok=True)
    user = "user root;\n" if os.geteuid() == 0 else ""
    return (
        f"{user}worker_processes 1;\n"
        f"pid {prefix}/nginx.pid;\n"
        f"error_log {prefix}/error.log info;\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        "    access_log off;\n"
        f"    client_body_temp_path {temp}/client;\n"
        f"    proxy_temp_path {temp}/proxy;\n"
        f"    fastcgi_temp_path {temp}/fastcgi;\n"
        f"    uwsgi_temp_path {temp}/uwsgi;\n"
        f"    scgi_temp_path {temp}/scgi;\n"
        f"{http_body}"
        "}\n"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    """Until nginx (`process`, logging to `log`) accepts connections on `port`."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"nginx exited with {process.returncode}: {log.read_text()}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.02)
            continue
        writer.close()
        await writer.wait_closed()
        return
    pytest.fail(f"nginx did not listen on {port}: {log.read_text()}")
