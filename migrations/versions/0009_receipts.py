"""YooKassa receipts (54-FZ): the vat_code of a plan

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01

- `plans.vat_code`: the vat_code (1-12) of the receipt item of the plan's YooKassa
  charges; NULL = `BILLING_YOOKASSA_VAT_CODE`.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0009'
down_revision: str | Sequence[str] | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('plans', sa.Column('vat_code', sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column('plans', 'vat_code')
