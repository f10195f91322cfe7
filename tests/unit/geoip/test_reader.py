import pickle
import re
from collections.abc import Callable, Iterator
from datetime import UTC
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from geoip import GeoDatabaseError, GeoReader, Location


@pytest.fixture
def reader(city_db: Path, asn_db: Path) -> Iterator[GeoReader]:
    with GeoReader(city_db, asn_database=asn_db) as reader:
        yield reader


def test_a_city_record_becomes_a_full_location(reader: GeoReader) -> None:
    assert reader.lookup("81.2.69.142") == Location(
        country="GB",
        subdivision="England",
        city="London",
        latitude=51.5142,
        longitude=-0.0931,
        accuracy_km=5.0,
        asn=20712,
        org="Andrews & Arnold Ltd",
        local=False,
    )


def test_a_whole_network_resolves_not_only_one_address(reader: GeoReader) -> None:
    for ip in ["1.1.64.0", "1.1.80.7", "1.1.95.255"]:
        assert reader.lookup(ip).city == "Tokyo"
    assert reader.lookup("1.1.96.0").city is None


def test_ipv4_mapped_ipv6_finds_the_ipv4_record(reader: GeoReader) -> None:
    assert reader.lookup("::ffff:81.2.69.142") == reader.lookup("81.2.69.142")


def test_ipaddress_objects_are_accepted(reader: GeoReader) -> None:
    assert reader.lookup(IPv4Address("2.2.70.1")).country == "FR"


def test_ipv6_is_found_even_when_the_asn_database_is_ipv4_only(reader: GeoReader) -> None:
    oslo = reader.lookup("2a02:cf40::1")
    assert (oslo.country, oslo.city, oslo.asn) == ("NO", "Oslo", None)
    assert oslo.subdivision is None


def test_a_country_only_record_leaves_the_rest_unknown(reader: GeoReader) -> None:
    assert reader.lookup("5.5.5.5") == Location(country="DE")


def test_an_address_in_no_database_is_unknown_with_every_field_none(reader: GeoReader) -> None:
    assert reader.lookup("8.8.8.8") == Location()
    assert reader.lookup("2606:4700::1") == Location()
    assert reader.lookup("8.8.8.8").describe() == "unknown"


@pytest.mark.parametrize(
    "ip", ["127.0.0.1", "10.0.0.1", "192.168.1.1", "::1", "fd00::1", "100.64.0.1", "169.254.1.1"]
)
def test_local_addresses_are_local_and_have_no_country(reader: GeoReader, ip: str) -> None:
    location = reader.lookup(ip)
    assert location.local
    assert location.country is None
    assert location.coordinates is None
    assert location.describe() == "local network"


def test_asn_is_read_from_the_asn_database(reader: GeoReader) -> None:
    tokyo = reader.lookup("1.1.64.1")
    assert (tokyo.asn, tokyo.org) == (2519, "ARTERIA")


def test_without_an_asn_database_there_is_no_asn(city_db: Path) -> None:
    with GeoReader(city_db) as reader:
        london = reader.lookup("81.2.69.142")
        assert (london.city, london.asn, london.org) == ("London", None, None)
        assert reader.asn_metadata is None


def test_asn_from_traits_of_an_enterprise_style_record(
    make_mmdb: Callable[..., Path],
) -> None:
    traits = {"autonomous_system_number": 64500, "autonomous_system_organization": "Example"}
    path = make_mmdb(
        {"81.2.69.0/24": {"country": {"iso_code": "GB"}, "traits": traits}},
        database_type="GeoIP2-Enterprise",
    )
    with GeoReader(path) as reader:
        assert reader.lookup("81.2.69.1") == Location(country="GB", asn=64500, org="Example")


def test_malformed_records_degrade_to_unknown_fields(make_mmdb: Callable[..., Path]) -> None:
    path = make_mmdb(
        {
            "81.2.69.0/24": {
                "country": "GB",  # a string where a map belongs
                "subdivisions": [],
                "city": {"names": {"fr": "Londres"}},
                "location": {"latitude": "51.5", "longitude": True},
            }
        },
        database_type="GeoIP2-City",
    )
    with GeoReader(path) as reader:
        assert reader.lookup("81.2.69.1") == Location()


