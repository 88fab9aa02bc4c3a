"""The YooKassa gateway: redirect payments and recurring charges, on the official SDK.

The SDK is synchronous (`requests`) and sets no HTTP timeout, so every call runs in a
worker thread through `_TimedApiClient`, which gives requests a real timeout and turns
a network failure into `TransientError` (the SDK reports it as an AttributeError).
Payments are created through the SDK's `ApiClient.request` with our own JSON body,
because `Payment.create` rounds `amount.value` through a float; our amount is the
exact decimal string of the integer minor units.
A notification carries no signature: it is only a claim. The worker re-reads the
payment or refund it names and acts on what YooKassa returns (status, amount, currency,
our transaction id, the saved method); a refund must belong to the payment the
notification names. An object YooKassa does not know (404) is a final "no", not an
outage to retry.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import requests
from yookassa import Configuration
from yookassa.client import ApiClient
from yookassa.domain.exceptions import ApiError

from billing_contracts.money import MoneyFormatError
from billing_worker.domain.errors import ProviderError, TransientError
from billing_worker.domain.events import PaymentOutcome, ProviderEvent, RefundFacts
from billing_worker.domain.money import format_minor, parse_minor
from billing_worker.providers.base import (
    PaymentRequest,
    PaymentResult,
    PaymentStatus,
    RefundRequest,
    RefundResult,
)
from billing_worker.providers.observed import observed
from billing_worker.providers.yookassa import NAME, setup, webhook
from billing_worker.providers.yookassa.refunds import refund_result

_STATUS = {
    "pending": PaymentStatus.PENDING,
    "waiting_for_capture": PaymentStatus.PENDING,
    "succeeded": PaymentStatus.SUCCEEDED,
    "canceled": PaymentStatus.FAILED,
}
DEFAULT_API_URL = "https://api.yookassa.ru/v3"


class _TimedApiClient(ApiClient):  # type: ignore[misc]
    def __init__(self, timeout: float) -> None:
        super().__init__()
        self._http_timeout = timeout

    def get_session(self) -> requests.Session:
        session: requests.Session = super().get_session()
        session.request = functools.partial(session.request, timeout=self._http_timeout)  # type: ignore[method-assign]
        return session

    def request(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().request(*args, **kwargs)
        except AttributeError as error:  # the SDK's way of reporting a network failure
            cause = error.__context__
            if isinstance(cause, requests.RequestException):
                raise TransientError(f"YooKassa unreachable: {type(cause).__name__}") from None
            raise


class YooKassaGateway(setup.SetupCalls):
    name = NAME
    needs_customer = False  # YooKassa has no customer object; saved methods are per payment
    trusts_method_ids = True  # it charges any saved method id of the shop
    rereadable = True

    def __init__(
        self, account_id: str, secret_key: str, *, api_url: str | None = None,
        timeout: float = 20.0, setup_amount: tuple[str, str] = ("1.00", "RUB"),
    ) -> None:  # fmt: skip
        # The SDK keeps its configuration in class state: one YooKassa shop per process.
        Configuration.configure(account_id, secret_key, api_url=api_url or DEFAULT_API_URL)
        self._timeout = timeout
        self.setup_value, self.setup_currency = setup_amount  # a card setup's held amount

    @observed("create_customer")
    async def create_customer(self, user_id: str, email: str | None, idempotency_key: str) -> str:
        raise NotImplementedError("YooKassa has no customers")

    @observed("create_payment")
    async def create_payment(self, request: PaymentRequest) -> PaymentResult:
        body: dict[str, Any] = {
            "amount": {
                "value": _value(request.amount_minor, request.currency),
                "currency": request.currency,
            },
            "capture": True,
            "description": (request.description or f"Deposit {request.transaction_id}")[:128],
            "metadata": {"transaction_id": str(request.transaction_id), "user_id": request.user_id},
        }
        if request.payment_method_id:  # a saved method: a recurring charge, no customer present
            body["payment_method_id"] = request.payment_method_id
        else:
            if not request.return_url:
                raise ProviderError("a YooKassa payment needs return_url for the redirect")
            body["confirmation"] = {"type": "redirect", "return_url": request.return_url}
            body["save_payment_method"] = True
        if request.receipt is not None:  # 54-FZ: built in phase one, sent on every retry
            body["receipt"] = dict(request.receipt)
        headers = {"Idempotence-Key": f"pay-{request.idempotency_key}"}
        payment = await self._call("POST", "/payments", headers=headers, body=body)
        return _result(payment)

    @observed("fetch_payment")
    async def fetch_payment(self, provider_ref: str) -> PaymentResult:
        return _result(await self._call("GET", f"/payments/{provider_ref}"))

    @observed("cancel_payment")
    async def cancel_payment(self, provider_ref: str, idempotency_key: str) -> PaymentResult:
        """YooKassa's API cancels only a payment `waiting_for_capture`; a `pending` one (the
        customer has not paid) cannot be canceled: YooKassa cancels it by itself when its
        confirmation expires, and the reconciler's re-read then fails the transaction."""
        payment = await self._call("GET", f"/payments/{provider_ref}")
        if payment.get("status") == "waiting_for_capture":
            headers = {"Idempotence-Key": f"cancel-{idempotency_key}"}
            payment = await self._call(
                "POST", f"/payments/{provider_ref}/cancel", headers=headers, body={}
            )
        read = _result(payment)
        party = (payment.get("cancellation_details") or {}).get("party")
        if payment.get("status") == "canceled" and party == "merchant":  # else it failed
            return dataclasses.replace(read, status=PaymentStatus.CANCELED, action=None)
        return read

    def parse_event(self, body: bytes) -> ProviderEvent:
        return webhook.parse_event(body)

    def authenticate(self, body: bytes, headers: Mapping[str, Any]) -> None:
        """YooKassa signs nothing: the relay checks the source address, `confirm` the rest."""

    @observed("confirm")
    async def confirm(self, claim: ProviderEvent) -> ProviderEvent | None:
        if claim.event_type == setup.WAITING and claim.object_ref:  # a card setup, if ours
            try:
                return setup.setup_event(claim, await self.confirm_setup(claim.object_ref))
            except (ProviderError, KeyError, TypeError, ValueError):
                return None
        if claim.outcome is None or not claim.object_ref:
            return claim if claim.outcome is None else None
        try:
            if claim.outcome is PaymentOutcome.REFUNDED:
                return await self._confirm_refund(claim)
            return await self._confirm_payment(claim)
        except (ProviderError, MoneyFormatError, KeyError, TypeError, ValueError):
            return None  # unknown to YooKassa (404) or not an answer we can trust

    async def _confirm_payment(self, claim: ProviderEvent) -> ProviderEvent | None:
        payment = await self._call("GET", f"/payments/{claim.object_ref}")
        if setup.is_setup(payment):  # a card setup's payment: it moves no money
            return setup.setup_event(claim, await self.confirm_setup(str(payment["id"])))
        result = _result(payment)
        outcome = {
            PaymentStatus.SUCCEEDED: PaymentOutcome.SUCCEEDED,
            PaymentStatus.FAILED: PaymentOutcome.FAILED,
        }.get(result.status)
        if outcome is None:
            return None
        return dataclasses.replace(
            claim, outcome=outcome, provider_ref=result.provider_ref,
            failure_code=result.failure_code, failure_message=result.failure_message,
            saved_method_ref=result.saved_method_ref, amount_minor=result.amount_minor,
            currency=result.currency, transaction_ref=result.transaction_ref,
            confirmation=dict(result.confirmation or {}),
            saved_method_card=saved_card(payment) if result.saved_method_ref else None,
        )  # fmt: skip

    async def _confirm_refund(self, claim: ProviderEvent) -> ProviderEvent | None:
        refund = await self._call("GET", f"/refunds/{claim.object_ref}")
        payment_id = str(refund.get("payment_id"))
        if refund.get("status") != "succeeded" or payment_id != claim.provider_ref:
            return None  # another payment's refund, or not (yet) made
        currency = str(refund["amount"]["currency"])
        amount = parse_minor(str(refund["amount"]["value"]), currency)
        return dataclasses.replace(
            claim, provider_ref=payment_id, saved_method_ref=None, currency=currency,
            refund=RefundFacts(ref=str(refund["id"]), currency=currency, amount_minor=amount),
            confirmation={
                "object": "refund", "id": str(refund["id"]), "status": "succeeded",
                "amount_minor": amount, "currency": currency, "payment_id": payment_id,
            },
        )  # fmt: skip

    @observed("refund")
    async def refund(self, request: RefundRequest) -> RefundResult:
        """`POST /v3/refunds` (through the SDK's client, like payments: an exact amount).
        `request.extra` adds fields such as the refund's 54-FZ `receipt`."""
        body: dict[str, Any] = {
            "payment_id": request.payment_ref,
            "amount": {
                "value": _value(request.amount_minor, request.currency),
                "currency": request.currency,
            },
            **request.extra,
        }
        if request.reason:
            body["description"] = request.reason[:250]
        headers = {"Idempotence-Key": f"refund-{request.idempotency_key}"}
        return refund_result(await self._call("POST", "/refunds", headers=headers, body=body))

    @observed("fetch_refund")
    async def fetch_refund(self, ref: str) -> RefundResult:
        return refund_result(await self._call("GET", f"/refunds/{ref}"))

    async def _call(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, body: Any = None
    ) -> dict[str, Any]:
        def call() -> dict[str, Any]:
            return _TimedApiClient(self._timeout).request(method, path, None, headers, body)  # type: ignore[no-any-return]

        try:
            # The HTTP timeout bounds the thread; the outer one bounds the wait regardless.
            async with asyncio.timeout(self._timeout + 5):
                return await asyncio.to_thread(call)
        except TimeoutError:
            raise TransientError(f"YooKassa did not answer {method} {path} in time") from None
        except ApiError as error:
            status = getattr(error, "HTTP_CODE", None)
            detail = error.args[0] if error.args else {}
            text = detail.get("description") if isinstance(detail, dict) else str(detail)
            if isinstance(status, int) and (status >= 500 or status in (202, 429)):
                raise TransientError(f"YooKassa error {status}: {text}") from None
            raise ProviderError(f"YooKassa refused the request: {text}", status=status) from None
        except requests.RequestException as error:  # e.g. a proxy's non-JSON error page
            raise TransientError(f"YooKassa unreachable: {type(error).__name__}") from None


