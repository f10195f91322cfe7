"""Canonical host, path, wire path and client IP: the table of what each input becomes."""

from __future__ import annotations

import re
import unicodedata
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.canonical import (
    canonical_host,
    canonical_path,
    client_ip,
    forwarded_for_value,
    peer_is_trusted,
    split_target,
    wire_path,
)
from gateway.errors import BadRequest

# --- canonical_path: accepted inputs and the one form they become -------------------------

PATH_ACCEPTED = [
    # plain paths are returned untouched
    pytest.param("/", "/", id="root"),
    pytest.param("/admin", "/admin", id="plain"),
    pytest.param("/Admin/Users", "/Admin/Users", id="case-preserved"),
    pytest.param("/static/app.min.js", "/static/app.min.js", id="dots-inside-segment"),
    pytest.param("/.well-known/acme", "/.well-known/acme", id="leading-dot-segment-name"),
    pytest.param("/a/.../b", "/a/.../b", id="three-dots-is-a-name"),
    pytest.param("/a/..b/c", "/a/..b/c", id="dot-dot-prefix-is-a-name"),
    pytest.param("/a/b..", "/a/b..", id="dot-dot-suffix-is-a-name"),
    pytest.param("/a/", "/a/", id="trailing-slash-kept"),
    pytest.param("/~user/x", "/~user/x", id="tilde"),
    pytest.param("/a:b@c!$&'()*+,=", "/a:b@c!$&'()*+,=", id="pchar-sub-delims"),
    # percent-decoding, exactly once
    pytest.param("/%61dmin", "/admin", id="encoded-letter"),
    pytest.param("/%41DMIN", "/ADMIN", id="encoded-upper-letter"),
    pytest.param("/a%20b", "/a b", id="encoded-space"),
    pytest.param("/caf%C3%A9", "/café", id="utf8-two-byte"),
    pytest.param("/caf%c3%a9", "/café", id="utf8-lowercase-hex"),
    pytest.param("/%E2%82%AC", "/€", id="utf8-three-byte"),
    pytest.param("/%F0%9F%98%80", "/\U0001f600", id="utf8-four-byte"),
    pytest.param("/100%25", "/100%", id="encoded-percent"),
    pytest.param("/a%3Fb", "/a?b", id="encoded-question-mark-is-a-name"),
    pytest.param("/a%23b", "/a#b", id="encoded-hash-is-a-name"),
    pytest.param("/%7Bx%7D", "/{x}", id="encoded-braces"),
    pytest.param("/{x}", "/{x}", id="raw-braces"),
    # dot segments, after decoding
    pytest.param("/static/../admin", "/admin", id="dot-dot"),
    pytest.param("/a/b/../../admin", "/admin", id="dot-dot-twice"),
    pytest.param("/a/%2e%2e/admin", "/admin", id="encoded-dot-dot-lower"),
    pytest.param("/a/%2E%2E/admin", "/admin", id="encoded-dot-dot-upper"),
    pytest.param("/a/.%2e/admin", "/admin", id="half-encoded-dot-dot-right"),
    pytest.param("/a/%2e./admin", "/admin", id="half-encoded-dot-dot-left"),
    pytest.param("/.%2e/admin", "/admin", id="half-encoded-dot-dot-above-root"),
    pytest.param("/%2E%2E/", "/", id="encoded-dot-dot-at-root"),
    pytest.param("/../admin", "/admin", id="dot-dot-above-root"),
    pytest.param("/../../../../etc/passwd", "/etc/passwd", id="many-dot-dots-above-root"),
    pytest.param("/..", "/", id="lone-dot-dot"),
    pytest.param("/.", "/", id="lone-dot"),
    pytest.param("/./admin", "/admin", id="dot"),
    pytest.param("/%2e/admin", "/admin", id="encoded-dot"),
    pytest.param("/a/.", "/a/", id="trailing-dot-keeps-slash"),
    pytest.param("/a/..", "/", id="trailing-dot-dot-to-root"),
    pytest.param("/a/b/..", "/a/", id="trailing-dot-dot-keeps-slash"),
    pytest.param("/a/b/%2e%2e", "/a/", id="trailing-encoded-dot-dot"),
    pytest.param("/public/../admin/", "/admin/", id="dot-dot-with-trailing-slash"),
    # empty segments collapse
    pytest.param("//admin", "/admin", id="double-slash-leading"),
    pytest.param("///admin", "/admin", id="triple-slash-leading"),
    pytest.param("/a//b", "/a/b", id="double-slash-inside"),
    pytest.param("/a//", "/a/", id="double-slash-trailing"),
    pytest.param("//", "/", id="double-slash-only"),
    pytest.param("//../admin", "/admin", id="double-slash-then-dot-dot"),
    pytest.param("/a/.//../admin", "/admin", id="dot-slash-slash-dot-dot"),
]


