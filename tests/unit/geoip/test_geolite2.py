"""Against the real GeoLite2 City data of the PyPI package maxminddb-geolite2 (2018-07-03).

Nobody here wrote this data: it checks the reader against MaxMind's own layout.
The addresses below were chosen by looking them up in that snapshot.
"""

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from geoip import GeoReader, geolite2_database_path, is_impossible_travel

LONDON_IP = "2.16.37.1"  # London, accuracy 50 km
TOKYO_IP = "1.1.64.1"  # Tokyo, accuracy 500 km
PARIS_IP = "2.2.70.1"  # Paris, accuracy 100 km


@pytest.fixture(scope="module")
def geolite2() -> Iterator[GeoReader]:
    path = geolite2_database_path()
    assert path is not None, "maxminddb-geolite2 (a test dependency) is not installed"
    with GeoReader(path) as reader:
        yield reader


def test_the_packaged_database_is_found() -> None:
    path = geolite2_database_path()
    assert path is not None
    assert path.name == "GeoLite2-City.mmdb"
    assert path.is_file()


def test_its_metadata_is_read(geolite2: GeoReader) -> None:
    assert geolite2.metadata.database_type == "GeoLite2-City"
    assert geolite2.metadata.build_time == datetime(2018, 7, 3, 21, 26, 56, tzinfo=UTC)


def test_maxminds_own_example_address_is_in_great_britain(geolite2: GeoReader) -> None:
    location = geolite2.lookup("81.2.69.142")
    assert location.country == "GB"
    assert location.subdivision == "England"
    assert location.accuracy_km is not None
    assert location.coordinates is not None


def test_ipv4_mapped_form_finds_the_same_place(geolite2: GeoReader) -> None:
    assert geolite2.lookup("::ffff:81.2.69.142") == geolite2.lookup("81.2.69.142")


def test_cities_of_the_chosen_addresses(geolite2: GeoReader) -> None:
    assert (geolite2.lookup(LONDON_IP).country, geolite2.lookup(LONDON_IP).city) == ("GB", "London")
    assert (geolite2.lookup(TOKYO_IP).country, geolite2.lookup(TOKYO_IP).city) == ("JP", "Tokyo")
    assert (geolite2.lookup(PARIS_IP).country, geolite2.lookup(PARIS_IP).city) == ("FR", "Paris")


def test_ipv6_addresses_are_located(geolite2: GeoReader) -> None:
    assert geolite2.lookup("2a02:a000::1").country == "BE"


def test_private_addresses_stay_local(geolite2: GeoReader) -> None:
    assert geolite2.lookup("192.168.0.1").local
    assert geolite2.lookup("::1").local


def test_london_to_tokyo_in_ten_minutes_is_impossible_travel(geolite2: GeoReader) -> None:
    london, tokyo = geolite2.lookup(LONDON_IP), geolite2.lookup(TOKYO_IP)
    assert is_impossible_travel(london, tokyo, seconds=10 * 60)


def test_london_to_paris_in_ten_hours_is_not(geolite2: GeoReader) -> None:
    london, paris = geolite2.lookup(LONDON_IP), geolite2.lookup(PARIS_IP)
    assert not is_impossible_travel(london, paris, seconds=10 * 3600)
