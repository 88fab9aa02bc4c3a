"""A stateful, in-memory fake of the parts of the YooKassa API v3 our gateway uses.

Serve ``FakeYooKassa().app`` with ``fakes.server.serve`` and point the real SDK at it::

    fake = FakeYooKassa()
    with serve(fake.app) as base:
        Configuration.configure(fake.account_id, fake.secret_key, api_url=f"{base}/v3")
        payment = Payment.create({...})
        fake.pay(payment.id)

Endpoints: ``POST /v3/payments``, ``GET /v3/payments/{id}``, ``POST /v3/payments/{id}/capture``,
``POST /v3/payments/{id}/cancel``, ``POST /v3/refunds``, ``GET /v3/refunds/{id}``. Every request
needs HTTP Basic auth ``account_id:secret_key`` (else 401 ``invalid_credentials``); every POST
needs an ``Idempotence-Key`` (else 400 ``invalid_request``). A key replayed with the same path
and body returns the stored response; with anything else it is a 400. Only successful (200)
responses are stored, so a request that failed (validation error, ``fail_next``) can be retried
with the same key. Errors use YooKassa's shape
``{"type": "error", "id", "code", "description", "parameter"?}``.

Behaviour worth knowing:

* ``capture`` defaults to ``false`` as in the real API: a paid payment created without
  ``"capture": true`` goes to ``waiting_for_capture`` and needs ``POST .../capture``.
* ``amount.value`` must be a string with exactly two fraction digits (``"100.00"``); ``"100"``,
  ``"100.5"`` or a JSON number is a 400 with ``parameter: "amount.value"``.
* A ``payment_method_id`` is known once a payment with ``save_payment_method: true`` has been
  paid (``fake.pay``), after ``fake.add_saved_method()``, or when it is in
  ``fake.declining_methods``. Any other id is a 400.
* ``delay_seconds`` is applied *after* the request has been processed and recorded: a client
  that times out still leaves the payment behind, as a hung provider would, and a retry with the
  same Idempotence-Key then returns it. Setting ``delay_seconds`` back to 0 releases requests
  that are still waiting.
* Receipts (54-FZ): with ``requires_receipts = True`` a payment or refund without a valid
  ``receipt`` is a 400 with ``parameter: "receipt"``; a receipt is checked whenever one is
  sent (``fakes/yookassa_receipts.py``), and each accepted one is kept in ``receipts`` by
  payment or refund id.
* ``notification()`` does not check that the event matches the stored status. Tests can use that
  to send a forged or stale notification.

What the SDK (yookassa 3.13.0, ``yookassa/client.py`` and ``configuration.py``) does:

* ``api_url``: ``Configuration.configure(account_id, secret_key, api_url=...)`` stores it in
  global class state (every ``configure`` call resets the omitted options to their defaults).
  ``ApiClient`` sends to ``Configuration.api_url + "/payments"`` and so on, so the URL has to
  include ``/v3``. Plain ``http://`` works.
* No HTTP timeout: ``session.request(...)`` is called without ``timeout=``, so a hung provider
  blocks the calling thread for ever. No ``Configuration`` option reaches ``requests``. The
  ``timeout`` option (default 1800) only sets the urllib3 ``Retry`` ``backoff_factor``
  (``timeout / 1000`` seconds), and ``socket.setdefaulttimeout`` has no effect, because requests
  passes ``timeout=None`` to urllib3 explicitly. The only hook is patching
  ``ApiClient.get_session`` (a fresh ``requests.Session`` per call) to return a session that
  supplies a default ``timeout``. That affects the whole process. Even then, the
  ``requests.Timeout`` surfaces as the ``AttributeError`` described below. The alternative is to
  bound the call from outside (``anyio.to_thread.run_sync`` in a task with a timeout), but the
  worker thread stays blocked until the socket gives up.
* Errors: HTTP 400/401/403/404/410/429/500/202 raise ``BadRequestError``, ``UnauthorizedError``,
  ``ForbiddenError``, ``NotFoundError``, ``GoneError``, ``TooManyRequestsError``,
  ``InternalServerError`` and ``ResponseProcessingError``. Other statuses raise ``ApiError``. All
  of these live in ``yookassa.domain.exceptions``, and ``e.content`` / ``e.args[0]`` hold the
  error JSON. An error body that is not JSON (for example a proxy's HTML 502) raises
  ``requests.exceptions.JSONDecodeError`` instead. A transport failure (connection refused or
  reset, or a timeout if one was patched in) becomes
  ``AttributeError: 'NoneType' object has no attribute 'status_code'``: ``ApiClient.request``
  catches every exception and reads ``e.response.status_code``, and the original requests
  exception is only kept as ``__context__``.
* Retries: ``get_session`` mounts ``Retry(total=max_attempts, status_forcelist=[202],
  allowed_methods=["POST"])`` for ``https://`` only. Over ``http://`` (this fake) nothing is
  retried: a 202 raises ``ResponseProcessingError`` at once, and a refused connection fails at
  once. Over https, connect errors are retried too, and a 202 that persists ends as a
  ``RetryError``, which becomes the same ``AttributeError``. That last point comes from reading
  the source; it was not run.
* ``Payment.create`` normalises ``amount.value`` itself: ``Amount.value`` is
  ``Decimal(str(float(v))).quantize(Decimal("1.11"), ROUND_HALF_UP)``, so ``"100.5"`` goes out as
  ``"100.50"``. This goes through ``float``, which loses precision for large values. The strict
  amount check here therefore only sees what a raw request sends
  (``ApiClient().request("POST", "/payments", None, headers, dict_body)``). ``Payment.create``
  also adds ``metadata.cms_name = "yookassa_sdk_python"`` and generates a uuid4
  Idempotence-Key when none is given.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from fakes.yookassa_receipts import InvalidReceipt, check_receipt

Json = dict[str, Any]
Action = Callable[..., Json]

_AMOUNT_VALUE = re.compile(r"[0-9]+\.[0-9]{2}")
_CURRENCY = re.compile(r"[A-Z]{3}")
_ERROR_CODES = {
    400: "invalid_request",
    401: "invalid_credentials",
    403: "forbidden",
    404: "not_found",
    429: "too_many_requests",
    500: "internal_server_error",
}
_TEST_CARD = {
    "first6": "555555",
    "last4": "4444",
    "expiry_year": "2030",
    "expiry_month": "12",
    "card_type": "MasterCard",
    "issuer_country": "RU",
}


class ApiFailure(Exception):
    """An error response with YooKassa's error body."""

    def __init__(self, status: int, description: str, parameter: str | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.body = error_body(status, description, parameter)


def error_body(status: int, description: str, parameter: str | None = None) -> Json:
    body: Json = {
        "type": "error",
        "id": str(uuid.uuid4()),
        "code": _ERROR_CODES.get(status, "error"),
        "description": description,
    }
    if parameter is not None:
        body["parameter"] = parameter
    return body


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    json: Any  # the parsed body; None when empty or not JSON

    @property
    def idempotence_key(self) -> str | None:
        return self.headers.get("idempotence-key")


def new_id() -> str:
    """An id shaped like YooKassa's, e.g. ``2d6b3c1e-000f-5000-9000-1a2b3c4d5e6f``."""
    return f"{secrets.token_hex(4)}-000f-5000-9000-{secrets.token_hex(6)}"


def now_iso(offset: timedelta = timedelta()) -> str:
    """``2024-05-01T10:20:30.123Z``, YooKassa's timestamp format."""
    return (datetime.now(UTC) + offset).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_amount(raw: Any, parameter: str = "amount") -> Json:
    if not isinstance(raw, dict):
        raise ApiFailure(400, "Amount is required", parameter)
    value, currency = raw.get("value"), raw.get("currency")
    if not isinstance(value, str) or not _AMOUNT_VALUE.fullmatch(value):
        raise ApiFailure(
            400,
            f"Invalid amount value {value!r}: expected a string with 2 fraction digits",
            f"{parameter}.value",
        )
    if Decimal(value) <= 0:
        raise ApiFailure(400, "Amount must be greater than zero", f"{parameter}.value")
    if not isinstance(currency, str) or not _CURRENCY.fullmatch(currency):
        raise ApiFailure(400, f"Invalid currency {currency!r}", f"{parameter}.currency")
    return {"value": value, "currency": currency}


def _money(value: Decimal, currency: str) -> Json:
    return {"value": f"{value:.2f}", "currency": currency}


def _check_metadata(metadata: Any) -> None:
    if not isinstance(metadata, dict) or len(metadata) > 16:
        raise ApiFailure(400, "Metadata must be an object with at most 16 keys", "metadata")
    for key, value in metadata.items():
        if len(key) > 32 or not isinstance(value, str) or len(value) > 512:
            raise ApiFailure(400, f"Invalid metadata entry {key!r}", "metadata")


class FakeYooKassa:
    def __init__(
        self,
        account_id: str = "123456",
        secret_key: str = "test_secret",  # noqa: S107 - the fake's test credentials
        gateway_id: str = "100500",
    ) -> None:
        self.account_id = account_id
        self.secret_key = secret_key
        self.gateway_id = gateway_id
        self.payments: dict[str, Json] = {}
        self.refunds: dict[str, Json] = {}
        self.requests: list[RecordedRequest] = []
        self.saved_methods: set[str] = set()
        self.declining_methods: set[str] = set()
        # Saved methods whose payments stay `pending` (the bank is slow to answer) until
        # `pay` or `cancel`, as a redirect payment does.
        self.pending_methods: set[str] = set()
        self.delay_seconds: float = 0.0
        # 54-FZ: a shop with fiscalization on refuses payments and refunds without a valid
        # receipt (400, parameter "receipt"); every receipt accepted is kept by object id.
        self.requires_receipts = False
        self.receipts: dict[str, Json] = {}
        # What a new refund's status is: "pending" ones wait for `settle_refund`.
        self.refund_status = "succeeded"
        self._capture: dict[str, bool] = {}  # payment id -> the "capture" flag it was created with
        self._idempotent: dict[str, tuple[str, Any, Json]] = {}  # key -> (path, body, response)
        self._failures: list[int] = []
        self._lock = threading.RLock()
        self.app = Starlette(
            routes=[
                Route("/v3/payments", self._endpoint(self._create_payment), methods=["POST"]),
                Route("/v3/payments/{payment_id}", self._endpoint(self._get_payment)),
                Route(
                    "/v3/payments/{payment_id}/capture",
                    self._endpoint(self._capture_payment),
                    methods=["POST"],
                ),
                Route(
                    "/v3/payments/{payment_id}/cancel",
                    self._endpoint(self._cancel_payment),
                    methods=["POST"],
                ),
                Route("/v3/refunds", self._endpoint(self._create_refund), methods=["POST"]),
                Route("/v3/refunds/{refund_id}", self._endpoint(self._get_refund)),
            ]
        )

    # ----- control helpers (called from the test thread) -----

    def pay(self, payment_id: str) -> Json:
        """The customer completed the redirect: ``succeeded``, or ``waiting_for_capture``
        when the payment was created without ``"capture": true``."""
        with self._lock:
            payment = self.payments[payment_id]
            if payment["status"] != "pending":
                raise ValueError(f"payment {payment_id} is {payment['status']}, not pending")
            self._mark_paid(payment)
            return copy.deepcopy(payment)

    def cancel(
        self, payment_id: str, reason: str = "insufficient_funds", party: str = "yoo_money"
    ) -> Json:
        """The payment failed or expired on YooKassa's side."""
        with self._lock:
            payment = self.payments[payment_id]
            if payment["status"] not in ("pending", "waiting_for_capture"):
                raise ValueError(f"payment {payment_id} is already {payment['status']}")
            self._mark_canceled(payment, party, reason)
            return copy.deepcopy(payment)

    def add_saved_method(self, method_id: str | None = None) -> str:
        """Register a saved payment method (as if an earlier payment had saved it)."""
        method_id = method_id or new_id()
        with self._lock:
            self.saved_methods.add(method_id)
        return method_id

    def fail_next(self, status: int = 500, n: int = 1) -> None:
        """The next ``n`` requests (any endpoint, before auth) get ``status`` without being
        processed."""
        with self._lock:
            self._failures.extend([status] * n)

    def notification(self, event: str, payment_id: str) -> bytes:
        """The webhook body YooKassa would POST for ``event``, with the object as stored now.
        For ``refund.*`` events pass a refund id."""
        if event.startswith("refund."):
            return self.refund_notification(payment_id, event)
        with self._lock:
            obj = copy.deepcopy(self.payments[payment_id])
        return json.dumps({"type": "notification", "event": event, "object": obj}).encode()

    def refund_notification(self, refund_id: str, event: str = "refund.succeeded") -> bytes:
        with self._lock:
            obj = copy.deepcopy(self.refunds[refund_id])
        return json.dumps({"type": "notification", "event": event, "object": obj}).encode()

    def requests_to(self, method: str, path: str) -> list[RecordedRequest]:
        """Recorded requests for ``method`` and ``path`` (e.g. ``"POST", "/v3/payments"``)."""
        with self._lock:
            return [r for r in self.requests if r.method == method and r.path == path]

    # ----- HTTP plumbing -----

    def _endpoint(self, action: Action) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> JSONResponse:
            raw = await request.body()
            try:
                body = json.loads(raw) if raw else None
                body_is_json = True
            except ValueError:
                body, body_is_json = None, False
            headers = {k.lower(): v for k, v in request.headers.items()}
            recorded = RecordedRequest(request.method, request.url.path, headers, body)
            with self._lock:
                self.requests.append(recorded)
                status, payload = self._handle(
                    recorded, body_is_json, action, dict(request.path_params)
                )
            await self._delay()
            return JSONResponse(payload, status_code=status)

        return endpoint

    async def _delay(self) -> None:
        # Polls instead of one long sleep so that a test (another thread) can shorten the
        # delay, or set it to 0 to release requests that are waiting.
        started = time.monotonic()
        while (remaining := self.delay_seconds - (time.monotonic() - started)) > 0:
            await asyncio.sleep(min(remaining, 0.05))

    def _handle(
        self, req: RecordedRequest, body_is_json: bool, action: Action, params: dict[str, str]
    ) -> tuple[int, Json]:
        if self._failures:
            status = self._failures.pop(0)
            if status == 202:
                return status, {"type": "processing", "id": str(uuid.uuid4()), "retry_after": 1800}
            return status, error_body(status, f"Simulated failure (HTTP {status})")
        try:
            self._authenticate(req.headers.get("authorization", ""))
            if req.method != "POST":
                return 200, action(None, **params)
            key = req.idempotence_key
            if not key:
                raise ApiFailure(400, "Idempotence-Key header is required", "Idempotence-Key")
            if len(key) > 64:
                raise ApiFailure(400, "Idempotence key is too long (max 64)", "Idempotence-Key")
            if not body_is_json:
                raise ApiFailure(400, "Request body is not valid JSON")
            if key in self._idempotent:
                path, body, response = self._idempotent[key]
                if (path, body) != (req.path, req.json):
                    raise ApiFailure(
                        400,
                        "Idempotence key duplicated: it was already used for a different request",
                        "Idempotence-Key",
                    )
                return 200, copy.deepcopy(response)
            response = action(req.json, **params)
            self._idempotent[key] = (req.path, copy.deepcopy(req.json), copy.deepcopy(response))
            return 200, response
        except ApiFailure as failure:
            return failure.status, failure.body

    def _authenticate(self, header: str) -> None:
        scheme, _, token = header.partition(" ")
        try:
            decoded = base64.b64decode(token, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            decoded = ""
        if scheme.lower() != "basic" or decoded != f"{self.account_id}:{self.secret_key}":
            raise ApiFailure(
                401,
                "Authentication failed: check the shop ID and secret key (HTTP Basic)",
                "Authorization",
            )

    # ----- state transitions (called with the lock held) -----

    def _find(self, store: dict[str, Json], object_id: str, what: str) -> Json:
        if object_id not in store:
            raise ApiFailure(404, f"{what} {object_id} not found")
        return store[object_id]

    def _mark_paid(self, payment: Json) -> None:
        payment["paid"] = True
        payment["payment_method"]["card"] = dict(_TEST_CARD)
        payment["income_amount"] = dict(payment["amount"])
        if self._capture[payment["id"]]:
            payment["status"] = "succeeded"
            payment["captured_at"] = now_iso()
            payment["refundable"] = True
        else:
            payment["status"] = "waiting_for_capture"
            payment["expires_at"] = now_iso(timedelta(days=7))
        if payment["payment_method"]["saved"]:
            self.saved_methods.add(payment["payment_method"]["id"])

    @staticmethod
    def _mark_canceled(payment: Json, party: str, reason: str) -> None:
        payment["status"] = "canceled"
        payment["refundable"] = False
        payment["cancellation_details"] = {"party": party, "reason": reason}
        payment.pop("expires_at", None)

    # ----- API actions (called with the lock held) -----

    def _create_payment(self, body: Any) -> Json:
        if not isinstance(body, dict):
            raise ApiFailure(400, "Request body must be a JSON object")
        amount = parse_amount(body.get("amount"))
        capture = body.get("capture", False)
        save = body.get("save_payment_method", False)
        for name, flag in (("capture", capture), ("save_payment_method", save)):
            if not isinstance(flag, bool):
                raise ApiFailure(400, f"{name} must be a boolean", name)
        description = body.get("description")
        if description is not None and (not isinstance(description, str) or len(description) > 128):
            raise ApiFailure(
                400, "Description must be a string of at most 128 chars", "description"
            )
        if "metadata" in body:
            _check_metadata(body["metadata"])
        receipt = self._receipt(body, amount)

        payment_id = new_id()
        payment: Json = {"id": payment_id, "status": "pending", "paid": False, "amount": amount}
        if description is not None:
            payment["description"] = description
        payment["recipient"] = {"account_id": self.account_id, "gateway_id": self.gateway_id}

        method_id = body.get("payment_method_id")
        if method_id is not None:
            if method_id not in self.saved_methods | self.declining_methods:
                raise ApiFailure(
                    400, f"Payment method {method_id!r} is not saved", "payment_method_id"
                )
            method = {"type": "bank_card", "id": method_id, "saved": True}
        else:
            confirmation = body.get("confirmation")
            if not isinstance(confirmation, dict) or confirmation.get("type") != "redirect":
                raise ApiFailure(400, "A redirect confirmation is required", "confirmation.type")
            if (
                not isinstance(confirmation.get("return_url"), str)
                or not confirmation["return_url"]
            ):
                raise ApiFailure(400, "return_url is required", "confirmation.return_url")
            method = {"type": "bank_card", "id": new_id(), "saved": save}
        payment["payment_method"] = {**method, "title": "Bank card *4444"}
        payment["created_at"] = now_iso()
        if method_id is None:
            payment["confirmation"] = {
                "type": "redirect",
                "confirmation_url": (
                    f"https://yoomoney.ru/checkout/payments/v2/contract?orderId={payment_id}"
                ),
            }
        payment["test"] = True
        payment["refundable"] = False
        if "metadata" in body:
            payment["metadata"] = dict(body["metadata"])

        self.payments[payment_id] = payment
        self._capture[payment_id] = capture
        if receipt is not None:
            payment["receipt_registration"] = "pending"
            self.receipts[payment_id] = receipt
        if method_id in self.declining_methods:
            self._mark_canceled(payment, "yoo_money", "card_expired")
        elif method_id is not None and method_id not in self.pending_methods:
            self._mark_paid(payment)
        return copy.deepcopy(payment)

    def _receipt(self, body: Json, amount: Json) -> Json | None:
        try:
            return check_receipt(body.get("receipt"), amount, self.requires_receipts)
        except InvalidReceipt as invalid:
            raise ApiFailure(400, invalid.description, invalid.parameter) from None

    def _get_payment(self, body: Any, payment_id: str) -> Json:
        return copy.deepcopy(self._find(self.payments, payment_id, "Payment"))

    def _capture_payment(self, body: Any, payment_id: str) -> Json:
        payment = self._find(self.payments, payment_id, "Payment")
        if payment["status"] != "waiting_for_capture":
            raise ApiFailure(400, f"Payment is {payment['status']}, not waiting_for_capture")
        if isinstance(body, dict) and "amount" in body:
            amount = parse_amount(body["amount"])
            if Decimal(amount["value"]) > Decimal(payment["amount"]["value"]):
                raise ApiFailure(400, "Capture amount exceeds the payment amount", "amount.value")
            payment["amount"] = payment["income_amount"] = amount
        payment.pop("expires_at", None)
        payment["status"] = "succeeded"
        payment["captured_at"] = now_iso()
        payment["refundable"] = True
        return copy.deepcopy(payment)

    def _cancel_payment(self, body: Any, payment_id: str) -> Json:
        payment = self._find(self.payments, payment_id, "Payment")
        if payment["status"] != "waiting_for_capture":
            raise ApiFailure(400, f"Payment is {payment['status']}, not waiting_for_capture")
        self._mark_canceled(payment, "merchant", "canceled_by_merchant")
        return copy.deepcopy(payment)

    def _create_refund(self, body: Any) -> Json:
        if not isinstance(body, dict):
            raise ApiFailure(400, "Request body must be a JSON object")
        payment_id = body.get("payment_id")
        payment = self.payments.get(payment_id) if isinstance(payment_id, str) else None
        if payment is None:
            raise ApiFailure(400, f"Payment {payment_id!r} not found", "payment_id")
        if payment["status"] != "succeeded":
            raise ApiFailure(400, f"Payment is {payment['status']}, not succeeded", "payment_id")
        amount = parse_amount(body.get("amount"))
        if amount["currency"] != payment["amount"]["currency"]:
            raise ApiFailure(400, "Currency differs from the payment's", "amount.currency")
        refunded = Decimal(payment.get("refunded_amount", {}).get("value", "0"))
        remaining = Decimal(payment["amount"]["value"]) - refunded
        if Decimal(amount["value"]) > remaining:
            raise ApiFailure(400, "Refund amount exceeds the refundable amount", "amount.value")
        receipt = self._receipt(body, amount)

        refund: Json = {
            "id": new_id(),
            "payment_id": payment_id,
            "status": self.refund_status,
            "amount": amount,
            "created_at": now_iso(),
        }
        if isinstance(body.get("description"), str):
            refund["description"] = body["description"]
        self.refunds[refund["id"]] = refund
        if receipt is not None:
            refund["receipt_registration"] = "pending"
            self.receipts[refund["id"]] = receipt
        refunded += Decimal(amount["value"])
        payment["refunded_amount"] = _money(refunded, amount["currency"])
        payment["refundable"] = refunded < Decimal(payment["amount"]["value"])
        return copy.deepcopy(refund)

    def settle_refund(self, refund_id: str, status: str = "succeeded") -> Json:
        """A pending refund ends (`succeeded` or `canceled`: its amount is refundable again)."""
        with self._lock:
            refund = self.refunds[refund_id]
            if refund["status"] == "pending" and status == "canceled":
                payment = self.payments[refund["payment_id"]]
                left = Decimal(payment["refunded_amount"]["value"]) - Decimal(
                    refund["amount"]["value"]
                )
                payment["refunded_amount"] = _money(left, refund["amount"]["currency"])
                payment["refundable"] = True
                refund["cancellation_details"] = {"party": "yoo_money", "reason": "rejected"}
            refund["status"] = status
            return copy.deepcopy(refund)

    def _get_refund(self, body: Any, refund_id: str) -> Json:
        return copy.deepcopy(self._find(self.refunds, refund_id, "Refund"))
