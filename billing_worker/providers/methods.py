"""Saved payment methods at the providers: setting one up, detaching it, the default.

A gateway that saves methods itself implements `MethodGateway` (Stripe; YooKassa with
a held and canceled payment, `providers/yookassa/setup.py`, its default and detach
being ours alone: a detached method is never charged again by the worker). For the
others `methods_of` gives a stand-in: the sandbox saves a test card at once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from billing_worker.db.payment_methods import Card
from billing_worker.domain.errors import ProviderError
from billing_worker.providers.base import PaymentGateway


@dataclass(frozen=True, slots=True)
class SetupStarted:
    """What the provider made of a setup: a ref to confirm later, or the saved method."""

    ref: str | None
    client_secret: str | None = None
    confirmation_url: str | None = None
    method_ref: str | None = None  # saved at once (the sandbox)
    card: Card | None = None


@dataclass(frozen=True, slots=True)
class ConfirmedSetup:
    """A setup the provider's API says succeeded: whose it is and the method it saved."""

    ref: str
    setup_id: str | None  # our id, from the provider's metadata
    user_id: str | None  # from the provider's metadata
    customer_ref: str | None
    method_ref: str
    card: Card


@runtime_checkable
class MethodGateway(Protocol):
    async def start_setup(
        self, *, customer_ref: str | None, user_id: str, setup_id: str,
        return_url: str | None, idempotency_key: str, receipt: Mapping[str, Any] | None = None,
    ) -> SetupStarted: ...  # fmt: skip

    async def confirm_setup(self, ref: str) -> ConfirmedSetup | None:
        """The setup as the provider tells it; None unless it succeeded with a method."""
        ...

    async def detach_method(self, ref: str) -> None: ...

    async def make_default(self, customer_ref: str | None, ref: str) -> None: ...

    async def set_subscription_method(self, subscription_ref: str, ref: str) -> None:
        """The method a subscription the provider runs (Stripe) charges from now on."""
        ...


class SandboxMethods:
    """The sandbox saves a test card for the setup at once (`pm_sandbox_...`)."""

    async def start_setup(
        self, *, customer_ref: str | None, user_id: str, setup_id: str,
        return_url: str | None, idempotency_key: str, receipt: Mapping[str, Any] | None = None,
    ) -> SetupStarted:  # fmt: skip
        ref = "pm_sandbox_" + hashlib.sha256(setup_id.encode()).hexdigest()[:24]
        return SetupStarted(None, method_ref=ref, card=Card("visa", "4242", 12, 2034))

    async def confirm_setup(self, ref: str) -> ConfirmedSetup | None:
        return None  # nothing is ever pending at the sandbox

    async def detach_method(self, ref: str) -> None:
        return None

    async def make_default(self, customer_ref: str | None, ref: str) -> None:
        return None

    async def set_subscription_method(self, subscription_ref: str, ref: str) -> None:
        raise ProviderError("only Stripe runs subscriptions itself")


class LocalMethods(SandboxMethods):
    """A provider whose methods are saved by a payment (YooKassa): no setup call."""

    def __init__(self, name: str) -> None:
        self._name = name

    async def start_setup(
        self, *, customer_ref: str | None, user_id: str, setup_id: str,
        return_url: str | None, idempotency_key: str, receipt: Mapping[str, Any] | None = None,
    ) -> SetupStarted:  # fmt: skip
        raise ProviderError(
            f"{self._name} saves a card with a payment: make a deposit with a return_url"
        )


def methods_of(gateway: PaymentGateway) -> MethodGateway:
    if isinstance(gateway, MethodGateway):
        return gateway
    if gateway.name == "sandbox":
        return SandboxMethods()
    return LocalMethods(gateway.name)
