"""Who may send what, against the real broker: the deploy definitions' per-role users and
permissions, and the worker's access policy on the AMQP user_id RabbitMQ validated.

The module imports deploy/rabbitmq/definitions.json into a vhost of its own (users
renamed for this run, so runs never share a user), gives each user a test password, and
runs the worker as the worker role with deploy/access-policy.toml (same renaming). Users
and vhost are deleted afterwards.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import aio_pika
import aiormq
import pytest
from aio_pika.abc import AbstractIncomingMessage

from billing_contracts import names
from billing_contracts.client import BillingClient, Forbidden
from billing_contracts.money import Money
from billing_worker.app import Worker, build_gateways, build_worker
from billing_worker.domain.events import ProviderEvent
from billing_worker.ops import dlq
from billing_worker.providers.base import Gateways, PaymentRequest, PaymentResult
from billing_worker.providers.sandbox import SandboxGateway
from billing_worker.relay.runner import relay_broker
from billing_worker.settings import Settings
from fakes.server import serve
from fakes.stripe_api import FakeStripe
from support import broker_admin, services
from support.relay import WEBHOOK_SECRET, Relay
from support.rpc import Bus
from support.settings import make_settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEFINITIONS = ROOT / "deploy" / "rabbitmq" / "definitions.json"
POLICY = ROOT / "deploy" / "access-policy.toml"
ROLES = ("billing-worker", "billing-relay", "orders-service", "storefront", "billing-admin")
WAIT = 30.0


def import_definitions(document: dict[str, Any], vhost: str, users: int) -> None:
    """The definitions imported as RabbitMQ imports them; the import may finish later, so
    wait until every user has its permissions on the vhost."""
    broker_admin.import_definitions(document)
    for _ in range(600):
        if len(broker_admin.permitted_users(vhost)) >= users:
            return
        time.sleep(0.1)
    raise AssertionError(f"the definitions did not import into {vhost}")


@dataclasses.dataclass(frozen=True)
class Deployment:
    vhost: str
    urls: dict[str, str]  # role (the user's name in definitions.json) -> AMQP URL
    users: dict[str, str]  # role -> this run's user name
    policy: Path
    admin_url: str  # guest on this vhost, to watch the dead letters and events


@pytest.fixture(scope="module")
def deployment(rabbitmq_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    base = urlsplit(rabbitmq_url)
    if base.hostname not in ("127.0.0.1", "localhost"):
        pytest.skip("needs to administer the broker (on its host)")
    run = services.run_id()
    vhost = f"billing-access-{run}"
    users = {role: f"{role}.{run}" for role in (*ROLES, "stranger")}
    document = json.loads(DEFINITIONS.read_text())
    permissions = {entry["user"]: entry for entry in document["permissions"]}
    document["vhosts"] = [{"name": vhost}]
    document["users"] = [{**user, "name": users[user["name"]]} for user in document["users"]]
    document["permissions"] = [
        {**entry, "user": users[entry["user"]], "vhost": vhost} for entry in document["permissions"]
    ]
    folder = tmp_path_factory.mktemp("access")
    policy = folder / "access-policy.toml"
    text = POLICY.read_text()
    for role in ROLES:
        text = text.replace(f'[users."{role}"]', f'[users."{users[role]}"]')
    policy.write_text(text)
    passwords = {role: uuid.uuid4().hex for role in users}
    try:
        import_definitions(document, vhost, len(ROLES))  # the deploy file, as RabbitMQ reads it
        # A user in no policy entry, with a client service's broker permissions.
        broker_admin.add_user(users["stranger"], passwords["stranger"])
        client = permissions["storefront"]
        granted = (client["configure"], client["write"], client["read"])
        broker_admin.set_permissions(vhost, users["stranger"], *granted)
        for role in ROLES:
            broker_admin.change_password(users[role], passwords[role])
        guest = base.username or "guest"
        broker_admin.set_permissions(vhost, guest, ".*", ".*", ".*")

        def url(user: str, password: str) -> str:
            netloc = f"{quote(user, safe='')}:{password}@{base.hostname}:{base.port or 5672}"
            return urlunsplit((base.scheme, netloc, "/" + quote(vhost, safe=""), "", ""))

        yield Deployment(
            vhost,
            {role: url(users[role], passwords[role]) for role in users},
            users,
            policy,
            url(guest, base.password or "guest"),
        )
    finally:
        for user in users.values():
            broker_admin.delete_user(user)
        broker_admin.delete_vhost(vhost)


class Gate(SandboxGateway):
    """A 'stripe' that times out while `failing`, counting its calls per user."""

    name = "stripe"

    def __init__(self) -> None:
        self.failing = False
        self.calls: Counter[str] = Counter()

    async def create_payment(self, request: PaymentRequest) -> PaymentResult:
        self.calls[request.user_id] += 1
        if self.failing:
            raise ConnectionError("provider timed out")
        return await super().create_payment(request)

    def parse_event(self, body: bytes) -> ProviderEvent:
        return dataclasses.replace(super().parse_event(body), provider=self.name)


@pytest.fixture
def gate() -> Gate:
    return Gate()


def worker_settings(deployment: Deployment, database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"access_policy": deployment.policy, **overrides}
    return make_settings(database_url, deployment.urls["billing-worker"], **values)


def start_worker(settings: Settings, gate: Gate) -> Worker:
    sandbox = build_gateways(settings).get("sandbox")
    return build_worker(
        settings, gateways=Gateways({"sandbox": sandbox, "stripe": gate}, "sandbox")
    )


@pytest.fixture
async def worker(deployment: Deployment, database_url: str, gate: Gate) -> AsyncIterator[Worker]:
    """The worker as the worker role (its permissions must suffice), the policy on."""
    worker = start_worker(worker_settings(deployment, database_url), gate)
    async with worker.app:
        yield worker


@pytest.fixture
async def watch(worker: Worker, deployment: Deployment) -> AsyncIterator[Bus]:
    """Guest, sending without user_id; collects dead letters and events."""
    bus = Bus(deployment.admin_url)
    await bus.start()
    yield bus
    await bus.close()


class Caller:
    """Plain AMQP as one broker user: every property, user_id included, is the test's."""

    def __init__(self, url: str, replies_url: str | None = None) -> None:
        """`replies_url`: consume the replies as another user (the worker's user has no
        queue of its own to declare)."""
        self.url = url
        self.replies_url = replies_url or url
        self.replies: dict[str, asyncio.Future[dict[str, Any]]] = {}

    async def __aenter__(self) -> Caller:
        self.connection = await aio_pika.connect(self.url)
        self.channel = await self.connection.channel(publisher_confirms=True)
        self.reply_connection = (
            self.connection
            if self.replies_url == self.url
            else await aio_pika.connect(self.replies_url)
        )
        reply_channel = await self.reply_connection.channel()
        self.queue = await reply_channel.declare_queue(exclusive=True, auto_delete=True)
        await self.queue.consume(self._on_reply, no_ack=True)
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.connection.close()
        if self.reply_connection is not self.connection:
            await self.reply_connection.close()

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        future = self.replies.get(message.correlation_id or "")
        if future is not None and not future.done():
            future.set_result(json.loads(message.body))

    async def send(
        self,
        routing_key: str,
        body: Any,
        *,
        user_id: str | None,
        exchange: str = "",
        headers: dict[str, Any] | None = None,
    ) -> asyncio.Future[dict[str, Any]]:
        """Publish (confirmed); the returned future resolves to the reply."""
        correlation_id = uuid.uuid4().hex
        self.replies[correlation_id] = asyncio.get_running_loop().create_future()
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        message = aio_pika.Message(
            raw, content_type="application/json", correlation_id=correlation_id,
            reply_to=self.queue.name, user_id=user_id, headers=headers or {},
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )  # fmt: skip
        target = (
            self.channel.default_exchange
            if not exchange
            else await self.channel.get_exchange(exchange, ensure=False)
        )
        await target.publish(message, routing_key=routing_key)
        return self.replies[correlation_id]

    async def call(self, routing_key: str, body: Any, **options: Any) -> dict[str, Any]:
        return await asyncio.wait_for(await self.send(routing_key, body, **options), WAIT)


