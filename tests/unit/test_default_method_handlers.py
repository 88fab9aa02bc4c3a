"""The default method rule and a YooKassa setup's confirmation on the fake unit of work:
a deposit that names no method charges the user's live default at the provider (never
a detached one, never another user's), a named one wins; a confirmed YooKassa setup
(no customer at YooKassa) saves the card for the user YooKassa's payment names."""

from __future__ import annotations

import pytest

from billing_contracts.wallet import Deposit
from billing_worker.db.payment_methods import Card
from billing_worker.domain.events import ProviderEvent
from billing_worker.handlers import method_setup, wallet
from billing_worker.handlers import payment_methods as methods
from billing_worker.handlers.deps import Deps
from billing_worker.providers.yookassa.setup import SETUP_OBJECT
from support.clock import ManualClock
from support.fake_uow import FakeDatabase
from support.handler_kit import key, make_deps, new_user, run


@pytest.fixture
def db() -> FakeDatabase:
    return FakeDatabase(ManualClock())


@pytest.fixture
def deps() -> Deps:
    return make_deps()


async def saved(db: FakeDatabase, user: str, ref: str) -> None:
    assert isinstance(db.clock, ManualClock)
    db.clock.advance(seconds=1)
    async with db.transaction() as uow:
        await uow.users.ensure(user)
        assert await methods.remember(uow, user, "yookassa", ref, Card("visa", "4242")) is not None


def deposit(user: str, method: str | None = None) -> Deposit:
    return Deposit(idempotency_key=key(), user_id=user, provider="yookassa",
                   amount={"amount": "100.00", "currency": "RUB"},
                   payment_method_id=method, return_url="https://shop/back")  # fmt: skip


async def test_a_deposit_naming_no_method_charges_the_users_live_default(
    db: FakeDatabase, deps: Deps
) -> None:
    user, other = new_user(), new_user()
    await saved(db, user, "pm_a")
    await saved(db, user, "pm_b")

    by_default = await run(db, wallet.deposit, deposit(user), deps)
    named = await run(db, wallet.deposit, deposit(user, "pm_b"), deps)
    theirs = await run(db, wallet.deposit, deposit(other), deps)

    assert by_default.request["payment_method_id"] == "pm_a"
    assert by_default.request["default_method"] is True
    assert (named.request["payment_method_id"], named.request["default_method"]) == ("pm_b", False)
    assert theirs.request["payment_method_id"] is None  # another user's default is not theirs


async def test_a_detached_default_is_never_charged(db: FakeDatabase, deps: Deps) -> None:
    user = new_user()
    await saved(db, user, "pm_a")
    async with db.transaction() as uow:
        row = await uow.methods.get(user, "yookassa", "pm_a")
        assert row is not None
        await uow.methods.detach(row.id, uow.clock())

    intent = await run(db, wallet.deposit, deposit(user), deps)

    assert intent.request["payment_method_id"] is None  # the customer's path, as before
    assert intent.request["default_method"] is False


def yookassa_setup(user: str | None, method: str = "ym_card") -> ProviderEvent:
    return ProviderEvent(
        "yookassa", key(), None, "pay_1", "payment.waiting_for_capture", object_ref="pay_1",
        saved_method_ref=method,
        confirmation={"object": SETUP_OBJECT, "id": "pay_1", "user_id": user, "customer": None,
                      "brand": "MasterCard", "last4": "4444", "exp_month": 12,
                      "exp_year": 2030},
    )  # fmt: skip


async def test_a_confirmed_yookassa_setup_saves_the_card_for_the_user_it_names(
    db: FakeDatabase, deps: Deps
) -> None:
    owner, attacker = new_user(), new_user()
    async with db.transaction() as uow:
        await uow.users.ensure(owner)
        await uow.users.ensure(attacker)
        assert await method_setup.saved_by_provider(yookassa_setup(owner), uow)
        assert not await method_setup.saved_by_provider(yookassa_setup(None, "ym_x"), uow)
        # the same card claimed for another user: it stays the owner's
        assert not await method_setup.saved_by_provider(yookassa_setup(attacker), uow)

    row = db.state.methods["yookassa", "ym_card"]
    assert (row.user_id, row.card.brand, row.card.last4) == (owner, "MasterCard", "4444")
    assert ("yookassa", "ym_x") not in db.state.methods


async def test_a_stripe_setup_without_its_customer_still_saves_nothing(db: FakeDatabase) -> None:
    user = new_user()
    event = yookassa_setup(user)
    stripe = ProviderEvent(
        "stripe", key(), None, "seti_1", "setup_intent.succeeded", object_ref="seti_1",
        saved_method_ref="pm_1",
        confirmation=dict(event.confirmation or {}, object="setup_intent"),
    )  # fmt: skip
    async with db.transaction() as uow:
        await uow.users.ensure(user)
        assert not await method_setup.saved_by_provider(stripe, uow)
