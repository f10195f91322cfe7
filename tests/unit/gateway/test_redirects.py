"""Return URLs after login: what `safe_return_url` keeps, how it normalises, what it refuses."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.canonical import canonical_host
from gateway.config.model import TenantConfig
from gateway.errors import BadRequest
from gateway.redirects import MAX_RETURN_URL, Origin, login_url, origin_of, safe_return_url
from gateway.tenants import TenantIndex

DEFAULT = "https://good.com/home"
ORIGIN = "https://good.com"
PROTECTED = frozenset({"good.com", "wiki.good.com", "xn--bcher-kva.good.com", "[2001:db8::1]"})


def protected(host: str) -> bool:
    return host in PROTECTED or host.endswith(".apps.good.com")


def ret(rd: str | None, current_origin: str | None = ORIGIN) -> str:
    return safe_return_url(
        rd, is_protected_host=protected, default=DEFAULT, current_origin=current_origin
    )


# (id, rd, the normalised URL returned)
ACCEPTED = [
    ("plain-https", "https://good.com/wiki/page", "https://good.com/wiki/page"),
    ("plain-http", "http://good.com/x", "http://good.com/x"),
    ("no-path-gets-slash", "https://good.com", "https://good.com/"),
    ("other-protected-host", "https://wiki.good.com/a", "https://wiki.good.com/a"),
    ("wildcard-protected-host", "https://x.y.apps.good.com/", "https://x.y.apps.good.com/"),
    ("uppercase-scheme-and-host", "HTTPS://GOOD.COM/Path", "https://good.com/Path"),
    ("trailing-dot-host", "https://good.com./x", "https://good.com/x"),
    ("explicit-default-port-dropped", "https://good.com:443/x", "https://good.com/x"),
    ("http-default-port-dropped", "http://good.com:80/x", "http://good.com/x"),
    ("other-port-kept", "https://good.com:8443/x", "https://good.com:8443/x"),
    ("empty-port", "https://good.com:/x", "https://good.com/x"),
    ("leading-zero-port", "https://good.com:08443/", "https://good.com:8443/"),
    ("query-kept", "https://good.com/s?q=a%2Fb&n=1", "https://good.com/s?q=a%2Fb&n=1"),
    ("query-without-path", "https://good.com?x=1", "https://good.com/?x=1"),
    ("encoded-space-in-query", "https://good.com/?q=a%20b", "https://good.com/?q=a%20b"),
    (
        "nested-url-in-query",
        "https://good.com/?next=//evil.com",
        "https://good.com/?next=//evil.com",
    ),
    ("latin1-escape-in-query", "https://good.com/?q=%E9", "https://good.com/?q=%E9"),
    ("angle-brackets-encoded", "https://good.com/?a[]=<b>", "https://good.com/?a[]=%3Cb%3E"),
    ("fragment-kept", "https://good.com/doc#section-2", "https://good.com/doc#section-2"),
    ("fragment-with-at-sign", "https://good.com#@evil.com", "https://good.com/#@evil.com"),
    ("fragment-with-slashes", "https://good.com/#//evil.com", "https://good.com/#//evil.com"),
    ("at-sign-in-path", "https://good.com/@evil.com", "https://good.com/@evil.com"),
    ("dot-segments-resolved", "https://good.com/a/./b/../c", "https://good.com/a/c"),
    ("doubled-slashes-collapsed", "https://good.com/a//b", "https://good.com/a/b"),
    ("dot-dot-cannot-climb", "https://good.com/../../x", "https://good.com/x"),
    ("encoded-letter-decoded", "https://good.com/%41dmin", "https://good.com/Admin"),
    ("utf8-path-encoded", "https://good.com/caf%C3%A9", "https://good.com/caf%C3%A9"),
    (
        "raw-unicode-path-encoded",
        "https://good.com/café?é#é",
        "https://good.com/caf%C3%A9?%C3%A9#%C3%A9",
    ),
    ("path-parameter-stripped", "https://good.com/a;jsessionid=1/b", "https://good.com/a/b"),
    ("idn-host-as-a-label", "https://bücher.good.com/", "https://xn--bcher-kva.good.com/"),
    ("fullwidth-host-mapped", "https://\uff47\uff4f\uff4f\uff44.com/", "https://good.com/"),
    ("protected-ipv6", "https://[2001:DB8:0::1]:8443/", "https://[2001:db8::1]:8443/"),
    ("local-path", "/wiki/page?x=1#top", "https://good.com/wiki/page?x=1#top"),
    ("local-root", "/", "https://good.com/"),
    ("local-path-with-at", "/@evil.com", "https://good.com/@evil.com"),
    ("local-dot-dot-slash-slash", "/..//evil.com", "https://good.com/evil.com"),
]


@pytest.mark.parametrize(
    ("rd", "expected"), [c[1:] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED]
)
def test_a_return_url_to_a_protected_host_is_kept_normalised(rd: str, expected: str) -> None:
    assert ret(rd) == expected


# (id, rd) — every one must give the default
REFUSED = [
    ("none", None),
    ("empty", ""),
    ("other-host", "https://evil.com/"),
    ("protocol-relative", "//evil.com"),
    ("protocol-relative-triple", "///evil.com"),
    ("slash-backslash", "/\\evil.com"),
    ("double-backslash", "\\\\evil.com"),
    ("backslash-slash", "\\/evil.com"),
    ("scheme-no-slashes", "https:evil.com"),
    ("scheme-one-slash", "https:/evil.com"),
    ("scheme-three-slashes", "https:///evil.com"),
    ("scheme-backslashes", "https:\\\\evil.com"),
    ("scheme-slash-backslash", "https:/\\evil.com"),
    ("userinfo-good-at-evil", "https://good.com@evil.com"),
    ("userinfo-evil-at-good", "https://evil.com@good.com"),
    ("userinfo-with-password", "https://user:pass@good.com/"),
    ("userinfo-empty", "https://@good.com/"),
    ("backslash-before-at", "https://evil.com\\@good.com"),
    ("port-then-at", "http://good.com:443@evil.com"),
    ("encoded-slash-before-at", "https://good.com%2f@evil.com"),
    ("suffix-lookalike", "https://good.com.evil.com"),
    ("prefix-lookalike", "https://evilgood.com"),
    ("javascript", "javascript:alert(1)"),
    ("javascript-mixed-case", "JaVaScRiPt:alert(1)"),
    ("javascript-with-tab", "java\tscript:alert(1)"),
    ("javascript-slashes", "javascript://good.com/%0aalert(1)"),
    ("data", "data:text/html,<script>alert(1)</script>"),
    ("vbscript", "vbscript:msgbox(1)"),
    ("ftp", "ftp://good.com/"),
    ("file", "file:///etc/passwd"),
    ("leading-space", " https://good.com/"),
    ("trailing-space", "https://good.com/ "),
    ("leading-nul", "\x00https://good.com/"),
    ("trailing-newline", "https://good.com/\n"),
    ("tab-in-host", "https://go\tod.com/"),
    ("tab-in-scheme", "ht\ttps://good.com/"),
    ("crlf-in-path", "https://good.com/\r\nSet-Cookie:x=1"),
    ("space-in-path", "https://good.com/a b"),
    ("encoded-crlf", "https://good.com/%0d%0aSet-Cookie:x=1"),
    ("encoded-crlf-in-query", "https://good.com/?a=%0d%0a"),
    ("encoded-tab", "https://good.com/%09"),
    ("double-encoded-lf", "https://good.com/?a=%250a"),
    ("triple-encoded-lf", "https://good.com/#%25250a"),
    ("encoded-nul", "https://good.com/?a=%00"),
    ("c1-control", "https://good.com/\x85"),
    ("zero-width-space", "https://good.com\u200b/"),
    ("bidi-override", "https://good.com/\u202egnp.exe"),
    ("no-break-space", "https://good.com/\u00a0"),
    ("encoded-double-slash-relative", "%2f%2fevil.com"),
    ("encoded-slash-in-local-path", "/%2f%2fevil.com"),
    ("encoded-backslash-in-local-path", "/%5cevil.com"),
    ("double-encoded-slash", "/%252f%252fevil.com"),
    ("double-encoded-backslash", "/%255cevil.com"),
    ("encoded-slash-in-path", "https://good.com/%2f%2fevil.com"),
    ("malformed-escape", "https://good.com/%zz"),
    ("percent-encoded-host", "https://%67ood.com/"),
    ("relative-path", "evil.com"),
    ("relative-dot", "./x"),
    ("query-only", "?x=1"),
    ("fragment-only", "#x"),
    ("ipv6-not-protected", "https://[::1]/"),
    ("ipv4-not-protected", "http://127.0.0.1/"),
    ("decimal-ip", "http://2130706433/"),
    ("octal-ip", "http://0177.0.0.1/"),
    ("hex-ip", "http://0x7f.0.0.1/"),
    ("ipv6-unclosed", "https://[::1/"),
    ("ipv6-without-brackets", "https://::1/"),
    ("port-too-large", "https://good.com:65536/"),
    ("port-zero", "https://good.com:0/"),
    ("port-not-numeric", "https://good.com:evil.com/"),
    ("homograph-cyrillic", "https://g\u043e\u043ed.com/"),  # Cyrillic o
    ("fullwidth-solidus-in-host", "https://good.com\uff0fevil.com/"),
    ("ideographic-full-stop-to-other-host", "https://good.com\u3002evil.com/"),
    ("small-commercial-at", "https://good.com\ufe6bevil.com/"),
    ("empty-host", "https:///"),
    ("empty-host-with-port", "https://:443/"),
    ("too-long", "https://good.com/" + "a" * MAX_RETURN_URL),
]


@pytest.mark.parametrize("rd", [c[1] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_a_return_url_that_could_leave_home_gives_the_default(rd: str | None) -> None:
    assert ret(rd) == DEFAULT


def test_a_url_just_under_the_length_limit_is_kept() -> None:
    rd = "https://good.com/" + "a" * (MAX_RETURN_URL - len("https://good.com/"))
    assert ret(rd) == rd


def test_a_local_path_without_a_current_origin_gives_the_default() -> None:
    assert ret("/wiki", current_origin=None) == DEFAULT


def test_a_local_path_keeps_the_port_of_the_current_origin() -> None:
    assert ret("/x", current_origin="https://good.com:8443") == "https://good.com:8443/x"


@pytest.mark.parametrize(
    "origin",
    ["https://evil.com", "https://good.com/", "good.com", "https://user@good.com", "javascript:x"],
    ids=["unprotected", "with-path", "no-scheme", "userinfo", "not-http"],
)
def test_a_local_path_resolved_against_a_bad_origin_gives_the_default(origin: str) -> None:
    assert ret("/x", current_origin=origin) == DEFAULT


def test_the_host_check_sees_the_canonical_host_without_port() -> None:
    seen: list[str] = []

    def record(host: str) -> bool:
        seen.append(host)
        return True

    safe_return_url("HTTPS://Wiki.GOOD.com.:8443/x", is_protected_host=record, default=DEFAULT)
    assert seen == ["wiki.good.com"]


def test_a_host_of_another_tenant_is_refused() -> None:
    acme = TenantConfig(id="acme", name="Acme", domains=("acme.test", "*.acme.test"))
    globex = TenantConfig(id="globex", name="Globex", domains=("globex.test",))
    index = TenantIndex([acme, globex])

    def for_acme(rd: str) -> str:
        return safe_return_url(
            rd,
            is_protected_host=lambda h: index.tenant_for_host(h) is acme,
            default="https://acme.test/",
        )

    assert for_acme("https://wiki.acme.test/x") == "https://wiki.acme.test/x"
    assert for_acme("https://globex.test/x") == "https://acme.test/"
    assert for_acme("https://unknown.test/x") == "https://acme.test/"


# --- login_url -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rd",
    ["https://good.com/a?b=1&c=2#frag", "/x y?rd=https://evil.com", "https://good.com/caf%C3%A9"],
    ids=["query-and-fragment", "nested-rd", "escapes"],
)
def test_login_url_carries_rd_as_one_parameter(rd: str) -> None:
    url = login_url("/.authgate", rd)
    parts = urlsplit(url)
    assert parts.path == "/.authgate/login"
    assert parts.fragment == ""
    assert parse_qs(parts.query) == {"rd": [rd]}


def test_login_url_encodes_every_reserved_character() -> None:
    assert login_url("/.authgate", "https://g.com/?a=1&b#c") == (
        "/.authgate/login?rd=https%3A%2F%2Fg.com%2F%3Fa%3D1%26b%23c"
    )


def test_login_url_tolerates_a_trailing_slash_on_the_prefix_and_no_rd() -> None:
    assert login_url("/.authgate/", None) == "/.authgate/login"
    assert login_url("/auth", "") == "/auth/login"


# --- origin_of -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://Good.COM", Origin("https", "good.com", 443)),
        ("http://good.com:8080", Origin("http", "good.com", 8080)),
        ("https://good.com:443", Origin("https", "good.com", 443)),
        ("http://[::1]:8080", Origin("http", "[::1]", 8080)),
    ],
    ids=["case", "port", "default-port", "ipv6"],
)
def test_origin_of_an_origin(text: str, expected: Origin) -> None:
    assert origin_of(text, bare=True) == expected


def test_an_origin_serialises_without_its_default_port() -> None:
    assert str(Origin("https", "good.com", 443)) == "https://good.com"
    assert str(Origin("http", "good.com", 443)) == "http://good.com:443"


@pytest.mark.parametrize(
    "text",
    ["https://good.com/", "https://good.com?", "https://good.com#", "null", "https://u@good.com"],
    ids=["path", "query", "fragment", "null", "userinfo"],
)
def test_a_bare_origin_has_nothing_else(text: str) -> None:
    assert origin_of(text, bare=True) is None


# --- properties ------------------------------------------------------------------------

# Pieces attackers combine; hypothesis strings them together in every order.
# fmt: off
_PIECES = st.sampled_from([
    "https:", "http:", "//", "/", "\\", "@", ":", ".", "#", "?", "%", "%2f", "%5c", "%0a",
    "%25", "good.com", "evil.com", "GOOD.COM", "[::1]", "javascript:", "443", "xn--", "..",
    "\t", "\n", " ", "\uff47", "\u043e", "\u3002", "\u200b",  # fullwidth g, Cyrillic o
])
# fmt: on
_STARTS = st.sampled_from(["", "/", "https://", "https://good.com", "http://GOOD.com:443/"])
_URLISH = st.builds(
    lambda start, rest: start + "".join(rest),
    _STARTS,
    st.lists(_PIECES | st.text(max_size=3), max_size=12),
)


def browser_authority(url: str) -> str:
    """An independent model of how a browser finds the host of an http(s) URL."""
    text = url.strip("".join(map(chr, range(0x21)))).translate({9: None, 10: None, 13: None})
    rest = text.split(":", 1)[1].lstrip("/\\")
    authority = re.split(r"[/\\?#]", rest, maxsplit=1)[0]
    return authority.rpartition("@")[2]


def check_result(result: str) -> None:
    if result == DEFAULT:
        return
    parts = urlsplit(result)
    assert parts.scheme in ("http", "https")
    assert parts.username is None and parts.password is None
    host = canonical_host(parts.netloc)
    assert protected(host)
    assert canonical_host(browser_authority(result)) == host
    # What we hand out is a fixed point: checking it again changes nothing.
    assert ret(result) == result


@settings(max_examples=400)
@given(st.text(max_size=200))
def test_any_string_gives_the_default_or_a_protected_http_url(rd: str) -> None:
    check_result(ret(rd))


@settings(max_examples=1500)
@given(_URLISH)
def test_any_url_like_string_gives_the_default_or_a_protected_http_url(rd: str) -> None:
    check_result(ret(rd))


@settings(max_examples=300)
@given(st.text(max_size=80))
def test_anything_after_a_protected_origin_stays_on_that_host_or_is_refused(tail: str) -> None:
    result = ret("https://good.com/" + tail)
    check_result(result)
    if result != DEFAULT:
        assert urlsplit(result).netloc == "good.com"


def test_canonical_host_refusals_do_not_escape() -> None:
    # The property relies on canonical_host raising BadRequest for garbage; a refusal
    # inside safe_return_url must become the default, never the exception.
    with pytest.raises(BadRequest):
        canonical_host("good.com@evil.com")
    assert ret("https://good.com@evil.com") == DEFAULT