def _value(minor: int, currency: str) -> str:
    """YooKassa's amount.value: a decimal string with the currency's fraction digits."""
    return format_minor(minor, currency)


def _result(payment: dict[str, Any]) -> PaymentResult:
    status = _STATUS.get(str(payment.get("status")), PaymentStatus.PENDING)
    confirmation = payment.get("confirmation") or {}
    action = None
    if status is PaymentStatus.PENDING and confirmation.get("confirmation_url"):
        action = {"type": "redirect", "confirmation_url": confirmation["confirmation_url"]}
    cancellation = payment.get("cancellation_details") or {}
    amount = payment.get("amount") or {}
    currency = str(amount.get("currency", "")) or None
    minor = parse_minor(str(amount["value"]), currency) if currency and "value" in amount else None
    return PaymentResult(
        provider_ref=str(payment["id"]),
        status=status,
        action=action,
        failure_code=cancellation.get("reason"),
        failure_message=cancellation.get("party"),
        saved_method_ref=_saved_method(payment),
        amount_minor=minor,
        currency=currency,
        transaction_ref=(payment.get("metadata") or {}).get("transaction_id"),
        confirmation={
            "object": "payment",
            "id": str(payment["id"]),
            "status": str(payment.get("status")),
            "amount_minor": minor,
            "currency": currency,
        },
    )


def saved_card(payment: dict[str, Any]) -> dict[str, Any]:
    """The card of a payment's saved method as YooKassa describes it."""
    card = (payment.get("payment_method") or {}).get("card") or {}
    month, year = str(card.get("expiry_month")), str(card.get("expiry_year"))
    return {
        "brand": card.get("card_type"), "last4": card.get("last4"),
        "exp_month": int(month) if month.isascii() and month.isdigit() else None,
        "exp_year": int(year) if year.isascii() and year.isdigit() else None,
    }  # fmt: skip


def _saved_method(payment: dict[str, Any]) -> str | None:
    method = payment.get("payment_method") or {}
    return str(method["id"]) if method.get("saved") and method.get("id") else None
