"""Invoices end to end: orders and commands in through RabbitMQ, invoices and events out."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from billing_worker.app import Worker
from billing_worker.db.engine import driver_connection
from billing_worker.db.invoices import NewInvoice, SqlInvoices
from billing_worker.domain.invoices import Line, Priced, number_value
from support.rpc import Bus

pytestmark = pytest.mark.integration

CREATE, PAY, GET = "billing.invoice.create", "billing.invoice.pay", "billing.invoice.get"
DEPOSIT, BALANCE = "billing.wallet.deposit", "billing.wallet.balance"
TRANSACTIONS = "billing.wallet.transactions"


def new_user() -> str:
    return f"user-{uuid.uuid4().hex[:12]}"


def key() -> str:
    return uuid.uuid4().hex


def money(amount: str, currency: str = "USD") -> dict[str, str]:
    return {"amount": amount, "currency": currency}


def item(amount: str, quantity: int = 1, currency: str = "USD") -> dict[str, Any]:
    return {"description": "Blue mug", "quantity": quantity, "unit_price": money(amount, currency)}


def untaxed() -> dict[str, Any]:
    """The tax fields of a line without a tax rate (added with tax rates), its zero
    discount (added with coupons) and the Stripe mirror's line flags (null on ours)."""
    return {
        "tax_rate": None, "tax_percent": None, "tax_inclusive": None, "tax": money("0.00"),
        "discount": money("0.00"), "proration": None, "credit": None,
    }  # fmt: skip


def order(user: str, order_id: str | None = None, **changes: Any) -> dict[str, Any]:
    body = {
        "order_id": order_id or f"ord-{uuid.uuid4().hex}",
        "user_id": user,
        "currency": "USD",
        "items": [{"sku": "SKU-1", **item("4.50", 2)}, item("1.00")],
    }
    return {**body, **changes}


async def create(bus: Bus, user: str, *lines: dict[str, Any], **fields: Any) -> dict[str, Any]:
    command = {"idempotency_key": key(), "user_id": user, "currency": "USD"}
    return await bus.call(CREATE, {**command, "lines": list(lines) or [item("3.00")], **fields})


async def created(bus: Bus, user: str, *lines: dict[str, Any], **fields: Any) -> dict[str, Any]:
    reply = await create(bus, user, *lines, **fields)
    assert reply["ok"], reply
    return reply["data"]  # type: ignore[no-any-return]


async def pay(
    bus: Bus, user: str, invoice_id: str, idempotency_key: str | None = None
) -> dict[str, Any]:
    command = {"idempotency_key": idempotency_key or key(), "user_id": user}
    return await bus.call(PAY, {**command, "invoice_id": invoice_id, "source": "balance"})


async def fund(bus: Bus, user: str, amount: str) -> None:
    reply = await bus.call(
        DEPOSIT, {"idempotency_key": key(), "user_id": user, "amount": money(amount)}
    )
    assert reply["ok"], reply
    deposit_id = reply["data"]["transaction"]["id"]
    await bus.event("deposit.completed", lambda d: d["transaction_id"] == deposit_id)


async def balance_of(bus: Bus, user: str) -> str:
    accounts = (await bus.call(BALANCE, {"user_id": user, "currency": "USD"}))["data"]["accounts"]
    return str(accounts[0]["balance"]["amount"]) if accounts else "none"


async def invoices_of(bus: Bus, user: str, **paging: Any) -> dict[str, Any]:
    reply = await bus.call(GET, {"user_id": user, **paging})
    assert reply["ok"], reply
    return reply["data"]  # type: ignore[no-any-return]


