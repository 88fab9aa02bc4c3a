"""The Python client (`billing_contracts.client`) against a real worker: every command and
query, typed errors, timeouts, 1,000 concurrent calls on one connection, typed events."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel
from pydantic import ValidationError

from billing_contracts import names
from billing_contracts.client import (
    BillingClient,
    BillingTimeout,
    BillingUnavailable,
    Event,
    EventStream,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidState,
    NotFound,
)
from billing_contracts.events import DepositCompleted, PaymentSucceeded
from billing_contracts.invoices import InvoiceLineIn, InvoiceOut, InvoiceStatus
from billing_contracts.money import Money
from billing_contracts.plans import Interval
from billing_contracts.subscriptions import PaymentSource, SubscriptionStatus
from billing_contracts.wallet import (
    BalanceResult,
    GetBalance,
    Provider,
    TransactionKind,
    TransactionStatus,
    WithdrawResult,
)
from billing_worker.app import Worker

pytestmark = pytest.mark.integration

WAIT = 30.0  # generous: the machine is shared with other test runs


@pytest.fixture
async def billing(worker: Worker, rabbitmq_url: str) -> AsyncIterator[BillingClient]:
    async with BillingClient(rabbitmq_url, timeout=WAIT, connection_name="test-client") as client:
        yield client
        assert client.in_flight == 0


@pytest.fixture
async def amqp(rabbitmq_url: str) -> AsyncIterator[AbstractChannel]:
    """A plain channel of our own, for what the client deliberately cannot do."""
    connection = await aio_pika.connect(rabbitmq_url)
    yield await connection.channel()
    await connection.close()


def new_user() -> str:
    return f"client-user-{uuid.uuid4().hex[:12]}"


def key() -> str:
    return uuid.uuid4().hex


def usd(amount: str) -> Money:
    return Money(amount=amount, currency="USD")


async def first(
    stream: EventStream, match: Callable[[Event], bool] = lambda _: True, timeout: float = WAIT
) -> Event:
    async with asyncio.timeout(timeout):
        async for event in stream:
            if match(event):
                return event
    raise AssertionError("the stream ended")


def completes(transaction_id: uuid.UUID) -> Callable[[Event], bool]:
    return lambda e: (
        isinstance(e.data, DepositCompleted) and e.data.transaction_id == transaction_id
    )


async def fund(billing: BillingClient, user: str, amount: str) -> None:
    async with billing.events("deposit.completed") as stream:
        result = await billing.deposit(user_id=user, amount=usd(amount), idempotency_key=key())
        await first(stream, completes(result.transaction.id))


async def publish_event(amqp: AbstractChannel, event: dict[str, Any] | bytes, type_: str) -> None:
    exchange = await amqp.get_exchange(names.EVENTS_EXCHANGE, ensure=False)
    body = event if isinstance(event, bytes) else json.dumps(event).encode()
    await exchange.publish(aio_pika.Message(body, content_type="application/json"), type_)


def raw_event(type_: str, **data: Any) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "type": type_,
        "occurred_at": datetime.now(UTC).isoformat(),
        "version": 1,
        "data": data,
    }


async def test_a_deposit_replies_processing_and_the_event_helper_yields_the_typed_completion(
    billing: BillingClient,
) -> None:
    user = new_user()
    async with billing.events("deposit.completed", "payment.success") as stream:
        result = await billing.deposit(
            user_id=user, amount=usd("25.50"), provider="sandbox", idempotency_key=key()
        )
        assert result.transaction.status is TransactionStatus.PROCESSING
        assert result.transaction.kind is TransactionKind.DEPOSIT
        assert result.transaction.provider == Provider.SANDBOX
        found: dict[str, Event] = {}
        async with asyncio.timeout(WAIT):
            async for event in stream:
                if getattr(event.data, "transaction_id", None) == result.transaction.id:
                    found[event.type] = event
                    if len(found) == 2:
                        break

    completed, success = found["deposit.completed"], found["payment.success"]
    assert isinstance(completed.data, DepositCompleted)
    assert (completed.data.user_id, completed.data.amount) == (user, usd("25.50"))
    assert completed.data.balance == usd("25.50")
    assert completed.version == 1
    assert isinstance(success.data, PaymentSucceeded)
    assert success.data.status == "completed"
    assert (await billing.balance(user_id=user)).accounts[0].balance == usd("25.50")


async def test_withdraw_balance_and_transactions_return_their_typed_replies(
    billing: BillingClient,
) -> None:
    user = new_user()
    await fund(billing, user, "20.00")

    withdrawn = await billing.withdraw(
        user_id=user,
        amount=usd("7.25"),
        description="a mug",
        reference="order-1",
        idempotency_key=key(),
    )
    balance = await billing.balance(user_id=user)
    only_usd = await billing.balance(user_id=user, currency="USD")
    page = await billing.transactions(user_id=user, limit=1)
    rest = await billing.transactions(user_id=user, limit=1, cursor=page.next_cursor)

    assert withdrawn.balance == usd("12.75")
    assert withdrawn.transaction.status is TransactionStatus.COMPLETED
    assert withdrawn.transaction.user_id == user
    assert balance.user_id == user
    assert [(a.currency, a.balance) for a in balance.accounts] == [("USD", usd("12.75"))]
    assert only_usd == balance
    assert [t.kind for t in page.items + rest.items] == [
        TransactionKind.WITHDRAWAL,
        TransactionKind.DEPOSIT,
    ]
    assert page.items[0].id == withdrawn.transaction.id
    assert rest.next_cursor is None


async def test_a_retry_with_the_same_key_returns_the_first_reply(billing: BillingClient) -> None:
    user, same = new_user(), key()
    await fund(billing, user, "10.00")
    first_reply = await billing.withdraw(
        user_id=user, amount=usd("3.00"), description="once", idempotency_key=same
    )
    again = await billing.withdraw(
        user_id=user, amount=usd("3.00"), description="once", idempotency_key=same
    )
    assert again == first_reply
    assert (await billing.balance(user_id=user)).accounts[0].balance == usd("7.00")


async def test_plans_are_upserted_and_listed(billing: BillingClient) -> None:
    code = f"client-plan-{uuid.uuid4().hex[:8]}"

    plan = await billing.upsert_plan(
        code=code, name="Pro", price=usd("5.00"), interval="month", idempotency_key=key()
    )
    changed = await billing.upsert_plan(
        code=code,
        name="Pro+",
        price=usd("50.00"),
        interval=Interval.YEAR,
        trial_days=7,
        active=False,
        idempotency_key=key(),
    )
    active = await billing.list_plans()
    every = await billing.list_plans(active_only=False)

    assert (plan.code, plan.interval, plan.price, plan.active) == (
        code,
        Interval.MONTH,
        usd("5.00"),
        True,
    )
    assert (changed.name, changed.interval, changed.trial_days) == ("Pro+", Interval.YEAR, 7)
    assert code not in [p.code for p in active.plans]
    assert changed in every.plans


async def test_a_balance_subscription_is_created_got_listed_and_canceled(
    billing: BillingClient,
) -> None:
    user, code = new_user(), f"client-plan-{uuid.uuid4().hex[:8]}"
    await billing.upsert_plan(
        code=code, name="Pro", price=usd("10.00"), interval="month", idempotency_key=key()
    )
    await fund(billing, user, "30.00")

    created = await billing.create_subscription(
        user_id=user, plan_code=code, payment_source="balance", idempotency_key=key()
    )
    sub = created.subscription
    got = await billing.get_subscription(user_id=user, subscription_id=sub.id)
    listed = await billing.list_subscriptions(user_id=user)
    at_end = await billing.cancel_subscription(
        user_id=user, subscription_id=sub.id, idempotency_key=key()
    )
    now = await billing.cancel_subscription(
        user_id=user, subscription_id=str(sub.id), at_period_end=False, reason="leaving",
        idempotency_key=key(),
    )  # fmt: skip

    assert (sub.status, sub.payment_source) == (SubscriptionStatus.ACTIVE, PaymentSource.BALANCE)
    assert created.payment_action is None
    assert got == sub
    assert listed.subscriptions == [sub]
    assert (at_end.status, at_end.cancel_at_period_end) == (SubscriptionStatus.ACTIVE, True)
    assert now.status is SubscriptionStatus.CANCELED
    assert (await billing.get_subscription(user_id=user, subscription_id=sub.id)).status == (
        "canceled"
    )
    assert (await billing.balance(user_id=user)).accounts[0].balance == usd("20.00")
    with pytest.raises(InvalidState) as ended:
        await billing.cancel_subscription(
            user_id=user, subscription_id=sub.id, at_period_end=False, idempotency_key=key()
        )
    assert ended.value.code == "invalid_state"


async def test_invoices_are_created_paid_got_and_listed(billing: BillingClient) -> None:
    user = new_user()
    await fund(billing, user, "10.00")

    invoice = await billing.create_invoice(
        user_id=user,
        currency="USD",
        lines=[InvoiceLineIn(description="Blue mug", quantity=2, unit_price=usd("3.00"))],
        due_at=datetime(2031, 5, 1, 12, tzinfo=UTC),
        order_id=f"client-order-{uuid.uuid4().hex[:8]}",
        idempotency_key=key(),
    )
    paid = await billing.pay_invoice(user_id=user, invoice_id=invoice.id, idempotency_key=key())
    got = await billing.get_invoice(user_id=user, invoice_id=str(invoice.id))
    page = await billing.list_invoices(user_id=user, limit=10)

    assert invoice.status is InvoiceStatus.OPEN
    assert invoice.number.startswith(f"INV-{datetime.now(UTC).year}-")
    assert invoice.total == usd("6.00")
    assert invoice.lines[0].amount == usd("6.00")
    assert (paid.status, paid.paid_at is not None) == (InvoiceStatus.PAID, True)
    assert (paid.payment, paid.payment_action) == (None, None)  # from the balance: no card
    # pay_invoice answers an InvoicePayResult (an InvoiceOut and its card payment)
    as_invoice = InvoiceOut.model_validate(paid.model_dump(exclude={"payment", "payment_action"}))
    assert got == as_invoice
    assert page.items == [as_invoice]
    assert page.next_cursor is None
    assert (await billing.balance(user_id=user)).accounts[0].balance == usd("4.00")
    with pytest.raises(InvalidState) as again:
        await billing.pay_invoice(user_id=user, invoice_id=invoice.id, idempotency_key=key())
    assert again.value.details == {"status": "paid", "requested": "paid"}


async def test_invoices_are_voided_and_written_off_through_the_client(
    billing: BillingClient,
) -> None:
    """void_invoice / mark_invoice_uncollectible against the worker: typed replies, a void
    invoice can never be paid, a written-off one still can (as at Stripe), another user's
    is not found, a second void is invalid_state."""
    user, other = new_user(), new_user()
    await fund(billing, user, "10.00")
    line = InvoiceLineIn(description="Blue mug", quantity=1, unit_price=usd("3.00"))
    to_void, to_write_off = [
        await billing.create_invoice(
            user_id=user, currency="USD", lines=[line], idempotency_key=key()
        )
        for _ in range(2)
    ]

    voided = await billing.void_invoice(
        user_id=user, invoice_id=to_void.id, reason="issued in error", idempotency_key=key()
    )
    written_off = await billing.mark_invoice_uncollectible(
        user_id=user, invoice_id=str(to_write_off.id), idempotency_key=key()
    )

    assert (voided.id, voided.status, voided.reason) == (
        to_void.id, InvoiceStatus.VOID, "issued in error"
    )  # fmt: skip
    assert voided.voided_at is not None
    assert (written_off.status, written_off.reason) == (InvoiceStatus.UNCOLLECTIBLE, None)
    assert await billing.get_invoice(user_id=user, invoice_id=to_void.id) == voided
    with pytest.raises(InvalidState) as again:
        await billing.void_invoice(
            user_id=user, invoice_id=to_void.id, reason="twice", idempotency_key=key()
        )
    assert again.value.details["status"] == "void"
    with pytest.raises(InvalidState):
        await billing.pay_invoice(user_id=user, invoice_id=to_void.id, idempotency_key=key())
    with pytest.raises(NotFound):  # another user's invoice, exactly as a missing one
        await billing.mark_invoice_uncollectible(
            user_id=other, invoice_id=to_write_off.id, idempotency_key=key()
        )
    paid = await billing.pay_invoice(
        user_id=user, invoice_id=to_write_off.id, idempotency_key=key()
    )
    assert paid.status is InvoiceStatus.PAID
    assert (await billing.balance(user_id=user)).accounts[0].balance == usd("7.00")


async def test_insufficient_funds_is_raised_with_the_balance_in_its_details(
    billing: BillingClient,
) -> None:
    user = new_user()
    await fund(billing, user, "10.00")

    with pytest.raises(InsufficientFunds) as refused:
        await billing.withdraw(
            user_id=user, amount=usd("10.01"), description="too much", idempotency_key=key()
        )

    assert refused.value.code == "insufficient_funds"
    assert refused.value.details["balance"] == {"amount": "10.00", "currency": "USD"}
    assert refused.value.balance == usd("10.00")
    assert "10.01" in refused.value.message
    assert (await billing.balance(user_id=user)).accounts[0].balance == usd("10.00")


async def test_unknown_ids_raise_not_found(billing: BillingClient) -> None:
    unknown, user = uuid.uuid4(), new_user()
    with pytest.raises(NotFound) as invoice:
        await billing.get_invoice(user_id=user, invoice_id=unknown)
    with pytest.raises(NotFound):
        await billing.pay_invoice(user_id=user, invoice_id=unknown, idempotency_key=key())
    with pytest.raises(NotFound):
        await billing.get_subscription(user_id=user, subscription_id=unknown)
    with pytest.raises(NotFound):
        await billing.create_subscription(
            user_id=new_user(),
            plan_code=f"no-such-plan-{unknown.hex[:8]}",
            payment_source=PaymentSource.BALANCE,
            idempotency_key=key(),
        )
    assert invoice.value.details == {"invoice_id": str(unknown)}


async def test_another_users_ids_raise_not_found_like_unknown_ones(
    billing: BillingClient,
) -> None:
    owner, attacker, code = new_user(), new_user(), f"client-plan-{uuid.uuid4().hex[:8]}"
    await billing.upsert_plan(
        code=code, name="Pro", price=usd("1.00"), interval="month", idempotency_key=key()
    )
    await fund(billing, owner, "10.00")
    invoice = await billing.create_invoice(
        user_id=owner, currency="USD", idempotency_key=key(),
        lines=[InvoiceLineIn(description="Blue mug", quantity=1, unit_price=usd("3.00"))],
    )  # fmt: skip
    sub = (
        await billing.create_subscription(
            user_id=owner, plan_code=code, payment_source="balance", idempotency_key=key()
        )
    ).subscription

    with pytest.raises(NotFound) as read:
        await billing.get_invoice(user_id=attacker, invoice_id=invoice.id)
    with pytest.raises(NotFound) as paid:
        await billing.pay_invoice(user_id=attacker, invoice_id=invoice.id, idempotency_key=key())
    with pytest.raises(NotFound):
        await billing.get_subscription(user_id=attacker, subscription_id=sub.id)
    with pytest.raises(NotFound) as canceled:
        await billing.cancel_subscription(
            user_id=attacker, subscription_id=sub.id, at_period_end=False, idempotency_key=key()
        )

    assert read.value.message == paid.value.message == f"no invoice {invoice.id}"
    assert canceled.value.message == f"no subscription {sub.id}"
    assert await billing.get_invoice(user_id=owner, invoice_id=invoice.id) == invoice
    assert await billing.get_subscription(user_id=owner, subscription_id=sub.id) == sub
    assert (await billing.balance(user_id=owner)).accounts[0].balance == usd("9.00")


async def test_the_same_key_with_another_payload_raises_idempotency_conflict(
    billing: BillingClient,
) -> None:
    user, same = new_user(), key()
    await fund(billing, user, "10.00")
    await billing.withdraw(user_id=user, amount=usd("3.00"), description="x", idempotency_key=same)

    with pytest.raises(IdempotencyConflict):
        await billing.withdraw(
            user_id=user, amount=usd("4.00"), description="x", idempotency_key=same
        )

    assert (await billing.balance(user_id=user)).accounts[0].balance == usd("7.00")


async def test_bad_input_fails_locally_before_anything_is_sent(billing: BillingClient) -> None:
    with pytest.raises(ValidationError):
        await billing.withdraw(
            user_id=new_user(), amount=usd("0.00"), description="x", idempotency_key=key()
        )
    with pytest.raises(ValidationError):
        await billing.deposit(user_id="", amount=usd("1.00"), idempotency_key=key())
    with pytest.raises(ValidationError):
        await billing.deposit(user_id=new_user(), amount=usd("1.00"), idempotency_key="")
    with pytest.raises(ValidationError):
        await billing.transactions(user_id=new_user(), limit=101)
    with pytest.raises(ValidationError):
        await billing.upsert_plan(
            code="c", name="n", price=usd("1.00"), interval="fortnight", idempotency_key=key()
        )
    assert billing.in_flight == 0


async def test_a_queue_nobody_consumes_times_out_quickly_and_forgets_the_call(
    billing: BillingClient, amqp: AbstractChannel
) -> None:
    silent = await amqp.declare_queue(f"client-test.silent.{key()}", exclusive=True)
    loop = asyncio.get_running_loop()
    started = loop.time()

    with pytest.raises(BillingTimeout) as timed_out:
        await billing.request(silent.name, GetBalance(user_id="u"), BalanceResult, timeout=0.5)

    assert loop.time() - started >= 0.5  # not before its timeout (a hang fails the run)
    assert isinstance(timed_out.value, TimeoutError)
    assert timed_out.value.code == "timeout"
    assert timed_out.value.details["queue"] == silent.name
    assert billing.in_flight == 0
    # the request did arrive, persistent and well-formed, with a direct reply-to address
    message = await silent.get(timeout=5)
    assert message is not None
    assert message.reply_to is not None
    assert message.reply_to.startswith("amq.rabbitmq.reply-to")
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.content_type == "application/json"
    assert json.loads(message.body) == {"user_id": "u"}


async def test_every_request_carries_the_connections_login_as_its_user_id(
    billing: BillingClient, amqp: AbstractChannel, rabbitmq_url: str
) -> None:
    """RabbitMQ validates user_id against the connection's user, and the worker's access
    policy believes it: the client must send it, and only its own login."""
    echo = await amqp.declare_queue(f"client-test.echo.{key()}", exclusive=True)
    seen: list[str | None] = []

    async def answer(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        seen.append(message.user_id)
        reply = json.dumps({"ok": True, "data": {"user_id": "u", "accounts": []}}).encode()
        await amqp.default_exchange.publish(
            aio_pika.Message(reply, correlation_id=message.correlation_id),
            routing_key=message.reply_to or "",
        )

    await echo.consume(answer, no_ack=True)
    result = await billing.request(echo.name, GetBalance(user_id="u"), BalanceResult)

    assert result.accounts == []
    assert seen == [urlsplit(rabbitmq_url).username or "guest"]


def test_the_user_id_is_the_urls_decoded_login_or_guest() -> None:
    assert BillingClient("amqp://orders%40eu:secret@broker:5672/billing").user_id == "orders@eu"
    assert BillingClient("amqp://broker:5672/").user_id == "guest"


async def test_a_cancelled_call_is_forgotten(billing: BillingClient, amqp: AbstractChannel) -> None:
    silent = await amqp.declare_queue(f"client-test.silent.{key()}", exclusive=True)
    arrived = asyncio.Event()

    async def on_request(_: Any) -> None:
        arrived.set()

    await silent.consume(on_request, no_ack=True)
    call = asyncio.create_task(
        billing.request(silent.name, GetBalance(user_id="u"), BalanceResult, timeout=WAIT)
    )
    await asyncio.wait_for(arrived.wait(), WAIT)
    assert billing.in_flight == 1
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert billing.in_flight == 0


async def test_a_lost_channel_fails_pending_calls_at_once_and_the_client_recovers(
    billing: BillingClient, amqp: AbstractChannel
) -> None:
    silent = await amqp.declare_queue(f"client-test.silent.{key()}", exclusive=True)
    arrived = asyncio.Event()

    async def on_request(_: Any) -> None:
        arrived.set()

    await silent.consume(on_request, no_ack=True)
    call = asyncio.create_task(
        billing.request(silent.name, GetBalance(user_id="u"), BalanceResult, timeout=WAIT)
    )
    await asyncio.wait_for(arrived.wait(), WAIT)
    # White box: make the broker close the client's channel (a publish to a missing
    # exchange is a channel error), as a network failure or a broker restart would.
    channel = billing._channel
    assert channel is not None
    missing = await channel.get_exchange(f"client-test.missing.{key()}", ensure=False)
    with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
        await missing.publish(aio_pika.Message(b"{}"), "x")

    with pytest.raises(BillingTimeout, match="lost before the reply"):
        await asyncio.wait_for(call, 5)  # at once, not after the call's 30 s
    user = new_user()
    recovered = await billing.balance(user_id=user)  # direct reply-to consumed again
    assert recovered.user_id == user
    assert billing.in_flight == 0


async def test_an_unreachable_broker_raises_billing_unavailable_at_connect() -> None:
    with pytest.raises(BillingUnavailable, match="cannot reach RabbitMQ"):
        await BillingClient.connect("amqp://guest:guest@127.0.0.1:1/", timeout=5)


async def test_a_queue_that_does_not_exist_raises_billing_unavailable(
    billing: BillingClient,
) -> None:
    with pytest.raises(BillingUnavailable) as unroutable:
        await billing.request(
            f"client-test.missing.{key()}", GetBalance(user_id="u"), BalanceResult
        )
    assert isinstance(unroutable.value, ConnectionError)
    assert billing.in_flight == 0
    assert (await billing.balance(user_id=new_user())).accounts == []  # still usable


async def test_1000_concurrent_calls_on_one_connection_each_get_their_own_reply(
    billing: BillingClient,
) -> None:
    rich = new_user()
    await fund(billing, rich, "100.00")
    readers = [new_user() for _ in range(800)]
    poor = [new_user() for _ in range(100)]

    async def withdraw(user: str) -> WithdrawResult:
        return await billing.withdraw(
            user_id=user,
            amount=usd("1.00"),
            description="concurrency",
            idempotency_key=key(),
            timeout=120,
        )

    calls: list[tuple[str, str, Any]] = [
        *(("balance", u, billing.balance(user_id=u, timeout=120)) for u in readers),
        *(("withdraw", rich, withdraw(rich)) for _ in range(100)),
        *(("refused", u, withdraw(u)) for u in poor),
    ]
    random.shuffle(calls)
    results = await asyncio.gather(*(call for _, _, call in calls), return_exceptions=True)

    assert len(results) == 1000
    balances_after = []
    for (kind, user, _), result in zip(calls, results, strict=True):
        if kind == "balance":
            assert isinstance(result, BalanceResult), result
            assert (result.user_id, result.accounts) == (user, [])
        elif kind == "withdraw":
            assert isinstance(result, WithdrawResult), result
            assert result.transaction.user_id == user
            balances_after.append(result.balance.minor)
        else:
            assert isinstance(result, InsufficientFunds), result
            assert result.balance == usd("0.00")
    assert sorted(balances_after) == [n * 100 for n in range(100)]  # each its own reply
    assert billing.in_flight == 0
    assert (await billing.balance(user_id=rich)).accounts[0].balance == usd("0.00")


async def test_the_stream_yields_a_duplicated_event_once_and_skips_malformed_ones(
    billing: BillingClient, amqp: AbstractChannel
) -> None:
    type_ = f"client-test.{key()}"
    first_event, second_event = raw_event(type_, n=1), raw_event(type_, n=2)

    async with billing.events(type_, queue=f"client-test.{key()}") as stream:
        await publish_event(amqp, first_event, type_)
        await publish_event(amqp, first_event, type_)
        await publish_event(amqp, b"{not json", type_)
        await publish_event(amqp, {**first_event, "version": 2}, type_)
        await publish_event(amqp, second_event, type_)
        got = []
        async with asyncio.timeout(WAIT):
            async for event in stream:
                got.append(event)
                if event.data == {"n": 2}:
                    break
        await amqp.queue_delete(stream.queue_name or "")

    assert [str(e.event_id) for e in got] == [first_event["event_id"], second_event["event_id"]]
    assert [e.data for e in got] == [{"n": 1}, {"n": 2}]
    assert stream.skipped_duplicates == 1
    assert stream.rejected_malformed == 2


async def test_an_event_whose_loop_body_fails_comes_back_and_an_acked_one_does_not(
    billing: BillingClient, amqp: AbstractChannel
) -> None:
    type_, queue = f"client-test.{key()}", f"client-test.{key()}"
    one, two = raw_event(type_, n=1), raw_event(type_, n=2)
    async with billing.events(type_, queue=queue):
        pass  # declares and binds the durable queue; events now wait in it
    await publish_event(amqp, one, type_)

    async def fail_on_the_first_event() -> None:
        async with billing.events(type_, queue=queue) as stream:
            async for _ in stream:
                raise RuntimeError("the consumer failed")

    with pytest.raises(RuntimeError):
        await fail_on_the_first_event()
    async with billing.events(type_, queue=queue) as stream:
        again = await first(stream)  # returning from the loop body acknowledges it
    await publish_event(amqp, two, type_)
    async with billing.events(type_, queue=queue) as stream:
        after = await first(stream)
    await amqp.queue_delete(queue)

    assert str(again.event_id) == one["event_id"]
    assert str(after.event_id) == two["event_id"]


async def test_manual_acknowledgement(billing: BillingClient, amqp: AbstractChannel) -> None:
    type_, queue = f"client-test.{key()}", f"client-test.{key()}"
    event = raw_event(type_, n=1)
    async with billing.events(type_, queue=queue, auto_ack=False) as stream:
        await publish_event(amqp, event, type_)
        got = await first(stream)
        await stream.reject(got)  # back to the queue ...
        redelivered = await first(stream)
        await stream.ack(redelivered)  # ... and done
    declared = await amqp.declare_queue(queue, durable=True, passive=True)
    await amqp.queue_delete(queue)

    assert got.event_id == redelivered.event_id
    assert declared.declaration_result.message_count == 0
