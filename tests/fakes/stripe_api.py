"""A stateful in-memory fake of the slice of the Stripe API that billing uses.

It fakes only what the billing gateway calls: customers, payment intents (create, retrieve,
confirm, cancel), refunds, prices and subscriptions, plus webhook events and their
signatures. The JSON follows the API reference for version 2026-10-28 closely enough
for the real `stripe` SDK (16.1) to parse it into typed objects:

    fake = FakeStripe()
    with serve(fake.app) as base:
        client = stripe.StripeClient("sk_test_x", base_addresses={"api": base})
        pi = await client.v1.payment_intents.create_async({...}, {"idempotency_key": "k"})

Behaviour worth knowing:

* Payment methods behave like Stripe's test cards: `pm_card_visa` (and any other `pm_...`)
  succeeds, `pm_card_chargeDeclined` / `pm_card_visa_chargeDeclinedInsufficientFunds`
  decline with HTTP 402, `pm_card_authenticationRequired` needs 3-D Secure
  (`requires_action`, or a 402 `authentication_required` when `off_session=true`).
* Saved payment methods belong to one customer, as at Stripe: `POST
  /v1/payment_methods/{id}/attach` (or `fake.attach_payment_method(customer)`) saves one
  for a customer; a test token such as `pm_card_visa` attached becomes a new `pm_...`
  that behaves like that card. Using an attached method for another customer, or
  without one (a PaymentIntent, its confirmation, a subscription's
  `default_payment_method`), is a 400 "previously attached to a different Customer",
  and nothing is created or charged. Unattached test tokens work for anyone.
* Idempotency follows Stripe: a POST with a known `Idempotency-Key` replays the stored
  status and body byte for byte (header `Idempotent-Replayed: true`); other params or
  another endpoint give a 400 `idempotency_error`. Like Stripe, only requests that ran
  are stored (2xx and 402 card errors), not validation errors, 404s or injected failures.
* As in API 2026-10-28 ("basil" and later), a subscription has no top-level
  `current_period_start/end` (they live on `items.data[]`) and an invoice has no
  `payment_intent`: `expand[]=latest_invoice.payment_intent` is a 400, exactly what
  real Stripe answers. Use `latest_invoice.confirmation_secret` (the PaymentIntent's
  client secret) or `latest_invoice.payments`.
* Unknown parameters are rejected with 400 "Received unknown parameter", as Stripe does.
* `delay_seconds` delays every response *after* the request was processed: the object
  exists although the caller timed out, which is what makes retries with the same
  idempotency key matter. Lowering it (to 0) releases the answers waiting; `holding`
  counts them.

Timeouts in stripe 16.1 (read in `stripe/_http_client.py`): there is no per-request
timeout option. Async calls go through `HTTPXClient`, whose constructor takes
`timeout: float | httpx.Timeout = 80`; pass your own client:

    http = stripe.HTTPXClient(timeout=2.0)   # async only; allow_sync_methods=True for sync
    client = stripe.StripeClient(key, http_client=http)
    ...
    await http.close_async()

A timeout surfaces as `stripe.APIConnectionError` (`should_retry=True`); `StripeClient`
defaults to `max_network_retries=0`, so it is not retried unless you ask. Beware:
`timeout=None` or `0` does not disable the timeout, it is skipped (`if self._timeout:`)
and httpx's own 5-second default applies. The default `StripeClient()` builds a
`RequestsClient(timeout=80)` for sync calls with an `HTTPXClient()` (80 s) as the async
fallback.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import json
import re
import secrets
import string
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fakes.stripe_setup import SetupIntents

API_VERSION = "2026-10-28.endive"
PERIOD_SECONDS = 30 * 24 * 3600
DEFAULT_PRICE_AMOUNT = 1000
DEFAULT_CURRENCY = "usd"

JSON = dict[str, Any]


# --------------------------------------------------------------------------- errors


class StripeHTTPError(Exception):
    """Raised by handlers; becomes an HTTP response with Stripe's error body."""

    def __init__(self, status: int, error: JSON, headers: Mapping[str, str] | None = None):
        super().__init__(error.get("message"))
        self.status = status
        self.body: JSON = {"error": error}
        self.headers = dict(headers or {})


def invalid_request(message: str, *, status: int = 400, **fields: Any) -> StripeHTTPError:
    return StripeHTTPError(status, {"type": "invalid_request_error", "message": message, **fields})


def no_such(kind: str, object_id: str, *, param: str | None = None) -> StripeHTTPError:
    """A missing id: 404 when it is in the URL, 400 naming the param when it was passed in."""
    extra = {"param": param} if param else {}
    return invalid_request(
        f"No such {kind}: '{object_id}'",
        status=400 if param else 404,
        code="resource_missing",
        **extra,
    )


def unexpected_state(message: str, payment_intent: JSON) -> StripeHTTPError:
    return invalid_request(
        message, code="payment_intent_unexpected_state", payment_intent=payment_intent
    )


# --------------------------------------------------------------------------- form parsing

_BRACKETS = re.compile(r"\[([^\]]*)\]")


def _key_path(key: str) -> list[str]:
    """`items[0][price]` -> ["items", "0", "price"]; `expand[]` -> ["expand", ""]."""
    head, _, rest = key.partition("[")
    return [head, *_BRACKETS.findall("[" + rest)] if rest else [head]


def _listify(node: Any, key: str = "") -> Any:
    """Turn dicts keyed "0", "1", ... into lists (never metadata, whose keys are free)."""
    if not isinstance(node, dict):
        return node
    items = {k: _listify(v, k) for k, v in node.items()}
    if items and key != "metadata" and all(k.isdigit() for k in items):
        return [items[k] for k in sorted(items, key=int)]
    return items


def parse_form(pairs: Iterable[tuple[str, str]]) -> JSON:
    """Decode Stripe's bracket notation into nested dicts and lists (values stay strings)."""
    root: JSON = {}
    for key, value in pairs:
        *parents, leaf = _key_path(key)
        node = root
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[leaf or str(len(node))] = value
    return _listify(root)


def parse_body(raw: bytes) -> JSON:
    return parse_form(parse_qsl(raw.decode(), keep_blank_values=True))


def check_params(params: JSON, allowed: Iterable[str]) -> None:
    known = {*allowed, "expand"}
    for name in params:
        if name not in known:
            raise invalid_request(f"Received unknown parameter: {name}", param=name)


def int_param(params: JSON, name: str, *, required: bool = False) -> int | None:
    value = params.get(name)
    if value in (None, ""):
        if required:
            raise invalid_request(f"Missing required param: {name}.", param=name)
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise invalid_request(f"Invalid integer: {value}", param=name) from None


def bool_param(params: JSON, name: str, default: bool = False) -> bool:
    value = params.get(name)
    if value is None:
        return default
    if value not in ("true", "false"):
        raise invalid_request(f"Invalid boolean: {value}", param=name)
    return value == "true"


def required(params: JSON, name: str) -> Any:
    value = params.get(name)
    if value in (None, ""):
        raise invalid_request(f"Missing required param: {name}.", param=name)
    return value


def merge_metadata(current: JSON, update: Any) -> JSON:
    """Stripe semantics: `metadata=""` clears all, `metadata[k]=""` removes one key."""
    if update in (None, ""):
        return {} if update == "" else current
    merged = {**current, **update}
    return {k: v for k, v in merged.items() if v != ""}


