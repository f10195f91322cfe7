"""`{prefix}/account`: the signed-in user's own page.

Profile, password change, second factors (add TOTP, rename, remove), backup
codes (count, regenerate), active sessions (each revocable) and "log out
everywhere". Every POST checks `Origin` and a CSRF token bound to the session.

Two gates guard the sensitive changes:
- fresh: the last authentication is within `sessions.fresh_for` (password
  change, removing a factor, new backup codes, adding a factor), else the
  user signs in again (`reauth=1`);
- two factors: a user who has a second factor must have used it in this
  session before adding, renaming or removing factors or renewing backup codes.
  Otherwise a stolen password alone could enrol the thief's own authenticator
  and step up with it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from urllib.parse import quote

from aiohttp import web

from gateway.audit import Event
from gateway.identity.totp import clean_name
from gateway.mfa import BACKUP_CODES, TOTP, WEBAUTHN
from gateway.redirects import login_url
from gateway.regulation import Attempt
from gateway.reserved import ReservedRequest
from gateway.sessions import fingerprint
from gateway.stores import SessionRecord
from gateway.users_file import is_file_user
from login_ui.mfa import CODE_FIELD, DEVICE_FIELD, NAME_FIELD, Interstitial, MfaPages, Visit

log = logging.getLogger("authgate.account")

ACTION_FIELD = "action"
_MIN_PASSWORD = 8
_NOTICES = {
    "password": "Your password was changed. Your other sessions were signed out.",
    "renamed": "Renamed.",
    "removed": "Removed.",
    "added": "Your authenticator app is active.",
    "revoked": "That session was signed out.",
    "failed": "That did not work. Please try again.",
    "short": f"The new password must have at least {_MIN_PASSWORD} characters.",
    "mismatch": "The two new passwords differ.",
}


@dataclass(frozen=True)
class SessionView:
    fp: str
    device: str
    ip: str
    country: str
    last_seen: float
    created: float
    current: bool
    last_seen_text: str = ""
    created_text: str = ""

    @property
    def last_seen_iso(self) -> str:
        return iso_time(self.last_seen)

    @property
    def created_iso(self) -> str:
        return iso_time(self.created)


def iso_time(t: float) -> str:
    """For `<time datetime=…>`: machine-readable, UTC."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def human_time(t: float, now: float) -> str:
    """ "just now", "5 minutes ago", "3 hours ago", else "2026-11-24 06:40 UTC".

    Rendered on the server in UTC (no script on our pages, and the gateway does not
    know the reader's zone); a clock a little ahead of ours still reads "just now".
    """
    ago = now - t
    if ago < 60:
        return "just now"
    if ago < 3600:
        minutes = int(ago // 60)
        return f"{minutes} minute{'s' if minutes != 1 else ''} ago"
    if ago < 6 * 3600:
        hours = int(ago // 3600)
        return f"{hours} hour{'s' if hours != 1 else ''} ago"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))


def describe_user_agent(user_agent: str | None) -> str:
    """ "Firefox on Linux": good enough to recognise one's own devices."""
    ua = user_agent or ""
    browser = next(
        (
            name
            for token, name in (
                ("Edg/", "Edge"),
                ("OPR/", "Opera"),
                ("Firefox/", "Firefox"),
                ("Chrome/", "Chrome"),
                ("Safari/", "Safari"),
                ("curl/", "curl"),
            )
            if token in ua
        ),
        "Unknown browser",
    )
    system = next(
        (
            name
            for token, name in (
                ("Android", "Android"),
                ("iPhone", "iPhone"),
                ("iPad", "iPad"),
                ("Windows", "Windows"),
                ("Mac OS X", "macOS"),
                ("Linux", "Linux"),
            )
            if token in ua
        ),
        None,
    )
    return f"{browser} on {system}" if system else browser


# The tenant must offer a method (`tenants[].mfa_methods`) for its actions to work.
_METHOD_OF = {
    "totp-add": TOTP,
    "totp-confirm": TOTP,
    "totp-rename": TOTP,
    "totp-remove": TOTP,
    "webauthn-rename": WEBAUTHN,
    "webauthn-remove": WEBAUTHN,
    "codes-regenerate": BACKUP_CODES,
}


