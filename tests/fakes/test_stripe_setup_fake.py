"""The Stripe fake's SetupIntents, PaymentMethods and customer default, with the real
stripe SDK (16.1) over HTTP, behaving as Stripe documents them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import stripe

from fakes.server import serve
from fakes.stripe_api import FakeStripe

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


@pytest.fixture
def fake() -> FakeStripe:
    return FakeStripe()


@pytest.fixture
async def client(fake: FakeStripe) -> AsyncIterator[stripe.StripeClient]:
    with serve(fake.app) as base:
        http = stripe.HTTPXClient()
        yield stripe.StripeClient("sk_test_x", base_addresses={"api": base}, http_client=http)
        await http.close_async()


async def customer_of(client: stripe.StripeClient) -> str:
    return str((await client.v1.customers.create_async({"metadata": {"user_id": "u"}})).id)


async def test_a_setup_intent_succeeds_once_confirmed_and_saves_the_card_for_its_customer(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    customer = await customer_of(client)
    seti = await client.v1.setup_intents.create_async(
        {"customer": customer, "usage": "off_session", "metadata": {"setup_id": "s-1"},
         "automatic_payment_methods": {"enabled": True}},
        {"idempotency_key": "seti-1"},
    )  # fmt: skip
    assert (seti.status, seti.usage, seti.payment_method) == (
        "requires_payment_method", "off_session", None)  # fmt: skip
    assert str(seti.client_secret).startswith(f"{seti.id}_secret_")
    again = await client.v1.setup_intents.create_async(
        {"customer": customer, "usage": "off_session", "metadata": {"setup_id": "s-1"},
         "automatic_payment_methods": {"enabled": True}},
        {"idempotency_key": "seti-1"},
    )  # fmt: skip
    assert again.id == seti.id  # the same key: the same SetupIntent

    assert fake.confirm_setup(seti.id, "pm_card_authenticationRequired")
    assert (await client.v1.setup_intents.retrieve_async(seti.id)).status == "requires_action"
    method = fake.confirm_setup(seti.id, "pm_card_mastercard")

    found = await client.v1.setup_intents.retrieve_async(seti.id)
    assert (found.status, found.payment_method) == ("succeeded", method)
    card = await client.v1.payment_methods.retrieve_async(method)
    assert (card.customer, card.card and card.card.brand) == (customer, "mastercard")


async def test_a_detached_card_is_gone_for_good(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    customer = await customer_of(client)
    method = fake.attach_payment_method(customer)
    await client.v1.customers.update_async(
        customer, {"invoice_settings": {"default_payment_method": method}}
    )

    detached = await client.v1.payment_methods.detach_async(method)

    assert detached.customer is None
    assert fake.customers[customer]["invoice_settings"]["default_payment_method"] is None
    with pytest.raises(stripe.InvalidRequestError, match="not attached to a customer"):
        await client.v1.payment_methods.detach_async(method)
    with pytest.raises(stripe.InvalidRequestError, match="may not be used again"):
        await client.v1.payment_intents.create_async(
            {"amount": 500, "currency": "usd", "customer": customer, "payment_method": method,
             "confirm": True, "off_session": True}
        )  # fmt: skip


async def test_a_customers_default_must_be_one_of_its_own_cards(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    ann, bob = await customer_of(client), await customer_of(client)
    bobs = fake.attach_payment_method(bob)

    with pytest.raises(stripe.InvalidRequestError, match="No such PaymentMethod"):
        await client.v1.customers.update_async(
            ann, {"invoice_settings": {"default_payment_method": bobs}}
        )
    assert fake.customers[ann]["invoice_settings"]["default_payment_method"] is None
