"""Every nginx file in deploy/ passes `nginx -t` with Debian's nginx.

Each file is included, unchanged in its directives, into a minimal nginx.conf in a
temporary folder. Only what is the operator's to fill in is replaced: certificate
paths (by a throwaway certificate) and upstream host names that resolve only inside
Docker or Kubernetes (by 127.0.0.1, since `nginx -t` resolves them).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from gateway.config.model import Config
from gateway.identity_headers import stripped_header_names
from tests.unit.deploy.tools import (
    DEPLOY,
    NGINX_SNIPPETS,
    nginx_main,
    require_tool,
    self_signed_certificate,
)

NGINX_FILES = sorted(path for path in DEPLOY.rglob("*.conf") if NGINX_SNIPPETS not in path.parents)
CERTIFICATE = re.compile(r"^(\s*ssl_certificate)\s+\S+;", re.MULTILINE)
CERTIFICATE_KEY = re.compile(r"^(\s*ssl_certificate_key)\s+\S+;", re.MULTILINE)
UPSTREAM_SERVER = re.compile(r"^(\s*server)\s+[A-Za-z][\w.-]*:(\d+)", re.MULTILINE)


def nginx_test(nginx: str, prefix: Path, http_body: str) -> subprocess.CompletedProcess[str]:
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_main(prefix, http_body))
    # Relative includes (`include snippets/x.conf;`) resolve as in /etc/nginx/.
    (prefix / "snippets").symlink_to(NGINX_SNIPPETS, target_is_directory=True)
    return subprocess.run(
        [nginx, "-t", "-q", "-c", str(conf), "-p", str(prefix), "-e", str(prefix / "error.log")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def satisfied(text: str, cert: Path, key: Path) -> str:
    text = CERTIFICATE.sub(rf"\1 {cert};", text)
    text = CERTIFICATE_KEY.sub(rf"\1 {key};", text)
    return UPSTREAM_SERVER.sub(r"\1 127.0.0.1:\2", text)


def test_the_deploy_kit_has_nginx_files() -> None:
    names = {path.name for path in NGINX_FILES}
    assert {"authgate-proxy.conf", "authgate-forward-auth.conf"} <= names
    assert (NGINX_SNIPPETS / "authgate-authrequest.conf").is_file()
    assert (NGINX_SNIPPETS / "authgate-identity.conf").is_file()


@pytest.mark.parametrize("path", NGINX_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_nginx_accepts_the_file(path: Path, tmp_path: Path) -> None:
    nginx = require_tool("nginx")
    cert, key = self_signed_certificate(tmp_path)
    included = tmp_path / path.name
    included.write_text(satisfied(path.read_text(), cert, key))
    result = nginx_test(nginx, tmp_path, f"    include {included};\n")
    assert result.returncode == 0, result.stderr


def test_nginx_accepts_the_snippets_in_a_server_and_a_location(tmp_path: Path) -> None:
    nginx = require_tool("nginx")
    body = f"""
    upstream authgate {{ server 127.0.0.1:9; }}
    server {{
        listen 127.0.0.1:9;
        include {NGINX_SNIPPETS}/authgate-authrequest.conf;
        location / {{
            proxy_pass http://127.0.0.1:9;
            include {NGINX_SNIPPETS}/authgate-identity.conf;
        }}
    }}
"""
    result = nginx_test(nginx, tmp_path, body)
    assert result.returncode == 0, result.stderr


def test_nginx_rejects_a_broken_file(tmp_path: Path) -> None:
    """The harness itself can fail: a file nginx refuses is reported."""
    nginx = require_tool("nginx")
    result = nginx_test(nginx, tmp_path, "    server { proxy_pass; }\n")
    assert result.returncode != 0


def test_the_identity_snippet_clears_every_name_authgate_strips() -> None:
    """nginx, not authgate, forwards to the app in auth_request mode: it must drop
    client-sent identity headers of every name authgate itself would strip."""
    config = Config(source=Path("config.yaml"), tenants=())
    names = stripped_header_names(config)
    text = (NGINX_SNIPPETS / "authgate-identity.conf").read_text().lower()
    set_names = set(re.findall(r"^proxy_set_header\s+(\S+)", text, re.MULTILINE))
    assert names <= set_names, sorted(names - set_names)