async def test_the_same_order_delivered_five_times_makes_one_invoice_and_one_event(
    bus: Bus,
) -> None:
    user = new_user()
    body = order(user)
    for _ in range(5):
        await bus.send("order.created", body, exchange="orders")

    event = await bus.event("invoice.created", lambda d: d["order_id"] == body["order_id"])
    await asyncio.sleep(1)  # time for a duplicate invoice or event to show up

    assert len(bus.events_of("invoice.created", lambda d: d["user_id"] == user)) == 1
    [invoice] = (await invoices_of(bus, user))["items"]
    data = event["data"]
    assert data["invoice_id"] == invoice["id"]
    assert data["number"] == invoice["number"]
    assert (data["status"], data["currency"], data["paid_at"]) == ("open", "USD", None)
    assert data["subtotal"] == data["total"] == money("10.00")
    assert data["lines"][0] == {**item("4.50", 2), "amount": money("9.00"), **untaxed()}
    assert invoice["total"] == money("10.00")


BAD_ORDERS = {
    "a schema failure": ({"items": []}, "invalid_message: items"),
    "an unknown currency": ({"currency": "XYZ"}, "invalid_message: currency"),
    "an item in another currency": (
        {"items": [item("1.00"), item("1.00", currency="EUR")]},
        "unprocessable: Unprocessable: order ",
    ),
}


@pytest.mark.parametrize("case", list(BAD_ORDERS))
async def test_an_invalid_order_is_dead_lettered_with_the_reason(bus: Bus, case: str) -> None:
    changes, reason = BAD_ORDERS[case]
    user = new_user()

    correlation_id = await bus.send("order.created", order(user, **changes), exchange="orders")

    dead = await bus.dead_letter(correlation_id)
    assert str(dead.headers["x-billing-reason"]).startswith(reason)
    assert dead.headers["x-billing-original-queue"] == "billing.orders.order-created"
    assert (await invoices_of(bus, user))["items"] == []


async def test_an_item_in_another_currency_names_the_mismatch_in_the_reason(bus: Bus) -> None:
    bad = order(new_user(), items=[item("1.00", currency="EUR")])
    dead = await bus.dead_letter(await bus.send("order.created", bad, exchange="orders"))
    assert "currency_mismatch" in str(dead.headers["x-billing-reason"])


async def test_50_concurrent_creations_get_50_consecutive_numbers(bus: Bus) -> None:
    user = new_user()
    invoices = await asyncio.gather(*(created(bus, user) for _ in range(50)))

    numbers = sorted(number_value(invoice["number"]) for invoice in invoices)
    year = datetime.now(UTC).year
    assert {number_year for number_year, _ in numbers} == {year}
    values = [value for _, value in numbers]
    assert values == list(range(values[0], values[0] + 50))


async def test_a_number_taken_by_a_rolled_back_creation_is_given_back(
    bus: Bus, worker: Worker
) -> None:
    user = new_user()
    year, last = number_value((await created(bus, user))["number"])
    lines = (Line("lost", 1, 100, 100),)
    doomed = NewInvoice(
        uuid.uuid4(), user, None, "open", Priced("USD", lines, 100, 100), None, datetime.now(UTC)
    )
    async with driver_connection(worker.engine) as db:
        with contextlib.suppress(ZeroDivisionError):
            async with db.transaction():
                row = await SqlInvoices(db).create(doomed)
                assert row is not None
                assert number_value(row.number) == (year, last + 1)
                raise ZeroDivisionError  # the creation fails after it took its number

    assert number_value((await created(bus, user))["number"]) == (year, last + 1)


async def test_concurrent_creations_for_one_order_make_one_invoice_and_leave_no_gap(
    bus: Bus,
) -> None:
    user, order_id = new_user(), f"ord-{uuid.uuid4().hex}"

    replies = await asyncio.gather(*(create(bus, user, order_id=order_id) for _ in range(10)))

    [winner] = [reply["data"] for reply in replies if reply["ok"]]
    refusals = [reply["error"] for reply in replies if not reply["ok"]]
    assert {error["code"] for error in refusals} == {"invalid_state"}
    assert all(error["details"]["invoice_id"] == winner["id"] for error in refusals)
    assert all(error["details"]["number"] == winner["number"] for error in refusals)
    year, value = number_value(winner["number"])
    assert number_value((await created(bus, user))["number"]) == (year, value + 1)


