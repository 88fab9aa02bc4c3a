"""The fake plans, subscriptions and invoices (`billing_worker.ports`) on `FakeState`.

Each does what its SQL in `billing_worker/db/subscriptions.py` and `invoices.py` does:
plans upserted by code (keeping their id) or added as a new version, one live
subscription per user and plan code, each period paid once, invoices numbered gap-free
per year and one per order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from billing_worker.db.errors import translated
from billing_worker.db.invoices import InvoiceRow, NewInvoice, discount_columns
from billing_worker.db.subscriptions import LIVE_UNIQUE, PlanChange, PlanRow, SubscriptionRow
from billing_worker.domain.discounts import Redemption
from billing_worker.domain.invoices import invoice_number
from support.fake_state import LIVE_STATUSES, UserRow, unique_violation
from support.fake_wallet import State

_FIXED = frozenset({"id", "user_id", "plan_id", "payment_source", "plan",
                    "scheduled_plan_code", "scheduled_plan_version",
                    "pending_plan_code", "pending_plan_version"})  # fmt: skip
UPDATABLE = frozenset(f.name for f in dataclasses.fields(SubscriptionRow)) - _FIXED


class FakePlans:
    def __init__(self, state: State) -> None:
        self._state = state

    async def upsert(self, plan: PlanRow) -> PlanRow:
        state = self._state()
        existing = state.plans.get(plan.code)
        if existing is None:
            return await self.add_version(plan)
        stored = dataclasses.replace(plan, id=existing.id, version=existing.version)
        state.plans[plan.code] = state.plan_rows[stored.id] = stored
        return stored

    async def add_version(self, plan: PlanRow) -> PlanRow:
        state = self._state()
        with translated():
            if any(p.version == plan.version for p in await self.versions(plan.code)):
                raise unique_violation("uq_plans_code_version")
        current = state.plans.get(plan.code)
        if current is None or current.version < plan.version:
            state.plans[plan.code] = plan
        state.plan_rows[plan.id] = plan
        return plan

    async def by_code(self, code: str, *, lock: bool = False) -> PlanRow | None:
        return self._state().plans.get(code)

    async def version(self, code: str, version: int) -> PlanRow | None:
        found = (p for p in await self.versions(code) if p.version == version)
        return next(found, None)

    async def versions(self, code: str) -> list[PlanRow]:
        state = self._state()
        rows = {p.id: p for p in (*state.plan_rows.values(), *state.plans.values())}
        return sorted((p for p in rows.values() if p.code == code), key=lambda p: p.version)

    async def listing(self, active_only: bool) -> list[PlanRow]:
        plans = self._state().plans
        return [plans[code] for code in sorted(plans) if plans[code].active or not active_only]


class FakeSubscriptions:
    def __init__(self, state: State) -> None:
        self._state = state

    async def ensure_user(self, user_id: str, email: str | None) -> None:
        user = self._state().users.setdefault(user_id, UserRow())
        user.email = email if email is not None else user.email

    async def insert(self, row: SubscriptionRow) -> None:
        state = self._state()
        state.refer_to_user(row.user_id, "subscriptions")
        with translated():  # a duplicate comes out as the SQL's does: DuplicateKey
            if row.id in state.subscriptions:
                raise unique_violation("subscriptions_pkey")
            if row.status in LIVE_STATUSES and any(  # per plan code, on any of its versions
                (s.user_id, state.plan_by_id(s.plan_id).code) == (row.user_id, row.plan.code)
                and s.status in LIVE_STATUSES
                for s in state.subscriptions.values()
            ):
                raise unique_violation(LIVE_UNIQUE)
        state.subscriptions[row.id] = dataclasses.replace(row, plan=state.plan_by_id(row.plan_id))
        state.subscription_order[row.id] = state.transaction_seq

    def _joined(self, sub: SubscriptionRow | None) -> SubscriptionRow | None:
        """The row with its plan as it is now (the SQL joins `plans` on every read)."""
        if sub is None:
            return None
        state = self._state()
        found = state.redemptions.get(sub.id)  # as the SQL's join of coupon_redemptions
        redemption = None if found is None else Redemption(state.coupons[found[0]], found[1])
        scheduled = (
            None if sub.scheduled_plan_id is None else state.plan_by_id(sub.scheduled_plan_id)
        )
        pending = None if sub.pending_plan_id is None else state.plan_by_id(sub.pending_plan_id)
        return dataclasses.replace(
            sub, plan=state.plan_by_id(sub.plan_id), redemption=redemption,
            scheduled_plan_code=None if scheduled is None else scheduled.code,
            scheduled_plan_version=None if scheduled is None else scheduled.version,
            pending_plan_code=None if pending is None else pending.code,
            pending_plan_version=None if pending is None else pending.version,
        )  # fmt: skip

    async def get(self, subscription_id: UUID, *, lock: bool = False) -> SubscriptionRow | None:
        return self._joined(self._state().subscriptions.get(subscription_id))

    async def by_provider_ref(self, ref: str, *, lock: bool = False) -> SubscriptionRow | None:
        found = (
            s for s in self._state().subscriptions.values() if s.provider_subscription_id == ref
        )
        return self._joined(next(found, None))

    async def of_user(self, user_id: str) -> list[SubscriptionRow]:
        state = self._state()
        subs = [s for s in state.subscriptions.values() if s.user_id == user_id]
        # created_at DESC, id: created_at is the creating transaction's now()
        subs.sort(key=lambda s: (-state.subscription_order[s.id], s.id))
        return [sub for s in subs if (sub := self._joined(s)) is not None]

    async def claim_due(self, now: datetime, skip: Sequence[UUID] = ()) -> SubscriptionRow | None:
        state = self._state()
        in_flight = {
            t.subscription_id
            for t in state.transactions.values()
            if t.status in ("created", "processing")
        }

        def due(s: SubscriptionRow) -> bool:
            period_over = s.current_period_end is not None and s.current_period_end <= now
            retry_due = s.next_attempt_at is not None and s.next_attempt_at <= now
            pause_over = s.paused_until is not None and s.paused_until <= now
            return (
                s.payment_source in ("balance", "yookassa")
                and (
                    (s.status in ("active", "trialing") and period_over)
                    or (s.status == "past_due" and retry_due)
                    or (s.status == "paused" and pause_over)
                )
                and s.id not in skip
                and s.id not in in_flight
            )

        candidates = sorted(
            (s for s in state.subscriptions.values() if due(s)),
            key=lambda s: (s.current_period_end is None, s.current_period_end),
        )
        return self._joined(candidates[0]) if candidates else None

    async def live_on(self, plan_ids: Sequence[UUID]) -> list[SubscriptionRow]:
        subs = self._state().subscriptions.values()
        live = [s for s in subs if s.plan_id in plan_ids and s.status in LIVE_STATUSES]
        return [sub for s in sorted(live, key=lambda s: s.id) if (sub := self._joined(s))]

    async def charging(self, subscription_ids: Sequence[UUID]) -> set[UUID]:
        state = self._state()
        intents = {i.subscription_id for i in state.intents.values()}
        open_charges = {
            t.subscription_id
            for t in state.transactions.values()
            if t.status in ("created", "processing")
        }
        return {i for i in subscription_ids if i in intents or i in open_charges}

    async def move_plan(
        self,
        sub: SubscriptionRow,
        to: PlanRow,
        anchor: datetime,
        anchor_offset: int,
        effective_at: datetime,
    ) -> None:
        state = self._state()
        stored = state.subscriptions[sub.id]
        state.subscriptions[sub.id] = dataclasses.replace(
            stored, plan_id=to.id, billing_anchor=anchor, anchor_offset=anchor_offset
        )
        changes = state.plan_changes
        changes[len(changes)] = (sub.id, sub.plan_id, to.id, sub.paid_periods)

    async def change_plan(self, change: PlanChange) -> None:
        state = self._state()
        sub = change.sub
        with translated():  # the new code's one live subscription per user, as the index
            if any(
                s.id != sub.id
                and s.user_id == sub.user_id
                and s.status in LIVE_STATUSES
                and state.plan_by_id(s.plan_id).code == change.to.code
                for s in state.subscriptions.values()
            ):
                raise unique_violation(LIVE_UNIQUE)
        stored = state.subscriptions[sub.id]
        state.subscriptions[sub.id] = dataclasses.replace(
            stored, plan_id=change.to.id, quantity=change.quantity, billing_anchor=change.anchor,
            anchor_offset=change.anchor_offset, scheduled_plan_id=None, scheduled_quantity=None,
        )  # fmt: skip
        state.plan_switches[len(state.plan_switches)] = change

    async def update(self, subscription_id: UUID, **changes: Any) -> None:
        unknown = set(changes) - UPDATABLE
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        subs = self._state().subscriptions
        if subscription_id in subs:
            subs[subscription_id] = dataclasses.replace(subs[subscription_id], **changes)

    async def discard_incomplete(self, subscription_id: UUID) -> None:
        state = self._state()
        sub = state.subscriptions.get(subscription_id)
        if (
            sub is not None
            and sub.status == "incomplete"
            and sub.provider_subscription_id is None
            and sub.paid_periods == 0
        ):
            del state.subscriptions[subscription_id]

    async def charged_plan(self, subscription_id: UUID, period_index: int) -> PlanRow | None:
        state = self._state()
        plan_id = state.charge_plans.get((subscription_id, period_index))
        return None if plan_id is None else state.plan_by_id(plan_id)

    async def record_charge(
        self,
        subscription_id: UUID,
        period_index: int,
        start: datetime,
        end: datetime,
        transaction_id: UUID | None,
        plan_id: UUID | None = None,
    ) -> bool:
        state = self._state()
        if (subscription_id, period_index) in state.charges:
            return False
        state.charges[subscription_id, period_index] = transaction_id
        state.charge_plans[subscription_id, period_index] = plan_id
        return True

    async def payment_method_ref(self, method_id: UUID) -> str | None:
        methods = self._state().methods.items()
        live = ((ref, m) for (_, ref), m in methods if m.detached_at is None)  # never detached ones
        return next((ref for ref, m in live if m.id == method_id), None)

    async def payment_method_id(self, provider: str, ref: str) -> UUID | None:
        method = self._state().methods.get((provider, ref))
        return None if method is None else method.id


class FakeInvoices:
    def __init__(self, state: State) -> None:
        self._state = state

    async def create(self, new: NewInvoice) -> InvoiceRow | None:
        state = self._state()
        state.ensure_user(new.user_id)
        if new.order_id is not None and any(
            i.order_id == new.order_id for i in state.invoices.values()
        ):
            return None  # the number this attempt would take is not taken
        if new.id in state.invoices:
            raise unique_violation("invoices_pkey")
        if new.stripe_invoice_id is not None and any(
            i.stripe_invoice_id == new.stripe_invoice_id for i in state.invoices.values()
        ):
            raise unique_violation("uq_invoices_stripe_invoice_id")
        if new.period_index is not None and any(
            (i.subscription_id, i.period_index) == (new.subscription_id, new.period_index)
            for i in state.invoices.values()
        ):
            raise unique_violation("uq_invoices_subscription_period")
        year = new.created_at.astimezone(UTC).year
        state.numbers[year] = state.numbers.get(year, 0) + 1
        priced = new.priced
        row = InvoiceRow(
            id=new.id,
            number=invoice_number(year, state.numbers[year]),
            user_id=new.user_id,
            order_id=new.order_id,
            status=new.status,
            currency=priced.currency,
            subtotal_minor=priced.subtotal_minor,
            total_minor=priced.total_minor,
            due_at=new.due_at,
            paid_at=new.created_at if new.status == "paid" else None,
            created_at=new.created_at,
            subscription_id=new.subscription_id,
            period_index=new.period_index,
            tax_minor=priced.tax_minor,
            stripe_invoice_id=new.stripe_invoice_id,
            lines=priced.lines,
            **discount_columns(priced),
        )
        state.invoices[row.id] = row
        return row

    async def by_id(self, invoice_id: UUID, *, lock: bool = False) -> InvoiceRow | None:
        return self._state().invoices.get(invoice_id)

    async def by_stripe_invoice(self, stripe_invoice_id: str) -> InvoiceRow | None:
        found = (
            i for i in self._state().invoices.values() if i.stripe_invoice_id == stripe_invoice_id
        )
        return next(found, None)

    async def by_order(self, order_id: str) -> InvoiceRow | None:
        found = (i for i in self._state().invoices.values() if i.order_id == order_id)
        return next(found, None)

    async def of_period(
        self, subscription_id: UUID, period_index: int, *, lock: bool = False
    ) -> InvoiceRow | None:
        found = (
            i
            for i in self._state().invoices.values()
            if (i.subscription_id, i.period_index) == (subscription_id, period_index)
        )
        return next(found, None)

    async def open_of_subscription(self, subscription_id: UUID) -> list[InvoiceRow]:
        rows = [
            i
            for i in self._state().invoices.values()
            if i.subscription_id == subscription_id and i.status == "open"
        ]
        return sorted(rows, key=lambda i: i.period_index or 0)

    async def charge_in_flight(self, subscription_id: UUID) -> bool:
        return any(
            t.subscription_id == subscription_id and t.status in ("created", "processing")
            for t in self._state().transactions.values()
        )

    async def card_payment_in_flight(self, invoice_id: UUID) -> bool:
        return any(
            t.invoice_id == invoice_id and t.kind == "deposit"
            and t.status in ("created", "processing")
            for t in self._state().transactions.values()
        )  # fmt: skip

    async def move(
        self, invoice_id: UUID, source: str, target: str, at: datetime, reason: str | None = None
    ) -> InvoiceRow | None:
        invoices = self._state().invoices
        invoice = invoices.get(invoice_id)
        if invoice is None or invoice.status != source:
            return None
        invoices[invoice_id] = dataclasses.replace(
            invoice,
            status=target,
            paid_at=at if target == "paid" else invoice.paid_at,
            voided_at=at if target == "void" else invoice.voided_at,
            uncollectible_at=at if target == "uncollectible" else invoice.uncollectible_at,
            status_reason=reason if reason is not None else invoice.status_reason,
        )
        return invoices[invoice_id]

    async def mark_overdue(self, now: datetime, limit: int) -> list[InvoiceRow]:
        invoices = self._state().invoices
        due = sorted(
            (
                i
                for i in invoices.values()
                if i.status == "open" and i.overdue_at is None
                and i.due_at is not None and i.due_at <= now
            ),
            key=lambda i: i.due_at or now,
        )[:limit]  # fmt: skip
        for invoice in due:
            invoices[invoice.id] = dataclasses.replace(invoice, overdue_at=now)
        return [invoices[i.id] for i in due]

    async def page(
        self, user_id: str, limit: int, after: tuple[datetime, UUID] | None
    ) -> list[InvoiceRow]:
        rows = [
            i
            for i in self._state().invoices.values()
            if i.user_id == user_id and (after is None or (i.created_at, i.id) < after)
        ]
        rows.sort(key=lambda i: (i.created_at, i.id), reverse=True)
        return rows[:limit]