@pytest.mark.parametrize(("raw", "expected"), PATH_ACCEPTED)
def test_canonical_path_accepts_and_normalises(raw: str, expected: str) -> None:
    assert canonical_path(raw) == expected


PATH_REFUSED = [
    # not an origin-form path
    pytest.param("", "must start with '/'", id="empty"),
    pytest.param("admin", "must start with '/'", id="relative"),
    pytest.param("*", "must start with '/'", id="asterisk-form"),
    pytest.param("http://h/admin", "must start with '/'", id="absolute-form"),
    pytest.param("\\admin", "must start with '/'", id="leading-backslash"),
    pytest.param("/a#b", "fragment", id="raw-fragment"),
    pytest.param("/a?b=1", "query", id="query-not-split-off"),
    # encoded separators
    pytest.param("/a/..%2fadmin", "%2F", id="encoded-slash-lower"),
    pytest.param("/a%2Fb", "%2F", id="encoded-slash-upper"),
    pytest.param("/..%2F..%2Fadmin", "%2F", id="encoded-slash-traversal"),
    pytest.param("/a%5Cb", "%5C", id="encoded-backslash-upper"),
    pytest.param("/a/..%5cadmin", "%5C", id="encoded-backslash-traversal"),
    pytest.param("/a\\b", "backslash", id="raw-backslash"),
    pytest.param("/a/..\\admin", "backslash", id="raw-backslash-traversal"),
    # control characters, raw and encoded
    pytest.param("/a%00", "control", id="encoded-nul-end"),
    pytest.param("/%00/admin", "control", id="encoded-nul-start"),
    pytest.param("/admin%00.png", "control", id="encoded-nul-extension-trick"),
    pytest.param("/a\x00b", "control", id="raw-nul"),
    pytest.param("/a%09b", "control", id="encoded-tab"),
    pytest.param("/a%0Db", "control", id="encoded-cr"),
    pytest.param("/a%0ab", "control", id="encoded-lf"),
    pytest.param("/a%0D%0ASet-Cookie:x", "control", id="encoded-crlf-injection"),
    pytest.param("/a\tb", "control", id="raw-tab"),
    pytest.param("/a\r\nb", "control", id="raw-crlf"),
    pytest.param("/a%1Fb", "control", id="encoded-unit-separator"),
    pytest.param("/a%7Fb", "control", id="encoded-del"),
    pytest.param("/a\x7fb", "control", id="raw-del"),
    pytest.param("/a%C2%85b", "control", id="encoded-c1-next-line"),
    pytest.param("/a%C2%9Bb", "control", id="encoded-c1-csi"),
    # malformed escapes
    pytest.param("/a%", "malformed", id="lone-percent"),
    pytest.param("/a%4", "malformed", id="truncated-escape"),
    pytest.param("/a%zz", "malformed", id="non-hex-escape"),
    pytest.param("/a%4g", "malformed", id="half-hex-escape"),
    pytest.param("/%u002e%u002e/admin", "malformed", id="iis-unicode-escape"),
    pytest.param("/%%32%65", "malformed", id="nested-escape"),
    # invalid UTF-8
    pytest.param("/%C0%AE%C0%AE/admin", "UTF-8", id="overlong-dot"),
    pytest.param("/%C0%AF", "UTF-8", id="overlong-slash"),
    pytest.param("/%E0%80%AE", "UTF-8", id="overlong-dot-three-byte"),
    pytest.param("/%C1%9C", "UTF-8", id="overlong-backslash"),
    pytest.param("/%ED%A0%80", "UTF-8", id="encoded-surrogate"),
    pytest.param("/%FF", "UTF-8", id="invalid-byte"),
    pytest.param("/%C3", "UTF-8", id="truncated-sequence"),
    pytest.param("/%80", "UTF-8", id="lone-continuation-byte"),
    pytest.param("/%F4%90%80%80", "UTF-8", id="above-unicode-range"),
    pytest.param("/a\udcff", "UTF-8", id="surrogate-escaped-raw-byte"),
    # Unicode compatibility forms of delimiters
    pytest.param("/public/\uff0e\uff0e/admin", "normalises", id="fullwidth-dot-dot"),
    pytest.param("/a%EF%BC%8Fb", "normalises", id="encoded-fullwidth-slash"),
    pytest.param("/a\u2025/b", "normalises", id="two-dot-leader"),
    pytest.param("/a%EF%BC%BCb", "normalises", id="encoded-fullwidth-backslash"),
    # path parameters (reject mode)
    pytest.param("/admin;x", "';'", id="parameter"),
    pytest.param("/admin;", "';'", id="empty-parameter"),
    pytest.param("/..;/admin", "';'", id="tomcat-dot-dot-semicolon"),
    pytest.param("/public;/../admin", "';'", id="parameter-then-dot-dot"),
    pytest.param("/admin%3Bx", "%3B", id="encoded-semicolon"),
    pytest.param("/admin%3bx", "%3B", id="encoded-semicolon-lower"),
]


