"""Saving a YooKassa card without charging it: YooKassa's own two-stage way.

Setup creates a payment of the setup amount (`BILLING_YOOKASSA_SETUP_AMOUNT`, 1.00 RUB)
with `save_payment_method: true`, `capture: false` and a redirect confirmation, our
setup id and the user in its metadata. When the customer has confirmed it YooKassa
holds the amount (`waiting_for_capture`) and sends `payment.waiting_for_capture`; the
worker re-reads the payment and, only if YooKassa says it is ours (a setup's metadata)
with `payment_method.saved`, cancels it (`POST /payments/{id}/cancel`, idempotent):
the hold is released and no money is taken. The method is saved from the re-read,
canceled payment (`payment.canceled` of it re-confirms the same, saving nothing new).
A payment canceled before capture registers no 54-FZ receipt; a shop that requires
receipts still gets one in the request, as YooKassa requires at creation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from billing_worker.db.payment_methods import Card
from billing_worker.domain.errors import ProviderError
from billing_worker.domain.events import ProviderEvent
from billing_worker.providers.methods import ConfirmedSetup, SetupStarted
from billing_worker.providers.observed import observed

SETUP_OBJECT = "payment_method_setup"  # `confirmation["object"]` of a confirmed setup
WAITING = "payment.waiting_for_capture"


def is_setup(payment: Mapping[str, Any]) -> bool:
    """A payment we made to save a card (YooKassa's metadata carries our setup id)."""
    return bool((payment.get("metadata") or {}).get("setup_id"))


def setup_body(
    *, value: str, currency: str, user_id: str, setup_id: str, return_url: str | None,
    receipt: Mapping[str, Any] | None,
) -> dict[str, Any]:  # fmt: skip
    if not return_url:
        raise ProviderError("a YooKassa setup needs return_url for the redirect")
    body: dict[str, Any] = {
        "amount": {"value": value, "currency": currency},
        "capture": False,  # held, then canceled: nothing is taken
        "save_payment_method": True,
        "confirmation": {"type": "redirect", "return_url": return_url},
        "description": "Saving a card (the amount is released)",
        "metadata": {"setup_id": setup_id, "user_id": user_id},
    }
    if receipt is not None:
        body["receipt"] = dict(receipt)
    return body


def started(payment: Mapping[str, Any]) -> SetupStarted:
    url = (payment.get("confirmation") or {}).get("confirmation_url")
    return SetupStarted(str(payment["id"]), confirmation_url=url)


def card_of(payment: Mapping[str, Any]) -> Card:
    card = (payment.get("payment_method") or {}).get("card") or {}
    month, year = str(card.get("expiry_month")), str(card.get("expiry_year"))
    return Card(
        card.get("card_type"), card.get("last4"),
        int(month) if month.isascii() and month.isdigit() else None,
        int(year) if year.isascii() and year.isdigit() else None,
    )  # fmt: skip


def needs_cancel(payment: Mapping[str, Any]) -> bool:
    return is_setup(payment) and payment.get("status") == "waiting_for_capture"


def confirmed(payment: Mapping[str, Any]) -> ConfirmedSetup | None:
    """The setup as YooKassa tells it: saved only when the payment is a setup's, its
    method saved, and the payment was canceled by us (the shop) before capture."""
    method = payment.get("payment_method") or {}
    party = (payment.get("cancellation_details") or {}).get("party")
    if not is_setup(payment) or not method.get("saved") or not method.get("id"):
        return None
    if payment.get("status") != "canceled" or party != "merchant":
        return None
    metadata = payment.get("metadata") or {}
    return ConfirmedSetup(
        ref=str(payment["id"]), setup_id=str(metadata.get("setup_id")),
        user_id=str(metadata.get("user_id") or "") or None, customer_ref=None,
        method_ref=str(method["id"]), card=card_of(payment),
    )  # fmt: skip


def setup_event(claim: ProviderEvent, setup: ConfirmedSetup | None) -> ProviderEvent | None:
    """The claim as YooKassa confirmed it: no payment outcome (no money moved), the
    saved method and whose it is in `confirmation`."""
    if setup is None:
        return None
    card = setup.card
    return dataclasses.replace(
        claim, outcome=None, provider_ref=setup.ref, saved_method_ref=setup.method_ref,
        transaction_ref=None, amount_minor=None, currency=None,
        confirmation={
            "object": SETUP_OBJECT, "id": setup.ref, "status": "canceled",
            "setup_id": setup.setup_id, "user_id": setup.user_id, "customer": None,
            "payment_method": setup.method_ref, "brand": card.brand, "last4": card.last4,
            "exp_month": card.exp_month, "exp_year": card.exp_year,
        },
    )  # fmt: skip


class SetupCalls:
    """The `MethodGateway` calls of the YooKassa gateway (it supplies `_call`)."""

    setup_value: str = "1.00"
    setup_currency: str = "RUB"

    async def _call(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, body: Any = None
    ) -> dict[str, Any]:
        raise NotImplementedError

    @observed("start_setup")
    async def start_setup(
        self, *, customer_ref: str | None, user_id: str, setup_id: str,
        return_url: str | None, idempotency_key: str, receipt: Mapping[str, Any] | None = None,
    ) -> SetupStarted:  # fmt: skip
        body = setup_body(
            value=self.setup_value, currency=self.setup_currency, user_id=user_id,
            setup_id=setup_id, return_url=return_url, receipt=receipt,
        )  # fmt: skip
        headers = {"Idempotence-Key": f"setup-{idempotency_key}"}
        return started(await self._call("POST", "/payments", headers=headers, body=body))

    @observed("confirm_setup")
    async def confirm_setup(self, ref: str) -> ConfirmedSetup | None:
        """Re-read the setup's payment; cancel it when YooKassa holds it (the method is
        saved then), and say what was saved. The cancel's key is the payment's: a
        second confirmation (redelivery, `payment.canceled`) finds it canceled."""
        payment = await self._call("GET", f"/payments/{ref}")
        if needs_cancel(payment) and (payment.get("payment_method") or {}).get("saved"):
            headers = {"Idempotence-Key": f"setup-cancel-{ref}"}
            payment = await self._call("POST", f"/payments/{ref}/cancel", headers=headers, body={})
        return confirmed(payment)

    @observed("detach_method")
    async def detach_method(self, ref: str) -> None:
        """YooKassa has no detach call: a detached method is never charged again by us."""

    @observed("make_default")
    async def make_default(self, customer_ref: str | None, ref: str) -> None:
        """The default is ours alone at YooKassa."""

    @observed("set_subscription_method")
    async def set_subscription_method(self, subscription_ref: str, ref: str) -> None:
        raise ProviderError("only Stripe runs subscriptions itself")
