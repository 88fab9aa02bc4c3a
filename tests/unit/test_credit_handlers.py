"""Admin credits on the fake unit of work: their own transaction kind, who granted them."""

from __future__ import annotations

import json

import pytest

from billing_contracts import events as ev
from billing_contracts.holds import GrantCredit
from billing_worker.handlers import credits
from billing_worker.handlers.deps import Deps
from support.fake_uow import FakeDatabase
from support.handler_kit import balance_of, key, make_deps, money, new_user, run, wire


@pytest.fixture
def db() -> FakeDatabase:
    return FakeDatabase()


@pytest.fixture
def deps() -> Deps:
    return make_deps(threshold="10")


def a_credit(user: str, amount: str = "15.00") -> GrantCredit:
    return GrantCredit.model_validate(
        {"idempotency_key": key(), "user_id": user, "amount": money(amount),
         "reason": "sorry for the outage"}
    )  # fmt: skip


async def test_a_credit_opens_the_account_and_records_who_granted_it(
    db: FakeDatabase, deps: Deps
) -> None:
    user = new_user()
    result = await run(db, credits.grant_by("billing-admin"), a_credit(user), deps)
    assert result.balance == wire("15.00")
    assert (result.transaction.kind, result.transaction.status) == ("credit", "completed")
    assert result.transaction.provider == "balance"
    assert await balance_of(db, user) == 1500
    row = db.state.transactions[result.transaction.id]
    assert row.description == "sorry for the outage"
    assert json.loads(db.state.metadata[row.id]) == {
        "granted_by": "billing-admin", "reason": "sorry for the outage"
    }  # fmt: skip
    assert [t.target for t in db.state.trails[row.id]] == ["created", "processing", "completed"]
    [granted] = db.events_of(ev.CREDIT_GRANTED)
    assert (granted["granted_by"], granted["balance"]) == ("billing-admin", money("15.00"))
    assert [e.type for e in db.events] == [ev.CREDIT_GRANTED]  # no payment, no deposit


async def test_credits_add_up_on_an_existing_account(db: FakeDatabase, deps: Deps) -> None:
    user = new_user()
    await run(db, credits.grant_by("a"), a_credit(user, "1.00"), deps)
    second = await run(db, credits.grant_by("b"), a_credit(user, "2.50"), deps)
    assert second.balance == wire("3.50")
    assert [d["granted_by"] for d in db.events_of(ev.CREDIT_GRANTED)] == ["a", "b"]
