"""The gateway's side of GeoIP: one reader per worker, countries for the pipeline,
and the location checks made at each successful sign-in.

No `geoip.database` configured: every lookup answers None and sign-in checks pass
(one warning at start). A policy that uses countries without a database is refused
at start by `gateway.policy_sets` instead, so "geo off" never silently weakens a rule.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

from gateway.config.model import GeoipConfig
from gateway.stores.database import Database
from geoip import GeoReader, Location, distance_km, is_impossible_travel, travel_speed_kmh

log = logging.getLogger("authgate.geo")


class GeoService:
    """Where client addresses are; a thin, never-raising layer over `GeoReader`."""

    def __init__(self, config: GeoipConfig, reader: GeoReader | None) -> None:
        self.config = config
        self.reader = reader

    @classmethod
    def open(cls, config: GeoipConfig) -> GeoService:
        """Open the configured database; raises geoip.GeoDatabaseError when it is unusable."""
        if config.database is None:
            log.warning(
                "geoip.database is not configured: country rules, impossible-travel and "
                "new-country checks are off"
            )
            return cls(config, None)
        reader = GeoReader(config.database, asn_database=config.asn_database)
        meta = reader.metadata
        log.info(
            "GeoIP database %s (%s, built %s)",
            meta.path,
            meta.database_type,
            meta.build_time.date().isoformat(),
        )
        return cls(config, reader)

    @property
    def enabled(self) -> bool:
        return self.reader is not None

    def locate(self, ip: object) -> Location | None:
        """The location of `ip` (an address or its text); None when geo is off or unknown."""
        if self.reader is None or ip is None:
            return None
        try:
            return self.reader.lookup(str(ip))
        except ValueError:
            return None

    def country(self, ip: object) -> str | None:
        """The ISO country code of `ip`, for the policy's RequestContext."""
        location = self.locate(ip)
        return location.country if location is not None else None

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()


# --- sign-in checks -------------------------------------------------------------


class Response(enum.StrEnum):
    """What a suspicious sign-in leads to (`geoip.on_impossible_travel` / `on_new_country`)."""

    ALLOW = "allow"  # nothing suspicious
    NOTIFY = "notify"
    STEP_UP = "step_up"
    DENY = "deny"


_SEVERITY = {Response.ALLOW: 0, Response.NOTIFY: 1, Response.STEP_UP: 2, Response.DENY: 3}


@dataclass(frozen=True)
class SignInPlace:
    """Where and when a user signed in, as remembered between sign-ins."""

    time: float
    ip: str | None
    location: Location


@dataclass(frozen=True)
class SignInCheck:
    """The verdict on one sign-in, with what the audit events need."""

    response: Response
    impossible_travel: bool
    new_country: bool
    previous: SignInPlace | None
    current: SignInPlace
    distance_km: float | None
    speed_kmh: float | None


def judge_sign_in(
    config: GeoipConfig,
    previous: SignInPlace | None,
    current: SignInPlace,
    known_countries: frozenset[str],
) -> SignInCheck:
    """Compare a sign-in with the last one (pure: no I/O). The stricter response wins."""
    impossible = False
    distance = speed = None
    if previous is not None:
        seconds = current.time - previous.time
        impossible = is_impossible_travel(
            previous.location, current.location, seconds, config.impossible_travel_kmh
        )
        distance = distance_km(previous.location, current.location)
        speed = travel_speed_kmh(previous.location, current.location, seconds)
    country = current.location.country
    # The first sign-in ever seen has nothing to compare with: it sets the baseline.
    new_country = bool(country) and bool(known_countries) and country not in known_countries
    response = Response.ALLOW
    if impossible:
        response = Response(config.on_impossible_travel)
    if new_country and _SEVERITY[Response(config.on_new_country)] > _SEVERITY[response]:
        response = Response(config.on_new_country)
    return SignInCheck(response, impossible, new_country, previous, current, distance, speed)


class SignInHistory:
    """The last sign-in place and the countries seen, per user (tables from 0003)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def last(self, tenant: str, user_id: str) -> SignInPlace | None:
        row = await self._db.fetchone(
            "SELECT time, ip, country, subdivision, city, latitude, longitude, accuracy_km"
            " FROM sign_in_last WHERE tenant = ? AND user_id = ?",
            tenant,
            user_id,
        )
        if row is None:
            return None
        location = Location(
            country=row[2],
            subdivision=row[3],
            city=row[4],
            latitude=row[5],
            longitude=row[6],
            accuracy_km=row[7],
        )
        return SignInPlace(float(row[0]), row[1], location)

    async def countries(self, tenant: str, user_id: str) -> frozenset[str]:
        rows = await self._db.fetch(
            "SELECT country FROM sign_in_countries WHERE tenant = ? AND user_id = ?",
            tenant,
            user_id,
        )
        return frozenset(str(row[0]) for row in rows)

    async def remember(self, tenant: str, user_id: str, place: SignInPlace) -> None:
        """Record a successful sign-in (only places we know: local/unknown keep the last)."""
        loc = place.location
        if loc.coordinates is None and loc.country is None:
            return
        async with self._db.transaction() as tx:
            await tx.execute(
                "INSERT INTO sign_in_last (tenant, user_id, time, ip, country, subdivision,"
                " city, latitude, longitude, accuracy_km) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (tenant, user_id) DO UPDATE SET time = excluded.time,"
                " ip = excluded.ip, country = excluded.country,"
                " subdivision = excluded.subdivision, city = excluded.city,"
                " latitude = excluded.latitude, longitude = excluded.longitude,"
                " accuracy_km = excluded.accuracy_km",
                tenant,
                user_id,
                place.time,
                place.ip,
                loc.country,
                loc.subdivision,
                loc.city,
                loc.latitude,
                loc.longitude,
                loc.accuracy_km,
            )
            if loc.country:
                await tx.execute(
                    "INSERT INTO sign_in_countries (tenant, user_id, country, first_seen)"
                    " VALUES (?, ?, ?, ?) ON CONFLICT (tenant, user_id, country) DO NOTHING",
                    tenant,
                    user_id,
                    loc.country,
                    place.time,
                )


class SignInGuard:
    """At each successful sign-in: look up the place, judge it, remember it."""

    def __init__(self, geo: GeoService, history: SignInHistory | None) -> None:
        self.geo = geo
        self.history = history

    async def check(self, tenant: str, user_id: str, ip: str | None, now: float) -> SignInCheck:
        location = self.geo.locate(ip) or Location()
        current = SignInPlace(now, ip, location)
        if not self.geo.enabled or self.history is None:
            return SignInCheck(Response.ALLOW, False, False, None, current, None, None)
        previous = await self.history.last(tenant, user_id)
        known = await self.history.countries(tenant, user_id)
        verdict = judge_sign_in(self.geo.config, previous, current, known)
        if verdict.response is not Response.DENY:
            await self.history.remember(tenant, user_id, current)
        return verdict


def place_details(prefix: str, place: SignInPlace | None) -> dict[str, str | float | None]:
    """Flat audit details for one place (`from_…`, `to_…`)."""
    if place is None:
        return {}
    loc = place.location
    return {
        f"{prefix}_place": loc.describe(),
        f"{prefix}_country": loc.country,
        f"{prefix}_ip": place.ip,
        f"{prefix}_time": round(place.time, 3),
        f"{prefix}_latitude": loc.latitude,
        f"{prefix}_longitude": loc.longitude,
        f"{prefix}_accuracy_km": loc.accuracy_km,
    }
