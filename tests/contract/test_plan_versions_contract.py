"""The plan-version repositories, the same assertions on the fake and on PostgreSQL (see
conftest.py): versions by code, the current one the highest, one live subscription per
user and plan code across versions, a subscription moved to another version."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from billing_worker.db.subscriptions import LIVE_UNIQUE, PlanRow, SubscriptionRow
from billing_worker.domain.errors import DuplicateKey
from support.contract import Repo

T0 = datetime(2000, 1, 1, tzinfo=UTC)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def a_plan(code: str, **fields: object) -> PlanRow:
    values: dict[str, object] = {
        "id": uuid.uuid4(), "code": code, "name": "Pro", "price_minor": 1000,
        "currency": "USD", "interval": "month", "interval_count": 1, "trial_days": 0,
        "stripe_price_id": None, "active": True, **fields,
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


async def versions_of(repo: Repo, code: str, count: int) -> list[PlanRow]:
    plans = repo.uow.plans
    first = await plans.upsert(a_plan(code))
    rows = [first]
    for version in range(2, count + 1):
        rows.append(await plans.add_version(a_plan(code, price_minor=1000 + version,
                                                    version=version)))  # fmt: skip
    return rows


async def test_versions_by_code_the_current_is_the_highest(repo: Repo) -> None:
    plans, code = repo.uow.plans, unique("plan")
    one, two = await versions_of(repo, code, 2)
    assert (one.version, two.version) == (1, 2)
    assert await plans.by_code(code, lock=True) == two
    assert await plans.version(code, 1) == one
    assert await plans.version(code, 3) is None
    assert await plans.versions(code) == [one, two]
    assert await plans.versions(unique("plan")) == []
    assert [p for p in await plans.listing(active_only=False) if p.code == code] == [two]
    with pytest.raises(DuplicateKey):  # a version another writer took first
        async with repo.savepoint():
            await plans.add_version(a_plan(code, version=2))
    renamed = await plans.upsert(a_plan(code, name="Pro 2", price_minor=1002, version=1))
    assert renamed == dataclasses.replace(two, name="Pro 2")  # in place: the current one
    assert await plans.version(code, 1) == one


async def test_one_live_subscription_per_user_and_plan_code_across_versions(
    repo: Repo,
) -> None:
    subs, user = repo.uow.subscriptions, unique("contract")
    await subs.ensure_user(user, None)
    one, two = await versions_of(repo, unique("plan"), 2)
    first = a_subscription(user, one)
    await subs.insert(first)
    with pytest.raises(DuplicateKey) as caught:
        async with repo.savepoint():
            await subs.insert(a_subscription(user, two))
    assert caught.value.constraint == LIVE_UNIQUE
    await subs.update(first.id, status="canceled", canceled_at=T0)
    await subs.insert(a_subscription(user, two))


async def test_live_subscriptions_of_a_version_move_to_another(repo: Repo) -> None:
    subs = repo.uow.subscriptions
    one, two = await versions_of(repo, unique("plan"), 2)
    rows = []
    for status in ("active", "past_due", "canceled"):
        user = unique("contract")
        await subs.ensure_user(user, None)
        row = a_subscription(user, one, status=status)
        await subs.insert(row)
        rows.append(row)
    live = await subs.live_on([one.id])
    assert [s.id for s in live] == sorted(r.id for r in rows[:2])
    assert await subs.live_on([two.id]) == []
    assert await subs.charging([r.id for r in rows]) == set()
    end = rows[0].current_period_end
    assert end is not None
    await subs.move_plan(rows[0], two, end, 1, end)
    moved = await subs.get(rows[0].id)
    assert moved == dataclasses.replace(
        rows[0], plan_id=two.id, plan=two, billing_anchor=end, anchor_offset=1
    )
    assert [s.id for s in await subs.live_on([two.id])] == [rows[0].id]
    assert await subs.record_charge(rows[0].id, 1, end, end + timedelta(days=1), None, two.id)
