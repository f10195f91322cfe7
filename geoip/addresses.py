"""Client addresses: one canonical form, and which of them no database can place.

An IPv4 client reaching a dual-stack socket shows up as `::ffff:a.b.c.d`; it is the
same client as `a.b.c.d`, so it is unwrapped once here and every later step (cache
key, local check, database lookup) sees the IPv4 form.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address

IPAddress = IPv4Address | IPv6Address


def parse_address(ip: str | IPAddress) -> IPAddress:
    """The canonical address for `ip`; raises ValueError if it is not an IP address."""
    address = ip if isinstance(ip, IPv4Address | IPv6Address) else ip_address(ip)
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_local(address: IPAddress) -> bool:
    """True for addresses that are not somewhere on the public Internet.

    Loopback, private (RFC 1918), link-local, CGNAT (100.64.0.0/10), unique-local
    IPv6 (fc00::/7), documentation, benchmarking, reserved and unspecified ranges are
    all "not global" in the IANA special-purpose registries that `ipaddress` follows.
    Multicast counts as global there, but it is never a client's source address.
    """
    return not address.is_global or address.is_multicast
