"""`billing-worker audit`: the ledger's invariants, checked in the database.

Each check is one query returning the offending rows; an empty result is a pass.
Operators run it after an incident; the fault suite runs it after every run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from billing_worker.ops.audit_holds import HOLD_CHECKS
from billing_worker.ops.audit_invoices import INVOICE_CHECKS
from billing_worker.ops.audit_versions import VERSION_CHECKS

# Money that moved through the wallet: completed (or since refunded) deposits and admin
# credits in;
# completed balance-paid withdrawals, subscription charges and invoice payments out, and
# the refunds of deposits (a refund row carries its deposit's account; its amount leaves
# the balance when the refund is asked); refunds to the balance (provider `balance`) in.
_BALANCES = """
SELECT a.id AS account_id, a.user_id, a.currency, a.balance_minor,
       coalesce(m.expected, 0) AS expected_minor
FROM virtual_accounts a
LEFT JOIN (
    SELECT account_id,
           sum(CASE WHEN kind = 'deposit' AND status IN ('completed', 'refunded')
                    THEN amount_minor
                    WHEN kind IN ('withdrawal', 'subscription_charge', 'invoice_payment')
                         AND provider = 'balance' AND status IN ('completed', 'refunded')
                         THEN -amount_minor
                    WHEN kind = 'refund' AND provider = 'balance' AND status = 'completed'
                         THEN amount_minor
                    WHEN kind = 'refund' AND status IN ('created', 'processing', 'completed')
                         THEN -amount_minor
                    WHEN kind = 'credit' AND status = 'completed' THEN amount_minor
                    ELSE 0 END) AS expected
    FROM transactions WHERE account_id IS NOT NULL GROUP BY account_id
) m ON m.account_id = a.id
WHERE a.balance_minor <> coalesce(m.expected, 0) OR a.balance_minor < 0
"""

_CHECKS: dict[str, str] = {
    "balance differs from the sum of its completed transactions (or is negative)": _BALANCES,
    "transaction processing without a provider reference": """
        SELECT id, user_id, kind, provider, created_at FROM transactions
        WHERE status = 'processing' AND provider_ref IS NULL
    """,
    "provider payment begun with no intent to finish it": """
        SELECT t.id, t.user_id, t.kind, t.provider, t.created_at FROM transactions t
        WHERE t.status = 'created' AND t.provider_ref IS NULL AND t.provider <> 'balance'
          AND NOT EXISTS (SELECT 1 FROM provider_intents i WHERE i.id = t.id)
    """,
    "provider intent whose payment is gone or already answered": """
        SELECT i.id, i.kind, i.user_id, i.provider, i.created_at, t.status, t.provider_ref
        FROM provider_intents i LEFT JOIN transactions t ON t.id = i.id
        WHERE i.kind IN ('deposit', 'yookassa_subscription', 'yookassa_renewal', 'refund')
          AND (t.id IS NULL OR t.status <> 'created' OR t.provider_ref IS NOT NULL)
    """,
    "transaction whose audit trail does not end in its status": """
        SELECT t.id, t.status, last.to_status AS last_recorded
        FROM transactions t
        LEFT JOIN LATERAL (
            SELECT to_status FROM transaction_transitions tt
            WHERE tt.transaction_id = t.id ORDER BY tt.id DESC LIMIT 1
        ) last ON true
        WHERE last.to_status IS DISTINCT FROM t.status
    """,
    "audit trail with a move the state machine forbids": """
        SELECT transaction_id, from_status, to_status, at FROM transaction_transitions
        WHERE (coalesce(from_status, '-'), to_status) NOT IN (
            ('-', 'created'), ('created', 'processing'), ('created', 'failed'),
            ('processing', 'completed'), ('processing', 'failed'),
            ('processing', 'canceled'), ('completed', 'refunded'))
    """,
    "gap or duplicate in a year's invoice numbers": """
        SELECT year, count(*) AS invoices, max(seq) AS highest, count(DISTINCT seq) AS distinct
        FROM (SELECT split_part(number, '-', 2)::int AS year,
                     split_part(number, '-', 3)::bigint AS seq FROM invoices) n
        GROUP BY year HAVING count(*) <> max(seq) OR count(DISTINCT seq) <> count(*)
    """,
    "invoice sequence behind its invoices": """
        SELECT s.year, s.last_value, max(split_part(i.number, '-', 3)::bigint) AS highest
        FROM number_sequences s JOIN invoices i
          ON split_part(i.number, '-', 2)::int = s.year AND s.name = 'invoice'
        GROUP BY s.year, s.last_value
        HAVING s.last_value <> max(split_part(i.number, '-', 3)::bigint)
    """,
    "paid invoice without exactly one completed payment": """
        SELECT i.id, i.number, i.total_minor, count(t.id) AS payments
        FROM invoices i LEFT JOIN transactions t
          ON t.invoice_id = i.id AND t.kind = 'invoice_payment'
         AND t.status IN ('completed', 'refunded')
        WHERE i.status = 'paid' AND i.total_minor > 0
          AND i.subscription_id IS NULL  -- a period's invoice is paid by its charge (below)
        GROUP BY i.id HAVING count(t.id) <> 1
    """,
    "subscription whose paid periods disagree with its charges": """
        SELECT s.id, s.payment_source, s.paid_periods, count(c.id) AS charges
        FROM subscriptions s LEFT JOIN subscription_charges c ON c.subscription_id = s.id
        WHERE s.payment_source IN ('balance', 'yookassa')
        GROUP BY s.id HAVING s.paid_periods <> count(c.id)
    """,
    "provider payment or refund completed without the provider's confirmation": """
        SELECT id, kind, provider, status, amount_minor, currency, provider_confirmation
        FROM transactions
        WHERE provider IN ('stripe', 'yookassa') AND status IN ('completed', 'refunded')
          AND kind IN ('deposit', 'subscription_charge', 'invoice_payment', 'refund')
          AND (provider_confirmation IS NULL
               OR provider_confirmation->>'amount_minor' IS DISTINCT FROM amount_minor::text
               OR provider_confirmation->>'currency' IS DISTINCT FROM currency)
    """,
    "refunds exceeding their payment, or a payment refunded other than in full": """
        SELECT p.id, p.kind, p.status, p.amount_minor,
               coalesce(sum(r.amount_minor), 0) AS refunded_minor
        FROM transactions p
        LEFT JOIN transactions r ON r.refund_of = p.id AND r.status = 'completed'
        WHERE p.status = 'refunded' OR p.id IN (SELECT refund_of FROM transactions)
        GROUP BY p.id
        HAVING coalesce(sum(r.amount_minor), 0) > p.amount_minor
            OR (p.status = 'refunded') <> (coalesce(sum(r.amount_minor), 0) = p.amount_minor)
            OR bool_or(r.currency <> p.currency)
    """,
    **HOLD_CHECKS,
    **VERSION_CHECKS,
    **INVOICE_CHECKS,
    "refunds in flight and done exceeding their payment": """
        SELECT p.id, p.kind, p.amount_minor, sum(r.amount_minor) AS held_minor
        FROM transactions p JOIN transactions r ON r.refund_of = p.id
        WHERE r.status IN ('created', 'processing', 'completed')
        GROUP BY p.id HAVING sum(r.amount_minor) > p.amount_minor
    """,
    "completed refund at a provider without the provider's matching confirmation": """
        SELECT id, provider, amount_minor, currency, provider_confirmation FROM transactions
        WHERE kind = 'refund' AND status = 'completed' AND provider <> 'balance'
          AND (provider_ref IS NULL OR provider_confirmation IS NULL
               OR provider_confirmation->>'amount_minor' IS DISTINCT FROM amount_minor::text
               OR provider_confirmation->>'currency' IS DISTINCT FROM currency)
    """,
    "command recorded without its reply": """
        SELECT scope, key, created_at FROM idempotency_records
        WHERE reply IS NULL AND scope NOT LIKE 'provider:%' AND scope NOT LIKE 'reconcile:%'
    """,
}
# Only where the sandbox is off: money it "received" was never paid by anyone.
_SANDBOX_MONEY = (
    "sandbox money on a worker without the sandbox",
    """
    SELECT id, user_id, kind, status, amount_minor, currency FROM transactions
    WHERE provider = 'sandbox' AND status IN ('completed', 'refunded')
    """,
)


@dataclass(frozen=True)
class Finding:
    check: str
    rows: list[dict[str, Any]]


async def audit(connection: asyncpg.Connection, *, sandbox_enabled: bool = True) -> list[Finding]:
    """Run every check (in one repeatable-read snapshot); the failed ones with their rows.

    `sandbox_enabled=False` (a production worker) also finds any sandbox money.
    """
    findings = []
    checks = dict(_CHECKS)
    if not sandbox_enabled:
        checks[_SANDBOX_MONEY[0]] = _SANDBOX_MONEY[1]
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        for check, sql in checks.items():
            rows = await connection.fetch(sql)
            if rows:
                findings.append(Finding(check, [dict(row) for row in rows]))
    return findings


CHECK_NAMES = tuple(_CHECKS)


def check_names(*, sandbox_enabled: bool) -> tuple[str, ...]:
    """The checks `audit` runs with this setting."""
    return CHECK_NAMES if sandbox_enabled else (*CHECK_NAMES, _SANDBOX_MONEY[0])
