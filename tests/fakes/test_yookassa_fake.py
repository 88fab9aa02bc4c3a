"""The YooKassa fake, driven through the real (synchronous) yookassa SDK."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from decimal import Decimal

import pytest
import requests
from yookassa import Configuration, Payment, Refund
from yookassa.client import ApiClient
from yookassa.domain.exceptions import (
    BadRequestError,
    InternalServerError,
    NotFoundError,
    UnauthorizedError,
)
from yookassa.domain.notification import WebhookNotificationFactory

from fakes.server import free_port, serve
from fakes.yookassa_api import FakeYooKassa

RETURN_URL = "https://example.test/return"


@pytest.fixture
def fake() -> FakeYooKassa:
    return FakeYooKassa()


@pytest.fixture
def base_url(fake: FakeYooKassa) -> Iterator[str]:
    """Serve the fake and point the SDK's global Configuration at it for one test."""
    names = ("account_id", "secret_key", "auth_token", "api_url", "timeout", "max_attempts")
    saved = {name: getattr(Configuration, name) for name in names}
    with serve(fake.app) as base:
        Configuration.configure(fake.account_id, fake.secret_key, api_url=f"{base}/v3")
        try:
            yield base
        finally:
            for name, value in saved.items():
                setattr(Configuration, name, value)


def redirect_payment(value: object = "100.00", **extra: object) -> dict[str, object]:
    return {
        "amount": {"value": value, "currency": "RUB"},
        "capture": True,
        "confirmation": {"type": "redirect", "return_url": RETURN_URL},
        "description": "Order 1",
        "metadata": {"order_id": "42"},
        **extra,
    }


def recurring_payment(method_id: str) -> dict[str, object]:
    return {
        "amount": {"value": "299.00", "currency": "RUB"},
        "capture": True,
        "payment_method_id": method_id,
        "description": "Subscription renewal",
    }


def raw_post(path: str, body: object, key: str | None = "key-1") -> dict[str, object]:
    """POST a body exactly as given, bypassing the SDK's request models."""
    headers = {"Idempotence-Key": key} if key else None
    return ApiClient().request("POST", path, None, headers, body)


def saved_method(fake: FakeYooKassa) -> str:
    """Pay a first payment that saves the card; return the saved method's id."""
    first = Payment.create(redirect_payment(save_payment_method=True))
    fake.pay(first.id)
    return first.payment_method.id


def test_a_payment_with_redirect_confirmation_is_pending_with_a_confirmation_url(
    fake: FakeYooKassa, base_url: str
) -> None:
    payment = Payment.create(redirect_payment(), idempotency_key="order-42")

    assert payment.status == "pending"
    assert payment.paid is False
    assert payment.amount.value == Decimal("100.00")
    assert payment.confirmation.confirmation_url.endswith(f"orderId={payment.id}")
    assert payment.recipient.account_id == fake.account_id
    assert payment.metadata["order_id"] == "42"
    sent = fake.requests_to("POST", "/v3/payments")[0]
    assert sent.idempotence_key == "order-42"
    assert sent.json["amount"] == {"value": "100.00", "currency": "RUB"}


def test_a_paid_payment_is_found_as_succeeded(fake: FakeYooKassa, base_url: str) -> None:
    payment = Payment.create(redirect_payment(save_payment_method=True))

    fake.pay(payment.id)
    found = Payment.find_one(payment.id)

    assert found.status == "succeeded"
    assert found.paid is True
    assert found.captured_at is not None
    assert found.refundable is True
    assert found.payment_method.saved is True


def test_a_payment_canceled_by_the_provider_carries_cancellation_details(
    fake: FakeYooKassa, base_url: str
) -> None:
    payment = Payment.create(redirect_payment())

    fake.cancel(payment.id)
    found = Payment.find_one(payment.id)

    assert found.status == "canceled"
    assert found.cancellation_details.reason == "insufficient_funds"


def test_the_same_idempotence_key_twice_creates_one_payment(
    fake: FakeYooKassa, base_url: str
) -> None:
    first = Payment.create(redirect_payment(), idempotency_key="same-key")
    second = Payment.create(redirect_payment(), idempotency_key="same-key")

    assert first.id == second.id
    assert len(fake.payments) == 1


