"""The mixed scenario: the real worker on the mix of messages a shop sends (issue 18).

The mix, per 100 messages (`--mix`, `run_mixed(mix=...)`: any whole-number shares):

    40  wallet.withdraw       a purchase paid from the wallet; done = its reply
    10  wallet.deposit        a top-up with provider `sandbox`: the worker calls the
                              sandbox, which completes it through its own callback on
                              billing.provider-events; done = its `deposit.completed`
    25  wallet.balance        the storefront showing the balance; done = its reply
    10  wallet.transactions   the wallet's history page (20 items); done = its reply
    10  order.created         an order from the Orders service (exchange `orders`,
                              routing key `order.created`, no reply); done = its
                              `invoice.created`
     5  subscription.create   a subscription paid from the balance, to one of three
                              monthly plans upserted first with `billing.plan.upsert`;
                              done = its reply

Why these shares: spending from the wallet is a shop's most frequent write; the balance
is read around nearly every purchase (checkout, account page), so it is the most frequent
read, and the history page is opened far less often; a top-up comes about once per four
purchases; orders paid outside the wallet are invoiced (one `order.created` per four
purchases); subscribing is the rarest write. Reads are 35 % of the messages, money
moves in 55 %.

Every command has its own idempotency key (= its correlation id); every query its own
correlation id; every order its own `order_id`. Users are the drain scenario's seeded,
funded accounts (`Plan.seed`, plain SQL); no user subscribes twice to one plan.

**worker** side, one run in a fresh database and vhost (like `scenario.run_once`):

1. seed users and accounts; declare the queues as the worker does; a setup worker
   upserts the plans (`billing.plan.upsert`, replies checked) and is stopped;
2. pre-fill the mix (publisher confirms, shuffled in blocks of the mix's size);
3. start `billing-worker run`; **saturation**: completions/s per kind and in total from
   the first completion + `warmup` for `seconds`, or until the first kind has all its
   messages done (the window only counts time in which every kind was busy:
   `drained_first` names the kind that ran out);
4. let the pre-fill finish; **half saturation**, same worker process still running: an
   open-loop sender at half the total rate just measured, each kind on its own schedule
   in the mix's shares (blocks of the mix's size, evenly spaced), for `warmup` +
   `seconds`; per kind p50/p99 of request -> reply (-> event for `order.created` and a
   deposit's completion) of the messages sent after the warm-up, times on this process's
   clock;
5. the tail, the outbox settles, SIGTERM, leftovers counted, **check** (`check_mixed`).

**floor** side: the floor (`python -m benchmarks.floor`) cannot answer queries, orders
or subscriptions, so it runs the mix's withdraws and deposit completions in the mix's
shares (40:10 by default; deposits as the drain scenario's seeded `processing` sandbox
deposits completed by their callback), pre-filled, saturation only; the comparison is
the worker's withdraw rate while doing the whole mix against the floor's. `messages`
is what is pre-filled on either side: the whole mix (worker), withdraws + callbacks
(floor).

The result is shaped like `scenario.run_once`'s: `msgs_per_s`, `p50_ms`, `p99_ms` (queued
latency: pre-filled), `cpu_s` and `consumer_cpu_ms_per_msg` are the saturation window's;
plus `withdraw_msgs_per_s`, `per_kind` {kind: {msgs_per_s (saturation), p50_ms, p99_ms
(half saturation on the worker, the saturation window's queued latency on the floor)}},
`query_p99_ms` {query kind: half-saturation p99}, and the details of both phases in
`saturation` and `half_saturation`.

    .venv/bin/python -m benchmarks.mixed --seconds 15            # floor, then worker
    .venv/bin/python -m benchmarks.mixed --side worker --json -  # the JSON on stdout
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: benchmarks/mixed.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aio_pika
import asyncpg
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage

from benchmarks import env as services
from benchmarks.check import WORK_QUEUES, check, check_observed, listed
from benchmarks.floor import minor_of
from benchmarks.load import Load, Observed, leftovers, reply_problem
from benchmarks.plan import CURRENCY, Deposit, Plan, wire
from benchmarks.procs import Consumer, CpuMeter, start_floor, start_workers
from benchmarks.scenario import Options, fresh_run
from benchmarks.stats import percentile, window
from billing_contracts import names
from billing_worker.db.idempotency import user_scope
from billing_worker.domain.ledger import derived_id
from billing_worker.messaging.topology import Topology
from billing_worker.providers import sandbox
from billing_worker.providers.base import PaymentRequest
from billing_worker.settings import Settings

WITHDRAW = "wallet.withdraw"
DEPOSIT = "wallet.deposit"
BALANCE = "wallet.balance"
HISTORY = "wallet.transactions"
ORDER = "order.created"
SUBSCRIBE = "subscription.create"
KINDS = (WITHDRAW, DEPOSIT, BALANCE, HISTORY, ORDER, SUBSCRIBE)
DEFAULT_MIX = {WITHDRAW: 40, DEPOSIT: 10, BALANCE: 25, HISTORY: 10, ORDER: 10, SUBSCRIBE: 5}
QUERIES = (BALANCE, HISTORY)
QUEUE = {
    WITHDRAW: names.WALLET_WITHDRAW,
    DEPOSIT: names.WALLET_DEPOSIT,
    BALANCE: names.WALLET_BALANCE,
    HISTORY: names.WALLET_TRANSACTIONS,
    ORDER: names.ORDER_CREATED_QUEUE,
    SUBSCRIBE: names.SUBSCRIPTION_CREATE,
}
FLOOR_DEPOSIT = "deposit.completion"  # the floor's deposits: the sandbox callback alone
MIXED_QUEUES = [
    *QUEUE.values(), names.PLAN_UPSERT, names.PROVIDER_EVENTS_QUEUE, names.DEAD_LETTER_QUEUE
]  # fmt: skip
HISTORY_LIMIT = 20
PLANS = (("bench-basic", "Basic", 499), ("bench-plus", "Plus", 999), ("bench-pro", "Pro", 1999))
# The fastest kind's rate over its share of the pre-fill, msgs/s: what a pre-fill must be
# sized by for no kind to run out within the window (measured on a shared 2-core machine:
# the worker's subscription creates, the floor's deposit completions run out first).
RATE_GUESS = {"worker": 400.0, "floor": 1200.0}
PERSISTENT = aio_pika.DeliveryMode.PERSISTENT
JSON = "application/json"
_BATCH = 256


def money(minor: int) -> dict[str, str]:
    return {"amount": wire(minor), "currency": CURRENCY}


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def checked_mix(mix: Mapping[str, int] | None) -> dict[str, int]:
    """Every kind's share (absent: 0); ValueError for an unknown kind or no message."""
    if mix is None:
        return dict(DEFAULT_MIX)
    unknown = set(mix) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown kinds in the mix: {', '.join(sorted(unknown))}")
    full = {kind: mix.get(kind, 0) for kind in KINDS}
    if any(not isinstance(share, int) or share < 0 for share in full.values()):
        raise ValueError("mix shares are whole numbers >= 0")
    if not sum(full.values()):
        raise ValueError("the mix has no message")
    return full


