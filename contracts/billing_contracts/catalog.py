"""The message catalogue: every queue and event, its models, purpose and refusals.

The single source for the worker's routing, the typed client, the AsyncAPI document
and the README's catalogue.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from pydantic import BaseModel

from billing_contracts import names
from billing_contracts.area_events import InvoiceEvent, SubscriptionEvent, SubscriptionUpdated
from billing_contracts.coupons import CouponList, CouponOut, ListCoupons, UpsertCoupon
from billing_contracts.deposit_cancel import CancelDeposit, CancelDepositResult
from billing_contracts.envelope import ErrorCode
from billing_contracts.events import (
    BALANCE_LOW,
    CREDIT_GRANTED,
    DEPOSIT_COMPLETED,
    HOLD_CAPTURED,
    HOLD_CREATED,
    HOLD_EXPIRED,
    HOLD_RELEASED,
    INVOICE_CREATED,
    INVOICE_OVERDUE,
    INVOICE_PAID,
    INVOICE_UNCOLLECTIBLE,
    INVOICE_VOIDED,
    PAYMENT_FAILED,
    PAYMENT_METHOD_REMOVED,
    PAYMENT_METHOD_SAVED,
    PAYMENT_REFUNDED,
    PAYMENT_SUCCESS,
    SUBSCRIPTION_CANCELED,
    SUBSCRIPTION_CREATED,
    SUBSCRIPTION_PAST_DUE,
    SUBSCRIPTION_PAUSED,
    SUBSCRIPTION_RENEWED,
    SUBSCRIPTION_RESUMED,
    SUBSCRIPTION_UPDATED,
    WITHDRAWAL_COMPLETED,
    BalanceLow,
    DepositCompleted,
    PaymentFailed,
    PaymentSucceeded,
    WithdrawalCompleted,
)
from billing_contracts.holds import (
    CaptureHold,
    CaptureResult,
    CreditGranted,
    CreditResult,
    GrantCredit,
    HoldEvent,
    HoldResult,
    PlaceHold,
    ReleaseHold,
)
from billing_contracts.invoices import (
    CreateInvoice,
    GetInvoices,
    InvoiceOut,
    InvoicePage,
    InvoicePayResult,
    MarkInvoiceUncollectible,
    PayInvoice,
    VoidInvoice,
)
from billing_contracts.orders import OrderCreated
from billing_contracts.payment_methods import (
    DetachPaymentMethod,
    ListPaymentMethods,
    PaymentMethodEvent,
    PaymentMethodList,
    PaymentMethodOut,
    SetDefaultPaymentMethod,
    SetupPaymentMethod,
    SetupResult,
    UpdateSubscriptionPaymentMethod,
)
from billing_contracts.plan_changes import ChangePlan
from billing_contracts.plans import (
    ListPlans,
    MigratePlan,
    PlanList,
    PlanMigration,
    PlanOut,
    UpsertPlan,
)
from billing_contracts.refunds import PaymentRefunded, RefundPayment, RefundResult
from billing_contracts.subscription_changes import (
    PauseSubscription,
    ResumeSubscription,
    UnpauseSubscription,
)
from billing_contracts.subscriptions import (
    CancelSubscription,
    CreateSubscription,
    GetSubscriptions,
    SubscriptionCreated,
    SubscriptionList,
    SubscriptionOut,
)
from billing_contracts.taxes import ListTaxRates, TaxRateList, TaxRateOut, UpsertTaxRate
from billing_contracts.wallet import (
    BalanceResult,
    Deposit,
    DepositResult,
    GetBalance,
    ListTransactions,
    TransactionPage,
    Withdraw,
    WithdrawResult,
)

E = ErrorCode
_USD = {"amount": "25.00", "currency": "USD"}
_KEY = "3b1f0c9e-order-42"


@dataclass(frozen=True)
class Entry:
    """One queue the worker consumes."""

    queue: str
    kind: Literal["command", "query", "event"]
    request: type[BaseModel]
    reply: Any  # the `data` of a successful reply (a model or a union); None: no reply
    purpose: str
    errors: tuple[ErrorCode, ...] = ()
    example: Mapping[str, Any] = field(default_factory=dict)


ENTRIES: tuple[Entry, ...] = (
    Entry(
        names.WALLET_DEPOSIT,
        "command",
        Deposit,
        DepositResult,
        "Put money on the user's account through a payment provider (without "
        "payment_method_id: the user's default saved method there, if any)",
        (E.PROVIDER_ERROR, E.INVALID_MESSAGE),
        example={"idempotency_key": _KEY, "user_id": "u-42", "amount": _USD, "provider": "sandbox"},
    ),
    Entry(
        names.WALLET_WITHDRAW,
        "command",
        Withdraw,
        WithdrawResult,
        "Take money from the user's account",
        (E.INSUFFICIENT_FUNDS,),
        example={
            "idempotency_key": _KEY,
            "user_id": "u-42",
            "amount": _USD,
            "description": "Order 42",
        },
    ),
    Entry(
        names.WALLET_BALANCE,
        "query",
        GetBalance,
        BalanceResult,
        "The user's balances, one per currency",
        example={"user_id": "u-42", "currency": "USD"},
    ),
    Entry(
        names.WALLET_TRANSACTIONS,
        "query",
        ListTransactions,
        TransactionPage,
        "The user's transactions, newest first, paged",
        (E.INVALID_MESSAGE,),
        example={"user_id": "u-42", "limit": 20},
    ),
    Entry(
        names.PLAN_UPSERT,
        "command",
        UpsertPlan,
        PlanOut,
        "Create a plan, or change the plan with this code: new terms (price, interval, "
        "trial) make its next version, which new subscribers get; subscribers keep theirs",
        example={
            "idempotency_key": _KEY,
            "code": "pro-monthly",
            "name": "Pro",
            "price": {"amount": "9.99", "currency": "USD"},
            "interval": "month",
            "interval_count": 1,
            "trial_days": 14,
        },
    ),
    Entry(
        names.PLAN_LIST,
        "query",
        ListPlans,
        PlanList,
        "The plans (their current versions), or every version of one plan",
        example={"active_only": True},
    ),
    Entry(
        names.SUBSCRIPTION_CREATE,
        "command",
        CreateSubscription,
        SubscriptionCreated,
        "Subscribe a user to a plan, paid from the balance, by Stripe or by YooKassa (a card "
        "subscription without payment_method_id uses the user's default method there; a "
        "coupon discounts its charged periods while it lasts)",
        (
            E.NOT_FOUND,
            E.INSUFFICIENT_FUNDS,
            E.INVALID_STATE,
            E.CURRENCY_MISMATCH,
            E.PROVIDER_ERROR,
            E.INVALID_MESSAGE,
        ),
        example={
            "idempotency_key": _KEY,
            "user_id": "u-42",
            "plan_code": "pro-monthly",
            "payment_source": "balance",
        },
    ),
    Entry(
        names.SUBSCRIPTION_CANCEL,
        "command",
        CancelSubscription,
        SubscriptionOut,
        "Cancel one of a user's subscriptions now or at the end of its period",
        (E.NOT_FOUND, E.INVALID_STATE, E.PROVIDER_ERROR),
        example={
            "idempotency_key": _KEY,
            "user_id": "u-42",
            "subscription_id": "6f0b8d7e-4c1a-4e57-9a0e-0d5b3c2f7a11",
            "at_period_end": True,
        },
    ),
    Entry(
        names.SUBSCRIPTION_GET,
        "query",
        GetSubscriptions,
        SubscriptionOut | SubscriptionList,
        "One of a user's subscriptions by id, or all of them",
        (E.NOT_FOUND,),
        example={"user_id": "u-42"},
    ),
    Entry(
        names.INVOICE_CREATE,
        "command",
        CreateInvoice,
        InvoiceOut,
        "Issue a numbered invoice (a line may name a tax rate: its tax is computed per line; "
        "a coupon is taken off the lines before tax)",
        (E.CURRENCY_MISMATCH, E.INVALID_STATE, E.NOT_FOUND, E.INVALID_MESSAGE),
        example={
            "idempotency_key": _KEY,
            "user_id": "u-42",
            "currency": "USD",
            "lines": [
                {
                    "description": "Sticker",
                    "quantity": 3,
                    "unit_price": {"amount": "1.50", "currency": "USD"},
                    "tax_rate": "vat-de-19",
                }
            ],
        },
    ),
    Entry(
        names.INVOICE_PAY,
        "command",
        PayInvoice,
        InvoicePayResult,
        "Pay one of a user's open invoices from the user's balance, or by card through "
        "Stripe or YooKassa (paid when the provider confirms the payment)",
        (E.NOT_FOUND, E.INSUFFICIENT_FUNDS, E.INVALID_STATE, E.PROVIDER_ERROR),
        example={
            "idempotency_key": _KEY,
            "user_id": "u-42",
            "invoice_id": "6f0b8d7e-4c1a-4e57-9a0e-0d5b3c2f7a11",
            "source": "balance",
        },
    ),
    Entry(
        names.INVOICE_GET,
        "query",
        GetInvoices,
        InvoiceOut | InvoicePage,
        "One of a user's invoices by id, or a user's invoices, paged",
        (E.NOT_FOUND, E.INVALID_MESSAGE),
        example={"user_id": "u-42", "limit": 20},
    ),
    Entry(
        names.ORDER_CREATED_QUEUE,
        "event",
        OrderCreated,
        None,
        "order.created from the Orders service's exchange: one invoice per order_id",
        example={
            "order_id": "o-1001",
            "user_id": "u-42",
            "currency": "USD",
            "items": [
                {
                    "sku": "STK-1",
                    "description": "Sticker",
                    "quantity": 3,
                    "unit_price": {"amount": "1.50", "currency": "USD"},
                }
            ],
        },
    ),
    Entry(
        names.WALLET_DEPOSIT_CANCEL,
        "command",
        CancelDeposit,
        CancelDepositResult,
        "Cancel one of the user's processing deposits at its provider (a payment the "
        "customer made first stands: the deposit completes)",
        (E.NOT_FOUND, E.INVALID_STATE, E.PROVIDER_ERROR),
        example={
            "idempotency_key": _KEY,
            "user_id": "u-42",
            "transaction_id": "5fbc63ee-4fee-5e26-859c-dbaa2c0b9a34",
        },
    ),
    Entry(
        names.WALLET_HOLD,
        "command",
        PlaceHold,
        HoldResult,
        "Reserve money of the user's account for a while (a saga's hold)",
        (E.INSUFFICIENT_FUNDS,),
        example={
            "idempotency_key": _KEY,
            "user_id": "u-42",
            "amount": _USD,
            "expires_in_seconds": 900,
            "reference": "saga-42",
        },
    ),
    Entry(
        names.WALLET_HOLD_CAPTURE,
        "command",
        CaptureHold,
        CaptureResult,
        "Turn (part of) one of the user's open holds into a withdrawal, releasing the rest",
        (E.NOT_FOUND, E.INVALID_STATE, E.CURRENCY_MISMATCH, E.INVALID_MESSAGE),
        example={
            "idempotency_key": _KEY,
            "user_id": "u-42",
            "hold_id": "6f0b8d7e-4c1a-4e57-9a0e-0d5b3c2f7a11",
            "amount": {"amount": "20.00", "currency": "USD"},
        },
    ),
    Entry(
        names.WALLET_HOLD_RELEASE,
        "command",
        ReleaseHold,
        HoldResult,
        "Free one of the user's open holds",
        (E.NOT_FOUND, E.INVALID_STATE),
        example={
            "idempotency_key": _KEY,
            "user_id": "u-42",
            "hold_id": "6f0b8d7e-4c1a-4e57-9a0e-0d5b3c2f7a11",
        },
    ),
    Entry(
        names.WALLET_CREDIT,
        "command",
        GrantCredit,
        CreditResult,
        "Give the user goodwill or promotional money (admins only)",
        (E.FORBIDDEN,),
        example={
            "idempotency_key": _KEY,
            "user_id": "u-42",
            "amount": _USD,
            "reason": "sorry for the outage",
        },
    ),
    Entry(
        names.PAYMENT_REFUND,
        "command",
        RefundPayment,
        RefundResult,
        "Refund one of a user's completed payments, in full or in part, to where it came "
        "from or to the balance",
        (E.NOT_FOUND, E.INSUFFICIENT_FUNDS, E.INVALID_STATE, E.CURRENCY_MISMATCH, E.PROVIDER_ERROR),
        example={
            "idempotency_key": _KEY,
            "user_id": "u-42",
            "transaction_id": "5fbc63ee-4fee-5e26-859c-dbaa2c0b9a34",
            "amount": {"amount": "10.00", "currency": "USD"},
            "reason": "requested_by_customer",
            "destination": "original",
        },
    ),
)
_PM = "pm_1QxYz2eZvKYlo2C"
ENTRIES += (
    Entry(
        names.PAYMENT_METHOD_SETUP,
        "command",
        SetupPaymentMethod,
        SetupResult,
        "Start saving a payment method (Stripe: a SetupIntent's client_secret; YooKassa: the "
        "redirect of a held 1.00 RUB payment, canceled once confirmed, needs return_url; the "
        "sandbox saves a test card); saved when the provider confirms it",
        (E.PROVIDER_ERROR, E.INVALID_MESSAGE),
        example={"idempotency_key": _KEY, "user_id": "u-42", "provider": "stripe"},
    ),
    Entry(
        names.PAYMENT_METHOD_LIST,
        "query",
        ListPaymentMethods,
        PaymentMethodList,
        "The user's saved payment methods (detached ones left out)",
        example={"user_id": "u-42"},
    ),
    Entry(
        names.PAYMENT_METHOD_DETACH,
        "command",
        DetachPaymentMethod,
        PaymentMethodOut,
        "Remove one of the user's saved methods, at the provider too; never charged again",
        (E.NOT_FOUND, E.PROVIDER_ERROR),
        example={"idempotency_key": _KEY, "user_id": "u-42", "provider": "stripe",
                 "payment_method_id": _PM},
    ),
    Entry(
        names.PAYMENT_METHOD_SET_DEFAULT,
        "command",
        SetDefaultPaymentMethod,
        PaymentMethodOut,
        "Make one of the user's saved methods the default at its provider",
        (E.NOT_FOUND, E.PROVIDER_ERROR),
        example={"idempotency_key": _KEY, "user_id": "u-42", "provider": "stripe",
                 "payment_method_id": _PM},
    ),
    Entry(
        names.SUBSCRIPTION_UPDATE_PAYMENT_METHOD,
        "command",
        UpdateSubscriptionPaymentMethod,
        SubscriptionOut,
        "The saved method a subscription is charged with from now on (YooKassa: the "
        "renewals; Stripe: the subscription's default_payment_method at Stripe)",
        (E.NOT_FOUND, E.INVALID_STATE, E.PROVIDER_ERROR),
        example={"idempotency_key": _KEY, "user_id": "u-42",
                 "subscription_id": "6f0b8d7e-4c1a-4e57-9a0e-0d5b3c2f7a11",
                 "payment_method_id": "2f1c7a3e-000f-5000-9000-1b2c3d4e5f60"},
    ),
)  # fmt: skip
ENTRIES += (
    Entry(
        names.PLAN_MIGRATE,
        "command",
        MigratePlan,
        PlanMigration,
        "Move the live subscriptions of a plan's older versions to another version from "
        "their next period on (admins only; Stripe-run subscriptions are skipped)",
        (E.FORBIDDEN, E.NOT_FOUND, E.CURRENCY_MISMATCH, E.INVALID_MESSAGE),
        example={"idempotency_key": _KEY, "plan_code": "pro-monthly", "to_version": 2,
                 "when": "next_period"},
    ),
)  # fmt: skip
_SUB_ID = "6f0b8d7e-4c1a-4e57-9a0e-0d5b3c2f7a11"
ENTRIES += (
    Entry(
        names.SUBSCRIPTION_RESUME,
        "command",
        ResumeSubscription,
        SubscriptionOut,
        "Undo a period-end cancel of one of a user's subscriptions while its period runs "
        "(Stripe: cancel_at_period_end false at Stripe)",
        (E.NOT_FOUND, E.INVALID_STATE, E.PROVIDER_ERROR),
        example={"idempotency_key": _KEY, "user_id": "u-42", "subscription_id": _SUB_ID},
    ),
    Entry(
        names.SUBSCRIPTION_PAUSE,
        "command",
        PauseSubscription,
        SubscriptionOut,
        "Pause one of a user's subscriptions: no renewals, no dunning (balance, YooKassa: "
        "from the end of the paid period; Stripe: pause_collection at once), until "
        "unpaused or `until`",
        (E.NOT_FOUND, E.INVALID_STATE, E.PROVIDER_ERROR, E.INVALID_MESSAGE),
        example={"idempotency_key": _KEY, "user_id": "u-42", "subscription_id": _SUB_ID,
                 "until": "2027-01-15T00:00:00Z"},
    ),
    Entry(
        names.SUBSCRIPTION_UNPAUSE,
        "command",
        UnpauseSubscription,
        SubscriptionOut,
        "Run a paused subscription again: a new period starts now and is charged (balance: "
        "in the command; YooKassa: by the scheduler); a pause not yet in effect is dropped",
        (E.NOT_FOUND, E.INVALID_STATE, E.INSUFFICIENT_FUNDS, E.PROVIDER_ERROR),
        example={"idempotency_key": _KEY, "user_id": "u-42", "subscription_id": _SUB_ID},
    ),
)  # fmt: skip
ENTRIES += (
    Entry(
        names.SUBSCRIPTION_CHANGE_PLAN,
        "command",
        ChangePlan,
        SubscriptionOut,
        "Move one of a user's subscriptions to the current version of a plan (or other "
        "seats): now, the rest of the paid period charged or credited at the difference "
        "(`prorate`, exact, half-even) or not (`none`); or at the period end (the renewal "
        "applies it). A Stripe-run one changes at Stripe first: Stripe's proration invoice "
        "(paid at once) says what it charged or credited",
        (
            E.NOT_FOUND,
            E.INVALID_STATE,
            E.CURRENCY_MISMATCH,
            E.INSUFFICIENT_FUNDS,
            E.INVALID_MESSAGE,
            E.PROVIDER_ERROR,
        ),
        example={
            "idempotency_key": _KEY,
            "user_id": "u-42",
            "subscription_id": _SUB_ID,
            "plan_code": "team-monthly",
            "quantity": 5,
            "when": "now",
            "proration": "prorate",
        },
    ),
)
_INV = "0b1f3c1e-8e0a-4d7b-9a53-31e4f0a9c6d2"
ENTRIES += (
    Entry(
        names.INVOICE_VOID, "command", VoidInvoice, InvoiceOut,
        "Void one of a user's open invoices (it keeps its number; a subscription's period "
        "invoice is voided by canceling the subscription)",
        (E.NOT_FOUND, E.INVALID_STATE),
        example={"idempotency_key": _KEY, "user_id": "u-42", "invoice_id": _INV,
                 "reason": "issued in error"},
    ),
    Entry(
        names.INVOICE_MARK_UNCOLLECTIBLE, "command", MarkInvoiceUncollectible, InvoiceOut,
        "Write off one of a user's open invoices as uncollectible (it can still be paid)",
        (E.NOT_FOUND, E.INVALID_STATE),
        example={"idempotency_key": _KEY, "user_id": "u-42", "invoice_id": _INV,
                 "reason": "customer unreachable"},
    ),
)  # fmt: skip
ENTRIES += (
    Entry(
        names.TAX_RATE_UPSERT, "command", UpsertTaxRate, TaxRateOut,
        "Create or change a tax rate invoice lines may name (admins only); invoices "
        "already issued keep the rate they were issued with",
        (E.FORBIDDEN, E.INVALID_MESSAGE),
        example={"idempotency_key": _KEY, "code": "vat-de-19", "name": "VAT (DE) 19 %",
                 "percent": "19", "inclusive": False},
    ),
    Entry(
        names.TAX_RATE_LIST, "query", ListTaxRates, TaxRateList,
        "Every tax rate, by code", example={},
    ),
    Entry(
        names.COUPON_UPSERT, "command", UpsertCoupon, CouponOut,
        "Create a coupon (admins only), or change its name or active; its terms never "
        "change (other terms for its code: invalid_state, use a new code)",
        (E.FORBIDDEN, E.INVALID_STATE, E.INVALID_MESSAGE),
        example={"idempotency_key": _KEY, "code": "WELCOME10", "name": "Welcome: 10 % off",
                 "percent_off": "10", "duration": "repeating", "duration_in_periods": 3},
    ),
    Entry(
        names.COUPON_LIST, "query", ListCoupons, CouponList,
        "Every coupon, by code", example={},
    ),
)  # fmt: skip
BY_QUEUE: Mapping[str, Entry] = MappingProxyType({entry.queue: entry for entry in ENTRIES})

# Every event on billing.events (routing key = type) and the model of its `data`.
EVENT_MODELS: Mapping[str, type[BaseModel]] = MappingProxyType(
    {
        DEPOSIT_COMPLETED: DepositCompleted,
        WITHDRAWAL_COMPLETED: WithdrawalCompleted,
        PAYMENT_SUCCESS: PaymentSucceeded,
        PAYMENT_FAILED: PaymentFailed,
        BALANCE_LOW: BalanceLow,
        SUBSCRIPTION_CREATED: SubscriptionEvent,
        SUBSCRIPTION_RENEWED: SubscriptionEvent,
        SUBSCRIPTION_PAST_DUE: SubscriptionEvent,
        SUBSCRIPTION_CANCELED: SubscriptionEvent,
        SUBSCRIPTION_UPDATED: SubscriptionUpdated,
        SUBSCRIPTION_PAUSED: SubscriptionEvent,
        SUBSCRIPTION_RESUMED: SubscriptionEvent,
        INVOICE_CREATED: InvoiceEvent,
        INVOICE_PAID: InvoiceEvent,
        INVOICE_VOIDED: InvoiceEvent,
        INVOICE_UNCOLLECTIBLE: InvoiceEvent,
        INVOICE_OVERDUE: InvoiceEvent,
        HOLD_CREATED: HoldEvent,
        HOLD_CAPTURED: HoldEvent,
        HOLD_RELEASED: HoldEvent,
        HOLD_EXPIRED: HoldEvent,
        CREDIT_GRANTED: CreditGranted,
        PAYMENT_REFUNDED: PaymentRefunded,
        PAYMENT_METHOD_SAVED: PaymentMethodEvent,
        PAYMENT_METHOD_REMOVED: PaymentMethodEvent,
    }
)
EVENT_PURPOSES: Mapping[str, str] = MappingProxyType(
    {
        DEPOSIT_COMPLETED: "A deposit was credited to the account",
        WITHDRAWAL_COMPLETED: "A withdrawal was debited from the account",
        PAYMENT_SUCCESS: "A payment went through (deposit, charge, invoice payment)",
        PAYMENT_FAILED: "A payment was declined or canceled",
        BALANCE_LOW: "A balance fell below the threshold (once per crossing)",
        SUBSCRIPTION_CREATED: "A subscription became live (active or trialing)",
        SUBSCRIPTION_RENEWED: "A subscription period was paid",
        SUBSCRIPTION_PAST_DUE: "A renewal charge failed; dunning retries follow",
        SUBSCRIPTION_CANCELED: "A subscription ended",
        SUBSCRIPTION_UPDATED: "A subscription was moved to another version of its plan "
        "(billing.plan.migrate); its next period charges the new terms. Or its plan or seats "
        "were changed (billing.subscription.change-plan: `change`, the old terms in `from_*`, "
        "the proration charged or credited)",
        SUBSCRIPTION_PAUSED: "A pause took effect: no renewals, no dunning until unpaused",
        SUBSCRIPTION_RESUMED: "A period-end cancel or pause was undone, or a paused "
        "subscription runs again",
        INVOICE_CREATED: "An invoice was issued",
        INVOICE_PAID: "An invoice was paid",
        INVOICE_VOIDED: "An open invoice was voided (by request, or its subscription ended)",
        INVOICE_UNCOLLECTIBLE: "An open invoice was written off as uncollectible",
        INVOICE_OVERDUE: "An open invoice passed its due_at unpaid (once per invoice)",
        HOLD_CREATED: "Money was reserved by a hold",
        HOLD_CAPTURED: "A hold was captured (its withdrawal made, the rest released)",
        HOLD_RELEASED: "A hold was released on request",
        HOLD_EXPIRED: "A hold expired and was released by the worker",
        CREDIT_GRANTED: "An admin credited the account (goodwill, promotion)",
        PAYMENT_REFUNDED: "A refund of a payment completed (by command or at the provider)",
        PAYMENT_METHOD_SAVED: "A payment method was saved, as the provider confirmed it",
        PAYMENT_METHOD_REMOVED: "A saved payment method was detached",
    }
)

_TX = "5fbc63ee-4fee-5e26-859c-dbaa2c0b9a34"
_SUB = {
    "subscription_id": "6f0b8d7e-4c1a-4e57-9a0e-0d5b3c2f7a11",
    "user_id": "u-42",
    "plan_code": "pro-monthly",
    "status": "active",
    "payment_source": "balance",
    "current_period_start": "2026-11-25T09:30:00Z",
    "current_period_end": "2026-12-25T09:30:00Z",
    "cancel_at_period_end": False,
    "reason": None,
    "amount": {"amount": "9.99", "currency": "USD"},
    "plan_version": 1,
    "quantity": 1,
    "pause_at_period_end": False,
    "paused_until": None,
}
_INVOICE = {
    "invoice_id": "0b1f3c1e-8e0a-4d7b-9a53-31e4f0a9c6d2",
    "number": "INV-2026-000042",
    "user_id": "u-42",
    "order_id": "o-1001",
    "status": "open",
    "currency": "USD",
    "lines": [
        {
            "description": "Sticker",
            "quantity": 3,
            "unit_price": {"amount": "1.50", "currency": "USD"},
            "amount": {"amount": "4.50", "currency": "USD"},
            "tax_rate": "vat-de-19",
            "tax_percent": "19",
            "tax_inclusive": False,
            "tax": {"amount": "0.86", "currency": "USD"},
        }
    ],
    "subtotal": {"amount": "4.50", "currency": "USD"},
    "total": {"amount": "5.36", "currency": "USD"},
    "tax": {"amount": "0.86", "currency": "USD"},
    "due_at": None,
    "paid_at": None,
}
_PAYMENT = {
    "transaction_id": _TX,
    "user_id": "u-42",
    "kind": "deposit",
    "amount": _USD,
    "provider": "stripe",
    "provider_ref": "pi_3PqRsT2eZvKYlo2C",
    "status": "completed",
}
_HOLD = {
    "hold_id": "0c6a52d4-3f0e-5b8e-9d37-2f1f4c8a9e10",
    "user_id": "u-42",
    "status": "open",
    "amount": _USD,
    "captured": None,
    "reference": "saga-42",
    "expires_at": "2026-11-26T10:15:00Z",
    "balance": {"amount": "100.00", "currency": "USD"},
    "available": {"amount": "75.00", "currency": "USD"},
}
_METHOD_EVENT = {
    "user_id": "u-42",
    "payment_method": {
        "payment_method_id": "pm_1QxYz2eZvKYlo2C",
        "provider": "stripe",
        "brand": "visa",
        "last4": "4242",
        "exp_month": 12,
        "exp_year": 2034,
        "is_default": True,
        "created_at": "2026-11-25T09:30:00Z",
    },
}
# An example of each event's `data` (documentation; validated by the tests).
EVENT_EXAMPLES: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        DEPOSIT_COMPLETED: {"transaction_id": _TX, "user_id": "u-42", "amount": _USD,
                            "provider": "sandbox", "balance": _USD},
        WITHDRAWAL_COMPLETED: {"transaction_id": _TX, "user_id": "u-42", "amount": _USD,
                               "balance": {"amount": "0.00", "currency": "USD"},
                               "description": "Order 42", "reference": None},
        PAYMENT_SUCCESS: _PAYMENT,
        PAYMENT_FAILED: {**_PAYMENT, "status": "failed", "failure_code": "card_declined",
                         "failure_message": "Your card was declined."},
        BALANCE_LOW: {"user_id": "u-42", "currency": "USD",
                      "balance": {"amount": "7.50", "currency": "USD"},
                      "threshold": {"amount": "10.00", "currency": "USD"}},
        SUBSCRIPTION_CREATED: _SUB,
        SUBSCRIPTION_RENEWED: _SUB,
        SUBSCRIPTION_PAST_DUE: {**_SUB, "status": "past_due", "reason": "insufficient_funds"},
        SUBSCRIPTION_CANCELED: {**_SUB, "status": "canceled", "reason": "canceled_by_request"},
        SUBSCRIPTION_UPDATED: {**_SUB, "amount": None, "plan_version": 2, "from_plan_version": 1,
                               "effective_at": "2026-12-25T09:30:00Z"},
        SUBSCRIPTION_PAUSED: {**_SUB, "status": "paused", "amount": None,
                              "paused_until": "2027-01-15T00:00:00Z"},
        SUBSCRIPTION_RESUMED: {**_SUB, "amount": None, "reason": "unpaused"},
        INVOICE_CREATED: _INVOICE,
        INVOICE_PAID: {**_INVOICE, "status": "paid", "paid_at": "2026-11-26T10:00:00Z"},
        INVOICE_VOIDED: {**_INVOICE, "status": "void", "voided_at": "2026-11-26T10:00:00Z",
                         "reason": "issued in error"},
        INVOICE_UNCOLLECTIBLE: {**_INVOICE, "status": "uncollectible",
                                "uncollectible_at": "2026-11-26T10:00:00Z",
                                "reason": "customer unreachable"},
        INVOICE_OVERDUE: {**_INVOICE, "due_at": "2026-11-25T00:00:00Z",
                          "overdue_at": "2026-11-25T00:01:00Z"},
        HOLD_CREATED: _HOLD,
        HOLD_CAPTURED: {**_HOLD, "status": "captured",
                        "captured": {"amount": "20.00", "currency": "USD"},
                        "balance": {"amount": "80.00", "currency": "USD"},
                        "available": {"amount": "80.00", "currency": "USD"}},
        HOLD_RELEASED: {**_HOLD, "status": "released",
                        "available": {"amount": "100.00", "currency": "USD"}},
        HOLD_EXPIRED: {**_HOLD, "status": "expired",
                       "available": {"amount": "100.00", "currency": "USD"}},
        CREDIT_GRANTED: {"transaction_id": _TX, "user_id": "u-42", "amount": _USD,
                         "balance": _USD, "reason": "sorry for the outage",
                         "granted_by": "billing-admin"},
        PAYMENT_REFUNDED: {"transaction_id": _TX, "user_id": "u-42",
                           "refund_id": "0c4f5a2e-9d1b-5e8f-a6c3-7b2d1e0f9a84",
                           "amount": {"amount": "10.00", "currency": "USD"},
                           "refunded_total": {"amount": "10.00", "currency": "USD"},
                           "destination": "original", "provider": "stripe"},
        PAYMENT_METHOD_SAVED: _METHOD_EVENT,
        PAYMENT_METHOD_REMOVED: _METHOD_EVENT,
    }
)  # fmt: skip