def test_the_same_idempotence_key_with_a_different_body_is_refused(
    fake: FakeYooKassa, base_url: str
) -> None:
    Payment.create(redirect_payment("100.00"), idempotency_key="same-key")

    with pytest.raises(BadRequestError) as error:
        Payment.create(redirect_payment("200.00"), idempotency_key="same-key")

    assert error.value.content["code"] == "invalid_request"
    assert error.value.content["parameter"] == "Idempotence-Key"
    assert len(fake.payments) == 1


def test_a_post_without_an_idempotence_key_is_refused(fake: FakeYooKassa, base_url: str) -> None:
    with pytest.raises(BadRequestError) as error:
        raw_post("/payments", redirect_payment(), key=None)

    assert error.value.content["parameter"] == "Idempotence-Key"
    assert fake.payments == {}


@pytest.mark.parametrize("value", ["100.5", "100", "100.001", 100.5, "-1.00", "1,00"])
def test_an_amount_value_without_exactly_two_fraction_digits_is_refused(
    fake: FakeYooKassa, base_url: str, value: object
) -> None:
    with pytest.raises(BadRequestError) as error:
        raw_post("/payments", redirect_payment(value))

    assert error.value.content["code"] == "invalid_request"
    assert error.value.content["parameter"] == "amount.value"
    assert fake.payments == {}


def test_the_sdk_itself_pads_the_amount_to_two_fraction_digits(
    fake: FakeYooKassa, base_url: str
) -> None:
    Payment.create(redirect_payment("100.5"))

    assert fake.requests[-1].json["amount"]["value"] == "100.50"


def test_a_recurring_charge_with_a_saved_method_succeeds_immediately(
    fake: FakeYooKassa, base_url: str
) -> None:
    method_id = saved_method(fake)

    charge = Payment.create(recurring_payment(method_id))

    assert charge.status == "succeeded"
    assert charge.paid is True
    assert charge.captured_at is not None
    assert charge.confirmation is None
    assert charge.payment_method.id == method_id


def test_a_recurring_charge_with_a_declining_method_is_canceled(
    fake: FakeYooKassa, base_url: str
) -> None:
    method_id = saved_method(fake)
    fake.declining_methods.add(method_id)

    charge = Payment.create(recurring_payment(method_id))

    assert charge.status == "canceled"
    assert charge.paid is False
    assert charge.cancellation_details.party == "yoo_money"
    assert charge.cancellation_details.reason == "card_expired"


def test_a_recurring_charge_with_a_method_that_was_never_saved_is_refused(
    fake: FakeYooKassa, base_url: str
) -> None:
    unsaved = Payment.create(redirect_payment(save_payment_method=False))
    fake.pay(unsaved.id)

    with pytest.raises(BadRequestError) as error:
        Payment.create(recurring_payment(unsaved.payment_method.id))

    assert error.value.content["parameter"] == "payment_method_id"


def test_a_payment_without_capture_waits_for_capture_then_captures_or_cancels(
    fake: FakeYooKassa, base_url: str
) -> None:
    to_capture = Payment.create(redirect_payment(capture=False))
    to_cancel = Payment.create(redirect_payment(capture=False))
    fake.pay(to_capture.id)
    fake.pay(to_cancel.id)
    assert Payment.find_one(to_capture.id).status == "waiting_for_capture"

    captured = Payment.capture(to_capture.id)
    canceled = Payment.cancel(to_cancel.id)

    assert captured.status == "succeeded"
    assert canceled.status == "canceled"
    assert canceled.cancellation_details.party == "merchant"


def test_a_refund_succeeds_and_cannot_exceed_the_payment(fake: FakeYooKassa, base_url: str) -> None:
    payment = Payment.create(redirect_payment("100.00"))
    fake.pay(payment.id)

    refund = Refund.create({"payment_id": payment.id, "amount": {"value": "60", "currency": "RUB"}})
    with pytest.raises(BadRequestError):
        Refund.create({"payment_id": payment.id, "amount": {"value": "50", "currency": "RUB"}})

    assert refund.status == "succeeded"
    assert Refund.find_one(refund.id).payment_id == payment.id
    assert fake.payments[payment.id]["refunded_amount"] == {"value": "60.00", "currency": "RUB"}


