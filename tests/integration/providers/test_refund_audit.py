"""The audit's refund checks catch what they exist for: refunds (in flight or done) past
their payment, and a completed provider refund whose confirmation is not its own."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from billing_worker.ops.audit import audit
from fakes.stripe_api import FakeStripe
from fakes.yookassa_api import FakeYooKassa
from support.refund_shop import Shop, assert_audit_clean, new_user
from support.relay import Relay
from support.rpc import Bus

pytestmark = pytest.mark.integration


@pytest.fixture
def database_url(fresh_database_url: str) -> str:
    return fresh_database_url


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    yield connection
    await connection.close()


@pytest.fixture
def shop(
    bus: Bus, relay: Relay, stripe_fake: tuple[FakeStripe, str],
    yookassa_fake: tuple[FakeYooKassa, str],
) -> Shop:  # fmt: skip
    return Shop(bus, relay, stripe_fake, yookassa_fake)


async def findings(db: asyncpg.Connection) -> set[str]:
    return {finding.check for finding in await audit(db)}


@pytest.mark.parametrize("provider", ["stripe", "sandbox"])
async def test_a_refund_confirmed_for_another_amount_is_found(
    shop: Shop, db: asyncpg.Connection, provider: str
) -> None:
    user = new_user()
    payment = await shop.deposit(provider, user, "20.00")
    reply = await shop.refund(user, payment, "5.00")
    await assert_audit_clean(db)
    confirmation = {"object": "refund", "id": "re_x", "amount_minor": 400, "currency": "USD"}
    await db.execute(
        "UPDATE transactions SET provider_confirmation = $2::jsonb WHERE id = $1",
        uuid.UUID(reply["data"]["refund"]["id"]), json.dumps(confirmation),
    )  # fmt: skip
    assert "completed refund at a provider without the provider's matching confirmation" in (
        await findings(db)
    )


async def test_refunds_in_flight_past_their_payment_are_found(
    shop: Shop, db: asyncpg.Connection
) -> None:
    user = new_user()
    payment = await shop.deposit("sandbox", user, "20.00")
    reply = await shop.refund(user, payment, "15.00")
    await assert_audit_clean(db)
    # a second refund of 10.00 still waiting for its provider: 25.00 held of 20.00
    await db.execute(
        "INSERT INTO transactions (id, user_id, kind, status, amount_minor, currency, provider,"
        " refund_of) VALUES ($1, $2, 'refund', 'processing', 1000, 'USD', 'sandbox', $3)",
        uuid.uuid4(), user, uuid.UUID(payment),
    )  # fmt: skip
    assert "refunds in flight and done exceeding their payment" in await findings(db)
    assert reply["ok"]