def key() -> str:
    return uuid.uuid4().hex


def new_user() -> str:
    return f"user-{uuid.uuid4().hex[:12]}"


def balance(user: str) -> dict[str, Any]:
    return {"user_id": user}


def plan(code: str) -> dict[str, Any]:
    return {"idempotency_key": key(), "code": code, "name": "Pro", "interval": "month",
            "price": {"amount": "9.00", "currency": "USD"}}  # fmt: skip


def order(user: str) -> dict[str, Any]:
    return {"order_id": f"ord-{uuid.uuid4().hex}", "user_id": user, "currency": "USD",
            "items": [{"description": "Blue mug", "quantity": 1,
                       "unit_price": {"amount": "4.50", "currency": "USD"}}]}  # fmt: skip


def stripe_deposit(user: str) -> dict[str, Any]:
    return {"idempotency_key": key(), "user_id": user, "provider": "stripe",
            "amount": {"amount": "3.00", "currency": "USD"}}  # fmt: skip


def refused(reply: dict[str, Any], code: str = "forbidden") -> str:
    assert reply["ok"] is False, reply
    assert reply["error"]["code"] == code, reply
    return str(reply["error"]["message"])


async def dead_letter(bus: Bus, correlation_id: str) -> tuple[str, AbstractIncomingMessage]:
    letter = await bus.dead_letter(correlation_id, timeout=WAIT)
    return str(letter.headers[names.REASON_HEADER]), letter


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT):
        while not condition():
            await asyncio.sleep(0.05)