class AccountPages:
    def __init__(self, shared: Interstitial) -> None:
        self.shared = shared

    def _self_url(self, req: ReservedRequest) -> str:
        return f"{req.origin}{self.shared.prefix}/account"

    def _go(self, location: str) -> web.Response:
        return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})

    def _back(self, notice: str) -> web.Response:
        return self._go(f"{self.shared.prefix}/account?m={notice}")

    async def page(self, req: ReservedRequest) -> web.StreamResponse:
        shared = self.shared
        if req.tenant is None:
            return shared.error(req, 421)
        visit = await shared.visit(req)
        if visit is None:
            return shared.to_login(req, self._self_url(req))
        if req.request.method == "POST":
            return await self._post(req, visit)
        if req.request.method not in ("GET", "HEAD"):
            return web.Response(status=405, headers={"Allow": "GET, POST"})
        return await self._render(req, visit, _NOTICES.get(req.request.query.get("m", "")))

    async def _render(self, req: ReservedRequest, visit: Visit, notice: str | None) -> web.Response:
        shared = self.shared
        factors = shared.factors()
        user = visit.active.user
        runtime = shared.runtime()
        now = runtime.sessions.now()
        offered = visit.tenant.mfa_methods
        sessions = [
            SessionView(
                fp=fingerprint(r.id_hash),
                device=describe_user_agent(r.user_agent),
                ip=r.ip or "-",
                country=r.country or "-",
                last_seen=r.last_seen,
                created=r.created,
                current=r.id_hash == visit.active.id_hash,
                last_seen_text=human_time(r.last_seen, now),
                created_text=human_time(r.created, now),
            )
            for r in await runtime.stores.sessions.list_user(visit.tenant.id, user.id)
        ]
        return shared.render(
            req,
            "account.html",
            csrf_token=shared.csrf_token(visit),
            user=user,
            notice=notice,
            totp_devices=await factors.totp.devices(user.id) if TOTP in offered else (),
            webauthn=await factors.store.list_webauthn(user.id) if WEBAUTHN in offered else (),
            codes=await factors.backup_codes.remaining(user.id),
            offer_totp=TOTP in offered,
            offer_webauthn=WEBAUTHN in offered,
            offer_codes=BACKUP_CODES in offered,
            sessions=sessions,
            account_url=f"{shared.prefix}/account",
            fresh=factors.is_fresh(visit.active.record),
        )

    async def _post(self, req: ReservedRequest, visit: Visit) -> web.StreamResponse:
        shared = self.shared
        form = await shared.form(req)
        if form is None or not shared.checked(req, visit, form):
            return shared.error(req, 403, "This page has expired. Please try again.")
        action = form.get(ACTION_FIELD, "")
        if action == "session-revoke":
            return await self._revoke_session(req, visit, form)
        if action == "everywhere":
            count = await shared.runtime().sessions.revoke_user(
                visit.tenant.id, visit.active.user.id
            )
            shared.audit(
                req,
                visit,
                Event.SESSION_REVOKED,
                outcome="everywhere",
                details={"by": "user", "sessions": count},
            )
            response = self._go(login_url(shared.prefix, self._self_url(req)))
            response.del_cookie(
                shared.site.config.sessions.cookie_name, path="/", domain=visit.tenant.cookie_domain
            )
            return response
        factors = shared.factors()
        if not factors.is_fresh(visit.active.record):
            return self._go(login_url(shared.prefix, self._self_url(req)) + "&reauth=1")
        if action == "password":
            return await self._password(visit, form)
        methods = await shared.methods(visit)
        if methods.any and not factors.has_two_factors(visit.active.record):
            rd = quote(self._self_url(req), safe="")
            return self._go(f"{shared.prefix}/mfa?rd={rd}")
        return await self._factors(req, visit, form, action)

    async def _factors(
        self, req: ReservedRequest, visit: Visit, form: dict[str, str], action: str
    ) -> web.StreamResponse:
        shared = self.shared
        factors = shared.factors()
        user = visit.active.user
        item = form.get(DEVICE_FIELD, "")
        name = form.get(NAME_FIELD, "")
        done: bool
        needs = _METHOD_OF.get(action)
        if needs is not None and needs not in visit.tenant.mfa_methods:
            return shared.error(req, 404)
        if action == "totp-add":
            issuer = shared.site.config.mfa.totp_issuer or visit.tenant.name
            enrolment = await factors.totp.start(
                visit.tenant.id, user.id, user.username, name or "Authenticator app", issuer=issuer
            )
            if enrolment is None:
                return self._back("failed")
            return MfaPages(shared).enrol_page(
                req, visit, enrolment, "", action=f"{shared.prefix}/account"
            )
        if action == "totp-confirm":
            attempt = await shared.attempt(req, visit, "totp", "totp")
            if not isinstance(attempt, Attempt):
                return attempt
            confirming = factors.totp.confirm(user.id, item, form.get(CODE_FIELD, ""))
            if not await factors.regulator.checked(attempt, confirming):
                await shared.failed(req, visit, attempt, "totp", "totp")
                return self._back("failed")
            await factors.succeeded(visit.tenant.id, user.username)
            await factors.store.rename_totp(user.id, item, clean_name(name, "Authenticator app"))
            shared.audit(
                req,
                visit,
                Event.MFA_ENROLLED,
                outcome="ok",
                details={"method": "totp", "device": item},
            )
            offers_codes = BACKUP_CODES in visit.tenant.mfa_methods
            if offers_codes and (await factors.backup_codes.remaining(user.id)).unused == 0:
                return await self._codes(req, visit)
            return self._back("added")
        if action == "codes-regenerate":
            return await self._codes(req, visit)
        if action == "totp-rename":
            done = await factors.store.rename_totp(
                user.id, item, clean_name(name, "Authenticator app")
            )
            return self._back("renamed" if done else "failed")
        if action == "totp-remove":
            done = await factors.store.remove_totp(user.id, item)
            self._removed(req, visit, done, "totp", item)
            return self._back("removed" if done else "failed")
        if action == "webauthn-rename":
            done = await factors.store.rename_webauthn(
                user.id, item, clean_name(name, "Security key")
            )
            return self._back("renamed" if done else "failed")
        if action == "webauthn-remove":
            done = await factors.store.remove_webauthn(user.id, item)
            self._removed(req, visit, done, "webauthn", item)
            return self._back("removed" if done else "failed")
        return shared.error(req, 400)

    def _removed(
        self, req: ReservedRequest, visit: Visit, done: bool, method: str, item: str
    ) -> None:
        if done:
            self.shared.audit(
                req,
                visit,
                Event.MFA_REMOVED,
                outcome="ok",
                details={"method": method, "device": item[:128]},
            )

    async def _codes(self, req: ReservedRequest, visit: Visit) -> web.Response:
        codes = await self.shared.factors().backup_codes.regenerate(
            visit.tenant.id, visit.active.user.id
        )
        self.shared.audit(
            req,
            visit,
            Event.MFA_ENROLLED,
            outcome="ok",
            details={"method": "backup_codes", "codes": len(codes)},
        )
        return self.shared.render(
            req, "mfa_codes.html", codes=codes, continue_url=f"{self.shared.prefix}/account"
        )

    async def _revoke_session(
        self, req: ReservedRequest, visit: Visit, form: dict[str, str]
    ) -> web.Response:
        runtime = self.shared.runtime()
        wanted = form.get("session", "")
        records = await runtime.stores.sessions.list_user(visit.tenant.id, visit.active.user.id)
        target: SessionRecord | None = next(
            (r for r in records if wanted and fingerprint(r.id_hash) == wanted), None
        )
        if target is None:
            return self._back("failed")
        await runtime.sessions.revoke_hash(target.id_hash)
        self.shared.audit(
            req,
            visit,
            Event.SESSION_REVOKED,
            outcome="ok",
            details={"by": "user", "session": fingerprint(target.id_hash)},
        )
        return self._back("revoked")

    async def _password(self, visit: Visit, form: dict[str, str]) -> web.Response:
        runtime = self.shared.runtime()
        new = form.get("new_password", "")
        if len(new) < _MIN_PASSWORD:
            return self._back("short")
        if new != form.get("new_password2", ""):
            return self._back("mismatch")
        user = visit.active.user
        if is_file_user(user):  # read-only: the users file says what the password is
            return self._back("failed")
        hashed = await runtime.hasher.hash(new)
        # The other sessions end first: should the store fail half-way, the password is
        # not yet changed (the person tries again), rather than changed with whoever
        # knew the old one still signed in.
        for record in await runtime.stores.sessions.list_user(visit.tenant.id, user.id):
            if record.id_hash != visit.active.id_hash:
                await runtime.sessions.revoke_hash(record.id_hash)
        # The hash alone, and only while the user is enabled: writing back the whole
        # user read when the session loaded would undo a disable made meanwhile.
        if not await runtime.stores.users.set_password(user.id, hashed, runtime.sessions.now()):
            return self._back("failed")  # disabled or removed meanwhile
        log.info("password changed", extra={"tenant": visit.tenant.id, "user": user.username})
        return self._back("password")
