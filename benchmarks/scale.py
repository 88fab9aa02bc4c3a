"""Scaled data for the benchmark: a template database of a million accounts and ten
million transactions, copied for each run, and a probe of the hot queries on it.

    .venv/bin/python -m benchmarks.scale --probe            # build (or reuse), then probe
    .venv/bin/python -m benchmarks.scale --accounts 1000 --transactions 10000 --rebuild

`ensure_template` builds `bench_scale_t_<accounts>_<transactions>_<schema head>` once
and keeps it: `billing-worker migrate` (the real schema), then every table loaded by
binary `COPY ... FREEZE`, `VACUUM ANALYZE`, and a comment on the database saying the
seeding finished. A run's database is `CREATE DATABASE <run> TEMPLATE <template>`
(`env.create(..., template=...)`); the benchmark's own `bench-user-<n>` accounts go on
top. A template without that comment is a build that was interrupted: it is dropped and
built again. An advisory lock keeps two builders of one template apart.

What is seeded (all sizes follow `--accounts` and `--transactions`; figures for the
default 1,000,000 / 10,000,000):

- `scale-user-<n>`: billing_users and one USD virtual account each; each balance is
  the sum of the user's completed deposits less its withdrawals, less nothing held
  (open holds are in `held_minor`, never more than the balance);
- transactions spread over ~2 years, in time order, skewed over users: 10 % of them on
  the 100 heaviest users (~10,000 each: `scale-user-0` .. `scale-user-99`), 20 % on the
  next 10,000 (~200 each), the rest on everybody else (~7 each). Withdrawals (provider
  `balance`, only when the balance covers them) and deposits (Stripe, YooKassa,
  sandbox); all completed but ~1 % failed deposits and a few old `processing` and
  `created` ones (the reconciler's and the expiry's candidates; every `created` one has
  its provider intent, stale). Each has one `transaction_transitions` row and one
  idempotency record in the worker's scope (`wallet.withdraw|user:<user>` /
  `wallet.deposit|user:<user>`, key `scale-<n>` = the transaction's `reference`) with
  the reply the worker would have stored (~400 bytes of JSON);
- 1,000,000 invoices (same skew, one line each, numbered gap-free per year in
  `number_sequences`): mostly paid, some void or written off, some open, the overdue
  ones already announced but those that fell due in the last day;
- 200,000 subscriptions on three plans (one per user, every fifth user): mostly active
  with `current_period_end` spread over the next period and ~0.1 % already due, some
  trialing, past due (a few due for their next attempt), paused (a few due to restart)
  or canceled;
- 50,000 holds: most released or expired, 5 % open, a few of those past expiry;
- 100,000 outbox rows, all published, over the last 8 days (retention keeps 7).

Every seeded row is older than the build (created before it) and every user-keyed one
belongs to a `scale-user-<n>`: a run's own rows are told apart by either.

Loading like `pg_restore` does is what makes the build fit in minutes: the primary and
unique keys, the indexes and the foreign keys of the loaded tables are dropped, the
rows copied (`FREEZE`: written frozen and all-visible, so the VACUUM has nothing left
to rewrite), then every key and index is built again from its own definition
(`pg_get_constraintdef` / `pg_get_indexdef`, so exactly what the migrations made) and
every foreign key added back, which makes PostgreSQL check every reference. The schema
is compared before and after: a difference fails the build. On this 2-core machine a
COPY into the indexed `transactions` ran at ~30,000 rows/s (8 indexes, random uuids)
against ~350,000 rows/s without them.

The rows are encoded here in PostgreSQL's binary COPY format (struct-packed bytes
straight from integers: no datetime or UUID objects), which measured ~2x faster than
`copy_records_to_table` on the same rows (2.9 + 2.8 us a row against 6.1 + 6.3 us,
generation + COPY) and is the only one of the two that can `FREEZE`. The three
transaction streams (transactions, their transitions, their idempotency records) are
generated in one pass and copied on three connections at once.

`probe(dsn)` times the worker's own repository calls on a scaled database (the
transactions history first and deep pages, invoice.get, the idempotency lookup of every
command, the reconciler's claims, the renewal scheduler's due scan, hold expiry,
invoice overdue, retention, the outbox relay) and runs EXPLAIN ANALYZE of each
statement they ran (in a transaction rolled back), both as planned for its parameters
and as the generic plan a prepared statement switches to after five executions when
it is cheaper (asyncpg prepares every statement; the worker's connections keep them).
It lists every sequential scan, whole-index scan, scan that reads many rows to keep
few, or big sort of a big table, and every plan PostgreSQL JIT-compiled.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import re
import struct
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg

if __package__ in (None, ""):  # run as a file: benchmarks/scale.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import env as services
from benchmarks.stats import percentile
from billing_worker.db import outbox
from billing_worker.db.engine import SERVER_SETTINGS
from billing_worker.db.expiry import claim_expired
from billing_worker.db.holds import SqlHolds
from billing_worker.db.idempotency import SqlIdempotency
from billing_worker.db.intents import SqlIntents
from billing_worker.db.invoices import SqlInvoices
from billing_worker.db.migrate import head_revision
from billing_worker.db.reconciliation import claim_processing
from billing_worker.db.retention import delete_outbox, delete_records
from billing_worker.db.subscriptions import SqlSubscriptions
from billing_worker.db.wallet import SqlWallet
from billing_worker.domain.calendar import period_boundary
from billing_worker.domain.invoices import NUMBER_SEQUENCE
from billing_worker.jobs.reconcile_refunds import claim_pending

USER_PREFIX = "scale-user-"
KEY_PREFIX = "scale-"  # idempotency keys and transaction references: scale-<n>
CURRENCY = "USD"
PROVIDERS = ("stripe", "yookassa", "sandbox")
DAY_US = 86_400_000_000
HOUR_US = 3_600_000_000
HISTORY_DAYS = 730  # the seeded history: the two years before the build
MARKER = "benchmarks.scale"  # the comment of a finished template starts with this JSON key

# Share of the transactions (and invoices) of each tier of users.
HEAVY_SHARE = 0.10  # on the heaviest `accounts // 10_000` users
MEDIUM_SHARE = 0.20  # on the next `accounts // 100`
# Of the deposits: still processing (old, stuck), never answered (created), failed.
PROCESSING_SHARE = 0.001
CREATED_SHARE = 0.0004
FAILED_SHARE = 0.01

# The tables a build loads by COPY: their keys, indexes and foreign keys are dropped
# before and made again after (see the module docstring).
LOADED = (
    "billing_users", "virtual_accounts", "transactions", "transaction_transitions",
    "idempotency_records", "invoices", "invoice_lines", "subscriptions", "holds",
    "hold_transitions", "provider_intents", "outbox",
)  # fmt: skip
# A sequential scan of one of these (or a sort of many of their rows) on a hot path is
# what the probe reports.
BIG_TABLES = frozenset({
    "transactions", "transaction_transitions", "idempotency_records", "invoices",
    "invoice_lines", "subscriptions", "virtual_accounts", "billing_users", "outbox",
    "holds", "hold_transitions",
})  # fmt: skip
BIG_SORT_ROWS = 10_000  # a Sort node fed more rows than this is a problem
# ... and so is a scan that threw away more rows than this, ten times what it returned
# (an index condition that does not narrow the scan down to what the query wants).
BIG_FILTER_ROWS = 1_000

_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


class ScaleError(RuntimeError):
    """The template cannot be built or probed; the message is one line."""


def progress_line(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


Progress = Callable[[str], None]


# ---- sizes and names ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sizes:
    accounts: int
    transactions: int

    @property
    def heavy(self) -> int:
        return max(1, self.accounts // 10_000)

    @property
    def medium(self) -> int:
        return max(1, self.accounts // 100)

    @property
    def invoices(self) -> int:
        return self.accounts

    @property
    def subscriptions(self) -> int:
        return self.accounts // 5

    @property
    def holds(self) -> int:
        return self.accounts // 20

    @property
    def outbox(self) -> int:
        """Published events of the last days (what outbox retention keeps: 7 days)."""
        return self.transactions // 100


def schema_head() -> str:
    head = head_revision()
    if head is None:
        raise ScaleError("the migrations have no head revision")
    return head


def template_name(accounts: int, transactions: int, head: str | None = None) -> str:
    """`bench_scale_t_<accounts>_<transactions>_<head>`: one template per size and schema."""
    revision = re.sub(r"[^a-z0-9]", "", (head or schema_head()).lower())
    return f"bench_scale_t_{accounts}_{transactions}_{revision}"[:63]


def user(n: int) -> str:
    return f"{USER_PREFIX}{n}"


def heavy_users(accounts: int, count: int = 20) -> list[str]:
    """The users with the most transactions (and invoices): the first of the heavy tier."""
    return [user(n) for n in range(min(count, Sizes(accounts, 0).heavy))]


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# ---- binary COPY -------------------------------------------------------------------

COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
COPY_TRAILER = struct.pack("!h", -1)
NULL = struct.pack("!i", -1)
_INT4 = struct.Struct("!i").pack
_INT8 = struct.Struct("!iq").pack  # (8, value): an int8 or a timestamptz field
_INT4_FIELD = struct.Struct("!ii").pack  # (4, value)
_UUID_LEN = _INT4(16)


def text(value: str) -> bytes:
    """A text field: its length, then its UTF-8 bytes."""
    data = value.encode()
    return _INT4(len(data)) + data


def jsonb(document: str) -> bytes:
    """A jsonb field: version 1, then the JSON text."""
    data = document.encode()
    return _INT4(len(data) + 1) + b"\x01" + data


def tuple_header(columns: Sequence[str]) -> bytes:
    return struct.pack("!h", len(columns))


def pg_micros(moment: datetime) -> int:
    """A timestamptz as COPY stores it: microseconds since 2000-01-01 UTC."""
    return (moment - _PG_EPOCH) // timedelta(microseconds=1)


def from_micros(micros: int) -> datetime:
    return _PG_EPOCH + timedelta(microseconds=micros)


class IsoClock:
    """`2026-01-02T03:04:05.678901Z` (how the worker's replies spell times) from
    microseconds since 2000, the date part cached."""

    def __init__(self) -> None:
        self._days: dict[int, str] = {}

    def __call__(self, micros: int) -> str:
        day, rest = divmod(micros, DAY_US)
        date = self._days.get(day)
        if date is None:
            date = self._days[day] = (_PG_EPOCH + timedelta(days=day)).date().isoformat()
        seconds, fraction = divmod(rest, 1_000_000)
        hours, seconds = divmod(seconds, 3600)
        minutes, seconds = divmod(seconds, 60)
        return f"{date}T{hours:02d}:{minutes:02d}:{seconds:02d}.{fraction:06d}Z"


def uuid_text(raw: bytes) -> str:
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def wire(minor: int) -> str:
    """Minor units as the wire's decimal string (2-digit currency): 1205 -> '12.05'."""
    return f"{minor // 100}.{minor % 100:02d}"


@dataclass
class Stream:
    """One table's COPY: its columns and the chunks to send (None: the end)."""

    table: str
    columns: tuple[str, ...]
    queue: asyncio.Queue[bytes | None] = field(default_factory=lambda: asyncio.Queue(maxsize=4))


class Meter:
    """Progress lines of a long COPY: rows, rows/s and the ETA, every `every` seconds."""

    def __init__(self, what: str, total: int, say: Progress, every: float = 10.0) -> None:
        self.what, self.total, self.say, self.every = what, total, say, every
        self.started = self.last = time.monotonic()
        self.done = 0

    def add(self, rows: int) -> None:
        self.done += rows
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self.say(self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.monotonic()) - self.started, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate else math.inf
        share = 100 * self.done / self.total if self.total else 100.0
        eta = f", ETA {left:,.0f} s" if self.done < self.total else f" in {elapsed:,.1f} s"
        done = f"{self.done:,}/{self.total:,} ({share:.0f} %)"
        return f"  {self.what}: {done}, {rate:,.0f} rows/s{eta}"


async def copy_streams(
    dsn: str, streams: Sequence[Stream], produce: Callable[[], Awaitable[None]]
) -> None:
    """COPY every stream on its own connection while `produce` fills their queues.

    Each COPY runs in a transaction that first truncates its table, so it may FREEZE.
    """

    async def feed(stream: Stream) -> AsyncIterator[bytes]:
        yield COPY_HEADER
        while (chunk := await stream.queue.get()) is not None:
            yield chunk
        yield COPY_TRAILER

    async def copy(stream: Stream) -> None:
        db = await asyncpg.connect(dsn)
        try:
            async with db.transaction():
                await db.execute(f"TRUNCATE {_quote_ident(stream.table)}")
                await db.copy_to_table(
                    stream.table, source=feed(stream), columns=list(stream.columns),
                    format="binary", freeze=True,
                )  # fmt: skip
        finally:
            await db.close()

    async with asyncio.TaskGroup() as group:
        for stream in streams:
            group.create_task(copy(stream))
        group.create_task(produce())


# ---- the data ----------------------------------------------------------------------

TX_COLUMNS = (
    "id", "user_id", "account_id", "kind", "status", "amount_minor", "currency", "provider",
    "provider_ref", "failure_code", "failure_message", "description", "reference",
    "created_at", "updated_at", "completed_at", "provider_confirmation",
)  # fmt: skip
TRANSITION_COLUMNS = ("id", "transaction_id", "to_status", "at")
RECORD_COLUMNS = ("scope", "key", "request_hash", "reply", "created_at")
INTENT_COLUMNS = (
    "id", "kind", "provider", "user_id", "scope", "idempotency_key", "request_hash",
    "request", "created_at", "updated_at",
)  # fmt: skip
USER_COLUMNS = ("id", "user_id", "email", "created_at")
ACCOUNT_COLUMNS = (
    "id", "user_id", "currency", "balance_minor", "held_minor", "created_at", "updated_at",
)  # fmt: skip
INVOICE_COLUMNS = (
    "id", "number", "user_id", "order_id", "status", "currency", "subtotal_minor",
    "total_minor", "due_at", "paid_at", "created_at", "updated_at", "overdue_at",
    "voided_at", "uncollectible_at", "status_reason",
)  # fmt: skip
LINE_COLUMNS = (
    "id", "invoice_id", "position", "description", "quantity", "unit_price_minor",
    "amount_minor",
)  # fmt: skip
SUBSCRIPTION_COLUMNS = (
    "id", "user_id", "plan_id", "plan_code", "status", "payment_source",
    "provider_subscription_id", "current_period_start", "current_period_end",
    "billing_anchor", "trial_end", "canceled_at", "cancel_reason", "paid_periods",
    "dunning_attempts", "next_attempt_at", "paused_until", "created_at", "updated_at",
)  # fmt: skip
HOLD_COLUMNS = (
    "id", "user_id", "account_id", "currency", "amount_minor", "status", "reference",
    "expires_at", "created_at", "updated_at", "closed_at",
)  # fmt: skip
HOLD_TRANSITION_COLUMNS = ("id", "hold_id", "from_status", "to_status", "reason", "at")
OUTBOX_COLUMNS = (
    "id", "event_id", "exchange", "routing_key", "type", "payload", "created_at",
    "published_at", "attempts",
)  # fmt: skip

# code, name, price (minor units), interval
PLANS = (
    ("scale-basic", "Scale Basic", 999, "month"),
    ("scale-pro", "Scale Pro", 2999, "month"),
    ("scale-annual", "Scale Annual", 29999, "year"),
)

BATCH = 10_000  # rows generated between two hand-overs to the COPY connections


class Seeder:
    """Generates every row of one build: the same rows for the same seed and sizes, but
    for the times, which count back from the build's own."""

    def __init__(self, sizes: Sizes, now: datetime, seed: int = 18) -> None:
        self.sizes = sizes
        self.rng = random.Random(seed)
        self.now_us = pg_micros(now)
        self.start_us = self.now_us - HISTORY_DAYS * DAY_US
        self.iso = IsoClock()
        n = sizes.accounts
        self.user_str = [user(u) for u in range(n)]
        self.user_bytes = [name.encode() for name in self.user_str]
        self.user_text = [_INT4(len(name)) + name for name in self.user_bytes]
        self.account_ids = self.rng.randbytes(16 * n)
        self.balances = [0] * n
        self.held = [0] * n
        self.counts = dict.fromkeys(LOADED, 0)
        self.intents: list[bytes] = []  # encoded rows of the stale intents
        self.plans: list[tuple[UUID, str, str, int, str]] = [
            (UUID(bytes=self.rng.randbytes(16)), code, name, price, interval)
            for code, name, price, interval in PLANS
        ]

    def account_field(self, u: int) -> bytes:
        return _UUID_LEN + self.account_ids[16 * u : 16 * u + 16]

    def tiers(self) -> tuple[int, int, int, float, float]:
        """(heavy, medium, light) user counts and the cuts of a uniform draw between
        them: below the first, a heavy user; below the second, a medium one."""
        heavy = min(self.sizes.heavy, self.sizes.accounts)
        medium = min(self.sizes.medium, self.sizes.accounts - heavy)
        light = self.sizes.accounts - heavy - medium
        heavy_cut = HEAVY_SHARE if medium else 2.0  # nobody else: all heavy
        medium_cut = heavy_cut + MEDIUM_SHARE if light else 2.0
        return heavy, medium, light, heavy_cut, medium_cut

    def pick_user(self) -> int:
        """A user of the skewed distribution: heavy, medium or everybody else."""
        heavy, medium, light, heavy_cut, medium_cut = self.tiers()
        rand, r = self.rng.random, self.rng.random()
        if r < heavy_cut:
            return int(rand() * heavy)
        if r < medium_cut:
            return heavy + int(rand() * medium)
        return heavy + medium + int(rand() * light)

    # -- transactions, their transitions and their idempotency records --

    def transactions(self, first: int, stop: int) -> tuple[bytes, bytes, bytes]:
        """Transactions `first`..`stop - 1` (in time order) as three COPY chunks.

        The hottest loop of the build: fields are emitted as separate byte strings
        (length, then bytes) and joined once per chunk."""
        rng, rand, bits = self.rng, self.rng.random, self.rng.getrandbits
        sizes, balances, user_text, user_str = self.sizes, self.balances, self.user_text, \
            self.user_str  # fmt: skip
        user_bytes = self.user_bytes
        heavy, medium, light, heavy_cut, medium_cut = self.tiers()
        step = (self.now_us - HOUR_US - self.start_us) // max(sizes.transactions, 1)
        start, account_ids = self.start_us, self.account_ids
        count = stop - first
        ids = rng.randbytes(16 * count)
        hashes = rng.randbytes(32 * count).hex()
        tx: list[bytes] = []
        transitions: list[bytes] = []
        records: list[bytes] = []
        tx_append, tr_append, rec_append = tx.extend, transitions.extend, records.extend
        tx_head, tr_head, rec_head = (tuple_header(TX_COLUMNS), tuple_header(TRANSITION_COLUMNS),
                                      tuple_header(RECORD_COLUMNS))  # fmt: skip
        withdrawal, deposit, usd = text("withdrawal"), text("deposit"), text(CURRENCY)
        balance_field, described = text("balance"), text("scale withdrawal")
        statuses = {s: text(s) for s in ("completed", "processing", "created", "failed")}
        completed_field = statuses["completed"]
        declined, declined_text = text("card_declined"), text("Your card was declined.")
        providers = [(p, text(p)) for p in PROVIDERS]
        scope_w, scope_d = b"wallet.withdraw|user:", b"wallet.deposit|user:"
        len_w, len_d = len(scope_w), len(scope_d)
        hash_len, v1, uuid_len = _INT4(64), b"\x01", _UUID_LEN
        processing_cut = PROCESSING_SHARE
        created_cut = PROCESSING_SHARE + CREATED_SHARE
        failed_cut = created_cut + FAILED_SHARE
        day_cache: dict[int, str] = {}
        for j in range(count):
            n = first + j
            at = start + n * step + int(rand() * step)
            r = rand()
            if r < heavy_cut:
                u = int(rand() * heavy)
            elif r < medium_cut:
                u = heavy + int(rand() * medium)
            else:
                u = heavy + medium + int(rand() * light)
            name = user_str[u]
            raw = ids[16 * j : 16 * j + 16]
            h = raw.hex()
            tid = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
            key = b"scale-%d" % n
            key_len = _INT4(len(key))
            request_hash = hashes[64 * j : 64 * j + 64]
            day, micros = divmod(at, DAY_US)
            date = day_cache.get(day)
            if date is None:
                date = day_cache[day] = (_PG_EPOCH + timedelta(days=day)).date().isoformat()
            seconds, fraction = divmod(micros, 1_000_000)
            hours, seconds = divmod(seconds, 3600)
            minutes, seconds = divmod(seconds, 60)
            when = f"{date}T{hours:02d}:{minutes:02d}:{seconds:02d}.{fraction:06d}Z"
            at_field = _INT8(8, at)
            account = account_ids[16 * u : 16 * u + 16]
            amount = 100 + bits(16) % 49_900
            if balances[u] >= amount and rand() < 0.5:  # a withdrawal is always instant
                balance = balances[u] = balances[u] - amount
                status_field = completed_field
                tx_append((
                    tx_head, uuid_len, raw, user_text[u], uuid_len, account, withdrawal,
                    completed_field, _INT8(8, amount), usd, balance_field, NULL, NULL, NULL,
                    described, key_len, key, at_field, at_field, at_field, NULL,
                ))  # fmt: skip
                scope_len, scope = _INT4(len_w + len(user_bytes[u])), scope_w
                reply = (
                    f'{{"ok":true,"data":{{"transaction":{{"id":"{tid}","user_id":"{name}",'
                    f'"kind":"withdrawal","status":"completed","amount":{{"amount":'
                    f'"{amount // 100}.{amount % 100:02d}","currency":"USD"}},'
                    f'"provider":"balance","created_at":"{when}","completed_at":"{when}",'
                    f'"refund_of":null}},"balance":{{"amount":'
                    f'"{balance // 100}.{balance % 100:02d}","currency":"USD"}}}}}}'
                ).encode()
            else:
                amount = 1_000 + bits(17) % 99_000
                provider, provider_field = providers[bits(8) % 3]
                ref = f"{provider[:2]}_pi_scale_{n}"
                ref_bytes = ref.encode()
                ref_field = _INT4(len(ref_bytes)) + ref_bytes
                r = rand()
                if r < processing_cut:
                    status = "processing"
                elif r < created_cut:
                    status = "created"
                elif r < failed_cut:
                    status = "failed"
                else:
                    status = "completed"
                    balances[u] += amount
                status_field = statuses[status]
                if status == "completed":
                    confirmation = (
                        f'{{"object":"payment","id":"{ref}","status":"succeeded",'
                        f'"amount_minor":{amount},"currency":"USD"}}'
                    ).encode()
                    done = _INT8(8, at + 5_000_000)
                    tail: tuple[bytes, ...] = (NULL, NULL, NULL, key_len, key, at_field, done,
                                               done, _INT4(len(confirmation) + 1), v1,
                                               confirmation)  # fmt: skip
                elif status == "failed":
                    tail = (declined, declined_text, NULL, key_len, key, at_field, at_field,
                            NULL, NULL)  # fmt: skip
                else:
                    tail = (NULL, NULL, NULL, key_len, key, at_field, at_field, NULL, NULL)
                tx_append((
                    tx_head, uuid_len, raw, user_text[u], uuid_len, account, deposit,
                    status_field, _INT8(8, amount), usd, provider_field,
                    NULL if status == "created" else ref_field, *tail,
                ))  # fmt: skip
                scope_len, scope = _INT4(len_d + len(user_bytes[u])), scope_d
                action = (
                    '{"type":"redirect","client_secret":null,"confirmation_url":'
                    f'"https://yoomoney.ru/checkout/payments/v2/contract?orderId={ref}"}}'
                    if provider == "yookassa" else
                    f'{{"type":"client_secret","client_secret":"{ref}_secret_'
                    f'{request_hash[:24]}","confirmation_url":null}}'
                )  # fmt: skip
                shown = "created" if status == "created" else "processing"
                reply = (
                    f'{{"ok":true,"data":{{"transaction":{{"id":"{tid}","user_id":"{name}",'
                    f'"kind":"deposit","status":"{shown}","amount":{{"amount":'
                    f'"{amount // 100}.{amount % 100:02d}","currency":"USD"}},'
                    f'"provider":"{provider}","created_at":"{when}","completed_at":null,'
                    f'"refund_of":null}},"payment_action":{action},"payment_method_id":null}}}}'
                ).encode()
                if status == "created":  # the provider was never asked: a stale intent
                    self.intents.append(b"".join((
                        tuple_header(INTENT_COLUMNS), uuid_len, raw, text("deposit"),
                        provider_field, user_text[u], scope_len, scope, user_bytes[u],
                        key_len, key, hash_len, request_hash.encode(),
                        jsonb(f'{{"amount_minor":{amount},"currency":"USD","return_url":null}}'),
                        at_field, at_field,
                    )))  # fmt: skip
            tr_append((tr_head, _INT8(8, n + 1), uuid_len, raw, status_field, at_field))
            rec_append((
                rec_head, scope_len, scope, user_bytes[u], key_len, key, hash_len,
                request_hash.encode(), _INT4(len(reply) + 1), v1, reply, at_field,
            ))  # fmt: skip
        return b"".join(tx), b"".join(transitions), b"".join(records)

    # -- holds (after the transactions: an open hold needs the balance it holds) --

    def holds(self) -> tuple[bytes, bytes]:
        rng, rand, bits = self.rng, self.rng.random, self.rng.getrandbits
        head, tr_head = tuple_header(HOLD_COLUMNS), tuple_header(HOLD_TRANSITION_COLUMNS)
        holds: list[bytes] = []
        trail: list[bytes] = []
        usd = text(CURRENCY)
        opened, created_reason = text("open"), text("hold placed")
        transition = 0
        for n in range(self.sizes.holds):
            u = int(rand() * self.sizes.accounts)
            raw = rng.randbytes(16)
            amount = 100 + bits(14) % 9_900
            available = self.balances[u] - self.held[u]
            if rand() < 0.05 and available >= amount:
                status, closed = "open", None
                created = self.now_us - int(rand() * DAY_US)
                if rand() < 0.05:  # past its expiry: the expiry job's work
                    expires = self.now_us - HOUR_US // 60 - int(rand() * 6 * HOUR_US)
                else:
                    expires = self.now_us + HOUR_US + int(rand() * 7 * DAY_US)
                self.held[u] += amount
            else:
                created = self.start_us + int(rand() * (self.now_us - 2 * DAY_US - self.start_us))
                expires = created + DAY_US
                if rand() < 0.6:
                    status, closed = "released", created + HOUR_US + int(rand() * 20 * HOUR_US)
                else:
                    status, closed = "expired", expires
            updated = closed if closed is not None else created
            holds.extend((
                head, _UUID_LEN, raw, self.user_text[u], self.account_field(u), usd,
                _INT8(8, amount), text(status), text(f"scale-hold-{n}"), _INT8(8, expires),
                _INT8(8, created), _INT8(8, updated), NULL if closed is None else _INT8(8, closed),
            ))  # fmt: skip
            transition += 1
            trail.extend((tr_head, _INT8(8, transition), _UUID_LEN, raw, NULL, opened,
                          created_reason, _INT8(8, created)))  # fmt: skip
            if closed is not None:
                transition += 1
                trail.extend((tr_head, _INT8(8, transition), _UUID_LEN, raw, opened,
                              text(status), text(status), _INT8(8, closed)))  # fmt: skip
        self.counts["holds"] = self.sizes.holds
        self.counts["hold_transitions"] = transition
        return b"".join(holds), b"".join(trail)

    # -- users and accounts (last: the balances are the transactions' sums) --

    def users_and_accounts(self, first: int, stop: int) -> tuple[bytes, bytes]:
        rng, rand = self.rng, self.rng.random
        user_head, account_head = tuple_header(USER_COLUMNS), tuple_header(ACCOUNT_COLUMNS)
        users: list[bytes] = []
        accounts: list[bytes] = []
        usd = text(CURRENCY)
        ids = rng.randbytes(16 * (stop - first))
        for u in range(first, stop):
            joined = self.start_us - int(rand() * 365 * DAY_US)
            users.extend((user_head, _UUID_LEN, ids[16 * (u - first) : 16 * (u - first) + 16],
                          self.user_text[u], text(f"{self.user_str[u]}@example.com"),
                          _INT8(8, joined)))  # fmt: skip
            accounts.extend((
                account_head, self.account_field(u), self.user_text[u], usd,
                _INT8(8, self.balances[u]), _INT8(8, self.held[u]), _INT8(8, joined),
                _INT8(8, self.now_us - HOUR_US),
            ))  # fmt: skip
        return b"".join(users), b"".join(accounts)

    # -- invoices and their lines --

    def invoices(self, first: int, stop: int, numbers: dict[int, int]) -> tuple[bytes, bytes]:
        """Invoices `first`..`stop - 1` in time order, numbered per year (`numbers`: the
        last number of each year so far)."""
        rng, rand, bits = self.rng, self.rng.random, self.rng.getrandbits
        head, line_head = tuple_header(INVOICE_COLUMNS), tuple_header(LINE_COLUMNS)
        invoices: list[bytes] = []
        lines: list[bytes] = []
        usd, one, zero = text(CURRENCY), _INT4_FIELD(4, 1), _INT4_FIELD(4, 0)
        statuses = {s: text(s) for s in ("paid", "open", "void", "uncollectible")}
        step = (self.now_us - HOUR_US - self.start_us) // max(self.sizes.invoices, 1)
        ids = rng.randbytes(16 * (stop - first))
        for n in range(first, stop):
            at = self.start_us + n * step + int(rand() * step)
            year = from_micros(at).year
            numbers[year] = numbers.get(year, 0) + 1
            u = self.pick_user()
            raw = ids[16 * (n - first) : 16 * (n - first) + 16]
            amount = 500 + bits(17) % 99_500
            due = at + 30 * DAY_US
            paid = overdue = voided = written_off = None
            reason: bytes = NULL
            r = rand()
            if r < 0.90:
                status, paid = "paid", at + int(rand() * 3 * DAY_US)
            elif r < 0.96:
                status = "open"
                if due <= self.now_us - DAY_US:  # announced long ago
                    overdue = due + 60_000_000
            elif r < 0.99:
                status, voided, reason = "void", at + DAY_US, text("canceled by the customer")
            else:
                status, written_off, reason = "uncollectible", due + 7 * DAY_US, text("written off")
            if status in ("void", "uncollectible") and (voided or written_off or 0) > self.now_us:
                status, voided, written_off, reason = "open", None, None, NULL
            updated = max(t for t in (at, paid, overdue, voided, written_off) if t is not None)
            invoices.extend((
                head, _UUID_LEN, raw, text(f"INV-{year}-{numbers[year]:06d}"),
                self.user_text[u], text(f"scale-order-{n}"), statuses[status], usd,
                _INT8(8, amount), _INT8(8, amount), _INT8(8, due),
                *(NULL if t is None else _INT8(8, t) for t in (paid,)),
                _INT8(8, at), _INT8(8, updated),
                *(NULL if t is None else _INT8(8, t) for t in (overdue, voided, written_off)),
                reason,
            ))  # fmt: skip
            lines.extend((
                line_head, _INT8(8, n + 1), _UUID_LEN, raw, zero, text(f"Scale order {n}"),
                one, _INT8(8, amount), _INT8(8, amount),
            ))  # fmt: skip
        return b"".join(invoices), b"".join(lines)

    # -- the outbox: events published over the last 8 days --

    def outbox(self, first: int, stop: int) -> tuple[bytes]:
        rng, rand, bits = self.rng, self.rng.random, self.rng.getrandbits
        head, exchange = tuple_header(OUTBOX_COLUMNS), text("billing.events")
        kind, one = text("withdrawal.completed"), _INT4_FIELD(4, 1)
        span = 8 * DAY_US // max(self.sizes.outbox, 1)
        since = self.now_us - 8 * DAY_US - HOUR_US
        rows: list[bytes] = []
        ids = rng.randbytes(32 * (stop - first))
        for n in range(first, stop):
            at = since + n * span + int(rand() * span)
            u = self.pick_user()
            event = ids[32 * (n - first) : 32 * (n - first) + 16]
            transaction = uuid_text(ids[32 * (n - first) + 16 : 32 * (n - first) + 32])
            amount, balance = 100 + bits(16) % 49_900, bits(20)
            payload = (
                f'{{"event_id":"{uuid_text(event)}","type":"withdrawal.completed",'
                f'"pattern":"withdrawal.completed","occurred_at":"{self.iso(at)}","version":1,'
                f'"data":{{"transaction_id":"{transaction}","user_id":"{self.user_str[u]}",'
                f'"amount":{{"amount":"{wire(amount)}","currency":"USD"}},"balance":'
                f'{{"amount":"{wire(balance)}","currency":"USD"}},"description":'
                f'"scale withdrawal","reference":"scale-event-{n}"}}}}'
            )
            rows.extend((head, _INT8(8, n + 1), _UUID_LEN, event, exchange, kind, kind,
                         jsonb(payload), _INT8(8, at), _INT8(8, at + 50_000), one))  # fmt: skip
        return (b"".join(rows),)

    # -- subscriptions --

    def subscriptions(self) -> bytes:
        rng, rand, bits = self.rng, self.rng.random, self.rng.getrandbits
        head = tuple_header(SUBSCRIPTION_COLUMNS)
        now = from_micros(self.now_us)
        rows: list[bytes] = []
        spread = max(1, self.sizes.accounts // max(self.sizes.subscriptions, 1))
        for n in range(self.sizes.subscriptions):
            u = n * spread
            plan_id, code, _, _, interval = self.plans[bits(8) % 3]
            period_days = 365 if interval == "year" else 30
            r = rand()
            source = "balance" if r < 0.70 else "yookassa" if r < 0.85 else "stripe"
            r = rand()
            canceled = reason = next_attempt = paused_until = trial = None
            attempts = 0
            if r < 0.80:
                status = "active"
                if rand() < 0.001:  # due: the renewal scheduler's work
                    end = now - timedelta(microseconds=int(rand() * 6 * HOUR_US))
                else:
                    end = now + timedelta(microseconds=HOUR_US + int(rand() * period_days * DAY_US))
            elif r < 0.83:
                status = "trialing"
                end = now + timedelta(microseconds=int(rand() * 14 * DAY_US))
            elif r < 0.86:
                status, attempts = "past_due", 1 + bits(1)
                end = now - timedelta(microseconds=int(rand() * 5 * DAY_US))
                due = rand() < 0.02
                next_attempt = now + timedelta(
                    microseconds=-int(rand() * HOUR_US) if due else int(rand() * 3 * DAY_US)
                )
            elif r < 0.88:
                status = "paused"
                end = now - timedelta(microseconds=int(rand() * 20 * DAY_US))
                due = rand() < 0.02
                paused_until = now + timedelta(
                    microseconds=-int(rand() * HOUR_US) if due else int(rand() * 30 * DAY_US)
                )
            else:
                status, reason = "canceled", "canceled by the customer"
                end = now - timedelta(microseconds=int(rand() * 300 * DAY_US))
            if end.day > 28:  # no month-end clamping: the anchor's periods end at `end`
                end = (end.replace(day=1) + timedelta(days=32)).replace(day=1)
            if status == "trialing":  # the first period starts when the trial ends
                paid, anchor, start, period_end = 0, end, end - timedelta(days=14), end
                trial = end
            else:
                paid = 1 + bits(5) % (24 if interval == "month" else 2)
                anchor = period_boundary(end, interval, 1, -paid)  # period paid - 1 ends at end
                start = period_boundary(anchor, interval, 1, paid - 1)
                period_end = period_boundary(anchor, interval, 1, paid)
            created = min(anchor, start)
            if status == "canceled":
                canceled = period_end
            times = [start, period_end, anchor, trial, canceled]
            rows.extend((
                head, _UUID_LEN, rng.randbytes(16), self.user_text[u], _UUID_LEN, plan_id.bytes,
                text(code), text(status), text(source),
                text(f"sub_scale_{n}") if source == "stripe" else NULL,
                *(NULL if t is None else _INT8(8, pg_micros(t)) for t in times),
                NULL if reason is None else text(reason), _INT4_FIELD(4, paid),
                _INT4_FIELD(4, attempts),
                *(NULL if t is None else _INT8(8, pg_micros(t))
                  for t in (next_attempt, paused_until)),
                _INT8(8, pg_micros(created)), _INT8(8, self.now_us - HOUR_US),
            ))  # fmt: skip
        self.counts["subscriptions"] = self.sizes.subscriptions
        return b"".join(rows)


# ---- the build ---------------------------------------------------------------------

# Keys of the loaded tables, and every foreign key that needs one of them.
_KEYS = """
SELECT c.conrelid::regclass::text AS tbl, c.conname AS name, c.contype::text AS kind,
       pg_get_constraintdef(c.oid) AS definition
FROM pg_constraint c
WHERE c.connamespace = 'public'::regnamespace AND c.contype IN ('p', 'u', 'f')
  AND (c.conrelid::regclass::text = ANY($1::text[])
       OR (c.contype = 'f' AND c.confrelid::regclass::text = ANY($1::text[])))
ORDER BY c.conrelid::regclass::text, c.conname
"""
# Indexes of the loaded tables that no key constraint owns.
_INDEXES = """
SELECT i.indexrelid::regclass::text AS name, pg_get_indexdef(i.indexrelid) AS definition
FROM pg_index i
WHERE i.indrelid::regclass::text = ANY($1::text[])
  AND NOT EXISTS (SELECT 1 FROM pg_constraint c
                  WHERE c.conindid = i.indexrelid AND c.contype IN ('p', 'u', 'x'))
ORDER BY 1
"""
# What must be the same after the build as after `billing-worker migrate`.
_SCHEMA = """
SELECT 'constraint', conrelid::regclass::text, conname, pg_get_constraintdef(oid),
       convalidated::text
FROM pg_constraint WHERE connamespace = 'public'::regnamespace
UNION ALL
SELECT 'index', tablename, indexname, indexdef, '' FROM pg_indexes WHERE schemaname = 'public'
"""
_IDENTITIES = ("transaction_transitions", "invoice_lines", "hold_transitions", "outbox")


async def _schema(db: asyncpg.Connection) -> set[tuple[str, ...]]:
    return {tuple(row) for row in await db.fetch(_SCHEMA)}


class Build:
    """One template's seeding: keys off, COPY, keys on, VACUUM ANALYZE."""

    def __init__(self, dsn: str, sizes: Sizes, say: Progress, seed: int) -> None:
        self.dsn, self.sizes, self.say = dsn, sizes, say
        self.seeder = Seeder(sizes, datetime.now(UTC), seed)
        self.timings: dict[str, float] = {}

    @contextlib.asynccontextmanager
    async def phase(self, name: str) -> AsyncIterator[None]:
        started = time.monotonic()
        yield
        self.timings[name] = round(time.monotonic() - started, 1)
        self.say(f"  {name}: {self.timings[name]:,.1f} s")

    async def run(self) -> dict[str, float]:
        db = await asyncpg.connect(self.dsn)
        try:
            await db.execute("SET maintenance_work_mem = '1GB'; SET work_mem = '256MB'")
            before = await _schema(db)
            keys = await db.fetch(_KEYS, list(LOADED))
            indexes = await db.fetch(_INDEXES, list(LOADED))
            async with self.phase("drop keys and indexes"):
                await self._drop(db, keys, indexes)
            await self._plans(db)
            await self._copy_all(db)
            async with self.phase("keys and indexes built again"):
                await self._restore(db, keys, indexes)
            after = await _schema(db)
            if after != before:
                missing = sorted(before - after)[:3]
                extra = sorted(after - before)[:3]
                raise ScaleError(f"the schema changed in the build: lost {missing}, got {extra}")
            async with self.phase("VACUUM ANALYZE"):
                await db.execute("VACUUM (ANALYZE)")
            await self._verify(db)
        finally:
            await db.close()
        return self.timings

    async def _drop(
        self, db: asyncpg.Connection, keys: Sequence[asyncpg.Record],
        indexes: Sequence[asyncpg.Record],
    ) -> None:  # fmt: skip
        async with db.transaction():
            for key in sorted(keys, key=lambda k: k["kind"] != "f"):  # foreign keys first
                await db.execute(
                    f"ALTER TABLE {key['tbl']} DROP CONSTRAINT {_quote_ident(key['name'])}"
                )
            for index in indexes:
                await db.execute(f"DROP INDEX {index['name']}")

    async def _restore(
        self, db: asyncpg.Connection, keys: Sequence[asyncpg.Record],
        indexes: Sequence[asyncpg.Record],
    ) -> None:  # fmt: skip
        """Primary and unique keys, then the indexes, then the foreign keys (checked)."""
        steps = [
            (f"{key['tbl']}.{key['name']}",
             f"ALTER TABLE {key['tbl']} ADD CONSTRAINT {_quote_ident(key['name'])} "
             f"{key['definition']}")
            for key in keys if key["kind"] != "f"
        ]  # fmt: skip
        steps += [(index["name"], index["definition"]) for index in indexes]
        steps += [
            (f"{key['tbl']}.{key['name']} (checked)",
             f"ALTER TABLE {key['tbl']} ADD CONSTRAINT {_quote_ident(key['name'])} "
             f"{key['definition']}")
            for key in keys if key["kind"] == "f"
        ]  # fmt: skip
        for what, statement in steps:
            started = time.monotonic()
            await db.execute(statement)
            self.say(f"    {what}: {time.monotonic() - started:,.1f} s")
        for table in _IDENTITIES:
            await db.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "  # noqa: S608
                f"(SELECT coalesce(max(id), 0) + 1 FROM {table}), false)"
            )

    async def _plans(self, db: asyncpg.Connection) -> None:
        await db.executemany(
            "INSERT INTO plans (id, code, name, price_minor, currency, interval, interval_count) "
            "VALUES ($1, $2, $3, $4, $5, $6, 1)",
            [(plan_id, code, name, price, CURRENCY, interval)
             for plan_id, code, name, price, interval in self.seeder.plans],
        )  # fmt: skip

    async def _stream(
        self, what: str, tables: Sequence[tuple[str, tuple[str, ...]]], total: int,
        batches: Iterator[tuple[int, Sequence[bytes]]],
    ) -> None:  # fmt: skip
        """COPY `tables` at once from `batches` of (rows, one chunk per table)."""
        streams = [Stream(table, columns) for table, columns in tables]
        meter = Meter(what, total, self.say)

        async def produce() -> None:
            for rows, chunks in batches:
                for stream, chunk in zip(streams, chunks, strict=True):
                    await stream.queue.put(chunk)
                meter.add(rows)
            for stream in streams:
                await stream.queue.put(None)

        async with self.phase(f"COPY {what}"):
            await copy_streams(self.dsn, streams, produce)
            self.say(meter.line())

    async def _copy_all(self, db: asyncpg.Connection) -> None:
        seeder, sizes = self.seeder, self.sizes

        def chunked(total: int, make: Callable[[int, int], Sequence[bytes]]) -> Iterator[
                tuple[int, Sequence[bytes]]]:  # fmt: skip
            for first in range(0, total, BATCH):
                stop = min(first + BATCH, total)
                yield stop - first, make(first, stop)

        await self._stream(
            "transactions, transitions, idempotency records",
            [("transactions", TX_COLUMNS), ("transaction_transitions", TRANSITION_COLUMNS),
             ("idempotency_records", RECORD_COLUMNS)],
            sizes.transactions, chunked(sizes.transactions, seeder.transactions),
        )  # fmt: skip
        for table in ("transactions", "transaction_transitions", "idempotency_records"):
            seeder.counts[table] = sizes.transactions
        intents = seeder.intents
        seeder.counts["provider_intents"] = len(intents)
        await self._stream("provider intents", [("provider_intents", INTENT_COLUMNS)],
                           len(intents), iter([(len(intents), [b"".join(intents)])]))  # fmt: skip
        holds = seeder.holds()
        await self._stream(
            "holds", [("holds", HOLD_COLUMNS), ("hold_transitions", HOLD_TRANSITION_COLUMNS)],
            sizes.holds, iter([(sizes.holds, holds)]),
        )  # fmt: skip
        await self._stream(
            "users and accounts",
            [("billing_users", USER_COLUMNS), ("virtual_accounts", ACCOUNT_COLUMNS)],
            sizes.accounts, chunked(sizes.accounts, seeder.users_and_accounts),
        )  # fmt: skip
        seeder.counts["billing_users"] = seeder.counts["virtual_accounts"] = sizes.accounts
        numbers: dict[int, int] = {}
        await self._stream(
            "invoices and lines",
            [("invoices", INVOICE_COLUMNS), ("invoice_lines", LINE_COLUMNS)], sizes.invoices,
            chunked(sizes.invoices, lambda first, stop: seeder.invoices(first, stop, numbers)),
        )  # fmt: skip
        seeder.counts["invoices"] = seeder.counts["invoice_lines"] = sizes.invoices
        await db.executemany(
            "INSERT INTO number_sequences (name, year, last_value) VALUES ($1, $2, $3)",
            [(NUMBER_SEQUENCE, year, last) for year, last in sorted(numbers.items())],
        )
        await self._stream(
            "subscriptions", [("subscriptions", SUBSCRIPTION_COLUMNS)], sizes.subscriptions,
            iter([(sizes.subscriptions, [seeder.subscriptions()])]),
        )  # fmt: skip
        await self._stream("outbox (published)", [("outbox", OUTBOX_COLUMNS)], sizes.outbox,
                           chunked(sizes.outbox, seeder.outbox))  # fmt: skip
        seeder.counts["outbox"] = sizes.outbox

    async def _verify(self, db: asyncpg.Connection) -> None:
        """Every loaded table holds exactly the rows generated for it."""
        for table, expected in self.seeder.counts.items():
            found = await db.fetchval(f"SELECT count(*) FROM {table}")  # noqa: S608
            if found != expected:
                raise ScaleError(f"{table} holds {found:,} rows, {expected:,} were generated")


async def _template_state(admin: asyncpg.Connection, name: str) -> dict[str, Any] | None:
    """None when there is no such database; its marker ({} if none: a half-seeded one)."""
    row = await admin.fetchrow(
        "SELECT shobj_description(oid, 'pg_database') AS comment FROM pg_database "
        "WHERE datname = $1",
        name,
    )
    if row is None:
        return None
    try:
        marker = json.loads(row["comment"] or "{}")
    except ValueError:
        return {}
    return marker if isinstance(marker, dict) and marker.get(MARKER) else {}


async def drop_template(admin: asyncpg.Connection, name: str) -> None:
    quoted = _quote_ident(name)
    with contextlib.suppress(asyncpg.InvalidCatalogNameError):
        await admin.execute(f"ALTER DATABASE {quoted} IS_TEMPLATE false")
    await admin.execute(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")


async def ensure_template(
    base_dsn: str,
    *,
    accounts: int = 1_000_000,
    transactions: int = 10_000_000,
    progress: Progress = progress_line,
    rebuild: bool = False,
    seed: int = 18,
    name: str | None = None,
) -> str:
    """The name of a finished template database of this size at the schema head
    (`template_name`, unless `name` is given: the tests' own).

    Reused when it exists and its seeding finished; otherwise (missing, interrupted, or
    `rebuild`) dropped and built: `billing-worker migrate`, COPY, VACUUM ANALYZE, then
    marked finished (a comment on the database) and made a template. Builders of one
    template wait for each other (an advisory lock on the server)."""
    if accounts < 1 or transactions < 0:
        raise ScaleError("--accounts must be at least 1 and --transactions at least 0")
    head = schema_head()
    name = name or template_name(accounts, transactions, head)
    admin = await asyncpg.connect(services.asyncpg_dsn(base_dsn))
    try:
        await admin.execute("SELECT pg_advisory_lock(hashtext($1))", f"{MARKER}:{name}")
        state = await _template_state(admin, name)
        if state and not rebuild:
            progress(f"template {name}: reused (built {state.get('built_at')}, "
                     f"{state.get('seconds')} s)")  # fmt: skip
            return name
        if state is not None:
            why = "rebuilding" if state else "dropping a half-seeded one"
            progress(f"template {name}: {why}")
            await drop_template(admin, name)
        started = time.monotonic()
        progress(f"template {name}: building {accounts:,} accounts, {transactions:,} "
                 "transactions (billing-worker migrate, then COPY)")  # fmt: skip
        target = services.run_env(base_dsn, services.DEFAULT_AMQP, name)
        await services.migrate(target)
        timings = await Build(target.dsn, Sizes(accounts, transactions), progress, seed).run()
        seconds = round(time.monotonic() - started, 1)
        size = await admin.fetchval("SELECT pg_database_size($1)", name)
        marker = {
            MARKER: 1, "accounts": accounts, "transactions": transactions, "head": head,
            "seconds": seconds, "bytes": size, "built_at": datetime.now(UTC).isoformat(),
            "timings": timings,
        }  # fmt: skip
        quoted = _quote_ident(name)
        await admin.execute(f"ALTER DATABASE {quoted} IS_TEMPLATE true")
        await admin.execute(f"COMMENT ON DATABASE {quoted} IS {_quote_literal(json.dumps(marker))}")
        progress(f"template {name}: built in {seconds:,.1f} s, {size / 2**30:,.2f} GiB")
        return name
    finally:
        await admin.close()  # also releases the advisory lock


async def template_marker(base_dsn: str, name: str) -> dict[str, Any] | None:
    """A template's marker (what its build recorded); None if missing, {} if unfinished."""
    admin = await asyncpg.connect(services.asyncpg_dsn(base_dsn))
    try:
        return await _template_state(admin, name)
    finally:
        await admin.close()


# ---- the probe ---------------------------------------------------------------------


class Recorder:
    """An asyncpg connection that notes the statements run through it (the first time)."""

    def __init__(self, db: asyncpg.Connection) -> None:
        self._db = db
        self.recording = True
        self.statements: list[tuple[str, tuple[Any, ...]]] = []

    def _note(self, sql: str, args: tuple[Any, ...]) -> None:
        if self.recording:
            self.statements.append((sql, args))

    async def fetch(self, sql: str, *args: Any, **kwargs: Any) -> list[asyncpg.Record]:
        self._note(sql, args)
        return await self._db.fetch(sql, *args, **kwargs)

    async def fetchrow(self, sql: str, *args: Any, **kwargs: Any) -> asyncpg.Record | None:
        self._note(sql, args)
        return await self._db.fetchrow(sql, *args, **kwargs)

    async def fetchval(self, sql: str, *args: Any, **kwargs: Any) -> Any:
        self._note(sql, args)
        return await self._db.fetchval(sql, *args, **kwargs)

    async def execute(self, sql: str, *args: Any, **kwargs: Any) -> str:
        self._note(sql, args)
        return await self._db.execute(sql, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


@dataclass(frozen=True, slots=True)
class Case:
    """One hot query: `run(connection, sample)` makes the worker's own call."""

    name: str
    run: Callable[[Any, int], Awaitable[Any]]
    rollback: bool = False  # a claim or a delete: run in a transaction rolled back


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from _nodes(child)


def _scans_big_table(plan: dict[str, Any]) -> bool:
    return any(node.get("Relation Name") in BIG_TABLES for node in _nodes(plan))


@dataclass(frozen=True, slots=True)
class IndexInfo:
    table: str
    partial: bool


async def index_info(db: asyncpg.Connection) -> dict[str, IndexInfo]:
    rows = await db.fetch(
        "SELECT c.relname AS name, t.relname AS tbl, i.indpred IS NOT NULL AS partial "
        "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_class t ON t.oid = i.indrelid "
        "WHERE t.relnamespace = 'public'::regnamespace"
    )
    return {row["name"]: IndexInfo(row["tbl"], row["partial"]) for row in rows}


def _rows(node: dict[str, Any]) -> int:
    """The rows a node produced (EXPLAIN ANALYZE), else the planner's estimate."""
    if "Actual Rows" in node:
        return int(node["Actual Rows"] * node.get("Actual Loops", 1))
    return int(node["Plan Rows"])


def _removed(node: dict[str, Any]) -> int:
    """Rows a scan read and threw away (EXPLAIN ANALYZE's filter and recheck counts)."""
    thrown = node.get("Rows Removed by Filter", 0) + node.get("Rows Removed by Index Recheck", 0)
    return int(thrown * node.get("Actual Loops", 1))


def plan_problems(
    name: str, plan: dict[str, Any], indexes: dict[str, IndexInfo] | None = None
) -> list[str]:
    """Sequential scans of big tables, whole-index scans of them (an index scan with no
    index condition on an index that is not partial: a sequential scan in disguise),
    scans that read many rows to keep few, and sorts of many rows."""
    problems = []
    for node in _nodes(plan):
        kind = node["Node Type"]
        index = (indexes or {}).get(node.get("Index Name", ""))
        if kind == "Seq Scan" and node.get("Relation Name") in BIG_TABLES:
            problems.append(f"{name}: Seq Scan on {node['Relation Name']} "
                            f"(~{node['Plan Rows']:,} rows expected)")  # fmt: skip
        elif (kind in ("Index Scan", "Index Only Scan", "Bitmap Index Scan")
              and index is not None and index.table in BIG_TABLES and not index.partial
              and "Index Cond" not in node):  # fmt: skip
            problems.append(f"{name}: {kind} of all of {node['Index Name']} on {index.table} "
                            "(no index condition)")  # fmt: skip
        elif (
            (removed := _removed(node)) > BIG_FILTER_ROWS
            and removed > 10 * max(_rows(node), 1)
            and node.get("Relation Name") in BIG_TABLES
        ):
            kept = _rows(node)
            problems.append(f"{name}: {kind} on {node['Relation Name']} read "
                            f"{removed + kept:,} rows for {kept:,}")  # fmt: skip
        elif kind in ("Sort", "Incremental Sort") and _scans_big_table(node):
            fed = max((_rows(child) for child in node.get("Plans", ())), default=0)
            if fed > BIG_SORT_ROWS:
                problems.append(f"{name}: {kind} of {fed:,} rows")
    return problems


def plan_summary(plan: dict[str, Any]) -> str:
    """`Limit: Index Scan on transactions using ix_...` — the top node and every scan."""
    scans = []
    for node in _nodes(plan):
        if "Relation Name" in node or "Index Name" in node:
            where = f" on {node['Relation Name']}" if "Relation Name" in node else ""
            using = f" using {node['Index Name']}" if "Index Name" in node else ""
            scans.append(f"{node['Node Type']}{where}{using}")
    return f"{plan['Node Type']}: {', '.join(scans) or '-'}"


@contextlib.asynccontextmanager
async def planner_settings(db: asyncpg.Connection, settings: dict[str, str]) -> AsyncIterator[None]:
    """`SET` each setting for the block (e.g. `enable_seqscan = off`), `RESET` after."""
    for name, value in settings.items():
        await db.execute("SELECT set_config($1, $2, false)", name, value)
    try:
        yield
    finally:
        for name in settings:
            await db.execute(f"RESET {_quote_ident(name)}")


@dataclass(frozen=True, slots=True)
class Explained:
    """One statement's plan as EXPLAIN ANALYZE ran it (in a transaction rolled back)."""

    plan: dict[str, Any]
    jit_ms: float  # JIT compilation, when the plan's cost made PostgreSQL compile it
    execution_ms: float

    @property
    def cost(self) -> float:
        return float(self.plan["Total Cost"])


def _explained(found: Any) -> Explained:
    document = json.loads(found) if isinstance(found, str) else found
    top = document[0]
    jit = top.get("JIT", {}).get("Timing", {}).get("Total", 0.0)
    return Explained(dict(top["Plan"]), float(jit), float(top.get("Execution Time", 0.0)))


@contextlib.asynccontextmanager
async def rolled_back(db: asyncpg.Connection) -> AsyncIterator[None]:
    """A transaction that is always rolled back (what EXPLAIN ANALYZE of a claim did)."""
    transaction = db.transaction()
    await transaction.start()
    try:
        yield
    finally:
        await transaction.rollback()


async def explain(db: asyncpg.Connection, sql: str, args: Sequence[Any]) -> Explained:
    """The plan for these very parameters (what the first five executions use), run."""
    async with rolled_back(db):
        found = await db.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", *args)
    return _explained(found)


async def explain_generic(db: asyncpg.Connection, sql: str, args: Sequence[Any]) -> Explained:
    """The generic plan, run: what a prepared statement switches to after five
    executions when it is cheaper than the custom plans were (asyncpg prepares every
    statement, and the worker's connections keep them)."""
    statement = await db.prepare(sql)
    types = [
        await db.fetchval("SELECT format_type($1::oid, NULL)", parameter.oid)
        for parameter in statement.get_parameters()
    ]
    literals = [
        await db.fetchval(f"SELECT quote_nullable($1::{type_}::text)", value)
        for type_, value in zip(types, args, strict=True)
    ]
    declared = f" ({', '.join(types)})" if types else ""
    values = f" ({', '.join(f'{v}::{t}' for v, t in zip(literals, types, strict=True))})"
    await db.execute(f"PREPARE scale_probe{declared} AS {sql}")
    try:
        await db.execute("SET plan_cache_mode = force_generic_plan")
        async with rolled_back(db):
            found = await db.fetchval(
                f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE scale_probe{values if types else ''}"
            )
    finally:
        await db.execute("RESET plan_cache_mode")
        await db.execute("DEALLOCATE scale_probe")
    return _explained(found)


def generic_chosen(custom: Explained, generic: Explained) -> bool:
    """PostgreSQL's rule (plancache.c): after five custom plans, the generic plan is used
    when it costs less than they did, each custom plan charged for its planning too
    (1000 * cpu_operator_cost per relation, plus one)."""
    relations = sum(1 for node in _nodes(custom.plan) if "Relation Name" in node)
    return generic.cost < custom.cost + 1000 * 0.0025 * (relations + 1)


async def _cursor(db: asyncpg.Connection, table: str, user_id: str) -> tuple[datetime, UUID]:
    """(created_at, id) of the row 90 % down the user's history, newest first."""
    count = await db.fetchval(f"SELECT count(*) FROM {table} WHERE user_id = $1", user_id)  # noqa: S608
    row = await db.fetchrow(
        f"SELECT created_at, id FROM {table} WHERE user_id = $1 "  # noqa: S608
        "ORDER BY created_at DESC, id DESC OFFSET $2 LIMIT 1",
        user_id,
        count * 9 // 10,
    )
    if row is None:
        raise ScaleError(f"{user_id} has no {table}: not a scaled database")
    return row["created_at"], row["id"]


async def hot_cases(db: asyncpg.Connection, samples: int) -> list[Case]:
    """The worker's hot queries, with the parameters of a scaled database's heavy users."""
    candidates = [user(n) for n in range(20)]
    heavies = [
        row["u"] for row in await db.fetch(
            "SELECT u FROM unnest($1::text[]) WITH ORDINALITY AS c(u, n) WHERE EXISTS "
            "(SELECT 1 FROM transactions t WHERE t.user_id = c.u) ORDER BY n", candidates)
    ]  # fmt: skip
    if not heavies:
        raise ScaleError("no scale-user-* transactions: not a scaled database")
    tx_cursors = [await _cursor(db, "transactions", u) for u in heavies]
    invoice_users = [
        u for u in heavies
        if await db.fetchval("SELECT EXISTS (SELECT 1 FROM invoices WHERE user_id = $1)", u)
    ]  # fmt: skip
    invoice_cursors = [await _cursor(db, "invoices", u) for u in invoice_users]
    commands = await db.fetch(
        "SELECT r.scope, r.key, r.request_hash FROM transactions t "
        "JOIN idempotency_records r ON r.scope = 'wallet.withdraw|user:' || t.user_id "
        " AND r.key = t.reference "
        "WHERE t.user_id = ANY($1::text[]) AND t.kind = 'withdrawal' LIMIT $2",
        heavies, samples,
    )  # fmt: skip
    if not commands or not invoice_users:
        raise ScaleError("no seeded withdrawals or invoices: not a scaled database")
    now = datetime.now(UTC)
    providers = list(PROVIDERS)
    h, i, c = len(heavies), len(invoice_users), len(commands)

    def command(k: int) -> tuple[str, str, str, str]:
        row = commands[k % c]
        return row["scope"], "wallet.withdraw", row["key"], row["request_hash"]

    return [
        Case("wallet.transactions first page",
             lambda db, k: SqlWallet(db).transactions_page(heavies[k % h], None, 21, None)),
        Case("wallet.transactions deep cursor",
             lambda db, k: SqlWallet(db).transactions_page(heavies[k % h], None, 21,
                                                           tx_cursors[k % h])),
        Case("invoice.get first page",
             lambda db, k: SqlInvoices(db).page(invoice_users[k % i], 21, None)),
        Case("invoice.get deep cursor",
             lambda db, k: SqlInvoices(db).page(invoice_users[k % i], 21,
                                                invoice_cursors[k % i])),
        Case("idempotency lookup (every command)",
             lambda db, k: SqlIdempotency(db).find_command(*command(k))),
        Case("reconcile: claim processing",
             lambda db, k: claim_processing(db, providers, 900, 50), rollback=True),
        Case("reconcile: claim expired",
             lambda db, k: claim_expired(db, providers, 86400, 900, 50), rollback=True),
        Case("reconcile: claim pending refunds",
             lambda db, k: claim_pending(db, providers, 900, 50), rollback=True),
        Case("reconcile: claim stale intents",
             lambda db, k: SqlIntents(db).claim_stale(900, 50), rollback=True),
        Case("renewals: due scan",
             lambda db, k: SqlSubscriptions(db).claim_due(now, ()), rollback=True),
        Case("hold expiry: due scan", lambda db, k: SqlHolds(db).due(now, 100), rollback=True),
        Case("invoice overdue: scan",
             lambda db, k: SqlInvoices(db).mark_overdue(now, 100), rollback=True),
        Case("retention: idempotency records",
             lambda db, k: delete_records(db, 30, 1000), rollback=True),
        Case("retention: outbox", lambda db, k: delete_outbox(db, 7, 1000), rollback=True),
        Case("relay: unpublished batch", lambda db, k: outbox.lock_batch(db, 100),
             rollback=True),
        Case("relay: lag", lambda db, k: outbox.lag_seconds(db)),
    ]  # fmt: skip


async def probe(
    dsn: str, *, samples: int = 200, explain_settings: dict[str, str] | None = None
) -> dict[str, Any]:
    """p50/p99 (ms, from this client) of each hot query on a scaled database, its plans,
    and every sequential scan, whole-index scan or big sort of a big table in them
    (as planned for the parameters, or as the generic plan).

    Claims, scans that lock and deletes run in a transaction that is rolled back: the
    database is left as it was (but for dead row versions of the rolled-back updates).
    `explain_settings` are planner settings for the EXPLAINs only (not the timings):
    `{"enable_seqscan": "off"}` makes a small database's plans use whatever index can
    serve them, so a sequential scan left means no index can."""
    # the worker's own connection settings (no JIT)
    db = await asyncpg.connect(services.asyncpg_dsn(dsn), server_settings=SERVER_SETTINGS)
    result: dict[str, Any] = {
        "query_p50_ms": {}, "query_p99_ms": {}, "seq_scans": [], "plans": {},
        "generic_plans": {}, "jit": [], "samples": samples,
    }  # fmt: skip
    try:
        indexes = await index_info(db)
        for case in await hot_cases(db, samples):
            recorder = Recorder(db)
            times = []
            for k in range(samples):
                async with rolled_back(db) if case.rollback else contextlib.nullcontext():
                    started = time.perf_counter()
                    await case.run(recorder, k)
                    times.append((time.perf_counter() - started) * 1000)
                recorder.recording = False
            result["query_p50_ms"][case.name] = round(percentile(times, 50) or 0.0, 3)
            result["query_p99_ms"][case.name] = round(percentile(times, 99) or 0.0, 3)
            custom, generic = [], []
            for n, (sql, args) in enumerate(recorder.statements, 1):
                label = case.name if len(recorder.statements) == 1 else f"{case.name} #{n}"
                async with planner_settings(db, explain_settings or {}):
                    plan = await explain(db, sql, args)
                    generic_plan = await explain_generic(db, sql, args)
                chosen = generic_chosen(plan, generic_plan)
                custom.append(plan_summary(plan.plan))
                generic.append(plan_summary(generic_plan.plan) + (
                    "" if chosen else f" (not chosen: cost {generic_plan.cost:,.0f} > "
                    f"{plan.cost:,.0f})"))  # fmt: skip
                found = plan_problems(label, plan.plan, indexes)
                result["seq_scans"] += found
                if chosen:
                    result["seq_scans"] += [
                        f"{p} (generic plan)"
                        for p in plan_problems(label, generic_plan.plan, indexes) if p not in found
                    ]  # fmt: skip
                for how, run in (("", plan), (" (generic plan)", generic_plan)):
                    if run.jit_ms and (run is plan or chosen):
                        result["jit"].append(
                            f"{label}{how}: JIT-compiled, {run.jit_ms:,.1f} ms of "
                            f"{run.execution_ms:,.1f} ms (cost {run.cost:,.0f} > jit_above_cost)"
                        )
            result["plans"][case.name] = " | ".join(custom)
            result["generic_plans"][case.name] = " | ".join(generic)
    finally:
        await db.close()
    return result


def probe_table(result: dict[str, Any]) -> str:
    width = max(len(name) for name in result["query_p99_ms"])
    lines = [f"{'query':<{width}}  {'p50 ms':>8}  {'p99 ms':>8}  plan"]
    for name, p99 in result["query_p99_ms"].items():
        plan = result["plans"][name]
        generic = result["generic_plans"][name]
        shown = plan if generic == plan else f"{plan}  [generic: {generic}]"
        lines.append(f"{name:<{width}}  {result['query_p50_ms'][name]:>8.2f}  {p99:>8.2f}  {shown}")
    problems = result["seq_scans"]
    lines.append("no sequential scan or big sort of a big table" if not problems
                 else "problems:\n" + "\n".join(f"  {p}" for p in problems))  # fmt: skip
    if result["jit"]:
        lines.append("JIT:\n" + "\n".join(f"  {line}" for line in result["jit"]))
    return "\n".join(lines)


# ---- the command line --------------------------------------------------------------


async def _main(args: argparse.Namespace) -> int:
    name = await ensure_template(
        args.dsn, accounts=args.accounts, transactions=args.transactions, rebuild=args.rebuild
    )
    admin = await asyncpg.connect(services.asyncpg_dsn(args.dsn))
    try:
        size = await admin.fetchval("SELECT pg_database_size($1)", name)
    finally:
        await admin.close()
    print(f"template {name}: {size / 2**30:,.2f} GiB")
    if not args.probe:
        return 0
    run = services.run_env(args.dsn, services.DEFAULT_AMQP, f"bench_scale_probe_{os.getpid()}")
    started = time.monotonic()
    await services.copy_template(run, name)
    print(f"CREATE DATABASE ... TEMPLATE: {time.monotonic() - started:,.1f} s")
    try:
        result = await probe(run.dsn, samples=args.samples)
    finally:
        await services.drop_database(run, args.dsn)
    print(probe_table(result))
    if args.json:
        await asyncio.to_thread(Path(args.json).write_text, json.dumps(result, indent=2) + "\n")
    return 0


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(
        prog="python -m benchmarks.scale",
        description="Build (or reuse) the scaled template database of the benchmark: "
        "accounts, transactions with their audit rows and idempotency records, invoices, "
        "subscriptions and holds, by COPY; optionally probe the hot queries on a copy.",
    )
    cli.add_argument("--dsn", default=services.DEFAULT_DSN,
                     help="PostgreSQL server (its database is the maintenance one; default "
                     "%(default)s)")  # fmt: skip
    cli.add_argument("--accounts", type=int, default=1_000_000, help="default %(default)s")
    cli.add_argument("--transactions", type=int, default=10_000_000, help="default %(default)s")
    cli.add_argument("--rebuild", action="store_true",
                     help="drop the template of these sizes and build it again")  # fmt: skip
    cli.add_argument(
        "--probe",
        action="store_true",
        help="then time the hot queries on a copy of it and print their plans",
    )
    cli.add_argument("--samples", type=int, default=200, help="probe samples per query")
    cli.add_argument("--json", metavar="PATH", help="write the probe's result there too")
    return cli


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return asyncio.run(_main(args))
    except (ScaleError, services.ServiceError) as error:
        print(f"scale: {error}", file=sys.stderr)
    except (OSError, asyncpg.PostgresError) as error:
        print(f"scale: PostgreSQL at {args.dsn}: {' '.join(str(error).split())}", file=sys.stderr)
    except KeyboardInterrupt:
        print("scale: interrupted (a half-seeded template is rebuilt next time)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
