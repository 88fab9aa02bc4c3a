"""Where a callback comes from: the caller's address behind trusted proxies, and
whether it lies within a set of networks (YooKassa's, for its notifications)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(cidr.strip(), strict=False) for cidr in cidrs if cidr.strip())


def client_address(
    peer: str | None, forwarded_for: Sequence[str], proxies: Sequence[IPNetwork]
) -> str:
    """The caller's address: the peer, or — only when the peer is a trusted proxy — the
    right-most address in X-Forwarded-For that is not itself a trusted proxy.

    `forwarded_for` is every X-Forwarded-For header line in order: they are one list
    (RFC 9110 §5.3), and a client may send a line of its own that a proxy then follows
    with another. IPv4-mapped IPv6 addresses are read as their IPv4 form.
    """
    if peer is None:
        return ""
    peer = normalised(peer)
    if not forwarded_for or not _within(peer, proxies):
        return peer
    hops = [normalised(part.strip()) for line in forwarded_for for part in line.split(",")]
    for hop in reversed(hops):
        if not _within(hop, proxies):
            return hop
    return peer


def normalised(address: str) -> str:
    """`::ffff:185.71.76.10` as `185.71.76.10`; anything else unchanged."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return str(mapped) if mapped else address


def _within(address: str, allowed: Sequence[IPNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(normalised(address))
    except ValueError:
        return False
    return any(ip in network for network in allowed)


def allowed(address: str, sources: Sequence[IPNetwork]) -> bool:
    return _within(address, sources)
