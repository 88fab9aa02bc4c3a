"""The audit's checks of invoices (`ops/audit.py` runs them with the others).

Every period a balance or YooKassa subscription paid has exactly one paid invoice, and
each paid period invoice has its period's charge, of its total (a free period: none);
every Stripe invoice a Stripe-run subscription paid (its `subscription_charge`, whose
provider reference is the Stripe invoice) has exactly one paid mirror invoice, of
Stripe's amount paid, whose subtotal is the sum of its lines (Stripe's tax and total are
Stripe's: the sum rules below are for our own invoices);
a subscription that ended left no period invoice open (it voids it); every invoice's
subtotal is the sum of its lines' nets, its discount the sum of their discounts, its
tax the sum of their taxes and its total subtotal - discount + tax; each line's amount
is its quantity times its unit price and its tax the rule of `domain/taxes.py` applied
to the percent the line stores, on its amount less its discount: round half to even of
a x p / 100 (exclusive) or a x p / (100 + p) (inclusive), in integers (the percent in
ten-thousandths), so it matches the worker exactly. Each line's discount recomputes from
the coupon terms its invoice stores (`domain/discounts.py`): percent off, round half to
even of amount x p / 100; amount off, the largest-remainder share of min(D, sum of the
amounts) (an undiscounted invoice's lines: 0).
"""

from __future__ import annotations

# A line's net, and the tax its stored percent gives (0 for an untaxed line): n / d
# rounded half to even with numeric integers, p the percent in ten-thousandths.
_NET = "(l.amount_minor - CASE WHEN l.tax_inclusive THEN l.tax_minor ELSE 0 END)"
_N = "((l.amount_minor - l.discount_minor)::numeric * (l.tax_percent * 10000))"
_D = "(1000000 + CASE WHEN l.tax_inclusive THEN l.tax_percent * 10000 ELSE 0 END)"
_Q = f"div({_N}, {_D})"
_R = f"mod({_N}, {_D})"
_TAX = (
    f"(CASE WHEN l.tax_percent IS NULL THEN 0 ELSE {_Q} + CASE WHEN 2 * {_R} > {_D} "
    f"OR (2 * {_R} = {_D} AND mod({_Q}, 2) = 1) THEN 1 ELSE 0 END END)"
)
# A line's discount from its invoice's stored coupon terms: percent off half even per
# line; amount off D' = min(D, S) (S the sum of the amounts) spread by the largest
# remainder: floor(D' x a / S), plus one for the first D' - sum(floors) lines by
# remainder descending, then position.
_PN = "(l.amount_minor::numeric * (i.coupon_percent_off * 10000))"
_PQ = f"div({_PN}, 1000000)"
_PR = f"mod({_PN}, 1000000)"
_PERCENT_SHARE = (
    f"({_PQ} + CASE WHEN 2 * {_PR} > 1000000 OR (2 * {_PR} = 1000000 AND mod({_PQ}, 2) = 1) "
    "THEN 1 ELSE 0 END)"
)
_SHARES = f"""
    WITH base AS (
        SELECT l.invoice_id, l.position, l.amount_minor, l.discount_minor,
               i.coupon_code, i.coupon_percent_off, i.coupon_amount_off_minor,
               sum(l.amount_minor::numeric) OVER (PARTITION BY l.invoice_id) AS s,
               {_PERCENT_SHARE} AS percent_share
        FROM invoice_lines l JOIN invoices i ON i.id = l.invoice_id
    ), spread AS (
        SELECT *, least(coalesce(coupon_amount_off_minor, 0)::numeric, s) AS off FROM base
    ), floors AS (
        SELECT *,
               CASE WHEN s = 0 THEN 0 ELSE div(off * amount_minor, s) END AS q,
               CASE WHEN s = 0 THEN 0 ELSE mod(off * amount_minor, s) END AS r
        FROM spread
    ), ranked AS (
        SELECT *,
               off - sum(q) OVER (PARTITION BY invoice_id) AS left_over,
               row_number() OVER (PARTITION BY invoice_id ORDER BY r DESC, position) AS place
        FROM floors
    )
    SELECT invoice_id, position, amount_minor, discount_minor, coupon_code,
           CASE WHEN coupon_code IS NULL THEN 0
                WHEN coupon_percent_off IS NOT NULL THEN percent_share
                ELSE q + CASE WHEN place <= left_over THEN 1 ELSE 0 END END
               AS expected_discount_minor
    FROM ranked
"""  # noqa: S608 - only constant SQL is formatted in

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
          AND i.stripe_invoice_id IS NULL
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
    "invoice whose total is not the sum of its lines": f"""
        SELECT i.id, i.number, i.subtotal_minor, i.discount_minor, i.tax_minor,
               i.total_minor, coalesce(sum({_NET}), 0) AS lines_net_minor,
               coalesce(sum(l.discount_minor), 0) AS lines_discount_minor,
               coalesce(sum(l.tax_minor), 0) AS lines_tax_minor
        FROM invoices i LEFT JOIN invoice_lines l ON l.invoice_id = i.id
        WHERE i.stripe_invoice_id IS NULL
        GROUP BY i.id
        HAVING i.subtotal_minor <> coalesce(sum({_NET}), 0)
            OR i.discount_minor <> coalesce(sum(l.discount_minor), 0)
            OR i.tax_minor <> coalesce(sum(l.tax_minor), 0)
            OR i.total_minor <> i.subtotal_minor::numeric - i.discount_minor + i.tax_minor
            OR coalesce(bool_or(l.amount_minor <> l.quantity::numeric * l.unit_price_minor),
                        false)
    """,  # noqa: S608 - only constant SQL is formatted in
    "paid Stripe invoice without exactly one paid mirror of its amount": """
        SELECT t.id AS transaction_id, t.provider_ref AS stripe_invoice_id, t.amount_minor,
               count(i.id) AS mirrors, min(i.total_minor) AS mirror_total_minor
        FROM transactions t
        LEFT JOIN invoices i ON i.stripe_invoice_id = t.provider_ref AND i.status = 'paid'
         AND i.subscription_id = t.subscription_id
        WHERE t.provider = 'stripe' AND t.kind = 'subscription_charge'
          AND t.subscription_id IS NOT NULL AND t.status IN ('completed', 'refunded')
        GROUP BY t.id
        HAVING count(i.id) <> 1 OR min(i.total_minor) <> t.amount_minor
            OR min(i.currency) <> t.currency
    """,
    "Stripe mirror whose subtotal is not the sum of its lines": """
        SELECT i.id, i.number, i.stripe_invoice_id, i.subtotal_minor,
               coalesce(sum(l.amount_minor), 0) AS lines_minor
        FROM invoices i LEFT JOIN invoice_lines l ON l.invoice_id = i.id
        WHERE i.stripe_invoice_id IS NOT NULL
        GROUP BY i.id
        HAVING i.subtotal_minor <> coalesce(sum(l.amount_minor), 0)
            OR coalesce(bool_or(l.amount_minor <> l.quantity::numeric * l.unit_price_minor),
                        false)
    """,
    "invoice line whose tax is not its stored rate's": f"""
        SELECT l.invoice_id, l.position, l.amount_minor, l.tax_percent, l.tax_inclusive,
               l.tax_minor, {_TAX} AS expected_tax_minor
        FROM invoice_lines l
        WHERE l.tax_minor <> {_TAX}
    """,  # noqa: S608 - only constant SQL is formatted in
    "invoice line whose discount is not its stored coupon's": f"""
        SELECT * FROM ({_SHARES}) shares WHERE discount_minor <> expected_discount_minor
    """,  # noqa: S608 - only constant SQL is formatted in
}
