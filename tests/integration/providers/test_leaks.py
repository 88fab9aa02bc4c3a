"""What a hostile or careless caller must not get out of the worker: unbounded metric
series from names it chooses, customer data from database errors in dead-letter headers
and logs, and Stripe client secrets in the log at any level."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aio_pika
import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from billing_contracts import names
from billing_worker import logs
from billing_worker.app import Worker, build_worker
from billing_worker.providers.sandbox import SandboxGateway
from billing_worker.settings import Settings
from fakes.stripe_api import FakeStripe, sign
from support.relay import WEBHOOK_SECRET
from support.rpc import Bus
from support.sandbox import signed
from support.settings import make_settings

pytestmark = pytest.mark.integration

BALANCE = "billing.wallet.balance"
DEPOSIT = "billing.wallet.deposit"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The providers' worker at DEBUG, with its /metrics served on a port of its own."""
    return settings.model_copy(
        update={"metrics_port": free_port(), "metrics_host": "127.0.0.1", "log_level": "DEBUG"}
    )


@dataclass
class Captured:
    capfd: pytest.CaptureFixture[str]
    seen: str = ""

    def configure(self, level: str, fmt: str = "text") -> None:
        logs.configure(level, fmt)  # as `billing-worker run` and `relay` do

    def text(self) -> str:
        out, err = self.capfd.readouterr()
        self.seen += out + err
        return self.seen


@pytest.fixture
def log_output(capfd: pytest.CaptureFixture[str]) -> Iterator[Captured]:
    """Everything any logger writes to stdout/stderr; the logging setup is restored after."""
    root = logging.getLogger()
    loggers = {name: logging.getLogger(name).level for name in ("stripe", "aiormq", "aio_pika")}
    saved = root.handlers[:], root.level, logging.getLogRecordFactory()
    yield Captured(capfd)
    root.handlers[:], level, factory = saved
    root.setLevel(level)
    logging.setLogRecordFactory(factory)
    for name, value in loggers.items():
        logging.getLogger(name).setLevel(value)


# --- 1. metric labels come from a fixed set -------------------------------------------


async def scrape(worker: Worker) -> str:
    url = f"http://127.0.0.1:{worker.settings.metrics_port}/metrics/"
    async with httpx.AsyncClient(follow_redirects=True) as client:
        response = await client.get(url)
    response.raise_for_status()
    return response.text


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def total(text: str, name: str, **labels: str) -> float:
    return sum(
        value
        for found, value in samples(text, name)
        if all(found.get(key) == want for key, want in labels.items())
    )


async def until(worker: Worker, name: str, at_least: float, **labels: str) -> str:
    """Scrape until the counter `name` reached `at_least` (bounded: 240 s)."""

    async def reached() -> str:
        while True:
            text = await scrape(worker)
            if total(text, name, **labels) >= at_least:
                return text
            await asyncio.sleep(0.2)

    return await asyncio.wait_for(reached(), 240)


def series(text: str) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    """Every series of the page: its name and labels (the values change, not these)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items())))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def reply_names(count: int) -> list[str]:
    """What callers put in reply_to: their own queues, server-named ones, anything."""
    shapes = ("reply.{}", "amq.gen-{}", "client-{}-replies")
    return [shapes[i % len(shapes)].format(uuid.uuid4().hex) for i in range(count)]


async def query_balances(url: str, reply_to: list[str]) -> None:
    """One balance query per reply queue name (the replies go nowhere: unroutable)."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=False)
        for name in reply_to:
            body = json.dumps({"user_id": "metrics-probe", "currency": "USD"}).encode()
            message = aio_pika.Message(
                body, content_type="application/json", reply_to=name, correlation_id=name
            )
            await channel.default_exchange.publish(message, routing_key=BALANCE)


async def test_distinct_reply_queues_do_not_grow_the_metrics(
    worker: Worker, rabbitmq_url: str
) -> None:
    handled = "billing_messages_handled_seconds_count"
    labels = {"queue": BALANCE, "outcome": "ok"}
    # The sampler's first round adds the series of every queue: taken before the start.
    await until(worker, "billing_metrics_sample_up", 2)  # database and broker sampled
    base = total(await scrape(worker), handled, **labels)
    first, rest = reply_names(100), reply_names(4900)

    await query_balances(rabbitmq_url, first)
    after_first = await until(worker, handled, base + len(first), **labels)
    await query_balances(rabbitmq_url, rest)
    after_all = await until(worker, handled, base + len(first) + len(rest), **labels)

    leaked = [name for name in first + rest if name in after_all]
    assert not leaked, f"{len(leaked)} reply queue names became label values: {leaked[:3]}"
    # Not one series more: a label made of anything the callers choose would add some.
    added = series(after_all) - series(after_first)
    assert not added, f"{len(added)} series appeared over 4,900 queries: {sorted(added)[:5]}"
    # FastStream still counts the replies, all in one series.
    replies = total(after_all, "faststream_published_messages_total", destination="default.reply")
    assert replies >= len(first) + len(rest)


def provider_event(provider: str, event_type: str) -> bytes:
    ref = uuid.uuid4().hex
    body: dict[str, Any] = {
        "stripe": {"id": f"evt_{ref}", "type": event_type, "data": {"object": {"id": ref}}},
        "yookassa": {"type": "notification", "event": event_type, "object": {"id": ref}},
        "sandbox": {
            "id": f"sbx_evt_{ref}", "type": event_type,
            "data": {"payment_id": ref, "transaction_id": str(uuid.uuid4()),
                     "amount_minor": 100, "currency": "USD"},
        },
    }[provider]  # fmt: skip
    return json.dumps(body).encode()


