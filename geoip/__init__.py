"""authgate: geoip — where a client address is, and whether a user could have got there.

Pure core: stdlib and `maxminddb` only, no aiohttp. The gateway opens one
`GeoReader` at start-up (when `geoip.database` is configured), calls `lookup()` with
the canonical client IP, and uses `is_impossible_travel()` between sign-ins.
"""

from geoip.addresses import IPAddress, is_local, parse_address
from geoip.geolite2 import geolite2_database_path
from geoip.location import Location
from geoip.reader import CacheStats, DatabaseMetadata, GeoDatabaseError, GeoReader
from geoip.travel import EARTH_RADIUS_KM, distance_km, is_impossible_travel, travel_speed_kmh

__all__ = [
    "EARTH_RADIUS_KM",
    "CacheStats",
    "DatabaseMetadata",
    "GeoDatabaseError",
    "GeoReader",
    "IPAddress",
    "Location",
    "distance_km",
    "geolite2_database_path",
    "is_impossible_travel",
    "is_local",
    "parse_address",
    "travel_speed_kmh",
]
