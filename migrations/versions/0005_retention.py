"""retention: an index of published outbox rows by publication time

Revision ID: 0005_retention
Revises: 0004
Create Date: 2027-01-10

The retention job deletes outbox rows published more than BILLING_OUTBOX_RETENTION_DAYS
ago, a batch at a time in publication order; without an index each batch would scan the
whole table. Idempotency records are already indexed by `created_at`.

The index is built CONCURRENTLY (outside the migration's transaction), so a deployed
outbox stays writable while it is built: commands keep committing their events. A build
that was interrupted leaves an invalid index behind, which the next run drops and builds
again.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_retention"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_outbox_published"
INVALID_LEFTOVER = """
SELECT EXISTS (
    SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
    WHERE c.relname = 'ix_outbox_published' AND NOT i.indisvalid
)
"""


def upgrade() -> None:
    with op.get_context().autocommit_block():
        if op.get_bind().execute(sa.text(INVALID_LEFTOVER)).scalar():
            op.drop_index(INDEX, table_name="outbox", postgresql_concurrently=True)
        op.create_index(
            INDEX,
            "outbox",
            ["published_at"],
            unique=False,
            postgresql_where=sa.text("published_at IS NOT NULL"),
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(INDEX, table_name="outbox", postgresql_concurrently=True, if_exists=True)
