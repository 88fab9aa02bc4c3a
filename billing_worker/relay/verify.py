"""Deciding whether a callback is genuine: Stripe signatures, YooKassa source addresses."""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Iterable, Sequence

import stripe

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Forged(ValueError):
    """The callback is not provably from the provider."""


def verify_stripe(payload: bytes, header: str | None, secret: str, tolerance: int) -> None:
    """Check `Stripe-Signature` with the SDK's verifier.

    The timestamp is read strictly first: exactly one `t=` element of plain ASCII digits
    (the SDK's `int()` would also take a sign, spaces, leading zeros or other scripts'
    digits, none of which Stripe sends). The SDK refuses only timestamps older than the
    tolerance; one further in the future than the same tolerance is refused here too (a
    replay window must not open forward because of a skewed or forged clock).
    """
    if not header:
        raise Forged("missing Stripe-Signature header")
    stamp = stripe_timestamp(header)
    try:
        stripe.WebhookSignature.verify_header(payload.decode(), header, secret, tolerance)
    except (stripe.SignatureVerificationError, UnicodeDecodeError) as error:
        raise Forged(f"bad Stripe signature: {error}") from None
    if stamp > time.time() + tolerance:
        raise Forged("Stripe-Signature timestamp is in the future")


_TIMESTAMP = re.compile(r"[1-9][0-9]{0,11}")  # seconds since 1970, up to the year 33658


def stripe_timestamp(header: str) -> int:
    """The one `t=` element of a `Stripe-Signature` header, or Forged."""
    stamps = [part for part in header.split(",") if part.split("=", 1)[0].strip() == "t"]
    if len(stamps) != 1:
        raise Forged("Stripe-Signature needs exactly one timestamp")
    value = stamps[0].removeprefix("t=")
    if value == stamps[0] or not _TIMESTAMP.fullmatch(value):
        raise Forged("Stripe-Signature timestamp is not a plain number")
    return int(value)


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
