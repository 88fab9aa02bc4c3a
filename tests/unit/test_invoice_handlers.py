"""The invoice handlers' rules on the fake unit of work: no PostgreSQL, no RabbitMQ."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from billing_contracts import events as ev
from billing_contracts.invoices import CreateInvoice, GetInvoices, InvoicePage, PayInvoice
from billing_contracts.orders import OrderCreated
from billing_worker.domain.errors import (
    CurrencyMismatch,
    InsufficientFunds,
    InvalidInput,
    InvalidState,
    NotFound,
    Unprocessable,
)
from billing_worker.handlers import invoices
from billing_worker.handlers.deps import Deps
from support.clock import ManualClock
from support.fake_uow import FakeDatabase
from support.handler_kit import balance_of, deposit, key, make_deps, money, new_user, run, wire


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def db(clock: ManualClock) -> FakeDatabase:
    return FakeDatabase(clock)


@pytest.fixture
def deps() -> Deps:
    return make_deps(threshold="10")


def line(description: str, quantity: int, price: str, currency: str = "USD") -> dict[str, Any]:
    return {"description": description, "quantity": quantity, "unit_price": money(price, currency)}


def an_invoice(
    user: str, *lines: dict[str, Any], currency: str = "USD", **extra: Any
) -> CreateInvoice:
    return CreateInvoice.model_validate(
        {
            "idempotency_key": key(),
            "user_id": user,
            "currency": currency,
            "lines": list(lines) or [line("Pro plan", 1, "20.00")],
            **extra,
        }
    )


def an_order(user: str, order_id: str, *items: dict[str, Any]) -> OrderCreated:
    return OrderCreated.model_validate(
        {
            "order_id": order_id,
            "user_id": user,
            "currency": "USD",
            "items": list(items) or [line("Blue mug", 2, "4.50")],
        }
    )


def pay(user: str, invoice_id: uuid.UUID) -> PayInvoice:
    return PayInvoice(idempotency_key=key(), user_id=user, invoice_id=invoice_id, source="balance")


async def test_an_invoice_is_issued_open_numbered_with_exact_totals_and_announced(
    db: FakeDatabase, deps: Deps
) -> None:
    user = new_user()
    command = an_invoice(user, line("Seat", 3, "0.10"), line("Setup", 1, "19.99"))
    out = await run(db, invoices.create_invoice, command, deps)
    assert (out.status, out.total, out.paid_at) == ("open", wire("20.29"), None)
    assert [ln.amount for ln in out.lines] == [wire("0.30"), wire("19.99")]
    assert out.number.endswith("-000001")
    [event] = db.events_of(ev.INVOICE_CREATED)
    assert (event["number"], event["total"]) == (out.number, money("20.29"))


async def test_invoices_get_consecutive_numbers(db: FakeDatabase, deps: Deps) -> None:
    numbers = [
        (await run(db, invoices.create_invoice, an_invoice(new_user()), deps)).number
        for _ in range(3)
    ]
    assert [int(n.rsplit("-", 1)[1]) for n in numbers] == [1, 2, 3]


async def test_a_line_in_another_currency_is_a_currency_mismatch(
    db: FakeDatabase, deps: Deps
) -> None:
    command = an_invoice(new_user(), line("Seat", 1, "1.00", "EUR"))
    with pytest.raises(CurrencyMismatch):
        await run(db, invoices.create_invoice, command, deps)
    assert db.state.invoices == {}
    assert db.state.numbers == {}


async def test_an_order_invoiced_already_is_refused_with_the_existing_invoice(
    db: FakeDatabase, deps: Deps
) -> None:
    user = new_user()
    first = await run(db, invoices.create_invoice, an_invoice(user, order_id="ord-1"), deps)
    with pytest.raises(InvalidState) as refused:
        await run(db, invoices.create_invoice, an_invoice(user, order_id="ord-1"), deps)
    assert refused.value.details["number"] == first.number
    assert len(db.state.invoices) == 1


async def test_the_same_order_delivered_again_makes_one_invoice_and_one_event(
    db: FakeDatabase, deps: Deps
) -> None:
    user = new_user()
    for _ in range(3):
        await run(db, invoices.create_invoice_for_order, an_order(user, "ord-7"), deps)
    [invoice] = db.state.invoices.values()
    assert (invoice.order_id, invoice.total_minor, invoice.status) == ("ord-7", 900, "open")
    assert len(db.events_of(ev.INVOICE_CREATED)) == 1


async def test_an_order_that_cannot_be_invoiced_is_unprocessable_and_writes_nothing(
    db: FakeDatabase, deps: Deps
) -> None:
    order = an_order(new_user(), "ord-8", line("Mug", 1, "1.00", "EUR"))
    with pytest.raises(Unprocessable, match="currency_mismatch"):
        await run(db, invoices.create_invoice_for_order, order, deps)
    assert db.state.invoices == {}


async def test_an_invoice_is_paid_from_the_balance_and_announced(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    user = new_user()
    await deposit(db, deps, user, "50.00")
    invoice = await run(db, invoices.create_invoice, an_invoice(user), deps)
    clock.advance(minutes=5)
    paid = await run(db, invoices.pay_invoice, pay(user, invoice.id), deps)
    assert (paid.status, paid.paid_at) == ("paid", clock.now)
    assert await balance_of(db, user) == 3000
    [charge] = [t for t in db.state.transactions.values() if t.kind == "invoice_payment"]
    assert (charge.amount_minor, charge.invoice_id, charge.status) == (
        2000,
        invoice.id,
        "completed",
    )
    assert [e.type for e in db.events[-2:]] == [ev.PAYMENT_SUCCESS, ev.INVOICE_PAID]


async def test_paying_a_paid_invoice_again_is_invalid_state_and_charges_once(
    db: FakeDatabase, deps: Deps
) -> None:
    user = new_user()
    await deposit(db, deps, user, "50.00")
    invoice = await run(db, invoices.create_invoice, an_invoice(user), deps)
    await run(db, invoices.pay_invoice, pay(user, invoice.id), deps)
    with pytest.raises(InvalidState):
        await run(db, invoices.pay_invoice, pay(user, invoice.id), deps)
    assert await balance_of(db, user) == 3000
    assert len(db.events_of(ev.INVOICE_PAID)) == 1


async def test_paying_without_funds_is_insufficient_funds_and_the_invoice_stays_open(
    db: FakeDatabase, deps: Deps
) -> None:
    user = new_user()
    await deposit(db, deps, user, "19.99")
    invoice = await run(db, invoices.create_invoice, an_invoice(user), deps)
    with pytest.raises(InsufficientFunds) as refused:
        await run(db, invoices.pay_invoice, pay(user, invoice.id), deps)
    assert refused.value.details["balance"] == money("19.99")
    assert db.state.invoices[invoice.id].status == "open"
    assert await balance_of(db, user) == 1999
    assert db.events_of(ev.INVOICE_PAID) == []


async def test_a_free_invoice_is_paid_without_moving_money(db: FakeDatabase, deps: Deps) -> None:
    user = new_user()
    invoice = await run(db, invoices.create_invoice, an_invoice(user, line("Gift", 1, "0")), deps)
    paid = await run(db, invoices.pay_invoice, pay(user, invoice.id), deps)
    assert paid.status == "paid"
    assert db.state.transactions == {}
    assert await balance_of(db, user) is None


async def test_paying_below_the_threshold_announces_balance_low(
    db: FakeDatabase, deps: Deps
) -> None:
    user = new_user()
    await deposit(db, deps, user, "25.00")
    invoice = await run(db, invoices.create_invoice, an_invoice(user), deps)
    await run(db, invoices.pay_invoice, pay(user, invoice.id), deps)
    assert [e["balance"] for e in db.events_of(ev.BALANCE_LOW)] == [money("5.00")]


async def test_another_users_invoice_is_not_found_exactly_like_an_unknown_one(
    db: FakeDatabase, deps: Deps
) -> None:
    owner, other = new_user(), new_user()
    await deposit(db, deps, other, "50.00")
    invoice = await run(db, invoices.create_invoice, an_invoice(owner), deps)
    unknown = uuid.uuid4()
    for invoice_id in (invoice.id, unknown):
        with pytest.raises(NotFound) as paying:
            await run(db, invoices.pay_invoice, pay(other, invoice_id), deps)
        with pytest.raises(NotFound) as getting:
            await run(
                db, invoices.get_invoices, GetInvoices(user_id=other, invoice_id=invoice_id), deps
            )
        assert paying.value.details == getting.value.details == {"invoice_id": str(invoice_id)}
    assert db.state.invoices[invoice.id].status == "open"
    assert await balance_of(db, other) == 5000


async def test_an_invoice_is_got_by_id(db: FakeDatabase, deps: Deps) -> None:
    user = new_user()
    created = await run(db, invoices.create_invoice, an_invoice(user), deps)
    got = await run(
        db, invoices.get_invoices, GetInvoices(user_id=user, invoice_id=created.id), deps
    )
    assert got == created


async def test_a_users_invoices_are_paged_newest_first_with_a_cursor(
    db: FakeDatabase, deps: Deps, clock: ManualClock
) -> None:
    user = new_user()
    made = []
    for _ in range(3):
        clock.advance(seconds=1)
        made.append((await run(db, invoices.create_invoice, an_invoice(user), deps)).id)
    await run(db, invoices.create_invoice, an_invoice(new_user()), deps)  # someone else's
    first = await run(db, invoices.get_invoices, GetInvoices(user_id=user, limit=2), deps)
    assert isinstance(first, InvoicePage)
    assert [i.id for i in first.items] == made[:0:-1]
    query = GetInvoices(user_id=user, limit=2, cursor=first.next_cursor)
    rest = await run(db, invoices.get_invoices, query, deps)
    assert isinstance(rest, InvoicePage)
    assert ([i.id for i in rest.items], rest.next_cursor) == ([made[0]], None)


async def test_a_forged_invoice_cursor_is_invalid_input(db: FakeDatabase, deps: Deps) -> None:
    with pytest.raises(InvalidInput):
        await run(db, invoices.get_invoices, GetInvoices(user_id=new_user(), cursor="x|y"), deps)