def test_metadata_describes_the_database(reader: GeoReader, city_db: Path, asn_db: Path) -> None:
    assert reader.metadata.path == city_db
    assert reader.metadata.database_type == "GeoIP2-City"
    assert reader.metadata.ip_version == 6
    assert reader.metadata.build_time.tzinfo is UTC
    assert reader.asn_metadata is not None
    assert reader.asn_metadata.database_type == "GeoLite2-ASN"
    assert reader.asn_metadata.ip_version == 4


def test_repeated_lookups_are_answered_from_the_cache(reader: GeoReader) -> None:
    first = reader.lookup("81.2.69.142")
    assert reader.lookup("81.2.69.142") is first
    assert reader.lookup("::ffff:81.2.69.142") is first  # one client, one entry
    stats = reader.cache_stats()
    assert (stats.misses, stats.hits, stats.size) == (1, 2, 1)


def test_local_addresses_do_not_take_cache_space(reader: GeoReader) -> None:
    for i in range(1, 50):
        reader.lookup(f"10.0.0.{i}")
    assert reader.cache_stats().size == 0


def test_the_cache_is_bounded(city_db: Path) -> None:
    with GeoReader(city_db, cache_size=2) as reader:
        for ip in ["81.2.69.1", "81.2.69.2", "81.2.69.3", "1.1.64.1"]:
            reader.lookup(ip)
        stats = reader.cache_stats()
        assert (stats.size, stats.max_size) == (2, 2)


def test_the_default_cache_holds_4096_addresses(reader: GeoReader) -> None:
    assert reader.cache_stats().max_size == 4096


def test_a_non_address_is_refused(reader: GeoReader) -> None:
    with pytest.raises(ValueError):
        reader.lookup("not-an-ip")


def test_public_lookups_after_close_fail_naming_the_file(city_db: Path) -> None:
    reader = GeoReader(city_db)
    reader.lookup("81.2.69.142")
    reader.close()
    with pytest.raises(GeoDatabaseError, match=r"Test-City\.mmdb: .*closed"):
        reader.lookup("81.2.69.142")  # not served from a stale cache either
    assert reader.lookup("127.0.0.1").local  # needs no database


def test_a_missing_file_is_an_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "GeoLite2-City.mmdb"
    with pytest.raises(GeoDatabaseError, match=r"GeoLite2-City\.mmdb: no such file") as caught:
        GeoReader(missing)
    assert caught.value.path == missing


def test_a_missing_asn_file_is_an_error_naming_it(city_db: Path, tmp_path: Path) -> None:
    with pytest.raises(GeoDatabaseError, match=r"ASN\.mmdb"):
        GeoReader(city_db, asn_database=tmp_path / "ASN.mmdb")


@pytest.mark.parametrize(
    "content",
    [b"", b"this is not a MaxMind database\n" * 100, b"\xab\xcd\xefMaxMind.com" + b"\x00" * 64],
    ids=["empty", "text", "metadata-marker-then-garbage"],
)
def test_a_corrupt_file_is_an_error_naming_it(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "corrupt.mmdb"
    bad.write_bytes(content)
    with pytest.raises(GeoDatabaseError, match=r"corrupt\.mmdb: not a readable MaxMind database"):
        GeoReader(bad)


def test_a_directory_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(GeoDatabaseError, match=re.escape(str(tmp_path))):
        GeoReader(tmp_path)


def test_an_asn_database_in_place_of_a_city_database_is_refused(asn_db: Path) -> None:
    with pytest.raises(GeoDatabaseError, match=r"Test-ASN\.mmdb: is a GeoLite2-ASN database"):
        GeoReader(asn_db)


def test_the_error_survives_pickling_across_processes(tmp_path: Path) -> None:
    error = GeoDatabaseError(tmp_path / "x.mmdb", "no such file")
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
    assert (copy.path, copy.reason, str(copy)) == (error.path, error.reason, str(error))
