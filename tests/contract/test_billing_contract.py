"""The plans, subscriptions, invoices and intents repositories: the same assertions on the
fake and on PostgreSQL (see conftest.py). Dates are in the year 2000, so the PostgreSQL
leg neither sees due subscriptions nor takes invoice numbers of the other tests."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from billing_worker.db.intents import Intent
from billing_worker.db.invoices import NewInvoice
from billing_worker.db.subscriptions import LIVE_UNIQUE, PlanRow, SubscriptionRow
from billing_worker.db.wallet import TransactionRow
from billing_worker.domain.errors import DuplicateKey
from billing_worker.domain.invoices import Line, Priced
from support.contract import Repo

T0 = datetime(2000, 1, 1, tzinfo=UTC)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def a_plan(code: str | None = None, **fields: object) -> PlanRow:
    values: dict[str, object] = {
        "id": uuid.uuid4(), "code": code or unique("plan"), "name": "Pro",
        "price_minor": 1000, "currency": "USD", "interval": "month", "interval_count": 1,
        "trial_days": 0, "stripe_price_id": None, "active": True, **fields,
    }  # fmt: skip
    return PlanRow(**values)  # type: ignore[arg-type]


def a_subscription(user: str, plan: PlanRow, **fields: object) -> SubscriptionRow:
    values: dict[str, object] = {
        "id": uuid.uuid4(), "user_id": user, "plan_id": plan.id, "status": "active",
        "payment_source": "balance", "payment_method_id": None,
        "provider_subscription_id": None, "current_period_start": T0,
        "current_period_end": T0 + timedelta(days=31), "billing_anchor": T0, "trial_end": None,
        "cancel_at_period_end": False, "canceled_at": None, "cancel_reason": None,
        "paid_periods": 1, "dunning_attempts": 0, "next_attempt_at": None, "plan": plan,
        **fields,
    }  # fmt: skip
    return SubscriptionRow(**values)  # type: ignore[arg-type]


async def subscriber(repo: Repo, plan: PlanRow | None = None) -> tuple[str, PlanRow]:
    user = unique("contract")
    await repo.uow.subscriptions.ensure_user(user, None)
    return user, await repo.uow.plans.upsert(plan or a_plan())


async def test_a_plan_is_upserted_by_code_keeping_its_id(repo: Repo) -> None:
    plans, code = repo.uow.plans, unique("plan")
    first = await plans.upsert(a_plan(code))
    again = await plans.upsert(a_plan(code, price_minor=1200, active=False, trial_days=7))
    assert again == dataclasses.replace(first, price_minor=1200, active=False, trial_days=7)
    assert await plans.by_code(code) == again
    assert await plans.by_code(unique("plan")) is None
    other = await plans.upsert(a_plan(unique("plan")))
    mine = {code, other.code}
    every = [p.code for p in await plans.listing(active_only=False) if p.code in mine]
    active = [p.code for p in await plans.listing(active_only=True) if p.code in mine]
    assert (every, active) == (sorted(mine), [other.code])


async def test_a_subscription_reads_back_with_its_plan_as_it_is_now(repo: Repo) -> None:
    subs = repo.uow.subscriptions
    user, plan = await subscriber(repo)
    sub = a_subscription(user, plan, provider_subscription_id=unique("sub"))
    await subs.insert(sub)
    assert await subs.get(sub.id, lock=True) == sub
    assert await subs.by_provider_ref(str(sub.provider_subscription_id), lock=True) == sub
    assert await subs.get(uuid.uuid4()) is None
    renamed = await repo.uow.plans.upsert(dataclasses.replace(plan, name="Pro 2"))
    assert await subs.get(sub.id) == dataclasses.replace(sub, plan=renamed)


async def test_one_live_subscription_per_user_and_plan(repo: Repo) -> None:
    subs = repo.uow.subscriptions
    user, plan = await subscriber(repo)
    first = a_subscription(user, plan)
    await subs.insert(first)
    with pytest.raises(DuplicateKey) as caught:  # asyncpg's error, translated (db/errors.py)
        async with repo.savepoint():
            await subs.insert(a_subscription(user, plan, status="trialing"))
    assert caught.value.constraint == LIVE_UNIQUE
    await subs.update(first.id, status="canceled", canceled_at=T0)
    second = a_subscription(user, plan, status="incomplete")
    await subs.insert(second)
    async with repo.refused(asyncpg.ForeignKeyViolationError):
        await subs.insert(a_subscription(unique("nobody"), plan))
    assert [s.id for s in await subs.of_user(user)] == sorted([first.id, second.id])


async def test_only_updatable_columns_change(repo: Repo) -> None:
    subs = repo.uow.subscriptions
    user, plan = await subscriber(repo)
    sub = a_subscription(user, plan)
    await subs.insert(sub)
    await subs.update(sub.id, cancel_at_period_end=True, cancel_reason="moving", paid_periods=3)
    expected = dataclasses.replace(sub, cancel_at_period_end=True, cancel_reason="moving",
                                   paid_periods=3)  # fmt: skip
    assert await subs.get(sub.id) == expected
    with pytest.raises(ValueError, match="not updatable"):
        await subs.update(sub.id, user_id="someone-else")


async def test_a_period_is_paid_once(repo: Repo) -> None:
    subs = repo.uow.subscriptions
    user, plan = await subscriber(repo)
    sub = a_subscription(user, plan)
    await subs.insert(sub)
    end = T0 + timedelta(days=31)
    assert await subs.record_charge(sub.id, 0, T0, end, None) is True
    assert await subs.record_charge(sub.id, 0, T0, end, None) is False
    assert await subs.record_charge(sub.id, 1, end, end + timedelta(days=29), None) is True


async def test_only_a_fresh_incomplete_subscription_is_discarded(repo: Repo) -> None:
    subs = repo.uow.subscriptions
    user, plan = await subscriber(repo)
    fresh = a_subscription(user, plan, status="incomplete", paid_periods=0)
    await subs.insert(fresh)
    other_plan = await repo.uow.plans.upsert(a_plan())
    at_stripe = a_subscription(user, other_plan, status="incomplete", paid_periods=0,
                               provider_subscription_id=unique("sub"))  # fmt: skip
    await subs.insert(at_stripe)
    for sub in (fresh, at_stripe):
        await subs.discard_incomplete(sub.id)
    assert [s.id for s in await subs.of_user(user)] == [at_stripe.id]


async def test_the_due_subscription_is_claimed_unless_skipped_or_charging(repo: Repo) -> None:
    subs, wallet = repo.uow.subscriptions, repo.uow.wallet
    user, plan = await subscriber(repo)
    later, sooner = T0 + timedelta(days=20), T0 + timedelta(days=10)
    first = a_subscription(user, plan, current_period_end=later)
    await subs.insert(first)
    second_plan = await repo.uow.plans.upsert(a_plan())
    second = a_subscription(user, second_plan, current_period_end=sooner)
    await subs.insert(second)
    third_plan = await repo.uow.plans.upsert(a_plan())
    dunned = a_subscription(user, third_plan, status="past_due", current_period_end=T0,
                            next_attempt_at=later + timedelta(days=1))  # fmt: skip
    await subs.insert(dunned)
    assert await subs.claim_due(sooner - timedelta(seconds=1)) is None
    assert await subs.claim_due(later) == second
    assert await subs.claim_due(later, [second.id]) == first
    assert await subs.claim_due(later, [second.id, first.id]) is None
    await wallet.add_transaction(a_charge(user, first.id), [])
    assert await subs.claim_due(later, [second.id]) is None  # its charge is in flight
    assert await subs.claim_due(later + timedelta(days=1), [second.id]) == dunned


def a_charge(user: str, sub_id: uuid.UUID) -> TransactionRow:
    """A provider charge of the subscription still waiting for the provider's answer."""
    return TransactionRow(
        id=uuid.uuid4(), user_id=user, account_id=None, kind="subscription_charge",
        status="processing", amount_minor=1000, currency="USD", provider="yookassa",
        provider_ref=None, created_at=T0, completed_at=None, subscription_id=sub_id,
    )  # fmt: skip


