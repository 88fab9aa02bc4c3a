"""A subscription's saved method (`billing.subscription.update-payment-method`,
handlers/payment_methods.py) on the fake unit of work: its owner, one of the owner's
methods of the subscription's provider; Stripe's first, in two phases."""

from __future__ import annotations

import dataclasses
import uuid
from decimal import Decimal

import pytest

from billing_contracts.payment_methods import UpdateSubscriptionPaymentMethod
from billing_worker.db.intents import Intent
from billing_worker.db.payment_methods import Card
from billing_worker.db.subscriptions import PlanRow, SubscriptionRow
from billing_worker.domain.errors import InvalidState, NotFound
from billing_worker.handlers import payment_methods as methods
from billing_worker.handlers.deps import Deps
from billing_worker.providers.base import Gateways
from support.clock import ManualClock
from support.fake_uow import FakeDatabase
from support.handler_kit import ScriptedGateway, key, new_user, run


@pytest.fixture
def db() -> FakeDatabase:
    return FakeDatabase(ManualClock())


@pytest.fixture
def deps() -> Deps:
    names = ("sandbox", "yookassa", "stripe")
    gateways = {name: ScriptedGateway(name, trusts_method_ids=name == "yookassa") for name in names}
    return Deps(Gateways(gateways, default="sandbox"), Decimal("10"))


async def saved(db: FakeDatabase, user: str, ref: str, provider: str = "yookassa") -> None:
    async with db.transaction() as uow:
        await uow.users.ensure(user)
        assert await methods.remember(uow, user, provider, ref, Card("visa", "4242")) is not None


async def live_subscription(
    db: FakeDatabase, user: str, method: str, source: str = "yookassa"
) -> SubscriptionRow:
    await saved(db, user, method, "stripe" if source == "stripe" else "yookassa")
    plan_id = uuid.uuid4()
    plan = PlanRow(plan_id, "pro", "Pro", 1000, "RUB", "month", 1, 0, None, True)
    db.state.plans["pro"] = plan
    provider = "stripe" if source == "stripe" else "yookassa"
    row = SubscriptionRow(
        id=uuid.uuid4(), user_id=user, plan_id=plan_id, status="active",
        payment_source=source, payment_method_id=db.state.methods[provider, method].id,
        provider_subscription_id="sub_1" if source == "stripe" else None,
        current_period_start=None, current_period_end=None,
        billing_anchor=None, trial_end=None, cancel_at_period_end=False, canceled_at=None,
        cancel_reason=None, paid_periods=1, dunning_attempts=0, next_attempt_at=None, plan=plan,
    )  # fmt: skip
    db.state.subscriptions[row.id] = row
    return row


def update(user: str, sub: SubscriptionRow, ref: str) -> UpdateSubscriptionPaymentMethod:
    return UpdateSubscriptionPaymentMethod(
        idempotency_key=key(), user_id=user, subscription_id=sub.id, payment_method_id=ref
    )


async def test_a_subscriptions_method_is_changed_by_its_owner_to_one_of_theirs_only(
    db: FakeDatabase, deps: Deps
) -> None:
    owner, attacker = new_user(), new_user()
    sub = await live_subscription(db, owner, "pm_first")
    await saved(db, owner, "pm_second")
    await saved(db, attacker, "pm_attacker")

    with pytest.raises(NotFound):  # another's subscription
        await run(db, methods.update_subscription_method, update(attacker, sub, "pm_attacker"),
                  deps)  # fmt: skip
    with pytest.raises(NotFound):  # another's method
        await run(db, methods.update_subscription_method, update(owner, sub, "pm_attacker"),
                  deps)  # fmt: skip
    assert db.state.subscriptions[sub.id].payment_method_id == sub.payment_method_id

    out = await run(db, methods.update_subscription_method, update(owner, sub, "pm_second"), deps)

    assert getattr(out, "id", None) == sub.id
    second = db.state.methods["yookassa", "pm_second"].id
    assert db.state.subscriptions[sub.id].payment_method_id == second


async def test_a_balance_subscription_has_no_method_to_change(db: FakeDatabase, deps: Deps) -> None:
    user = new_user()
    sub = await live_subscription(db, user, "pm_first")
    db.state.subscriptions[sub.id] = dataclasses.replace(sub, payment_source="balance")
    with pytest.raises(InvalidState):
        await run(db, methods.update_subscription_method, update(user, sub, "pm_first"), deps)


async def test_a_stripe_subscription_asks_stripe_first_with_one_of_the_owners_stripe_cards(
    db: FakeDatabase, deps: Deps
) -> None:
    user = new_user()
    sub = await live_subscription(db, user, "pm_first", "stripe")
    await saved(db, user, "pm_yookassa")  # the owner's, but of another provider

    with pytest.raises(NotFound):
        await run(db, methods.update_subscription_method, update(user, sub, "pm_yookassa"),
                  deps)  # fmt: skip
    begun = await run(db, methods.update_subscription_method, update(user, sub, "pm_first"),
                      deps)  # fmt: skip

    assert isinstance(begun, Intent)
    assert (begun.kind, begun.provider, begun.subscription_id) == (
        "payment_method_setup", "stripe", sub.id)  # fmt: skip
    assert begun.request == {"action": "subscription", "payment_method_id": "pm_first",
                             "subscription_ref": "sub_1"}  # fmt: skip
    # while that call is at Stripe, another change waits
    async with db.transaction() as uow:
        await uow.intents.insert(begun)
    with pytest.raises(InvalidState):
        await run(db, methods.update_subscription_method, update(user, sub, "pm_first"), deps)
