"""Deciding whether a callback is genuine: Stripe signatures, YooKassa source addresses."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterable, Sequence

import stripe

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# YooKassa's published notification sources.
YOOKASSA_NETWORKS = (
    "185.71.76.0/27",
    "185.71.77.0/27",
    "77.75.153.0/25",
    "77.75.154.128/25",
    "77.75.156.11/32",
    "77.75.156.35/32",
    "2a02:5180::/32",
)


class Forged(ValueError):
    """The callback is not provably from the provider."""


def verify_stripe(payload: bytes, header: str | None, secret: str, tolerance: int) -> None:
    """Check `Stripe-Signature` with the SDK's verifier.

    The SDK refuses only timestamps older than the tolerance; a timestamp further in the
    future than the same tolerance is refused here too (a replay window must not open
    forward because of a skewed or forged clock).
    """
    if not header:
        raise Forged("missing Stripe-Signature header")
    try:
        stripe.WebhookSignature.verify_header(payload.decode(), header, secret, tolerance)
    except (stripe.SignatureVerificationError, UnicodeDecodeError) as error:
        raise Forged(f"bad Stripe signature: {error}") from None
    stamp = next((part[2:] for part in header.split(",") if part.startswith("t=")), "")
    if stamp.isdigit() and int(stamp) > time.time() + tolerance:
        raise Forged("Stripe-Signature timestamp is in the future")


def networks(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(cidr.strip(), strict=False) for cidr in cidrs if cidr.strip())


def client_address(
    peer: str | None, forwarded_for: str | None, proxies: Sequence[IPNetwork]
) -> str:
    """The caller's address: the peer, or — only when the peer is a trusted proxy — the
    right-most address in X-Forwarded-For that is not itself a trusted proxy."""
    if peer is None:
        return ""
    if not forwarded_for or not _within(peer, proxies):
        return peer
    for hop in reversed([part.strip() for part in forwarded_for.split(",")]):
        if not _within(hop, proxies):
            return hop
    return peer


def _within(address: str, allowed: Sequence[IPNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in allowed)


def allowed(address: str, sources: Sequence[IPNetwork]) -> bool:
    return _within(address, sources)
