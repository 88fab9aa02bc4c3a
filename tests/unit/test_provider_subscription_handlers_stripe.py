"""Stripe-run subscriptions (handlers/stripe_subscriptions.py) on the fake unit of work:
creation, webhooks syncing our copy from Stripe's as re-read, period invoices paid or
failed, cancellation. A canned gateway stands for Stripe: no network."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from billing_contracts import events as ev
from billing_contracts.plans import UpsertPlan
from billing_contracts.subscription_changes import (
    PauseSubscription,
    ResumeSubscription,
    UnpauseSubscription,
)
from billing_contracts.subscriptions import (
    CancelSubscription,
    CreateSubscription,
    SubscriptionCreated,
    SubscriptionOut,
)
from billing_contracts.subscriptions import SubscriptionStatus as Sub
from billing_worker.db.intents import Intent
from billing_worker.db.subscriptions import SubscriptionRow
from billing_worker.domain.errors import InvalidState, ProviderError, TransientError
from billing_worker.domain.events import PaymentOutcome, ProviderEvent
from billing_worker.handlers import (
    stripe_changes,
    stripe_subscriptions,
    subscription_changes,
    subscriptions,
)
from billing_worker.handlers.deps import Deps
from billing_worker.handlers.provider_events import Applied, apply_provider_event
from billing_worker.providers.base import ProviderSubscription, SubscriptionChange
from billing_worker.providers.stripe import subscriptions as stripe_reading
from support.clock import ManualClock
from support.fake_uow import FakeDatabase
from support.handler_kit import key, make_deps, money, new_user, run
from support.provider_kit import CannedGateway, canned_deps

STATUS = {s.value: s for s in Sub}  # Stripe's statuses are spelled as ours


class CannedStripe(CannedGateway):
    """Stripe with one subscription, as the test sets it (`remote`); it keeps its calls."""

    needs_customer = True

    def __init__(self) -> None:
        super().__init__("stripe")
        self.remote = ProviderSubscription("sub_1", "active", None, None, False)
        self.customers: list[str] = []
        self.created: list[dict[str, Any]] = []
        self.canceled: list[tuple[str, bool]] = []
        self.changes: list[tuple[str, SubscriptionChange]] = []

    async def create_customer(self, user_id: str, email: str | None, idempotency_key: str) -> str:
        self.customers.append(user_id)
        return f"cus_{len(self.customers)}"

    async def create_subscription(
        self, *, customer_ref: str, price_ref: str, payment_method_id: str | None,
        trial_days: int, idempotency_key: str, metadata: Mapping[str, str], quantity: int = 1,
        coupon_ref: str | None = None,
    ) -> ProviderSubscription:  # fmt: skip
        self.created.append({"customer": customer_ref, "price": price_ref,
                             "key": idempotency_key, "metadata": dict(metadata),
                             "quantity": quantity, "coupon": coupon_ref})  # fmt: skip
        return self.remote

    async def cancel_subscription(self, ref: str, *, at_period_end: bool) -> ProviderSubscription:
        self.canceled.append((ref, at_period_end))
        return self.remote

    async def change_subscription(
        self, ref: str, change: SubscriptionChange
    ) -> ProviderSubscription:
        """Stripe's answer to a resume, pause or unpause, as Stripe would make it."""
        self.changes.append((ref, change))
        if change.action == "resume":
            self.remote = dataclasses.replace(self.remote, cancel_at_period_end=False)
        else:
            paused = change.action == "pause"
            self.remote = dataclasses.replace(
                self.remote, paused=paused, resumes_at=change.resumes_at if paused else None
            )
        return self.remote

    async def fetch_subscription(self, ref: str) -> ProviderSubscription:
        assert ref == self.remote.ref
        return self.remote

    def subscription_status(self, status: str) -> Sub | None:
        return STATUS.get(status)

    def now(self, status: str, start: datetime, *, days: int = 30, **extra: Any) -> None:
        """What Stripe will answer from now on: `status`, a period from `start`."""
        end = start + timedelta(days=days)
        self.remote = dataclasses.replace(
            self.remote, status=status, period_start=start, period_end=end, **extra
        )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def db(clock: ManualClock) -> FakeDatabase:
    return FakeDatabase(clock)


