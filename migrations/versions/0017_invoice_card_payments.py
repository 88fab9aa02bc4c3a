"""invoice card payments, and a mirror invoice for every paid Stripe invoice

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-01

- `provider_intents.kind` may be `invoice_card`: `billing.invoice.pay` with `source`
  `stripe` / `yookassa`, a provider payment of the invoice total being made. Its payment
  is a `deposit` transaction naming the invoice (`transactions.invoice_id`, which exists
  since 0001): credited to the wallet when the provider confirms it, then the invoice is
  paid from it by an `invoice_payment` (or, for a period invoice, its period charge).
  No data changes: no intent of the new kind exists before.
- `invoices.stripe_invoice_id` (text, unique, NULL for our own invoices): the Stripe
  invoice a mirror copies (`handlers/stripe_invoices.py`), so a redelivered or
  duplicated webhook writes one. A mirror names its subscription without a period of
  ours: the check `subscription_period` holds for our invoices only.
- `invoice_lines.proration` (boolean, default false): a Stripe proration line; only such
  a line may be a credit (negative unit price and amount, no tax of its own).
  Existing rows are ours: stripe_invoice_id NULL, proration false, every check as before.
- Every Stripe invoice paid before this revision (a completed or refunded
  `subscription_charge` whose provider reference is the Stripe invoice) gets its paid
  mirror now, numbered in this year's gap-free sequence after the invoices already
  there: one line of the amount paid (the lines Stripe had are not kept), so "every paid
  Stripe invoice has exactly one paid mirror" holds for the whole history.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0017'
down_revision: str | Sequence[str] | None = '0016'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INTENT_KINDS = (
    "deposit", "yookassa_subscription", "yookassa_renewal", "stripe_subscription", "stripe_cancel",
    "refund", "deposit_cancel", "payment_method_setup",
)  # fmt: skip


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _replace_check(table: str, name: str, condition: str) -> None:
    op.drop_constraint(op.f(f"ck_{table}_{name}"), table, type_="check")
    op.create_check_constraint(op.f(f"ck_{table}_{name}"), table, condition)


# (table, check name, before, after)
_CHECKS = (
    ("invoices", "subscription_period", "(subscription_id IS NULL) = (period_index IS NULL)",
     "(subscription_id IS NULL) = (period_index IS NULL) OR stripe_invoice_id IS NOT NULL"),
    ("invoice_lines", "unit_price_non_negative", "unit_price_minor >= 0",
     "unit_price_minor >= 0 OR proration"),
    ("invoice_lines", "amount_non_negative", "amount_minor >= 0", "amount_minor >= 0 OR proration"),
    ("invoice_lines", "tax_range", "tax_minor BETWEEN 0 AND amount_minor",
     "tax_minor BETWEEN 0 AND amount_minor OR (proration AND tax_minor = 0)"),
    ("invoice_lines", "discount_range", "discount_minor BETWEEN 0 AND amount_minor",
     "discount_minor BETWEEN 0 AND amount_minor OR (proration AND discount_minor = 0)"),
)  # fmt: skip


# The mirrors of the Stripe invoices paid before this revision, numbered after this
# year's last (as 0012 numbered the periods paid before it).
_BACKFILL = r"""
WITH todo AS (
    SELECT t.subscription_id, t.provider_ref, t.user_id, t.amount_minor, t.currency,
           coalesce(t.completed_at, t.created_at) AS paid_at,
           row_number() OVER (ORDER BY coalesce(t.completed_at, t.created_at), t.id) AS n,
           count(*) OVER () AS total
    FROM transactions t
    WHERE t.provider = 'stripe' AND t.kind = 'subscription_charge'
      AND t.subscription_id IS NOT NULL AND t.provider_ref IS NOT NULL
      AND t.status IN ('completed', 'refunded')
), seq AS (
    INSERT INTO number_sequences (name, year, last_value)
    SELECT 'invoice', extract(year FROM now() AT TIME ZONE 'UTC')::int, max(total)
    FROM todo HAVING count(*) > 0
    ON CONFLICT (name, year)
        DO UPDATE SET last_value = number_sequences.last_value + excluded.last_value
    RETURNING year, last_value
), numbered AS (
    SELECT todo.*, gen_random_uuid() AS id,
           (seq.last_value - todo.total + todo.n)::text AS seq_text, seq.year
    FROM todo, seq
), invoice AS (
    INSERT INTO invoices (
        id, number, user_id, status, currency, subtotal_minor, total_minor, paid_at,
        created_at, updated_at, subscription_id, stripe_invoice_id
    )
    SELECT id,
           'INV-' || year || '-' || CASE WHEN length(seq_text) < 6 THEN lpad(seq_text, 6, '0')
                                         ELSE seq_text END,
           user_id, 'paid', currency, amount_minor, amount_minor, paid_at, now(), now(),
           subscription_id, provider_ref
    FROM numbered
    RETURNING id
)
INSERT INTO invoice_lines (
    invoice_id, position, description, quantity, unit_price_minor, amount_minor
)
SELECT numbered.id, 0, 'Stripe invoice ' || numbered.provider_ref, 1,
       numbered.amount_minor, numbered.amount_minor
FROM numbered JOIN invoice ON invoice.id = numbered.id
"""


def upgrade() -> None:
    _replace_check("provider_intents", "kind", _in("kind", (*_INTENT_KINDS, "invoice_card")))
    op.add_column("invoices", sa.Column("stripe_invoice_id", sa.Text(), nullable=True))
    op.create_unique_constraint(
        op.f("uq_invoices_stripe_invoice_id"), "invoices", ["stripe_invoice_id"]
    )
    op.add_column(
        "invoice_lines",
        sa.Column("proration", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    )
    for table, name, _, after in _CHECKS:
        _replace_check(table, name, after)
    op.execute(_BACKFILL)


def downgrade() -> None:
    op.execute("DELETE FROM invoices WHERE stripe_invoice_id IS NOT NULL")  # lines cascade
    for table, name, before, _ in _CHECKS:
        _replace_check(table, name, before)
    op.drop_column("invoice_lines", "proration")
    op.drop_constraint(op.f("uq_invoices_stripe_invoice_id"), "invoices", type_="unique")
    op.drop_column("invoices", "stripe_invoice_id")
    op.execute("DELETE FROM provider_intents WHERE kind = 'invoice_card'")
    _replace_check("provider_intents", "kind", _in("kind", _INTENT_KINDS))