@pytest.mark.parametrize(
    ("currency", "lines", "amounts", "total"),
    [
        ("USD", [("0.10", 3), ("19.99", 2), ("0", 5)], ["0.30", "39.98", "0.00"], "40.28"),
        ("JPY", [("1500", 7), ("1", 1)], ["10500", "1"], "10501"),
        ("KWD", [("0.125", 3), ("10.005", 2)], ["0.375", "20.010"], "20.385"),
    ],
)
async def test_totals_are_exact_in_minor_units_of_each_currency(
    bus: Bus, currency: str, lines: list[tuple[str, int]], amounts: list[str], total: str
) -> None:
    priced = [item(amount, quantity, currency) for amount, quantity in lines]
    invoice = await created(bus, new_user(), *priced, currency=currency)
    assert [line["amount"] for line in invoice["lines"]] == [money(a, currency) for a in amounts]
    assert invoice["total"] == money(total, currency)
    assert (invoice["status"], invoice["currency"]) == ("open", currency)


async def test_a_line_in_another_currency_is_a_currency_mismatch(bus: Bus) -> None:
    user = new_user()
    reply = await create(bus, user, item("1.00"), item("1.00", currency="EUR"))
    assert reply["error"]["code"] == "currency_mismatch"
    assert reply["error"]["details"] == {"line": 1, "currency": "EUR", "invoice_currency": "USD"}
    assert (await invoices_of(bus, user))["items"] == []


async def test_a_total_beyond_bigint_is_refused_as_invalid_message(bus: Bus) -> None:
    huge = item("9000000000000000000", 2, "JPY")
    reply = await create(bus, new_user(), huge, currency="JPY")
    assert reply["error"]["code"] == "invalid_message"


async def test_an_order_invoiced_already_is_refused_with_the_existing_invoice(bus: Bus) -> None:
    user = new_user()
    first = await created(bus, user, order_id="ord-" + key(), due_at="2030-01-31T00:00:00Z")
    again = await create(bus, user, order_id=first["order_id"])
    assert first["due_at"] == "2030-01-31T00:00:00Z"
    assert again["error"]["code"] == "invalid_state"
    assert again["error"]["details"]["invoice_id"] == first["id"]
    assert again["error"]["details"]["number"] == first["number"]


async def test_an_invoice_is_paid_from_the_balance_and_announced(bus: Bus, worker: Worker) -> None:
    user = new_user()
    await fund(bus, user, "12.00")
    invoice = await created(bus, user, item("2.50", 2))

    reply = await pay(bus, user, invoice["id"])

    assert reply["ok"], reply
    assert reply["data"]["status"] == "paid"
    assert reply["data"]["paid_at"] is not None
    assert await balance_of(bus, user) == "7.00"
    paid = await bus.event("invoice.paid", lambda d: d["invoice_id"] == invoice["id"])
    assert paid["data"]["status"] == "paid"
    assert paid["data"]["total"] == money("5.00")
    success = await bus.event(
        "payment.success", lambda d: d["user_id"] == user and d["kind"] == "invoice_payment"
    )
    assert (success["data"]["provider"], success["data"]["status"]) == ("balance", "completed")
    low = await bus.event("balance.low", lambda d: d["user_id"] == user)
    assert low["data"]["balance"] == money("7.00")
    history = (await bus.call(TRANSACTIONS, {"user_id": user}))["data"]["items"]
    assert (history[0]["kind"], history[0]["amount"]) == ("invoice_payment", money("5.00"))
    async with driver_connection(worker.engine) as db:
        linked = await db.fetchval(
            "SELECT invoice_id FROM transactions WHERE id = $1", uuid.UUID(history[0]["id"])
        )
        trail = await db.fetch(
            "SELECT from_status, to_status FROM transaction_transitions "
            "WHERE transaction_id = $1 ORDER BY id",
            uuid.UUID(history[0]["id"]),
        )
    assert str(linked) == invoice["id"]
    assert [(r["from_status"], r["to_status"]) for r in trail] == [
        (None, "created"),
        ("created", "processing"),
        ("processing", "completed"),
    ]