@pytest.fixture
def stripe() -> CannedStripe:
    return CannedStripe()


@pytest.fixture
async def deps(db: FakeDatabase, stripe: CannedStripe) -> Deps:
    deps = canned_deps(stripe)
    for code, price in (("pro", "price_pro"), ("bare", None)):
        plan = UpsertPlan.model_validate(
            {"idempotency_key": key(), "code": code, "name": code, "price": money("10.00"),
             "interval": "month", "stripe_price_id": price}
        )  # fmt: skip
        await run(db, subscriptions.upsert_plan, plan, deps)
    return deps


def subscribe(user: str, plan: str = "pro") -> CreateSubscription:
    return CreateSubscription(
        idempotency_key=key(), user_id=user, plan_code=plan, payment_source="stripe"
    )


async def created(db: FakeDatabase, deps: Deps, user: str) -> SubscriptionCreated:
    intent = await run(db, subscriptions.create_subscription, subscribe(user), deps)
    assert isinstance(intent, Intent)
    made = await stripe_subscriptions.call_create(intent, deps)
    async with db.transaction() as uow:
        return await stripe_subscriptions.finish_create(intent, made, uow, deps)


def webhook(
    type_: str, invoice: PaymentOutcome | None = None, ref: str = "in_1", **extra: Any
) -> ProviderEvent:
    """A Stripe subscription or invoice event as Stripe's API confirms it."""
    return ProviderEvent(
        "stripe", f"evt_{key()}", None, ref if invoice else None, type_,
        subscription_ref="sub_1", period_charge=invoice,
        amount_minor=1000 if invoice else None, currency="USD" if invoice else None,
        confirmation={"id": ref} if invoice else None, **extra,
    )  # fmt: skip


async def deliver(
    db: FakeDatabase, deps: Deps, event: ProviderEvent, at: datetime | None = None
) -> Applied:
    """As the service does: the subscription re-read from Stripe, then one transaction."""
    fetched = await stripe_subscriptions.fetch(event, deps)
    if at is not None:
        fetched = dataclasses.replace(fetched, at=at)
    async with db.transaction() as uow:
        return await apply_provider_event(event, uow, deps, "provider:stripe", fetched)


def only(db: FakeDatabase) -> SubscriptionRow:
    [sub] = db.state.subscriptions.values()
    return sub


def invoices(db: FakeDatabase) -> list[tuple[str, str | None, int]]:
    return [(t.status, t.provider_ref, t.amount_minor) for t in db.state.transactions.values()]


async def test_a_subscription_stripe_made_active_is_ours_active_with_its_customer(
    db: FakeDatabase, deps: Deps, stripe: CannedStripe, clock: ManualClock
) -> None:
    user = new_user()
    stripe.now("active", clock.now)
    out = (await created(db, deps, user)).subscription
    sub = only(db)
    assert (out.status, sub.provider_subscription_id, sub.current_period_end) == (
        "active", "sub_1", clock.now + timedelta(days=30),
    )  # fmt: skip
    [asked] = stripe.created
    assert (asked["customer"], asked["price"], asked["key"]) == ("cus_1", "price_pro", str(sub.id))
    assert db.state.users[user].customers == {"stripe": "cus_1"}
    assert [e.type for e in db.events] == [ev.SUBSCRIPTION_CREATED]
    assert db.state.transactions == {}  # Stripe charges: no wallet money moves


async def test_an_incomplete_one_asks_the_customer_and_goes_live_with_its_webhook(
    db: FakeDatabase, deps: Deps, stripe: CannedStripe, clock: ManualClock
) -> None:
    stripe.now("incomplete", clock.now, client_secret="pi_secret")
    reply = await created(db, deps, new_user())
    assert reply.subscription.status == "incomplete"
    assert reply.payment_action is not None
    assert reply.payment_action.client_secret == "pi_secret"
    assert db.events == []
    stripe.now("active", clock.now)
    assert await deliver(db, deps, webhook("invoice.paid", PaymentOutcome.SUCCEEDED)) == (
        Applied.APPLIED
    )
    assert only(db).status == "active"
    assert [e.type for e in db.events] == [ev.PAYMENT_SUCCESS, ev.SUBSCRIPTION_CREATED]


