"""Path and host confusion attacks against canonicalisation (SECURITY.md invariants 1 and 2).

Each attack is a request target that some gateway or upstream has read differently
from its neighbour. The gateway must either refuse it (400) or reduce it to one
canonical path such that every kind of upstream we model, reading what we actually
send (`wire_path`), serves exactly the path the policy decided on. An attacker who
gets a `/public/**` decision therefore never gets `/admin` served.
"""

from __future__ import annotations

import posixpath
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import ip_address, ip_network
from urllib.parse import unquote

import pytest

from gateway.canonical import (
    PathParameters,
    canonical_host,
    canonical_path,
    client_ip,
    forwarded_for_value,
    wire_path,
)
from gateway.errors import BadRequest


@dataclass(frozen=True)
class Attack:
    name: str
    tries: str  # what the attacker hopes some component gets wrong
    target: str  # the raw path on the request line (query already removed)


PATH_ATTACKS = [
    Attack("dot-dot", "an upstream resolves ../ that the policy did not", "/public/../admin"),
    Attack("encoded-dot-dot", "policy matches before decoding %2e", "/public/%2e%2e/admin"),
    Attack("upper-encoded-dot-dot", "case of the hex digits", "/public/%2E%2E/admin"),
    Attack("half-encoded-dot-dot", "only one dot encoded", "/public/.%2e/admin"),
    Attack("half-encoded-dot-dot-left", "only one dot encoded", "/public/%2e./admin"),
    Attack("encoded-dot", "%2e as a current-directory segment", "/public/%2e/../admin"),
    Attack("dot-dot-above-root", "climbing above the root", "/../../admin"),
    Attack("double-encoded-dot-dot", "a second decode somewhere", "/public/%252e%252e/admin"),
    Attack("encoded-slash", "%2F splits a segment only upstream", "/public%2F..%2Fadmin"),
    Attack("encoded-slash-lower", "lowercase %2f", "/public/..%2fadmin"),
    Attack("double-encoded-slash", "%252F decoded twice", "/public%252F..%252Fadmin"),
    Attack("backslash", "Windows/IIS treat \\ as /", "/public\\..\\admin"),
    Attack("encoded-backslash", "%5C decoded to \\ then to /", "/public/..%5Cadmin"),
    Attack("double-slash", "//admin escapes a prefix match on /admin", "//admin"),
    Attack("double-slash-inside", "empty segment breaks segment matching", "/admin//users"),
    Attack("slash-dot-slash", "/./ padding", "/./admin/./users"),
    Attack("tomcat-semicolon", "Tomcat reads ..; as ..", "/public/..;/admin"),
    Attack("semicolon-parameter", "policy sees /admin;x, upstream /admin", "/admin;x"),
    Attack("semicolon-in-prefix", "a parameter on the matched prefix", "/public;/../admin"),
    Attack("encoded-semicolon", "%3B decoded into a parameter", "/admin%3Bx/users"),
    Attack("nul-truncation", "C upstream stops at NUL", "/admin%00/public"),
    Attack("nul-extension", "static rule on *.png, upstream truncates", "/admin%00.png"),
    Attack("raw-nul", "raw NUL on the request line", "/admin\x00.png"),
    Attack("crlf", "header injection through the path", "/a%0D%0AX-Injected:%201"),
    Attack("tab", "whitespace trimmed by some parsers", "/admin%09"),
    Attack("overlong-dot", "overlong UTF-8 for '.' (C0 AE)", "/public/%C0%AE%C0%AE/admin"),
    Attack("overlong-slash", "overlong UTF-8 for '/' (C0 AF)", "/public%C0%AF..%C0%AFadmin"),
    Attack("overlong-three-byte", "three-byte overlong '.'", "/public/%E0%80%AE%E0%80%AE/admin"),
    Attack("invalid-utf8", "lossy decoding to U+FFFD", "/adm%FFin"),
    Attack("encoded-surrogate", "CESU-8 surrogate halves", "/adm%ED%A0%80in"),
    Attack("iis-unicode-escape", "IIS %u escapes", "/public/%u002e%u002e/admin"),
    Attack("malformed-escape", "escapes read differently when malformed", "/admin%2"),
    Attack("nested-escape", "%%32%65 becomes %2e after one pass", "/public/%%32%65%%32%65/admin"),
    Attack("fullwidth-dot-dot", "NFKC maps U+FF0E to '.'", "/public/\uff0e\uff0e/admin"),
    Attack(
        "encoded-fullwidth-slash", "NFKC maps U+FF0F to '/'", "/public%EF%BC%8F..%EF%BC%8Fadmin"
    ),
    Attack("two-dot-leader", "NFKC maps U+2025 to '..'", "/public/\u2025/admin"),
    Attack("encoded-letter", "policy compares the raw form", "/%61dmin"),
    Attack("case", "upstream is case-insensitive", "/ADMIN/users"),
    Attack("fragment", "an upstream stops at '#'", "/admin#/../public"),
    Attack("absolute-form", "the path hides inside an absolute URI", "http://good.com/admin"),
    Attack("trailing-dot-dot", "dot-dot as the last segment", "/admin/x/.."),
]


