"""The invoice repository's lifecycle queries (period invoices, closing moves, the overdue
stamp): the same assertions on the fake and on PostgreSQL (see conftest.py). Dates are
in the year 2000, out of the other tests' way."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg

from billing_worker.db.invoices import NewInvoice
from billing_worker.db.subscriptions import PlanRow, SubscriptionRow
from billing_worker.db.wallet import TransactionRow
from billing_worker.domain.invoices import Line, Priced
from support.contract import Repo

T0 = datetime(2000, 1, 1, tzinfo=UTC)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def subscriber(repo: Repo) -> tuple[str, PlanRow]:
    user = unique("contract")
    await repo.uow.subscriptions.ensure_user(user, None)
    plan = PlanRow(id=uuid.uuid4(), code=unique("plan"), name="Pro", price_minor=1000,
                   currency="USD", interval="month", interval_count=1, trial_days=0,
                   stripe_price_id=None, active=True)  # fmt: skip
    return user, await repo.uow.plans.upsert(plan)


def a_subscription(user: str, plan: PlanRow) -> SubscriptionRow:
    return SubscriptionRow(
        id=uuid.uuid4(), user_id=user, plan_id=plan.id, status="past_due",
        payment_source="balance", payment_method_id=None, provider_subscription_id=None,
        current_period_start=T0, current_period_end=T0 + timedelta(days=31),
        billing_anchor=T0, trial_end=None, cancel_at_period_end=False, canceled_at=None,
        cancel_reason=None, paid_periods=1, dunning_attempts=1, next_attempt_at=None, plan=plan,
    )  # fmt: skip


def a_charge(user: str, sub_id: uuid.UUID) -> TransactionRow:
    """A provider charge of the subscription still waiting for the provider's answer."""
    return TransactionRow(
        id=uuid.uuid4(), user_id=user, account_id=None, kind="subscription_charge",
        status="processing", amount_minor=1000, currency="USD", provider="yookassa",
        provider_ref=None, created_at=T0, completed_at=None, subscription_id=sub_id,
    )  # fmt: skip


def a_new_invoice(user: str, order: str | None) -> NewInvoice:
    return NewInvoice(
        id=uuid.uuid4(), user_id=user, order_id=order, status="open", due_at=None,
        priced=Priced("USD", (Line("Seat", 1, 1000, 1000),), 1000, 1000), created_at=T0,
    )  # fmt: skip


async def test_a_period_has_one_invoice_found_by_its_period(repo: Repo) -> None:
    invoices = repo.uow.invoices
    user, plan = await subscriber(repo)
    sub = a_subscription(user, plan)
    await repo.uow.subscriptions.insert(sub)
    new = dataclasses.replace(a_new_invoice(user, None), subscription_id=sub.id, period_index=1)
    made = await invoices.create(new)
    assert made is not None
    assert (made.subscription_id, made.period_index) == (sub.id, 1)
    assert await invoices.of_period(sub.id, 1, lock=True) == made
    assert await invoices.of_period(sub.id, 0) is None
    assert await invoices.open_of_subscription(sub.id) == [made]
    async with repo.refused(asyncpg.UniqueViolationError):  # one invoice per period
        await invoices.create(dataclasses.replace(new, id=uuid.uuid4()))
    assert not await invoices.charge_in_flight(sub.id)
    await repo.uow.wallet.add_transaction(a_charge(user, sub.id), [])
    assert await invoices.charge_in_flight(sub.id)
    at = T0 + timedelta(hours=2)
    voided = await invoices.move(made.id, "open", "void", at, "subscription ended")
    assert voided == dataclasses.replace(
        made, status="void", voided_at=at, status_reason="subscription ended"
    )
    assert await invoices.open_of_subscription(sub.id) == []


async def test_a_write_off_keeps_its_reason_when_paid_later(repo: Repo) -> None:
    invoices = repo.uow.invoices
    invoice = await invoices.create(a_new_invoice(unique("contract"), None))
    assert invoice is not None
    at, later = T0 + timedelta(hours=1), T0 + timedelta(days=3)
    off = await invoices.move(invoice.id, "open", "uncollectible", at, "unreachable")
    paid = await invoices.move(invoice.id, "uncollectible", "paid", later)
    assert paid == dataclasses.replace(
        invoice, status="paid", uncollectible_at=at, paid_at=later, status_reason="unreachable"
    )
    assert off is not None
    assert off.paid_at is None


async def test_open_invoices_past_due_are_stamped_overdue_once(repo: Repo) -> None:
    invoices, user = repo.uow.invoices, unique("contract")
    due = T0 + timedelta(days=1)
    made = []
    for days in (0, 0, 5):
        new = dataclasses.replace(a_new_invoice(user, None), due_at=due + timedelta(days=days))
        created = await invoices.create(new)
        assert created is not None
        made.append(created)
    assert await invoices.move(made[1].id, "open", "paid", T0) is not None
    now = T0 + timedelta(days=2)

    first = [i for i in await invoices.mark_overdue(now, 100) if i.user_id == user]
    again = [i for i in await invoices.mark_overdue(now, 100) if i.user_id == user]

    assert first == [dataclasses.replace(made[0], overdue_at=now)]
    assert again == []
    assert await invoices.by_id(made[2].id) == made[2]  # not due yet
