"""Queue, exchange and routing-key names: the topology other services integrate against."""

from typing import Final

# Command and query queues on the default exchange (routing key = queue name), each also
# bound by its own name to COMMANDS_EXCHANGE.
PLAN_UPSERT: Final = "billing.plan.upsert"
PLAN_LIST: Final = "billing.plan.list"
SUBSCRIPTION_CREATE: Final = "billing.subscription.create"
SUBSCRIPTION_CANCEL: Final = "billing.subscription.cancel"
SUBSCRIPTION_GET: Final = "billing.subscription.get"
WALLET_DEPOSIT: Final = "billing.wallet.deposit"
WALLET_DEPOSIT_CANCEL: Final = "billing.wallet.deposit.cancel"
WALLET_WITHDRAW: Final = "billing.wallet.withdraw"
WALLET_BALANCE: Final = "billing.wallet.balance"
WALLET_TRANSACTIONS: Final = "billing.wallet.transactions"
INVOICE_CREATE: Final = "billing.invoice.create"
INVOICE_PAY: Final = "billing.invoice.pay"
INVOICE_GET: Final = "billing.invoice.get"
INVOICE_VOID: Final = "billing.invoice.void"
INVOICE_MARK_UNCOLLECTIBLE: Final = "billing.invoice.mark-uncollectible"
WALLET_HOLD: Final = "billing.wallet.hold"
WALLET_HOLD_CAPTURE: Final = "billing.wallet.hold.capture"
WALLET_HOLD_RELEASE: Final = "billing.wallet.hold.release"
WALLET_CREDIT: Final = "billing.wallet.credit"
PAYMENT_REFUND: Final = "billing.payment.refund"
PAYMENT_METHOD_SETUP: Final = "billing.payment-method.setup"
PAYMENT_METHOD_LIST: Final = "billing.payment-method.list"
PAYMENT_METHOD_DETACH: Final = "billing.payment-method.detach"
PAYMENT_METHOD_SET_DEFAULT: Final = "billing.payment-method.set-default"
SUBSCRIPTION_UPDATE_PAYMENT_METHOD: Final = "billing.subscription.update-payment-method"
PLAN_MIGRATE: Final = "billing.plan.migrate"
SUBSCRIPTION_RESUME: Final = "billing.subscription.resume"
SUBSCRIPTION_PAUSE: Final = "billing.subscription.pause"
SUBSCRIPTION_UNPAUSE: Final = "billing.subscription.unpause"
TAX_RATE_UPSERT: Final = "billing.tax-rate.upsert"
TAX_RATE_LIST: Final = "billing.tax-rate.list"
COUPON_UPSERT: Final = "billing.coupon.upsert"
COUPON_LIST: Final = "billing.coupon.list"
SUBSCRIPTION_CHANGE_PLAN: Final = "billing.subscription.change-plan"

COMMAND_QUEUES: Final = (
    PLAN_UPSERT,
    SUBSCRIPTION_CREATE,
    SUBSCRIPTION_CANCEL,
    WALLET_DEPOSIT,
    WALLET_WITHDRAW,
    INVOICE_CREATE,
    INVOICE_PAY,
    WALLET_DEPOSIT_CANCEL,
    WALLET_HOLD,
    WALLET_HOLD_CAPTURE,
    WALLET_HOLD_RELEASE,
    WALLET_CREDIT,
    PAYMENT_REFUND,
    PAYMENT_METHOD_SETUP,
    PAYMENT_METHOD_DETACH,
    PAYMENT_METHOD_SET_DEFAULT,
    SUBSCRIPTION_UPDATE_PAYMENT_METHOD,
    PLAN_MIGRATE,
    SUBSCRIPTION_RESUME,
    SUBSCRIPTION_PAUSE,
    SUBSCRIPTION_UNPAUSE,
    INVOICE_VOID,
    INVOICE_MARK_UNCOLLECTIBLE,
    TAX_RATE_UPSERT,
    COUPON_UPSERT,
    SUBSCRIPTION_CHANGE_PLAN,
)
QUERY_QUEUES: Final = (
    PLAN_LIST,
    SUBSCRIPTION_GET,
    WALLET_BALANCE,
    WALLET_TRANSACTIONS,
    INVOICE_GET,
    PAYMENT_METHOD_LIST,
    TAX_RATE_LIST,
    COUPON_LIST,
)

# A durable topic exchange, declared without arguments, with every command and query
# queue bound by its name: one publisher (e.g. a NestJS client with
# `{exchange: "billing.commands", wildcards: true}`) reaches them all by routing key.
COMMANDS_EXCHANGE: Final = "billing.commands"

# Inbound events.
ORDERS_EXCHANGE: Final = "orders"  # owned by the Orders service; name configurable in the worker
ORDER_CREATED: Final = "order.created"
ORDER_CREATED_QUEUE: Final = "billing.orders.order-created"

# Relay -> worker: provider callbacks (raw body, header `x-provider`). The relay publishes
# to a direct exchange only its broker user may write; the queue is bound to it by
# PROVIDER_CALLBACK_ROUTING_KEY (any other routing key, e.g. the relay's health probe,
# routes nowhere).
PROVIDER_EVENTS_QUEUE: Final = "billing.provider-events"
PROVIDER_CALLBACKS_EXCHANGE: Final = "billing.provider-callbacks"
PROVIDER_CALLBACK_ROUTING_KEY: Final = "callback"
PROVIDER_HEADER: Final = "x-provider"
# The provider's own signature header, forwarded verbatim so the worker checks it again.
PROVIDER_SIGNATURE_HEADER: Final = "x-provider-signature"
# HMAC of a sandbox callback, with a key only the worker (its database) holds.
SANDBOX_SIGNATURE_HEADER: Final = "x-billing-sandbox-signature"
# Who originally sent a message the worker republished (retry copies carry the
# worker's own validated AMQP user id, so the original sender travels here).
SENDER_HEADER: Final = "x-billing-sender"

# Everything the worker tells the world; routing key = event type.
EVENTS_EXCHANGE: Final = "billing.events"

# Dead letters.
DEAD_LETTER_EXCHANGE: Final = "billing.dlx"
DEAD_LETTER_QUEUE: Final = "billing.dead-letter"
REASON_HEADER: Final = "x-billing-reason"
ORIGINAL_QUEUE_HEADER: Final = "x-billing-original-queue"
ATTEMPTS_HEADER: Final = "x-billing-attempts"
