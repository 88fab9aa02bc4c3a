"""The audit's checks of invoices (`ops/audit.py` runs them with the others).

Every period a balance or YooKassa subscription paid has exactly one paid invoice, and
each paid period invoice has its period's charge, of its total (a free period: none);
a subscription that ended left no period invoice open (it voids it); every invoice's
total is the sum of its lines (no taxes or discounts: total = subtotal) and each line's
amount its quantity times its unit price.
"""

from __future__ import annotations

INVOICE_CHECKS: dict[str, str] = {
    "paid period without exactly one paid invoice": """
        SELECT c.subscription_id, c.period_index, count(i.id) AS paid_invoices
        FROM subscription_charges c
        JOIN subscriptions s ON s.id = c.subscription_id
        LEFT JOIN invoices i ON i.subscription_id = c.subscription_id
         AND i.period_index = c.period_index AND i.status = 'paid'
        WHERE s.payment_source IN ('balance', 'yookassa')
        GROUP BY c.subscription_id, c.period_index HAVING count(i.id) <> 1
    """,
    "paid period invoice without its period's charge of its total": """
        SELECT i.id, i.number, i.subscription_id, i.period_index, i.total_minor,
               t.id AS transaction_id, t.status AS transaction_status,
               t.amount_minor AS charged_minor
        FROM invoices i
        LEFT JOIN subscription_charges c ON c.subscription_id = i.subscription_id
         AND c.period_index = i.period_index
        LEFT JOIN transactions t ON t.id = c.transaction_id
        WHERE i.subscription_id IS NOT NULL AND i.status = 'paid'
          AND (c.id IS NULL
               OR (t.id IS NULL AND i.total_minor <> 0)
               OR (t.id IS NOT NULL AND (t.status NOT IN ('completed', 'refunded')
                   OR t.amount_minor <> i.total_minor OR t.currency <> i.currency)))
    """,
    "period invoice left open by an ended subscription": """
        SELECT i.id, i.number, i.subscription_id, i.period_index, s.status
        FROM invoices i JOIN subscriptions s ON s.id = i.subscription_id
        WHERE i.status = 'open' AND s.status IN ('canceled', 'incomplete_expired')
    """,
    "invoice whose total is not the sum of its lines": """
        SELECT i.id, i.number, i.subtotal_minor, i.total_minor,
               coalesce(sum(l.amount_minor), 0) AS lines_minor
        FROM invoices i LEFT JOIN invoice_lines l ON l.invoice_id = i.id
        GROUP BY i.id
        HAVING i.subtotal_minor <> coalesce(sum(l.amount_minor), 0)
            OR i.total_minor <> i.subtotal_minor
            OR coalesce(bool_or(l.amount_minor <> l.quantity::numeric * l.unit_price_minor),
                        false)
    """,
}
