"""The client address behind trusted proxies: `Forwarded` (RFC 7239) or `X-Forwarded-For`.

Read only on connections from `server.trusted_proxies`. The client is the right-most address that is not one of our
proxies: entries to its right were appended by proxies we trust, entries to its left the client could have written.
Entries may carry a port (`203.0.113.77:5555`, `[2001:db8::5]:443`, as Azure Application Gateway writes them);
`Forwarded` nodes may be quoted. An obfuscated identifier (`_hidden`) or `unknown` where the client should be, or
anything unreadable, leaves the peer's own address: what a proxy we trust could not name, we do not guess.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable


def node_address(node: str) -> str | None:
    """The IP address of one forwarded node (`1.2.3.4`, `1.2.3.4:80`, `[2001:db8::5]:443`, `2001:db8::5`), as text
    in its canonical form, an IPv4-mapped one (`::ffff:1.2.3.4`, a dual-stack proxy's) as its IPv4 address; None for
    anything else (obfuscated, `unknown`, malformed)."""
    node = node.strip().strip('"').strip()
    if node.startswith("["):
        host, bracket, rest = node[1:].partition("]")
        if not bracket or (rest and not (rest[0] == ":" and rest[1:].isdigit())):
            return None
        node = host
    elif node.count(":") == 1:  # IPv4 with a port (a bare IPv6 address has several colons)
        node, _, port = node.partition(":")
        if not port.isdigit():
            return None
    try:
        address = ipaddress.ip_address(node)
    except ValueError:
        return None
    # Python writes ::ffff:1.2.3.4 as ::ffff:102:304, which the geo databases and the trusted networks know only as
    # 1.2.3.4 (a socket's own IPv4-mapped peer keeps the dotted form).
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def forwarded_for(header: str) -> list[str]:
    """The `for=` nodes of a `Forwarded` header, first hop first (one per element; elements without one give "")."""
    nodes = []
    for element in header.split(","):
        found = ""
        for pair in element.split(";"):
            name, equals, value = pair.partition("=")
            if equals and name.strip().lower() == "for":
                found = value
                break
        nodes.append(found)
    return nodes


def client_address(nodes: list[str], peer_ip: str, trusted: Callable[[str], bool]) -> str:
    """The right-most node that is not a trusted proxy; the peer's address when that node cannot be read."""
    for node in reversed(nodes):
        address = node_address(node)
        if address is None:
            return peer_ip  # obfuscated, unknown, forged or broken: trust only what we saw
        if not trusted(address):
            return address
    return peer_ip