# ---- the broker's permissions, as deploy/rabbitmq/definitions.json sets them ----


async def refused_publish(url: str, exchange: str, routing_key: str) -> str:
    """Publish one message as this URL's user: the broker closes the channel with 403
    ACCESS_REFUSED (aiormq's ChannelAccessRefused); returns the broker's reason."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        target = (
            channel.default_exchange
            if not exchange
            else await channel.get_exchange(exchange, ensure=False)
        )
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused) as closed:
            await target.publish(aio_pika.Message(b"{}"), routing_key=routing_key, timeout=WAIT)
        return str(closed.value)
    finally:
        await connection.close()


@pytest.fixture
async def callbacks_exchange(worker: Worker, deployment: Deployment) -> AsyncIterator[None]:
    """billing.provider-callbacks bound to billing.provider-events (declared as guest here,
    exactly as the relay's topology declares it: durable direct)."""
    connection = await aio_pika.connect(deployment.admin_url)
    channel = await connection.channel()
    exchange = await channel.declare_exchange(
        names.PROVIDER_CALLBACKS_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
    )
    queue = await channel.get_queue(names.PROVIDER_EVENTS_QUEUE)
    await queue.bind(exchange, routing_key=names.PROVIDER_CALLBACK_ROUTING_KEY)
    yield
    await connection.close()


@pytest.mark.usefixtures("callbacks_exchange")
async def test_a_client_user_cannot_publish_provider_callbacks(deployment: Deployment) -> None:
    for role in ("storefront", "orders-service", "billing-worker"):
        closed = await refused_publish(
            deployment.urls[role], names.PROVIDER_CALLBACKS_EXCHANGE, "callback"
        )
        assert closed.startswith("ACCESS_REFUSED"), (role, closed)


@pytest.mark.usefixtures("callbacks_exchange")
async def test_the_relay_user_publishes_callbacks_and_nothing_else(
    deployment: Deployment, watch: Bus
) -> None:
    relay = deployment.users["billing-relay"]
    connection = await aio_pika.connect(deployment.urls["billing-relay"])
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(names.PROVIDER_CALLBACKS_EXCHANGE, ensure=False)
        correlation_id = uuid.uuid4().hex
        await exchange.publish(
            aio_pika.Message(b"not json", user_id=relay, correlation_id=correlation_id,
                             headers={names.PROVIDER_HEADER: "sandbox"}),
            routing_key=names.PROVIDER_CALLBACK_ROUTING_KEY,
        )  # fmt: skip  # confirmed: the broker let the relay write there
    finally:
        await connection.close()
    reason, _ = await dead_letter(watch, correlation_id)
    assert not reason.startswith("forbidden"), reason  # the policy let it in; the body is bad

    for exchange_name, routing_key in [("", names.PROVIDER_EVENTS_QUEUE), ("", names.PLAN_UPSERT),
                                       (names.EVENTS_EXCHANGE, "payment.success")]:  # fmt: skip
        closed = await refused_publish(deployment.urls["billing-relay"], exchange_name, routing_key)
        assert closed.startswith("ACCESS_REFUSED"), closed


# ---- the worker's access policy ----


async def test_a_command_from_an_allowed_client_user_is_answered(
    worker: Worker, deployment: Deployment, watch: Bus
) -> None:
    user = new_user()
    async with BillingClient(deployment.urls["storefront"], timeout=WAIT) as billing:
        result = await billing.balance(user_id=user)  # the typed client sets user_id itself
        assert result.accounts == []
        with pytest.raises(Forbidden) as forbidden:
            await billing.upsert_plan(code=f"p-{key()}", name="Pro", interval="month",
                                      price=Money(amount="9.00", currency="USD"),
                                      idempotency_key=key())  # fmt: skip
    assert deployment.users["storefront"] in forbidden.value.message
    assert forbidden.value.code == "forbidden"


async def test_a_plan_upsert_from_a_client_user_is_forbidden_and_dead_lettered(
    worker: Worker, deployment: Deployment, watch: Bus
) -> None:
    storefront = deployment.users["storefront"]
    code = f"p-{key()}"
    async with Caller(deployment.urls["storefront"]) as caller:
        pending = await caller.send(names.PLAN_UPSERT, plan(code), user_id=storefront)
        message = refused(await asyncio.wait_for(pending, WAIT))
    assert storefront in message
    reason, letter = await dead_letter(watch, letter_id(pending, caller))
    assert reason == f"forbidden: broker user {storefront!r} may not send to {names.PLAN_UPSERT}"
    assert letter.headers[names.ORIGINAL_QUEUE_HEADER] == names.PLAN_UPSERT

    async with Caller(deployment.urls["billing-admin"]) as admin:  # the control: admins may
        reply = await admin.call(names.PLAN_UPSERT, plan(code),
                                 user_id=deployment.users["billing-admin"])  # fmt: skip
    assert reply["ok"], reply


def letter_id(pending: asyncio.Future[dict[str, Any]], caller: Caller) -> str:
    return next(cid for cid, future in caller.replies.items() if future is pending)


async def test_a_forged_provider_event_from_a_client_user_is_forbidden(
    worker: Worker, deployment: Deployment, watch: Bus
) -> None:
    storefront = deployment.users["storefront"]
    forged = {"id": f"sbx_evt_{key()}", "type": "payment.succeeded", "data": {}}
    async with Caller(deployment.urls["storefront"]) as caller:
        pending = await caller.send(names.PROVIDER_EVENTS_QUEUE, forged, user_id=storefront,
                                    headers={names.PROVIDER_HEADER: "stripe"})  # fmt: skip
        refused(await asyncio.wait_for(pending, WAIT))
        reason, _ = await dead_letter(watch, letter_id(pending, caller))
    assert reason == (
        f"forbidden: broker user {storefront!r} may not send to {names.PROVIDER_EVENTS_QUEUE}"
    )


async def test_a_message_without_user_id_is_forbidden(
    worker: Worker, deployment: Deployment, watch: Bus
) -> None:
    reply = await watch.call(names.WALLET_BALANCE, balance(new_user()), timeout=WAIT)
    assert "user_id" in refused(reply)
    async with Caller(deployment.urls["storefront"]) as caller:
        pending = await caller.send(names.WALLET_BALANCE, balance(new_user()), user_id=None)
        refused(await asyncio.wait_for(pending, WAIT))
        reason, _ = await dead_letter(watch, letter_id(pending, caller))
    assert reason.startswith("forbidden: ")
    assert "user_id" in reason


async def test_an_order_from_a_user_other_than_orders_makes_no_invoice(
    worker: Worker, deployment: Deployment, watch: Bus
) -> None:
    user = new_user()
    forged, real = order(user), order(user)
    async with Caller(deployment.urls["storefront"]) as caller:
        pending = await caller.send(names.ORDER_CREATED_QUEUE, forged,
                                    user_id=deployment.users["storefront"])  # fmt: skip
        reason, _ = await dead_letter(watch, letter_id(pending, caller))
    assert reason.startswith("forbidden: ")
    async with Caller(deployment.urls["orders-service"]) as orders:
        await orders.send(names.ORDER_CREATED, real, exchange=names.ORDERS_EXCHANGE,
                          user_id=deployment.users["orders-service"])  # fmt: skip
    await watch.event("invoice.created", lambda d: d["order_id"] == real["order_id"], timeout=WAIT)

    async with BillingClient(deployment.urls["storefront"], timeout=WAIT) as billing:
        invoices = await billing.list_invoices(user_id=user)
    assert [invoice.order_id for invoice in invoices.items] == [real["order_id"]]


async def test_a_sandbox_deposit_completes_with_the_policy_on(
    worker: Worker, deployment: Deployment, watch: Bus
) -> None:
    """The sandbox's callback is published by the worker itself: its user_id is believed."""
    user = new_user()
    async with BillingClient(deployment.urls["storefront"], timeout=WAIT) as billing:
        result = await billing.deposit(user_id=user, amount=Money(amount="2.00", currency="USD"),
                                       idempotency_key=key())  # fmt: skip
    transaction_id = str(result.transaction.id)
    await watch.event("deposit.completed", lambda d: d["transaction_id"] == transaction_id,
                      timeout=WAIT)  # fmt: skip


# ---- the sender of copies the worker republishes ----


async def test_a_client_cannot_fake_the_sender_header(
    worker: Worker, deployment: Deployment, watch: Bus
) -> None:
    storefront, admin = deployment.users["storefront"], deployment.users["billing-admin"]
    async with Caller(deployment.urls["storefront"]) as caller:
        pending = await caller.send(names.PLAN_UPSERT, plan(f"p-{key()}"), user_id=storefront,
                                    headers={names.SENDER_HEADER: admin})  # fmt: skip
        assert storefront in refused(await asyncio.wait_for(pending, WAIT))
        _, letter = await dead_letter(watch, letter_id(pending, caller))
    assert letter.headers[names.SENDER_HEADER] == storefront  # overwritten, not carried on
    assert letter.user_id == deployment.users["billing-worker"]


async def test_a_copy_from_the_worker_user_is_judged_by_its_original_sender(
    worker: Worker, deployment: Deployment, watch: Bus
) -> None:
    """What a retry copy or a dead letter looks like: the worker's user_id, the sender in
    the header. The header decides; "" (an unknown sender) is refused."""
    me = deployment.users["billing-worker"]
    async with Caller(deployment.urls["billing-worker"], deployment.admin_url) as worker_user:
        as_client = await worker_user.call(names.PLAN_UPSERT, plan(f"p-{key()}"), user_id=me,
                                           headers={names.SENDER_HEADER:
                                                    deployment.users["storefront"]})  # fmt: skip
        unknown = await worker_user.call(names.WALLET_BALANCE, balance(new_user()), user_id=me,
                                         headers={names.SENDER_HEADER: ""})  # fmt: skip
        as_admin = await worker_user.call(names.PLAN_UPSERT, plan(f"p-{key()}"), user_id=me,
                                          headers={names.SENDER_HEADER:
                                                   deployment.users["billing-admin"]})  # fmt: skip
    assert deployment.users["storefront"] in refused(as_client)
    refused(unknown)
    assert as_admin["ok"], as_admin


async def test_retry_copies_keep_their_original_sender(
    deployment: Deployment, database_url: str, gate: Gate
) -> None:
    """Two deposits fail at first and wait for their retry while the policy is switched
    on (a worker restarted with it): the allowed user's is handled, the stranger's (a
    user the policy does not know) is forbidden, though both copies come from the
    worker's own user."""
    storefront, stranger = deployment.users["storefront"], deployment.users["stranger"]
    gate.failing = True
    off = start_worker(
        worker_settings(deployment, database_url, access_policy=None, max_deliveries=100), gate
    )
    async with Caller(deployment.urls["storefront"]) as allowed, \
            Caller(deployment.urls["stranger"]) as unknown:  # fmt: skip
        allowed_deposit, unknown_deposit = stripe_deposit(new_user()), stripe_deposit(new_user())
        keys = [allowed_deposit["user_id"], unknown_deposit["user_id"]]
        async with off.app:
            allowed_reply = await allowed.send(names.WALLET_DEPOSIT, allowed_deposit,
                                               user_id=storefront)  # fmt: skip
            unknown_reply = await unknown.send(names.WALLET_DEPOSIT, unknown_deposit,
                                               user_id=stranger)  # fmt: skip
            await until(lambda: all(gate.calls[k] >= 1 for k in keys))  # both were retried
        calls_before = Counter(gate.calls)
        gate.failing = False

        on = start_worker(worker_settings(deployment, database_url), gate)
        async with on.app:
            watch = Bus(deployment.admin_url)
            await watch.start()
            try:
                handled = await asyncio.wait_for(allowed_reply, WAIT)
                message = refused(await asyncio.wait_for(unknown_reply, WAIT))
                reason, letter = await dead_letter(watch, letter_id(unknown_reply, unknown))
            finally:
                await watch.close()
    assert handled["ok"], handled
    assert gate.calls[keys[0]] > calls_before[keys[0]]
    assert stranger in message
    assert reason == f"forbidden: broker user {stranger!r} may not send to {names.WALLET_DEPOSIT}"
    assert gate.calls[keys[1]] == calls_before[keys[1]]  # the policy-on worker never ran it
    assert letter.user_id == deployment.users["billing-worker"]
    assert letter.headers[names.SENDER_HEADER] == stranger


async def test_a_replayed_dead_letter_is_judged_by_its_original_sender(
    worker: Worker, deployment: Deployment
) -> None:
    """`billing-worker dlq replay` (with the worker's URL, as the CLI has it) republishes
    as the worker; the forbidden sender stays forbidden."""
    storefront = deployment.users["storefront"]
    async with Caller(deployment.urls["storefront"]) as caller:
        first = await caller.send(names.PLAN_UPSERT, plan(f"p-{key()}"), user_id=storefront)
        refused(await asyncio.wait_for(first, WAIT))
        correlation_id = letter_id(first, caller)
        del caller.replies[correlation_id]
        again: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        caller.replies[correlation_id] = again
        await until_dead_lettered(deployment, correlation_id)

        replayed = await dlq.replay(
            deployment.urls["billing-worker"], 1000,
            lambda letter: letter.message.correlation_id == correlation_id,
        )  # fmt: skip
        assert len(replayed) == 1
        assert storefront in refused(await asyncio.wait_for(again, WAIT))


async def until_dead_lettered(deployment: Deployment, correlation_id: str) -> None:
    async def found() -> bool:
        async with dlq.dead_letters(deployment.admin_url, 1000) as (_, letters):
            return any(letter.message.correlation_id == correlation_id for letter in letters)

    async with asyncio.timeout(WAIT):
        while not await found():
            await asyncio.sleep(0.1)


# ---- the relay as its own least-privilege user, the worker with the policy on ----


async def test_the_relay_user_delivers_a_genuine_stripe_webhook_through_the_policy(
    deployment: Deployment, database_url: str
) -> None:
    """Stripe pays, Stripe calls the relay; the relay (its broker user may only write the
    callbacks exchange) hands the callback over, the worker (policy on) admits it by the
    relay's validated user id, re-reads the PaymentIntent and completes the deposit."""
    fake = FakeStripe()
    with serve(fake.app) as stripe_base:
        settings = worker_settings(
            deployment, database_url, stripe_api_key="sk_test_relay_role",
            stripe_api_base=stripe_base, stripe_webhook_secret=WEBHOOK_SECRET,
        )  # fmt: skip
        worker = build_worker(settings)
        watch = Bus(deployment.admin_url)
        async with worker.app:
            await watch.start()
            user = new_user()
            async with BillingClient(deployment.urls["storefront"], timeout=WAIT) as billing:
                result = await billing.deposit(
                    user_id=user, amount=Money(amount="12.00", currency="USD"),
                    provider="stripe", idempotency_key=key(),
                )  # fmt: skip
            assert result.payment_action is not None
            secret = str(result.payment_action.client_secret)
            paid = fake.succeed(secret.split("_secret_")[0])  # the customer pays

            relay_settings = make_settings(
                database_url, deployment.urls["billing-relay"], stripe_webhook_secret=WEBHOOK_SECRET
            )
            broker = relay_broker(relay_settings)
            await broker.connect()
            try:
                relay = Relay(relay_settings, broker)
                response = await relay.stripe(fake.event("payment_intent.succeeded", paid))
            finally:
                await broker.stop()
            assert response.status_code == 200, response.text

            try:
                completed = await watch.event(
                    "deposit.completed",
                    lambda d: d["transaction_id"] == str(result.transaction.id),
                    timeout=WAIT,
                )
            finally:
                await watch.close()
    assert completed["data"]["amount"] == {"amount": "12.00", "currency": "USD"}
