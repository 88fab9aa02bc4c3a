"""A real 3-node RabbitMQ cluster: the worker and the relay fail over between its nodes.

The cluster (`support.cluster`) is started from the installed RabbitMQ with nodes of its
own under the test's tmp dir; the machine's own RabbitMQ is not touched. The worker runs
with `BILLING_QUORUM_QUEUES=true` and `BILLING_RABBITMQ_URL` naming all three nodes.
Where `rabbitmq-server` is not installed the module is skipped (in CI it is a failure).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pytest

from billing_contracts import names
from billing_worker.messaging import topology as topo
from billing_worker.settings import Settings
from billing_worker.startup import cluster_broker, connect_broker
from fakes.server import free_port, serve
from fakes.stripe_api import FakeStripe, sign
from support.cluster import Cluster, Node, rabbitmq_bin
from support.figures import record
from support.invariants import check_invariants, connect, wait_for_settled
from support.load import LoadClient
from support.processes import Process, worker_env

# `serial`: three more RabbitMQ nodes on a 2-core machine; run alone (see the Makefile).
pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.serial]

SECRET = "whsec_cluster"
USERS = 12
FUNDING = 1000_00
MAX_DELIVERIES = 8
LOST = re.compile(r"RabbitMQ at (\S+) lost")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if rabbitmq_bin() is None:
        reason = "rabbitmq-server is not installed: no RabbitMQ cluster can be started here"
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    started = time.monotonic()
    cluster = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        cluster.start()
        record("cluster", nodes=cluster.size, start_s=round(time.monotonic() - started, 1))
        yield cluster
    finally:
        killed = cluster.close()
        left = cluster.leftovers()
        assert not left, f"cluster processes left behind: {left}"
        assert not killed, f"nodes that would not stop and were killed: {killed}"


@pytest.fixture
def cluster_vhost(cluster: Cluster) -> str:
    name = f"billing-cluster-{uuid.uuid4().hex[:8]}"
    cluster.add_vhost(name)
    return name  # the cluster (and every vhost on it) goes at the end of the module


@pytest.fixture
def stripe_api() -> Iterator[tuple[FakeStripe, str]]:
    fake = FakeStripe()
    with serve(fake.app) as base:
        yield fake, base


def money(minor: int) -> dict[str, str]:
    return {"amount": f"{minor // 100}.{minor % 100:02d}", "currency": "USD"}


def order(user: str, amount: int) -> dict[str, Any]:
    return {
        "order_id": f"ord-{uuid.uuid4().hex}",
        "user_id": user,
        "currency": "USD",
        "items": [{"description": "cluster mug", "quantity": 1, "unit_price": money(amount)}],
    }


def billing_leaders(cluster: Cluster, vhost: str, via: Node) -> Counter[str]:
    """Node -> how many of the worker's quorum queues it leads."""
    leaders = cluster.leaders(vhost, via)
    return Counter(node for queue, node in leaders.items() if queue.startswith("billing."))


def connected_node(cluster: Cluster, log: str) -> Node:
    """The node a worker or relay moved to last, by its own log ("trying <url> next")."""
    moves = re.findall(r"trying amqp://[^@]*@127\.0\.0\.1:(\d+)/", log)
    assert moves, "no failover in the log"
    return next(node for node in cluster.nodes if node.port == int(moves[-1]))


async def all_members_online(cluster: Cluster, vhost: str, via: Node, timeout: float) -> None:
    """Until every quorum queue has every node online again (caught up after a return)."""
    deadline = time.monotonic() + timeout
    while True:
        queues = await asyncio.to_thread(cluster.queues, vhost, via)
        behind = [q["name"] for q in queues if len(q.get("online") or ()) < cluster.size]  # type: ignore[arg-type]
        if not behind:
            return
        assert time.monotonic() < deadline, f"quorum queues not fully online again: {behind}"
        await asyncio.sleep(1)