async def test_without_a_stripe_price_or_stripe_nothing_is_created(
    db: FakeDatabase, deps: Deps, stripe: CannedStripe
) -> None:
    with pytest.raises(ProviderError, match="stripe_price_id"):
        await run(db, subscriptions.create_subscription, subscribe(new_user(), "bare"), deps)
    with pytest.raises(ProviderError, match="not configured"):
        await run(db, subscriptions.create_subscription, subscribe(new_user()), make_deps())
    assert (db.state.subscriptions, stripe.created) == ({}, [])


async def test_a_create_stripe_refused_leaves_nothing(db: FakeDatabase, deps: Deps) -> None:
    intent = await run(db, subscriptions.create_subscription, subscribe(new_user()), deps)
    assert isinstance(intent, Intent)
    async with db.transaction() as uow:
        await stripe_subscriptions.undo_create(intent, uow)
    assert db.state.subscriptions == {}


async def test_a_paid_period_invoice_is_recorded_once_and_renews_it(
    db: FakeDatabase, deps: Deps, stripe: CannedStripe, clock: ManualClock
) -> None:
    stripe.now("active", clock.now)
    await created(db, deps, new_user())
    stripe.now("active", clock.now + timedelta(days=30))  # Stripe billed the next period
    paid = webhook("invoice.paid", PaymentOutcome.SUCCEEDED)
    assert await deliver(db, deps, paid) == Applied.APPLIED
    assert await deliver(db, deps, paid) == Applied.DUPLICATE
    other = webhook("invoice.payment_succeeded", PaymentOutcome.SUCCEEDED)  # same invoice
    assert await deliver(db, deps, other) == Applied.APPLIED
    assert invoices(db) == [("completed", "in_1", 1000)]
    [charge] = db.state.transactions.values()
    assert (charge.kind, charge.subscription_id) == ("subscription_charge", only(db).id)
    assert only(db).current_period_start == clock.now + timedelta(days=30)
    assert [e.type for e in db.events] == [
        ev.SUBSCRIPTION_CREATED, ev.PAYMENT_SUCCESS, ev.SUBSCRIPTION_RENEWED,
    ]  # fmt: skip
    assert db.events_of(ev.SUBSCRIPTION_RENEWED)[0]["amount"] == money("10.00")


async def test_a_failed_invoice_makes_it_past_due_and_a_later_payment_active(
    db: FakeDatabase, deps: Deps, stripe: CannedStripe, clock: ManualClock
) -> None:
    stripe.now("active", clock.now)
    await created(db, deps, new_user())
    stripe.now("past_due", clock.now + timedelta(days=30))
    failed = webhook("invoice.payment_failed", PaymentOutcome.FAILED, failure_code="declined")
    await deliver(db, deps, failed)
    retried = webhook("invoice.payment_failed", PaymentOutcome.FAILED)  # Stripe retried
    await deliver(db, deps, retried)
    assert only(db).status == "past_due"
    assert invoices(db) == [
        ("failed", f"in_1:{failed.event_id}", 1000), ("failed", f"in_1:{retried.event_id}", 1000),
    ]  # fmt: skip
    assert len(db.events_of(ev.SUBSCRIPTION_PAST_DUE)) == 1
    stripe.now("active", clock.now + timedelta(days=30))
    await deliver(db, deps, webhook("invoice.paid", PaymentOutcome.SUCCEEDED))
    assert only(db).status == "active"
    assert [t[0] for t in invoices(db)] == ["failed", "failed", "completed"]
    assert len(db.events_of(ev.SUBSCRIPTION_RENEWED)) == 1


async def past_due_by_a_read(
    db: FakeDatabase, deps: Deps, stripe: CannedStripe, clock: ManualClock
) -> datetime:
    """A Stripe subscription made past_due by a webhook's read: when that read began."""
    stripe.now("active", clock.now)
    await created(db, deps, new_user())
    stripe.now("past_due", clock.now)
    await deliver(db, deps, webhook("customer.subscription.updated"))
    synced = only(db).provider_synced_at
    assert synced is not None
    return synced


