"""The plan calls of `BillingClient`: upsert a plan, list the plans, migrate subscribers."""

# `timeout=` (seconds) is the client's per-call deadline, part of its API.
# ruff: noqa: ASYNC109

from __future__ import annotations

from billing_contracts import names
from billing_contracts.client.rpc import RpcClient
from billing_contracts.money import Money
from billing_contracts.plans import (
    Interval,
    ListPlans,
    MigratePlan,
    PlanList,
    PlanMigration,
    PlanOut,
    UpsertPlan,
)


class PlanCalls(RpcClient):
    """`billing.plan.*`."""

    async def upsert_plan(
        self,
        *,
        code: str,
        name: str,
        price: Money,
        interval: Interval | str,
        idempotency_key: str,
        interval_count: int = 1,
        trial_days: int = 0,
        stripe_price_id: str | None = None,
        active: bool = True,
        timeout: float | None = None,
        vat_code: int | None = None,
        tax_rate: str | None = None,
    ) -> PlanOut:
        """`billing.plan.upsert`: create the plan `code` or replace its terms."""
        command = UpsertPlan(
            idempotency_key=idempotency_key,
            code=code,
            name=name,
            price=price,
            interval=interval,
            interval_count=interval_count,
            trial_days=trial_days,
            stripe_price_id=stripe_price_id,
            active=active,
            vat_code=vat_code,
            tax_rate=tax_rate,
        )
        return await self.request(names.PLAN_UPSERT, command, PlanOut, timeout=timeout)

    async def list_plans(
        self, *, active_only: bool = True, code: str | None = None, timeout: float | None = None
    ) -> PlanList:
        """`billing.plan.list`: the current versions; with `code`, every version of it."""
        query = ListPlans(active_only=active_only, code=code)
        return await self.request(names.PLAN_LIST, query, PlanList, timeout=timeout)

    async def migrate_plan(
        self,
        *,
        plan_code: str,
        to_version: int,
        idempotency_key: str,
        from_version: int | None = None,
        timeout: float | None = None,
    ) -> PlanMigration:
        """`billing.plan.migrate` (admins only): move the live subscriptions of the older
        versions (or of `from_version`) to `to_version` from their next period on."""
        command = MigratePlan(
            idempotency_key=idempotency_key,
            plan_code=plan_code,
            to_version=to_version,
            from_version=from_version,
        )
        return await self.request(names.PLAN_MIGRATE, command, PlanMigration, timeout=timeout)
