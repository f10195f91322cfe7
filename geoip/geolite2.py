"""Find the GeoLite2 City database that the PyPI package `maxminddb-geolite2` ships.

That data (a 2018 snapshot) is too old for production decisions, but it is real:
tests use it as a check against data nobody here wrote, and `authgate demo` uses it
so that country rules work out of the box.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

_PACKAGE = "_maxminddb_geolite2"  # the data half of maxminddb-geolite2
_FILE_NAME = "GeoLite2-City.mmdb"


def geolite2_database_path() -> Path | None:
    """The packaged GeoLite2-City.mmdb, or None when the package is not installed."""
    # find_spec locates the package without importing it (the `geolite2` module
    # would also open the database at first use).
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / _FILE_NAME
    return path if path.is_file() else None