def _normalise(path: str) -> str:
    """Collapse slashes and resolve dot segments, independently of the code under test."""
    resolved = posixpath.normpath("/" + re.sub("/+", "/", path).lstrip("/"))
    return "/" if resolved in ("/", "//") else resolved


def _strip_parameters(path: str) -> str:
    return re.sub(r";[^/]*", "", path)


# How real upstreams read the request line we send them.
UPSTREAMS: dict[str, Callable[[str], str]] = {
    "decode-then-normalise": lambda wire: _normalise(unquote(wire, errors="strict")),
    "normalise-then-decode": lambda wire: unquote(_normalise(wire), errors="strict"),
    "backslash-is-slash": lambda wire: _normalise(unquote(wire).replace("\\", "/")),
    "strips-parameters": lambda wire: _normalise(unquote(_strip_parameters(wire))),
    "nfkc": lambda wire: _normalise(unicodedata.normalize("NFKC", unquote(wire))),
}


def _under(path: str, prefix: str) -> bool:
    """Whole-segment, case-insensitive prefix match, as the policy engine does."""
    path, prefix = path.lower(), prefix.lower()
    return path == prefix or path.startswith(prefix + "/")


def _attack_ids(attack: Attack) -> str:
    return attack.name


@pytest.mark.parametrize("mode", ["reject", "strip"])
@pytest.mark.parametrize("attack", PATH_ATTACKS, ids=_attack_ids)
def test_attack_is_refused_or_upstream_serves_what_was_decided(
    attack: Attack, mode: PathParameters
) -> None:
    try:
        decided = canonical_path(attack.target, path_parameters=mode)
    except BadRequest as refused:
        assert refused.status == 400
        return
    sent = wire_path(decided)
    assert canonical_path(sent, path_parameters=mode) == decided
    for upstream_name, upstream in UPSTREAMS.items():
        served = upstream(sent)
        expected = _normalise(decided)
        if upstream_name == "nfkc":
            expected = _normalise(unicodedata.normalize("NFKC", decided))
        assert served == expected, f"{upstream_name} serves {served!r}, policy saw {decided!r}"
        # The property that matters: the admin area is never served unless the policy saw it.
        assert _under(decided, "/admin") or not _under(served, "/admin")


MUST_REFUSE = [
    "encoded-slash",
    "encoded-slash-lower",
    "backslash",
    "encoded-backslash",
    "tomcat-semicolon",
    "semicolon-parameter",
    "semicolon-in-prefix",
    "encoded-semicolon",
    "nul-truncation",
    "nul-extension",
    "raw-nul",
    "crlf",
    "tab",
    "overlong-dot",
    "overlong-slash",
    "overlong-three-byte",
    "invalid-utf8",
    "encoded-surrogate",
    "iis-unicode-escape",
    "malformed-escape",
    "nested-escape",
    "fullwidth-dot-dot",
    "encoded-fullwidth-slash",
    "two-dot-leader",
    "fragment",
    "absolute-form",
]