async def test_an_older_read_of_stripe_that_agrees_with_ours_changes_nothing(
    db: FakeDatabase, deps: Deps, stripe: CannedStripe, clock: ManualClock
) -> None:
    synced = await past_due_by_a_read(db, deps, stripe, clock)
    older = webhook("invoice.paid", PaymentOutcome.SUCCEEDED)  # read before that one
    await deliver(db, deps, older, at=synced - timedelta(seconds=1))
    assert (only(db).status, only(db).provider_synced_at) == ("past_due", synced)
    assert invoices(db) == [("completed", "in_1", 1000)]  # the invoice is still a fact


async def test_an_older_read_of_stripe_that_tells_otherwise_is_read_again(
    db: FakeDatabase, deps: Deps, stripe: CannedStripe, clock: ManualClock
) -> None:
    synced = await past_due_by_a_read(db, deps, stripe, clock)
    # A read that began before the past_due one was applied, and says active: stale, or
    # a change made at Stripe since? Not applied over a later read; read again.
    stripe.now("active", clock.now)
    told = webhook("invoice.paid", PaymentOutcome.SUCCEEDED)
    with pytest.raises(TransientError, match="reading it again"):
        await deliver(db, deps, told, at=synced - timedelta(seconds=1))
    assert (only(db).status, only(db).provider_synced_at) == ("past_due", synced)
    assert invoices(db) == []  # nothing of that transaction stays

    await deliver(db, deps, told)  # the redelivery's read is the latest: Stripe says active

    assert only(db).status == "active"
    assert invoices(db) == [("completed", "in_1", 1000)]


async def test_stripe_cannot_move_an_ended_subscription_back(
    db: FakeDatabase, deps: Deps, stripe: CannedStripe, clock: ManualClock
) -> None:
    stripe.now("active", clock.now)
    await created(db, deps, new_user())
    stripe.now("canceled", clock.now)
    for _ in range(2):
        await deliver(db, deps, webhook("customer.subscription.deleted"))
    ended = only(db)
    assert (ended.status, ended.canceled_at) == ("canceled", clock.now)
    assert len(db.events_of(ev.SUBSCRIPTION_CANCELED)) == 1
    stripe.now("active", clock.now + timedelta(days=30))
    await deliver(db, deps, webhook("customer.subscription.updated"))
    assert only(db).status == "canceled"
    assert db.events_of(ev.SUBSCRIPTION_RENEWED) == []


async def test_a_webhook_for_a_subscription_not_committed_yet_is_retried(
    db: FakeDatabase, deps: Deps
) -> None:
    event = webhook("customer.subscription.updated")
    with pytest.raises(TransientError):
        await deliver(db, deps, event)
    assert db.state.records == {}  # not claimed: the redelivery is applied


@pytest.mark.parametrize("at_period_end", [True, False])
async def test_a_cancel_goes_to_stripe_first_and_then_ends_ours(
    db: FakeDatabase, deps: Deps, stripe: CannedStripe, clock: ManualClock, at_period_end: bool
) -> None:
    user = new_user()
    stripe.now("active", clock.now)
    await created(db, deps, user)
    command = CancelSubscription(
        idempotency_key=key(), user_id=user, subscription_id=only(db).id,
        at_period_end=at_period_end,
    )  # fmt: skip
    intent = await run(db, subscriptions.cancel_subscription, command, deps)
    assert isinstance(intent, Intent)
    assert only(db).status == "active"  # nothing changes before Stripe agrees
    remote = await stripe_subscriptions.call_cancel(intent, deps)
    assert stripe.canceled == [("sub_1", at_period_end)]
    async with db.transaction() as uow:
        out = await stripe_subscriptions.finish_cancel(intent, remote, uow, deps)
    assert isinstance(out, SubscriptionOut)
    expected = ("active", True) if at_period_end else ("canceled", False)
    assert (out.status, out.cancel_at_period_end) == expected
    assert len(db.events_of(ev.SUBSCRIPTION_CANCELED)) == (not at_period_end)


