"""`billing.payment-method.setup`, and the provider's word that a method was saved.

Phase one commits an intent (kind `payment_method_setup`, action `setup`); phase two
asks the provider (Stripe: a SetupIntent for the user's customer, `usage=off_session`,
our setup id in its metadata) holding no connection; phase three replies with what the
customer must do (`payment_action.client_secret`). Nothing is saved until the provider
confirms it: Stripe's `setup_intent.succeeded` webhook, confirmed by re-reading the
SetupIntent and its PaymentMethod at Stripe (the card comes from Stripe's object), and
only for the user whose customer and metadata the SetupIntent carries. YooKassa: a held
payment (`capture: false`, `save_payment_method`) the customer confirms by redirect;
its `payment.waiting_for_capture`, re-read and canceled at YooKassa, saves the card for
the user its metadata names (providers/yookassa/setup.py). The sandbox saves a test
card at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from billing_contracts.payment_methods import SetupPaymentMethod, SetupResult
from billing_contracts.wallet import PaymentAction
from billing_worker.db.intents import Intent
from billing_worker.db.payment_methods import Card
from billing_worker.domain.errors import InvalidInput
from billing_worker.domain.events import ProviderEvent
from billing_worker.domain.ledger import derived_id
from billing_worker.domain.money import parse_minor
from billing_worker.handlers import payment_methods as methods
from billing_worker.handlers import receipts
from billing_worker.handlers.deps import Deps
from billing_worker.handlers.payments import configured, ensure_customer
from billing_worker.ports import UnitOfWork
from billing_worker.providers.methods import SetupStarted, methods_of
from billing_worker.providers.yookassa.setup import SETUP_OBJECT, SetupCalls

log = logging.getLogger(__name__)
SETUP = "setup"


async def setup(command: SetupPaymentMethod, uow: UnitOfWork, deps: Deps) -> Intent:
    gateway = configured(deps, command.provider.value)
    await uow.users.ensure(command.user_id)
    customer = (
        await uow.users.customer_ref(command.user_id, gateway.name)
        if gateway.needs_customer
        else None
    )
    request: dict[str, Any] = {"action": SETUP, "return_url": command.return_url}
    if isinstance(gateway, SetupCalls):  # YooKassa: a held payment the customer confirms
        request["receipt"] = await _hold_receipt(gateway, command, uow, deps)
    return Intent(
        id=derived_id("payment-method-setup", command.user_id, command.idempotency_key),
        kind=methods.SETUP, provider=gateway.name, user_id=command.user_id,
        customer_ref=customer, request=request,
    )  # fmt: skip


async def _hold_receipt(
    gateway: SetupCalls, command: SetupPaymentMethod, uow: UnitOfWork, deps: Deps
) -> dict[str, Any] | None:
    """Checks a YooKassa setup before YooKassa is asked: a return_url for the redirect, and
    the receipt a shop with receipts on must send at creation (never registered: the
    payment is canceled before capture)."""
    if not command.return_url:
        raise InvalidInput("a YooKassa setup needs return_url for the redirect")
    currency = gateway.setup_currency
    minor = parse_minor(gateway.setup_value, currency)
    return await receipts.for_deposit(
        command.provider.value, command.user_id, minor, currency, uow, deps,
        email=None, phone=None,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Started:
    setup: SetupStarted
    new_customer: str | None = None


async def call_setup(intent: Intent, deps: Deps) -> Started:
    gateway = configured(deps, intent.provider)
    customer, created = await ensure_customer(gateway, intent)
    started = await methods_of(gateway).start_setup(
        customer_ref=customer, user_id=intent.user_id, setup_id=str(intent.id),
        return_url=intent.request.get("return_url"), idempotency_key=str(intent.id),
        receipt=intent.request.get("receipt"),
    )  # fmt: skip
    return Started(started, created)


async def finish_setup(intent: Intent, started: Started, uow: UnitOfWork) -> SetupResult:
    if started.new_customer:
        await uow.users.remember_customer(intent.user_id, intent.provider, started.new_customer)
    found = started.setup
    if found.method_ref:  # saved at once (the sandbox)
        row = await methods.remember(
            uow, intent.user_id, intent.provider, found.method_ref, found.card or Card()
        )
        saved = methods.method_out(row) if row else None
        return SetupResult(setup_id=intent.id, provider=intent.provider, status="saved",
                           payment_action=None, payment_method=saved)  # fmt: skip
    if found.client_secret:
        action = PaymentAction(type="client_secret", client_secret=found.client_secret)
    else:
        action = PaymentAction(type="redirect", confirmation_url=found.confirmation_url)
    return SetupResult(
        setup_id=intent.id, provider=intent.provider, status="pending", payment_action=action
    )


async def call(intent: Intent, deps: Deps) -> Any:
    if intent.request.get("action") == SETUP:
        return await call_setup(intent, deps)
    return await methods.call_change(intent, deps)


async def finish(intent: Intent, answer: Any, uow: UnitOfWork, deps: Deps) -> Any:
    if intent.request.get("action") == SETUP:
        return await finish_setup(intent, answer, uow)
    return await methods.finish_change(intent, answer, uow)


async def undo(intent: Intent, uow: UnitOfWork) -> None:
    """Phase one wrote only the intent: nothing else to remove."""


async def saved_by_provider(event: ProviderEvent, uow: UnitOfWork) -> bool:
    """A setup the provider confirmed (its API's answer in `event.confirmation`): the
    method is saved for the user whose customer the setup was for. False when the facts
    do not agree (another user's customer, metadata not ours)."""
    facts = event.confirmation or {}
    user_id, customer = facts.get("user_id"), facts.get("customer")
    method = event.saved_method_ref
    by_customer = facts.get("object") != SETUP_OBJECT  # YooKassa has no customers
    if not user_id or not method or (by_customer and not customer):
        return False
    if by_customer and await uow.users.customer_ref(str(user_id), event.provider) != customer:
        log.warning("not saving %s method %s: customer %s is not %s's",
                    event.provider, method, customer, user_id)  # fmt: skip
        return False
    card = Card(facts.get("brand"), facts.get("last4"), facts.get("exp_month"),
                facts.get("exp_year"))  # fmt: skip
    return await methods.remember(uow, str(user_id), event.provider, method, card) is not None
