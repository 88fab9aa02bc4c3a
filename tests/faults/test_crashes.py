"""Two real workers compete for the queues while one or the other is SIGKILLed.

Over 5,000 mixed commands (sandbox deposits, some declined; withdrawals; invoice
creations, some lines taxed; balance subscriptions charging their first period, half of
the plans taxed; withdrawals refused for want of funds; holds placed, captured in part and
released; partial refunds of deposits to the card; subscriptions paused, unpaused (a
scheduled pause dropped) and resumed (a period-end cancel undone); subscriptions moved to
another plan with two seats and a coupon (change-plan, no proration); invoices voided,
marked uncollectible and paid from the balance) are sent at a steady pace while the workers are
killed at random moments and restarted. The client resends whatever was not answered with
the same key and payload. Every command must end up answered, every answer to one key
must be the same, each must be applied exactly once, every event published once per
fact, every balance must equal the sum the test computed on its side (taxes included),
and each voided, written-off, paid, paused, resumed or moved object must be so exactly once.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from billing_contracts import names
from support.figures import record
from support.invariants import check_invariants, connect, wait_for_settled
from support.load import LoadClient
from support.processes import Process, tracebacks, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.faults]

USERS = 50
PLANS = 8  # balance plans; every user subscribes to each once
DEPOSITS_PER_USER = 36  # 4 of them declined by the sandbox (40 before the lifecycle load)
WITHDRAWALS_PER_USER = 30
INVOICES_PER_USER = 20
POOR_WITHDRAWALS = 100  # users without money: insufficient_funds, deterministically
KILLS = 8
RESEND_SHARE = 0.05  # commands the client sends twice (same key and body), as after a timeout
FUNDING = 1000_00  # minor units; covers every withdrawal and subscription of a user
HOLDS_BEFORE = 3  # per user, before the storm: one to capture in part, one to release, one kept
REFUNDS_PER_USER = 2  # of the user's funding deposit, to the card
REFUND = 10_00
TAX_PERCENT = 10  # exclusive: the even plans' periods and a third of the invoice lines
PRE_PRICE = 50  # the plan every user subscribes to before the storm, to pause or resume
MOVE_PRICE = 70  # a second one before the storm, moved in it to the target plan (2 seats)
SEND_SECONDS = 30.0  # the commands are spread over this long, so kills land mid-load


def money(minor: int) -> dict[str, str]:
    return {"amount": f"{minor // 100}.{minor % 100:02d}", "currency": "USD"}


def key() -> str:
    return uuid.uuid4().hex


def taxed(amount: int) -> int:
    """`amount` plus its exclusive tax, rounded half-even (as the worker must)."""
    tax = (Decimal(amount) * TAX_PERCENT / 100).quantize(Decimal(1), rounding=ROUND_HALF_EVEN)
    return amount + int(tax)


def _minor(amount: dict[str, str]) -> int:
    units, _, cents = amount["amount"].partition(".")
    return int(units) * 100 + int(cents or 0)


class Plan:
    def __init__(self, rng: random.Random, run: str) -> None:
        self.rng = rng
        self.run = run
        self.users = [f"crash-{run}-{i}" for i in range(USERS)]
        self.plans = {f"crash-{run}-plan-{p}": (p + 1) * 100 for p in range(PLANS)}
        self.tax_rate = f"crash-{run}-vat"
        self.taxed_plans = {code for p, code in enumerate(self.plans) if p % 2 == 0}
        self.pre_plan = f"crash-{run}-pre"
        self.move_plan, self.target_plan = f"crash-{run}-move", f"crash-{run}-target"
        self.coupon = f"CRASH{run.upper()}"[:40]
        self.expected = {(user, "USD"): FUNDING for user in self.users}
        self.kinds: dict[str, str] = {}  # key -> what the command is

    def commands(
        self,
        funded: dict[str, str],
        held: dict[str, list[tuple[str, int]]],
        lifecycle: list[tuple[str, dict[str, Any], str]],
    ) -> list[tuple[str, dict[str, Any]]]:
        """The storm; `funded`: each user's funding deposit, `held`: the holds placed
        before it (id, amount); `lifecycle`: the pause/resume and invoice commands on what
        was set up before it (queue, command, kind)."""
        rng, out = self.rng, []
        for queue, command, kind in lifecycle:
            self.kinds[command["idempotency_key"]] = kind
            out.append((queue, command))
        for user in self.users:
            balance = (user, "USD")
            out += self._after_the_payment(user, funded[user], held[user])
            for d in range(DEPOSITS_PER_USER):
                amount = rng.randint(1, 50_00)
                command = {"idempotency_key": key(), "user_id": user, "amount": money(amount)}
                if d % 8 == 7:
                    command["payment_method_id"] = "pm_card_chargeDeclined"
                    self.kinds[command["idempotency_key"]] = "declined"
                else:
                    self.expected[balance] += amount
                    self.kinds[command["idempotency_key"]] = "deposit"
                out.append((names.WALLET_DEPOSIT, command))
            for _ in range(WITHDRAWALS_PER_USER):
                amount = rng.randint(1, 5_00)
                self.expected[balance] -= amount
                command = {
                    "idempotency_key": key(),
                    "user_id": user,
                    "amount": money(amount),
                    "description": "crash test",
                }
                self.kinds[command["idempotency_key"]] = "withdrawal"
                out.append((names.WALLET_WITHDRAW, command))
            for code, price in self.plans.items():
                self.expected[balance] -= taxed(price) if code in self.taxed_plans else price
                command = {
                    "idempotency_key": key(),
                    "user_id": user,
                    "plan_code": code,
                    "payment_source": "balance",
                }
                self.kinds[command["idempotency_key"]] = "subscription"
                out.append((names.SUBSCRIPTION_CREATE, command))
            for _ in range(INVOICES_PER_USER):
                lines = [self.line(n) for n in range(rng.randint(1, 3))]
                command = {
                    "idempotency_key": key(),
                    "user_id": user,
                    "currency": "USD",
                    "lines": lines,
                }
                self.kinds[command["idempotency_key"]] = "invoice"
                out.append((names.INVOICE_CREATE, command))
        for n in range(POOR_WITHDRAWALS):
            command = {
                "idempotency_key": key(),
                "user_id": f"crash-{self.run}-poor-{n % 10}",
                "amount": money(1_00),
                "description": "no money",
            }
            self.kinds[command["idempotency_key"]] = "refused"
            out.append((names.WALLET_WITHDRAW, command))
        rng.shuffle(out)
        return out

    def line(self, n: int, top: int = 99_99) -> dict[str, Any]:
        """An invoice line; one in three taxed at the run's rate."""
        line = {
            "description": f"item {n}",
            "quantity": self.rng.randint(1, 5),
            "unit_price": money(self.rng.randint(0, top)),
        }
        if self.rng.random() < 1 / 3:
            line["tax_rate"] = self.tax_rate
        return line

    @staticmethod
    def total(lines: list[dict[str, Any]]) -> int:
        """An invoice's total computed here: each line's amount, plus its tax if taxed."""
        amounts = [(line["quantity"] * _minor(line["unit_price"]), line) for line in lines]
        return sum(taxed(a) if "tax_rate" in line else a for a, line in amounts)

    def lifecycle(
        self,
        subs: dict[str, str],
        invoices: dict[str, list[tuple[str, int]]],
        moves: dict[str, str],
    ) -> list[tuple[str, dict[str, Any], str]]:
        """Per user, on its subscription set up before the storm (`subs`): users 0, 2, ...
        (canceling at the period end) resume; 1, 5, ... pause; 3, 7, ... (a pause
        scheduled) unpause. Its second one (`moves`) moves to the target plan with two
        seats and the coupon, now, without proration (no money moves). On its three
        invoices (`invoices`: id, total): void the first, write the second off, pay the
        third from the balance (which it covers)."""
        out: list[tuple[str, dict[str, Any], str]] = []
        for n, user in enumerate(self.users):
            move = {"idempotency_key": key(), "user_id": user, "subscription_id": moves[user],
                    "plan_code": self.target_plan, "quantity": 2, "when": "now",
                    "proration": "none", "coupon": self.coupon}  # fmt: skip
            out.append((names.SUBSCRIPTION_CHANGE_PLAN, move, "change_plan"))
            base = {"user_id": user, "subscription_id": subs[user]}
            queue, kind = {0: (names.SUBSCRIPTION_RESUME, "resume"),
                           1: (names.SUBSCRIPTION_PAUSE, "pause"),
                           2: (names.SUBSCRIPTION_RESUME, "resume"),
                           3: (names.SUBSCRIPTION_UNPAUSE, "unpause")}[n % 4]  # fmt: skip
            out.append((queue, {**base, "idempotency_key": key()}, kind))
            (void, _), (off, _), (pay, total) = invoices[user]
            self.expected[(user, "USD")] -= total
            ids = {"user_id": user, "idempotency_key": key()}
            out += [
                (names.INVOICE_VOID, {**ids, "invoice_id": void, "reason": "crash"}, "void"),
                (names.INVOICE_MARK_UNCOLLECTIBLE,
                 {**ids, "idempotency_key": key(), "invoice_id": off}, "uncollectible"),
                (names.INVOICE_PAY,
                 {**ids, "idempotency_key": key(), "invoice_id": pay, "source": "balance"},
                 "invoice_paid"),
            ]  # fmt: skip
        return out

    def _after_the_payment(
        self, user: str, deposit_id: str, held: list[tuple[str, int]]
    ) -> list[tuple[str, dict[str, Any]]]:
        """Holds captured in part, released and placed; refunds of the funding deposit.
        None can be refused: the funding covers every debit and hold of the user."""
        (capture_id, capture_amount), (release_id, _), _kept = held
        captured = max(1, capture_amount // 2)
        self.expected[(user, "USD")] -= captured + REFUNDS_PER_USER * REFUND
        base = {"user_id": user}
        out: list[tuple[str, dict[str, Any]]] = [
            (names.WALLET_HOLD_CAPTURE,
             {**base, "idempotency_key": key(), "hold_id": capture_id, "amount": money(captured)}),
            (names.WALLET_HOLD_RELEASE, {**base, "idempotency_key": key(), "hold_id": release_id}),
            (names.WALLET_HOLD, {**base, "idempotency_key": key(),
                                 "amount": money(self.rng.randint(1_00, 20_00)),
                                 "expires_in_seconds": 3600}),
        ]  # fmt: skip
        out += [
            (names.PAYMENT_REFUND, {**base, "idempotency_key": key(), "transaction_id": deposit_id,
                                    "amount": money(REFUND), "destination": "original"})
            for _ in range(REFUNDS_PER_USER)
        ]  # fmt: skip
        for (_queue, command), kind in zip(
            out, ("capture", "release", "hold", *["refund"] * REFUNDS_PER_USER), strict=True
        ):
            self.kinds[command["idempotency_key"]] = kind
        return out


async def test_5000_commands_survive_sigkills_of_two_competing_workers(
    database_url: str, vhost_url: str, tmp_path: Path
) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    run = uuid.uuid4().hex[:6]
    plan = Plan(rng, run)
    env = worker_env(
        database_url,
        vhost_url,
        max_deliveries=10,
        retry_delays_ms="50,100,200,400",
        credit_without_policy="true",  # billing.tax-rate.upsert, by the client's user_id
    )
    workers = [Process("run", env, tmp_path / f"worker-{n}.log") for n in range(2)]
    client = LoadClient(vhost_url, user_id=urlsplit(vhost_url).username or "guest")
    await client.start()  # its event and dead-letter queues exist before anything is sent
    started = time.monotonic()
    try:
        for worker in workers:
            worker.start()
        await asyncio.gather(*(worker.ready() for worker in workers))

        # Before the chaos: a tax rate, the plans (half taxed), and money for every user.
        reply = await client.call(
            names.TAX_RATE_UPSERT,
            {"idempotency_key": key(), "code": plan.tax_rate, "name": "Crash VAT",
             "percent": str(TAX_PERCENT), "inclusive": False},
        )  # fmt: skip
        assert reply["ok"], reply
        reply = await client.call(
            names.COUPON_UPSERT,
            {"idempotency_key": key(), "code": plan.coupon, "name": "crash", "percent_off": "10",
             "duration": "forever"},
        )  # fmt: skip
        assert reply["ok"], reply
        pre_plans = [(plan.pre_plan, PRE_PRICE), (plan.move_plan, MOVE_PRICE),
                     (plan.target_plan, MOVE_PRICE * 2)]  # fmt: skip
        for code, price in [*plan.plans.items(), *pre_plans]:
            upsert = {"idempotency_key": key(), "code": code, "name": code,
                      "price": money(price), "interval": "month"}  # fmt: skip
            if code in plan.taxed_plans:
                upsert["tax_rate"] = plan.tax_rate
            reply = await client.call(names.PLAN_UPSERT, upsert)
            assert reply["ok"], reply
        funding = [
            await client.submit(
                names.WALLET_DEPOSIT,
                {"idempotency_key": key(), "user_id": user, "amount": money(FUNDING)},
            )
            for user in plan.users
        ]
        await client.settle(timeout=60)
        assert all(client.final(k)["ok"] for k in funding)  # type: ignore[index]
        await wait_for_settled(database_url)
        funded = {
            user: client.final(k)["data"]["transaction"]["id"]  # type: ignore[index]
            for user, k in zip(plan.users, funding, strict=True)
        }
        placing = {
            (user, n): await client.submit(
                names.WALLET_HOLD,
                {
                    "idempotency_key": key(),
                    "user_id": user,
                    "amount": money(rng.randint(1_00, 20_00)),
                    "expires_in_seconds": 3600,
                },
            )
            for user in plan.users
            for n in range(HOLDS_BEFORE)
        }
        await client.settle(timeout=60)
        held: dict[str, list[tuple[str, int]]] = {user: [] for user in plan.users}
        for (user, _), k in placing.items():
            hold = client.final(k)["data"]["hold"]  # type: ignore[index]
            held[user].append((hold["id"], _minor(hold["amount"])))

        # What the storm pauses, resumes and closes: a subscription per user (even users'
        # canceling at the period end, every fourth from 3 with a pause scheduled) and
        # three invoices per user, some lines taxed.
        subscribing: dict[str, str] = {}
        moving: dict[str, str] = {}
        issuing: dict[str, list[tuple[list[dict[str, Any]], str]]] = {}
        for user in plan.users:
            moving[user] = await client.submit(
                names.SUBSCRIPTION_CREATE,
                {"idempotency_key": key(), "user_id": user, "plan_code": plan.move_plan,
                 "payment_source": "balance"},
            )  # fmt: skip
            subscribing[user] = await client.submit(
                names.SUBSCRIPTION_CREATE,
                {
                    "idempotency_key": key(),
                    "user_id": user,
                    "plan_code": plan.pre_plan,
                    "payment_source": "balance",
                },
            )
            issuing[user] = []
            for _ in range(3):
                lines = [plan.line(n, top=20_00) for n in range(plan.rng.randint(1, 2))]
                command = {"idempotency_key": key(), "user_id": user, "currency": "USD",
                           "lines": lines}  # fmt: skip
                issuing[user].append((lines, await client.submit(names.INVOICE_CREATE, command)))
        await client.settle(timeout=60)
        subs = {user: client.final(k)["data"]["subscription"]["id"]  # type: ignore[index]
                for user, k in subscribing.items()}  # fmt: skip
        moves = {user: client.final(k)["data"]["subscription"]["id"]  # type: ignore[index]
                 for user, k in moving.items()}  # fmt: skip
        invoices: dict[str, list[tuple[str, int]]] = {}
        for user, issued in issuing.items():
            invoices[user] = []
            for lines, k in issued:
                invoice = client.final(k)["data"]  # type: ignore[index]
                assert _minor(invoice["total"]) == plan.total(lines), (invoice, lines)
                invoices[user].append((invoice["id"], plan.total(lines)))
        for user in plan.users:
            plan.expected[(user, "USD")] -= PRE_PRICE + MOVE_PRICE
        prepared = []
        for n, user in enumerate(plan.users):
            base = {"idempotency_key": key(), "user_id": user, "subscription_id": subs[user]}
            if n % 2 == 0:
                prepared.append(await client.submit(
                    names.SUBSCRIPTION_CANCEL, {**base, "at_period_end": True}))  # fmt: skip
            elif n % 4 == 3:
                prepared.append(await client.submit(names.SUBSCRIPTION_PAUSE, base))
        await client.settle(timeout=60)
        setup = [*funding, *placing.values(), *subscribing.values(), *moving.values(), *prepared,
                 *(k for issued in issuing.values() for _, k in issued)]  # fmt: skip
        assert all(client.final(k)["ok"] for k in setup)  # type: ignore[index]

        commands = plan.commands(funded, held, plan.lifecycle(subs, invoices, moves))
        subs_of, invoices_of, moves_of = subs, invoices, moves
        killed_at: list[float] = []

        async def impatient(command_key: str) -> None:
            """A client that did not wait for the answer: the same command again."""
            await asyncio.sleep(rng.uniform(0, 2))
            await client.resend(command_key)

        async def send() -> None:
            pause = SEND_SECONDS / (len(commands) / 25)
            retries = []
            for start in range(0, len(commands), 25):
                chunk = commands[start : start + 25]
                keys = await asyncio.gather(*(client.submit(q, c) for q, c in chunk))
                retries += [
                    asyncio.create_task(impatient(k)) for k in keys if rng.random() < RESEND_SHARE
                ]
                await asyncio.sleep(pause)
            await asyncio.gather(*retries)

        async def chaos() -> None:
            await asyncio.sleep(1.0)
            for _ in range(KILLS):
                victim = rng.choice(workers)
                victim.kill()
                killed_at.append(time.monotonic() - started)
                victim.start()
                await victim.ready()
                await asyncio.sleep(rng.uniform(0.5, 3.0))

        await asyncio.gather(send(), chaos())
        answered_during_load = len(commands) - len(client.unanswered())
        await client.settle(timeout=180, resend_after=15)
        for worker in workers:  # both still up, and they shut down cleanly
            assert worker.alive, worker.text()[-3000:]

        figures = await check_invariants(
            database_url,
            client,
            expected_balances=plan.expected,
            events_timeout=90,
            redelivered=True,
        )
        # A graceful stop after the storm, then the books are checked once more at rest.
        for worker in workers:
            assert await worker.stop() == 0, worker.text()[-3000:]
        await check_invariants(database_url, expected_balances=plan.expected)
    finally:
        for worker in workers:
            worker.ensure_dead()
        await client.close()

    outcomes = {kind: 0 for kind in set(plan.kinds.values())}
    for command_key, kind in plan.kinds.items():
        reply = client.final(command_key)
        assert reply is not None
        expected_ok = kind != "refused"
        assert reply["ok"] is expected_ok, (kind, reply)
        if kind == "refused":
            assert reply["error"]["code"] == "insufficient_funds", reply
        outcomes[kind] += 1

    async with connect(database_url) as db:
        counts = {
            (row["kind"], row["status"]): row["n"]
            for row in await db.fetch(
                "SELECT kind, status, count(*) AS n FROM transactions GROUP BY kind, status"
            )
        }
        invoices = await db.fetchval("SELECT count(*) FROM invoices WHERE subscription_id IS NULL")
        closed = {
            row["status"]: row["n"]
            for row in await db.fetch(
                "SELECT status, count(*) AS n FROM invoices WHERE id = ANY($1::uuid[]) "
                "GROUP BY status",
                [i for user in plan.users for i, _ in invoices_of[user]],
            )
        }
        invoice_payments = await db.fetchval(
            "SELECT count(*) FROM transactions WHERE kind = 'invoice_payment' "
            "AND status = 'completed' AND invoice_id = ANY($1::uuid[])",
            [i for user in plan.users for i, _ in invoices_of[user]],
        )
        pre = {
            row["user_id"]: (row["status"], row["cancel_at_period_end"],
                             row["pause_at_period_end"], row["paid_periods"])
            for row in await db.fetch(
                "SELECT s.user_id, s.status, s.cancel_at_period_end, s.pause_at_period_end, "
                "s.paid_periods FROM subscriptions s WHERE s.id = ANY($1::uuid[])",
                list(subs_of.values()),
            )
        }  # fmt: skip
        moved = {
            row["user_id"]: (row["code"], row["quantity"], row["paid_periods"], row["coupon_code"],
                             row["changes"])
            for row in await db.fetch(
                "SELECT s.user_id, p.code, s.quantity, s.paid_periods, r.coupon_code, "
                "(SELECT count(*) FROM subscription_plan_changes c WHERE c.subscription_id = s.id "
                " AND c.kind = 'change_plan') AS changes "
                "FROM subscriptions s JOIN plans p ON p.id = s.plan_id "
                "LEFT JOIN coupon_redemptions r ON r.subscription_id = s.id "
                "WHERE s.id = ANY($1::uuid[])",
                [uuid.UUID(i) for i in moves_of.values()],
            )
        }  # fmt: skip
        period_invoices = await db.fetchval(
            "SELECT count(*) FROM invoices WHERE subscription_id IS NOT NULL AND status = 'paid'"
        )
        live = await db.fetchval("SELECT count(*) FROM subscriptions WHERE status = 'active'")
        holds = {
            row["status"]: row["n"]
            for row in await db.fetch("SELECT status, count(*) AS n FROM holds GROUP BY status")
        }
    assert counts.get(("deposit", "completed")) == outcomes["deposit"] + USERS
    assert counts.get(("deposit", "failed")) == outcomes["declined"]
    # a capture is a withdrawal of what it captured
    assert counts.get(("withdrawal", "completed")) == outcomes["withdrawal"] + outcomes["capture"]
    assert counts.get(("refund", "completed")) == outcomes["refund"]
    assert holds == {
        "captured": outcomes["capture"],
        "released": outcomes["release"],
        "open": outcomes["hold"] + USERS,  # placed in the storm, and kept from before it
    }
    # the storm's subscriptions, and the one per user set up before it
    assert counts.get(("subscription_charge", "completed")) == outcomes["subscription"] + 2 * USERS
    assert invoices == outcomes["invoice"] + 3 * USERS  # and three per user before the storm
    assert period_invoices == outcomes["subscription"] + 2 * USERS  # each first period's
    assert live == outcomes["subscription"] + 2 * USERS  # a scheduled pause is still active
    # Voided, written off and paid once each, whatever the kills and resends.
    assert closed == {"void": USERS, "uncollectible": USERS, "paid": USERS}, closed
    assert invoice_payments == outcomes["invoice_paid"] == USERS
    for kind in ("invoice.voided", "invoice.uncollectible"):
        assert len({e.body["data"]["invoice_id"] for e in client.events_of(kind)}) == USERS
    # Resumed: no longer canceling; paused: at the period end; unpaused: the pause dropped.
    # Nothing charged twice: one paid period each.
    assert pre == {user: ("active", False, n % 4 == 1, 1) for n, user in enumerate(plan.users)}, pre
    assert outcomes["resume"] + outcomes["pause"] + outcomes["unpause"] == USERS
    # Moved once each: on the target plan with two seats and the coupon, one change row,
    # still one paid period (no proration: nothing charged), one subscription.updated.
    assert moved == {user: (plan.target_plan, 2, 1, plan.coupon, 1) for user in plan.users}, moved
    assert outcomes["change_plan"] == USERS
    updated = {e.body["data"]["subscription_id"] for e in client.events_of("subscription.updated")}
    assert updated == set(moves_of.values())
    assert len(client.events_of("deposit.completed")) >= outcomes["deposit"] + USERS
    assert len(killed_at) == KILLS

    repeated = sum(1 for replies in client.replies.values() if len(replies) > 1)
    record(
        "crashes",
        commands=len(commands) + len(setup) + PLANS + 5,  # + rate, coupon and 3 pre plans
        kills=sum(worker.kills for worker in workers),
        restarts=sum(worker.starts for worker in workers) - len(workers),
        resent=client.resent,
        answered_more_than_once=repeated,
        answered_during_load=answered_during_load,
        events_consumed=len(client.events),
        outbox_events=figures["outbox_events"],
        balances_checked=figures["balances_checked"],
        worker_tracebacks=sum(len(tracebacks(worker.text())) for worker in workers),
        lost=0,
        seed=seed,
        kill_moments_s=[round(at, 1) for at in killed_at],
    )
