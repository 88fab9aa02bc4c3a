"""after the payment: the kinds refunds, cancels, saved methods and credits need

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01

- `transactions.kind` may be `credit`: money an admin grants (goodwill, promotions),
  recorded with who granted it.
- `provider_intents.kind` may be `refund` (a refund asked of the provider),
  `deposit_cancel` (a pending deposit canceled at the provider) and
  `payment_method_setup` (a payment method being saved at the provider).
"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0007'
down_revision: str | Sequence[str] | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TRANSACTION_KINDS = ("deposit", "withdrawal", "subscription_charge", "invoice_payment", "refund")
_INTENT_KINDS = (
    "deposit", "yookassa_subscription", "yookassa_renewal", "stripe_subscription", "stripe_cancel",
)  # fmt: skip
_NEW_INTENT_KINDS = ("refund", "deposit_cancel", "payment_method_setup")


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _replace_check(table: str, name: str, condition: str) -> None:
    op.drop_constraint(op.f(f"ck_{table}_{name}"), table, type_="check")
    op.create_check_constraint(op.f(f"ck_{table}_{name}"), table, condition)


def upgrade() -> None:
    _replace_check("transactions", "kind", _in("kind", (*_TRANSACTION_KINDS, "credit")))
    _replace_check("provider_intents", "kind", _in("kind", (*_INTENT_KINDS, *_NEW_INTENT_KINDS)))


def downgrade() -> None:
    _replace_check("provider_intents", "kind", _in("kind", _INTENT_KINDS))
    _replace_check("transactions", "kind", _in("kind", _TRANSACTION_KINDS))