# --------------------------------------------------------------------------- ids, signing


def new_id(prefix: str, length: int = 24) -> str:
    alphabet = string.ascii_letters + string.digits
    return prefix + "".join(secrets.choice(alphabet) for _ in range(length))


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """The `Stripe-Signature` header value for `payload` signed with `secret`."""
    ts = int(time.time()) if timestamp is None else timestamp
    signed = f"{ts}.".encode() + payload
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={ts},v1={digest}"


# --------------------------------------------------------------------------- test cards


@dataclass(frozen=True)
class Card:
    brand: str
    last4: str
    outcome: str = "succeed"  # "succeed" | "decline" | "authenticate"
    decline_code: str | None = None


TEST_CARDS = {
    "pm_card_visa": Card("visa", "4242"),
    "pm_card_mastercard": Card("mastercard", "4444"),
    "pm_card_chargeDeclined": Card("visa", "0002", "decline", "generic_decline"),
    "pm_card_visa_chargeDeclinedInsufficientFunds": Card(
        "visa", "9995", "decline", "insufficient_funds"
    ),
    "pm_card_authenticationRequired": Card("visa", "3184", "authenticate"),
}
DECLINE_MESSAGES = {
    "insufficient_funds": "Your card has insufficient funds.",
    "authentication_required": "Your card was declined. This transaction requires authentication.",
}
CANCELABLE = (
    "requires_payment_method",
    "requires_capture",
    "requires_confirmation",
    "requires_action",
    "processing",
)


def card_for(payment_method: str) -> Card:
    return TEST_CARDS.get(payment_method, Card("visa", "4242"))


def payment_method_object(
    pm_id: str, created: int, *, customer: str | None = None, card: Card | None = None
) -> JSON:
    card = card or card_for(pm_id)
    return {
        "id": pm_id,
        "object": "payment_method",
        "type": "card",
        "card": {
            "brand": card.brand,
            "last4": card.last4,
            "exp_month": 12,
            "exp_year": 2034,
            "funding": "credit",
            "country": "US",
        },
        "billing_details": {"address": None, "email": None, "name": None, "phone": None},
        "customer": customer,
        "created": created,
        "livemode": False,
        "metadata": {},
    }


# --------------------------------------------------------------------------- the fake


class RecordedRequest(NamedTuple):
    method: str
    path: str
    headers: dict[str, str]  # lower-case names, as Starlette gives them
    params: JSON


class Hold:
    """One request held by the fake (`FakeStripe.hold`): the first request matching
    `method` and `path` after `skip` others waits, before the fake processes it
    (`answered=False`) or after it processed it and before its answer is sent
    (`answered=True`), until `release()`."""

    def __init__(self, method: str, path: str, *, answered: bool, skip: int) -> None:
        self.method, self.path, self.answered = method, re.compile(path), answered
        self.skip = skip
        self.arrived = threading.Event()  # set once the held request reached the hold
        self._released = threading.Event()

    def matches(self, method: str, path: str, answered: bool) -> bool:
        same = (method, answered) == (self.method, self.answered)
        return same and self.path.fullmatch(path) is not None

    async def wait(self) -> None:
        while not self._released.is_set():
            await asyncio.sleep(0.01)

    async def reached(self, timeout: float = 30.0) -> None:
        """Wait (in the test's loop) until the held request is waiting at the hold."""
        if not await asyncio.to_thread(self.arrived.wait, timeout):
            raise AssertionError(f"no {self.method} {self.path.pattern} within {timeout} s")

    def release(self) -> None:
        self._released.set()


class _Stored(NamedTuple):
    method: str
    path: str
    params: JSON
    status: int
    body: bytes


Handler = Callable[..., JSON]


