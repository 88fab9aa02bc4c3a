"""invoice lifecycle: void, uncollectible, overdue, and an invoice for every paid period

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01

- `invoices` gains `subscription_id` + `period_index` (the subscription period it bills;
  unique together, both or neither), `overdue_at` (set once by the overdue job),
  `voided_at`, `uncollectible_at` and `status_reason` (why it was voided or written off),
  and a partial index of the overdue job's scan.
- Every period of a balance or YooKassa subscription paid before this revision gets its
  paid invoice now (one line: the plan and the period, quantity 1, what was charged),
  numbered in this year's gap-free sequence after the invoices already there, so that
  "every paid period has exactly one paid invoice" holds for the whole history.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0012'
down_revision: str | Sequence[str] | None = '0011'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIMESTAMPS = ('overdue_at', 'voided_at', 'uncollectible_at')

# The invoices of the periods paid before this revision, numbered after this year's last.
_BACKFILL = r"""
WITH todo AS (
    SELECT c.subscription_id, c.period_index, c.period_start, c.period_end,
           c.created_at AS paid_at, s.user_id, p.name AS plan_name,
           coalesce(t.amount_minor, 0) AS amount_minor,
           coalesce(t.currency, p.currency) AS currency,
           row_number() OVER (ORDER BY c.created_at, c.id) AS n,
           count(*) OVER () AS total
    FROM subscription_charges c
    JOIN subscriptions s ON s.id = c.subscription_id
    JOIN plans p ON p.id = s.plan_id
    LEFT JOIN transactions t ON t.id = c.transaction_id
    WHERE s.payment_source IN ('balance', 'yookassa')
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
        created_at, updated_at, subscription_id, period_index
    )
    SELECT id,
           'INV-' || year || '-' || CASE WHEN length(seq_text) < 6 THEN lpad(seq_text, 6, '0')
                                         ELSE seq_text END,
           user_id, 'paid', currency, amount_minor, amount_minor, paid_at, now(), now(),
           subscription_id, period_index
    FROM numbered
    RETURNING id
)
INSERT INTO invoice_lines (
    invoice_id, position, description, quantity, unit_price_minor, amount_minor
)
SELECT numbered.id, 0,
       numbered.plan_name || ': '
           || to_char(numbered.period_start AT TIME ZONE 'UTC', 'YYYY-MM-DD') || ' to '
           || to_char(numbered.period_end AT TIME ZONE 'UTC', 'YYYY-MM-DD'),
       1, numbered.amount_minor, numbered.amount_minor
FROM numbered JOIN invoice ON invoice.id = numbered.id
"""


def upgrade() -> None:
    op.add_column('invoices', sa.Column('subscription_id', sa.Uuid(), nullable=True))
    op.add_column('invoices', sa.Column('period_index', sa.Integer(), nullable=True))
    for column in _TIMESTAMPS:
        op.add_column('invoices', sa.Column(column, sa.DateTime(timezone=True), nullable=True))
    op.add_column('invoices', sa.Column('status_reason', sa.Text(), nullable=True))
    op.create_foreign_key(
        op.f('fk_invoices_subscription_id_subscriptions'), 'invoices', 'subscriptions',
        ['subscription_id'], ['id'],
    )  # fmt: skip
    op.create_unique_constraint(
        op.f('uq_invoices_subscription_period'), 'invoices', ['subscription_id', 'period_index']
    )
    op.create_check_constraint(
        op.f('ck_invoices_subscription_period'), 'invoices',
        '(subscription_id IS NULL) = (period_index IS NULL)',
    )  # fmt: skip
    op.create_index(
        'ix_invoices_overdue_due', 'invoices', ['due_at'],
        postgresql_where=sa.text("status = 'open' AND overdue_at IS NULL AND due_at IS NOT NULL"),
    )  # fmt: skip
    op.execute(_BACKFILL)


def downgrade() -> None:
    # The backfilled period invoices stay: numbers once issued are never taken back.
    op.drop_index('ix_invoices_overdue_due', table_name='invoices')
    op.drop_constraint(op.f('ck_invoices_subscription_period'), 'invoices', type_='check')
    op.drop_constraint(op.f('uq_invoices_subscription_period'), 'invoices', type_='unique')
    op.drop_constraint(op.f('fk_invoices_subscription_id_subscriptions'), 'invoices', type_='foreignkey')
    for column in ('status_reason', *reversed(_TIMESTAMPS), 'period_index', 'subscription_id'):
        op.drop_column('invoices', column)