async def test_stopping_the_leading_node_twice_under_load_loses_nothing(
    cluster: Cluster,
    cluster_vhost: str,
    database_url: str,
    tmp_path: Path,
    stripe_api: tuple[FakeStripe, str],
) -> None:
    fake, stripe_base = stripe_api
    rng = random.Random()
    urls = cluster.urls(cluster_vhost)
    broker_url = ",".join(urls)
    port = free_port()
    env = worker_env(
        database_url,
        broker_url,
        quorum_queues="true",
        max_deliveries=MAX_DELIVERIES,
        retry_delays_ms="250,500,1000,2000",
        stripe_api_key="sk_test_cluster",
        stripe_api_base=stripe_base,
        default_provider="sandbox",
        provider_timeout_seconds=5,
        reconcile_after_seconds=3600,
        prefetch=16,
    )
    worker = Process("run", env, tmp_path / "worker.log")
    relay = Process(
        "relay",
        {
            **env,
            "BILLING_STRIPE_WEBHOOK_SECRET": SECRET,
            "BILLING_RELAY_HOST": "127.0.0.1",
            "BILLING_RELAY_PORT": str(port),
        },
        tmp_path / "relay.log",
    )
    client = LoadClient(broker_url, quorum=True)
    users = [f"cluster-{n}-{uuid.uuid4().hex[:6]}" for n in range(USERS)]
    expected = {(user, "USD"): FUNDING for user in users}
    orders: dict[str, str] = {}  # order id -> user
    webhooks: Counter[str] = Counter()
    acknowledged: set[str] = set()
    stripe_deposits: dict[str, str] = {}
    tasks: set[asyncio.Task[Any]] = set()
    stop_load = asyncio.Event()
    stop = asyncio.Event()
    figures: dict[str, Any] = {}

    async def deliver(http: httpx.AsyncClient, body: bytes) -> None:
        """A provider's webhook delivery: retried until the relay answers 2xx."""
        event_id = json.loads(body)["id"]
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                response = await http.post(
                    "/webhooks/stripe",
                    content=body,
                    headers={"Stripe-Signature": sign(body, SECRET)},
                )
            except httpx.HTTPError:
                webhooks["connection_error"] += 1
                await asyncio.sleep(0.5)
                continue
            if response.status_code == 200:
                acknowledged.add(event_id)
                webhooks["200"] += 1
                return
            assert response.status_code == 503, (response.status_code, response.text)
            webhooks["503"] += 1
            await asyncio.sleep(0.5)
        raise AssertionError(f"webhook {event_id} never acknowledged")

    async def stripe_deposit(http: httpx.AsyncClient, user: str) -> None:
        amount = rng.randint(1_00, 20_00)
        command = {
            "idempotency_key": uuid.uuid4().hex,
            "user_id": user,
            "amount": money(amount),
            "provider": "stripe",
        }
        key = await client.submit(names.WALLET_DEPOSIT, command)
        reply = await client.wait(key, timeout=240)
        assert reply["ok"], reply
        stripe_deposits[reply["data"]["transaction"]["id"]] = user
        expected[(user, "USD")] += amount
        intent = reply["data"]["payment_action"]["client_secret"].split("_secret_")[0]
        await deliver(http, fake.event("payment_intent.succeeded", fake.succeed(intent)))

    async def send_order(user: str) -> None:
        body = order(user, rng.randint(1_00, 50_00))
        await client.fire_until_sent(
            names.ORDER_CREATED, json.dumps(body).encode(), exchange=names.ORDERS_EXCHANGE
        )
        orders[body["order_id"]] = user

    async def load(http: httpx.AsyncClient) -> None:
        """Deposits, withdrawals, webhooks and orders at a steady pace until told to stop."""
        tick = 0
        while not stop_load.is_set():
            user = rng.choice(users)
            amount = rng.randint(1, 10_00)
            expected[(user, "USD")] += amount
            await client.submit(
                names.WALLET_DEPOSIT,
                {"idempotency_key": uuid.uuid4().hex, "user_id": user, "amount": money(amount)},
            )
            amount = rng.randint(1, 2_00)
            expected[(user, "USD")] -= amount
            await client.submit(
                names.WALLET_WITHDRAW,
                {
                    "idempotency_key": uuid.uuid4().hex,
                    "user_id": user,
                    "amount": money(amount),
                    "description": "under failover",
                },
            )
            if tick % 4 == 0:
                tasks.add(asyncio.create_task(stripe_deposit(http, user)))
            if tick % 2 == 0:  # an event billing ignores: acknowledged and claimed only
                ignored = fake.event(
                    "customer.updated", {"id": f"cus_{uuid.uuid4().hex[:14]}", "object": "customer"}
                )
                tasks.add(asyncio.create_task(deliver(http, ignored)))
            if tick % 3 == 0:
                tasks.add(asyncio.create_task(send_order(user)))
            tick += 1
            await asyncio.sleep(0.2)

    async def answered_again(since: float) -> float:
        """Seconds from `since` until a query is answered (each try waits 3 s at most)."""
        deadline = time.monotonic() + 120
        while True:
            key = await client.submit(names.WALLET_BALANCE, {"user_id": users[0]})
            try:
                reply = await client.wait(key, timeout=3)
            except AssertionError:
                assert time.monotonic() < deadline, "commands were never answered again"
                continue
            assert reply["ok"], reply
            return time.monotonic() - since

    async def relay_healthy_again(http: httpx.AsyncClient, since: float) -> float:
        deadline = time.monotonic() + 120
        while True:
            with_status = await http.get("/healthz")
            if with_status.status_code == 200:
                return time.monotonic() - since
            assert time.monotonic() < deadline, "the relay never reconnected"
            await asyncio.sleep(0.25)

    async def fail_over(http: httpx.AsyncClient, step: str, node: Node) -> None:
        """Stop `node`'s RabbitMQ application, measure, bring it back, measure."""
        worker_lost = len(LOST.findall(worker.text()))
        relay_lost = len(LOST.findall(relay.text()))
        stopped = time.monotonic()
        await asyncio.to_thread(cluster.stop_app, node)
        figures[f"{step}_stop_app_s"] = round(time.monotonic() - stopped, 2)
        survivor = next(n for n in cluster.nodes if n is not node)
        measured = await asyncio.gather(answered_again(stopped), relay_healthy_again(http, stopped))
        figures[f"{step}_commands_answered_after_s"] = round(measured[0], 2)
        figures[f"{step}_relay_healthy_after_s"] = round(measured[1], 2)
        figures[f"{step}_new_leaders"] = dict(billing_leaders(cluster, cluster_vhost, survivor))
        figures[f"{step}_worker_failovers"] = len(LOST.findall(worker.text())) - worker_lost
        figures[f"{step}_relay_failovers"] = len(LOST.findall(relay.text())) - relay_lost
        await asyncio.sleep(4)  # load goes on with one node down
        back = time.monotonic()
        await asyncio.to_thread(cluster.start_app, node)
        await all_members_online(cluster, cluster_vhost, node, timeout=90)
        figures[f"{step}_node_back_and_caught_up_s"] = round(time.monotonic() - back, 2)

    try:
        await client.start()
        worker.start()
        await worker.ready()
        relay.start()
        await relay.ready()
        queues = await asyncio.to_thread(cluster.queues, cluster_vhost, cluster.nodes[1])
        billing = [q for q in queues if str(q["name"]).startswith("billing.")]
        assert billing
        assert all(q["type"] == "quorum" for q in billing), billing
        for user in users:
            await client.submit(
                names.WALLET_DEPOSIT,
                {"idempotency_key": uuid.uuid4().hex, "user_id": user, "amount": money(FUNDING)},
            )
        await client.settle(timeout=60)
        await wait_for_settled(database_url)

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            loader = asyncio.create_task(load(http))
            resender = asyncio.create_task(client.keep_resending(stop, after=10))
            await asyncio.sleep(4)

            # 1. The node leading the worker's quorum queues (the first address, where the
            #    worker, the relay and the client connected and declared) goes down.
            leaders = billing_leaders(cluster, cluster_vhost, cluster.nodes[1])
            first = cluster.node(leaders.most_common(1)[0][0])
            figures["first_stopped"] = first.short
            figures["first_leaders_before"] = dict(leaders)
            await fail_over(http, "first", first)
            assert figures["first_worker_failovers"] >= 1, "the worker never left the node"
            assert figures["first_relay_failovers"] >= 1, "the relay never left the node"
            await asyncio.sleep(3)

            # 2. Another node: the one the worker moved to (and the relay: both rotate to
            #    the next address), which leads some of the queues since step 1.
            second = connected_node(cluster, worker.text())
            assert second is not first
            leaders = billing_leaders(cluster, cluster_vhost, first)
            figures["second_stopped"] = second.short
            figures["second_leaders_before"] = dict(leaders)
            relay_there = connected_node(cluster, relay.text()) is second
            await fail_over(http, "second", second)
            assert figures["second_worker_failovers"] >= 1, "the worker never left the node"
            if relay_there:
                assert figures["second_relay_failovers"] >= 1, "the relay never left the node"
            await asyncio.sleep(3)

            stop_load.set()
            await loader
            await asyncio.wait_for(asyncio.gather(*tasks), 240)
            stop.set()
            await resender
        await client.settle(timeout=180, resend_after=10)
        assert worker.alive  # reconnected by itself: never restarted
        assert relay.alive
        assert worker.starts == relay.starts == 1

        async with connect(database_url) as db:
            deadline = time.monotonic() + 120
            while True:
                claimed = {
                    r["key"]
                    for r in await db.fetch(
                        "SELECT key FROM idempotency_records WHERE scope = 'provider:stripe'"
                    )
                }
                completed = {
                    str(r["id"])
                    for r in await db.fetch(
                        "SELECT id FROM transactions WHERE provider = 'stripe' "
                        "AND status = 'completed'"
                    )
                }
                invoiced = {
                    r["order_id"]
                    for r in await db.fetch(
                        "SELECT order_id FROM invoices WHERE order_id IS NOT NULL"
                    )
                }
                dead = {d.message_id for d in client.dead_letters}
                lost = acknowledged - claimed - dead
                waiting = set(stripe_deposits) - completed
                uninvoiced = set(orders) - invoiced
                if not (lost or waiting or uninvoiced):
                    break
                assert time.monotonic() < deadline, (
                    f"{len(lost)} acknowledged webhooks never reached the worker, "
                    f"{len(waiting)} stripe deposits never completed, "
                    f"{len(uninvoiced)} orders never invoiced"
                )
                await asyncio.sleep(0.5)
            assert invoiced <= set(orders), "an invoice for an order nobody sent"
        assert not client.dead_letters, [d.headers for d in client.dead_letters[:3]]
        figures |= await check_invariants(
            database_url, client, expected_balances=expected, events_timeout=120, redelivered=True
        )
        assert await relay.stop() == 0
        assert await worker.stop() == 0
    finally:
        stop_load.set()
        stop.set()
        for task in tasks:
            task.cancel()
        worker.ensure_dead()
        relay.ensure_dead()
        await client.close()

    print(f"\ncluster failover figures: {json.dumps(figures, sort_keys=True)}")
    record(
        "cluster",
        commands=len(client.sent),
        node_stops=2,
        orders=len(orders),
        webhooks_acknowledged=len(acknowledged),
        webhooks_answered_503=webhooks["503"],
        stripe_deposits_completed=len(stripe_deposits),
        client_resent=client.resent,
        client_reconnects=client.reconnects,
        lost=0,
        **figures,
    )


