"""Migration 0012 gives every period paid before it its paid invoice, numbered after the
year's invoices, so the audit's "every paid period has exactly one paid invoice" holds
for the whole history."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from sqlalchemy.ext.asyncio import create_async_engine

from billing_worker.db.engine import driver_connection
from billing_worker.db.migrate import alembic_config
from billing_worker.ops.audit import audit

pytestmark = pytest.mark.integration

_ANCHOR = datetime(2031, 1, 31, 9, 30, tzinfo=UTC)


async def test_the_periods_paid_before_0012_get_their_invoices(fresh_database_url: str) -> None:
    config = alembic_config(fresh_database_url)
    await asyncio.to_thread(command.downgrade, config, "0010")
    year = datetime.now(UTC).year
    user, balance_sub, stripe_sub, plan = "backfill-user", uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    charge = uuid.uuid4()
    engine = create_async_engine(fresh_database_url)
    try:
        async with driver_connection(engine) as db:
            await db.execute("INSERT INTO billing_users (id, user_id) VALUES ($1, $2)",
                             uuid.uuid4(), user)  # fmt: skip
            await db.execute(
                "INSERT INTO plans (id, code, name, price_minor, currency, interval, "
                "interval_count) VALUES ($1, 'pro', 'Pro', 999, 'USD', 'month', 1)",
                plan,
            )
            for sub, source, status in ((balance_sub, "balance", "active"),
                                        (stripe_sub, "stripe", "canceled")):  # fmt: skip
                await db.execute(
                    "INSERT INTO subscriptions (id, user_id, plan_id, status, payment_source, "
                    "billing_anchor, paid_periods) VALUES ($1, $2, $3, $6, $4, $5, 2)",
                    sub, user, plan, source, _ANCHOR, status,
                )  # fmt: skip
            await db.execute(
                "INSERT INTO transactions (id, user_id, kind, status, amount_minor, currency, "
                "provider, subscription_id, completed_at) VALUES "
                "($1, $2, 'subscription_charge', 'completed', 999, 'USD', 'balance', $3, now())",
                charge, user, balance_sub,
            )  # fmt: skip
            feb, mar = _ANCHOR.replace(month=2, day=28), _ANCHOR.replace(month=3, day=31)
            for sub, index, start, end, paid_by, at in (
                (balance_sub, 0, _ANCHOR, feb, charge, _ANCHOR),
                (balance_sub, 1, feb, mar, None, feb),  # a period paid without a charge
                (stripe_sub, 0, _ANCHOR, feb, None, _ANCHOR),  # Stripe's: not ours to invoice
            ):
                await db.execute(
                    "INSERT INTO subscription_charges (subscription_id, period_index, "
                    "period_start, period_end, transaction_id, created_at) "
                    "VALUES ($1, $2, $3, $4, $5, $6)",
                    sub, index, start, end, paid_by, at + timedelta(seconds=1),
                )  # fmt: skip
            await db.execute(  # this year's first invoice, issued before the migration
                "INSERT INTO number_sequences (name, year, last_value) VALUES ('invoice', $1, 1)",
                year,
            )
            await db.execute(
                "INSERT INTO invoices (id, number, user_id, status, currency, subtotal_minor, "
                "total_minor) VALUES ($1, $2, $3, 'open', 'USD', 0, 0)",
                uuid.uuid4(), f"INV-{year}-000001", user,
            )  # fmt: skip

        await asyncio.to_thread(command.upgrade, config, "head")

        async with driver_connection(engine) as db:
            rows = await db.fetch(
                "SELECT i.number, i.status, i.period_index, i.total_minor, i.paid_at, "
                "l.description, l.quantity, l.amount_minor FROM invoices i "
                "JOIN invoice_lines l ON l.invoice_id = i.id "
                "WHERE i.subscription_id = $1 ORDER BY i.period_index",
                balance_sub,
            )
            stripe = await db.fetchval(
                "SELECT count(*) FROM invoices WHERE subscription_id = $1", stripe_sub
            )
            sequence = await db.fetchval(
                "SELECT last_value FROM number_sequences WHERE name = 'invoice' AND year = $1",
                year,
            )
            found = {f.check for f in await audit(db) if "invoice" in f.check}
    finally:
        await engine.dispose()
    assert [tuple(r)[:4] for r in rows] == [
        (f"INV-{year}-000002", "paid", 0, 999),
        (f"INV-{year}-000003", "paid", 1, 0),
    ]
    assert [(r["description"], r["quantity"], r["amount_minor"]) for r in rows] == [
        ("Pro: 2031-01-31 to 2031-02-28", 1, 999),
        ("Pro: 2031-02-28 to 2031-03-31", 1, 0),
    ]
    assert rows[0]["paid_at"] == _ANCHOR + timedelta(seconds=1)
    assert (stripe, sequence) == (0, 3)
    assert found == set()


async def test_the_stripe_invoices_paid_before_0017_get_their_mirrors(
    fresh_database_url: str,
) -> None:
    """Migration 0017 gives every Stripe invoice paid before it its paid mirror (the
    audit's "every paid Stripe invoice has exactly one paid mirror"), numbered after the
    year's invoices; a failed charge gets none."""
    config = alembic_config(fresh_database_url)
    await asyncio.to_thread(command.downgrade, config, "0016")
    year = datetime.now(UTC).year
    user, sub, plan = "mirror-backfill-user", uuid.uuid4(), uuid.uuid4()
    engine = create_async_engine(fresh_database_url)
    try:
        async with driver_connection(engine) as db:
            await db.execute("INSERT INTO billing_users (id, user_id) VALUES ($1, $2)",
                             uuid.uuid4(), user)  # fmt: skip
            await db.execute(
                "INSERT INTO plans (id, code, name, price_minor, currency, interval, "
                "interval_count) VALUES ($1, 'pro', 'Pro', 999, 'USD', 'month', 1)",
                plan,
            )
            await db.execute(
                "INSERT INTO subscriptions (id, user_id, plan_id, plan_code, status, "
                "payment_source, billing_anchor, paid_periods, provider_subscription_id) "
                "VALUES ($1, $2, $3, 'pro', 'active', 'stripe', $4, 2, 'sub_old')",
                sub, user, plan, _ANCHOR,
            )  # fmt: skip
            charges = (("in_old1", "completed", 999), ("in_old2", "refunded", 1998),
                       ("in_old3", "failed", 999))  # fmt: skip
            for ref, status, amount in charges:
                await db.execute(
                    "INSERT INTO transactions (id, user_id, kind, status, amount_minor, "
                    "currency, provider, provider_ref, subscription_id, completed_at) VALUES "
                    "($1, $2, 'subscription_charge', $3, $4, 'USD', 'stripe', $5, $6, "
                    "CASE WHEN $3 = 'failed' THEN NULL ELSE now() END)",
                    uuid.uuid4(), user, status, amount, ref, sub,
                )  # fmt: skip
            await db.execute(
                "INSERT INTO number_sequences (name, year, last_value) VALUES ('invoice', $1, 1)",
                year,
            )
            await db.execute(  # this year's first invoice, issued before the migration
                "INSERT INTO invoices (id, number, user_id, status, currency, subtotal_minor, "
                "total_minor) VALUES ($1, $2, $3, 'open', 'USD', 0, 0)",
                uuid.uuid4(), f"INV-{year}-000001", user,
            )  # fmt: skip

        await asyncio.to_thread(command.upgrade, config, "head")

        async with driver_connection(engine) as db:
            rows = await db.fetch(
                "SELECT i.number, i.status, i.stripe_invoice_id, i.total_minor, "
                "l.description, l.amount_minor FROM invoices i "
                "JOIN invoice_lines l ON l.invoice_id = i.id "
                "WHERE i.subscription_id = $1 ORDER BY i.number",
                sub,
            )
            found = {f.check for f in await audit(db) if "invoice" in f.check.lower()}
    finally:
        await engine.dispose()
    assert [tuple(r) for r in rows] == [
        (f"INV-{year}-000002", "paid", "in_old1", 999, "Stripe invoice in_old1", 999),
        (f"INV-{year}-000003", "paid", "in_old2", 1998, "Stripe invoice in_old2", 1998),
    ]
    assert found == set()
