"""Hostile input on every queue the worker consumes, generated with hypothesis.

Every command and query queue of `billing_contracts.names`, `order.created` through the
orders exchange and `billing.provider-events` get broken messages of every kind. What
the contract refuses must be answered `invalid_message` (when there is a `reply_to`) and
dead-lettered with the reason; what happens to be valid must be handled like any other
message. The worker must not crash or log a traceback, a normal command must still be
answered during and after the storm (how long it took is recorded, not asserted), and
the books must still balance afterwards.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from billing_contracts import (
    coupons,
    deposit_cancel,
    holds,
    invoices,
    names,
    orders,
    payment_methods,
    plan_changes,
    plans,
    refunds,
    subscription_changes,
    subscriptions,
    taxes,
    wallet,
)
from billing_worker.messaging.parsing import InvalidMessage, contract_parser
from billing_worker.messaging.routes import provider_events_route
from billing_worker.providers.base import Gateways
from billing_worker.providers.sandbox import SandboxGateway
from support.figures import record
from support.hostile import (
    NO_REPLY,
    QUEUES,
    Hostile,
    draw,
    field_values,
    hostile,
    nul_character,
    oversize,
)
from support.invariants import check_invariants, connect
from support.load import LoadClient
from support.processes import Process, escaped, tracebacks, worker_env
from support.sandbox import sandbox_key, signed

pytestmark = [pytest.mark.integration, pytest.mark.faults]

EXAMPLES_PER_QUEUE = 60
MAX_DELIVERIES = 2

MODELS: dict[str, Any] = {
    names.WALLET_DEPOSIT: wallet.Deposit,
    names.WALLET_WITHDRAW: wallet.Withdraw,
    names.WALLET_BALANCE: wallet.GetBalance,
    names.WALLET_TRANSACTIONS: wallet.ListTransactions,
    names.INVOICE_CREATE: invoices.CreateInvoice,
    names.INVOICE_PAY: invoices.PayInvoice,
    names.INVOICE_GET: invoices.GetInvoices,
    names.INVOICE_VOID: invoices.VoidInvoice,
    names.INVOICE_MARK_UNCOLLECTIBLE: invoices.MarkInvoiceUncollectible,
    names.PLAN_UPSERT: plans.UpsertPlan,
    names.PLAN_LIST: plans.ListPlans,
    names.SUBSCRIPTION_CREATE: subscriptions.CreateSubscription,
    names.SUBSCRIPTION_CANCEL: subscriptions.CancelSubscription,
    names.SUBSCRIPTION_GET: subscriptions.GetSubscriptions,
    names.WALLET_HOLD: holds.PlaceHold,
    names.WALLET_HOLD_CAPTURE: holds.CaptureHold,
    names.WALLET_HOLD_RELEASE: holds.ReleaseHold,
    names.ORDER_CREATED_QUEUE: orders.OrderCreated,
    names.WALLET_DEPOSIT_CANCEL: deposit_cancel.CancelDeposit,
    names.PAYMENT_REFUND: refunds.RefundPayment,
    names.PAYMENT_METHOD_SETUP: payment_methods.SetupPaymentMethod,
    names.PAYMENT_METHOD_LIST: payment_methods.ListPaymentMethods,
    names.PAYMENT_METHOD_DETACH: payment_methods.DetachPaymentMethod,
    names.PAYMENT_METHOD_SET_DEFAULT: payment_methods.SetDefaultPaymentMethod,
    names.SUBSCRIPTION_UPDATE_PAYMENT_METHOD: payment_methods.UpdateSubscriptionPaymentMethod,
    names.PLAN_MIGRATE: plans.MigratePlan,
    names.SUBSCRIPTION_RESUME: subscription_changes.ResumeSubscription,
    names.SUBSCRIPTION_PAUSE: subscription_changes.PauseSubscription,
    names.SUBSCRIPTION_UNPAUSE: subscription_changes.UnpauseSubscription,
    names.SUBSCRIPTION_CHANGE_PLAN: plan_changes.ChangePlan,
    names.TAX_RATE_UPSERT: taxes.UpsertTaxRate,
    names.TAX_RATE_LIST: taxes.ListTaxRates,
    names.COUPON_UPSERT: coupons.UpsertCoupon,
    names.COUPON_LIST: coupons.ListCoupons,
}
# Not fuzzed: a credit is refused `forbidden` before its body is read without an access
# policy (tests/integration/test_credits.py); its parser is the same contract parser as
# every other command's. billing.plan.migrate, billing.tax-rate.upsert and
# billing.coupon.upsert, privileged too, are fuzzed: the worker runs with
# BILLING_CREDIT_WITHOUT_POLICY=true and the client names its AMQP user_id.
UNREAD = {names.WALLET_CREDIT}


def test_every_consumed_queue_is_fuzzed() -> None:
    assert set(QUEUES) | UNREAD == {
        *names.COMMAND_QUEUES,
        *names.QUERY_QUEUES,
        names.ORDER_CREATED_QUEUE,
        names.PROVIDER_EVENTS_QUEUE,
    }
    assert set(MODELS) | {names.PROVIDER_EVENTS_QUEUE} == set(QUEUES)


def contract_verdict(queue: str, body: bytes, sandbox: SandboxGateway) -> tuple[bool, Any]:
    """(valid?, parsed) by the worker's own parser for the queue; a parser that raises
    anything but InvalidMessage counts as refusing (the worker must dead-letter it).
    Provider callbacks are signed with the worker's sandbox key, so the fuzzing reaches
    the parser behind the signature check."""
    if queue == names.PROVIDER_EVENTS_QUEUE:
        route = provider_events_route(None, Gateways({"sandbox": sandbox}, "sandbox"))  # type: ignore[arg-type]
        parse = lambda raw: route.parse(raw, callback_headers(sandbox, raw))  # noqa: E731
    else:
        parser = contract_parser(MODELS[queue])
        parse = lambda raw: parser(raw, {})  # noqa: E731
    try:
        return True, parse(body)
    except InvalidMessage:
        return False, None
    except Exception:  # a parser crash is judged by what the worker does
        return False, None


def callback_headers(sandbox: SandboxGateway, body: bytes) -> dict[str, str]:
    """A sandbox callback's headers, signed where the body can be signed (JSON)."""
    try:
        return signed(sandbox, body)
    except (ValueError, RecursionError):
        return {"x-provider": "sandbox"}


