"""The scaled template of the benchmark (benchmarks/scale.py): built consistent, reused
when finished, rebuilt when a build was interrupted, copied per run, probed.

Every test builds a small template of its own (a unique name, dropped afterwards), so
runs of the suite side by side never share one. No timing is asserted.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime

import asyncpg
import pytest

from benchmarks import env as services
from benchmarks import scale
from benchmarks.plan import Plan

pytestmark = pytest.mark.integration

ACCOUNTS, TRANSACTIONS = 1_200, 12_000

# Every hot query the probe times (the names of its result).
PROBED = {
    "wallet.transactions first page", "wallet.transactions deep cursor",
    "invoice.get first page", "invoice.get deep cursor", "idempotency lookup (every command)",
    "reconcile: claim processing", "reconcile: claim expired",
    "reconcile: claim pending refunds", "reconcile: claim stale intents",
    "renewals: due scan", "hold expiry: due scan", "invoice overdue: scan",
    "retention: idempotency records", "retention: outbox", "relay: unpublished batch",
    "relay: lag",
}  # fmt: skip


class Interrupted(Exception):
    """Stands for a build killed halfway (Ctrl-C, a crash)."""


def own_name(accounts: int, transactions: int) -> str:
    return f"{scale.template_name(accounts, transactions)}_{uuid.uuid4().hex[:8]}"


async def admin(base: str) -> asyncpg.Connection:
    return await asyncpg.connect(services.asyncpg_dsn(base))


async def drop(base: str, name: str) -> None:
    connection = await admin(base)
    try:
        await scale.drop_template(connection, name)
    finally:
        await connection.close()


@pytest.fixture
async def template(postgres_server: str) -> AsyncIterator[str]:
    name = await scale.ensure_template(
        postgres_server, accounts=ACCOUNTS, transactions=TRANSACTIONS,
        name=own_name(ACCOUNTS, TRANSACTIONS), progress=lambda _line: None,
    )  # fmt: skip
    yield name
    await drop(postgres_server, name)


@pytest.fixture
async def copy(postgres_server: str, template: str) -> AsyncIterator[str]:
    """A run's database: `CREATE DATABASE ... TEMPLATE` of the test's template."""
    run = services.run_env(postgres_server, services.DEFAULT_AMQP, f"{template}_run")
    await services.copy_template(run, template)
    yield run.dsn
    await services.drop_database(run, postgres_server)


async def connect(base: str, name: str) -> asyncpg.Connection:
    return await asyncpg.connect(services.with_database(base, name))


async def fresh_schema(base: str) -> set[tuple[str, ...]]:
    """What `billing-worker migrate` makes of an empty database."""
    run = services.run_env(
        base, services.DEFAULT_AMQP, f"bench_scale_schema_{uuid.uuid4().hex[:8]}"
    )
    await services.migrate(run)
    try:
        db = await asyncpg.connect(run.dsn)
        try:
            return await scale._schema(db)
        finally:
            await db.close()
    finally:
        await services.drop_database(run, base)


async def orphans(db: asyncpg.Connection) -> list[str]:
    """Rows whose foreign key names no row, for every foreign key of the schema."""
    keys = await db.fetch(
        """
        SELECT c.conname, c.conrelid::regclass::text AS child, c.confrelid::regclass::text
               AS parent,
               array(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY k(n, i)
                     JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n
                     ORDER BY k.i)::text[] AS columns,
               array(SELECT a.attname FROM unnest(c.confkey) WITH ORDINALITY k(n, i)
                     JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n
                     ORDER BY k.i)::text[] AS referenced
        FROM pg_constraint c
        WHERE c.contype = 'f' AND c.connamespace = 'public'::regnamespace
        """
    )
    assert len(keys) > 20  # the schema's foreign keys, not none
    found = []
    for key in keys:
        columns = zip(key["columns"], key["referenced"], strict=True)
        pairs = " AND ".join(f'p."{r}" = c."{k}"' for k, r in columns)
        present = " AND ".join(f'c."{k}" IS NOT NULL' for k in key["columns"])
        count = await db.fetchval(
            f"SELECT count(*) FROM {key['child']} c WHERE {present} "  # noqa: S608
            f"AND NOT EXISTS (SELECT 1 FROM {key['parent']} p WHERE {pairs})"
        )
        if count:
            found.append(f"{key['conname']}: {count}")
    return found


async def test_the_template_is_consistent(postgres_server: str, template: str) -> None:
    marker = await scale.template_marker(postgres_server, template)
    assert marker is not None
    assert marker[scale.MARKER] == 1
    assert (marker["accounts"], marker["transactions"]) == (ACCOUNTS, TRANSACTIONS)
    db = await connect(postgres_server, template)
    try:
        counts = {t: await db.fetchval(f"SELECT count(*) FROM {t}")  # noqa: S608
                  for t in scale.LOADED}  # fmt: skip
        sizes = scale.Sizes(ACCOUNTS, TRANSACTIONS)
        assert counts["billing_users"] == counts["virtual_accounts"] == ACCOUNTS
        assert counts["transactions"] == counts["transaction_transitions"] == TRANSACTIONS
        assert counts["idempotency_records"] == TRANSACTIONS
        assert counts["invoices"] == counts["invoice_lines"] == sizes.invoices
        assert counts["subscriptions"] == sizes.subscriptions
        assert counts["holds"] == sizes.holds
        assert counts["outbox"] == sizes.outbox

        # Balances: the completed deposits less the completed withdrawals; holds within.
        wrong = await db.fetch(
            """
            SELECT a.user_id, a.balance_minor, coalesce(t.moved, 0) AS moved
            FROM virtual_accounts a LEFT JOIN (
                SELECT account_id, sum(CASE kind WHEN 'withdrawal' THEN -amount_minor
                                                 ELSE amount_minor END) AS moved
                FROM transactions WHERE status = 'completed' GROUP BY account_id
            ) t ON t.account_id = a.id
            WHERE a.balance_minor <> coalesce(t.moved, 0)
            """
        )
        assert wrong == []
        assert await db.fetchval("SELECT count(*) FROM virtual_accounts WHERE balance_minor > 0")
        held = await db.fetchval(
            """
            SELECT count(*) FROM virtual_accounts a
            WHERE a.held_minor <> (SELECT coalesce(sum(h.amount_minor), 0) FROM holds h
                                   WHERE h.account_id = a.id AND h.status = 'open')
            """
        )
        assert held == 0
        assert await db.fetchval("SELECT count(*) FROM holds WHERE status = 'open'") > 0

        # One transition per transaction, to its status.
        assert await db.fetchval(
            "SELECT count(*) FROM transactions t WHERE (SELECT count(*) FROM "
            "transaction_transitions x WHERE x.transaction_id = t.id AND x.to_status = t.status) "
            "<> 1"
        ) == 0  # fmt: skip
        # One idempotency record per transaction, in the worker's scope, answering it.
        matched = await db.fetchval(
            """
            SELECT count(*) FROM transactions t JOIN idempotency_records r
              ON r.scope = 'wallet.' || CASE t.kind WHEN 'withdrawal' THEN 'withdraw'
                                                    ELSE 'deposit' END || '|user:' || t.user_id
             AND r.key = t.reference
            WHERE r.reply -> 'data' -> 'transaction' ->> 'id' = t.id::text
              AND r.reply -> 'data' -> 'transaction' ->> 'user_id' = t.user_id
              AND r.reply ->> 'ok' = 'true' AND length(r.request_hash) = 64
            """
        )
        assert matched == TRANSACTIONS

        # The shape the scans need: skewed users, old stuck payments, stale intents.
        per_user = await db.fetch(
            "SELECT user_id, count(*) AS n FROM transactions GROUP BY user_id ORDER BY n DESC"
        )
        assert per_user[0]["user_id"] == scale.heavy_users(ACCOUNTS)[0]
        assert per_user[0]["n"] >= TRANSACTIONS // 20
        assert per_user[len(per_user) // 2]["n"] <= 20
        statuses = dict(await db.fetch("SELECT status, count(*) FROM transactions GROUP BY 1"))
        assert set(statuses) == {"completed", "processing", "created", "failed"}
        assert statuses["completed"] > 0.95 * TRANSACTIONS
        assert await db.fetchval("SELECT count(*) FROM provider_intents") == statuses["created"]
        kinds = dict(await db.fetch("SELECT kind, count(*) FROM transactions GROUP BY 1"))
        assert set(kinds) == {"withdrawal", "deposit"}
        span = await db.fetchval("SELECT max(created_at) - min(created_at) FROM transactions")
        assert span.days > 700

        # Invoice numbers: gap-free per year, as number_sequences says.
        years = await db.fetch(
            "SELECT split_part(number, '-', 2)::int AS year, count(*) AS n, "
            "max(split_part(number, '-', 3)::int) AS last FROM invoices GROUP BY 1"
        )
        sequences = dict(await db.fetch("SELECT year, last_value FROM number_sequences"))
        assert {row["year"]: row["n"] for row in years} == sequences
        assert all(row["n"] == row["last"] for row in years)

        # Foreign keys: every one validated, no row naming a missing one.
        assert await db.fetchval(
            "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND NOT convalidated"
        ) == 0  # fmt: skip
        assert await orphans(db) == []
        # The schema is exactly the migrated one: every key and index built again.
        schema = await scale._schema(db)
    finally:
        await db.close()
    assert schema == await fresh_schema(postgres_server)


async def test_a_run_seeds_on_top_and_its_rows_are_told_apart(
    postgres_server: str, template: str, copy: str
) -> None:
    """The benchmark's own seeding goes on a copy of the template; the filters check.py
    uses (user range, creation time) find exactly the run's rows."""
    marker = await scale.template_marker(postgres_server, template)
    assert marker
    db = await asyncpg.connect(copy)
    try:
        run_started = await db.fetchval("SELECT now()")
        plan = Plan("scaled", accounts=20)
        for _ in range(3):
            await plan.new_deposit()
        await plan.seed(db)
        bench = "user_id >= 'bench-user-' AND user_id < 'bench-user.'"
        assert await db.fetchval(f"SELECT count(*) FROM virtual_accounts WHERE {bench}") == 20  # noqa: S608
        assert await db.fetchval(f"SELECT count(*) FROM transactions WHERE {bench}") == 3  # noqa: S608
        assert await db.fetchval(
            "SELECT count(*) FROM virtual_accounts WHERE user_id LIKE 'bench-user-%'"
        ) == 20  # fmt: skip
        built = datetime.fromisoformat(marker["built_at"])
        for seeded in (
            "SELECT max(created_at) FROM transactions WHERE user_id LIKE 'scale-user-%'",
            "SELECT max(created_at) FROM idempotency_records",
            "SELECT max(created_at) FROM outbox",
            "SELECT max(created_at) FROM invoices",
        ):
            assert await db.fetchval(seeded) < built < run_started, seeded
        assert await db.fetchval(
            "SELECT count(*) FROM idempotency_records WHERE created_at >= $1", run_started
        ) == 0  # fmt: skip
        assert await db.fetchval(
            "SELECT count(*) FROM outbox WHERE created_at >= $1", run_started
        ) == 0  # fmt: skip
    finally:
        await db.close()