async def test_paying_a_paid_invoice_again_is_invalid_state_and_charges_once(bus: Bus) -> None:
    user = new_user()
    await fund(bus, user, "20.00")
    invoice = await created(bus, user)
    first = key()

    first_reply = await pay(bus, user, invoice["id"], first)
    assert first_reply["ok"]
    replayed = await pay(bus, user, invoice["id"], first)
    again = await pay(bus, user, invoice["id"])

    assert replayed == first_reply
    assert again["error"]["code"] == "invalid_state"
    assert again["error"]["details"] == {"status": "paid", "requested": "paid"}
    assert await balance_of(bus, user) == "17.00"


async def test_paying_without_funds_is_insufficient_funds_and_the_invoice_stays_open(
    bus: Bus,
) -> None:
    user = new_user()
    await fund(bus, user, "2.99")
    invoice = await created(bus, user)

    reply = await pay(bus, user, invoice["id"])

    assert reply["error"]["code"] == "insufficient_funds"
    assert reply["error"]["details"]["balance"] == money("2.99")
    assert await balance_of(bus, user) == "2.99"
    current = await bus.call(GET, {"user_id": user, "invoice_id": invoice["id"]})
    assert (current["data"]["status"], current["data"]["paid_at"]) == ("open", None)
    assert not bus.events_of("invoice.paid", lambda d: d["invoice_id"] == invoice["id"])


async def test_concurrent_pays_of_one_invoice_let_exactly_one_through(bus: Bus) -> None:
    user = new_user()
    await fund(bus, user, "30.00")
    invoice = await created(bus, user)

    replies = await asyncio.gather(*(pay(bus, user, invoice["id"]) for _ in range(10)))

    assert len([reply for reply in replies if reply["ok"]]) == 1
    assert {r["error"]["code"] for r in replies if not r["ok"]} == {"invalid_state"}
    assert await balance_of(bus, user) == "27.00"
    history = (await bus.call(TRANSACTIONS, {"user_id": user}))["data"]["items"]
    assert [t["kind"] for t in history] == ["invoice_payment", "deposit"]


async def test_a_free_invoice_is_paid_without_moving_money(bus: Bus) -> None:
    user = new_user()
    invoice = await created(bus, user, item("0.00", 3))

    reply = await pay(bus, user, invoice["id"])

    assert reply["data"]["status"] == "paid"
    assert reply["data"]["total"] == money("0.00")
    await bus.event("invoice.paid", lambda d: d["invoice_id"] == invoice["id"])
    assert (await bus.call(TRANSACTIONS, {"user_id": user}))["data"]["items"] == []


async def test_an_unknown_invoice_is_not_found_for_pay_and_get(bus: Bus) -> None:
    unknown, user = str(uuid.uuid4()), new_user()
    paid = await pay(bus, user, unknown)
    got = await bus.call(GET, {"user_id": user, "invoice_id": unknown})
    assert paid["error"]["code"] == got["error"]["code"] == "not_found"
    assert got["error"]["details"] == {"invoice_id": unknown}


async def test_an_invoice_is_got_by_id(bus: Bus) -> None:
    user = new_user()
    invoice = await created(bus, user, item("1.25", 4), due_at="2031-05-01T12:00:00Z")
    reply = await bus.call(GET, {"user_id": user, "invoice_id": invoice["id"]})
    assert reply == {"ok": True, "data": invoice}
    assert invoice["lines"] == [{**item("1.25", 4), "amount": money("5.00"), **untaxed()}]


async def test_a_users_invoices_are_paged_newest_first_with_a_cursor(bus: Bus) -> None:
    user = new_user()
    numbers = [(await created(bus, user))["number"] for _ in range(3)]

    first = await invoices_of(bus, user, limit=2)
    second = await invoices_of(bus, user, limit=2, cursor=first["next_cursor"])

    assert [i["number"] for i in first["items"] + second["items"]] == numbers[::-1]
    assert second["next_cursor"] is None
    assert (await invoices_of(bus, new_user()))["items"] == []


async def test_a_forged_invoice_cursor_is_invalid_message(bus: Bus) -> None:
    reply = await bus.call(GET, {"user_id": new_user(), "cursor": "forged"})
    assert reply["error"]["code"] == "invalid_message"
