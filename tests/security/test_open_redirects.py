"""Open-redirect attacks on the return URL after login (SECURITY.md invariant 4).

Each attack is an `rd` value that some login service has once followed off-site: a
string Python and the browser split differently, a host that only looks like ours, a
scheme that runs code, or a header break. The gateway must answer each with the
tenant's default URL. Where a gateway accepts a URL, a browser reading the URL it
hands out must land on a host the tenant protects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import pytest

from gateway.canonical import canonical_host
from gateway.config.model import TenantConfig
from gateway.redirects import MAX_RETURN_URL, login_url, safe_return_url
from gateway.tenants import TenantIndex

ACME = TenantConfig(id="acme", name="Acme", domains=("good.com", "*.good.com"))
EVIL_CORP = TenantConfig(id="evil", name="Evil Corp", domains=("evil.com", "tenant2.test"))
INDEX = TenantIndex([ACME, EVIL_CORP])
DEFAULT = "https://good.com/"
ORIGIN = "https://good.com"


def return_to(rd: str | None) -> str:
    """What the login flow of tenant ACME does with `rd`."""
    return safe_return_url(
        rd,
        is_protected_host=lambda host: INDEX.tenant_for_host(host) is ACME,
        default=DEFAULT,
        current_origin=ORIGIN,
    )


@dataclass(frozen=True)
class Attack:
    name: str
    tries: str  # what the attacker hopes some component gets wrong
    rd: str


ATTACKS = [
    # Protocol-relative and slash confusion: urlsplit sees a path, a browser a host.
    Attack("protocol-relative", "//host is a host to a browser", "//evil.com"),
    Attack("protocol-relative-path", "a path after the host", "//evil.com/login"),
    Attack("slash-backslash", "browsers read \\ as / in http(s)", "/\\evil.com"),
    Attack("backslash-slash", "browsers read \\ as /", "\\/evil.com"),
    Attack("double-backslash", "browsers read \\\\ as //", "\\\\evil.com"),
    Attack("tab-between-slashes", "browsers delete tabs: /<TAB>/ is //", "/\t/evil.com"),
    Attack("newline-between-slashes", "browsers delete LF", "/\n/evil.com"),
    Attack("cr-between-slashes", "browsers delete CR", "/\r/evil.com"),
    Attack("triple-slash", "///host is a host to a browser", "///evil.com"),
    # Scheme with missing or odd slashes: browsers still find a host.
    Attack("scheme-no-slashes", "https:host is https://host to a browser", "https:evil.com"),
    Attack("scheme-one-slash", "https:/host is https://host", "https:/evil.com"),
    Attack("scheme-three-slashes", "https:///host is https://host", "https:///evil.com"),
    Attack("scheme-backslashes", "https:\\\\host is https://host", "https:\\\\evil.com"),
    Attack("scheme-mixed-slashes", "https:/\\host", "https:/\\evil.com"),
    Attack("scheme-tab", "a tab inside the scheme is deleted", "ht\ttps://evil.com"),
    # Userinfo: the trusted name sits before the @, the real host after it.
    Attack("userinfo-good-at-evil", "host read before the @", "https://good.com@evil.com"),
    Attack(
        "userinfo-port-at-evil", "good.com:443 looks like host:port", "http://good.com:443@evil.com"
    ),
    Attack("userinfo-password", "user:pass@host", "https://good.com:pw@evil.com/"),
    Attack(
        "userinfo-encoded-slash", "%2f ends the host for one parser", "https://good.com%2f@evil.com"
    ),
    Attack("userinfo-encoded-at", "%40 decoded into an @", "https://good.com%40evil.com"),
    Attack(
        "userinfo-backslash",
        "\\ ends the authority only for browsers",
        "https://evil.com\\@good.com",
    ),
    Attack("userinfo-double-at", "first or last @", "https://good.com@good.com@evil.com"),
    Attack(
        "userinfo-on-our-host",
        "any userinfo is refused, even on our host",
        "https://evil@good.com/",
    ),
    # The trusted name in the wrong place.
    Attack("suffix-lookalike", "a prefix match on the host", "https://good.com.evil.com"),
    Attack("prefix-lookalike", "a suffix match without a dot", "https://evilgood.com"),
    Attack("name-in-path", "a substring match on the URL", "https://evil.com/good.com"),
    Attack("name-in-query", "a substring match on the URL", "https://evil.com/?good.com"),
    Attack("name-in-fragment", "the fragment read as authority", "https://evil.com#@good.com"),
    Attack("query-before-at", "? read as part of userinfo", "https://evil.com?@good.com"),
    # Schemes that run code or carry content.
    Attack("javascript", "the link runs script", "javascript:alert(1)"),
    Attack("javascript-mixed-case", "a case-sensitive scheme check", "JaVaScRiPt:alert(1)"),
    Attack("javascript-leading-control", "browsers strip leading C0", "\x01javascript:alert(1)"),
    Attack("javascript-leading-space", "browsers strip leading spaces", " javascript:alert(1)"),
    Attack("javascript-newline", "browsers delete LF inside the scheme", "java\nscript:alert(1)"),
    Attack(
        "javascript-with-our-host",
        "a host check without a scheme check",
        "javascript://good.com/%0aalert(1)",
    ),
    Attack("data-html", "a data: document", "data:text/html,<script>alert(1)</script>"),
    Attack("data-base64", "a base64 data: document", "data:text/html;base64,PHNjcmlwdD4="),
    Attack("vbscript", "legacy script scheme", "vbscript:msgbox(1)"),
    Attack("file", "local files", "file:///etc/passwd"),
    # Header injection through the Location header.
    Attack("crlf-raw", "a second header after CRLF", "https://good.com/\r\nSet-Cookie: a=1"),
    Attack(
        "crlf-encoded", "a decoder turns %0d%0a into CRLF", "https://good.com/%0d%0aSet-Cookie:a=1"
    ),
    Attack("crlf-double-encoded", "two decoders", "https://good.com/?x=%250d%250aSet-Cookie:a=1"),
    Attack("lf-in-fragment", "a header break after #", "https://good.com/#%0a"),
    Attack("tab-encoded", "an encoded tab a browser strips after decoding", "https://good.com/%09"),
    Attack("nul-raw", "C string truncation", "https://evil.com\x00.good.com/"),
    Attack("nul-encoded", "a decoder stops at NUL", "https://good.com/%00"),
    # Encoded slashes and backslashes: one decode away from //evil.com.
    Attack("encoded-protocol-relative", "decoded once to //evil.com", "%2f%2fevil.com"),
    Attack("encoded-slashes-after-slash", "decoded to ///evil.com", "/%2f%2fevil.com"),
    Attack("encoded-backslash-after-slash", "decoded to /\\evil.com", "/%5cevil.com"),
    Attack("double-encoded-slashes", "decoded twice to ///evil.com", "/%252f%252fevil.com"),
    Attack("double-encoded-backslash", "decoded twice to /\\evil.com", "/%255cevil.com"),
    Attack("encoded-scheme", "decoded to https://evil.com", "%68ttps://evil.com"),
    Attack("encoded-host", "the host decoded by the browser only", "https://%65vil.com/"),
    # Hosts that canonicalise to someone else's.
    Attack("homograph-cyrillic", "Cyrillic o looks like Latin o", "https://g\u043e\u043ed.com/"),
    Attack("fullwidth-solidus", "U+FF0F maps to / in the host", "https://good.com\uff0fevil.com/"),
    Attack("ideographic-full-stop", "U+3002 maps to a dot", "https://good.com\u3002evil.com/"),
    Attack("small-commercial-at", "U+FE6B maps to @", "https://good.com\ufe6bevil.com/"),
    Attack("fullwidth-colon", "U+FF1A maps to :", "https://evil.com\uff1a443\uff20good.com/"),
    Attack(
        "zero-width-space", "an invisible character in the host", "https://good.com\u200b.evil.com/"
    ),
    Attack(
        "bidi-override", "right-to-left override hides the host", "https://\u202emoc.live\u202c/"
    ),
    # Numeric hosts a browser reads as IPv4.
    Attack("decimal-ip", "2130706433 is 127.0.0.1", "http://2130706433/"),
    Attack("octal-ip", "0177.0.0.1 is 127.0.0.1", "http://0177.0.0.1/"),
    Attack("hex-ip", "0x7f.1 is 127.0.0.1", "http://0x7f.1/"),
    Attack("short-ip", "127.1 is 127.0.0.1", "http://127.1/"),
    Attack("unprotected-ipv6", "a loopback literal", "https://[::1]/"),
    Attack("ipv4-mapped-ipv6", "a mapped IPv4 literal", "https://[::ffff:127.0.0.1]/"),
    # Size.
    Attack("overlong", "a parser that truncates", "https://good.com/" + "a" * MAX_RETURN_URL),
]


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
def test_open_redirect_attack_lands_on_the_default(attack: Attack) -> None:
    assert return_to(attack.rd) == DEFAULT, attack.tries


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
def test_open_redirect_attack_survives_the_trip_through_the_login_url(attack: Attack) -> None:
    # The gateway puts rd into the login link; the framework decodes the query once.
    query = urlsplit(login_url("/.authgate", attack.rd)).query
    received = parse_qs(query, keep_blank_values=True)["rd"][0]
    assert received == attack.rd
    assert return_to(received) == DEFAULT


def test_a_host_of_another_tenant_on_the_same_gateway_is_refused() -> None:
    # evil.com is protected by this gateway too, but for another tenant: sending an
    # Acme user there after login would hand them to a page Acme does not control.
    assert return_to("https://tenant2.test/") == DEFAULT
    assert return_to("https://evil.com/") == DEFAULT


def browser_host(url: str) -> str:
    """The host a browser navigates to for an absolute http(s) URL (WHATWG, simplified)."""
    text = url.strip("".join(map(chr, range(0x21)))).translate({9: None, 10: None, 13: None})
    rest = text.split(":", 1)[1].lstrip("/\\")
    authority = re.split(r"[/\\?#]", rest, maxsplit=1)[0]
    return canonical_host(authority.rpartition("@")[2])


# Legitimate return URLs that mention the attacker: kept, and the browser stays home.
NEAR_MISSES = [
    ("https://good.com/#@evil.com", "https://good.com/#@evil.com"),
    ("https://good.com/@evil.com", "https://good.com/@evil.com"),
    ("https://good.com/?next=https://evil.com", "https://good.com/?next=https://evil.com"),
    ("https://good.com/..//evil.com", "https://good.com/evil.com"),
    ("/..//evil.com", "https://good.com/evil.com"),
    ("/.//evil.com", "https://good.com/evil.com"),
    ("https://wiki.good.com:8443/x", "https://wiki.good.com:8443/x"),
]


@pytest.mark.parametrize(("rd", "expected"), NEAR_MISSES)
def test_an_accepted_url_that_mentions_evil_still_lands_home(rd: str, expected: str) -> None:
    result = return_to(rd)
    assert result == expected
    assert INDEX.tenant_for_host(browser_host(result)) is ACME
    assert not urlsplit(result).path.startswith("//")
