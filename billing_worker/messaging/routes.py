"""Which queue runs which handler: the routing table of the worker."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict

from billing_contracts import names
from billing_contracts.catalog import BY_QUEUE, Entry
from billing_contracts.envelope import ErrorReply, OkReply
from billing_worker.domain.errors import Unprocessable
from billing_worker.handlers import (
    coupons,
    deposit_cancel,
    invoice_lifecycle,
    method_setup,
    plan_changes,
    plan_migrate,
    subscription_changes,
    taxes,
)
from billing_worker.handlers import credits as credit_handlers
from billing_worker.handlers import holds as hold_handlers
from billing_worker.handlers import invoices as invoice_handlers
from billing_worker.handlers import payment_methods as method_handlers
from billing_worker.handlers import refunds as refund_handlers
from billing_worker.handlers import subscriptions as subscription_handlers
from billing_worker.handlers import wallet as wallet_handlers
from billing_worker.handlers.provider_events import Applied
from billing_worker.messaging.coalescer import Coalescer
from billing_worker.messaging.parsing import MAX_BODY_BYTES, InvalidMessage, contract_parser
from billing_worker.messaging.pipeline import Route, Sent
from billing_worker.metrics import OTHER, Metrics
from billing_worker.providers import sandbox
from billing_worker.providers import stripe as stripe_provider
from billing_worker.providers import yookassa as yookassa_provider
from billing_worker.providers.base import Forged, Gateways, UnknownProvider
from billing_worker.providers.stripe import webhook as stripe_webhooks
from billing_worker.providers.yookassa import webhook as yookassa_webhooks
from billing_worker.service import BatchHandler, BillingService, Handler, QueryBatchHandler

# Queue -> handler; the models come from the contracts' catalogue. Each command and query
# also takes NestJS packets whose pattern is its queue's name (messaging/nestjs.py).
COMMANDS: Mapping[str, Handler[Any]] = {
    names.WALLET_DEPOSIT: wallet_handlers.deposit,
    names.WALLET_WITHDRAW: wallet_handlers.withdraw,
    names.INVOICE_CREATE: invoice_handlers.create_invoice,
    names.INVOICE_PAY: invoice_handlers.pay_invoice,
    names.PLAN_UPSERT: subscription_handlers.upsert_plan,
    names.SUBSCRIPTION_CREATE: subscription_handlers.create_subscription,
    names.SUBSCRIPTION_CANCEL: subscription_handlers.cancel_subscription,
    names.WALLET_DEPOSIT_CANCEL: deposit_cancel.cancel_deposit,
    names.WALLET_HOLD: hold_handlers.place_hold,
    names.WALLET_HOLD_CAPTURE: hold_handlers.capture_hold,
    names.WALLET_HOLD_RELEASE: hold_handlers.release_hold,
    names.PAYMENT_REFUND: refund_handlers.refund_payment,
    names.PAYMENT_METHOD_SETUP: method_setup.setup,
    names.PAYMENT_METHOD_DETACH: method_handlers.detach,
    names.PAYMENT_METHOD_SET_DEFAULT: method_handlers.set_default,
    names.SUBSCRIPTION_UPDATE_PAYMENT_METHOD: method_handlers.update_subscription_method,
    names.PLAN_MIGRATE: plan_migrate.migrate_plan,  # admins only (access.PRIVILEGED)
    names.SUBSCRIPTION_RESUME: subscription_changes.resume_subscription,
    names.SUBSCRIPTION_PAUSE: subscription_changes.pause_subscription,
    names.SUBSCRIPTION_UNPAUSE: subscription_changes.unpause_subscription,
    names.SUBSCRIPTION_CHANGE_PLAN: plan_changes.change_plan,
    names.INVOICE_VOID: invoice_lifecycle.void_invoice,
    names.INVOICE_MARK_UNCOLLECTIBLE: invoice_lifecycle.mark_uncollectible,
    names.TAX_RATE_UPSERT: taxes.upsert_tax_rate,  # admins only (access.PRIVILEGED)
    names.COUPON_UPSERT: coupons.upsert_coupon,  # admins only (access.PRIVILEGED)
}
QUERIES: Mapping[str, Handler[Any]] = {
    names.WALLET_BALANCE: wallet_handlers.get_balance,
    names.WALLET_TRANSACTIONS: wallet_handlers.list_transactions,
    names.INVOICE_GET: invoice_handlers.get_invoices,
    names.PLAN_LIST: subscription_handlers.list_plans,
    names.SUBSCRIPTION_GET: subscription_handlers.get_subscriptions,
    names.PAYMENT_METHOD_LIST: method_handlers.list_methods,
    names.TAX_RATE_LIST: taxes.list_tax_rates,
    names.COUPON_LIST: coupons.list_coupons,
}


def reply_type(entry: Entry) -> Any:
    """What a caller gets back: the success envelope of the entry's data, or an error."""
    return OkReply[entry.reply] | ErrorReply  # type: ignore[name-defined]