@pytest.mark.parametrize(("raw", "reason"), PATH_REFUSED)
def test_canonical_path_refuses_ambiguous_input(raw: str, reason: str) -> None:
    with pytest.raises(BadRequest) as caught:
        canonical_path(raw)
    assert caught.value.status == 400
    assert reason in caught.value.reason


PATH_STRIPPED = [
    pytest.param("/admin;x", "/admin", id="parameter"),
    pytest.param("/admin;jsessionid=abc/users", "/admin/users", id="parameter-mid-path"),
    pytest.param("/a;x/b;y/c;z", "/a/b/c", id="parameter-every-segment"),
    pytest.param("/..;/admin", "/admin", id="tomcat-dot-dot-semicolon"),
    pytest.param("/public/..;x/admin", "/admin", id="dot-dot-with-parameter"),
    pytest.param("/;x/admin", "/admin", id="parameter-only-segment"),
    pytest.param("/a/;/b", "/a/b", id="bare-semicolon-segment"),
    pytest.param("/admin;a=%41", "/admin", id="parameter-with-escape"),
]


@pytest.mark.parametrize(("raw", "expected"), PATH_STRIPPED)
def test_strip_mode_removes_path_parameters_per_segment(raw: str, expected: str) -> None:
    assert canonical_path(raw, path_parameters="strip") == expected


def test_strip_mode_still_refuses_an_encoded_semicolon() -> None:
    with pytest.raises(BadRequest, match="%3B"):
        canonical_path("/admin%3Bx", path_parameters="strip")


def test_an_unknown_parameter_mode_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="path_parameters"):
        canonical_path("/", path_parameters="keep")  # type: ignore[arg-type]


# --- wire_path ---------------------------------------------------------------------------

