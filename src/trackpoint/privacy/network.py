"""Client addresses truncated to their network (IPv4 to /24, IPv6 to /48 by default): what anonymize_ip applies to
events and what bad rows record. Unparsable input becomes None, so nothing unparsed is ever stored."""

from __future__ import annotations

import ipaddress

# The default prefixes: anonymize_ip's defaults, and what bad rows always keep.
IPV4_PREFIX = 24
IPV6_PREFIX = 48


def truncate_ip(ip: str, ipv4_prefix: int, ipv6_prefix: int) -> str | None:
    """The network address of `ip` at the prefix length of its version, or None when `ip` is not an address."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    prefix = ipv4_prefix if address.version == 4 else ipv6_prefix
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False).network_address)
