"""Reply envelopes -> typed results and exceptions of the client, without a broker."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from typing import Any

import pytest

from billing_contracts.client_errors import (
    ERRORS,
    BillingError,
    BillingTimeout,
    BillingUnavailable,
    CurrencyMismatch,
    Forbidden,
    IdempotencyConflict,
    InsufficientFunds,
    InternalError,
    InvalidMessage,
    InvalidState,
    MalformedReply,
    NotFound,
    ProviderError,
    error_from_reply,
    parse_reply,
)
from billing_contracts.envelope import ErrorCode
from billing_contracts.money import Money
from billing_contracts.wallet import BalanceResult


def error_reply(code: str, message: str = "refused", **details: Any) -> bytes:
    error = {"code": code, "message": message, "details": details}
    return json.dumps({"ok": False, "error": error}).encode()


@pytest.mark.parametrize(
    ("code", "error_type"),
    [
        ("invalid_message", InvalidMessage),
        ("not_found", NotFound),
        ("idempotency_conflict", IdempotencyConflict),
        ("insufficient_funds", InsufficientFunds),
        ("invalid_state", InvalidState),
        ("currency_mismatch", CurrencyMismatch),
        ("provider_error", ProviderError),
        ("internal_error", InternalError),
        ("forbidden", Forbidden),
    ],
)
def test_each_error_code_raises_its_exception_with_message_and_details(
    code: str, error_type: type[BillingError]
) -> None:
    with pytest.raises(error_type) as raised:
        parse_reply(error_reply(code, "it went wrong", invoice_id="i-1"), BalanceResult)

    assert type(raised.value) is error_type
    assert isinstance(raised.value, BillingError)
    assert raised.value.code == code
    assert raised.value.code is ErrorCode(code)
    assert raised.value.message == "it went wrong"
    assert raised.value.details == {"invoice_id": "i-1"}
    assert str(raised.value) == f"{code}: it went wrong"


def test_every_error_code_of_the_contract_has_its_exception() -> None:
    assert set(ERRORS) == set(ErrorCode)
    assert all(ERRORS[code].code == code for code in ErrorCode)


def test_an_unknown_code_is_a_plain_billing_error_carrying_it() -> None:
    with pytest.raises(BillingError) as raised:
        parse_reply(error_reply("rate_limited", "slow down", retry_after=3), BalanceResult)

    assert type(raised.value) is BillingError
    assert raised.value.code == "rate_limited"
    assert raised.value.details == {"retry_after": 3}


def test_insufficient_funds_exposes_the_balance_of_its_details() -> None:
    balance = {"amount": "2.99", "currency": "USD"}
    with_balance = error_from_reply(
        {"code": "insufficient_funds", "message": "m", "details": {"balance": balance}}
    )
    without = error_from_reply({"code": "insufficient_funds", "message": "m", "details": {}})

    assert isinstance(with_balance, InsufficientFunds)
    assert isinstance(without, InsufficientFunds)
    assert with_balance.balance == Money(amount="2.99", currency="USD")
    assert without.balance is None


def test_a_sparse_error_object_still_raises() -> None:
    error = error_from_reply({"code": "not_found"})
    assert isinstance(error, NotFound)
    assert (error.message, error.details) == ("not_found", {})
    assert isinstance(error_from_reply({}), BillingError)
    assert isinstance(error_from_reply("boom"), MalformedReply)


def test_an_ok_reply_becomes_the_typed_model() -> None:
    body = {"ok": True, "data": {"user_id": "u-1", "accounts": [
        {"currency": "JPY", "balance": {"amount": "500", "currency": "JPY"}}]}}  # fmt: skip

    for raw in (json.dumps(body).encode(), json.dumps(body), body):
        result = parse_reply(raw, BalanceResult)
        assert result.user_id == "u-1"
        assert result.accounts[0].balance == Money(amount="500", currency="JPY")


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"data": {}}',
        b'{"ok": "yes", "data": {}}',
        b'{"ok": true}',
        b'{"ok": true, "data": {"user_id": "u"}}',
        b'{"ok": true, "data": {"user_id": "u", "accounts": [{"currency": "USD", '
        b'"balance": {"amount": 1.5, "currency": "USD"}}]}}',
        b'{"ok": false, "error": "boom"}',
    ],
)
def test_a_malformed_reply_is_malformed_reply(body: bytes) -> None:
    with pytest.raises(MalformedReply) as raised:
        parse_reply(body, BalanceResult)
    assert raised.value.code == "malformed_reply"


def test_client_side_errors_are_billing_errors_and_the_standard_ones() -> None:
    timeout = BillingTimeout("no reply", details={"queue": "billing.wallet.balance"})
    unavailable = BillingUnavailable("no queue")

    assert isinstance(timeout, BillingError)
    assert isinstance(timeout, TimeoutError)
    assert (timeout.code, timeout.details) == ("timeout", {"queue": "billing.wallet.balance"})
    assert isinstance(unavailable, BillingError)
    assert isinstance(unavailable, ConnectionError)
    assert unavailable.code == "unavailable"
    assert not isinstance(NotFound("x"), TimeoutError | ConnectionError)


def test_the_contracts_and_the_error_mapping_import_without_aio_pika() -> None:
    code = (
        "import sys, billing_contracts, billing_contracts.client_errors\n"
        "assert 'aio_pika' not in sys.modules, 'aio_pika imported'\n"
        "assert 'billing_contracts.client' not in sys.modules, 'client imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)  # noqa: S603


def test_events_are_parsed_into_the_model_of_their_type() -> None:
    from billing_contracts.client import parse_event
    from billing_contracts.events import DepositCompleted

    usd = {"amount": "5.00", "currency": "USD"}
    envelope = {"event_id": str(uuid.uuid4()), "occurred_at": "2031-01-01T00:00:00Z", "version": 1}
    deposit = parse_event(json.dumps({**envelope, "type": "deposit.completed", "data": {
        "transaction_id": str(uuid.uuid4()), "user_id": "u", "amount": usd,
        "provider": "sandbox", "balance": usd}}))  # fmt: skip
    other = parse_event(json.dumps({**envelope, "type": "shop.thing", "data": {"n": 1}}))

    assert isinstance(deposit.data, DepositCompleted)
    assert deposit.data.balance == Money(amount="5.00", currency="USD")
    assert other.data == {"n": 1}
    assert str(other.event_id) == envelope["event_id"]
