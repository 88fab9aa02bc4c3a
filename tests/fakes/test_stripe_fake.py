"""The Stripe fake works with the real stripe SDK (16.1) over HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import stripe

from fakes.server import serve
from fakes.stripe_api import FakeStripe, parse_body, sign

API_KEY = "sk_test_x"
WEBHOOK_SECRET = "whsec_test_secret"

# stripe 16.1's HTTPXClient posts the form body as `data=<str>`; httpx 0.28 warns about it
# (DeprecationWarning, "use content="), and under filterwarnings=error the SDK wraps that
# warning into an APIConnectionError, so every async POST would fail.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


@pytest.fixture
def fake() -> FakeStripe:
    return FakeStripe()


@pytest.fixture
def base_url(fake: FakeStripe) -> Iterator[str]:
    with serve(fake.app) as base:
        yield base


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[stripe.StripeClient]:
    http = stripe.HTTPXClient()
    yield stripe.StripeClient(API_KEY, base_addresses={"api": base_url}, http_client=http)
    await http.close_async()


@pytest.fixture
async def customer(client: stripe.StripeClient) -> stripe.Customer:
    return await client.v1.customers.create_async({"email": "ann@example.com", "name": "Ann"})


def intent(amount: int = 1999, **extra: object) -> dict[str, object]:
    return {"amount": amount, "currency": "USD", "metadata": {"transaction_id": "tx-1"}, **extra}


# --------------------------------------------------------------------------- plumbing


def test_bracket_notation_is_parsed_into_nested_dicts_and_lists() -> None:
    body = (
        b"items[0][price]=price_a&items[1][price]=price_b&items[1][quantity]=2"
        b"&expand[]=latest_invoice&expand[]=customer&metadata[0]=zero&metadata[k]="
        b"&automatic_payment_methods[enabled]=true"
    )
    assert parse_body(body) == {
        "items": [{"price": "price_a"}, {"price": "price_b", "quantity": "2"}],
        "expand": ["latest_invoice", "customer"],
        "metadata": {"0": "zero", "k": ""},
        "automatic_payment_methods": {"enabled": "true"},
    }


async def test_the_default_client_works_against_the_fake(base_url: str) -> None:
    default = stripe.StripeClient(API_KEY, base_addresses={"api": base_url})
    created = await default.v1.customers.create_async({"email": "a@example.com"})
    assert created.email == "a@example.com"
    # StripeClient has no public close(); unclosed, its httpx pool leaks a socket
    # (ResourceWarning). Hence the `client` fixture passes its own HTTPXClient.
    await default._requestor._client.close_async()


async def test_a_request_without_a_test_secret_key_is_rejected_with_401(base_url: str) -> None:
    live = stripe.StripeClient("sk_live_nope", base_addresses={"api": base_url})
    with pytest.raises(stripe.AuthenticationError) as caught:
        await live.v1.customers.create_async({"email": "a@example.com"})
    await live._requestor._client.close_async()
    assert caught.value.http_status == 401
    assert caught.value.error is not None
    assert caught.value.error.type == "invalid_request_error"


# --------------------------------------------------------------------------- customers


async def test_creating_a_customer_stores_it_and_it_can_be_retrieved(
    client: stripe.StripeClient, fake: FakeStripe
) -> None:
    created = await client.v1.customers.create_async(
        {"email": "ann@example.com", "name": "Ann", "metadata": {"user_id": "42"}}
    )
    assert isinstance(created, stripe.Customer)
    assert created.id.startswith("cus_")
    assert created.metadata["user_id"] == "42"
    assert created.livemode is False
    fetched = await client.v1.customers.retrieve_async(created.id)
    assert fetched.email == "ann@example.com"
    assert set(fake.customers) == {created.id}


async def test_an_unknown_parameter_is_rejected_like_stripe_does(
    client: stripe.StripeClient,
) -> None:
    with pytest.raises(stripe.InvalidRequestError) as caught:
        await client.v1.customers.create_async({"emial": "typo@example.com"})  # type: ignore[typeddict-unknown-key]
    assert caught.value.param == "emial"


# --------------------------------------------------------------------------- payment intents


async def test_a_payment_intent_without_a_payment_method_requires_one_and_has_a_client_secret(
    client: stripe.StripeClient, customer: stripe.Customer
) -> None:
    pi = await client.v1.payment_intents.create_async(intent(customer=customer.id))
    assert isinstance(pi, stripe.PaymentIntent)
    assert pi.status == "requires_payment_method"
    assert pi.currency == "usd"
    assert pi.client_secret is not None
    assert pi.client_secret.startswith(f"{pi.id}_secret_")
    assert pi.customer == customer.id
    assert pi.metadata["transaction_id"] == "tx-1"


async def test_a_payment_intent_with_a_payment_method_but_no_confirm_awaits_confirmation(
    client: stripe.StripeClient,
) -> None:
    pi = await client.v1.payment_intents.create_async(intent(payment_method="pm_card_visa"))
    assert pi.status == "requires_confirmation"
    confirmed = await client.v1.payment_intents.confirm_async(pi.id)
    assert confirmed.status == "succeeded"


async def test_confirming_with_pm_card_visa_succeeds_and_creates_a_charge(
    client: stripe.StripeClient, fake: FakeStripe
) -> None:
    pi = await client.v1.payment_intents.create_async(
        intent(payment_method="pm_card_visa", confirm=True, off_session=True)
    )
    assert pi.status == "succeeded"
    assert pi.amount_received == 1999
    assert isinstance(pi.latest_charge, str)
    assert pi.latest_charge.startswith("ch_")
    assert fake.charges[pi.latest_charge]["status"] == "succeeded"
    expanded = await client.v1.payment_intents.retrieve_async(pi.id, {"expand": ["latest_charge"]})
    assert isinstance(expanded.latest_charge, stripe.Charge)
    assert expanded.latest_charge.amount == 1999


async def test_a_declined_card_raises_card_error_exposing_decline_code_and_the_payment_intent(
    client: stripe.StripeClient, fake: FakeStripe
) -> None:
    with pytest.raises(stripe.CardError) as caught:
        await client.v1.payment_intents.create_async(
            intent(payment_method="pm_card_chargeDeclined", confirm=True)
        )
    err = caught.value
    assert err.http_status == 402
    assert err.code == "card_declined"
    assert not hasattr(err, "decline_code")  # only on the error object, not the exception
    assert err.error is not None
    assert err.error.decline_code == "generic_decline"
    assert err.error.message == "Your card was declined."
    failed = err.error.payment_intent
    assert isinstance(failed, stripe.PaymentIntent)
    assert failed.status == "requires_payment_method"
    assert failed.last_payment_error is not None
    assert failed.last_payment_error.decline_code == "generic_decline"
    assert fake.payment_intents[failed.id]["status"] == "requires_payment_method"


async def test_a_card_needing_authentication_requires_action_on_session(
    client: stripe.StripeClient,
) -> None:
    pi = await client.v1.payment_intents.create_async(
        intent(payment_method="pm_card_authenticationRequired", confirm=True)
    )
    assert pi.status == "requires_action"
    assert pi.next_action is not None
    assert pi.next_action.type == "use_stripe_sdk"
    assert pi.client_secret


async def test_a_card_needing_authentication_off_session_is_declined_with_402(
    client: stripe.StripeClient,
) -> None:
    with pytest.raises(stripe.CardError) as caught:
        await client.v1.payment_intents.create_async(
            intent(payment_method="pm_card_authenticationRequired", confirm=True, off_session=True)
        )
    assert caught.value.code == "authentication_required"


async def test_retrieving_an_unknown_payment_intent_raises_invalid_request_error(
    client: stripe.StripeClient,
) -> None:
    with pytest.raises(stripe.InvalidRequestError) as caught:
        await client.v1.payment_intents.retrieve_async("pi_missing")
    assert caught.value.http_status == 404
    assert caught.value.code == "resource_missing"
    assert "No such payment_intent: 'pi_missing'" in str(caught.value)


async def test_canceling_a_payment_intent_marks_it_canceled_and_twice_is_an_error(
    client: stripe.StripeClient,
) -> None:
    pi = await client.v1.payment_intents.create_async(intent())
    canceled = await client.v1.payment_intents.cancel_async(
        pi.id, {"cancellation_reason": "abandoned"}
    )
    assert canceled.status == "canceled"
    assert canceled.cancellation_reason == "abandoned"
    with pytest.raises(stripe.InvalidRequestError) as caught:
        await client.v1.payment_intents.cancel_async(pi.id)
    assert caught.value.code == "payment_intent_unexpected_state"


async def test_refunds_update_the_charge_and_cannot_exceed_it(
    client: stripe.StripeClient, fake: FakeStripe
) -> None:
    pi = await client.v1.payment_intents.create_async(
        intent(payment_method="pm_card_visa", confirm=True)
    )
    partial = await client.v1.refunds.create_async({"payment_intent": pi.id, "amount": 500})
    assert isinstance(partial, stripe.Refund)
    assert partial.id.startswith("re_")
    assert partial.status == "succeeded"
    assert partial.amount == 500
    assert fake.charges[str(pi.latest_charge)]["amount_refunded"] == 500
    rest = await client.v1.refunds.create_async({"payment_intent": pi.id})
    assert rest.amount == 1499
    assert fake.charges[str(pi.latest_charge)]["refunded"] is True
    with pytest.raises(stripe.InvalidRequestError) as caught:
        await client.v1.refunds.create_async({"payment_intent": pi.id})
    assert caught.value.code == "charge_already_refunded"


async def test_succeed_and_fail_helpers_move_a_payment_intent(
    client: stripe.StripeClient, fake: FakeStripe
) -> None:
    first = await client.v1.payment_intents.create_async(intent())
    second = await client.v1.payment_intents.create_async(intent())
    assert fake.succeed(first.id)["status"] == "succeeded"
    failed = fake.fail(second.id, decline_code="insufficient_funds")
    assert failed["last_payment_error"]["decline_code"] == "insufficient_funds"
    assert (await client.v1.payment_intents.retrieve_async(first.id)).status == "succeeded"
    fetched = await client.v1.payment_intents.retrieve_async(second.id)
    assert fetched.status == "requires_payment_method"
    assert fetched.last_payment_error is not None
    assert fetched.last_payment_error.message == "Your card has insufficient funds."


# --------------------------------------------------------------------------- idempotency


async def test_the_same_idempotency_key_twice_creates_one_intent_with_identical_ids(
    client: stripe.StripeClient, fake: FakeStripe
) -> None:
    options: stripe.RequestOptions = {"idempotency_key": "tx-1:charge"}
    first = await client.v1.payment_intents.create_async(intent(), options)
    again = await client.v1.payment_intents.create_async(intent(), options)
    assert again.id == first.id
    assert again.client_secret == first.client_secret
    assert fake.created["payment_intent"] == 1
    assert len(fake.payment_intents) == 1
    keys = [r.headers["idempotency-key"] for r in fake.calls("POST", "/v1/payment_intents")]
    assert keys == ["tx-1:charge", "tx-1:charge"]
    assert first.last_response.headers.get("idempotent-replayed") is None
    assert again.last_response.headers["idempotent-replayed"] == "true"


async def test_an_expired_idempotency_key_runs_the_request_again_like_stripe_after_a_day(
    client: stripe.StripeClient, fake: FakeStripe
) -> None:
    options: stripe.RequestOptions = {"idempotency_key": "tx-2:charge"}
    first = await client.v1.payment_intents.create_async(intent(), options)
    fake.expire_idempotency_keys()
    again = await client.v1.payment_intents.create_async(intent(), options)
    assert again.id != first.id
    assert fake.created["payment_intent"] == 2
    assert again.last_response.headers.get("idempotent-replayed") is None


async def test_a_replayed_decline_returns_the_same_card_error_without_a_new_intent(
    client: stripe.StripeClient, fake: FakeStripe
) -> None:
    params = intent(payment_method="pm_card_chargeDeclined", confirm=True)
    ids = []
    for _ in range(2):
        with pytest.raises(stripe.CardError) as caught:
            await client.v1.payment_intents.create_async(params, {"idempotency_key": "k-402"})
        assert caught.value.error is not None
        assert caught.value.error.payment_intent is not None
        ids.append(caught.value.error.payment_intent.id)
    assert ids[0] == ids[1]
    assert fake.created["payment_intent"] == 1


async def test_reusing_an_idempotency_key_with_other_params_raises_idempotency_error(
    client: stripe.StripeClient, fake: FakeStripe
) -> None:
    await client.v1.payment_intents.create_async(intent(1000), {"idempotency_key": "k"})
    with pytest.raises(stripe.IdempotencyError) as caught:
        await client.v1.payment_intents.create_async(intent(2000), {"idempotency_key": "k"})
    assert caught.value.http_status == 400
    assert "same parameters" in str(caught.value)
    assert fake.created["payment_intent"] == 1


# --------------------------------------------------------------------------- subscriptions


async def test_a_subscription_with_a_good_card_is_active_with_a_30_day_item_period(
    client: stripe.StripeClient, customer: stripe.Customer, fake: FakeStripe
) -> None:
    sub = await client.v1.subscriptions.create_async(
        {
            "customer": customer.id,
            "items": [{"price": "price_monthly"}],
            "default_payment_method": "pm_card_visa",
            "metadata": {"plan": "pro"},
            "expand": ["latest_invoice.payments"],
        }
    )
    assert isinstance(sub, stripe.Subscription)
    assert sub.status == "active"
    item = sub["items"].data[0]  # `sub.items` is dict.items, as in every StripeObject
    assert item.price.id == "price_monthly"
    assert item.current_period_end - item.current_period_start == 30 * 24 * 3600
    assert "current_period_end" not in sub  # moved to items in API 2025-03-31
    invoice = sub.latest_invoice
    assert isinstance(invoice, stripe.Invoice)
    assert invoice.status == "paid"
    assert invoice.payments is not None
    payment_intent_id = invoice.payments.data[0].payment.payment_intent
    assert fake.payment_intents[str(payment_intent_id)]["status"] == "succeeded"


async def test_an_incomplete_subscription_exposes_the_confirmation_secret_and_activates_on_payment(
    client: stripe.StripeClient, customer: stripe.Customer, fake: FakeStripe
) -> None:
    sub = await client.v1.subscriptions.create_async(
        {
            "customer": customer.id,
            "items": [{"price": "price_monthly"}],
            "payment_behavior": "default_incomplete",
            "expand": ["latest_invoice.confirmation_secret", "latest_invoice.payments"],
        }
    )
    assert sub.status == "incomplete"
    invoice = sub.latest_invoice
    assert isinstance(invoice, stripe.Invoice)
    assert invoice.confirmation_secret is not None
    assert invoice.payments is not None
    payment_intent_id = str(invoice.payments.data[0].payment.payment_intent)
    assert invoice.confirmation_secret.client_secret.startswith(f"{payment_intent_id}_secret_")
    fake.succeed(payment_intent_id)
    assert (await client.v1.subscriptions.retrieve_async(sub.id)).status == "active"
    assert fake.invoices[invoice.id]["status"] == "paid"


async def test_expanding_latest_invoice_payment_intent_fails_as_in_the_2026_api(
    client: stripe.StripeClient, customer: stripe.Customer, fake: FakeStripe
) -> None:
    with pytest.raises(stripe.InvalidRequestError) as caught:
        await client.v1.subscriptions.create_async(
            {
                "customer": customer.id,
                "items": [{"price": "price_monthly"}],
                "expand": ["latest_invoice.payment_intent"],
            }
        )
    assert "cannot be expanded (latest_invoice.payment_intent)" in str(caught.value)


async def test_a_trial_subscription_is_trialing_until_the_trial_ends(
    client: stripe.StripeClient, customer: stripe.Customer, fake: FakeStripe
) -> None:
    sub = await client.v1.subscriptions.create_async(
        {"customer": customer.id, "items": [{"price": "price_monthly"}], "trial_period_days": 14}
    )
    assert sub.status == "trialing"
    assert sub.trial_end is not None
    assert sub.trial_start is not None
    assert sub.trial_end - sub.trial_start == 14 * 86400
    assert sub["items"].data[0].current_period_end == sub.trial_end
    assert fake.created["payment_intent"] == 0


async def test_a_subscription_can_be_set_to_cancel_at_period_end_and_then_canceled(
    client: stripe.StripeClient, customer: stripe.Customer
) -> None:
    sub = await client.v1.subscriptions.create_async(
        {
            "customer": customer.id,
            "items": [{"price": "price_monthly"}],
            "default_payment_method": "pm_card_visa",
            "metadata": {"plan": "pro", "seat": "1"},
        }
    )
    updated = await client.v1.subscriptions.update_async(
        sub.id, {"cancel_at_period_end": True, "metadata": {"seat": "", "reason": "price"}}
    )
    assert updated.cancel_at_period_end is True
    assert updated.cancel_at == updated["items"].data[0].current_period_end
    assert updated.metadata.to_dict() == {"plan": "pro", "reason": "price"}
    assert updated.status == "active"
    canceled = await client.v1.subscriptions.cancel_async(sub.id)
    assert canceled.status == "canceled"
    assert canceled.ended_at is not None


async def test_pause_collection_is_set_with_resumes_at_and_unset_with_an_empty_string(
    client: stripe.StripeClient, customer: stripe.Customer
) -> None:
    sub = await client.v1.subscriptions.create_async(
        {"customer": customer.id, "items": [{"price": "price_monthly", "quantity": 3}],
         "default_payment_method": "pm_card_visa"}
    )  # fmt: skip
    assert sub["items"].data[0].quantity == 3
    assert sub.pause_collection is None
    resumes_at = int(time.time()) + 86400
    paused = await client.v1.subscriptions.update_async(
        sub.id, {"pause_collection": {"behavior": "void", "resumes_at": resumes_at}}
    )
    assert paused.pause_collection is not None
    assert (paused.pause_collection.behavior, paused.pause_collection.resumes_at) == (
        "void", resumes_at,
    )  # fmt: skip
    assert paused.status == "active"  # Stripe keeps the status under pause_collection
    resumed = await client.v1.subscriptions.update_async(sub.id, {"pause_collection": ""})
    assert resumed.pause_collection is None
    with pytest.raises(stripe.InvalidRequestError):
        await client.v1.subscriptions.update_async(
            sub.id,
            {"pause_collection": {"behavior": "void", "resumes_at": 1}},  # the past
        )


async def test_an_item_change_with_always_invoice_bills_stripe_like_proration_lines(
    client: stripe.StripeClient, customer: stripe.Customer, fake: FakeStripe
) -> None:
    t0 = 1_900_000_000
    fake.clock = lambda: float(t0)
    fake.add_price("price_basic", 1000, nickname="Basic")
    fake.add_price("price_plus", 2500, nickname="Plus")
    sub = await client.v1.subscriptions.create_async(
        {"customer": customer.id, "items": [{"price": "price_basic"}],
         "default_payment_method": "pm_card_visa"}
    )  # fmt: skip
    item = sub["items"].data[0]
    fake.clock = lambda: float(t0 + 3 * 86400)  # 27 of 30 days left: 0.9

    changed = await client.v1.subscriptions.update_async(
        sub.id,
        {"items": [{"id": item.id, "price": "price_plus", "quantity": 2}],
         "proration_behavior": "always_invoice", "expand": ["latest_invoice"]},
    )  # fmt: skip

    assert (changed["items"].data[0].price.id, changed["items"].data[0].quantity) == (
        "price_plus", 2,
    )  # fmt: skip
    invoice = changed.latest_invoice
    assert isinstance(invoice, stripe.Invoice)
    assert (invoice.billing_reason, invoice.status, invoice.total, invoice.amount_paid) == (
        "subscription_update", "paid", 3600, 3600,
    )  # fmt: skip
    assert [(li.amount, li.proration, li.period.start, li.period.end)
            for li in invoice.lines.data] == [
        (-900, True, t0 + 3 * 86400, t0 + 30 * 86400),
        (4500, True, t0 + 3 * 86400, t0 + 30 * 86400),
    ]  # fmt: skip
    assert invoice.lines.data[1].description == "Remaining time on 2 \u00d7 Plus after 20 Mar 2030"

    quiet = await client.v1.subscriptions.update_async(
        sub.id, {"items": [{"id": item.id, "price": "price_basic"}], "proration_behavior": "none"}
    )
    assert quiet.latest_invoice == invoice.id  # nothing invoiced: billed from the next one


async def test_a_declined_proration_with_error_if_incomplete_changes_nothing(
    client: stripe.StripeClient, customer: stripe.Customer, fake: FakeStripe
) -> None:
    fake.add_price("price_big", 9900)
    sub = await client.v1.subscriptions.create_async(
        {"customer": customer.id, "items": [{"price": "price_monthly"}],
         "default_payment_method": "pm_card_visa"}
    )  # fmt: skip
    await client.v1.subscriptions.update_async(
        sub.id, {"default_payment_method": "pm_card_chargeDeclined"}
    )
    item = sub["items"].data[0]

    with pytest.raises(stripe.CardError):
        await client.v1.subscriptions.update_async(
            sub.id,
            {"items": [{"id": item.id, "price": "price_big"}],
             "proration_behavior": "always_invoice", "payment_behavior": "error_if_incomplete"},
        )  # fmt: skip

    stored = fake.subscriptions[sub.id]
    assert stored["items"]["data"][0]["price"]["id"] == "price_monthly"
    assert stored["latest_invoice"] == sub.latest_invoice


# --------------------------------------------------------------------------- failure injection


async def test_a_slow_response_beyond_the_httpx_timeout_raises_api_connection_error(
    base_url: str, fake: FakeStripe
) -> None:
    http = stripe.HTTPXClient(timeout=0.2)
    slow_client = stripe.StripeClient(API_KEY, base_addresses={"api": base_url}, http_client=http)
    fake.delay_seconds = 0.6
    try:
        with pytest.raises(stripe.APIConnectionError) as caught:
            await slow_client.v1.payment_intents.create_async(intent(), {"idempotency_key": "slow"})
        assert caught.value.should_retry is True
        assert fake.created["payment_intent"] == 1  # it happened; only the answer was lost
        fake.delay_seconds = 0
        retried = await slow_client.v1.payment_intents.create_async(
            intent(), {"idempotency_key": "slow"}
        )
        assert retried.id in fake.payment_intents
        assert fake.created["payment_intent"] == 1
    finally:
        await http.close_async()


async def test_fail_next_answers_api_errors_and_the_sdk_can_retry_them(
    client: stripe.StripeClient, fake: FakeStripe
) -> None:
    fake.fail_next(500)
    with pytest.raises(stripe.APIError) as caught:
        await client.v1.customers.create_async({"email": "a@example.com"})
    assert caught.value.http_status == 500
    fake.fail_next(503)
    created = await client.v1.customers.create_async(
        {"email": "a@example.com"}, {"max_network_retries": 1, "idempotency_key": "cus-1"}
    )
    assert created.id in fake.customers
    assert [r.headers["idempotency-key"] for r in fake.requests[-2:]] == ["cus-1", "cus-1"]
    assert len(fake.customers) == 1


# --------------------------------------------------------------------------- webhooks


def test_a_signed_event_is_accepted_by_construct_event_and_a_tampered_one_is_not(
    fake: FakeStripe,
) -> None:
    pi = {"id": "pi_x", "object": "payment_intent", "status": "succeeded", "amount": 1999}
    payload = fake.event("payment_intent.succeeded", pi, event_id="evt_1")
    header = sign(payload, WEBHOOK_SECRET)
    event = stripe.Webhook.construct_event(payload, header, WEBHOOK_SECRET)
    assert event.id == "evt_1"
    assert event.type == "payment_intent.succeeded"
    assert isinstance(event.data.object, stripe.PaymentIntent)
    body = json.loads(payload)
    assert body["api_version"] == "2026-10-28.endive"
    assert body["request"] == {"id": None, "idempotency_key": None}
    assert b" " not in payload
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(payload.replace(b"pi_x", b"pi_y"), header, WEBHOOK_SECRET)


def test_sign_matches_the_sdk_helper_for_a_given_timestamp() -> None:
    payload = b'{"id":"evt_1"}'
    now = int(time.time())
    assert sign(payload, WEBHOOK_SECRET, now) == (
        stripe.WebhookSignature.generate_signature_header(payload.decode(), WEBHOOK_SECRET, now)
    )
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(
            payload, sign(payload, WEBHOOK_SECRET, now - 600), WEBHOOK_SECRET
        )


# --------------------------------------------------------------------------- saved payment methods


async def test_a_payment_method_attached_to_one_customer_cannot_pay_for_another(
    fake: FakeStripe, client: stripe.StripeClient, customer: stripe.Customer
) -> None:
    other = await client.v1.customers.create_async({"email": "bob@example.com"})
    attached = await client.v1.payment_methods.attach_async(
        "pm_card_visa", {"customer": customer.id}
    )
    assert attached.customer == customer.id
    assert attached.id.startswith("pm_")
    assert attached.id != "pm_card_visa"  # a new, saved one
    price = await client.v1.prices.create_async(
        {"unit_amount": 999, "currency": "usd", "recurring": {"interval": "month"},
         "product_data": {"name": "Pro"}}
    )  # fmt: skip
    before = dict(fake.created)

    with pytest.raises(stripe.InvalidRequestError, match="attached to a different Customer"):
        await client.v1.payment_intents.create_async(
            intent(customer=other.id, payment_method=attached.id, confirm=True, off_session=True)
        )
    with pytest.raises(stripe.InvalidRequestError, match="attached to a different Customer"):
        await client.v1.payment_intents.create_async(
            intent(payment_method=attached.id, confirm=True)  # no customer at all
        )
    with pytest.raises(stripe.InvalidRequestError, match="attached to a different Customer"):
        await client.v1.subscriptions.create_async(
            {"customer": other.id, "items": [{"price": price.id}],
             "default_payment_method": attached.id}
        )  # fmt: skip
    with pytest.raises(stripe.InvalidRequestError, match="already been attached"):
        await client.v1.payment_methods.attach_async(attached.id, {"customer": other.id})

    assert dict(fake.created) == before  # nothing was created, nothing charged
    assert not any(pi["status"] == "succeeded" for pi in fake.payment_intents.values())
    own = await client.v1.payment_intents.create_async(
        intent(customer=customer.id, payment_method=attached.id, confirm=True, off_session=True)
    )
    assert own.status == "succeeded"


async def test_an_unconfirmed_intent_cannot_be_confirmed_with_another_customers_method(
    fake: FakeStripe, client: stripe.StripeClient, customer: stripe.Customer
) -> None:
    other = await client.v1.customers.create_async({"email": "bob@example.com"})
    method = fake.attach_payment_method(customer.id)
    pending = await client.v1.payment_intents.create_async(intent(customer=other.id))

    with pytest.raises(stripe.InvalidRequestError, match="attached to a different Customer"):
        await client.v1.payment_intents.confirm_async(pending.id, {"payment_method": method})

    assert fake.payment_intents[pending.id]["status"] == "requires_payment_method"
    assert fake.payment_intents[pending.id]["payment_method"] is None


async def test_a_payment_intent_that_succeeded_cannot_be_canceled(
    client: stripe.StripeClient, fake: FakeStripe
) -> None:
    pi = await client.v1.payment_intents.create_async(intent())
    fake.succeed(pi.id)
    with pytest.raises(stripe.InvalidRequestError) as caught:
        await client.v1.payment_intents.cancel_async(pi.id)
    assert caught.value.code == "payment_intent_unexpected_state"
    assert fake.payment_intents[pi.id]["status"] == "succeeded"
