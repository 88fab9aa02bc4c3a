"""Which queue runs which handler: the routing table of the worker."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from billing_contracts import invoices, names, orders, plans, subscriptions, wallet
from billing_worker.handlers import invoices as invoice_handlers
from billing_worker.handlers import subscriptions as subscription_handlers
from billing_worker.handlers import wallet as wallet_handlers
from billing_worker.messaging.pipeline import InvalidMessage, Route, contract_parser
from billing_worker.metrics import Metrics
from billing_worker.providers.base import Gateways, UnknownProvider
from billing_worker.service import BillingService, Handler

COMMANDS: Mapping[str, tuple[type[BaseModel], Handler[Any]]] = {
    names.WALLET_DEPOSIT: (wallet.Deposit, wallet_handlers.deposit),
    names.WALLET_WITHDRAW: (wallet.Withdraw, wallet_handlers.withdraw),
    names.INVOICE_CREATE: (invoices.CreateInvoice, invoice_handlers.create_invoice),
    names.INVOICE_PAY: (invoices.PayInvoice, invoice_handlers.pay_invoice),
    names.PLAN_UPSERT: (plans.UpsertPlan, subscription_handlers.upsert_plan),
    names.SUBSCRIPTION_CREATE: (
        subscriptions.CreateSubscription,
        subscription_handlers.create_subscription,
    ),
    names.SUBSCRIPTION_CANCEL: (
        subscriptions.CancelSubscription,
        subscription_handlers.cancel_subscription,
    ),
}
QUERIES: Mapping[str, tuple[type[BaseModel], Handler[Any]]] = {
    names.WALLET_BALANCE: (wallet.GetBalance, wallet_handlers.get_balance),
    names.WALLET_TRANSACTIONS: (wallet.ListTransactions, wallet_handlers.list_transactions),
    names.INVOICE_GET: (invoices.GetInvoices, invoice_handlers.get_invoices),
    names.PLAN_LIST: (plans.ListPlans, subscription_handlers.list_plans),
    names.SUBSCRIPTION_GET: (
        subscriptions.GetSubscriptions,
        subscription_handlers.get_subscriptions,
    ),
}


def command_route(queue: str, service: BillingService) -> Route:
    model, handler = COMMANDS[queue]
    scope = queue.removeprefix("billing.")

    async def handle(command: Any) -> dict[str, Any]:
        return await service.command(scope, command, handler)

    return Route(queue, contract_parser(model), handle)


def query_route(queue: str, service: BillingService) -> Route:
    model, handler = QUERIES[queue]

    async def handle(query: Any) -> dict[str, Any]:
        return await service.query(query, handler)

    return Route(queue, contract_parser(model), handle)


def order_created_route(service: BillingService) -> Route:
    """`order.created` from the Orders service: one invoice per order, no reply."""

    async def handle(order: Any) -> None:
        await service.apply(order, invoice_handlers.create_invoice_for_order)

    return Route(names.ORDER_CREATED_QUEUE, contract_parser(orders.OrderCreated), handle)


def provider_events_route(
    service: BillingService, gateways: Gateways, metrics: Metrics | None = None
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
        try:
            return gateway.parse_event(body)
        except ValueError as malformed:
            raise InvalidMessage(str(malformed)) from None

    async def handle(event: Any) -> None:
        outcome = await service.provider_event(event)
        if metrics:  # unknown event types are acknowledged and counted here
            metrics.provider_events.labels(event.provider, event.event_type, outcome.value).inc()

    return Route(names.PROVIDER_EVENTS_QUEUE, parse, handle)


def all_routes(
    service: BillingService, gateways: Gateways, metrics: Metrics | None = None
) -> list[Route]:
    return [
        *(command_route(queue, service) for queue in COMMANDS),
        *(query_route(queue, service) for queue in QUERIES),
        order_created_route(service),
        provider_events_route(service, gateways, metrics),
    ]
