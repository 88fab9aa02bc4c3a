"""Plans and subscriptions: upsert/list plans, create/cancel/get subscriptions."""

from __future__ import annotations

import dataclasses
import uuid

from billing_contracts.events import SUBSCRIPTION_CREATED
from billing_contracts.plans import ListPlans, PlanList, PlanOut, UpsertPlan
from billing_contracts.subscriptions import (
    CancelSubscription,
    CreateSubscription,
    GetSubscriptions,
    PaymentSource,
    SubscriptionCreated,
    SubscriptionList,
    SubscriptionOut,
)
from billing_contracts.subscriptions import SubscriptionStatus as Sub
from billing_worker.db.intents import Intent
from billing_worker.db.subscriptions import PlanRow, SubscriptionRow
from billing_worker.domain.calendar import trial_end
from billing_worker.domain.discounts import Redemption
from billing_worker.domain.errors import InvalidState, NotFound
from billing_worker.domain.ledger import derived_id
from billing_worker.domain.plan_versions import terms_of
from billing_worker.domain.subscriptions import LIVE
from billing_worker.handlers import stripe_subscriptions, yookassa_subscriptions
from billing_worker.handlers.coupons import usable
from billing_worker.handlers.deps import Deps
from billing_worker.handlers.periods import (
    charge_from_balance,
    check_price_fits,
    end_subscription,
    insert,
    not_covered,
)
from billing_worker.handlers.subscription_views import (
    plan_out,
    subscription_event,
    subscription_out,
)
from billing_worker.handlers.taxes import rates_of
from billing_worker.ports import UnitOfWork


async def upsert_plan(command: UpsertPlan, uow: UnitOfWork, deps: Deps) -> PlanOut:
    """New terms make the plan's next version (subscribers keep theirs); a change of
    anything else (name, active, stripe_price_id, vat_code) updates the current version."""
    plan = PlanRow(
        id=uuid.uuid4(),
        code=command.code,
        name=command.name,
        price_minor=command.price.minor,
        currency=command.price.currency,
        interval=command.interval.value,
        interval_count=command.interval_count,
        trial_days=command.trial_days,
        stripe_price_id=command.stripe_price_id,
        active=command.active,
        vat_code=command.vat_code,
    )
    if command.tax_rate is not None:  # its copy: a later change of the rate is new terms
        [rate] = await rates_of([command.tax_rate], uow)
        assert rate is not None
        plan = dataclasses.replace(
            plan, tax_rate_code=rate.code, tax_percent=rate.percent, tax_inclusive=rate.inclusive
        )
    current = await uow.plans.by_code(command.code, lock=True)
    if current is None or terms_of(current) == terms_of(plan):
        return plan_out(await uow.plans.upsert(plan))  # the first version, or in place
    return plan_out(
        await uow.plans.add_version(dataclasses.replace(plan, version=current.version + 1))
    )


async def list_plans(query: ListPlans, uow: UnitOfWork, deps: Deps) -> PlanList:
    if query.code is not None:
        plans = await uow.plans.versions(query.code)
    else:
        plans = await uow.plans.listing(query.active_only)
    return PlanList(plans=[plan_out(plan) for plan in plans])


async def create_subscription(
    command: CreateSubscription, uow: UnitOfWork, deps: Deps
) -> SubscriptionCreated | Intent:
    """A balance subscription is created and paid at once; one paid through a provider
    is begun here (an `Intent`): the service calls the provider after the commit."""
    plan = await uow.plans.by_code(command.plan_code)
    if plan is None or not plan.active:
        raise NotFound(f"no active plan {command.plan_code!r}", plan_code=command.plan_code)
    await uow.subscriptions.ensure_user(command.user_id, command.email)
    now = uow.clock()
    sub = SubscriptionRow(
        id=derived_id("subscription", command.user_id, command.idempotency_key),
        user_id=command.user_id, plan_id=plan.id, status=Sub.INCOMPLETE.value,
        payment_source=command.payment_source.value, payment_method_id=None,
        provider_subscription_id=None, current_period_start=None, current_period_end=None,
        billing_anchor=now, trial_end=None, cancel_at_period_end=False, canceled_at=None,
        cancel_reason=None, paid_periods=0, dunning_attempts=0, next_attempt_at=None, plan=plan,
        quantity=command.quantity,
    )  # fmt: skip
    coupon = None
    if command.coupon is not None:
        coupon = await usable(uow, command.coupon, plan.currency)
    check_price_fits(sub)
    if command.payment_source is PaymentSource.STRIPE:  # Stripe discounts its own invoices
        return await stripe_subscriptions.create(command, sub, uow, deps, coupon)
    if coupon is not None:  # the first charged period is discounted (priced with it)
        sub = dataclasses.replace(sub, redemption=Redemption(coupon, 0))
    if plan.trial_days:  # no charge until the trial ends; the scheduler charges period 0
        ends = trial_end(now, plan.trial_days)
        sub = dataclasses.replace(
            sub, status=Sub.TRIALING.value, current_period_start=now, current_period_end=ends,
            billing_anchor=ends, trial_end=ends,
        )  # fmt: skip
        if command.payment_source is PaymentSource.YOOKASSA:
            sub = await yookassa_subscriptions.attach_saved_method(command, sub, uow)
            await yookassa_subscriptions.receipt_of(sub, uow, deps)  # a contact, with receipts on
        await insert(sub, uow)
        await _redeem(sub, uow)
        uow.emit(subscription_event(SUBSCRIPTION_CREATED, sub))
        return SubscriptionCreated(subscription=subscription_out(sub), payment_action=None)
    if command.payment_source is PaymentSource.YOOKASSA:
        return await yookassa_subscriptions.create(command, sub, uow, deps)
    await insert(sub, uow)
    await _redeem(sub, uow)
    if not await charge_from_balance(sub, uow, deps):
        raise not_covered(sub, "the first period")
    active = await _reload(sub.id, uow)
    return SubscriptionCreated(subscription=subscription_out(active), payment_action=None)