WIRE = [
    pytest.param("/", "/", id="root"),
    pytest.param("/admin/users/", "/admin/users/", id="plain-untouched"),
    pytest.param("/a:b@c!$&'()*+,=~", "/a:b@c!$&'()*+,=~", id="pchar-untouched"),
    pytest.param("/café", "/caf%C3%A9", id="non-ascii-as-utf8"),
    pytest.param("/a b", "/a%20b", id="space"),
    pytest.param("/%2e%2e", "/%252e%252e", id="literal-percent-re-encoded"),
    pytest.param("/a?b", "/a%3Fb", id="question-mark"),
    pytest.param("/a#b", "/a%23b", id="hash"),
    pytest.param('/"<>{}|^`', "/%22%3C%3E%7B%7D%7C%5E%60", id="not-pchar"),
    pytest.param("/a;b", "/a%3Bb", id="semicolon-never-literal"),
]


@pytest.mark.parametrize(("canonical", "wire"), WIRE)
def test_wire_path_encodes_exactly_what_must_be_encoded(canonical: str, wire: str) -> None:
    assert wire_path(canonical) == wire


@pytest.mark.parametrize("raw", ["/%252e%252e/admin", "/%252F", "/a%2541", "/%25%32%65"])
def test_double_encoding_is_refused(raw: str) -> None:
    # An upstream that decodes a second time would see another path than we decided on.
    with pytest.raises(BadRequest, match="double percent-encoding"):
        canonical_path(raw)


# --- canonical_host ----------------------------------------------------------------------

HOST_ACCEPTED = [
    pytest.param("example.com", "example.com", id="plain"),
    pytest.param("Example.COM.", "example.com", id="case-and-trailing-dot"),
    pytest.param("example.com:8080", "example.com", id="port"),
    pytest.param("EXAMPLE.com:", "example.com", id="empty-port"),
    pytest.param("example.com.:443", "example.com", id="trailing-dot-and-port"),
    pytest.param("localhost", "localhost", id="single-label"),
    pytest.param("my_service.internal", "my_service.internal", id="underscore"),
    pytest.param("a-b.example", "a-b.example", id="hyphen"),
    pytest.param("127.0.0.1", "127.0.0.1", id="ipv4"),
    pytest.param("127.0.0.1:9000", "127.0.0.1", id="ipv4-port"),
    pytest.param("[::1]", "[::1]", id="ipv6"),
    pytest.param("[::1]:443", "[::1]", id="ipv6-port"),
    pytest.param("[2001:DB8:0::1]", "[2001:db8::1]", id="ipv6-compressed-lowercase"),
    pytest.param("bücher.example", "xn--bcher-kva.example", id="idn"),
    pytest.param("BÜCHER.example:443", "xn--bcher-kva.example", id="idn-uppercase-port"),
    pytest.param("xn--bcher-kva.example", "xn--bcher-kva.example", id="punycode"),
    pytest.param("bücher\u3002example", "xn--bcher-kva.example", id="idn-ideographic-dot"),
    pytest.param("\uff21cme.example", "acme.example", id="fullwidth-letter-mapped"),
    pytest.param("a" * 63 + ".example", "a" * 63 + ".example", id="label-63"),
]


@pytest.mark.parametrize(("raw", "expected"), HOST_ACCEPTED)
def test_canonical_host_accepts_and_normalises(raw: str, expected: str) -> None:
    assert canonical_host(raw) == expected


