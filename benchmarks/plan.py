"""The commands of one run and the data they act on.

A run owns `accounts` pre-funded users (`bench-user-<n>`, one USD account each, seeded
directly in SQL) and sends two kinds of work:

- withdraws (`billing.wallet.withdraw`), each with its own idempotency key, which is
  also its correlation id and its `reference` (so the check can count the transaction
  rows of each command);
- deposit completions: sandbox provider events (`billing.provider-events`) for deposits
  seeded beforehand in the `processing` state, built by the real `SandboxGateway` so the
  body, `sbx_pi_<hex>` and `sbx_evt_<hex>` are exactly what the worker would meet.

The plan remembers everything it handed out: the check compares the database with it.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from uuid import UUID

import asyncpg

from billing_contracts import names
from billing_worker.handlers.wallet import derived_id
from billing_worker.providers import sandbox
from billing_worker.providers.base import PaymentRequest

CURRENCY = "USD"
INITIAL_BALANCE = 10**12  # minor units: no withdraw of any run can be refused
USER_PREFIX = "bench-user-"


def wire(minor: int) -> str:
    """Minor units of a 2-digit currency as the wire's decimal string: 1205 -> '12.05'."""
    return f"{minor // 100}.{minor % 100:02d}"


@dataclass(frozen=True, slots=True)
class Withdraw:
    key: str  # idempotency key = correlation id = reference
    user_id: str
    amount_minor: int

    def body(self) -> bytes:
        return json.dumps(
            {
                "idempotency_key": self.key,
                "user_id": self.user_id,
                "amount": {"amount": wire(self.amount_minor), "currency": CURRENCY},
                "description": "benchmark withdrawal",
                "reference": self.key,
            },
            separators=(",", ":"),
        ).encode()


@dataclass(frozen=True, slots=True)
class Deposit:
    transaction_id: UUID
    user_id: str
    amount_minor: int
    provider_ref: str  # sbx_pi_<hex>
    event_id: str  # sbx_evt_<hex>
    body: bytes  # the sandbox callback, as the sandbox itself would deliver it

    @property
    def key(self) -> str:
        return str(self.transaction_id)


class Plan:
    """What one run sends; `hot` puts every withdraw on the first account."""

    def __init__(self, tag: str, accounts: int, *, hot: bool = False, seed: int = 0) -> None:
        self.tag = tag
        self.accounts = accounts
        self.hot = hot
        self.initial_balance = INITIAL_BALANCE
        self._rng = random.Random(seed)
        self.withdraws: dict[str, Withdraw] = {}
        self.deposits: dict[str, Deposit] = {}  # by transaction id
        self.sandbox = sandbox.SandboxGateway()  # its key comes from the run's database

    def callback_headers(self, deposit: Deposit) -> dict[str, str]:
        """A deposit's callback headers as the worker's own sandbox signs them."""
        return {
            names.PROVIDER_HEADER: "sandbox",
            names.SANDBOX_SIGNATURE_HEADER: self.sandbox.signature(deposit.body),
        }

    def user(self, index: int) -> str:
        return f"{USER_PREFIX}{index}"

    def _pick_user(self) -> str:
        return self.user(0 if self.hot else self._rng.randrange(self.accounts))

    def new_withdraw(self) -> Withdraw:
        command = Withdraw(
            f"{self.tag}-w{len(self.withdraws)}", self._pick_user(), self._rng.randint(1, 999)
        )
        self.withdraws[command.key] = command
        return command

    async def new_deposit(self) -> Deposit:
        key = f"{self.tag}-d{len(self.deposits)}"
        user = self.user(self._rng.randrange(self.accounts))
        transaction_id = derived_id("deposit", user, key)
        amount = self._rng.randint(1, 99_999)
        payment_ref, event_id, body = sandbox.callback(
            PaymentRequest(transaction_id, user, amount, CURRENCY, str(transaction_id))
        )
        deposit = Deposit(transaction_id, user, amount, payment_ref, event_id, body)
        self.deposits[deposit.key] = deposit
        return deposit

    def expected_balances(self) -> dict[str, int]:
        """Every account's balance once each command was applied exactly once."""
        balances = {self.user(i): self.initial_balance for i in range(self.accounts)}
        for withdraw in self.withdraws.values():
            balances[withdraw.user_id] -= withdraw.amount_minor
        for deposit in self.deposits.values():
            balances[deposit.user_id] += deposit.amount_minor
        return balances

    async def seed(self, db: asyncpg.Connection) -> None:
        """Users and funded accounts, then the deposits waiting for their provider event."""
        key = await db.fetchval(
            "SELECT secret FROM service_secrets WHERE name = $1", sandbox.SECRET_NAME
        )
        self.sandbox.use_key(str(key).encode())
        async with db.transaction():
            await db.execute(
                "INSERT INTO billing_users (id, user_id) "
                "SELECT gen_random_uuid(), $1 || n FROM generate_series(0, $2 - 1) AS n",
                USER_PREFIX,
                self.accounts,
            )
            await db.execute(
                "INSERT INTO virtual_accounts (id, user_id, currency, balance_minor) "
                "SELECT gen_random_uuid(), $1 || n, $3, $4 FROM generate_series(0, $2 - 1) AS n",
                USER_PREFIX,
                self.accounts,
                CURRENCY,
                self.initial_balance,
            )
            deposits = list(self.deposits.values())
            await db.execute(
                """
                INSERT INTO transactions (id, user_id, account_id, kind, status, amount_minor,
                                          currency, provider, provider_ref)
                SELECT d.id, d.user_id, a.id, 'deposit', 'processing', d.amount, $5, 'sandbox',
                       d.ref
                FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[])
                     AS d(id, user_id, amount, ref)
                JOIN virtual_accounts AS a ON a.user_id = d.user_id AND a.currency = $5
                """,
                [d.transaction_id for d in deposits],
                [d.user_id for d in deposits],
                [d.amount_minor for d in deposits],
                [d.provider_ref for d in deposits],
                CURRENCY,
            )
        await db.execute("ANALYZE")  # fresh planner statistics, the same for both sides
