"""Tax rates: what `billing.tax-rate.upsert` sets and invoice lines name.

Part of the schema declared in :mod:`billing_worker.db.tables` (same conventions, same
metadata). A percent is `NUMERIC(6, 4)`, exact (never a float); an invoice line copies
the rate it was issued with (code, percent, inclusive), so changing a rate here rewrites
no invoice.
"""

import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import CheckConstraint, Numeric
from sqlmodel import Field, SQLModel

from billing_worker.db.columns import text_field, timestamp_field, updated_at_field


class TaxRate(SQLModel, table=True):
    __tablename__ = "tax_rates"
    __table_args__ = (CheckConstraint("percent >= 0 AND percent < 100", name="percent_range"),)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    code: str = text_field(unique=True)
    name: str = text_field()
    percent: Decimal = Field(sa_type=Numeric(6, 4), nullable=False)
    inclusive: bool = Field(nullable=False)
    created_at: datetime | None = timestamp_field(server_now=True)
    updated_at: datetime | None = updated_at_field()