@pytest.mark.parametrize("name", MUST_REFUSE)
def test_ambiguous_encodings_are_refused_outright(name: str) -> None:
    (attack,) = [a for a in PATH_ATTACKS if a.name == name]
    with pytest.raises(BadRequest):
        canonical_path(attack.target)


def test_double_encoding_is_refused_so_a_second_decode_cannot_differ() -> None:
    # Decoded once, this would be the literal segment "%2e%2e"; an upstream that
    # decodes again would serve /admin. Refusing it leaves no second reading.
    with pytest.raises(BadRequest):
        canonical_path("/public/%252e%252e/admin")


def test_semicolon_strip_mode_decides_on_the_stripped_path() -> None:
    decided = canonical_path("/public/..;/admin", path_parameters="strip")
    assert decided == "/admin"
    assert wire_path(decided) == "/admin"


# --- host confusion ------------------------------------------------------------------------

PROTECTED_HOST = "good.example"

SAME_HOST = [
    "good.example",
    "GOOD.EXAMPLE",
    "Good.Example.",
    "good.example:443",
    "good.example.:8443",
    "good.example:",
    "\uff47ood.example",  # fullwidth g, mapped by UTS46
]


@pytest.mark.parametrize("raw", SAME_HOST)
def test_spellings_of_one_host_are_one_host(raw: str) -> None:
    assert canonical_host(raw) == PROTECTED_HOST


HOST_ATTACKS = [
    pytest.param("evil.example@good.example", id="userinfo-before"),
    pytest.param("good.example@evil.example", id="userinfo-after"),
    pytest.param("good.example/evil", id="path-in-host"),
    pytest.param("good.example\\evil.example", id="backslash"),
    pytest.param("good.example#evil.example", id="fragment"),
    pytest.param("good.example?evil.example", id="query"),
    pytest.param("good.example%2fevil", id="percent"),
    pytest.param("good.example evil.example", id="space"),
    pytest.param("good.example\x00evil.example", id="nul"),
    pytest.param("good.example\r\nHost: evil.example", id="crlf"),
    pytest.param("good.example:80@evil.example", id="port-then-userinfo"),
    pytest.param("good.example..", id="double-trailing-dot"),
    pytest.param("good\uff0eexample\uff0fevil", id="fullwidth-delimiters"),
]


@pytest.mark.parametrize("raw", HOST_ATTACKS)
def test_host_confusion_is_refused(raw: str) -> None:
    with pytest.raises(BadRequest):
        canonical_host(raw)


@pytest.mark.parametrize(
    "raw", ["good.example.evil.example", "evilgood.example", "good-example", "xgood.example"]
)
def test_lookalike_hosts_stay_different_hosts(raw: str) -> None:
    assert canonical_host(raw) != PROTECTED_HOST


# --- client IP spoofing --------------------------------------------------------------------

PROXIES = [ip_network("10.0.0.0/8")]


def test_client_cannot_spoof_its_address_without_a_trusted_proxy() -> None:
    assert client_ip("203.0.113.9", ["10.0.0.5", "127.0.0.1"], PROXIES) == ip_address("203.0.113.9")


def test_client_cannot_spoof_its_address_through_a_trusted_proxy() -> None:
    # The proxy appends the real client; whatever the client prepended is to its left.
    xff = ["127.0.0.1, 10.0.0.7, 203.0.113.9"]
    assert client_ip("10.0.0.1", xff, PROXIES) == ip_address("203.0.113.9")


def test_garbage_in_forwarded_for_stops_at_the_last_trusted_hop() -> None:
    assert client_ip("10.0.0.1", ["<script>, 203.0.113.9"], PROXIES) == ip_address("203.0.113.9")
    assert client_ip("10.0.0.1", ["203.0.113.9, <script>"], PROXIES) == ip_address("10.0.0.1")


def test_client_sent_chain_is_not_passed_upstream() -> None:
    assert forwarded_for_value(["127.0.0.1"], "203.0.113.9", peer_trusted=False) == "203.0.113.9"