async def test_a_cancel_a_webhook_already_applied_ends_nothing_twice(
    db: FakeDatabase, deps: Deps, stripe: CannedStripe, clock: ManualClock
) -> None:
    user = new_user()
    stripe.now("active", clock.now)
    await created(db, deps, user)
    command = CancelSubscription(
        idempotency_key=key(), user_id=user, subscription_id=only(db).id, at_period_end=False
    )
    intent = await run(db, subscriptions.cancel_subscription, command, deps)
    assert isinstance(intent, Intent)
    stripe.now("canceled", clock.now)
    remote = await stripe_subscriptions.call_cancel(intent, deps)
    await deliver(db, deps, webhook("customer.subscription.deleted"))  # overtakes the reply
    async with db.transaction() as uow:
        out = await stripe_subscriptions.finish_cancel(intent, remote, uow, deps)
    assert out.status == "canceled"
    assert len(db.events_of(ev.SUBSCRIPTION_CANCELED)) == 1


# --- resume, pause, unpause, seats (at Stripe first, then ours as Stripe answered) -------


async def change(db: FakeDatabase, deps: Deps, handler: Any, command: Any) -> SubscriptionOut:
    """A change command through its phases: the intent, Stripe, then our copy."""
    intent = await run(db, handler, command, deps)
    assert isinstance(intent, Intent)
    assert intent.kind == stripe_subscriptions.CANCEL  # the kind of Stripe's changes
    outcome = await stripe_changes.call(intent, deps)
    async with db.transaction() as uow:
        return await stripe_changes.finish(intent, outcome, uow, deps)


def ids(user: str, sub: SubscriptionRow) -> dict[str, Any]:
    return {"idempotency_key": key(), "user_id": user, "subscription_id": sub.id}


async def test_a_resume_sets_cancel_at_period_end_false_at_stripe_then_ours(
    db: FakeDatabase, deps: Deps, stripe: CannedStripe, clock: ManualClock
) -> None:
    user = new_user()
    stripe.now("active", clock.now, cancel_at_period_end=True)
    await created(db, deps, user)
    assert only(db).cancel_at_period_end
    out = await change(db, deps, subscription_changes.resume_subscription,
                       ResumeSubscription(**ids(user, only(db))))  # fmt: skip
    assert [(ref, c.action) for ref, c in stripe.changes] == [("sub_1", "resume")]
    assert (out.status, out.cancel_at_period_end) == ("active", False)
    [resumed] = db.events_of(ev.SUBSCRIPTION_RESUMED)
    assert resumed["reason"] == "cancel_undone"
    await deliver(db, deps, webhook("customer.subscription.updated"))  # Stripe's webhook
    assert len(db.events_of(ev.SUBSCRIPTION_RESUMED)) == 1  # told once


async def test_a_stripe_pause_is_pause_collection_there_and_paused_here_with_until(
    db: FakeDatabase, deps: Deps, stripe: CannedStripe, clock: ManualClock
) -> None:
    user = new_user()
    stripe.now("active", clock.now)
    await created(db, deps, user)
    until = clock.now + timedelta(days=60)
    out = await change(db, deps, subscription_changes.pause_subscription,
                       PauseSubscription(**ids(user, only(db)), until=until))  # fmt: skip
    [(_, asked)] = stripe.changes
    assert (asked.action, asked.resumes_at) == ("pause", until)
    assert (out.status, out.paused_until) == ("paused", until)  # at once, at Stripe
    assert len(db.events_of(ev.SUBSCRIPTION_PAUSED)) == 1
    out = await change(db, deps, subscription_changes.unpause_subscription,
                       UnpauseSubscription(**ids(user, only(db))))  # fmt: skip
    assert (out.status, out.paused_until) == ("active", None)
    [resumed] = db.events_of(ev.SUBSCRIPTION_RESUMED)
    assert resumed["reason"] == "unpaused"
    assert db.events_of(ev.SUBSCRIPTION_RENEWED) == []  # no period was paid by unpausing


