"""CSRF defence for the gateway's own forms (SECURITY.md invariant 9).

Two independent checks guard every state-changing POST under the reserved prefix, and
both must pass:

1. `origin_allowed(Origin, Referer, expected)`: the request comes from our own origin.
   This alone stops cross-site form posts from every current browser.
2. `CsrfTokens.check(token, binding)`: the form carries a token minted by us for the
   same session (or pre-session). This holds where (1) is weak: a browser or extension
   that strips `Origin`, or a sibling subdomain that is same-site but not same-origin.

How the gateway uses them:

- Binding. With a session, `binding = f"session:{session_id}"`. Without one (the login
  page itself), the pre-session cookie `authgate_csrf` holds `new_presession_id()` and
  `binding = f"presession:{value}"`; the prefixes keep one kind from standing in for
  the other. The binding never leaves the server in clear: the token holds only an
  HMAC over it.
- The `authgate_csrf` cookie: `HttpOnly`, `Secure` (unless `server.dev_mode`),
  `SameSite=Lax`, host-only (no `Domain`), `Path=<prefix>/`, `Max-Age` = the token max
  age. Set it when an anonymous form is rendered and there is none yet.
- Tokens are issued per rendered form (a hidden `csrf_token` field) and are stateless:
  nothing is stored. They expire after `max_age` (2 h by default); a form left open
  longer is answered with a "this page expired, try again" re-render, not a bare 403.
- Rotation. Login and every rise in level give a new session id (invariant 5), which
  invalidates every token bound to the old one. At login, logout and after a
  successful pre-session POST, replace the `authgate_csrf` cookie, so a pre-session
  value planted by an attacker (cookie tossing from a sibling domain) dies with its
  first use. Rotate the secret with the other gateway keys; old tokens then fail,
  which costs a user at most one form re-render.
- Refusals are 403 and are logged without the token, cookie or binding (invariant 10).

Double-submit with an HMAC under a server secret, rather than a bare random value
compared with the cookie, means a token cannot be minted by someone who can only
write cookies: it has to come from us, for that exact binding, recently.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from base64 import urlsafe_b64encode
from collections.abc import Callable

from gateway.redirects import origin_of

__all__ = ["CSRF_COOKIE", "CsrfTokens", "new_presession_id", "origin_allowed"]

CSRF_COOKIE = "authgate_csrf"
"""Name of the pre-session cookie that anonymous forms' tokens are bound to."""

_VERSION = "v1"
# v1.<unix seconds>.<128-bit nonce>.<HMAC-SHA256>, all base64url without padding. The
# nonce makes every token distinct, so no two pages ever show the same secret-derived
# string (no correlation between forms, nothing stable for compression side channels).
_TOKEN = re.compile(r"v1\.([0-9]{1,12})\.([A-Za-z0-9_-]{22})\.([A-Za-z0-9_-]{43})")
_MAX_TOKEN = 100
_NONCE_BYTES = 16
_MIN_SECRET = 32
# Instances behind one load balancer disagree a little about the time; a token a few
# seconds "from the future" is theirs, one far ahead was not minted by a sane clock.
_CLOCK_SKEW = 60.0
# A Referer may carry a long query; only its origin matters, so allow up to the size
# of a large request header line rather than the return-URL limit.
_MAX_REFERER = 16384


class CsrfTokens:
    """Issues and checks HMAC tokens bound to a session or pre-session identifier."""

    def __init__(
        self,
        secret: bytes,
        *,
        max_age: float = 2 * 3600,
        now: Callable[[], float] = time.time,
    ) -> None:
        if len(secret) < _MIN_SECRET:
            raise ValueError(f"CSRF secret must be at least {_MIN_SECRET} bytes")
        if not max_age > 0:
            raise ValueError("max_age must be positive")
        # A key of its own, derived from the secret, so the same gateway secret can key
        # other HMACs without a token from one use ever verifying in another.
        self._key = hmac.new(secret, b"authgate/csrf/" + _VERSION.encode(), hashlib.sha256).digest()
        self.max_age = max_age
        self._now = now

    def issue(self, binding: str) -> str:
        """A fresh token for `binding` (`session:<id>` or `presession:<id>`)."""
        if not binding:
            raise ValueError("a CSRF token must be bound to a session or pre-session id")
        issued = str(int(self._now()))
        nonce = _b64(secrets.token_bytes(_NONCE_BYTES))
        return f"{_VERSION}.{issued}.{nonce}.{self._mac(issued, nonce, binding)}"

    def check(self, token: str | None, binding: str) -> bool:
        """True only for an unexpired token that `issue` made for this very `binding`.

        Never raises: a missing, malformed, foreign, tampered or expired token is False.
        """
        if not isinstance(token, str) or not binding or len(token) > _MAX_TOKEN:
            return False
        match = _TOKEN.fullmatch(token)
        if match is None:
            return False
        issued, nonce, mac = match.groups()
        age = self._now() - int(issued)
        if age > self.max_age or age < -_CLOCK_SKEW:
            return False
        expected = self._mac(issued, nonce, binding)
        return hmac.compare_digest(mac.encode("ascii"), expected.encode("ascii"))

    def _mac(self, issued: str, nonce: str, binding: str) -> str:
        # issued and nonce cannot hold a NUL (digits, base64url) and the binding comes
        # last, so no two (issued, nonce, binding) triples share a message.
        message = b"\0".join(
            (
                issued.encode("ascii"),
                nonce.encode("ascii"),
                binding.encode("utf-8", "surrogatepass"),
            )
        )
        return _b64(hmac.new(self._key, message, hashlib.sha256).digest())


def new_presession_id() -> str:
    """A value for the `authgate_csrf` cookie: 256 bits from `secrets`, URL-safe."""
    return secrets.token_urlsafe(32)


def origin_allowed(origin: str | None, referer: str | None, expected_origin: str) -> bool:
    """Whether a state-changing request comes from `expected_origin` (`scheme://host[:port]`).

    `Origin`, when present, must be exactly that origin (host compared canonically,
    default ports normalised); `Origin: null` (sandboxed frames, some redirects,
    `file:`) is refused. Without `Origin`, the origin of `Referer` decides. Without
    either, the answer is no: every current browser sends `Origin` on POST, same-origin
    included, so a POST with neither came from a non-browser client or through
    something that strips headers, and the login forms are for browsers. An
    `expected_origin` that does not parse also gives False (fail closed).
    """
    expected = origin_of(expected_origin, bare=True)
    if expected is None:
        return False
    if origin is not None:
        return origin_of(origin, bare=True) == expected
    if referer is not None:
        return origin_of(referer, max_length=_MAX_REFERER) == expected
    return False


def _b64(data: bytes) -> str:
    return urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