class FakeStripe(SetupIntents):
    """Holds the fake's state; serve `fake.app` and point a `StripeClient` at it.

    State (plain dicts keyed by id, safe to read in assertions): `customers`,
    `payment_intents`, `charges`, `refunds`, `prices`, `subscriptions`, `invoices`;
    `created` counts objects by type (`fake.created["payment_intent"]`); `requests` lists
    every call as `RecordedRequest(method, path, headers, params)`.

    Controls: `delay_seconds`, `hold()`, `fail_next()`, `succeed()`, `fail()`, `event()`,
    `calls()`, `expire_idempotency_keys()`, `add_price()`; `clock` may be replaced (a
    fixed time).
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.delay_seconds = 0.0
        self.holding = 0  # answers processed and not yet sent (held by `delay_seconds`)
        self.customers: dict[str, JSON] = {}
        self.payment_intents: dict[str, JSON] = {}
        self.charges: dict[str, JSON] = {}
        self.refunds: dict[str, JSON] = {}
        self.refund_status = "succeeded"  # "pending": a new refund waits for `settle_refund`
        self.prices: dict[str, JSON] = {}
        self.subscriptions: dict[str, JSON] = {}
        self.invoices: dict[str, JSON] = {}
        self.setup_intents: dict[str, JSON] = {}  # tests/fakes/stripe_setup.py
        self.detached_methods: set[str] = set()
        self.created: Counter[str] = Counter()
        self.requests: list[RecordedRequest] = []
        self._holds: list[Hold] = []
        self._lock = threading.RLock()
        self._failures: list[tuple[int, bool | None]] = []
        self._idempotent: dict[tuple[str, str], _Stored] = {}
        self._invoice_payment_intent: dict[str, str] = {}  # in_ -> pi_
        self.attached_methods: dict[str, str] = {}  # pm_ -> the cus_ it is saved for
        self._card_of: dict[str, Card] = {}  # a saved pm_ -> the test card it was made from
        self._routes = self._route_table()
        methods = ["GET", "POST", "DELETE"]
        self.app = Starlette(routes=[Route("/v1/{path:path}", self._endpoint, methods=methods)])

    # ------------------------------------------------------------------ test controls

    def now(self) -> int:
        return int(self.clock())

    def add_price(
        self, price_id: str, unit_amount: int, currency: str = "usd", interval: str = "month",
        nickname: str | None = None,
    ) -> JSON:  # fmt: skip
        """A price the dashboard made (any other `price_...` is 10.00 USD a month)."""
        price = self._new_price(price_id, unit_amount, currency, interval)
        price["nickname"] = nickname
        return self._store(self.prices, price)

    def fail_next(self, status: int = 500, n: int = 1, *, should_retry: bool | None = None) -> None:
        """The next `n` API calls answer `status` with an `api_error` body, storing nothing.

        `should_retry` sets the `Stripe-Should-Retry` header the SDK obeys when retrying.
        """
        with self._lock:
            self._failures.extend([(status, should_retry)] * n)

    def succeed(self, pi_id: str) -> JSON:
        """Complete a PaymentIntent as if the customer paid (e.g. after 3-D Secure)."""
        with self._lock:
            pi = self.payment_intents[pi_id]
            if pi["status"] not in CANCELABLE:
                raise ValueError(f"{pi_id} is {pi['status']}, it cannot succeed")
            pi["payment_method"] = pi["payment_method"] or "pm_card_visa"
            self._mark_succeeded(pi)
            return copy.deepcopy(pi)

    def fail(self, pi_id: str, decline_code: str = "insufficient_funds") -> JSON:
        """Fail a PaymentIntent's attempt: back to `requires_payment_method` with an error."""
        with self._lock:
            pi = self.payment_intents[pi_id]
            if pi["status"] not in CANCELABLE:
                raise ValueError(f"{pi_id} is {pi['status']}, it cannot fail")
            pi["payment_method"] = pi["payment_method"] or "pm_card_chargeDeclined"
            self._mark_declined(pi, "card_declined", decline_code)
            return copy.deepcopy(pi)

    def expire_idempotency_keys(self) -> None:
        """Forget every stored idempotent request, as Stripe does 24 hours after it ran:
        the same key then runs the request again (a new object, a new charge)."""
        with self._lock:
            self._idempotent.clear()

    def attach_payment_method(self, customer: str, test_card: str = "pm_card_visa") -> str:
        """Save a new payment method (behaving like `test_card`) for `customer`; its id."""
        with self._lock:
            return str(self._attach(test_card, customer)["id"])

    def event(self, type: str, obj: Mapping[str, Any], event_id: str | None = None) -> bytes:
        """A webhook Event body (compact JSON) carrying `obj` as `data.object`."""
        event = {
            "id": event_id or new_id("evt_"),
            "object": "event",
            "api_version": API_VERSION,
            "created": self.now(),
            "data": {"object": dict(obj)},
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": type,
        }
        return json.dumps(event, separators=(",", ":")).encode()

    def hold(self, method: str, path: str, *, answered: bool = False, skip: int = 0) -> Hold:
        """Hold the next request (after `skip` others) whose path fully matches the regex
        `path`: before it is processed, or (`answered=True`) after, with its answer not yet
        sent. What another request does meanwhile is what Stripe's order of serving two
        calls decides."""
        held = Hold(method, path, answered=answered, skip=skip)
        with self._lock:
            self._holds.append(held)
        return held

    def _held(self, method: str, path: str, answered: bool) -> Hold | None:
        with self._lock:
            for held in self._holds:
                if held.matches(method, path, answered):
                    if held.skip:
                        held.skip -= 1
                        continue
                    self._holds.remove(held)
                    held.arrived.set()
                    return held
        return None

    def calls(self, method: str, path: str) -> list[RecordedRequest]:
        """Recorded requests for one endpoint, e.g. `fake.calls("POST", "/v1/refunds")`."""
        with self._lock:
            return [r for r in self.requests if r.method == method and r.path == path]

    # ------------------------------------------------------------------ HTTP plumbing

    async def _endpoint(self, request: Request) -> Response:
        raw = await request.body() if request.method == "POST" else request.url.query.encode()
        recorded = RecordedRequest(
            request.method, request.url.path, dict(request.headers), parse_body(raw)
        )
        if held := self._held(request.method, request.url.path, answered=False):
            await held.wait()
        with self._lock:
            status, body, headers = self._handle(recorded)
            self.holding += 1
        try:
            if held := self._held(request.method, request.url.path, answered=True):
                await held.wait()
            await self._delay()
        finally:
            with self._lock:
                self.holding -= 1
        return Response(body, status, headers, media_type="application/json")

    async def _delay(self) -> None:
        # Polls instead of one long sleep so that a test (another thread) can shorten the
        # delay, or set it to 0 to release the answers it holds.
        started = time.monotonic()
        while (remaining := self.delay_seconds - (time.monotonic() - started)) > 0:
            await asyncio.sleep(min(remaining, 0.05))

    def _handle(self, req: RecordedRequest) -> tuple[int, bytes, dict[str, str]]:
        self.requests.append(req)
        headers = {"Request-Id": new_id("req_", 14), "Stripe-Version": API_VERSION}
        key = req.headers.get("idempotency-key") if req.method == "POST" else None
        if key:
            headers["Idempotency-Key"] = key
        api_key = ""
        try:
            self._injected_failure()
            api_key = self._authenticate(req.headers.get("authorization", ""))
            if key and (stored := self._replay(api_key, key, req)):
                headers["Idempotent-Replayed"] = "true"
                return stored.status, stored.body, headers
            status, body = 200, self._route(req)
        except StripeHTTPError as err:
            status, body = err.status, err.body
            headers.update(err.headers)
        encoded = json.dumps(body, indent=2).encode()
        if key and (status < 400 or status == 402):
            self._idempotent[(api_key, key)] = _Stored(
                req.method, req.path, req.params, status, encoded
            )
        return status, encoded, headers

    def _injected_failure(self) -> None:
        if not self._failures:
            return
        status, should_retry = self._failures.pop(0)
        headers = {} if should_retry is None else {"Stripe-Should-Retry": str(should_retry).lower()}
        error: JSON = {"type": "api_error", "message": "An unknown error occurred"}
        if status == 429:
            error.update(code="rate_limit", message="Request rate limit exceeded.")
        raise StripeHTTPError(status, error, headers)

    @staticmethod
    def _authenticate(authorization: str) -> str:
        scheme, _, api_key = authorization.partition(" ")
        if scheme != "Bearer" or not api_key:
            raise invalid_request(
                "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                "YOUR_SECRET_KEY').",
                status=401,
            )
        if not api_key.startswith(("sk_test_", "rk_test_")):
            raise invalid_request(f"Invalid API Key provided: {api_key[:8]}****", status=401)
        return api_key

    def _replay(self, api_key: str, key: str, req: RecordedRequest) -> _Stored | None:
        stored = self._idempotent.get((api_key, key))
        if stored is None:
            return None
        retry = f"Try using a key other than '{key}' if you meant to execute a different request."
        if (stored.method, stored.path) != (req.method, req.path):
            raise StripeHTTPError(
                400,
                {
                    "type": "idempotency_error",
                    "message": "Keys for idempotent requests can only be used for the same "
                    f"endpoint they were first used for ('{req.path}' vs '{stored.path}'). "
                    + retry,
                },
            )
        if stored.params != req.params:
            raise StripeHTTPError(
                400,
                {
                    "type": "idempotency_error",
                    "message": "Keys for idempotent requests can only be used with the same "
                    "parameters they were first used with. " + retry,
                },
            )
        return stored

    def _route_table(self) -> list[tuple[str, re.Pattern[str], Handler]]:
        table: list[tuple[str, str, Handler]] = [
            ("POST", r"/v1/customers", self._create_customer),
            ("GET", r"/v1/customers/(?P<id>[^/]+)", self._retrieve("customer", self.customers)),
            ("POST", r"/v1/payment_methods/(?P<id>[^/]+)/attach", self._attach_payment_method),
            ("POST", r"/v1/payment_intents", self._create_payment_intent),
            (
                "GET",
                r"/v1/payment_intents/(?P<id>[^/]+)",
                self._retrieve("payment_intent", self.payment_intents),
            ),
            ("POST", r"/v1/payment_intents/(?P<id>[^/]+)/confirm", self._confirm_payment_intent),
            ("POST", r"/v1/payment_intents/(?P<id>[^/]+)/cancel", self._cancel_payment_intent),
            ("GET", r"/v1/charges/(?P<id>[^/]+)", self._retrieve("charge", self.charges)),
            ("POST", r"/v1/refunds", self._create_refund),
            ("GET", r"/v1/refunds/(?P<id>[^/]+)", self._retrieve("refund", self.refunds)),
            ("POST", r"/v1/prices", self._create_price),
            ("GET", r"/v1/prices/(?P<id>[^/]+)", self._retrieve("price", self.prices)),
            ("GET", r"/v1/invoices/(?P<id>[^/]+)", self._retrieve("invoice", self.invoices)),
            ("POST", r"/v1/subscriptions", self._create_subscription),
            (
                "GET",
                r"/v1/subscriptions/(?P<id>[^/]+)",
                self._retrieve("subscription", self.subscriptions),
            ),
            ("POST", r"/v1/subscriptions/(?P<id>[^/]+)", self._update_subscription),
            ("DELETE", r"/v1/subscriptions/(?P<id>[^/]+)", self._cancel_subscription),
            *self._setup_routes(),
        ]
        return [(method, re.compile(pattern), handler) for method, pattern, handler in table]

    def _route(self, req: RecordedRequest) -> JSON:
        for method, pattern, handler in self._routes:
            if method == req.method and (match := pattern.fullmatch(req.path)):
                obj = handler(req.params, **match.groupdict())
                expand = req.params.get("expand") or []
                return self._expand(obj, [expand] if isinstance(expand, str) else expand)
        raise invalid_request(
            f"Unrecognized request URL ({req.method}: {req.path}). Please see "
            "https://stripe.com/docs or we can help at https://support.stripe.com/.",
            status=404,
        )

    # ------------------------------------------------------------------ storage, expansion

    def _store(self, table: dict[str, JSON], obj: JSON) -> JSON:
        table[obj["id"]] = obj
        self.created[obj["object"]] += 1
        return obj

    def _lookup(self, object_id: str) -> JSON | None:
        """The stored object an id refers to, found by its prefix (for `expand[]`)."""
        if object_id.startswith("pm_"):
            return self._payment_method_object(object_id)
        tables = {
            "cus_": self.customers,
            "pi_": self.payment_intents,
            "ch_": self.charges,
            "re_": self.refunds,
            "price_": self.prices,
            "sub_": self.subscriptions,
            "in_": self.invoices,
            "seti_": self.setup_intents,
        }
        prefix = object_id.partition("_")[0] + "_"
        return tables.get(prefix, {}).get(object_id)

    def _retrieve(self, kind: str, table: dict[str, JSON]) -> Handler:
        def retrieve(params: JSON, id: str) -> JSON:
            check_params(params, ())
            if id not in table:
                raise no_such(kind, id)
            return table[id]

        return retrieve

    def _expand(self, obj: JSON, paths: list[str]) -> JSON:
        """A response copy of `obj` with each dotted `expand[]` path resolved."""
        result = copy.deepcopy(obj)
        for path in paths:
            self._expand_path(result, path.split("."), path)
        return result

    def _expand_path(self, node: Any, segments: list[str], path: str) -> None:
        head, rest = segments[0], segments[1:]
        if not isinstance(node, dict):
            raise invalid_request(f"This property cannot be expanded ({path}).")
        if head in node:
            value = node[head]
        elif node.get("object") == "invoice" and head in ("confirmation_secret", "payments"):
            value = self._invoice_includable(node, head)
        else:
            raise invalid_request(f"This property cannot be expanded ({path}).")
        if isinstance(value, str):
            found = self._lookup(value)
            if found is None:
                raise invalid_request(f"This property cannot be expanded ({path}).")
            value = copy.deepcopy(found)
        node[head] = value
        if value is None or not rest:
            return
        for item in value if isinstance(value, list) else [value]:
            self._expand_path(item, rest, path)

    def _invoice_includable(self, invoice: JSON, field: str) -> JSON | None:
        pi_id = self._invoice_payment_intent.get(invoice["id"])
        pi = self.payment_intents.get(pi_id or "")
        if field == "confirmation_secret":
            return pi and {"client_secret": pi["client_secret"], "type": "payment_intent"}
        payments = [self._invoice_payment(invoice, pi)] if pi else []
        return {
            "object": "list",
            "data": payments,
            "has_more": False,
            "url": f"/v1/invoice_payments?invoice={invoice['id']}",
        }

    def _invoice_payment(self, invoice: JSON, pi: JSON) -> JSON:
        paid = pi["status"] == "succeeded"
        return {
            "id": "inpay_" + invoice["id"][3:],
            "object": "invoice_payment",
            "amount_paid": pi["amount"] if paid else None,
            "amount_requested": pi["amount"],
            "created": pi["created"],
            "currency": pi["currency"],
            "invoice": invoice["id"],
            "is_default": True,
            "livemode": False,
            "payment": {"type": "payment_intent", "payment_intent": pi["id"]},
            "status": "paid" if paid else "open",
            "status_transitions": {
                "canceled_at": None,
                "paid_at": invoice["created"] if paid else None,
            },
        }

    # ------------------------------------------------------------------ customers

    def _create_customer(self, params: JSON) -> JSON:
        check_params(params, ("email", "name", "description", "phone", "metadata"))
        return self._store(
            self.customers,
            {
                "id": new_id("cus_", 14),
                "object": "customer",
                "address": None,
                "balance": 0,
                "created": self.now(),
                "currency": None,
                "default_source": None,
                "delinquent": False,
                "description": params.get("description"),
                "email": params.get("email"),
                "invoice_prefix": new_id("", 8).upper(),
                "invoice_settings": {
                    "custom_fields": None,
                    "default_payment_method": None,
                    "footer": None,
                    "rendering_options": None,
                },
                "livemode": False,
                "metadata": merge_metadata({}, params.get("metadata")),
                "name": params.get("name"),
                "phone": params.get("phone"),
                "preferred_locales": [],
                "shipping": None,
                "tax_exempt": "none",
                "test_clock": None,
            },
        )

    def _customer_param(self, params: JSON) -> str | None:
        customer = params.get("customer")
        if customer and customer not in self.customers:
            raise no_such("customer", customer, param="customer")
        return customer

    # ------------------------------------------------------------------ payment methods

    def _card(self, payment_method: str) -> Card:
        return self._card_of.get(payment_method) or card_for(payment_method)

    def _payment_method_object(self, pm_id: str) -> JSON:
        customer = self.attached_methods.get(pm_id)
        return payment_method_object(pm_id, self.now(), customer=customer, card=self._card(pm_id))

    def _attach(self, pm_id: str, customer: str) -> JSON:
        if customer not in self.customers:
            raise no_such("customer", customer, param="customer")
        owner = self.attached_methods.get(pm_id)
        if owner is not None and owner != customer:
            raise invalid_request(
                "The payment method you provided has already been attached to a customer.",
                param="payment_method",
            )
        if pm_id in TEST_CARDS:  # like Stripe: a test token attached is a new PaymentMethod
            saved = new_id("pm_")
            self._card_of[saved] = TEST_CARDS[pm_id]
            pm_id = saved
        self.attached_methods[pm_id] = customer
        self.created["payment_method"] += 1
        return self._payment_method_object(pm_id)

    def _attach_payment_method(self, params: JSON, id: str) -> JSON:
        check_params(params, ("customer",))
        return self._attach(id, str(required(params, "customer")))

    def _check_method_owner(self, payment_method: Any, customer: str | None, param: str) -> None:
        """A method saved for one customer cannot be used for another (or for nobody)."""
        if payment_method in self.detached_methods:  # as at Stripe: never usable again
            raise invalid_request(
                "This PaymentMethod was previously used without being attached to a Customer "
                "or was detached from a Customer, and may not be used again.",
                param=param,
            )
        owner = self.attached_methods.get(payment_method) if payment_method else None
        if owner is not None and owner != customer:
            raise invalid_request(
                "The provided PaymentMethod was previously attached to a different Customer. "
                "A PaymentMethod can only be used with the Customer it is attached to.",
                param=param,
            )

    # ------------------------------------------------------------------ payment intents

    PAYMENT_INTENT_PARAMS = (
        "amount",
        "currency",
        "customer",
        "payment_method",
        "confirm",
        "off_session",
        "metadata",
        "description",
        "automatic_payment_methods",
        "payment_method_types",
        "receipt_email",
        "return_url",
        "setup_future_usage",
        "statement_descriptor_suffix",
        "capture_method",
    )

    def _create_payment_intent(self, params: JSON) -> JSON:
        check_params(params, self.PAYMENT_INTENT_PARAMS)
        amount = int_param(params, "amount", required=True)
        assert amount is not None
        if amount < 1:
            raise invalid_request("This value must be greater than or equal to 1.", param="amount")
        customer = self._customer_param(params)
        self._check_method_owner(params.get("payment_method"), customer, "payment_method")
        pi = self._new_payment_intent(
            amount,
            str(required(params, "currency")),
            customer=customer,
            description=params.get("description"),
            metadata=merge_metadata({}, params.get("metadata")),
        )
        types = params.get("payment_method_types")
        if types:
            pi["payment_method_types"] = types
            pi["automatic_payment_methods"] = None
        elif isinstance(apm := params.get("automatic_payment_methods"), dict):
            pi["automatic_payment_methods"] = {
                "allow_redirects": apm.get("allow_redirects", "always"),
                "enabled": apm.get("enabled") == "true",
            }
        pi["setup_future_usage"] = params.get("setup_future_usage")
        pi["receipt_email"] = params.get("receipt_email")
        self._store(self.payment_intents, pi)
        self._set_payment_method(pi, params.get("payment_method"))
        if bool_param(params, "confirm"):
            self._confirm(
                pi, off_session=params.get("off_session") in ("true", "one_off", "recurring")
            )
        return pi

    def _new_payment_intent(
        self,
        amount: int,
        currency: str,
        *,
        customer: str | None,
        description: str | None = None,
        metadata: JSON | None = None,
    ) -> JSON:
        pi_id = new_id("pi_")
        return {
            "id": pi_id,
            "object": "payment_intent",
            "amount": amount,
            "amount_capturable": 0,
            "amount_details": {"tip": {}},
            "amount_received": 0,
            "application": None,
            "application_fee_amount": None,
            "automatic_payment_methods": {"allow_redirects": "always", "enabled": True},
            "canceled_at": None,
            "cancellation_reason": None,
            "capture_method": "automatic_async",
            "client_secret": f"{pi_id}_secret_{new_id('', 25)}",
            "confirmation_method": "automatic",
            "created": self.now(),
            "currency": currency.lower(),
            "customer": customer,
            "description": description,
            "last_payment_error": None,
            "latest_charge": None,
            "livemode": False,
            "metadata": metadata or {},
            "next_action": None,
            "on_behalf_of": None,
            "payment_method": None,
            "payment_method_configuration_details": None,
            "payment_method_options": {},
            "payment_method_types": ["card"],
            "processing": None,
            "receipt_email": None,
            "review": None,
            "setup_future_usage": None,
            "shipping": None,
            "statement_descriptor": None,
            "statement_descriptor_suffix": None,
            "status": "requires_payment_method",
            "transfer_data": None,
            "transfer_group": None,
        }

    def _payment_intent(self, pi_id: str) -> JSON:
        if pi_id not in self.payment_intents:
            raise no_such("payment_intent", pi_id)
        return self.payment_intents[pi_id]

    @staticmethod
    def _set_payment_method(pi: JSON, payment_method: str | None) -> None:
        if payment_method:
            pi["payment_method"] = payment_method
            pi["status"] = "requires_confirmation"

    def _confirm_payment_intent(self, params: JSON, id: str) -> JSON:
        check_params(params, ("payment_method", "off_session", "return_url"))
        pi = self._payment_intent(id)
        if pi["status"] not in (
            "requires_payment_method",
            "requires_confirmation",
            "requires_action",
        ):
            raise unexpected_state(
                f"This PaymentIntent's status is {pi['status']}, so it cannot be confirmed.",
                copy.deepcopy(pi),
            )
        self._check_method_owner(params.get("payment_method"), pi["customer"], "payment_method")
        self._set_payment_method(pi, params.get("payment_method"))
        self._confirm(pi, off_session=params.get("off_session") in ("true", "one_off", "recurring"))
        return pi

    def _confirm(self, pi: JSON, *, off_session: bool) -> None:
        """Attempt the payment with the PI's test card; raises the 402 on a decline."""
        if not pi["payment_method"]:
            return  # nothing to charge yet: stays requires_payment_method
        card = self._card(pi["payment_method"])
        if card.outcome == "succeed":
            self._mark_succeeded(pi)
        elif card.outcome == "authenticate" and not off_session:
            pi["status"] = "requires_action"
            pi["next_action"] = {
                "type": "use_stripe_sdk",
                "use_stripe_sdk": {"type": "three_d_secure_redirect", "source": new_id("src_")},
            }
        elif card.outcome == "authenticate":
            raise self._mark_declined(pi, "authentication_required", "authentication_required")
        else:
            raise self._mark_declined(pi, "card_declined", card.decline_code or "generic_decline")

    def _new_charge(self, pi: JSON, *, failure: JSON | None = None) -> JSON:
        card = self._card(pi["payment_method"])
        succeeded = failure is None
        return self._store(
            self.charges,
            {
                "id": new_id("ch_"),
                "object": "charge",
                "amount": pi["amount"],
                "amount_captured": pi["amount"] if succeeded else 0,
                "amount_refunded": 0,
                "captured": succeeded,
                "created": self.now(),
                "currency": pi["currency"],
                "customer": pi["customer"],
                "description": pi["description"],
                "failure_code": None if succeeded else failure["code"],
                "failure_message": None if succeeded else failure["message"],
                "livemode": False,
                "metadata": dict(pi["metadata"]),
                "outcome": {
                    "network_status": "approved_by_network" if succeeded else "declined_by_network",
                    "reason": None if succeeded else failure["decline_code"],
                    "risk_level": "normal",
                    "seller_message": "Payment complete." if succeeded else "The bank declined.",
                    "type": "authorized" if succeeded else "issuer_declined",
                },
                "paid": succeeded,
                "payment_intent": pi["id"],
                "payment_method": pi["payment_method"],
                "payment_method_details": {
                    "type": "card",
                    "card": {"brand": card.brand, "last4": card.last4},
                },
                "refunded": False,
                "status": "succeeded" if succeeded else "failed",
            },
        )

    def _mark_succeeded(self, pi: JSON) -> None:
        pi.update(
            status="succeeded",
            amount_received=pi["amount"],
            last_payment_error=None,
            next_action=None,
            latest_charge=self._new_charge(pi)["id"],
        )
        self._settle_invoice_of(pi["id"])

    def _mark_declined(self, pi: JSON, code: str, decline_code: str) -> StripeHTTPError:
        """Record a failed attempt on `pi`; returns the 402 card error Stripe would send."""
        message = DECLINE_MESSAGES.get(decline_code, "Your card was declined.")
        failure = {"code": code, "decline_code": decline_code, "message": message}
        charge = self._new_charge(pi, failure=failure)
        error = {
            "type": "card_error",
            **failure,
            "charge": charge["id"],
            "doc_url": f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}",
            "payment_method": self._payment_method_object(pi["payment_method"]),
        }
        pi.update(
            status="requires_payment_method",
            payment_method=None,
            next_action=None,
            latest_charge=charge["id"],
            last_payment_error=error,
        )
        return StripeHTTPError(402, {**error, "payment_intent": copy.deepcopy(pi)})

    def _cancel_payment_intent(self, params: JSON, id: str) -> JSON:
        check_params(params, ("cancellation_reason",))
        pi = self._payment_intent(id)
        if pi["status"] not in CANCELABLE:
            raise unexpected_state(
                f"You cannot cancel this PaymentIntent because it has a status of {pi['status']}. "
                "Only a PaymentIntent with one of the following statuses may be canceled: "
                + ", ".join(CANCELABLE)
                + ".",
                copy.deepcopy(pi),
            )
        pi.update(
            status="canceled",
            canceled_at=self.now(),
            cancellation_reason=params.get("cancellation_reason"),
            next_action=None,
        )
        return pi

    # ------------------------------------------------------------------ refunds

    def _create_refund(self, params: JSON) -> JSON:
        check_params(params, ("payment_intent", "charge", "amount", "reason", "metadata"))
        charge = self._refundable_charge(params)
        remaining = charge["amount"] - charge["amount_refunded"]
        if remaining == 0:
            raise invalid_request(
                f"Charge {charge['id']} has already been refunded.", code="charge_already_refunded"
            )
        amount = int_param(params, "amount")
        amount = remaining if amount is None else amount
        if amount > remaining:
            raise invalid_request(
                f"Refund amount ({amount}) is greater than unrefunded amount on charge "
                f"({remaining})",
                code="amount_too_large",
                param="amount",
            )
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] == charge["amount"]
        return self._store(
            self.refunds,
            {
                "id": new_id("re_"),
                "object": "refund",
                "amount": amount,
                "balance_transaction": new_id("txn_"),
                "charge": charge["id"],
                "created": self.now(),
                "currency": charge["currency"],
                "destination_details": None,
                "metadata": merge_metadata({}, params.get("metadata")),
                "payment_intent": charge["payment_intent"],
                "reason": params.get("reason"),
                "receipt_number": None,
                "source_transfer_reversal": None,
                "status": self.refund_status,
                "transfer_reversal": None,
            },
        )

    def settle_refund(self, refund_id: str, status: str = "succeeded") -> JSON:
        """A pending refund ends; a `failed` one gives its amount back to the charge."""
        with self._lock:
            refund = self.refunds[refund_id]
            if refund["status"] == "pending" and status in ("failed", "canceled"):
                charge = self.charges[refund["charge"]]
                charge["amount_refunded"] -= refund["amount"]
                charge["refunded"] = False
                refund["failure_reason"] = "declined" if status == "failed" else None
            refund["status"] = status
            return refund

    def _refundable_charge(self, params: JSON) -> JSON:
        if pi_id := params.get("payment_intent"):
            pi = self.payment_intents.get(pi_id)
            if pi is None:
                raise no_such("payment_intent", pi_id, param="payment_intent")
            if pi["status"] != "succeeded":
                raise invalid_request(
                    f"This PaymentIntent ({pi_id}) does not have a successful charge to refund.",
                    param="payment_intent",
                )
            return self.charges[pi["latest_charge"]]
        charge_id = required(params, "charge")
        if charge_id not in self.charges:
            raise no_such("charge", charge_id, param="charge")
        return self.charges[charge_id]

    # ------------------------------------------------------------------ prices

    def _create_price(self, params: JSON) -> JSON:
        check_params(
            params, ("unit_amount", "currency", "recurring", "product", "product_data", "nickname")
        )
        price = self._new_price(
            new_id("price_"),
            int_param(params, "unit_amount", required=True) or 0,
            str(required(params, "currency")),
            interval=(params.get("recurring") or {}).get("interval", "month"),
        )
        price["nickname"] = params.get("nickname")
        price["product"] = params.get("product") or price["product"]
        return self._store(self.prices, price)

    def _new_price(self, price_id: str, unit_amount: int, currency: str, interval: str) -> JSON:
        return {
            "id": price_id,
            "object": "price",
            "active": True,
            "billing_scheme": "per_unit",
            "created": self.now(),
            "currency": currency.lower(),
            "livemode": False,
            "lookup_key": None,
            "metadata": {},
            "nickname": None,
            "product": new_id("prod_", 14),
            "recurring": {
                "interval": interval,
                "interval_count": 1,
                "meter": None,
                "trial_period_days": None,
                "usage_type": "licensed",
            },
            "tax_behavior": "unspecified",
            "type": "recurring",
            "unit_amount": unit_amount,
            "unit_amount_decimal": str(unit_amount),
        }

    def _price(self, price_id: str) -> JSON:
        """Any `price_...` id is accepted; unknown ones become 10.00 USD a month."""
        if price_id not in self.prices:
            if not price_id.startswith("price_"):
                raise no_such("price", price_id, param="items[0][price]")
            new = self._new_price(price_id, DEFAULT_PRICE_AMOUNT, DEFAULT_CURRENCY, "month")
            self._store(self.prices, new)
        return self.prices[price_id]

    # ------------------------------------------------------------------ subscriptions

    SUBSCRIPTION_PARAMS = (
        "customer",
        "items",
        "default_payment_method",
        "payment_behavior",
        "metadata",
        "trial_period_days",
        "cancel_at_period_end",
        "description",
        "collection_method",
        "off_session",
        "payment_settings",
        "proration_behavior",
        "discounts",
    )

    def _create_subscription(self, params: JSON) -> JSON:
        check_params(params, self.SUBSCRIPTION_PARAMS)
        customer = self._customer_param(params) or required(params, "customer")
        self._check_method_owner(
            params.get("default_payment_method"), customer, "default_payment_method"
        )
        items = params.get("items")
        if not isinstance(items, list) or not items:
            raise invalid_request("Missing required param: items.", param="items")
        prices = [
            (self._price(required(item, "price")), int(item.get("quantity", 1))) for item in items
        ]
        trial_days = int_param(params, "trial_period_days")
        behavior = params.get("payment_behavior", "allow_incomplete")
        now = self.now()
        trial_end = now + trial_days * 86400 if trial_days else None
        sub_id = new_id("sub_")
        sub = self._new_subscription(sub_id, params, customer, prices, now, trial_end)
        amount = 0 if trial_end else sum(p["unit_amount"] * q for p, q in prices)
        invoice = self._new_invoice(sub, amount, prices[0][0]["currency"], now)
        invoice["lines"] = self.invoice_lines(
            invoice["id"],
            [(f"{q} x {p.get('nickname') or p['id']}", q, 0 if trial_end else p["unit_amount"] * q,
              False) for p, q in prices],
            invoice["currency"],
        )  # fmt: skip
        sub["latest_invoice"] = invoice["id"]
        if amount:
            pi = self._new_payment_intent(amount, invoice["currency"], customer=customer)
            pi["description"] = "Subscription creation"
            self._invoice_payment_intent[invoice["id"]] = pi["id"]
            if behavior != "default_incomplete":
                self._set_payment_method(pi, sub["default_payment_method"])
            self._pay_first_invoice(pi, behavior)
        self._store(self.subscriptions, sub)
        self._store(self.invoices, invoice)
        if amount:
            self._store(self.payment_intents, pi)
            self._settle_invoice_of(pi["id"])
        return sub

    def _pay_first_invoice(self, pi: JSON, behavior: str) -> None:
        """Charge the first invoice unless told not to; only error_if_incomplete raises."""
        try:
            self._confirm(pi, off_session=False)
        except StripeHTTPError:
            if behavior == "error_if_incomplete":
                raise
        if behavior == "error_if_incomplete" and pi["status"] == "requires_action":
            raise self._mark_declined(pi, "authentication_required", "authentication_required")

    @staticmethod
    def _discounts(given: Any) -> list[JSON]:
        if given is None:
            return []
        if not isinstance(given, list) or not all(
            isinstance(d, dict) and isinstance(d.get("coupon"), str) and d["coupon"] for d in given
        ):
            raise invalid_request("Invalid array: discounts.", param="discounts")
        return [
            {"id": new_id("di_"), "object": "discount", "coupon": {"id": d["coupon"]}}
            for d in given
        ]

    def _new_subscription(
        self,
        sub_id: str,
        params: JSON,
        customer: str,
        prices: list[tuple[JSON, int]],
        now: int,
        trial_end: int | None,
    ) -> JSON:
        period_end = trial_end or now + PERIOD_SECONDS
        items = [
            {
                "id": new_id("si_", 14),
                "object": "subscription_item",
                "created": now,
                "current_period_end": period_end,
                "current_period_start": now,
                "discounts": [],
                "metadata": {},
                "price": copy.deepcopy(price),
                "quantity": quantity,
                "subscription": sub_id,
                "tax_rates": [],
            }
            for price, quantity in prices
        ]
        return {
            "id": sub_id,
            "object": "subscription",
            "application": None,
            "automatic_tax": {"enabled": False, "liability": None},
            "billing_cycle_anchor": period_end,
            "cancel_at": None,
            "cancel_at_period_end": False,
            "canceled_at": None,
            "cancellation_details": {"comment": None, "feedback": None, "reason": None},
            "collection_method": "charge_automatically",
            "created": now,
            "currency": prices[0][0]["currency"],
            "customer": customer,
            "days_until_due": None,
            "default_payment_method": params.get("default_payment_method"),
            "default_source": None,
            "description": params.get("description"),
            # Coupons are only recorded (the fake's amounts stay undiscounted).
            "discounts": self._discounts(params.get("discounts")),
            "ended_at": None,
            "items": {
                "object": "list",
                "data": items,
                "has_more": False,
                "total_count": len(items),
                "url": f"/v1/subscription_items?subscription={sub_id}",
            },
            "latest_invoice": None,
            "livemode": False,
            "metadata": merge_metadata({}, params.get("metadata")),
            "pending_setup_intent": None,
            "pause_collection": None,
            "pending_update": None,
            "schedule": None,
            "start_date": now,
            "status": "trialing" if trial_end else "incomplete",
            "test_clock": None,
            "trial_end": trial_end,
            "trial_start": now if trial_end else None,
        } | self._cancellation_fields(bool_param(params, "cancel_at_period_end"), period_end)

    def _cancellation_fields(self, at_period_end: bool, period_end: int) -> JSON:
        return {
            "cancel_at_period_end": at_period_end,
            "cancel_at": period_end if at_period_end else None,
            "canceled_at": self.now() if at_period_end else None,
            "cancellation_details": {
                "comment": None,
                "feedback": None,
                "reason": "cancellation_requested" if at_period_end else None,
            },
        }

    @staticmethod
    def invoice_lines(
        invoice_id: str, lines: list[tuple[str, int, int, bool]], currency: str
    ) -> JSON:
        """An Invoice's `lines` list (API 2025: the subscription item and its proration
        flag under `parent.subscription_item_details`) of (description, quantity, amount,
        proration); a proration's credit for unused time has a negative amount."""
        data = [
            {
                "id": new_id("il_"), "object": "line_item", "amount": amount,
                "currency": currency, "description": description, "invoice": invoice_id,
                "quantity": quantity, "livemode": False, "metadata": {},
                "parent": {
                    "type": "subscription_item_details",
                    "subscription_item_details": {"proration": proration,
                                                  "subscription_item": new_id("si_")},
                },
                "taxes": [],
            }
            for description, quantity, amount, proration in lines
        ]  # fmt: skip
        return {"object": "list", "data": data, "has_more": False, "total_count": len(data),
                "url": f"/v1/invoices/{invoice_id}/lines"}  # fmt: skip

    def _new_invoice(self, sub: JSON, amount: int, currency: str, now: int) -> JSON:
        item = sub["items"]["data"][0]
        return {
            "id": new_id("in_"),
            "object": "invoice",
            "amount_due": amount,
            "amount_paid": 0,
            "amount_remaining": amount,
            "attempt_count": 0,
            "attempted": False,
            "billing_reason": "subscription_create",
            "collection_method": "charge_automatically",
            "created": now,
            "currency": currency,
            "customer": sub["customer"],
            "hosted_invoice_url": None,
            "livemode": False,
            "metadata": {},
            "number": None,
            "parent": {
                "type": "subscription_details",
                "quote_details": None,
                "subscription_details": {"metadata": {}, "subscription": sub["id"]},
            },
            "period_end": item["current_period_start"],
            "period_start": item["current_period_start"],
            "status": "paid" if amount == 0 else "open",
            "status_transitions": {
                "finalized_at": now,
                "marked_uncollectible_at": None,
                "paid_at": now if amount == 0 else None,
                "voided_at": None,
            },
            "subtotal": amount,
            "total": amount,
            "total_taxes": [],
        }

    def _settle_invoice_of(self, pi_id: str) -> None:
        """A succeeded PI pays its invoice and activates an incomplete subscription."""
        pi = self.payment_intents.get(pi_id)
        invoice_id = next((i for i, p in self._invoice_payment_intent.items() if p == pi_id), None)
        invoice = self.invoices.get(invoice_id or "")
        if pi is None or invoice is None:
            return
        invoice["attempted"] = pi["latest_charge"] is not None
        invoice["attempt_count"] = sum(
            1 for c in self.charges.values() if c["payment_intent"] == pi_id
        )
        if pi["status"] != "succeeded":
            return
        invoice.update(status="paid", amount_paid=invoice["amount_due"], amount_remaining=0)
        invoice["status_transitions"]["paid_at"] = self.now()
        sub = self.subscriptions[invoice["parent"]["subscription_details"]["subscription"]]
        if sub["status"] == "incomplete":
            sub["status"] = "active"

    def _subscription(self, sub_id: str) -> JSON:
        if sub_id not in self.subscriptions:
            raise no_such("subscription", sub_id)
        return self.subscriptions[sub_id]

    def _update_subscription(self, params: JSON, id: str) -> JSON:
        check_params(
            params,
            ("cancel_at_period_end", "metadata", "default_payment_method", "description",
             "pause_collection", "items", "proration_behavior", "payment_behavior"),
        )  # fmt: skip
        sub = self._subscription(id)
        if sub["status"] == "canceled" and set(params) - {"metadata", "expand"}:
            raise invalid_request(
                "A canceled subscription can only update its cancellation_details and metadata."
            )
        self._check_method_owner(
            params.get("default_payment_method"), sub["customer"], "default_payment_method"
        )
        sub["metadata"] = merge_metadata(sub["metadata"], params.get("metadata"))
        for field in ("default_payment_method", "description"):
            if field in params:
                sub[field] = params[field] or None
        if "cancel_at_period_end" in params:
            period_end = sub["items"]["data"][0]["current_period_end"]
            sub.update(
                self._cancellation_fields(bool_param(params, "cancel_at_period_end"), period_end)
            )
        if "pause_collection" in params:
            sub["pause_collection"] = self._pause_collection(params["pause_collection"])
        if "items" in params:
            self._change_items(sub, params)
        return sub

    PRORATION_BEHAVIORS = ("always_invoice", "none")  # create_prorations: not modelled

    def _change_items(self, sub: JSON, params: JSON) -> None:
        """`items[0][id]` onto `items[0][price]` x `[quantity]`. `always_invoice`
        invoices the proration at once, as Stripe does: per second of the period left, one
        negative line for the unused time of the old price and one positive line for the
        remaining time on the new one (each rounded to the minor unit), charged to the
        default payment method (a negative total goes to the customer's credit balance);
        `payment_behavior=error_if_incomplete` refuses the whole update on a decline.
        `none`: the new price is billed from the next invoice."""
        behavior = params.get("proration_behavior", "create_prorations")
        if behavior not in self.PRORATION_BEHAVIORS:
            raise invalid_request(
                f"the fake models proration_behavior {self.PRORATION_BEHAVIORS} only",
                param="proration_behavior",
            )
        items = params["items"]
        if not isinstance(items, list) or len(items) != 1:
            raise invalid_request("the fake changes one item", param="items")
        check_params(items[0], ("id", "price", "quantity"))
        [item] = [i for i in sub["items"]["data"] if i["id"] == items[0].get("id")] or [None]
        if item is None:
            raise no_such("subscription_item", str(items[0].get("id")), param="items[0][id]")
        price = self._price(str(items[0].get("price") or item["price"]["id"]))
        quantity = int(items[0].get("quantity") or item["quantity"])
        old_price, old_quantity = item["price"], item["quantity"]
        if price["recurring"]["interval"] != old_price["recurring"]["interval"]:
            raise invalid_request("the fake does not model an interval change", param="items")
        if price["currency"] != sub["currency"]:
            raise invalid_request("the price's currency is not the subscription's")
        before = copy.deepcopy(item)
        item.update(price=copy.deepcopy(price), quantity=quantity)
        if behavior == "none":
            return
        now, start, end = self.now(), item["current_period_start"], item["current_period_end"]
        unused = _prorated(old_price["unit_amount"] * old_quantity, now, start, end)
        remaining = _prorated(price["unit_amount"] * quantity, now, start, end)
        day = time.strftime("%d %b %Y", time.gmtime(now))
        old_name, new_name = _item_name(old_price, old_quantity), _item_name(price, quantity)
        lines = [
            self._proration_line(sub, old_price, old_quantity, -unused,
                                 f"Unused time on {old_name} after {day}", now, end),
            self._proration_line(sub, price, quantity, remaining,
                                 f"Remaining time on {new_name} after {day}", now, end),
        ]  # fmt: skip
        total = -unused + remaining
        invoice = self._new_invoice(sub, max(total, 0), sub["currency"], now)
        invoice.update(
            billing_reason="subscription_update", subtotal=total, total=total,
            period_start=now, period_end=now,
            lines={"object": "list", "data": lines, "has_more": False,
                   "total_count": len(lines), "url": f"/v1/invoices/{invoice['id']}/lines"},
        )  # fmt: skip
        if total <= 0:
            customer = self.customers.get(sub["customer"])
            if customer is not None and total < 0:
                customer["balance"] = customer.get("balance", 0) + total
            invoice.update(amount_paid=0, amount_remaining=0, status="paid")
            invoice["status_transitions"]["paid_at"] = now
        else:
            pi = self._new_payment_intent(total, sub["currency"], customer=sub["customer"])
            pi["description"] = "Subscription update"
            self._set_payment_method(pi, sub["default_payment_method"])
            try:
                self._confirm(pi, off_session=True)
            except StripeHTTPError:
                if params.get("payment_behavior") == "error_if_incomplete":
                    item.clear()
                    item.update(before)  # refused: the subscription stays as it was
                    raise
            self._store(self.payment_intents, pi)
            self._invoice_payment_intent[invoice["id"]] = pi["id"]
        self._store(self.invoices, invoice)
        sub["latest_invoice"] = invoice["id"]
        if total > 0:
            self._settle_invoice_of(pi["id"])

    def _proration_line(
        self, sub: JSON, price: JSON, quantity: int, amount: int, text: str, start: int,
        end: int,
    ) -> JSON:  # fmt: skip
        return {
            "id": new_id("il_"),
            "object": "line_item",
            "amount": amount,
            "currency": sub["currency"],
            "description": text,
            "discountable": False,
            "livemode": False,
            "metadata": {},
            "parent": {
                "type": "subscription_item_details",
                "subscription_item_details": {
                    "proration": True,
                    "subscription": sub["id"],
                    "subscription_item": sub["items"]["data"][0]["id"],
                },
            },
            "period": {"start": start, "end": end},
            "pricing": {"price_details": {"price": price["id"], "product": price["product"]},
                        "type": "price_details",
                        "unit_amount_decimal": price["unit_amount_decimal"]},
            "proration": True,
            "quantity": quantity,
            "subscription": sub["id"],
        }  # fmt: skip

    PAUSE_BEHAVIORS = ("keep_as_draft", "mark_uncollectible", "void")

    def _pause_collection(self, value: Any) -> JSON | None:
        """`pause_collection[behavior]` (+ `[resumes_at]`, in the future) sets it; an
        empty string unsets it. The status stays as it is (Stripe's does too)."""
        if value == "":
            return None
        if not isinstance(value, dict):
            raise invalid_request("Invalid pause_collection", param="pause_collection")
        check_params(value, ("behavior", "resumes_at"))
        behavior = required(value, "behavior")
        if behavior not in self.PAUSE_BEHAVIORS:
            raise invalid_request(
                f"Invalid pause_collection[behavior]: {behavior}",
                param="pause_collection[behavior]",
            )
        resumes_at = int_param(value, "resumes_at")
        if resumes_at is not None and resumes_at <= self.now():
            raise invalid_request(
                "pause_collection[resumes_at] must be in the future",
                param="pause_collection[resumes_at]",
            )
        return {"behavior": behavior, "resumes_at": resumes_at}

    def _cancel_subscription(self, params: JSON, id: str) -> JSON:
        check_params(params, ("invoice_now", "prorate", "cancellation_details"))
        sub = self._subscription(id)
        if sub["status"] != "canceled":
            now = self.now()
            sub.update(status="canceled", canceled_at=now, ended_at=now)
            sub["cancellation_details"]["reason"] = "cancellation_requested"
        return sub


def _prorated(amount: int, now: int, start: int, end: int) -> int:
    """`amount` for the seconds from `now` to `end` of the period `start`-`end`, rounded
    half up to the minor unit (as Stripe rounds a proration line)."""
    left, whole = max(end - max(now, start), 0), end - start
    return (2 * amount * left + whole) // (2 * whole)


def _item_name(price: JSON, quantity: int) -> str:
    name = price.get("nickname") or price["product"]
    return f"{quantity} \u00d7 {name}" if quantity != 1 else str(name)  # U+00D7, as Stripe