async def test_stripe_paused_or_pause_collection_is_paused_not_past_due(
    db: FakeDatabase, deps: Deps, stripe: CannedStripe, clock: ManualClock
) -> None:
    user = new_user()
    stripe.now("trialing", clock.now)
    await created(db, deps, user)
    stripe.now("paused", clock.now)  # a trial ended without a payment method
    await deliver(db, deps, webhook("customer.subscription.paused"))
    assert only(db).status == "paused"
    stripe.now("active", clock.now, paused=False)
    await deliver(db, deps, webhook("customer.subscription.resumed"))
    assert only(db).status == "active"
    stripe.now("active", clock.now, paused=True)  # pause_collection set in the dashboard
    await deliver(db, deps, webhook("customer.subscription.updated"))
    assert only(db).status == "paused"
    assert len(db.events_of(ev.SUBSCRIPTION_PAUSED)) == 2
    assert db.events_of(ev.SUBSCRIPTION_PAST_DUE) == []


async def test_a_stripe_subscription_asks_for_its_quantity(
    db: FakeDatabase, deps: Deps, stripe: CannedStripe, clock: ManualClock
) -> None:
    stripe.now("active", clock.now)
    command = CreateSubscription(
        idempotency_key=key(), user_id=new_user(), plan_code="pro", payment_source="stripe",
        quantity=5,
    )  # fmt: skip
    intent = await run(db, subscriptions.create_subscription, command, deps)
    assert isinstance(intent, Intent)
    made = await stripe_subscriptions.call_create(intent, deps)
    async with db.transaction() as uow:
        out = await stripe_subscriptions.finish_create(intent, made, uow, deps)
    assert [c["quantity"] for c in stripe.created] == [5]
    assert out.subscription.quantity == 5
    [announced] = db.events_of(ev.SUBSCRIPTION_CREATED)
    assert announced["quantity"] == 5


class _Found:
    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body

    def to_dict(self) -> dict[str, Any]:
        return self.body


def test_stripe_s_pause_reads_as_paused_and_the_changes_are_its_parameters() -> None:
    body = {"id": "sub_1", "status": "active", "cancel_at_period_end": False,
            "items": {"data": [{"current_period_start": 1, "current_period_end": 2}]},
            "pause_collection": {"behavior": "void", "resumes_at": 1_800_000_000}}  # fmt: skip
    read = stripe_reading.subscription(_Found(body))
    assert (read.paused, read.resumes_at) == (True, datetime.fromtimestamp(1_800_000_000, UTC))
    assert not stripe_reading.subscription(_Found({**body, "pause_collection": None})).paused
    assert stripe_reading.STATUS["paused"] is Sub.PAUSED
    until = datetime.fromtimestamp(1_800_000_000, UTC)
    assert stripe_reading.change_params(SubscriptionChange("pause", until)) == {
        "pause_collection": {"behavior": "void", "resumes_at": 1_800_000_000}
    }
    assert stripe_reading.change_params(SubscriptionChange("unpause")) == {"pause_collection": ""}
    assert stripe_reading.change_params(SubscriptionChange("resume")) == {
        "cancel_at_period_end": False
    }
    params = stripe_reading.subscription_params(
        customer_ref="cus_1", price_ref="price_1", payment_method_id=None, trial_days=0,
        metadata={}, quantity=4,
    )  # fmt: skip
    assert params["items"] == [{"price": "price_1", "quantity": 4}]


async def test_a_stripe_trial_cannot_be_paused_and_stripe_is_not_asked(
    db: FakeDatabase, deps: Deps, stripe: CannedStripe, clock: ManualClock
) -> None:
    user = new_user()
    stripe.now("trialing", clock.now)
    await created(db, deps, user)
    with pytest.raises(InvalidState):
        await run(db, subscription_changes.pause_subscription,
                  PauseSubscription(**ids(user, only(db))), deps)  # fmt: skip
    assert stripe.changes == []