async def test_quorum_queues_dead_letter_what_is_never_acknowledged(
    cluster: Cluster, cluster_vhost: str
) -> None:
    """The broker's backstop: a message returned unacknowledged more often than the
    delivery limit (max_deliveries + headroom) is dead-lettered, at least once, to
    billing.dlx; and an expired retry copy goes back to its work queue."""
    urls = cluster.urls(cluster_vhost)
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        rabbitmq_url=",".join(urls),
        quorum_queues=True,
        max_deliveries=2,
        retry_delays_ms=(200,),
    )
    topology = topo.Topology.from_settings(settings)
    limit = topo.delivery_limit(settings.max_deliveries)
    assert limit > settings.max_deliveries
    broker = cluster_broker(settings)
    await connect_broker(broker, settings)
    try:
        await topo.declare(broker, topology)
    finally:
        await broker.stop()

    queues = {str(q["name"]): q for q in cluster.queues(cluster_vhost, cluster.nodes[2])}
    work = names.WALLET_BALANCE

    def arguments(name: str) -> dict[str, Any]:
        return {key: value for key, _, value in queues[name]["arguments"]}  # type: ignore[union-attr]

    assert arguments(work)["x-delivery-limit"] == limit
    assert arguments(work)["x-dead-letter-strategy"] == "at-least-once"
    assert arguments(work)["x-overflow"] == "reject-publish"
    assert "x-delivery-limit" not in arguments(names.DEAD_LETTER_QUEUE)
    assert "x-delivery-limit" not in arguments(topology.retry_name(1))

    connection = await aio_pika.connect(urls[1])  # not the node the queues were made on
    try:
        channel = await connection.channel()
        body = uuid.uuid4().hex.encode()
        await channel.default_exchange.publish(
            aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), work
        )
        deliveries = 0
        while deliveries <= limit + 2:  # a worker that dies on it, again and again
            channel = await connection.channel()
            queue = await channel.get_queue(work, ensure=False)
            # The return of the last delivery (its channel closed) reaches the queue's
            # leader a moment later: an empty get right away is not yet the dead-lettering.
            message, patience = None, time.monotonic() + 5
            while message is None and time.monotonic() < patience:
                message = await queue.get(fail=False, no_ack=False)
                if message is None:
                    await asyncio.sleep(0.1)
            if message is None:
                break
            assert message.body == body
            deliveries += 1
            await channel.close()  # returned unacknowledged
        channel = await connection.channel()
        dead_letters = await channel.get_queue(names.DEAD_LETTER_QUEUE, ensure=False)
        dead = None
        deadline = time.monotonic() + 30
        while dead is None and time.monotonic() < deadline:
            dead = await dead_letters.get(fail=False, no_ack=True)
            if dead is None:
                await asyncio.sleep(0.2)
        assert deliveries == limit + 1, (deliveries, limit)
        assert dead is not None, "the message over the delivery limit was not dead-lettered"
        assert dead.body == body
        death = (dead.headers or {})["x-death"][0]  # type: ignore[index]
        assert death["reason"] == "delivery_limit", death  # type: ignore[index]
        assert death["queue"] == work  # type: ignore[index]

        # A retry copy expires out of its (quorum) delay queue back into its work queue.
        retry = await channel.get_exchange(topology.retry_name(1), ensure=False)
        copy = uuid.uuid4().hex.encode()
        await retry.publish(
            aio_pika.Message(copy, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), work
        )
        returned = None
        deadline = time.monotonic() + 30
        queue = await channel.get_queue(work, ensure=False)
        while returned is None and time.monotonic() < deadline:
            returned = await queue.get(fail=False, no_ack=True)
            if returned is None:
                await asyncio.sleep(0.2)
        assert returned is not None
        assert returned.body == copy
        assert (returned.headers or {})["x-death"][0]["reason"] == "expired"  # type: ignore[index]
    finally:
        await connection.close()
    record("cluster", delivery_limit=limit, deliveries_before_dead_letter=deliveries)
