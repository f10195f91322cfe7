"""CSRF tokens bound to a session or pre-session, and the Origin/Referer check."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.csrf import CSRF_COOKIE, CsrfTokens, new_presession_id, origin_allowed

SECRET = b"k" * 32
BINDING = "session:abc123"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, at: float = 1_700_000_000.0) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def tokens(clock: Clock) -> CsrfTokens:
    return CsrfTokens(SECRET, max_age=7200, now=clock)


def test_a_token_checks_for_the_binding_it_was_issued_for(tokens: CsrfTokens) -> None:
    assert tokens.check(tokens.issue(BINDING), BINDING)


def test_a_token_fails_for_another_binding(tokens: CsrfTokens) -> None:
    token = tokens.issue("presession:aaa")
    assert not tokens.check(token, "presession:aab")
    assert not tokens.check(token, "session:aaa")


def test_a_token_fails_under_another_secret(clock: Clock) -> None:
    token = CsrfTokens(SECRET, now=clock).issue(BINDING)
    assert not CsrfTokens(b"j" * 32, now=clock).check(token, BINDING)


def test_every_issued_token_is_different(tokens: CsrfTokens) -> None:
    issued = {tokens.issue(BINDING) for _ in range(50)}
    assert len(issued) == 50
    assert all(tokens.check(t, BINDING) for t in issued)


def test_a_token_does_not_reveal_its_binding(tokens: CsrfTokens) -> None:
    assert "abc123" not in tokens.issue(BINDING)


def test_a_token_is_valid_until_max_age_and_not_after(tokens: CsrfTokens, clock: Clock) -> None:
    token = tokens.issue(BINDING)
    clock.at += 7200
    assert tokens.check(token, BINDING)
    clock.at += 1
    assert not tokens.check(token, BINDING)


def test_max_age_is_configurable(clock: Clock) -> None:
    short = CsrfTokens(SECRET, max_age=60, now=clock)
    token = short.issue(BINDING)
    clock.at += 61
    assert not short.check(token, BINDING)


def test_a_token_from_the_far_future_is_refused(tokens: CsrfTokens, clock: Clock) -> None:
    clock.at += 3600
    token = tokens.issue(BINDING)
    clock.at -= 3600
    assert not tokens.check(token, BINDING)


def test_a_little_clock_skew_between_instances_is_tolerated(clock: Clock) -> None:
    ahead = CsrfTokens(SECRET, now=lambda: clock.at + 5)
    behind = CsrfTokens(SECRET, now=clock)
    assert behind.check(ahead.issue(BINDING), BINDING)


def tamper(part: str) -> str:
    if part.isdigit():  # a timestamp one second earlier: still inside the window
        return str(int(part) - 1)
    return ("B" if part[0] == "A" else "A") + part[1:]


@pytest.mark.parametrize("index", [1, 2, 3], ids=["timestamp", "nonce", "mac"])
def test_a_tampered_token_is_refused(tokens: CsrfTokens, index: int) -> None:
    parts = tokens.issue(BINDING).split(".")
    parts[index] = tamper(parts[index])
    assert not tokens.check(".".join(parts), BINDING)


def test_an_extended_timestamp_is_refused(tokens: CsrfTokens, clock: Clock) -> None:
    version, issued, nonce, mac = tokens.issue(BINDING).split(".")
    forged = ".".join((version, str(int(issued) + 3600), nonce, mac))
    clock.at += 7300
    assert not tokens.check(forged, BINDING)


MALFORMED = [
    ("none", None),
    ("empty", ""),
    ("garbage", "not-a-token"),
    ("three-parts", "v1.1.2"),
    ("five-parts", "v1.1.a.b.c"),
    ("other-version", "v2.1700000000." + "A" * 22 + "." + "A" * 43),
    ("negative-timestamp", "v1.-1." + "A" * 22 + "." + "A" * 43),
    ("huge-timestamp", "v1." + "9" * 40 + "." + "A" * 22 + "." + "A" * 43),
    ("non-ascii-digits", "v1." + "\u0661\u0667" + "\u0660" * 8 + "." + "A" * 22 + "." + "A" * 43),
    ("padding", "v1.1700000000." + "A" * 22 + "." + "A" * 42 + "="),
    ("very-long", "v1." + "A" * 100_000),
    ("non-ascii-mac", "v1.1700000000." + "A" * 22 + "." + "é" * 43),
    ("surrogate", "v1.1700000000." + "A" * 22 + "." + "\ud800" * 43),
    ("newline", "v1.1700000000." + "A" * 22 + "." + "A" * 43 + "\n"),
]


@pytest.mark.parametrize("token", [c[1] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_a_malformed_token_is_refused_without_raising(
    tokens: CsrfTokens, token: str | None
) -> None:
    assert tokens.check(token, BINDING) is False


def test_an_empty_binding_never_checks(tokens: CsrfTokens) -> None:
    assert not tokens.check(tokens.issue(BINDING), "")
    with pytest.raises(ValueError):
        tokens.issue("")


def test_a_non_string_token_is_refused(tokens: CsrfTokens) -> None:
    assert not tokens.check(b"v1.1.2.3", BINDING)  # type: ignore[arg-type]


def test_a_binding_with_any_characters_works(tokens: CsrfTokens) -> None:
    binding = "presession:\x00é\ud800"
    assert tokens.check(tokens.issue(binding), binding)
    assert not tokens.check(tokens.issue(binding), "presession:\x00é")


@settings(max_examples=300)
@given(st.text(max_size=120), st.text(max_size=20))
def test_check_never_raises(token: str, binding: str) -> None:
    tokens = CsrfTokens(SECRET, now=lambda: 1_700_000_000.0)
    assert tokens.check(token, binding) is False


@pytest.mark.parametrize(
    "kwargs",
    [{"secret": b"short"}, {"secret": SECRET, "max_age": 0}, {"secret": SECRET, "max_age": -1}],
    ids=["short-secret", "zero-max-age", "negative-max-age"],
)
def test_bad_construction_is_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        CsrfTokens(**kwargs)  # type: ignore[arg-type]


def test_a_presession_id_has_256_random_bits() -> None:
    ids = {new_presession_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{43}", i) for i in ids)


def test_the_presession_cookie_name_is_fixed() -> None:
    assert CSRF_COOKIE == "authgate_csrf"


# --- origin check ----------------------------------------------------------------------

EXPECTED = "https://good.com"

# (id, Origin, Referer, allowed)
ORIGINS = [
    ("same-origin", "https://good.com", None, True),
    ("same-origin-host-case", "https://GOOD.com", None, True),
    ("same-origin-default-port", "https://good.com:443", None, True),
    ("same-origin-trailing-dot", "https://good.com.", None, True),
    ("origin-wins-over-referer", "https://good.com", "https://evil.com/", True),
    ("cross-origin", "https://evil.com", None, False),
    ("cross-origin-with-good-referer", "https://evil.com", "https://good.com/x", False),
    ("sibling-subdomain", "https://wiki.good.com", None, False),
    ("suffix-lookalike", "https://good.com.evil.com", None, False),
    ("other-scheme", "http://good.com", None, False),
    ("other-port", "https://good.com:8443", None, False),
    ("null", "null", None, False),
    ("null-with-good-referer", "null", "https://good.com/login", False),
    ("empty-origin", "", "https://good.com/login", False),
    ("origin-with-path", "https://good.com/", None, False),
    ("origin-with-userinfo", "https://good.com@evil.com", None, False),
    ("two-origins", "https://good.com https://evil.com", None, False),
    ("origin-with-whitespace", " https://good.com", None, False),
    ("referer-fallback", None, "https://good.com/.authgate/login?rd=x", True),
    ("referer-fallback-origin-only", None, "https://good.com/", True),
    ("referer-cross-origin", None, "https://evil.com/https://good.com/", False),
    ("referer-lookalike", None, "https://good.com.evil.com/", False),
    ("referer-userinfo", None, "https://good.com@evil.com/", False),
    ("referer-backslash", None, "https://evil.com\\@good.com/", False),
    ("referer-relative", None, "/login", False),
    ("referer-garbage", None, "not a url", False),
    ("referer-long-query", None, "https://good.com/?q=" + "a" * 5000, True),
    ("neither", None, None, False),
]


@pytest.mark.parametrize(
    ("origin", "referer", "allowed"),
    [c[1:] for c in ORIGINS],
    ids=[c[0] for c in ORIGINS],
)
def test_origin_allowed(origin: str | None, referer: str | None, allowed: bool) -> None:
    assert origin_allowed(origin, referer, EXPECTED) is allowed


def test_an_expected_origin_with_a_port_is_matched_with_that_port() -> None:
    assert origin_allowed("http://[::1]:8443", None, "http://[::1]:8443")
    assert not origin_allowed("http://[::1]", None, "http://[::1]:8443")


def test_an_unparsable_expected_origin_allows_nothing() -> None:
    assert not origin_allowed("https://good.com", None, "good.com")
    assert not origin_allowed("null", None, "null")


@settings(max_examples=300)
@given(st.none() | st.text(max_size=60), st.none() | st.text(max_size=60))
def test_origin_allowed_never_raises(origin: str | None, referer: str | None) -> None:
    assert origin_allowed(origin, referer, EXPECTED) in (True, False)
