"""Saved payment methods (handlers/payment_methods.py, handlers/method_setup.py) on the
fake unit of work: the owner rule of every command, the one default, detaching for good,
the provider's word on a setup, a subscription's method."""

from __future__ import annotations

from typing import Any

import pytest

from billing_contracts import events as ev
from billing_contracts.payment_methods import (
    DetachPaymentMethod,
    ListPaymentMethods,
    SetDefaultPaymentMethod,
    SetupPaymentMethod,
)
from billing_worker.db.intents import Intent
from billing_worker.db.payment_methods import Card
from billing_worker.domain.errors import NotFound
from billing_worker.domain.events import ProviderEvent
from billing_worker.handlers import method_setup
from billing_worker.handlers import payment_methods as methods
from billing_worker.handlers.deps import Deps
from billing_worker.handlers.provider_events import Applied, apply_provider_event
from support.clock import ManualClock
from support.fake_uow import FakeDatabase
from support.handler_kit import key, make_deps, new_user, run

VISA = Card("visa", "4242", 12, 2034)


@pytest.fixture
def db() -> FakeDatabase:
    return FakeDatabase(ManualClock())


@pytest.fixture
def deps() -> Deps:
    return make_deps()


async def saved(db: FakeDatabase, user: str, ref: str, provider: str = "yookassa") -> None:
    assert isinstance(db.clock, ManualClock)
    db.clock.advance(seconds=1)  # listed oldest first
    async with db.transaction() as uow:
        await uow.users.ensure(user)
        assert await methods.remember(uow, user, provider, ref, VISA) is not None


async def listed(db: FakeDatabase, deps: Deps, user: str) -> list[tuple[str, bool]]:
    found = await run(db, methods.list_methods, ListPaymentMethods(user_id=user), deps)
    return [(item.payment_method_id, item.is_default) for item in found.items]


async def settle(db: FakeDatabase, deps: Deps, intent: Intent) -> object:
    """Phases two and three, the provider being the sandbox's stand-in."""
    answer = await method_setup.call(intent, deps)
    async with db.transaction() as uow:
        return await method_setup.finish(intent, answer, uow, deps)


def detach(user: str, ref: str) -> DetachPaymentMethod:
    return DetachPaymentMethod(idempotency_key=key(), user_id=user, provider="yookassa",
                               payment_method_id=ref)  # fmt: skip


def set_default(user: str, ref: str) -> SetDefaultPaymentMethod:
    return SetDefaultPaymentMethod(idempotency_key=key(), user_id=user, provider="yookassa",
                                   payment_method_id=ref)  # fmt: skip


async def test_the_first_saved_method_is_the_default_and_is_announced_once(
    db: FakeDatabase, deps: Deps
) -> None:
    user = new_user()
    await saved(db, user, "pm_a")
    await saved(db, user, "pm_b")
    await saved(db, user, "pm_a")  # saved again (a second payment with it): nothing new

    assert await listed(db, deps, user) == [("pm_a", True), ("pm_b", False)]
    announced = db.events_of(ev.PAYMENT_METHOD_SAVED)
    assert [e["payment_method"]["payment_method_id"] for e in announced] == ["pm_a", "pm_b"]
    assert announced[0]["payment_method"]["last4"] == "4242"


async def test_a_method_saved_for_another_user_stays_theirs(db: FakeDatabase) -> None:
    owner, other = new_user(), new_user()
    await saved(db, owner, "pm_a")
    async with db.transaction() as uow:
        await uow.users.ensure(other)
        assert await methods.remember(uow, other, "yookassa", "pm_a", Card()) is None
    assert db.state.methods["yookassa", "pm_a"].user_id == owner
    assert len(db.events_of(ev.PAYMENT_METHOD_SAVED)) == 1


@pytest.mark.parametrize(
    ("handler", "command"),
    [(methods.detach, detach), (methods.set_default, set_default)],
    ids=["detach", "set-default"],
)
async def test_another_users_method_is_not_found_like_one_never_saved(
    db: FakeDatabase, deps: Deps, handler: Any, command: Any
) -> None:
    owner, attacker = new_user(), new_user()
    await saved(db, owner, "pm_a")

    with pytest.raises(NotFound) as theirs:
        await run(db, handler, command(attacker, "pm_a"), deps)
    with pytest.raises(NotFound) as unknown:
        await run(db, handler, command(attacker, "pm_never"), deps)

    assert str(theirs.value).replace("pm_a", "X") == str(unknown.value).replace("pm_never", "X")
    assert db.state.intents == {}  # nothing was asked of the provider
    assert await listed(db, deps, attacker) == []
    assert await listed(db, deps, owner) == [("pm_a", True)]


