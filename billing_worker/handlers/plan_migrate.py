"""`billing.plan.migrate`: move the live subscriptions of a plan to another version of
it, from their next period on.

Each moved subscription keeps its paid period; its `plan_id` becomes the target version
row, so its next renewal (and every later one) charges the target's price. With the same
interval its anchor stays (month-end days as they were); with another interval it is
re-anchored at the end of the paid period (`anchor_offset` = the next period's index),
so the periods already paid, and their `subscription_charges` rows, stay as they were.
Every move is recorded (`subscription_plan_changes`) for the audit.

Refused as a whole (nothing moves): an unknown version (`not_found`), `from_version`
equal to `to_version` (`invalid_message`), a subscription whose version is in another
currency (`currency_mismatch`: a balance subscriber's wallet is per currency).
Left unmoved and reported in the reply: Stripe-run subscriptions (Stripe bills them on
its own Price; move them there), incomplete ones and ones with a provider charge open.
"""

from __future__ import annotations

import dataclasses
from uuid import UUID

from billing_contracts.plans import MigratePlan, PlanMigration, SkippedSubscription
from billing_contracts.subscriptions import PaymentSource
from billing_contracts.subscriptions import SubscriptionStatus as Sub
from billing_worker.db.subscriptions import PlanRow, SubscriptionRow
from billing_worker.domain.errors import CurrencyMismatch, InvalidInput, NotFound
from billing_worker.domain.plan_versions import Anchor, reanchored
from billing_worker.handlers.deps import Deps
from billing_worker.handlers.subscription_views import subscription_updated
from billing_worker.ports import UnitOfWork


async def migrate_plan(command: MigratePlan, uow: UnitOfWork, deps: Deps) -> PlanMigration:
    code = command.plan_code
    if command.from_version == command.to_version:
        raise InvalidInput("from_version and to_version are the same version")
    target = await uow.plans.version(code, command.to_version)
    if target is None:
        raise NotFound(f"plan {code!r} has no version {command.to_version}", plan_code=code)
    sources = await _sources(command, uow)
    subs = await uow.subscriptions.live_on([plan.id for plan in sources])
    charging = await uow.subscriptions.charging([sub.id for sub in subs])
    moved, skipped = 0, []
    for sub in subs:
        reason = _skip_reason(sub, charging)
        if reason is not None:
            skipped.append(SkippedSubscription(subscription_id=sub.id, reason=reason))
            continue
        await _move(sub, target, uow)
        moved += 1
    return PlanMigration(plan_code=code, to_version=target.version, moved=moved, skipped=skipped)


async def _sources(command: MigratePlan, uow: UnitOfWork) -> list[PlanRow]:
    """The version rows whose subscribers move."""
    if command.from_version is None:
        versions = await uow.plans.versions(command.plan_code)
        return [plan for plan in versions if plan.version < command.to_version]
    source = await uow.plans.version(command.plan_code, command.from_version)
    if source is None:
        raise NotFound(
            f"plan {command.plan_code!r} has no version {command.from_version}",
            plan_code=command.plan_code,
        )
    return [source]


def _skip_reason(sub: SubscriptionRow, charging: set[UUID]) -> str | None:
    if sub.payment_source == PaymentSource.STRIPE:
        return "stripe"
    if Sub(sub.status) is Sub.INCOMPLETE or sub.current_period_end is None:
        return "incomplete"
    if sub.id in charging:
        return "payment_in_flight"
    if Sub(sub.status) is Sub.PAST_DUE:  # its unpaid period's invoice is on this version
        return "past_due"
    return None


async def _move(sub: SubscriptionRow, target: PlanRow, uow: UnitOfWork) -> None:
    if sub.plan.currency != target.currency:
        raise CurrencyMismatch(
            f"subscription {sub.id} pays in {sub.plan.currency}; version {target.version} "
            f"of {target.code} is priced in {target.currency}",
            subscription_id=str(sub.id),
        )
    effective_at = sub.current_period_end
    assert effective_at is not None
    assert sub.billing_anchor is not None, "a live non-Stripe subscription has an anchor"
    same = (sub.plan.interval, sub.plan.interval_count) == (target.interval, target.interval_count)
    anchor = reanchored(
        Anchor(sub.billing_anchor, sub.anchor_offset), sub.paid_periods, effective_at, same
    )
    await uow.subscriptions.move_plan(sub, target, anchor.at, anchor.offset, effective_at)
    moved = dataclasses.replace(
        sub, billing_anchor=anchor.at, anchor_offset=anchor.offset, plan_id=target.id,
        plan=target,
    )  # fmt: skip
    uow.emit(subscription_updated(moved, sub.plan.version, effective_at))