def a_stripe_invoice(ref: str = "in_1", **extra: Any) -> dict[str, Any]:
    """A paid Invoice as Stripe's API returns it: a proration pair and a renewal line."""

    def line(description: str, amount: int, proration: bool, quantity: int = 1) -> dict[str, Any]:
        details = {"proration": proration, "subscription_item": "si_1"}
        return {"amount": amount, "description": description, "quantity": quantity,
                "parent": {"type": "subscription_item_details",
                           "subscription_item_details": details}}  # fmt: skip

    return {
        "id": ref, "object": "invoice", "status": "paid", "currency": "usd",
        "billing_reason": "subscription_update", "amount_due": 1_690, "amount_paid": 1_690,
        "parent": {"subscription_details": {"subscription": "sub_1"}},
        "total_taxes": [{"amount": 190}, {"amount": 0}],
        "lines": {"data": [
            line("Unused time on Basic after 1 Mar", -500, True),
            line("Remaining time on Pro after 1 Mar", 1_000, True),
            line("2 x Pro (at $5.00 / month)", 1_000, False, quantity=2),
        ]},
        **extra,
    }  # fmt: skip


def test_a_paid_stripe_invoice_reads_with_its_lines_tax_and_amount_paid() -> None:
    claim = webhook("invoice.paid", PaymentOutcome.SUCCEEDED)
    confirmed = stripe_reading.confirmed_invoice(claim, a_stripe_invoice())
    assert confirmed is not None
    facts = confirmed.invoice
    assert facts is not None
    assert (facts.ref, facts.currency, facts.amount_paid_minor, facts.tax_minor) == (
        "in_1", "USD", 1_690, 190,
    )  # fmt: skip
    assert [(x.amount_minor, x.quantity, x.proration) for x in facts.lines] == [
        (-500, 1, True), (1_000, 1, True), (1_000, 2, False),
    ]  # fmt: skip
    older = stripe_reading.confirmed_invoice(claim, a_stripe_invoice(total_taxes=None, tax=7))
    assert older is not None
    assert older.invoice is not None
    assert older.invoice.tax_minor == 7
    failed = webhook("invoice.payment_failed", PaymentOutcome.FAILED)
    unpaid = stripe_reading.confirmed_invoice(failed, a_stripe_invoice(status="open"))
    assert unpaid is not None
    assert unpaid.invoice is None  # only a paid invoice is mirrored


async def test_a_paid_stripe_invoice_gets_one_numbered_paid_mirror_whatever_tells_of_it(
    db: FakeDatabase, deps: Deps, stripe: CannedStripe, clock: ManualClock
) -> None:
    stripe.now("active", clock.now)
    user = new_user()
    await created(db, deps, user)
    claim = webhook("invoice.paid", PaymentOutcome.SUCCEEDED)
    paid = stripe_reading.confirmed_invoice(claim, a_stripe_invoice())
    assert paid is not None
    assert await deliver(db, deps, paid) == Applied.APPLIED
    assert await deliver(db, deps, paid) == Applied.DUPLICATE
    other = stripe_reading.confirmed_invoice(  # another event telling of the same invoice
        webhook("invoice.paid", PaymentOutcome.SUCCEEDED), a_stripe_invoice()
    )
    assert other is not None
    assert await deliver(db, deps, other) == Applied.APPLIED  # the same invoice, told again
    [mirror] = db.state.invoices.values()
    assert (mirror.status, mirror.user_id, mirror.subscription_id, mirror.period_index) == (
        "paid", user, only(db).id, None,
    )  # fmt: skip
    assert (mirror.stripe_invoice_id, mirror.number, mirror.paid_at) == (
        "in_1", f"INV-{clock.now.year}-000001", clock.now,
    )  # fmt: skip
    assert (mirror.subtotal_minor, mirror.tax_minor, mirror.total_minor) == (1_500, 190, 1_690)
    lines = [(x.quantity, x.unit_price_minor, x.amount_minor, x.proration) for x in mirror.lines]
    assert lines == [(1, -500, -500, True), (1, 1_000, 1_000, True), (2, 500, 1_000, False)]
    assert [e["invoice_id"] for e in db.events_of(ev.INVOICE_CREATED)] == [str(mirror.id)]
    [announced] = db.events_of(ev.INVOICE_PAID)
    assert announced["total"] == money("16.90")
    credit = announced["lines"][0]
    assert (credit["amount"], credit["credit"], credit["proration"]) == (money("5.00"), True, True)
    assert "credit" not in announced["lines"][2] or announced["lines"][2]["credit"] is None
    assert invoices(db) == [("completed", "in_1", 1_690)]  # the charge, once too
