"""Stripe: PaymentIntents for deposits, Stripe-run subscriptions, signed webhooks.

- `gateway`: the `StripeGateway` (the SDK's async calls; every event re-read from the API)
- `payments`: PaymentIntents and Charges as billing reads them
- `subscriptions`: Subscriptions and Invoices, and what Stripe's statuses mean for ours
- `webhook`: event bodies, and their `Stripe-Signature` (checked by the relay and again
  by the worker)

This module imports no SDK: the relay loads `webhook` alone.
"""

from __future__ import annotations

from typing import cast

from billing_worker.providers.base import Gateways, SubscriptionProvider

NAME = "stripe"


def billing(gateways: Gateways) -> SubscriptionProvider:
    """The configured Stripe gateway, which runs subscriptions itself; UnknownProvider
    when Stripe is not configured."""
    return cast(SubscriptionProvider, gateways.get(NAME))
