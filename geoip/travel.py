"""Great-circle distance and the impossible-travel test between two sign-ins."""

from __future__ import annotations

import math

from geoip.location import Location

# IUGG mean Earth radius; the sphere is off by at most ~0.5 % against the ellipsoid,
# far below the accuracy of any IP geolocation.
EARTH_RADIUS_KM = 6371.0088

# Below this many kilometres (after the accuracy radii are taken off) a jump is
# never impossible, however short the time: two sign-ins seconds apart from
# neighbouring towns (a phone leaving Wi-Fi) would otherwise compute an absurd speed.
NEARBY_KM = 50.0


def distance_km(a: Location, b: Location) -> float | None:
    """Great-circle (haversine) distance between two places; None if either is unknown."""
    if (first := a.coordinates) is None or (second := b.coordinates) is None:
        return None
    lat1, lon1 = map(math.radians, first)
    lat2, lon2 = map(math.radians, second)
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    # min() guards asin against rounding just above 1 for antipodal points.
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def travel_speed_kmh(a: Location, b: Location, seconds: float) -> float | None:
    """The least speed that explains getting from `a` to `b` in `seconds`.

    Both accuracy radii are taken off the distance (a user anywhere inside each
    circle is consistent with the data), clamped at zero, so fuzzy locations do not
    look like fast travel. None if either place is unknown. The order of the two
    sign-ins does not matter, so a negative interval (clocks of two gateway instances
    disagreeing) counts by its size. In zero time the speed is 0.0 when the circles
    overlap and infinite when they do not.
    """
    distance = distance_km(a, b)
    if distance is None:
        return None
    effective = max(0.0, distance - (a.accuracy_km or 0.0) - (b.accuracy_km or 0.0))
    if effective == 0.0:
        return 0.0
    hours = abs(seconds) / 3600.0
    return effective / hours if hours > 0 else math.inf


def is_impossible_travel(
    previous: Location,
    current: Location,
    seconds: float,
    max_kmh: float = 1000.0,
    *,
    nearby_km: float = NEARBY_KM,
) -> bool:
    """True if no traveller could have signed in at `previous` and then at `current`.

    False whenever either place is unknown or local: absence of evidence is not an
    alarm (a policy on countries is the tool for unknown locations). A jump of at
    most `nearby_km` beyond the accuracy radii is never impossible; beyond that, a
    zero-time jump is always impossible (its speed is infinite), and otherwise the
    speed must exceed `max_kmh`.
    """
    if max_kmh <= 0:
        raise ValueError(f"max_kmh must be positive, not {max_kmh}")
    distance = distance_km(previous, current)
    if distance is None:
        return False
    radii = (previous.accuracy_km or 0.0) + (current.accuracy_km or 0.0)
    if distance - radii <= nearby_km:
        return False
    speed = travel_speed_kmh(previous, current, seconds)
    return speed is not None and speed > max_kmh