def genuine_headers(worker: Worker, provider: str, body: bytes) -> dict[str, str]:
    """Signed as the provider (or the worker, for the sandbox) would: the made-up types
    must reach the counter, not be refused as forged."""
    if provider == "sandbox":
        sandbox = worker.service.deps.gateways.get("sandbox")
        assert isinstance(sandbox, SandboxGateway)
        return signed(sandbox, body)
    headers = {names.PROVIDER_HEADER: provider}
    if provider == "stripe":
        headers[names.PROVIDER_SIGNATURE_HEADER] = sign(body, WEBHOOK_SECRET)
    return headers


async def test_made_up_provider_event_types_add_no_series(
    worker: Worker, rabbitmq_url: str
) -> None:
    counter = "billing_provider_events_total"
    before = await scrape(worker)
    known = {tuple(sorted(found.items())) for found, _ in samples(before, counter)}
    providers = ("stripe", "yookassa", "sandbox")
    made_up = [(providers[i % 3], f"made.up.{i}.{uuid.uuid4().hex[:6]}") for i in range(2000)]

    connection = await aio_pika.connect(rabbitmq_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=False)
        for provider, event_type in made_up:
            body = provider_event(provider, event_type)
            message = aio_pika.Message(
                body,
                content_type="application/json",
                headers=genuine_headers(worker, provider, body),  # type: ignore[arg-type]
            )
            await channel.default_exchange.publish(message, routing_key=names.PROVIDER_EVENTS_QUEUE)
    after = await until(worker, counter, total(before, counter) + len(made_up))

    added = [
        dict(labels)
        for labels in {tuple(sorted(found.items())) for found, _ in samples(after, counter)}
        if labels not in known
    ]
    assert all(labels["type"] == "other" for labels in added), added[:3]
    assert len(added) <= len(providers), added


# --- 2. database errors keep their customer data to themselves ------------------------


@pytest.fixture
async def check_refusing_leak_users(fresh_database_url: str) -> str:
    """A real CHECK constraint on the users table: PostgreSQL reports the failing row,
    user id included, in the error's DETAIL."""
    url = make_url(fresh_database_url)
    connection = await asyncpg.connect(
        host=url.host, port=url.port or 5432, user=url.username, database=url.database
    )
    try:
        await connection.execute(
            "ALTER TABLE billing_users ADD CONSTRAINT ck_no_leak_users "
            "CHECK (user_id NOT LIKE 'leak-%')"
        )
    finally:
        await connection.close()
    return fresh_database_url


@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_a_constraint_violation_leaks_no_row_into_the_dead_letter_or_the_log(
    log_output: Captured, check_refusing_leak_users: str, rabbitmq_url: str, fmt: str
) -> None:
    log_output.configure("DEBUG", fmt)
    settings = make_settings(check_refusing_leak_users, rabbitmq_url, max_deliveries=2)
    worker = build_worker(settings)
    user = f"leak-{uuid.uuid4().hex}"
    deposit = {
        "idempotency_key": uuid.uuid4().hex,
        "user_id": user,
        "amount": {"amount": "5.00", "currency": "USD"},
        "provider": "sandbox",
    }
    async with worker.app:
        bus = Bus(rabbitmq_url)
        await bus.start()
        try:
            correlation_id = await bus.send(DEPOSIT, deposit, reply=True)
            letter = await bus.dead_letter(correlation_id)
        finally:
            await bus.close()

    headers = json.dumps(letter.headers, default=str)
    assert "Failing row contains" not in headers, headers
    assert user not in headers, headers
    reason = str(letter.headers[names.REASON_HEADER])
    assert "CheckViolationError" in reason, reason
    assert "SQLSTATE 23514" in reason, reason
    assert "ck_no_leak_users" in reason, reason  # the constraint's name is no customer data

    output = log_output.text()
    assert "CheckViolationError" in output  # the failure was logged (with its traceback)
    assert "Failing row contains" not in output
    # The per-message log line names the user on purpose (JSON logs carry it as a field);
    # nothing else may.
    assert user not in output.replace(f'"user_id": "{user}"', ""), [
        line for line in output.splitlines() if user in line
    ][:3]


# --- 3. no client_secret at any level --------------------------------------------------


async def test_a_stripe_client_secret_is_in_the_reply_and_nowhere_in_the_debug_log(
    log_output: Captured, worker: Worker, bus: Bus, stripe_fake: tuple[FakeStripe, str]
) -> None:
    log_output.configure(worker.settings.log_level, "text")
    command = {
        "idempotency_key": uuid.uuid4().hex,
        "user_id": f"secret-user-{uuid.uuid4().hex[:8]}",
        "amount": {"amount": "20.00", "currency": "USD"},
        "provider": "stripe",
    }
    reply = await bus.call(DEPOSIT, command)

    assert reply["ok"], reply
    secret = reply["data"]["payment_action"]["client_secret"]
    assert re.fullmatch(r"pi_\w+_secret_\w+", secret), secret
    # The worker logs its line once the message is acknowledged, just after the reply.
    async with asyncio.timeout(10):
        while f"{DEPOSIT} ok in" not in log_output.text():
            await asyncio.sleep(0.05)
    output = log_output.text()
    assert "Request to Stripe api" in output  # the Stripe SDK did log, at INFO
    assert "API response body" not in output  # but not its bodies, at DEBUG
    assert f"{DEPOSIT} ok in" in output  # and so did the worker, at DEBUG
    assert secret not in output
    assert secret.split("_secret_")[1] not in output
