"""Small MaxMind databases written for these tests with mmdb-writer.

The City database is IPv6 with the IPv4 space under ::/96, as MaxMind ships theirs;
the ASN database is IPv4-only, so lookups of IPv6 addresses must cope with it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet


def city(
    country: str,
    subdivision: tuple[str, str] | None,
    name: str | None,
    latitude: float,
    longitude: float,
    accuracy_km: int,
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "country": {"iso_code": country, "names": {"en": country}},
        "location": {
            "latitude": latitude,
            "longitude": longitude,
            "accuracy_radius": accuracy_km,
        },
    }
    if subdivision is not None:
        code, english = subdivision
        record["subdivisions"] = [{"iso_code": code, "names": {"en": english, "de": "x"}}]
    if name is not None:
        record["city"] = {"names": {"en": name, "ja": "東京"}}
    return record


# Public networks (a local address never reaches the database).
CITY_RECORDS: dict[str, dict[str, Any]] = {
    "81.2.69.0/24": city("GB", ("ENG", "England"), "London", 51.5142, -0.0931, 5),
    "1.1.64.0/19": city("JP", ("13", "Tokyo"), "Tokyo", 35.685, 139.7514, 500),
    "2.2.70.0/24": city("FR", ("IDF", "Île-de-France"), "Paris", 48.8628, 2.3292, 100),
    "5.5.5.0/24": {"country": {"iso_code": "DE"}},  # country only, as in a Country database
    "2a02:cf40::/29": city("NO", None, "Oslo", 59.9127, 10.7461, 20),
}

ASN_RECORDS: dict[str, dict[str, Any]] = {
    "81.2.69.0/24": {
        "autonomous_system_number": 20712,
        "autonomous_system_organization": "Andrews & Arnold Ltd",
    },
    "1.1.64.0/19": {"autonomous_system_number": 2519, "autonomous_system_organization": "ARTERIA"},
}


def write_mmdb(
    path: Path,
    records: dict[str, dict[str, Any]],
    *,
    database_type: str,
    ip_version: int = 6,
) -> Path:
    writer = MMDBWriter(
        ip_version=ip_version,
        database_type=database_type,
        ipv4_compatible=ip_version == 6,
        description="authgate test data",
    )
    for network, record in records.items():
        writer.insert_network(IPSet([network]), record)
    writer.to_db_file(str(path))
    return path


@pytest.fixture(scope="session")
def city_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mmdb") / "Test-City.mmdb"
    return write_mmdb(path, CITY_RECORDS, database_type="GeoIP2-City")


@pytest.fixture(scope="session")
def asn_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mmdb") / "Test-ASN.mmdb"
    return write_mmdb(path, ASN_RECORDS, database_type="GeoLite2-ASN", ip_version=4)


@pytest.fixture
def make_mmdb(tmp_path: Path) -> Callable[..., Path]:
    """Write a one-off database: make_mmdb(records, database_type=..., ip_version=...)."""

    def make(records: dict[str, dict[str, Any]], **options: Any) -> Path:
        return write_mmdb(tmp_path / f"db{len(list(tmp_path.iterdir()))}.mmdb", records, **options)

    return make