def test_a_payment_notification_parses_with_the_sdk_factory(
    fake: FakeYooKassa, base_url: str
) -> None:
    payment = Payment.create(redirect_payment())
    fake.pay(payment.id)

    body = fake.notification("payment.succeeded", payment.id)
    notification = WebhookNotificationFactory().create(json.loads(body))

    assert notification.event == "payment.succeeded"
    assert notification.object.id == payment.id
    assert notification.object.status == "succeeded"
    assert notification.object.paid is True


def test_a_refund_notification_parses_with_the_sdk_factory(
    fake: FakeYooKassa, base_url: str
) -> None:
    payment = Payment.create(redirect_payment())
    fake.pay(payment.id)
    refund = Refund.create({"payment_id": payment.id, "amount": payment.amount})

    body = fake.refund_notification(refund.id)
    notification = WebhookNotificationFactory().create(json.loads(body))

    assert notification.event == "refund.succeeded"
    assert notification.object.id == refund.id
    assert notification.object.payment_id == payment.id


def test_an_unknown_payment_is_not_found(fake: FakeYooKassa, base_url: str) -> None:
    with pytest.raises(NotFoundError) as error:
        Payment.find_one("no-such-payment")

    assert error.value.content["code"] == "not_found"


def test_wrong_credentials_are_unauthorized(fake: FakeYooKassa, base_url: str) -> None:
    Configuration.configure(fake.account_id, "wrong_secret", api_url=f"{base_url}/v3")

    with pytest.raises(UnauthorizedError) as error:
        Payment.create(redirect_payment())

    assert error.value.content["code"] == "invalid_credentials"
    assert fake.payments == {}


def test_a_simulated_failure_is_not_stored_and_a_retry_with_the_same_key_succeeds(
    fake: FakeYooKassa, base_url: str
) -> None:
    fake.fail_next(500)

    with pytest.raises(InternalServerError):
        Payment.create(redirect_payment(), idempotency_key="retry-me")
    payment = Payment.create(redirect_payment(), idempotency_key="retry-me")

    assert payment.status == "pending"
    assert len(fake.payments) == 1


def test_a_delayed_response_still_creates_the_payment_so_a_retry_returns_it(
    fake: FakeYooKassa, base_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The SDK has no timeout option; patching get_session is the only way to give it one.
    make_session = ApiClient.get_session

    def session_with_timeout(client: ApiClient) -> requests.Session:
        session = make_session(client)
        session.request = functools.partial(session.request, timeout=0.3)  # type: ignore[method-assign]
        return session

    monkeypatch.setattr(ApiClient, "get_session", session_with_timeout)
    fake.delay_seconds = 30

    with pytest.raises(AttributeError) as error:
        Payment.create(redirect_payment(), idempotency_key="slow")
    assert isinstance(error.value.__context__, requests.ReadTimeout)
    monkeypatch.undo()
    fake.delay_seconds = 0  # also releases the request still sleeping in the server
    retried = Payment.create(redirect_payment(), idempotency_key="slow")

    assert list(fake.payments) == [retried.id]


def test_a_connection_failure_surfaces_from_the_sdk_as_attribute_error(base_url: str) -> None:
    Configuration.configure("123456", "test_secret", api_url=f"http://127.0.0.1:{free_port()}/v3")

    with pytest.raises(AttributeError, match="status_code") as error:
        Payment.find_one("any")

    assert isinstance(error.value.__context__, requests.ConnectionError)


def test_a_pending_or_succeeded_payment_cannot_be_canceled(
    fake: FakeYooKassa, base_url: str
) -> None:
    waiting = Payment.create(redirect_payment())
    paid = Payment.create(redirect_payment())
    fake.pay(paid.id)

    for payment_id in (waiting.id, paid.id):
        with pytest.raises(BadRequestError):
            Payment.cancel(payment_id)

    assert [fake.payments[p]["status"] for p in (waiting.id, paid.id)] == ["pending", "succeeded"]