async def send(client: LoadClient, item: Hostile, sandbox: SandboxGateway) -> str:
    if item.queue == names.ORDER_CREATED_QUEUE:
        return await client.fire(names.ORDER_CREATED, item.body, exchange="orders")
    if item.queue == names.PROVIDER_EVENTS_QUEUE:
        headers = callback_headers(sandbox, item.body)
        return await client.fire(item.queue, item.body, headers=headers)
    return await client.submit(item.queue, item.body, key=uuid.uuid4().hex)


async def timed_call(client: LoadClient, queue: str, payload: dict[str, Any]) -> float:
    started = time.monotonic()
    reply = await client.call(queue, payload, timeout=10)
    assert reply["ok"] or reply["error"]["code"] != "internal_error", reply
    return time.monotonic() - started


async def test_hostile_messages_on_every_queue_are_refused_or_handled_never_crash_the_worker(
    database_url: str, vhost_url: str, tmp_path: Path
) -> None:
    examples: list[Hostile] = []
    for queue in QUEUES:
        examples += draw(hostile(queue), EXAMPLES_PER_QUEUE)
        examples.append(oversize(queue))
        examples.append(nul_character(queue))
        deep = b"[" * 10_000 + b"]" * 10_000
        examples.append(Hostile(queue, deep, ("deep_nesting",), must_be_invalid=True))
    examples += field_values()  # plan.upsert's tax_rate, subscription.create's quantity
    sandbox = SandboxGateway(await sandbox_key(database_url))
    verdicts = [contract_verdict(item.queue, item.body, sandbox) for item in examples]
    too_lax = [
        item.describe()
        for item, (valid, _) in zip(examples, verdicts, strict=True)
        if valid and item.must_be_invalid
    ]
    assert not too_lax, f"the contract accepts what it must refuse: {too_lax[:5]}"

    worker = Process(
        "run",
        worker_env(
            database_url,
            vhost_url,
            max_deliveries=MAX_DELIVERIES,
            retry_delays_ms="20",
            credit_without_policy="true",  # billing.plan.migrate reads its body
        ),
        tmp_path / "worker.log",
    )
    client = LoadClient(vhost_url, user_id=urlsplit(vhost_url).username or "guest")
    await client.start()
    try:
        worker.start()
        await worker.ready()
        # The rate the fuzzed plans name, and a taxed plan the fuzzed subscriptions name.
        assert (
            await client.call(
                names.TAX_RATE_UPSERT,
                {
                    "idempotency_key": uuid.uuid4().hex,
                    "code": "fuzz-vat",
                    "name": "Fuzz VAT",
                    "percent": "19.5",
                    "inclusive": False,
                },
            )
        )["ok"]
        assert (
            await client.call(
                names.PLAN_UPSERT,
                {
                    "idempotency_key": uuid.uuid4().hex,
                    "code": "fuzz-plan",
                    "name": "Fuzz",
                    "price": {"amount": "1.00", "currency": "USD"},
                    "interval": "month",
                    "tax_rate": "fuzz-vat",
                },
            )
        )["ok"]
        normal = {"user_id": "fuzz-normal", "currency": "USD"}
        before = await timed_call(client, names.WALLET_BALANCE, normal)

        sent: list[str] = []
        for start in range(0, len(examples), 50):
            sent += await asyncio.gather(
                *(send(client, item, sandbox) for item in examples[start : start + 50])
            )

        # Right after the storm, with the queues still busy, a normal command is answered.
        during = await timed_call(
            client,
            names.WALLET_WITHDRAW,
            {
                "idempotency_key": uuid.uuid4().hex,
                "user_id": "fuzz-normal",
                "amount": {"amount": "1.00", "currency": "USD"},
                "description": "normal",
            },
        )

        async with connect(database_url) as db:

            async def outcome(item: Hostile, cid: str, valid: bool, parsed: Any) -> str | None:
                """Where the message ended up, or None while it has not ended up anywhere."""
                dead = client.dead_letter_for(cid)
                if item.queue not in NO_REPLY and not client.replies.get(cid):
                    return None
                if dead:
                    return "dead:" + str(dead[0].headers.get("x-billing-reason", ""))
                if not valid:
                    return None  # its dead letter is still on its way
                if item.queue not in NO_REPLY:
                    return "replied"
                if "\x00" in (
                    parsed.order_id if item.queue == names.ORDER_CREATED_QUEUE else parsed.event_id
                ):
                    return None  # no table can hold it: it must end up dead-lettered
                if item.queue == names.ORDER_CREATED_QUEUE:
                    found = await db.fetchval(
                        "SELECT count(*) FROM invoices WHERE order_id = $1", parsed.order_id
                    )
                else:
                    found = await db.fetchval(
                        "SELECT count(*) FROM idempotency_records WHERE scope = "
                        "'provider:sandbox' AND key = $1",
                        parsed.event_id,
                    )
                return "applied" if found else None

            deadline = time.monotonic() + 120
            while True:
                results = [
                    await outcome(item, cid, valid, parsed)
                    for item, cid, (valid, parsed) in zip(examples, sent, verdicts, strict=True)
                ]
                pending = [examples[n].describe() for n, r in enumerate(results) if r is None]
                if not pending:
                    break
                assert time.monotonic() < deadline, f"{len(pending)} never handled: {pending[:3]}"
                await asyncio.sleep(0.5)

        await asyncio.sleep(1)  # a dead letter of a valid message would follow its reply
        after = await timed_call(client, names.WALLET_BALANCE, normal)
        problems = []
        for item, cid, (valid, _), result in zip(examples, sent, verdicts, results, strict=True):
            replies = client.replies.get(cid, [])
            dead = client.dead_letter_for(cid)
            if not valid:
                if item.queue not in NO_REPLY and (
                    len(replies) != 1
                    or replies[0].get("error", {}).get("code") != "invalid_message"
                ):
                    problems.append(("not answered invalid_message", item.describe(), replies))
                if not dead or not str(dead[0].headers.get("x-billing-reason")).startswith(
                    "invalid_message: "
                ):
                    problems.append(("not dead-lettered as invalid", item.describe(), result))
                elif dead[0].headers.get("x-billing-original-queue") != item.queue:
                    problems.append(("dead letter without its queue", item.describe(), result))
                if "oversize" in item.categories and "exceeds" not in str(result):
                    problems.append(("oversize not refused for its size", item.describe(), result))
            elif item.queue in NO_REPLY:
                # A callback naming no payment of ours (or one PostgreSQL cannot store, e.g.
                # an id over 255 characters) is retried, then dead-lettered for an operator.
                allowed = (
                    "applied",
                    "dead:unprocessable: ",
                    f"dead:failed {MAX_DELIVERIES} times: ",
                )
                if not str(result).startswith(allowed):
                    problems.append(("valid event mishandled", item.describe(), result))
            else:
                if len(replies) != 1 or replies[0].get("error", {}).get("code") == "internal_error":
                    problems.append(
                        ("valid message not answered normally", item.describe(), replies)
                    )
                if dead:
                    problems.append(("valid message dead-lettered", item.describe(), result))
        assert not problems, f"{len(problems)} problems, e.g.:\n" + "\n".join(
            f"{kind}: {json.dumps(outcome, default=str)[:300]} <- {about[:300]}"
            for kind, about, outcome in problems[:12]
        )

        assert worker.alive, worker.text()[-3000:]
        assert not escaped(worker.text()), escaped(worker.text())[:2]
        await check_invariants(database_url, client)
        assert await worker.stop() == 0
    finally:
        worker.ensure_dead()
        await client.close()

    invalid = sum(1 for valid, _ in verdicts if not valid)
    record(
        "hostile_input",
        inputs_tried=len(examples),
        invalid=invalid,
        accidentally_valid=len(examples) - invalid,
        dead_lettered=len({d.correlation_id for d in client.dead_letters}),
        queues=len(QUEUES),
        retried_tracebacks=len(tracebacks(worker.text())),
        seconds_normal_command_before=round(before, 3),
        seconds_normal_command_during=round(during, 3),
        seconds_normal_command_after=round(after, 3),
        lost=0,
    )
