"""Provider events for handler unit tests: a gateway whose API confirms what the test
says (no network), a deposit waiting for its event, events as the provider tells them,
and their delivery to `apply_provider_event` in one fake transaction, as the service does."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from billing_contracts.wallet import Deposit
from billing_worker.db.intents import Intent
from billing_worker.db.wallet import TransactionRow
from billing_worker.domain.events import PaymentOutcome, ProviderEvent, RefundFacts
from billing_worker.handlers import wallet
from billing_worker.handlers.deps import Deps
from billing_worker.handlers.provider_events import Applied, apply_provider_event
from billing_worker.providers.base import (
    Gateways,
    PaymentRequest,
    PaymentResult,
    PaymentStatus,
)
from support.fake_uow import FakeDatabase
from support.handler_kit import key, money, run


class CannedGateway:
    """A provider whose payments stay pending and whose API confirms what the test says."""

    needs_customer = False
    trusts_method_ids = False
    rereadable = True

    def __init__(self, name: str = "sandbox") -> None:
        self.name = name
        self.answers: dict[str, ProviderEvent] = {}  # event id -> the provider's version

    async def create_customer(self, user_id: str, email: str | None, idempotency_key: str) -> str:
        raise AssertionError("no customer is needed")

    async def create_payment(self, request: PaymentRequest) -> PaymentResult:
        return PaymentResult(f"pay_{request.transaction_id.hex[:12]}", PaymentStatus.PENDING)

    async def fetch_payment(self, provider_ref: str) -> PaymentResult:
        raise AssertionError("the handlers do not re-read payments")

    def authenticate(self, body: bytes, headers: Mapping[str, Any]) -> None:
        raise AssertionError("the handlers get confirmed events only")

    def parse_event(self, body: bytes) -> ProviderEvent:
        raise AssertionError("the handlers get confirmed events only")

    async def confirm(self, claim: ProviderEvent) -> ProviderEvent | None:
        return self.answers.get(claim.event_id)


def canned_deps(gateway: CannedGateway) -> Deps:
    return Deps(Gateways({gateway.name: gateway}, gateway.name), Decimal("10"))


async def pending_deposit(db: FakeDatabase, deps: Deps, user: str, amount: str) -> TransactionRow:
    """A deposit the provider answered `pending`: processing, waiting for its event."""
    command = Deposit.model_validate(
        {"idempotency_key": key(), "user_id": user, "amount": money(amount)}
    )
    intent: Intent = await run(db, wallet.deposit, command, deps)
    charged = await wallet.call_deposit(intent, deps)
    async with db.transaction() as uow:
        await wallet.finish_deposit(intent, charged, uow, deps)
    return db.state.transactions[intent.id]


def payment_event(
    row: TransactionRow, outcome: PaymentOutcome | None, event_id: str | None = None, **extra: Any
) -> ProviderEvent:
    """What the provider's API says of the payment of `row` (amount, currency, our id)."""
    assert row.provider_ref is not None
    fields: dict[str, Any] = {
        "amount_minor": row.amount_minor,
        "currency": row.currency,
        "transaction_ref": str(row.id),
        "confirmation": {"id": row.provider_ref, "status": str(outcome)},
        **extra,
    }
    return ProviderEvent(
        row.provider or "sandbox",
        event_id or key(),
        outcome,
        row.provider_ref,
        f"payment.{outcome}",
        **fields,
    )


def refund_event(
    row: TransactionRow, ref: str, *, amount: int | None = None, total: int | None = None,
    currency: str = "USD", event_id: str | None = None,
) -> ProviderEvent:  # fmt: skip
    facts = RefundFacts(ref, currency, amount_minor=amount, total_minor=total)
    return payment_event(row, PaymentOutcome.REFUNDED, event_id, refund=facts)


async def deliver(
    db: FakeDatabase, deps: Deps, gateway: CannedGateway, confirmed: ProviderEvent
) -> Applied:
    """The claim goes to the provider (canned: `confirmed`), then to the handler in one
    fake transaction, as the service does."""
    claim = dataclasses.replace(confirmed, amount_minor=None, currency=None, confirmation=None)
    gateway.answers[claim.event_id] = confirmed
    event = await gateway.confirm(claim)
    assert event is not None
    async with db.transaction() as uow:
        return await apply_provider_event(event, uow, deps, f"provider:{event.provider}")


async def completed_deposit(
    db: FakeDatabase, deps: Deps, gateway: CannedGateway, user: str, amount: str
) -> TransactionRow:
    row = await pending_deposit(db, deps, user, amount)
    assert await deliver(db, deps, gateway, payment_event(row, PaymentOutcome.SUCCEEDED)) == (
        Applied.APPLIED
    )
    return db.state.transactions[row.id]


def refunds_of(db: FakeDatabase, payment: TransactionRow) -> list[TransactionRow]:
    return [t for t in db.state.transactions.values() if t.refund_of == payment.id]
