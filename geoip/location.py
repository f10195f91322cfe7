"""Where an address is, as far as a database can tell."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Location:
    """The place of one IP address; every field is None when the database does not know.

    `country` is an ISO 3166-1 alpha-2 code (what policies compare against);
    `subdivision` and `city` are English names, for people reading audit logs;
    `accuracy_km` is the database's radius of uncertainty around the coordinates.
    `local` marks loopback, private and other non-public addresses: they are on the
    gateway's side of the Internet and have no country.
    """

    country: str | None = None
    subdivision: str | None = None
    city: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    accuracy_km: float | None = None
    asn: int | None = None
    org: str | None = None
    local: bool = False

    @property
    def coordinates(self) -> tuple[float, float] | None:
        """(latitude, longitude) in degrees, or None when the place is not known."""
        if self.local or self.latitude is None or self.longitude is None:
            return None
        return (self.latitude, self.longitude)

    def describe(self) -> str:
        """A short human label, e.g. "London, England, GB"."""
        if self.local:
            return "local network"
        parts = [p for p in (self.city, self.subdivision, self.country) if p]
        return ", ".join(parts) if parts else "unknown"


UNKNOWN = Location()
LOCAL = Location(local=True)