async def test_detaching_the_default_leaves_none_and_the_method_is_never_charged_again(
    db: FakeDatabase, deps: Deps
) -> None:
    user = new_user()
    await saved(db, user, "pm_a")
    await saved(db, user, "pm_b")

    intent = await run(db, methods.detach, detach(user, "pm_a"), deps)
    assert (intent.kind, intent.request["action"]) == ("payment_method_setup", "detach")
    out = await settle(db, deps, intent)

    assert getattr(out, "payment_method_id", None) == "pm_a"
    assert await listed(db, deps, user) == [("pm_b", False)]
    assert db.state.methods["yookassa", "pm_a"].detached_at is not None  # kept for history
    [removed] = db.events_of(ev.PAYMENT_METHOD_REMOVED)
    assert removed["payment_method"]["payment_method_id"] == "pm_a"
    async with db.transaction() as uow:
        assert await uow.users.payment_method_of(user, "yookassa", "pm_a") is None
        method_id = db.state.methods["yookassa", "pm_a"].id
        assert await uow.subscriptions.payment_method_ref(method_id) is None
    with pytest.raises(NotFound):  # detached: gone for every command
        await run(db, methods.set_default, set_default(user, "pm_a"), deps)


async def test_set_default_leaves_exactly_one_default(db: FakeDatabase, deps: Deps) -> None:
    user = new_user()
    await saved(db, user, "pm_a")
    await saved(db, user, "pm_b")

    await settle(db, deps, await run(db, methods.set_default, set_default(user, "pm_b"), deps))

    assert await listed(db, deps, user) == [("pm_a", False), ("pm_b", True)]


async def test_the_sandbox_setup_saves_its_test_card_at_once(db: FakeDatabase, deps: Deps) -> None:
    user = new_user()
    command = SetupPaymentMethod(idempotency_key=key(), user_id=user, provider="sandbox")
    intent = await run(db, method_setup.setup, command, deps)

    answer = await method_setup.call_setup(intent, deps)  # the sandbox's stand-in
    async with db.transaction() as uow:
        result = await method_setup.finish_setup(intent, answer, uow)

    assert result.status == "saved"
    assert result.payment_method is not None
    assert await listed(db, deps, user) == [(result.payment_method.payment_method_id, True)]


def setup_event(user: str, customer: str, method: str = "pm_new") -> ProviderEvent:
    """Stripe's `setup_intent.succeeded`, as the gateway confirms it (re-read at Stripe)."""
    return ProviderEvent(
        "stripe", key(), None, "seti_1", "setup_intent.succeeded", object_ref="seti_1",
        saved_method_ref=method,
        confirmation={"object": "setup_intent", "id": "seti_1", "user_id": user,
                      "customer": customer, "brand": "visa", "last4": "4242",
                      "exp_month": 12, "exp_year": 2034},
    )  # fmt: skip


async def test_a_setup_is_saved_only_for_the_user_whose_customer_it_was_for(
    db: FakeDatabase, deps: Deps
) -> None:
    owner, attacker = new_user(), new_user()
    async with db.transaction() as uow:
        for user, customer in ((owner, "cus_owner"), (attacker, "cus_attacker")):
            await uow.users.ensure(user)
            await uow.users.remember_customer(user, "stripe", customer)

    async with db.transaction() as uow:  # the attacker's name on the owner's customer
        forged = await apply_provider_event(setup_event(attacker, "cus_owner"), uow, deps, "x")
    async with db.transaction() as uow:
        genuine = await apply_provider_event(setup_event(owner, "cus_owner"), uow, deps, "x")

    assert (forged, genuine) == (Applied.UNTRUSTED, Applied.APPLIED)
    assert [(m.user_id, m.card.last4) for m in db.state.methods.values()] == [(owner, "4242")]


async def test_a_method_detached_by_a_concurrent_command_still_gets_its_answers(
    db: FakeDatabase, deps: Deps
) -> None:
    user = new_user()
    await saved(db, user, "pm_a")
    first = await run(db, methods.detach, detach(user, "pm_a"), deps)
    second = await run(db, methods.detach, detach(user, "pm_a"), deps)  # before the first ends
    default = await run(db, methods.set_default, set_default(user, "pm_a"), deps)

    await settle(db, deps, first)
    late = [await settle(db, deps, second), await settle(db, deps, default)]

    assert [getattr(out, "payment_method_id", None) for out in late] == ["pm_a", "pm_a"]
    assert [getattr(out, "is_default", None) for out in late] == [False, False]
    assert len(db.events_of(ev.PAYMENT_METHOD_REMOVED)) == 1  # removed once
    assert await listed(db, deps, user) == []