async def test_a_finished_template_is_reused_and_an_interrupted_one_rebuilt(
    postgres_server: str,
) -> None:
    accounts, transactions = 600, 3_000
    sizes = {"accounts": accounts, "transactions": transactions}
    name = own_name(accounts, transactions)
    lines: list[str] = []

    def interrupt_after_the_first_copy(line: str) -> None:
        if line.startswith("  COPY transactions"):
            raise Interrupted(line)

    def noted(line: str) -> None:
        lines.append(line)

    try:
        with pytest.raises(Interrupted):
            await scale.ensure_template(
                postgres_server, **sizes, name=name, progress=interrupt_after_the_first_copy
            )
        assert await scale.template_marker(postgres_server, name) == {}  # there, unfinished

        await scale.ensure_template(postgres_server, **sizes, name=name, progress=noted)
        assert any("dropping a half-seeded one" in line for line in lines), lines
        assert any("built in" in line for line in lines), lines
        first = await scale.template_marker(postgres_server, name)
        assert first
        assert first["transactions"] == transactions
        db = await connect(postgres_server, name)
        try:
            assert await db.fetchval("SELECT count(*) FROM transactions") == transactions
            assert await scale._schema(db) == await fresh_schema(postgres_server)
        finally:
            await db.close()

        lines.clear()
        await scale.ensure_template(postgres_server, **sizes, name=name, progress=noted)
        assert any("reused" in line for line in lines), lines
        assert not any("built in" in line for line in lines), lines
        assert await scale.template_marker(postgres_server, name) == first

        lines.clear()
        await scale.ensure_template(postgres_server, **sizes, name=name, progress=noted,
                                    rebuild=True)  # fmt: skip
        assert any("rebuilding" in line for line in lines), lines
        rebuilt = await scale.template_marker(postgres_server, name)
        assert rebuilt
        assert rebuilt["built_at"] != first["built_at"]
    finally:
        await drop(postgres_server, name)