def a_new_invoice(user: str, order: str | None, at: datetime = T0) -> NewInvoice:
    lines = (Line("Seat", 3, 10, 30), Line("Setup", 1, 1999, 1999))
    return NewInvoice(
        id=uuid.uuid4(), user_id=user, order_id=order, status="open", due_at=None,
        priced=Priced("USD", lines, subtotal_minor=2029, total_minor=2029), created_at=at,
    )  # fmt: skip


def number_of(number: str) -> int:
    return int(number.rsplit("-", 1)[1])


async def test_invoices_are_numbered_gap_free_and_one_per_order(repo: Repo) -> None:
    invoices, user, order = repo.uow.invoices, unique("contract"), unique("ord")
    first = await invoices.create(a_new_invoice(user, order))
    assert first is not None
    assert first.number.startswith("INV-2000-")
    assert (first.lines, first.total_minor, first.paid_at) == (
        a_new_invoice(user, order).priced.lines, 2029, None)  # fmt: skip
    assert await invoices.create(a_new_invoice(user, order)) is None  # takes no number
    second = await invoices.create(a_new_invoice(user, None, T0 + timedelta(seconds=1)))
    assert second is not None
    assert number_of(second.number) == number_of(first.number) + 1
    assert await invoices.by_id(first.id) == first
    assert await invoices.by_order(order) == first
    assert (await invoices.by_id(uuid.uuid4()), await invoices.by_order(unique("o"))) == (
        None,
        None,
    )
    assert await invoices.page(user, 1, None) == [second]
    assert await invoices.page(user, 5, (second.created_at, second.id)) == [first]


async def test_an_invoice_moves_only_from_its_current_status(repo: Repo) -> None:
    invoices = repo.uow.invoices
    invoice = await invoices.create(a_new_invoice(unique("contract"), None))
    assert invoice is not None
    at = T0 + timedelta(hours=1)
    assert await invoices.move(invoice.id, "draft", "open", at) is None
    paid = await invoices.move(invoice.id, "open", "paid", at)
    assert paid == dataclasses.replace(invoice, status="paid", paid_at=at)
    assert await invoices.move(invoice.id, "open", "paid", at) is None
    assert await invoices.by_id(invoice.id) == paid


async def test_an_intent_is_inserted_once_and_read_with_the_users_customer(repo: Repo) -> None:
    user, plan = await subscriber(repo)
    sub = a_subscription(user, plan, payment_source="yookassa", status="incomplete")
    await repo.uow.subscriptions.insert(sub)
    await repo.uow.users.remember_customer(user, "yookassa", "cus-1")
    intent = Intent(id=sub.id, kind="yookassa_subscription", provider="yookassa", user_id=user,
                    subscription_id=sub.id, scope="billing.subscription.create",
                    idempotency_key=unique("key"), request_hash="h", request={"n": 1})  # fmt: skip
    await repo.uow.intents.insert(intent)
    async with repo.refused(asyncpg.UniqueViolationError):
        await repo.uow.intents.insert(intent)
    [found] = await repo.uow.intents.of_subscription(sub.id)
    assert found.created_at is not None
    assert dataclasses.replace(found, created_at=None) == dataclasses.replace(
        intent, customer_ref="cus-1")  # fmt: skip
    assert await repo.uow.intents.of_subscription(uuid.uuid4()) == []