HOST_REFUSED = [
    pytest.param("", id="empty"),
    pytest.param(" example.com", id="leading-space"),
    pytest.param("exa mple.com", id="inner-space"),
    pytest.param("evil.com@good.com", id="userinfo"),
    pytest.param("user:pass@good.com", id="userinfo-password"),
    pytest.param("good.com/evil", id="slash"),
    pytest.param("good.com\\evil", id="backslash"),
    pytest.param("good.com%2eevil", id="percent"),
    pytest.param("good.com\x00.evil", id="nul"),
    pytest.param("good.com\r\nX-Evil: 1", id="crlf"),
    pytest.param("good.com\t", id="tab"),
    pytest.param("good.com?x", id="question-mark"),
    pytest.param("good.com#x", id="hash"),
    pytest.param("a..b", id="empty-label"),
    pytest.param(".example.com", id="leading-dot"),
    pytest.param(".", id="only-dot"),
    pytest.param("example.com..", id="two-trailing-dots"),
    pytest.param("-a.example", id="label-leading-hyphen"),
    pytest.param("a-.example", id="label-trailing-hyphen"),
    pytest.param("a" * 64 + ".example", id="label-64"),
    pytest.param(".".join(["a" * 63] * 4), id="total-over-253"),
    pytest.param("example.com:99999", id="port-out-of-range"),
    pytest.param("example.com:80a", id="port-not-numeric"),
    pytest.param("example.com:-1", id="port-negative"),
    pytest.param("example.com:80:80", id="two-ports"),
    pytest.param("::1", id="ipv6-unbracketed"),
    pytest.param("[::1", id="ipv6-unclosed"),
    pytest.param("[::1]x", id="ipv6-trailing-garbage"),
    pytest.param("[fe80::1%25eth0]", id="ipv6-zone-id"),
    pytest.param("[not-an-ip]", id="ipv6-garbage"),
    pytest.param("[v1.fe]", id="ipvfuture"),
    pytest.param("127.1", id="ipv4-short-form"),
    pytest.param("0x7f.0.0.1", id="ipv4-hex"),
    pytest.param("0177.0.0.1", id="ipv4-octal"),
    pytest.param("2130706433", id="ipv4-integer"),
    pytest.param("1.2.3.256", id="ipv4-out-of-range"),
    pytest.param("good.com\uff0fevil", id="fullwidth-slash"),
    pytest.param("good.com\uff20evil", id="fullwidth-at"),
    pytest.param("b\u00fccher.\u2100", id="idn-mapping-to-slash"),
]


@pytest.mark.parametrize("raw", HOST_REFUSED)
def test_canonical_host_refuses_what_is_not_a_host(raw: str) -> None:
    with pytest.raises(BadRequest) as caught:
        canonical_host(raw)
    assert caught.value.status == 400
    assert caught.value.reason.startswith("host:")


# --- client_ip and X-Forwarded-For -------------------------------------------------------

TRUSTED: list[IPv4Network | IPv6Network] = [ip_network("10.0.0.0/8"), ip_network("fd00::/8")]

