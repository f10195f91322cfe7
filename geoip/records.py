"""Decoded MaxMind records (nested dicts) → `Location`.

The dicts never leave this module. Records follow MaxMind's GeoIP2/GeoLite2 layout:
City and Country databases carry `country`, `subdivisions`, `city` and `location`;
ASN databases carry `autonomous_system_number` / `_organization` at the top level,
and Enterprise/ISP-style City records may carry the same under `traits`.
Anything missing or of an unexpected type reads as "unknown", never as an error:
a database from another vendor should degrade, not take the gateway down.
"""

from __future__ import annotations

from dataclasses import replace

from geoip.location import Location

LANGUAGE = "en"


def location_from_records(geo: object, asn: object = None) -> Location:
    """The Location described by a City/Country record and an optional ASN record."""
    subdivisions = _get(geo, "subdivisions")
    # MaxMind orders subdivisions from largest to smallest; the largest is the one
    # people name (England, Bavaria, Tokyo), the smaller ones are often counties.
    first_subdivision = subdivisions[0] if isinstance(subdivisions, list) and subdivisions else None
    location = Location(
        country=_str(_get(geo, "country", "iso_code")),
        subdivision=_name(first_subdivision),
        city=_name(_get(geo, "city")),
        latitude=_float(_get(geo, "location", "latitude")),
        longitude=_float(_get(geo, "location", "longitude")),
        accuracy_km=_float(_get(geo, "location", "accuracy_radius")),
        asn=_int(_get(geo, "traits", "autonomous_system_number")),
        org=_str(_get(geo, "traits", "autonomous_system_organization")),
    )
    asn_number = _int(_get(asn, "autonomous_system_number"))
    if asn_number is None:
        return location
    return replace(location, asn=asn_number, org=_str(_get(asn, "autonomous_system_organization")))


def _get(record: object, *keys: str) -> object:
    for key in keys:
        if not isinstance(record, dict):
            return None
        record = record.get(key)
    return record


def _name(record: object) -> str | None:
    return _str(_get(record, "names", LANGUAGE)) or _str(_get(record, "iso_code"))


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _float(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
