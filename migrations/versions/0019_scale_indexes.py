"""scale indexes: the renewal scheduler's and the refund reconciler's scans read only
what they are after

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-02

The due scan (`SqlSubscriptions.claim_due`, once per renewed subscription) asks for
`active`/`trialing` subscriptions whose period ended, `past_due` ones whose next attempt
came and `paused` ones whose pause ended. `ix_subscriptions_status_period_end` serves
the first arm only: for the other two its index condition is the status alone, so each
call read every past-due and every paused subscription (about 10,000 rows of 200,000
in the benchmark's scaled database, 4,349 heap blocks for 320 due) and sorted what
matched. Two partial indexes give those arms an index condition on their own time:

- `ix_subscriptions_past_due_next_attempt`: `next_attempt_at` of `past_due` rows;
- `ix_subscriptions_paused_until`: `paused_until` of `paused` rows.

The refund reconciler's claim (`jobs/reconcile_refunds.py`) asks for `processing`
refunds untouched for a while. `ix_transactions_processing` holds every processing
transaction, so each round read all of them (the stuck deposits too: 5,950 in the
scaled database) to find the refunds among them. `ix_transactions_processing_refunds`
holds the processing refunds alone, by `updated_at`.

All three are small (only the rows of one status, or one status and kind) and change
nothing else.

They are built CONCURRENTLY, outside the migration's transaction (Alembic's
`autocommit_block`, as 0005_retention does), so deployed `subscriptions` and
`transactions` stay writable while they are built (a plain CREATE INDEX would hold off
every write to `transactions` for its whole scan: seconds on ten million rows). A build
that was interrupted leaves an invalid index behind, which the next run drops and builds
again.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0019'
down_revision: str | Sequence[str] | None = '0018'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# name: (table, column, predicate)
INDEXES = {
    "ix_subscriptions_past_due_next_attempt": (
        "subscriptions", "next_attempt_at", "status = 'past_due'"),
    "ix_subscriptions_paused_until": ("subscriptions", "paused_until", "status = 'paused'"),
    "ix_transactions_processing_refunds": (
        "transactions", "updated_at", "status = 'processing' AND kind = 'refund'"),
}  # fmt: skip
INVALID_LEFTOVER = """
SELECT EXISTS (
    SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
    WHERE c.relname = :name AND NOT i.indisvalid
)
"""


def upgrade() -> None:
    with op.get_context().autocommit_block():
        for name, (table, column, predicate) in INDEXES.items():
            if op.get_bind().execute(sa.text(INVALID_LEFTOVER), {"name": name}).scalar():
                op.drop_index(name, table_name=table, postgresql_concurrently=True)
            op.create_index(
                name, table, [column], unique=False,
                postgresql_where=sa.text(predicate), postgresql_concurrently=True,
                if_not_exists=True,
            )  # fmt: skip


def downgrade() -> None:
    with op.get_context().autocommit_block():
        for name, (table, _, _) in reversed(INDEXES.items()):
            op.drop_index(name, table_name=table, postgresql_concurrently=True, if_exists=True)
