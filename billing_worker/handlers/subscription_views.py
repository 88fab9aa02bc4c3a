"""Wire shapes of plans and subscriptions, and the subscription events."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from billing_contracts import area_events
from billing_contracts.events import (
    SUBSCRIPTION_CANCELED,
    SUBSCRIPTION_CREATED,
    SUBSCRIPTION_PAST_DUE,
    SUBSCRIPTION_PAUSED,
    SUBSCRIPTION_RENEWED,
    SUBSCRIPTION_RESUMED,
    SUBSCRIPTION_UPDATED,
)
from billing_contracts.money import Money
from billing_contracts.plans import PlanOut
from billing_contracts.subscriptions import SubscriptionOut
from billing_worker.db.subscriptions import PlanRow, SubscriptionRow
from billing_worker.domain.events import DomainEvent
from billing_worker.domain.money import to_wire
from billing_worker.domain.taxes import format_percent

EVENT_TYPES = frozenset(
    {SUBSCRIPTION_CREATED, SUBSCRIPTION_RENEWED, SUBSCRIPTION_PAST_DUE, SUBSCRIPTION_CANCELED,
     SUBSCRIPTION_PAUSED, SUBSCRIPTION_RESUMED}
)  # fmt: skip


def _pause_and_seats(sub: SubscriptionRow) -> dict[str, Any]:
    return {
        "quantity": sub.quantity,
        "pause_at_period_end": sub.pause_at_period_end,
        "paused_until": sub.paused_until,
    }


def plan_out(plan: PlanRow) -> PlanOut:
    return PlanOut.model_validate(
        {
            "code": plan.code,
            "name": plan.name,
            "price": to_wire(plan.price_minor, plan.currency),
            "interval": plan.interval,
            "interval_count": plan.interval_count,
            "trial_days": plan.trial_days,
            "stripe_price_id": plan.stripe_price_id,
            "active": plan.active,
            "vat_code": plan.vat_code,
            "version": plan.version,
            "tax_rate": plan.tax_rate_code,
            "tax_percent": None if plan.tax_percent is None else format_percent(plan.tax_percent),
            "tax_inclusive": plan.tax_inclusive,
        }
    )


def subscription_out(sub: SubscriptionRow) -> SubscriptionOut:
    return SubscriptionOut.model_validate(
        {
            "id": sub.id,
            "user_id": sub.user_id,
            "plan_code": sub.plan.code,
            "status": sub.status,
            "payment_source": sub.payment_source,
            "current_period_start": sub.current_period_start,
            "current_period_end": sub.current_period_end,
            "cancel_at_period_end": sub.cancel_at_period_end,
            "plan_version": sub.plan.version,
            **_pause_and_seats(sub),
            "scheduled_plan_code": sub.scheduled_plan_code,
            "scheduled_plan_version": sub.scheduled_plan_version,
            "scheduled_quantity": sub.scheduled_quantity,
            "pending_plan_code": sub.pending_plan_code,
            "pending_plan_version": sub.pending_plan_version,
            "pending_quantity": sub.pending_quantity,
            "pending_invoice_id": sub.pending_invoice_id,
            "coupon": sub.redemption.coupon.code if sub.redemption else None,
            "coupon_periods_used": sub.redemption.periods_used if sub.redemption else None,
        }
    )


def subscription_event(
    type_: str, sub: SubscriptionRow, *, reason: str | None = None, amount_minor: int | None = None
) -> DomainEvent:
    assert type_ in EVENT_TYPES
    data: dict[str, Any] = area_events.SubscriptionEvent.model_validate(
        _event_fields(sub, reason, amount_minor)
    ).model_dump(mode="json")
    return DomainEvent(type_, data)


def subscription_updated(
    sub: SubscriptionRow,
    from_plan_version: int,
    effective_at: datetime,
    *,
    change: str | None = None,
    from_plan_code: str | None = None,
    from_quantity: int | None = None,
    when: str | None = None,
    scheduled: bool | None = None,
    proration: str | None = None,
    charged: Money | None = None,
    credited: Money | None = None,
) -> DomainEvent:
    """`subscription.updated`: `sub` is on its new plan version from `effective_at`
    (`billing.plan.migrate`; or `change` = "change_plan" with the old terms and the money
    the change moved)."""
    fields = {**_event_fields(sub, None, None), "from_plan_version": from_plan_version,
              "effective_at": effective_at}  # fmt: skip
    if change is not None:
        fields |= {
            "change": change, "from_plan_code": from_plan_code, "from_quantity": from_quantity,
            "when": when, "scheduled": scheduled, "proration": proration,
            "proration_charged": charged, "proration_credited": credited,
        }  # fmt: skip
    data = area_events.SubscriptionUpdated.model_validate(fields).model_dump(mode="json")
    return DomainEvent(SUBSCRIPTION_UPDATED, data)


def _event_fields(
    sub: SubscriptionRow, reason: str | None, amount_minor: int | None
) -> dict[str, Any]:
    return {
        "subscription_id": sub.id,
        "user_id": sub.user_id,
        "plan_code": sub.plan.code,
        "status": sub.status,
        "payment_source": sub.payment_source,
        "current_period_start": sub.current_period_start,
        "current_period_end": sub.current_period_end,
        "cancel_at_period_end": sub.cancel_at_period_end,
        "reason": reason,
        "amount": None if amount_minor is None else to_wire(amount_minor, sub.plan.currency),
        "plan_version": sub.plan.version,
        **_pause_and_seats(sub),
    }