@dataclass(frozen=True, slots=True)
class Batched:
    """How a command kind coalesces (see `BillingService.command_batch`)."""

    handler: BatchHandler
    # which commands may join a batch; the others run alone, never waiting on one
    fits: Callable[[Any], bool] = lambda _command: True
    # the batch's new transactions written in one statement at its end; off where a
    # command refers to its own new transaction before then (a period's charge row)
    defer_inserts: bool = True
    max_batch: int | None = None  # a cap of its own, under `coalesce_max`


# A savepoint per command: PostgreSQL caches 64 subtransaction ids per transaction, and
# past that every other session's snapshot checks get slower.
SAVEPOINTS_MAX = 64

# Commands with a batch handler, so several can share one database transaction: the
# money path's hottest queues.
COALESCED: Mapping[str, Batched] = {
    names.WALLET_WITHDRAW: Batched(wallet_handlers.withdraw_many),
    names.INVOICE_PAY: Batched(
        invoice_handlers.pay_many,
        fits=lambda command: command.source == "balance",  # a card pay calls its provider
        defer_inserts=False,
        max_batch=SAVEPOINTS_MAX,
    ),
}


def command_route(queue: str, service: BillingService, max_batch: int = 1) -> Route:
    entry, handler = BY_QUEUE[queue], COMMANDS[queue]
    scope = queue.removeprefix("billing.")
    batched = COALESCED.get(queue)
    if batched is not None and batched.max_batch is not None:
        max_batch = min(max_batch, batched.max_batch)

    async def run_batch(commands: list[Any]) -> list[dict[str, Any] | Exception]:
        assert batched is not None  # only a coalesced route's coalescer runs batches
        with service.batch_lane():
            if len(commands) == 1:
                return [await service.command(scope, commands[0], handler)]
            return await service.command_batch(
                scope, commands, handler, batched.handler, defer_inserts=batched.defer_inserts
            )

    coalescer = Coalescer(run_batch, max_batch)
    coalesced = batched is not None and max_batch > 1

    async def handle(command: Any) -> dict[str, Any]:
        if coalesced and batched is not None and batched.fits(command):
            return await coalescer.submit(command)
        return await service.command(scope, command, handler)

    return Route(queue, contract_parser(entry.request), handle, entry.request,
                 reply_type(entry), entry.purpose, frozenset({queue}),
                 coalescer if coalesced else None)  # fmt: skip


def credit_route(service: BillingService) -> Route:
    """`billing.wallet.credit`: the handler records who sent it (the validated AMQP user
    id; `access.py` lets only admins, and no one without a policy, get this far)."""
    entry = BY_QUEUE[names.WALLET_CREDIT]
    scope = entry.queue.removeprefix("billing.")

    async def handle(sent: Sent) -> dict[str, Any]:
        if not sent.sender:  # access.py refuses a credit without a sender before this
            raise Unprocessable("a credit must carry its sender's AMQP user_id")
        return await service.command(scope, sent.payload, credit_handlers.grant_by(sent.sender))

    return Route(entry.queue, contract_parser(entry.request), handle, entry.request,
                 reply_type(entry), entry.purpose, frozenset({entry.queue}),
                 with_sender=True)  # fmt: skip


# Queries with a batch handler: answered together, one round trip for the lot.
COALESCED_QUERIES: Mapping[str, QueryBatchHandler] = {
    names.WALLET_BALANCE: wallet_handlers.get_balances,
}


def query_route(queue: str, service: BillingService, max_batch: int = 1) -> Route:
    entry, handler = BY_QUEUE[queue], QUERIES[queue]
    batch_handler = COALESCED_QUERIES.get(queue)

    async def run_batch(queries: list[Any]) -> list[dict[str, Any] | Exception]:
        with service.batch_lane():
            if len(queries) == 1 or batch_handler is None:
                return [await service.query(query, handler) for query in queries]
            return await service.query_batch(queries, batch_handler)

    coalescer = Coalescer(run_batch, max_batch)
    coalesced = batch_handler is not None and max_batch > 1

    async def handle(query: Any) -> dict[str, Any]:
        if coalesced:
            return await coalescer.submit(query)
        return await service.query(query, handler)

    return Route(queue, contract_parser(entry.request), handle, entry.request,
                 reply_type(entry), entry.purpose, frozenset({queue}),
                 coalescer if coalesced else None)  # fmt: skip


