"""The wire contract of billing-worker: what other services send to it and get back.

Pydantic models of every command, query, reply and event on its RabbitMQ queues and
exchanges, the `Money` type (decimal-string amounts, ISO 4217 exponents,
never a float), the error codes a reply can carry, and the queue and exchange names in
`names`. It depends on pydantic alone, so a client service can install it without the
worker.
"""

from billing_contracts import events, names
from billing_contracts.area_events import InvoiceEvent, SubscriptionEvent
from billing_contracts.deposit_cancel import CancelDeposit, CancelDepositResult
from billing_contracts.envelope import (
    Command,
    ErrorBody,
    ErrorCode,
    ErrorReply,
    EventEnvelope,
    OkReply,
    Query,
)
from billing_contracts.events import (
    BalanceLow,
    DepositCompleted,
    PaymentFailed,
    PaymentSucceeded,
    WithdrawalCompleted,
)
from billing_contracts.invoices import (
    CreateInvoice,
    GetInvoices,
    InvoiceLineIn,
    InvoiceLineOut,
    InvoiceOut,
    InvoicePage,
    InvoicePayResult,
    InvoiceStatus,
    PayInvoice,
)
from billing_contracts.money import (
    CURRENCY_EXPONENTS,
    MAX_MINOR_UNITS,
    Currency,
    Money,
    MoneyFormatError,
    format_minor,
    parse_minor,
)
from billing_contracts.orders import OrderCreated, OrderItem
from billing_contracts.plans import Interval, ListPlans, PlanList, PlanOut, UpsertPlan
from billing_contracts.subscriptions import (
    CancelSubscription,
    CreateSubscription,
    GetSubscriptions,
    PaymentSource,
    SubscriptionCreated,
    SubscriptionList,
    SubscriptionOut,
    SubscriptionStatus,
)
from billing_contracts.wallet import (
    AccountBalance,
    BalanceResult,
    Deposit,
    DepositResult,
    GetBalance,
    ListTransactions,
    PaymentAction,
    Provider,
    TransactionKind,
    TransactionOut,
    TransactionPage,
    TransactionStatus,
    Withdraw,
    WithdrawResult,
)

__all__ = [
    "CURRENCY_EXPONENTS",
    "MAX_MINOR_UNITS",
    "AccountBalance",
    "BalanceLow",
    "BalanceResult",
    "CancelDeposit",
    "CancelDepositResult",
    "CancelSubscription",
    "Command",
    "CreateInvoice",
    "CreateSubscription",
    "Currency",
    "Deposit",
    "DepositCompleted",
    "DepositResult",
    "ErrorBody",
    "ErrorCode",
    "ErrorReply",
    "EventEnvelope",
    "GetBalance",
    "GetInvoices",
    "GetSubscriptions",
    "Interval",
    "InvoiceEvent",
    "InvoiceLineIn",
    "InvoiceLineOut",
    "InvoiceOut",
    "InvoicePage",
    "InvoicePayResult",
    "InvoiceStatus",
    "ListPlans",
    "ListTransactions",
    "Money",
    "MoneyFormatError",
    "OkReply",
    "OrderCreated",
    "OrderItem",
    "PayInvoice",
    "PaymentAction",
    "PaymentFailed",
    "PaymentSource",
    "PaymentSucceeded",
    "PlanList",
    "PlanOut",
    "Provider",
    "Query",
    "SubscriptionCreated",
    "SubscriptionEvent",
    "SubscriptionList",
    "SubscriptionOut",
    "SubscriptionStatus",
    "TransactionKind",
    "TransactionOut",
    "TransactionPage",
    "TransactionStatus",
    "UpsertPlan",
    "Withdraw",
    "WithdrawResult",
    "WithdrawalCompleted",
    "events",
    "format_minor",
    "names",
    "parse_minor",
]