async def test_the_probe_times_every_hot_query_and_finds_an_index_for_each(copy: str) -> None:
    """On a template this small PostgreSQL rightly prefers sequential scans, so the plans
    are explained with `enable_seqscan = off` (for the EXPLAINs only): a sequential scan
    that remains, or a whole-index scan with no index condition, means no index can serve
    the query. Dropping one index the hold-expiry scan needs must make that show."""
    result = await scale.probe(copy, samples=3, explain_settings={"enable_seqscan": "off"})

    assert set(result["query_p99_ms"]) == set(result["query_p50_ms"]) == PROBED
    assert all(result["query_p99_ms"][name] >= result["query_p50_ms"][name] > 0 for name in PROBED)
    assert set(result["plans"]) == set(result["generic_plans"]) == PROBED
    assert all(result["plans"][name] for name in PROBED)
    assert "ix_transactions_user_created" in result["plans"]["wallet.transactions deep cursor"]
    assert result["seq_scans"] == []

    db = await asyncpg.connect(copy)
    try:
        await db.execute("DROP INDEX ix_holds_open_expires_at")
    finally:
        await db.close()
    without = await scale.probe(copy, samples=1, explain_settings={"enable_seqscan": "off"})
    assert without["seq_scans"]
    assert all(problem.startswith("hold expiry: due scan") for problem in without["seq_scans"])