def order_created_route(service: BillingService) -> Route:
    """`order.created` from the Orders service: one invoice per order, no reply."""

    async def handle(order: Any) -> None:
        await service.apply(order, invoice_handlers.create_invoice_for_order)

    entry = BY_QUEUE[names.ORDER_CREATED_QUEUE]
    # NestJS's emit('order.created', order) to the orders exchange, or sent to the queue
    patterns = frozenset({names.ORDER_CREATED, names.ORDER_CREATED_QUEUE})
    return Route(entry.queue, contract_parser(entry.request), handle, entry.request, None,
                 entry.purpose, patterns)  # fmt: skip


# The event types the gateways act on, by provider: the `type` label of
# billing_provider_events_total. A callback names its own type, so any other is `other`.
EVENT_TYPES: Mapping[str, frozenset[str]] = {
    stripe_provider.NAME: stripe_webhooks.EVENT_TYPES,
    yookassa_provider.NAME: yookassa_webhooks.EVENT_TYPES,
    sandbox.NAME: sandbox.EVENT_TYPES,
}


def event_type_label(provider: str, event_type: str) -> str:
    return event_type if event_type in EVENT_TYPES.get(provider, ()) else OTHER


def provider_events_route(
    service: BillingService,
    gateways: Gateways,
    metrics: Metrics | None = None,
    max_batch: int = 1,
) -> Route:
    """Callbacks from the relay (or the sandbox): raw body + `x-provider` header."""

    def parse(body: bytes, headers: Mapping[str, Any]) -> Any:
        provider = headers.get(names.PROVIDER_HEADER)
        if isinstance(provider, bytes):
            provider = provider.decode(errors="replace")
        try:
            gateway = gateways.get(str(provider)) if provider else None
        except UnknownProvider:
            gateway = None
        if gateway is None:
            raise InvalidMessage(
                f"header {names.PROVIDER_HEADER}={provider!r} names no configured provider"
            )
        if len(body) > MAX_BODY_BYTES:  # the relay refuses these too; others may publish here
            raise InvalidMessage(f"body of {len(body)} bytes exceeds {MAX_BODY_BYTES}")
        try:
            gateway.authenticate(body, headers)
        except Forged as forged:  # nobody but the provider (or the worker) could send it
            raise InvalidMessage(f"forged {provider} callback: {forged}") from None
        try:
            return gateway.parse_event(body)
        except (ValueError, RecursionError) as malformed:  # json.loads: too deeply nested
            raise InvalidMessage(str(malformed)) from None

    # Callbacks that arrive while a batch is being applied go together into the next one
    # (`BillingService.provider_events`): each keeps its own outcome.
    async def apply_batch(events: list[Any]) -> list[Applied | Exception]:
        with service.batch_lane():
            return await service.provider_events(events)

    coalescer: Coalescer[Any, Applied] = Coalescer(apply_batch, max_batch)

    async def handle(event: Any) -> None:
        if max_batch > 1:
            outcome = await coalescer.submit(event)
        else:
            outcome = await service.provider_event(event)
        if metrics:  # unknown event types are acknowledged and counted here
            kind = event_type_label(event.provider, event.event_type)
            metrics.provider_events.labels(event.provider, kind, outcome.value).inc()

    purpose = (
        "Provider callbacks from the relay (raw body, headers x-provider and "
        "x-provider-signature); each is a claim the worker confirms at the provider"
    )
    return Route(names.PROVIDER_EVENTS_QUEUE, parse, handle, ProviderCallback, None, purpose,
                 coalescer=coalescer if max_batch > 1 else None)  # fmt: skip


class ProviderCallback(BaseModel):
    """The provider's own webhook body, as Stripe or YooKassa sent it.

    Header `x-provider` names the provider (`stripe`, `yookassa`, `sandbox`);
    `x-provider-signature` carries Stripe's `Stripe-Signature`, checked again by the
    worker. Nothing in the body is believed: the worker re-reads the object it names.
    """

    model_config = ConfigDict(extra="allow")


def batch_lanes() -> int:
    """The connections the coalescers can use at once: one per coalescing route."""
    return len(COALESCED) + len(COALESCED_QUERIES) + 1  # + provider callbacks


def all_routes(
    service: BillingService,
    gateways: Gateways,
    metrics: Metrics | None = None,
    max_batch: int = 1,
) -> list[Route]:
    return [
        *(command_route(queue, service, max_batch) for queue in COMMANDS),
        credit_route(service),
        *(query_route(queue, service, max_batch) for queue in QUERIES),
        order_created_route(service),
        provider_events_route(service, gateways, metrics, max_batch),
    ]