CLIENT_IP = [
    pytest.param("203.0.113.7", [], "203.0.113.7", id="no-proxy"),
    pytest.param("203.0.113.7", ["1.2.3.4"], "203.0.113.7", id="untrusted-peer-xff-ignored"),
    pytest.param("10.0.0.1", [], "10.0.0.1", id="trusted-peer-no-xff"),
    pytest.param("10.0.0.1", ["1.2.3.4"], "1.2.3.4", id="trusted-peer"),
    pytest.param("10.0.0.1", ["6.6.6.6, 1.2.3.4"], "1.2.3.4", id="rightmost-untrusted-wins"),
    pytest.param("10.0.0.1", ["1.2.3.4, 10.0.0.2"], "1.2.3.4", id="skip-trusted-hops"),
    pytest.param("10.0.0.1", ["6.6.6.6", "1.2.3.4, 10.0.0.9"], "1.2.3.4", id="repeated-header"),
    pytest.param("10.0.0.1", ["10.0.0.3, 10.0.0.2"], "10.0.0.3", id="all-trusted-leftmost"),
    pytest.param("10.0.0.1", ["1.2.3.4:5678"], "1.2.3.4", id="ipv4-with-port"),
    pytest.param("10.0.0.1", ["[2001:db8::1]:443"], "2001:db8::1", id="ipv6-bracket-port"),
    pytest.param("10.0.0.1", ["[2001:db8::1]"], "2001:db8::1", id="ipv6-bracket"),
    pytest.param("10.0.0.1", ["2001:db8::1"], "2001:db8::1", id="ipv6-bare"),
    pytest.param("10.0.0.1", ["::ffff:1.2.3.4"], "1.2.3.4", id="ipv4-mapped-entry"),
    pytest.param("::ffff:10.0.0.1", ["1.2.3.4"], "1.2.3.4", id="ipv4-mapped-peer"),
    pytest.param("fd00::1", ["1.2.3.4"], "1.2.3.4", id="ipv6-trusted-peer"),
    pytest.param("10.0.0.1", ["garbage"], "10.0.0.1", id="garbage-stops-at-peer"),
    pytest.param("10.0.0.1", ["6.6.6.6, garbage, 10.0.0.2"], "10.0.0.2", id="garbage-mid"),
    pytest.param("10.0.0.1", ["1.2.3.4, "], "10.0.0.1", id="empty-entry-stops"),
    pytest.param("10.0.0.1", [""], "10.0.0.1", id="empty-header"),
    pytest.param("10.0.0.1", ["unknown"], "10.0.0.1", id="unknown-token"),
    pytest.param("10.0.0.1", ["1.2.3.4:99999999"], "10.0.0.1", id="bad-port"),
    pytest.param("10.0.0.1", ["[1.2.3.4"], "10.0.0.1", id="unclosed-bracket"),
    pytest.param("10.0.0.1", [" 1.2.3.4 "], "1.2.3.4", id="whitespace-trimmed"),
]


@pytest.mark.parametrize(("peer", "xff", "expected"), CLIENT_IP)
def test_client_ip_believes_xff_only_from_trusted_proxies(
    peer: str, xff: list[str], expected: str
) -> None:
    assert client_ip(peer, xff, TRUSTED) == ip_address(expected)


def test_client_ip_is_none_without_a_usable_peer() -> None:
    assert client_ip(None, ["1.2.3.4"], TRUSTED) is None
    assert client_ip("not-an-ip", ["1.2.3.4"], TRUSTED) is None


def test_client_ip_trusts_nothing_when_no_proxies_are_configured() -> None:
    assert client_ip("10.0.0.1", ["1.2.3.4"], []) == ip_address("10.0.0.1")


@pytest.mark.parametrize(
    ("peer", "trusted"),
    [
        pytest.param("10.0.0.1", True, id="ipv4"),
        pytest.param("::ffff:10.0.0.1", True, id="ipv4-mapped"),
        pytest.param("fd00::5", True, id="ipv6"),
        pytest.param("203.0.113.7", False, id="untrusted"),
        pytest.param("garbage", False, id="garbage"),
        pytest.param(None, False, id="none"),
    ],
)
def test_peer_is_trusted_parses_like_client_ip(peer: str | None, trusted: bool) -> None:
    assert peer_is_trusted(peer, TRUSTED) is trusted


def test_forwarded_for_from_a_trusted_peer_extends_the_chain() -> None:
    assert forwarded_for_value(["1.2.3.4", " 5.6.7.8 "], "10.0.0.1", True) == (
        "1.2.3.4, 5.6.7.8, 10.0.0.1"
    )
    assert forwarded_for_value([], "10.0.0.1", True) == "10.0.0.1"


def test_forwarded_for_from_an_untrusted_peer_is_only_the_peer() -> None:
    assert forwarded_for_value(["1.2.3.4"], "203.0.113.7", False) == "203.0.113.7"


# --- properties ---------------------------------------------------------------------------