def parse_mix(text: str) -> dict[str, int]:
    """'wallet.withdraw=40,wallet.balance=60' -> the mix; kinds not named get 0."""
    mix: dict[str, int] = {}
    for part in text.split(","):
        kind, sep, share = part.strip().partition("=")
        if not sep or not share.strip().isdigit():
            raise ValueError(f"expected kind=share, got {part.strip()!r}")
        mix[kind.strip()] = int(share)
    return checked_mix(mix)


@dataclass(frozen=True, slots=True)
class Sent:
    """One message of the mix and what a right answer to it says."""

    kind: str
    key: str  # correlation id: a command's idempotency key, an order's order_id
    user_id: str
    body: bytes
    amount_minor: int = 0  # withdraw or deposit amount, order total, subscription price
    ref: str = ""  # a deposit's transaction id, a subscription's plan code


class MixedPlan:
    """The messages of a worker run, the users they act for, and what each must do.

    Withdraws come from the drain scenario's `Plan` (`base`), so `check.check_observed`
    and `load.reply_problem` read them as they read a drain's; deposit commands are
    entered in `base.deposits` under the transaction id the worker derives for them.
    """

    def __init__(self, tag: str, accounts: int, mix: Mapping[str, int], *, seed: int = 0) -> None:
        self.base = Plan(tag, accounts, seed=seed)
        self.tag, self.accounts, self.mix = tag, accounts, checked_mix(mix)
        self._rng = random.Random(f"mixed-{seed}")
        self.sent: dict[str, Sent] = {}  # every message of the mix, by key
        self.counts: Counter[str] = Counter()
        self.by_transaction: dict[str, str] = {}  # deposit transaction id -> command key
        self.plans = {f"{tag}-p{i}": plan for i, plan in enumerate(PLANS)}  # upsert key ->
        self._subscribers = self._rng.sample(range(accounts), accounts)
        self._seeded = False

    async def seed(self, db: asyncpg.Connection) -> None:
        """Users and funded accounts (`Plan.seed`); before any deposit is planned."""
        assert not self.base.deposits, "the worker makes its deposits: none is seeded"
        await self.base.seed(db)
        self._seeded = True

    def plan_upserts(self) -> list[tuple[str, bytes]]:
        return [
            (key, dumps({"idempotency_key": key, "code": code, "name": name,
                         "price": money(price), "interval": "month"}))
            for key, (code, name, price) in self.plans.items()
        ]  # fmt: skip

    def kinds(self, count: int) -> list[str]:
        """`count` kinds in the mix's shares: blocks of sum(shares) messages, each shuffled."""
        block = [kind for kind, share in self.mix.items() for _ in range(share)]
        out: list[str] = []
        while len(out) < count:
            self._rng.shuffle(block)
            out += block
        return out[:count]

    def _user(self) -> str:
        return self.base.user(self._rng.randrange(self.accounts))

    def new(self, kind: str) -> Sent:
        assert self._seeded, "seed first: the plan's deposits must not be seeded"
        n = self.counts[kind]
        if kind == WITHDRAW:
            command = self.base.new_withdraw()
            sent = Sent(kind, command.key, command.user_id, command.body(), command.amount_minor)
        elif kind == DEPOSIT:
            sent = self._deposit(f"{self.tag}-d{n}")
        elif kind in (BALANCE, HISTORY):
            key, user = f"{self.tag}-{'b' if kind == BALANCE else 't'}{n}", self._user()
            query: dict[str, Any] = {"user_id": user}
            query |= {"currency": CURRENCY} if kind == BALANCE else {"limit": HISTORY_LIMIT}
            sent = Sent(kind, key, user, dumps(query))
        elif kind == ORDER:
            sent = self._order(f"{self.tag}-o{n}")
        elif kind == SUBSCRIBE:
            sent = self._subscription(f"{self.tag}-s{n}", n)
        else:
            raise ValueError(f"unknown kind {kind!r}")
        self.counts[kind] += 1
        self.sent[sent.key] = sent
        return sent

    def _deposit(self, key: str) -> Sent:
        """A sandbox deposit command; its transaction id and callback as the worker's."""
        user, amount = self._user(), self._rng.randint(1, 99_999)
        transaction_id = derived_id("deposit", user, key)
        ref, event_id, callback = sandbox.callback(
            PaymentRequest(transaction_id, user, amount, CURRENCY, str(transaction_id))
        )
        deposit = Deposit(transaction_id, user, amount, ref, event_id, callback)
        self.base.deposits[deposit.key] = deposit
        self.by_transaction[deposit.key] = key
        body = {"idempotency_key": key, "user_id": user, "amount": money(amount),
                "provider": "sandbox"}  # fmt: skip
        return Sent(DEPOSIT, key, user, dumps(body), amount, deposit.key)

    def _order(self, order_id: str) -> Sent:
        lines = [(self._rng.randint(1, 3), self._rng.randint(1, 9999))
                 for _ in range(self._rng.randint(1, 3))]  # fmt: skip
        items = [
            {"sku": f"SKU-{self._rng.randrange(1000)}", "description": "benchmark item",
             "quantity": quantity, "unit_price": money(price)}
            for quantity, price in lines
        ]  # fmt: skip
        total = sum(quantity * price for quantity, price in lines)
        user = self._user()
        body = {"order_id": order_id, "user_id": user, "currency": CURRENCY, "items": items}
        return Sent(ORDER, order_id, user, dumps(body), total)

    def _subscription(self, key: str, n: int) -> Sent:
        """The n-th create: plan n % 3 for the (n // 3)-th subscriber (one per user and plan)."""
        code, _, price = PLANS[n % len(PLANS)]
        if n // len(PLANS) >= self.accounts:
            raise ValueError(f"more subscription creates than {self.accounts} accounts x plans")
        user = self.base.user(self._subscribers[n // len(PLANS)])
        body = {"idempotency_key": key, "user_id": user, "plan_code": code,
                "payment_source": "balance"}  # fmt: skip
        return Sent(SUBSCRIBE, key, user, dumps(body), price, code)

    def of_kind(self, kind: str) -> list[Sent]:
        return [sent for sent in self.sent.values() if sent.kind == kind]

    def subscription_id(self, sent: Sent) -> str:
        return str(derived_id("subscription", sent.user_id, sent.key))

    def expected_balances(self) -> dict[str, int]:
        """initial - withdraws - subscription charges + deposits, every account."""
        balances = self.base.expected_balances()
        for sent in self.of_kind(SUBSCRIBE):
            balances[sent.user_id] -= sent.amount_minor
        return balances

    def balance_bounds(self) -> dict[str, tuple[int, int]]:
        """The least and the most any balance reply of a user may say, whenever it came."""
        low = dict.fromkeys(map(self.base.user, range(self.accounts)), self.base.initial_balance)
        high = dict(low)
        for sent in self.sent.values():
            if sent.kind in (WITHDRAW, SUBSCRIBE):
                low[sent.user_id] -= sent.amount_minor
            elif sent.kind == DEPOSIT:
                high[sent.user_id] += sent.amount_minor
        return {user: (low[user], high[user]) for user in low}


@dataclass
class MixedObserved:
    """What the load generator saw of a worker run: the check's view from outside."""

    observed: Observed = field(default_factory=Observed)  # withdraws, deposit completions
    replies: Counter[str] = field(default_factory=Counter)  # other kinds: key -> replies
    wrong_replies: list[str] = field(default_factory=list)
    plan_replies: Counter[str] = field(default_factory=Counter)
    events: dict[str, set[str]] = field(default_factory=dict)  # key -> distinct event ids
    wrong_events: list[str] = field(default_factory=list)
    balances: dict[str, int] = field(default_factory=dict)  # balance query -> its answer


def _code(reply: dict[str, Any]) -> str:
    return f"refused: {reply.get('error', {}).get('code')}"


def mixed_reply_problem(plan: MixedPlan, sent: Sent, body: bytes) -> tuple[str | None, int | None]:
    """Why a reply is not the right success for `sent` (None if it is), and for a balance
    query the balance it gave."""
    try:
        reply = json.loads(body)
        if not reply.get("ok"):
            return _code(reply), None
        data = reply["data"]
        if sent.kind == DEPOSIT:
            t = data["transaction"]
            expected = (sent.ref, sent.user_id, wire(sent.amount_minor), "deposit", "processing")
            found = (t["id"], t["user_id"], t["amount"]["amount"], t["kind"], t["status"])
            return (None if found == expected else f"deposit reply {found}, sent {expected}"), None
        if sent.kind == BALANCE:
            if data["user_id"] != sent.user_id:
                return f"balance of {data['user_id']}, asked for {sent.user_id}", None
            usd = [a for a in data["accounts"] if a["currency"] == CURRENCY]
            if len(data["accounts"]) != 1 or len(usd) != 1:
                return f"accounts {data['accounts']}, expected one {CURRENCY} account", None
            return None, minor_of(usd[0]["balance"]["amount"])
        if sent.kind == HISTORY:
            others = {item["user_id"] for item in data["items"]} - {sent.user_id}
            if others:
                return f"history of {sorted(others)}, asked for {sent.user_id}", None
            if len(data["items"]) > HISTORY_LIMIT:
                return f"{len(data['items'])} items, limit {HISTORY_LIMIT}", None
            return None, None
        if sent.kind == SUBSCRIBE:
            s = data["subscription"]
            expected = (plan.subscription_id(sent), sent.user_id, sent.ref, "active", "balance")
            found = (s["id"], s["user_id"], s["plan_code"], s["status"], s["payment_source"])
            return (None if found == expected else f"subscription {found}, sent {expected}"), None
    except (ValueError, KeyError, TypeError) as error:
        return f"unreadable reply: {error!r}", None
    return f"no reply expected for {sent.kind}", None


class MixedLoad:
    """The load generator of a worker run: publishes the mix, collects what comes back.

    It declares every queue of the mix as the worker does (`Topology`), the `orders`
    exchange with the order queue bound to it, a reply queue and a tap on `billing.events`
    for `deposit.completed` and `invoice.created`. Completion times are on this process's
    clock: a reply, or the event of a deposit or an order.
    """

    def __init__(self, plan: MixedPlan, orders_exchange: str = names.ORDERS_EXCHANGE) -> None:
        self.plan = plan
        self.orders_exchange = orders_exchange
        self.seen = MixedObserved()
        self.sent_at: dict[str, float] = {}
        self.done_at: dict[str, float] = {}
        self.done: Counter[str] = Counter()  # kind -> completions
        self.expected: Counter[str] = Counter()  # kind -> messages sent
        self.replied = 0  # messages with at least one reply
        self.reply_expected = 0
        self.first_done = asyncio.Event()
        self.all_done = asyncio.Event()

    async def connect(self, amqp: str) -> None:
        self.connection = await aio_pika.connect(amqp)
        self.confirmed = await self.connection.channel(publisher_confirms=True)
        self.unconfirmed = await self.connection.channel(publisher_confirms=False)
        topology = Topology(
            quorum=False, orders_exchange_name=self.orders_exchange, retry_delays_ms=(1,)
        )
        for name in [*QUEUE.values(), names.PLAN_UPSERT, names.PROVIDER_EVENTS_QUEUE]:
            declared = topology.queue_for(name)
            await self.confirmed.declare_queue(
                name, durable=True, arguments=dict(declared.arguments or {})
            )
        orders = await self.confirmed.declare_exchange(
            self.orders_exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        order_queue = await self.confirmed.get_queue(names.ORDER_CREATED_QUEUE)
        await order_queue.bind(orders, routing_key=names.ORDER_CREATED)
        self._orders: dict[bool, AbstractExchange] = {
            True: orders, False: await self.unconfirmed.get_exchange(self.orders_exchange)
        }  # fmt: skip
        events = await self.confirmed.declare_exchange(
            names.EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
        )
        self.reply_queue = await self.confirmed.declare_queue(exclusive=True, auto_delete=True)
        await self.reply_queue.consume(self._on_reply, no_ack=True)
        tap = await self.confirmed.declare_queue(exclusive=True, auto_delete=True)
        for event in ("deposit.completed", "invoice.created"):
            await tap.bind(events, routing_key=event)
        await tap.consume(self._on_event, no_ack=True)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.connection.close()

    def expect(self, sents: Sequence[Sent]) -> None:
        for sent in sents:
            self.expected[sent.kind] += 1
            self.reply_expected += sent.kind != ORDER
        self.all_done.clear()

    def _settled(self) -> None:
        if self.done.total() >= self.expected.total() and self.replied >= self.reply_expected:
            self.all_done.set()

    def _complete(self, key: str, kind: str) -> None:
        if key in self.done_at:
            return
        self.done_at[key] = time.perf_counter()
        self.done[kind] += 1
        self.first_done.set()
        self._settled()

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        key = message.correlation_id or ""
        seen = self.seen
        if key in self.plan.plans:
            seen.plan_replies[key] += 1
            code, _, price = self.plan.plans[key]
            with contextlib.suppress(ValueError, KeyError, TypeError):
                data = json.loads(message.body)["data"]
                if (data["code"], data["version"], data["price"]) == (code, 1, money(price)):
                    return
            seen.wrong_replies.append(f"plan.upsert {key}: {message.body[:200]!r}")
            return
        sent = self.plan.sent.get(key)
        if sent is None or sent.kind == ORDER:
            seen.observed.unknown_replies += 1
            return
        if sent.kind == WITHDRAW:
            seen.observed.replies[key] += 1
            first = seen.observed.replies[key] == 1
            problem = reply_problem(self.plan.base.withdraws[key], message.body)
            if problem is not None:
                seen.observed.wrong_replies.append(f"{key}: {problem}")
        else:
            seen.replies[key] += 1
            first = seen.replies[key] == 1
            problem, balance = mixed_reply_problem(self.plan, sent, message.body)
            if problem is not None:
                seen.wrong_replies.append(f"{sent.kind} {key}: {problem}")
            if balance is not None:
                seen.balances[key] = balance
        self.replied += first
        if sent.kind == DEPOSIT:  # done when its deposit.completed comes (perhaps first)
            self._settled()
        else:
            self._complete(key, sent.kind)

    async def _on_event(self, message: AbstractIncomingMessage) -> None:
        try:
            event = json.loads(message.body)
            data, event_id = event["data"], str(event["event_id"])
            if event["type"] == "deposit.completed":
                transaction_id = str(data["transaction_id"])
                key = self.plan.by_transaction.get(transaction_id)
                if key is None:
                    return  # not one of ours
                self.seen.observed.deposit_events[transaction_id] += 1
                sent = self.plan.sent[key]
            else:  # invoice.created: an order's (a subscription period's has no order_id)
                order = self.plan.sent.get(str(data.get("order_id")))
                if order is None or order.kind != ORDER:
                    return
                sent = order
            found = (data["user_id"], (data["amount"] if sent.kind == DEPOSIT else data["total"]))
            if found != (sent.user_id, money(sent.amount_minor)):
                self.seen.wrong_events.append(f"{event['type']} of {sent.key}: {found}")
        except (ValueError, KeyError, TypeError) as error:
            self.seen.wrong_events.append(f"unreadable event: {error!r}")
            return
        self.seen.events.setdefault(sent.key, set()).add(event_id)
        self._complete(sent.key, sent.kind)

    def _message(self, sent: Sent) -> aio_pika.Message:
        if sent.kind == ORDER:  # an event: no reply
            return aio_pika.Message(
                sent.body, content_type=JSON, delivery_mode=PERSISTENT, message_id=sent.key
            )
        return aio_pika.Message(
            sent.body, content_type=JSON, delivery_mode=PERSISTENT,
            correlation_id=sent.key, reply_to=self.reply_queue.name,
        )  # fmt: skip

    async def _publish(self, sent: Sent, confirmed: bool) -> None:
        if sent.kind == ORDER:
            await self._orders[confirmed].publish(
                self._message(sent), routing_key=names.ORDER_CREATED
            )
        else:
            channel = self.confirmed if confirmed else self.unconfirmed
            await channel.default_exchange.publish(
                self._message(sent), routing_key=QUEUE[sent.kind]
            )

    async def prefill(self, sents: Sequence[Sent]) -> None:
        """Publish `sents`, all confirmed by the broker."""
        self.expect(sents)
        for start in range(0, len(sents), _BATCH):
            batch = sents[start : start + _BATCH]
            now = time.perf_counter()
            for sent in batch:
                self.sent_at[sent.key] = now
            await asyncio.gather(*(self._publish(sent, True) for sent in batch))

    async def send(self, sent: Sent) -> None:
        """One message of an open loop (`expect` it first), no confirm awaited."""
        self.sent_at[sent.key] = time.perf_counter()
        await self._publish(sent, False)

    async def upsert_plans(self, consumer: Consumer, patience: float) -> None:
        """The plans, upserted through the worker; waits for every reply."""
        exchange = self.confirmed.default_exchange
        for key, body in self.plan.plan_upserts():
            message = aio_pika.Message(
                body, content_type=JSON, delivery_mode=PERSISTENT,
                correlation_id=key, reply_to=self.reply_queue.name,
            )  # fmt: skip
            await exchange.publish(message, routing_key=names.PLAN_UPSERT)
        await until(
            lambda: set(self.seen.plan_replies) >= set(self.plan.plans),
            patience, consumer, "reply to every billing.plan.upsert",
        )  # fmt: skip

    async def wait_all(self, patience: float) -> None:
        try:
            async with asyncio.timeout(patience):
                await self.all_done.wait()
        except TimeoutError:
            missing = self.expected.total() - self.done.total()
            unanswered = self.reply_expected - self.replied
            raise TimeoutError(
                f"{missing} of {self.expected.total()} messages never completed and "
                f"{unanswered} never got a reply within {patience:.0f}s"
            ) from None

    async def count_leftovers(self, queues: Sequence[str]) -> dict[str, int]:
        counts = await leftovers(self.connection, queues)
        self.seen.observed.leftovers = counts
        return counts


def retry_queues(settings: Mapping[str, str]) -> list[str]:
    """The worker's delay queues (a message waiting for its redelivery sits there)."""
    text = settings.get("BILLING_RETRY_DELAYS_MS")
    delays = (
        tuple(int(part) for part in text.split(",") if part.strip())
        if text
        else Settings.model_fields["retry_delays_ms"].default
    )
    topology = Topology(quorum=False, orders_exchange_name="orders", retry_delays_ms=delays)
    return [queue.name for _, queue in topology.retry_queues()]


async def until(
    condition: Callable[[], bool], patience: float, consumer: Consumer, what: str
) -> None:
    """Wait for `condition`, failing at once if the consumer died meanwhile."""
    deadline = time.perf_counter() + patience
    while not condition():
        if consumer.died():  # stop() says how
            raise RuntimeError(f"the {consumer.side} died before its {what}")
        if time.perf_counter() > deadline:
            raise TimeoutError(f"no {what} within {patience:.0f}s")
        await asyncio.sleep(0.05)


async def settle_outbox(db: asyncpg.Connection, seconds: float) -> None:
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        if not await db.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL"):
            return
        await asyncio.sleep(0.1)


# --- measuring ---------------------------------------------------------------------------


@dataclass
class Track:
    """What a drain measurement reads of a load generator (the floor's `Load` or ours)."""

    done_at: dict[str, float]
    sent_at: dict[str, float]
    kind_of: Callable[[str], str]  # completion key -> kind
    done: Callable[[], Mapping[str, int]]  # kind -> completions so far
    expected: Mapping[str, int]  # kind -> messages pre-filled
    first_done: asyncio.Event


def prefill_drain(track: Track) -> dict[str, Any]:
    """The whole pre-fill, first completion to last (call once it is all done): the rate
    at which the side got through the mix in its own shares, tail included."""
    first, last = min(track.done_at.values()), max(track.done_at.values())
    seconds = max(last - first, 1e-9)
    done = track.done()
    return {"seconds": round(seconds, 3),
            "msgs_per_s": round(sum(done.values()) / seconds, 1),
            "withdraw_msgs_per_s": round(done.get(WITHDRAW, 0) / seconds, 1)}  # fmt: skip


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


async def measure_saturation(
    track: Track, consumer: Consumer, meter: CpuMeter, o: Options
) -> dict[str, Any]:
    """From the first completion + warm-up, for `seconds` or until a kind runs out."""
    await until(track.first_done.is_set, o.startup_timeout, consumer, "first completion")
    first = min(track.done_at.values())
    start = first + o.warmup

    def drained() -> str | None:
        done = track.done()
        return next((k for k, n in track.expected.items() if n and done.get(k, 0) >= n), None)

    while time.perf_counter() < start and drained() is None:
        if consumer.died():
            raise RuntimeError(f"the {consumer.side} died during the warm-up")
        await asyncio.sleep(0.02)
    before = await meter.snapshot()
    while (kind := drained()) is None and time.perf_counter() < start + o.seconds:
        if consumer.died():
            raise RuntimeError(f"the {consumer.side} died while measured")
        await asyncio.sleep(0.05)
    cpu = meter.delta(before, await meter.snapshot())
    end = start + o.seconds
    if kind is not None:  # its last completion ends the window: all kinds were busy till then
        end = min(end, max(t for key, t in track.done_at.items() if track.kind_of(key) == kind))
    warmup_skipped = end <= start
    if warmup_skipped:  # a kind ran out within the warm-up: from the first completion
        start = first
    points: dict[str, list[tuple[float, float]]] = {k: [] for k, n in track.expected.items() if n}
    for key, done in track.done_at.items():
        if start <= done <= end and key in track.sent_at:
            points[track.kind_of(key)].append((done, done - track.sent_at[key]))
    total = window([p for kind_points in points.values() for p in kind_points], start, end)
    per_kind = {k: window(p, start, end) for k, p in points.items()}
    completed = total["completed_in_window"]
    shares = {k: round(s["completed_in_window"] / completed, 3) if completed else None
              for k, s in per_kind.items()}  # fmt: skip
    return {**total, "drained_early": kind is not None, "drained_first": kind,
            "warmup_skipped": warmup_skipped, "latency": "queued (pre-filled)", "cpu_s": cpu,
            "per_kind": per_kind, "mix_in_window": shares}  # fmt: skip


async def measure_half(
    load: MixedLoad, rate: float, consumer: Consumer, meter: CpuMeter, o: Options
) -> dict[str, Any]:
    """An open loop at `rate` msgs/s in the mix's shares for warm-up + `seconds` (at
    least one whole block of the mix: longer at a tiny rate); the latency of every
    message sent after the warm-up, once all came back."""
    plan = load.plan
    count = max(sum(plan.mix.values()), round(rate * (o.warmup + o.seconds)))  # a whole block
    sends = [plan.new(kind) for kind in plan.kinds(count)]
    load.expect(sends)
    t0 = time.perf_counter() + 0.05
    measured_from = t0 + o.warmup
    lag, before = 0.0, None
    for index, sent in enumerate(sends):
        due = t0 + index / rate
        if (now := time.perf_counter()) < due:
            await asyncio.sleep(due - now)
            now = time.perf_counter()
        if before is None and now >= measured_from:
            before = await meter.snapshot()
        lag = max(lag, now - due)
        await load.send(sent)
    ended = time.perf_counter()
    cpu = meter.delta(before or await meter.snapshot(), await meter.snapshot())
    if consumer.died():
        raise RuntimeError(f"the {consumer.side} died during the half-saturation phase")
    await load.wait_all(o.tail_timeout)
    seconds = max(ended - measured_from, 1e-9)
    measured = [s for s in sends if load.sent_at[s.key] >= measured_from]
    latency = {s.key: (load.done_at[s.key] - load.sent_at[s.key]) * 1000 for s in measured}
    per_kind: dict[str, dict[str, Any]] = {}
    for kind in (k for k, share in plan.mix.items() if share):
        mine = [latency[s.key] for s in measured if s.kind == kind]
        per_kind[kind] = {"sent": len(mine), "sent_per_s": round(len(mine) / seconds, 1),
                          "p50_ms": _ms(percentile(mine, 50)), "p99_ms": _ms(percentile(mine, 99)),
                          "max_ms": _ms(max(mine, default=None))}  # fmt: skip
    values = list(latency.values())
    return {"target_msgs_per_s": round(rate, 1), "window_s": round(seconds, 3),
            "sent_in_window": len(measured), "sent_per_s": round(len(measured) / seconds, 1),
            "p50_ms": _ms(percentile(values, 50)), "p99_ms": _ms(percentile(values, 99)),
            "max_send_lag_ms": round(lag * 1000, 2), "cpu_s": cpu,
            "latency": "round trip: request -> reply, or -> event for order.created and "
            "a deposit's completion (open loop)", "per_kind": per_kind}  # fmt: skip


# --- the check ---------------------------------------------------------------------------


def check_seen(plan: MixedPlan, seen: MixedObserved) -> list[str]:
    """The outside view: replies, events, leftovers."""
    problems = check_observed(plan.base, seen.observed)  # withdraws, deposit events, queues
    replied = [s for s in plan.sent.values() if s.kind not in (WITHDRAW, ORDER)]
    problems += listed(
        "requests got no reply",
        (f"{s.kind} {s.key}" for s in replied if not seen.replies[s.key]),
    )
    problems += listed(
        "requests got more than one reply",
        (f"{plan.sent[k].kind} {k} x{n}" for k, n in seen.replies.items() if n > 1),
    )
    problems += listed(
        "plan upserts without exactly one reply",
        (f"{k} x{seen.plan_replies[k]}" for k in plan.plans if seen.plan_replies[k] != 1),
    )
    problems += listed("wrong replies", seen.wrong_replies)
    problems += listed("wrong events", seen.wrong_events)
    for kind, event in ((DEPOSIT, "deposit.completed"), (ORDER, "invoice.created")):
        problems += listed(
            f"{kind} without exactly one {event} (distinct event ids)",
            (f"{s.key} x{len(seen.events.get(s.key, ()))}"
             for s in plan.of_kind(kind) if len(seen.events.get(s.key, ())) != 1),
        )  # fmt: skip
    bounds = plan.balance_bounds()
    problems += listed(
        "balance replies outside what the user's commands allow",
        (f"{key}: {answer} not in {bounds[plan.sent[key].user_id]}"
         for key, answer in seen.balances.items()
         if not bounds[plan.sent[key].user_id][0] <= answer <= bounds[plan.sent[key].user_id][1]),
    )  # fmt: skip
    return problems


async def check_records(db: asyncpg.Connection, plan: MixedPlan) -> list[str]:
    """One idempotency record per command key (in its user's scope) and per sandbox event."""
    found = Counter((row["scope"], row["key"]) for row in await db.fetch(
        "SELECT scope, key FROM idempotency_records"))  # fmt: skip
    expected = {("plan.upsert", key) for key in plan.plans}
    expected |= {("provider:sandbox", d.event_id) for d in plan.base.deposits.values()}
    for sent in plan.sent.values():
        if sent.kind in (WITHDRAW, DEPOSIT, SUBSCRIBE):
            expected.add((user_scope(sent.kind, sent.user_id), sent.key))
    problems = listed("commands without their idempotency record",
                      (f"{s} {k}" for s, k in sorted(expected - set(found))))  # fmt: skip
    problems += listed("idempotency records of nothing sent",
                       (f"{s} {k}" for s, k in sorted(set(found) - expected)))  # fmt: skip
    problems += listed("duplicated idempotency records", (k for k, n in found.items() if n > 1))
    return problems


async def check_ledger(db: asyncpg.Connection, plan: MixedPlan) -> list[str]:
    """Transactions, subscriptions, invoices and plans: exactly what the mix asked for."""
    rows = await db.fetch(
        "SELECT t.id::text AS id, t.kind, t.status, t.reference, t.user_id, t.amount_minor, "
        "sc.subscription_id::text AS subscription_id FROM transactions t "
        "LEFT JOIN subscription_charges sc ON sc.transaction_id = t.id"
    )
    by_kind: dict[str, dict[str, list[asyncpg.Record]]] = {}
    for row in rows:
        keys = {"withdrawal": row["reference"], "subscription_charge": row["subscription_id"]}
        key = keys.get(row["kind"], row["id"])  # deposits (and strays): their id
        by_kind.setdefault(row["kind"], {}).setdefault(str(key), []).append(row)
    expected: dict[str, dict[str, tuple[str, int]]] = {
        "withdrawal": {w.key: (w.user_id, w.amount_minor) for w in plan.base.withdraws.values()},
        "deposit": {d.key: (d.user_id, d.amount_minor) for d in plan.base.deposits.values()},
        "subscription_charge": {plan.subscription_id(s): (s.user_id, s.amount_minor)
                                for s in plan.of_kind(SUBSCRIBE)},
    }  # fmt: skip
    problems: list[str] = []
    for kind, wanted in expected.items():
        got = by_kind.pop(kind, {})
        problems += listed(f"{kind}s missing", (k for k in wanted if k not in got))
        problems += listed(f"{kind}s of nothing sent", (k for k in got if k not in wanted))
        problems += listed(
            f"{kind}s applied more than once",
            (f"{k} x{len(r)}" for k, r in got.items() if len(r) > 1),
        )
        problems += listed(
            f"{kind}s not completed, or with another user or amount than their command",
            (f"{k}: {r[0]['status']} {r[0]['user_id']} {r[0]['amount_minor']}"
             for k, r in got.items() if k in wanted and
             (r[0]["status"], (r[0]["user_id"], r[0]["amount_minor"])) != ("completed", wanted[k])),
        )  # fmt: skip
    problems += listed("transactions of unexpected kinds", by_kind)
    subs = {row["id"]: row for row in await db.fetch(
        "SELECT s.id::text AS id, s.user_id, s.status, s.payment_source, p.code "
        "FROM subscriptions s JOIN plans p ON p.id = s.plan_id")}  # fmt: skip
    wanted_subs = {plan.subscription_id(s): (s.user_id, "active", "balance", s.ref)
                   for s in plan.of_kind(SUBSCRIBE)}  # fmt: skip
    problems += listed("subscription creates that made no subscription",
                       (k for k in wanted_subs if k not in subs))  # fmt: skip
    problems += listed("subscriptions nobody asked for", (k for k in subs if k not in wanted_subs))
    problems += listed(
        "subscriptions unlike their create",
        (f"{k}: {tuple(r)[1:]}" for k, r in subs.items()
         if k in wanted_subs and tuple(r)[1:] != wanted_subs[k]),
    )  # fmt: skip
    problems += await _check_invoices(db, plan)
    plans = {(row["code"], row["version"], row["price_minor"]) for row in await db.fetch(
        "SELECT code, version, price_minor FROM plans")}  # fmt: skip
    if plans != {(code, 1, price) for code, _, price in PLANS}:
        problems.append(f"plans {sorted(plans)} != the upserted {sorted(PLANS)}")
    return problems


async def _check_invoices(db: asyncpg.Connection, plan: MixedPlan) -> list[str]:
    """One open invoice of its total per order; one paid invoice per new subscription."""
    rows = await db.fetch(
        "SELECT id::text AS id, user_id, order_id, subscription_id::text AS subscription_id, "
        "status, total_minor FROM invoices"
    )
    orders = {s.key: (s.user_id, "open", s.amount_minor) for s in plan.of_kind(ORDER)}
    periods = {plan.subscription_id(s): (s.user_id, "paid", s.amount_minor)
               for s in plan.of_kind(SUBSCRIBE)}  # fmt: skip
    found: dict[str, list[tuple[str, str, int]]] = {}
    strays: list[str] = []
    for row in rows:
        owner = row["order_id"] if row["order_id"] in orders else row["subscription_id"]
        if owner not in orders and owner not in periods:
            strays.append(row["id"])
            continue
        found.setdefault(owner, []).append((row["user_id"], row["status"], row["total_minor"]))
    problems = listed("orders without an invoice", (k for k in orders if k not in found))
    problems += listed("subscriptions without their period invoice",
                       (k for k in periods if k not in found))  # fmt: skip
    problems += listed("invoiced more than once", (k for k, v in found.items() if len(v) > 1))
    problems += listed(
        "invoices unlike their order or period",
        (f"{k}: {v[0]}" for k, v in found.items() if v[0] != {**orders, **periods}[k]),
    )
    problems += listed("invoices nobody asked for", strays)
    return problems


async def check_balances(db: asyncpg.Connection, plan: MixedPlan) -> list[str]:
    """initial - withdraws - subscription charges + deposits, as planned and as the
    database's own completed transactions add up."""
    actual = {row["user_id"]: row["balance_minor"] for row in await db.fetch(
        "SELECT user_id, balance_minor FROM virtual_accounts")}  # fmt: skip
    expected = plan.expected_balances()
    ledger = dict.fromkeys(actual, plan.base.initial_balance)
    for row in await db.fetch(
        "SELECT user_id, sum(CASE WHEN kind = 'deposit' THEN amount_minor ELSE -amount_minor "
        "END) AS moved FROM transactions WHERE status = 'completed' GROUP BY user_id"
    ):
        ledger[row["user_id"]] = (
            ledger.get(row["user_id"], plan.base.initial_balance) + row["moved"]
        )
    problems = listed(
        "balances differ from initial - withdraws - subscription charges + deposits",
        (f"{u}: {actual.get(u)} != {b}" for u, b in expected.items() if actual.get(u) != b),
    )
    problems += listed(
        "balances differ from their own transaction rows",
        (f"{u}: {actual[u]} != {ledger[u]}" for u in actual if actual[u] != ledger[u]),
    )
    problems += listed("accounts nobody funded", set(actual) - set(expected))
    problems += listed("negative balances", (u for u, b in actual.items() if b < 0))
    if sum(actual.values()) != sum(expected.values()):
        problems.append(
            f"total balance {sum(actual.values())} != expected {sum(expected.values())}"
        )
    return problems


def expected_outbox(plan: MixedPlan) -> dict[str, int]:
    n = plan.counts
    counts = {
        "withdrawal.completed": n[WITHDRAW],
        "sandbox.callback": n[DEPOSIT],  # the sandbox's callback, the worker to itself
        "deposit.completed": n[DEPOSIT],
        "payment.success": n[DEPOSIT] + n[SUBSCRIBE],  # the deposit; the first period's charge
        "invoice.created": n[ORDER] + n[SUBSCRIBE],
        "invoice.paid": n[SUBSCRIBE],
        "subscription.created": n[SUBSCRIBE],
    }
    return {event: count for event, count in counts.items() if count}


async def check_outbox(db: asyncpg.Connection, plan: MixedPlan) -> list[str]:
    rows = await db.fetch(
        "SELECT type, count(*) AS n, count(*) FILTER (WHERE published_at IS NULL) AS pending "
        "FROM outbox GROUP BY type"
    )
    found = {row["type"]: row["n"] for row in rows}
    problems = []
    if found != (expected := expected_outbox(plan)):
        problems.append(f"outbox rows by type {found} != expected {expected}")
    if pending := sum(row["pending"] for row in rows):
        problems.append(f"{pending} committed outbox rows were never published")
    return problems


async def check_mixed(db: asyncpg.Connection, plan: MixedPlan, seen: MixedObserved) -> list[str]:
    """Every problem of a worker run of the mix, one line each; [] when it was right."""
    return [
        *check_seen(plan, seen),
        *await check_records(db, plan),
        *await check_ledger(db, plan),
        *await check_balances(db, plan),
        *await check_outbox(db, plan),
    ]


# --- one run -----------------------------------------------------------------------------


def _fill(result: dict[str, Any], saturation: dict[str, Any], withdraw_kind: str) -> None:
    """The run_once-shaped figures of the saturation window."""
    per_kind = saturation.pop("per_kind")
    details = {k: saturation.pop(k) for k in ("mix_in_window", "drained_first")}
    result.update(saturation)
    done = saturation["completed_in_window"]
    cpu = saturation["cpu_s"]["consumer"]
    result["consumer_cpu_ms_per_msg"] = round(cpu * 1000 / done, 3) if done else None
    result["withdraw_msgs_per_s"] = per_kind.get(withdraw_kind, {}).get("msgs_per_s")
    result["saturation"] = {"per_kind": per_kind, **details}
    result["per_kind"] = {k: {"msgs_per_s": s["msgs_per_s"], "p50_ms": None, "p99_ms": None}
                          for k, s in per_kind.items()}  # fmt: skip


async def _upsert_plans(run_env: services.RunEnv, load: MixedLoad, o: Options) -> list[str]:
    """A setup worker upserts the plans, then stops: the pre-fill waits for a stopped worker."""
    logs = o.logs / f"{run_env.name}-setup"
    logs.mkdir(parents=True, exist_ok=True)
    consumer = await start_workers(run_env, 1, o.worker_settings, logs)
    problems: list[str] = []
    try:
        await load.upsert_plans(consumer, o.startup_timeout)
    except (TimeoutError, RuntimeError) as failure:
        problems.append(f"setting up the plans: {failure}")
    finally:
        problems += [f"setup worker: {p}" for p in await consumer.stop()]
    return problems


async def _worker_run(
    run_env: services.RunEnv, db: asyncpg.Connection, plan: MixedPlan, messages: int,
    o: Options, result: dict[str, Any],
) -> list[str]:  # fmt: skip
    await plan.seed(db)
    load = MixedLoad(plan, o.worker_settings.get("BILLING_ORDERS_EXCHANGE", names.ORDERS_EXCHANGE))
    await load.connect(run_env.amqp)
    try:
        problems = await _upsert_plans(run_env, load, o)
        if problems:
            return problems
        await load.prefill([plan.new(kind) for kind in plan.kinds(messages)])
        result["prefilled"] = dict(plan.counts)
        consumer = await start_workers(run_env, 1, o.worker_settings, o.logs)
        try:
            meter = CpuMeter(consumer, db)
            track = Track(load.done_at, load.sent_at, lambda key: plan.sent[key].kind,
                          lambda: load.done, dict(load.expected), load.first_done)  # fmt: skip
            _fill(result, await measure_saturation(track, consumer, meter, o), WITHDRAW)
            await load.wait_all(o.tail_timeout)
            result["saturation"]["prefill_drain"] = prefill_drain(track)
            if not result["msgs_per_s"]:
                raise RuntimeError("no completion in the saturation window: no rate to halve")
            half = await measure_half(load, result["msgs_per_s"] / 2, consumer, meter, o)
            result["half_saturation"] = half
            for kind, figures in half["per_kind"].items():
                entry = result["per_kind"].setdefault(kind, {"msgs_per_s": None})
                entry.update(p50_ms=figures["p50_ms"], p99_ms=figures["p99_ms"])
            result["per_kind_latency"] = "half saturation, " + half["latency"]
            result["query_p99_ms"] = {k: half["per_kind"][k]["p99_ms"]
                                      for k in QUERIES if k in half["per_kind"]}  # fmt: skip
            await settle_outbox(db, o.settle)
        except (TimeoutError, RuntimeError) as failure:
            problems.append(str(failure))
        finally:
            problems += await consumer.stop()
        await load.count_leftovers([*MIXED_QUEUES, *retry_queues(o.worker_settings)])
        problems += await check_mixed(db, plan, load.seen)
        result["sent"] = dict(plan.counts)
    finally:
        await load.close()
    return problems


async def _floor_run(
    run_env: services.RunEnv, db: asyncpg.Connection, pair: int, messages: int,
    mix: Mapping[str, int], o: Options, result: dict[str, Any],
) -> list[str]:  # fmt: skip
    plan = Plan(run_env.name, o.accounts, seed=pair)
    deposits = round(messages * mix[DEPOSIT] / (mix[WITHDRAW] + mix[DEPOSIT]))
    for _ in range(deposits):
        await plan.new_deposit()
    await plan.seed(db)
    load = Load(plan)
    await load.connect(run_env.amqp)
    problems: list[str] = []
    try:
        await load.prefill(messages - deposits)
        queues = [names.WALLET_WITHDRAW, names.PROVIDER_EVENTS_QUEUE]
        consumer = await start_floor(run_env, queues, o.floor_prefetch, o.floor_pool, o.logs)
        try:
            observed = load.observed
            track = Track(
                load.done_at, load.sent_at,
                lambda key: WITHDRAW if key in plan.withdraws else FLOOR_DEPOSIT,
                lambda: {WITHDRAW: len(observed.replies),
                         FLOOR_DEPOSIT: len(observed.deposit_events)},
                {WITHDRAW: len(plan.withdraws), FLOOR_DEPOSIT: len(plan.deposits)}, load.first_done,
            )  # fmt: skip
            saturation = await measure_saturation(track, consumer, CpuMeter(consumer, db), o)
            per_kind = saturation["per_kind"]
            _fill(result, saturation, WITHDRAW)
            for kind, entry in result["per_kind"].items():
                entry.update(p50_ms=per_kind[kind]["p50_ms"], p99_ms=per_kind[kind]["p99_ms"])
            result["per_kind_latency"] = "queued (pre-filled): the floor has no open-loop phase"
            await load.wait_all(o.tail_timeout)
            result["saturation"]["prefill_drain"] = prefill_drain(track)
        except (TimeoutError, RuntimeError) as failure:
            problems.append(str(failure))
        finally:
            problems += await consumer.stop()
        await load.count_leftovers(WORK_QUEUES)
        problems += await check(db, plan, load.observed, "floor")
        result["sent"] = {WITHDRAW: len(plan.withdraws), FLOOR_DEPOSIT: len(plan.deposits)}
    finally:
        await load.close()
    return problems


async def run_mixed(
    side: str, pair: int, name: str, options: Options, *, messages: int,
    mix: dict[str, int] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """One mixed run on `side` ("floor" or "worker") in database/vhost `name`, checked.

    `messages` is the pre-fill: the whole mix for the worker, withdraws + deposit
    callbacks (in the mix's withdraw:deposit shares) for the floor. The result says `ok`
    and lists every problem found."""
    o, shares = options, checked_mix(mix)
    if side not in ("floor", "worker"):
        raise ValueError(f"side is floor or worker, not {side!r}")
    if side == "floor" and not shares[WITHDRAW]:
        raise ValueError("the floor side needs withdraws in the mix")
    result: dict[str, Any] = {
        "pair": pair, "scenario": "mixed", "side": side, "database": name, "processes": 1,
        "rpc_concurrency": None, "hot_account": False, "mix": shares, "messages": messages,
        "msgs_per_s": None, "p50_ms": None, "p99_ms": None, "latency": "queued (pre-filled)",
        "cpu_s": {}, "consumer_cpu_ms_per_msg": None, "withdraw_msgs_per_s": None,
        "per_kind": {}, "query_p99_ms": {},
    }  # fmt: skip
    print(f"[pair {pair}] mixed / {side}: {name}", file=sys.stderr, flush=True)
    async with fresh_run(name, o, result) as (run_env, db, problems):
        if side == "floor":
            problems += await _floor_run(run_env, db, pair, messages, shares, o, result)
        else:
            plan = MixedPlan(name, o.accounts, shares, seed=pair)
            problems += await _worker_run(run_env, db, plan, messages, o, result)
    return result


# --- command line ------------------------------------------------------------------------


def messages_for(side: str, seconds: float, last: Mapping[str, Any] | None = None) -> int:
    """The pre-fill of a `side` run whose kinds all outlast `seconds` (warm-up + window).

    Each kind drains at its own pace, so the pre-fill follows the kind that runs out
    first: max over kinds of (its msgs/s in `last`, a run of the same side and mix) /
    (its share of the pre-fill), x 1.2; without a last run, `RATE_GUESS`."""
    rate = RATE_GUESS[side]
    if last and last.get("ok") and (figures := last.get("saturation", {}).get("per_kind")):
        mix = last["mix"]
        shares = ({WITHDRAW: mix[WITHDRAW], FLOOR_DEPOSIT: mix[DEPOSIT]} if side == "floor"
                  else dict(mix))  # fmt: skip
        total = sum(shares.values())
        rate = max((f["msgs_per_s"] * total / shares[k]
                    for k, f in figures.items() if shares.get(k)), default=rate)  # fmt: skip
    return max(300, int(rate * seconds * 1.2) + 200)


def setting(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.startswith("BILLING_"):
        raise argparse.ArgumentTypeError("expected BILLING_NAME=value")
    return key, value


def _mix_argument(text: str) -> dict[str, int]:
    try:
        return parse_mix(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the option help, the module docstring as written."""


def common_parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    """The options mixed and rss share."""
    parser = argparse.ArgumentParser(prog=prog, description=description, formatter_class=_Formatter)
    add = parser.add_argument
    add(
        "--dsn",
        default=services.DEFAULT_DSN,
        help="PostgreSQL server; each run creates and drops a database of its own there",
    )
    add(
        "--amqp",
        default=services.DEFAULT_AMQP,
        help="RabbitMQ; each run adds and deletes a vhost of its own",
    )
    add("--accounts", type=int, default=10_000, help="pre-funded accounts (one per user)")
    add(
        "--startup-timeout",
        type=float,
        default=60.0,
        help="seconds to a consumer's first completion",
    )
    add(
        "--tail-timeout",
        type=float,
        default=120.0,
        help="seconds to finish what is left after a measured phase (all must complete)",
    )
    add("--settle", type=float, default=10.0, help="seconds the worker's outbox may take to settle")
    add("--json", default=None, metavar="PATH", help="write the JSON report there ('-': stdout)")
    add("--keep-failed", action="store_true", help="keep the database and vhost of a failed run")
    add("--worker-setting", type=setting, action="append", default=[], metavar="BILLING_X=V",
        help="extra worker setting, repeatable")  # fmt: skip
    return parser


def options_of(args: argparse.Namespace, logs: Path, **extra: Any) -> Options:
    return Options(
        dsn=args.dsn, amqp=args.amqp, logs=logs, accounts=args.accounts,
        startup_timeout=args.startup_timeout, tail_timeout=args.tail_timeout,
        settle=args.settle, keep_failed=args.keep_failed,
        worker_settings=dict(args.worker_setting), **extra,
    )  # fmt: skip


def write_report(path: str | None, report: dict[str, Any]) -> None:
    text = json.dumps(report, indent=2, default=str) + "\n"
    if path == "-":
        sys.stdout.write(text)
    elif path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)


def run_id() -> str:
    return time.strftime("%m%d%H%M%S") + uuid.uuid4().hex[:4]


def _line(result: dict[str, Any]) -> str:
    if not result["ok"]:
        more = len(result["problems"]) - 1
        return f"  FAILED: {result['problems'][0]}" + (f" (+{more} more)" if more else "")
    kinds = ", ".join(
        f"{k} {v['msgs_per_s']}/s p99 {v['p99_ms']} ms" for k, v in result["per_kind"].items()
    )
    return (f"  {result['msgs_per_s']} msgs/s (withdraws {result['withdraw_msgs_per_s']}/s); "
            f"{kinds}: check ok")  # fmt: skip


async def _bench(args: argparse.Namespace, logs: Path) -> list[dict[str, Any]]:
    await services.probe(args.dsn, args.amqp)
    options = options_of(args, logs, seconds=args.seconds, warmup=args.warmup)
    sides = ["floor", "worker"] if args.side == "both" else [args.side]
    tag, results = run_id(), []
    for index, side in enumerate(sides, 1):
        messages = args.messages or messages_for(side, args.warmup + args.seconds)
        result = await run_mixed(side, 1, f"bench_{tag}_m{index}", options,
                                 messages=messages, mix=args.mix)  # fmt: skip
        print(_line(result), file=sys.stderr, flush=True)
        results.append(result)
        if not result["ok"]:
            break
    return results


def main(argv: list[str] | None = None) -> int:
    parser = common_parser("python -m benchmarks.mixed", __doc__)
    parser.add_argument("--side", choices=("floor", "worker", "both"), default="both",
                        help="both: the floor, then the worker")  # fmt: skip
    parser.add_argument("--seconds", type=float, default=15.0,
                        help="measured window of each phase")  # fmt: skip
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before each window")
    parser.add_argument("--messages", type=int, default=None,
                        help="messages pre-filled per run (default: (warmup + seconds) x 1.2 "
                        "x the fastest kind's rate over its share, guessed: "
                        f"{RATE_GUESS})")  # fmt: skip
    parser.add_argument("--mix", type=_mix_argument, default=dict(DEFAULT_MIX),
                        help="kind=share,... (kinds not named: 0) of "
                        + ", ".join(KINDS))  # fmt: skip
    args = parser.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="billing-mixed-") as logs:
            results = asyncio.run(_bench(args, Path(logs)))
    except services.ServiceError as down:
        print(f"benchmarks.mixed: {down}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("benchmarks.mixed: interrupted", file=sys.stderr)
        return 130
    failures = [f"mixed/{r['side']}: {p}" for r in results for p in r["problems"]]
    rates = {r["side"]: r["withdraw_msgs_per_s"] for r in results if r["ok"]}
    ratio = (round(rates["worker"] / rates["floor"], 3)
             if rates.get("worker") and rates.get("floor") else None)  # fmt: skip
    write_report(args.json, {"ok": not failures, "runs": results, "failures": failures,
                             "withdraw_ratio_worker_over_floor": ratio,
                             "config": {k: v for k, v in vars(args).items()}})  # fmt: skip
    if ratio is not None:
        print(f"withdraw msgs/s worker/floor: {ratio}", file=sys.stderr)
    if failures:
        print("FAILED (a fast wrong run is a failed run):", *failures, sep="\n  ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
