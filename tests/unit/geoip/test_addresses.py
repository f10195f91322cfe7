from ipaddress import IPv4Address, IPv6Address

import pytest

from geoip import is_local, parse_address

LOCAL = [
    "127.0.0.1",
    "127.8.9.10",
    "10.1.2.3",
    "172.16.0.1",
    "172.31.255.254",
    "192.168.1.20",
    "100.64.0.1",  # CGNAT
    "100.127.255.254",
    "169.254.169.254",  # link-local (and every cloud's metadata service)
    "0.0.0.0",
    "192.0.2.10",  # documentation
    "198.18.0.1",  # benchmarking
    "240.0.0.1",  # reserved
    "255.255.255.255",
    "224.0.0.1",  # multicast is never a client's source
    "::1",
    "::",
    "fc00::1",
    "fd12:3456::1",
    "fe80::1",
    "fe80::1%eth0",
    "2001:db8::1",
    "ff02::1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:192.168.0.1",
]

PUBLIC = ["81.2.69.142", "8.8.8.8", "1.1.1.1", "100.128.0.1", "2606:4700::1", "::ffff:8.8.8.8"]


@pytest.mark.parametrize("ip", LOCAL)
def test_loopback_private_and_reserved_addresses_are_local(ip: str) -> None:
    assert is_local(parse_address(ip))


@pytest.mark.parametrize("ip", PUBLIC)
def test_public_addresses_are_not_local(ip: str) -> None:
    assert not is_local(parse_address(ip))


def test_ipv4_mapped_ipv6_is_the_same_client_as_plain_ipv4() -> None:
    assert parse_address("::ffff:81.2.69.142") == IPv4Address("81.2.69.142")
    assert parse_address(IPv6Address("::ffff:81.2.69.142")) == IPv4Address("81.2.69.142")


def test_ordinary_ipv6_is_kept_as_it_is() -> None:
    assert parse_address("2606:4700::1") == IPv6Address("2606:4700::1")


@pytest.mark.parametrize("text", ["", "example.com", "1.2.3", "81.2.69.142:443", "::g"])
def test_text_that_is_not_an_address_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)