async def cancel_subscription(
    command: CancelSubscription, uow: UnitOfWork, deps: Deps
) -> SubscriptionOut | Intent:
    """Cancel now or at the period end; at Stripe first (an `Intent`: the service asks
    Stripe after the commit) for a subscription Stripe runs."""
    sub = await uow.subscriptions.get(command.subscription_id, lock=True)
    if sub is None or sub.user_id != command.user_id:  # another's: exactly as a missing one
        raise NotFound(f"no subscription {command.subscription_id}")
    if Sub(sub.status) not in LIVE:
        raise InvalidState(f"the subscription is already {sub.status}", status=sub.status)
    stripe_run = sub.payment_source == PaymentSource.STRIPE
    if await uow.intents.of_subscription(sub.id) and (
        stripe_run or not command.at_period_end or Sub(sub.status) is Sub.INCOMPLETE
    ):
        # A payment (or another cancel) is at the provider right now; its answer must
        # find the subscription as it left it. Marking the period end stays safe.
        raise InvalidState(
            "a provider call for this subscription is in flight; try again shortly",
            status=sub.status,
        )
    ends_now = not command.at_period_end or Sub(sub.status) in (Sub.INCOMPLETE, Sub.PAUSED)
    if not stripe_run and ends_now and await uow.subscriptions.charging([sub.id]):
        # A period's payment is at the provider (a YooKassa payment `pending`): ending the
        # subscription now would leave its confirmation paying a period nobody gets, the
        # money kept for nothing. Refused until the provider settles it; a period-end
        # cancel (of a paid period) is taken meanwhile.
        raise InvalidState(
            "a payment for this subscription is in flight at the provider; cancel once it "
            "is settled (or cancel at the period end)",
            status=sub.status,
            reason="payment_in_flight",
        )
    if stripe_run and sub.provider_subscription_id:
        return stripe_subscriptions.begin_cancel(command, sub, deps)
    if sub.scheduled_plan_id is not None:  # a cancel drops a scheduled plan change
        await uow.subscriptions.update(sub.id, scheduled_plan_id=None, scheduled_quantity=None)
    # incomplete: nothing paid to serve; paused: its paid period is over already
    if command.at_period_end and Sub(sub.status) not in (Sub.INCOMPLETE, Sub.PAUSED):
        await uow.subscriptions.update(
            sub.id, cancel_at_period_end=True, cancel_reason=command.reason
        )
    else:
        await end_subscription(sub, uow, reason=command.reason or "canceled_by_request")
    return subscription_out(await _reload(sub.id, uow))


async def get_subscriptions(
    query: GetSubscriptions, uow: UnitOfWork, deps: Deps
) -> SubscriptionOut | SubscriptionList:
    if query.subscription_id is not None:
        sub = await uow.subscriptions.get(query.subscription_id)
        if sub is None or sub.user_id != query.user_id:  # another's: exactly as a missing one
            raise NotFound(f"no subscription {query.subscription_id}")
        return subscription_out(sub)
    subs = await uow.subscriptions.of_user(query.user_id)
    return SubscriptionList(subscriptions=[subscription_out(sub) for sub in subs])


async def _redeem(sub: SubscriptionRow, uow: UnitOfWork) -> None:
    """The new subscription's redemption row, in the creation's transaction."""
    if sub.redemption is not None:
        await uow.coupons.redeem(sub.id, sub.redemption.coupon.code)


async def _reload(subscription_id: uuid.UUID, uow: UnitOfWork) -> SubscriptionRow:
    sub = await uow.subscriptions.get(subscription_id)
    assert sub is not None
    return sub