PIECES = st.sampled_from(
    [
        "/", "//", ".", "..", "%2e", "%2E", "%2e%2e", ".%2e", "%2f", "%2F", "%5c", "\\",
        "%25", "%252e", "%", "%4", "%zz", ";", ";x", "%3b", "%00", "%09", "\x00", "\t",
        "a", "A", "admin", "é", "%C3%A9", "%C0%AE", "%ED%A0%80", "%FF", "#", "?", " ",
        "%20", "\uff0e", "~", "@", ":",
    ]
)  # fmt: skip
RAW_PATHS = st.one_of(
    st.lists(PIECES, max_size=12).map(lambda parts: "/" + "".join(parts)),
    st.text(max_size=30).map(lambda text: "/" + text),
    st.text(max_size=30),
)
MODES = st.sampled_from(["reject", "strip"])


def _canonical_or_none(raw: str, mode: str) -> str | None:
    try:
        return canonical_path(raw, path_parameters=mode)  # type: ignore[arg-type]
    except BadRequest:
        return None


@given(RAW_PATHS, MODES)
@example("/a/%2e%2e/b/", "reject")
@example("/%252e%252e/", "strip")
def test_canonical_path_is_a_fixed_point_through_the_wire(raw: str, mode: str) -> None:
    # Never anything but BadRequest (an unexpected exception fails the test) ...
    canonical = _canonical_or_none(raw, mode)
    if canonical is None:
        return
    # ... and what goes upstream canonicalises to exactly what was decided on.
    assert canonical_path(wire_path(canonical), path_parameters=mode) == canonical  # type: ignore[arg-type]


@given(RAW_PATHS, MODES)
def test_canonical_path_output_has_no_ambiguous_parts(raw: str, mode: str) -> None:
    canonical = _canonical_or_none(raw, mode)
    if canonical is None:
        return
    assert canonical.startswith("/")
    for bad in ("/./", "/../", "//", "\\", ";"):
        assert bad not in canonical
    assert not canonical.endswith(("/.", "/.."))
    assert not any(unicodedata.category(ch) == "Cc" for ch in canonical)


# A segment of a canonical path. Not one with "%" and two hex digits: canonical_path
# refuses what would decode to that (double percent-encoding), so no canonical path
# holds one.
SEGMENT = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="/\\;"),
    min_size=1,
    max_size=8,
).filter(
    lambda s: (
        s not in (".", "..")
        and unicodedata.normalize("NFKC", s) == s
        and re.search("%[0-9A-Fa-f]{2}", s) is None
    )
)


@given(st.lists(SEGMENT, max_size=6), st.booleans())
def test_wire_path_round_trips_every_canonical_path(segments: list[str], slash: bool) -> None:
    canonical = "/" + "/".join(segments) + ("/" if slash and segments else "")
    wire = wire_path(canonical)
    assert wire.isascii()
    assert canonical_path(wire) == canonical


@given(st.text(max_size=40))
@example("Bücher.Example.:443")
@example("[::FFFF:1.2.3.4]:80")
def test_canonical_host_is_idempotent_and_plain(raw: str) -> None:
    try:
        host = canonical_host(raw)
    except BadRequest:
        return
    assert host.isascii()
    assert host == host.lower()
    assert not host.endswith(".")
    assert canonical_host(host) == host


@given(
    st.one_of(st.none(), st.text(max_size=20), st.sampled_from(["10.0.0.1", "fd00::2"])),
    st.lists(st.text(max_size=40), max_size=4),
)
def test_client_ip_never_raises(peer: str | None, xff: list[str]) -> None:
    client_ip(peer, xff, TRUSTED)


# --- split_target: path and query, never a fragment ------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/a", ("/a", "")),
        ("/a?", ("/a", "")),
        ("/a?x=1&y=2", ("/a", "x=1&y=2")),
        ("/a?x=?", ("/a", "x=?")),
    ],
)
def test_split_target_gives_path_and_raw_query(raw: str, expected: tuple[str, str]) -> None:
    assert split_target(raw) == expected


@pytest.mark.parametrize("raw", ["/a#b", "/a?x#y", "/a?#", "#"])
def test_split_target_refuses_a_fragment_anywhere(raw: str) -> None:
    with pytest.raises(BadRequest, match="fragment"):
        split_target(raw)
