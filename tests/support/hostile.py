"""Hostile messages for every queue the worker consumes, generated with hypothesis.

Each example starts from a valid message of its queue and breaks it one or more ways:
wrong types, huge strings, deep nesting (up to 10,000 nested lists), unicode of every
kind, NaN/Infinity tokens, negative and over-precise money, unknown fields, missing
fields, or a body that is not JSON at all. Some categories can only produce invalid
messages (`must_be_invalid`); the others sometimes produce valid ones, which must then
be handled like any message.

Examples are drawn in bulk (`draw`) and sent in batches by the test, so a few hundred
messages cost one round of waiting rather than hundreds.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from billing_contracts import names
from billing_contracts.currencies import CURRENCY_EXPONENTS

Path = tuple[str | int, ...]
_RAW = "\u0001raw{}\u0001"  # a placeholder for JSON text json.dumps cannot write

MONEY = {"amount": "1.50", "currency": "USD"}
UUID_A = "4b1b5a9e-1f0e-4b8a-9a55-0c7a3f1d2e01"

# A valid message per queue. "@key" / "@id" become fresh unique values in every example.
BASE: dict[str, dict[str, Any]] = {
    names.WALLET_DEPOSIT: {
        "idempotency_key": "@key",
        "user_id": "@user",
        "amount": MONEY,
        "provider": "sandbox",
        "payment_method_id": "pm_card_visa",
        "return_url": "https://shop.example/back",
    },
    names.WALLET_WITHDRAW: {
        "idempotency_key": "@key",
        "user_id": "@user",
        "amount": MONEY,
        "description": "fuzz",
        "reference": "r-1",
    },
    names.WALLET_BALANCE: {"user_id": "@user", "currency": "USD"},
    names.WALLET_TRANSACTIONS: {"user_id": "@user", "currency": "USD", "limit": 5},
    names.INVOICE_CREATE: {
        "idempotency_key": "@key",
        "user_id": "@user",
        "currency": "USD",
        "lines": [
            {"description": "line", "quantity": 2, "unit_price": MONEY, "tax_rate": "fuzz-vat"}
        ],
        "due_at": "2031-01-01T00:00:00Z",
        "order_id": "@id",
        "coupon": "FUZZ10",
    },
    # The card variant (the balance one is its subset): every field the queue takes.
    names.INVOICE_PAY: {
        "idempotency_key": "@key",
        "user_id": "@user",
        "invoice_id": UUID_A,
        "source": "yookassa",
        "payment_method_id": "pm-fuzz",
        "return_url": "https://shop.example/back",
        "customer_email": "fuzz@example.com",
    },
    names.INVOICE_GET: {"user_id": "@user", "limit": 5},
    names.INVOICE_VOID: {
        "idempotency_key": "@key",
        "user_id": "@user",
        "invoice_id": UUID_A,
        "reason": "fuzz",
    },
    names.INVOICE_MARK_UNCOLLECTIBLE: {
        "idempotency_key": "@key",
        "user_id": "@user",
        "invoice_id": UUID_A,
        "reason": "fuzz",
    },
    names.PLAN_UPSERT: {
        "idempotency_key": "@key",
        "code": "@id",
        "name": "Fuzz",
        "price": MONEY,
        "interval": "month",
        "interval_count": 1,
        "trial_days": 0,
        "active": True,
        "tax_rate": "fuzz-vat",
    },
    names.PLAN_LIST: {"active_only": True, "code": "fuzz-plan"},
    names.SUBSCRIPTION_CREATE: {
        "idempotency_key": "@key",
        "user_id": "@user",
        "email": "fuzz@example.com",
        "plan_code": "fuzz-plan",
        "payment_source": "balance",
        "quantity": 2,
        "coupon": "FUZZ10",
    },
    names.SUBSCRIPTION_CANCEL: {
        "idempotency_key": "@key",
        "user_id": "@user",
        "subscription_id": UUID_A,
        "at_period_end": True,
        "reason": "fuzz",
    },
    names.SUBSCRIPTION_GET: {"user_id": "@user"},
    names.WALLET_HOLD: {
        "idempotency_key": "@key",
        "user_id": "@user",
        "amount": MONEY,
        "expires_in_seconds": 60,
        "reference": "saga-1",
    },
    names.WALLET_HOLD_CAPTURE: {
        "idempotency_key": "@key",
        "user_id": "@user",
        "hold_id": UUID_A,
        "amount": MONEY,
    },
    names.WALLET_HOLD_RELEASE: {"idempotency_key": "@key", "user_id": "@user", "hold_id": UUID_A},
    names.ORDER_CREATED_QUEUE: {
        "order_id": "@id",
        "user_id": "@user",
        "currency": "USD",
        "items": [{"sku": "SKU-1", "description": "mug", "quantity": 1, "unit_price": MONEY}],
    },
    names.WALLET_DEPOSIT_CANCEL: {
        "idempotency_key": "@key",
        "user_id": "@user",
        "transaction_id": UUID_A,
    },
    names.PAYMENT_REFUND: {
        "idempotency_key": "@key",
        "user_id": "@user",
        "transaction_id": UUID_A,
        "amount": MONEY,
        "reason": "fuzz",
        "destination": "original",
    },
    names.PAYMENT_METHOD_SETUP: {
        "idempotency_key": "@key",
        "user_id": "@user",
        "provider": "sandbox",
        "return_url": "https://shop.example/return",
    },
    names.PAYMENT_METHOD_LIST: {"user_id": "@user", "provider": "sandbox"},
    names.PAYMENT_METHOD_DETACH: {
        "idempotency_key": "@key",
        "user_id": "@user",
        "provider": "sandbox",
        "payment_method_id": "pm_fuzz",
    },
    names.PAYMENT_METHOD_SET_DEFAULT: {
        "idempotency_key": "@key",
        "user_id": "@user",
        "provider": "sandbox",
        "payment_method_id": "pm_fuzz",
    },
    names.SUBSCRIPTION_UPDATE_PAYMENT_METHOD: {
        "idempotency_key": "@key",
        "user_id": "@user",
        "subscription_id": UUID_A,
        "payment_method_id": "pm_fuzz",
    },
    names.PLAN_MIGRATE: {
        "idempotency_key": "@key",
        "plan_code": "fuzz-plan",
        "to_version": 2,
        "from_version": 1,
        "when": "next_period",
    },
    names.SUBSCRIPTION_RESUME: {
        "idempotency_key": "@key",
        "user_id": "@user",
        "subscription_id": UUID_A,
    },
    names.SUBSCRIPTION_PAUSE: {
        "idempotency_key": "@key",
        "user_id": "@user",
        "subscription_id": UUID_A,
        "until": "2030-01-15T00:00:00Z",
    },
    names.SUBSCRIPTION_UNPAUSE: {
        "idempotency_key": "@key",
        "user_id": "@user",
        "subscription_id": UUID_A,
    },
    names.TAX_RATE_UPSERT: {
        "idempotency_key": "@key",
        "code": "fuzz-vat",
        "name": "Fuzz VAT",
        "percent": "19.5",
        "inclusive": False,
    },
    names.TAX_RATE_LIST: {},
    names.COUPON_UPSERT: {
        "idempotency_key": "@key",
        "code": "FUZZ10",
        "name": "Fuzz 10 %",
        "percent_off": "10",
        "duration": "repeating",
        "duration_in_periods": 3,
        "active": True,
        "stripe_coupon_id": "co_fuzz",
    },
    names.COUPON_LIST: {},
    names.SUBSCRIPTION_CHANGE_PLAN: {
        "idempotency_key": "@key",
        "user_id": "@user",
        "subscription_id": UUID_A,
        "plan_code": "fuzz-plan",
        "quantity": 2,
        "when": "now",
        "proration": "prorate",
    },
    names.PROVIDER_EVENTS_QUEUE: {
        "id": "@id",
        "type": "payment.succeeded",
        "data": {"payment_id": "@id", "amount_minor": 150, "currency": "USD"},
    },
}

# Fields that may be left out (paths with "*" for any list index); the rest are required.
OPTIONAL: dict[str, set[str]] = {
    names.WALLET_DEPOSIT: {"provider", "payment_method_id", "return_url"},
    names.WALLET_WITHDRAW: {"reference"},
    names.WALLET_BALANCE: {"currency"},
    names.WALLET_TRANSACTIONS: {"currency", "limit"},
    names.INVOICE_CREATE: {"due_at", "order_id", "lines.*.tax_rate", "coupon"},
    names.INVOICE_PAY: {"payment_method_id", "return_url", "customer_email"},
    names.INVOICE_GET: {"limit"},
    names.INVOICE_VOID: set(),
    names.INVOICE_MARK_UNCOLLECTIBLE: {"reason"},
    names.PLAN_UPSERT: {"interval_count", "trial_days", "active", "tax_rate"},
    names.PLAN_LIST: {"active_only", "code"},
    names.SUBSCRIPTION_CREATE: {"email", "quantity", "coupon"},
    names.SUBSCRIPTION_CANCEL: {"at_period_end", "reason"},
    names.SUBSCRIPTION_GET: set(),
    names.WALLET_HOLD: {"reference"},
    names.WALLET_HOLD_CAPTURE: {"amount"},
    names.WALLET_HOLD_RELEASE: set(),
    names.ORDER_CREATED_QUEUE: {"items.*.sku"},
    names.PROVIDER_EVENTS_QUEUE: {"data.amount_minor", "data.currency"},
    names.WALLET_DEPOSIT_CANCEL: set(),
    names.PAYMENT_REFUND: {"amount", "reason"},
    names.PAYMENT_METHOD_SETUP: {"return_url"},
    names.PAYMENT_METHOD_LIST: {"provider"},
    names.PAYMENT_METHOD_DETACH: set(),
    names.PAYMENT_METHOD_SET_DEFAULT: set(),
    names.SUBSCRIPTION_UPDATE_PAYMENT_METHOD: set(),
    names.PLAN_MIGRATE: {"from_version", "when"},
    names.SUBSCRIPTION_RESUME: set(),
    names.SUBSCRIPTION_PAUSE: {"until"},
    names.SUBSCRIPTION_UNPAUSE: set(),
    names.TAX_RATE_UPSERT: set(),
    names.TAX_RATE_LIST: set(),
    names.COUPON_UPSERT: {"active", "stripe_coupon_id"},
    names.COUPON_LIST: set(),
    names.SUBSCRIPTION_CHANGE_PLAN: {"quantity", "when", "proration"},
}
# The provider callback queue takes the provider's own format, leniently (unknown fields,
# NaN tokens Python's json accepts); only its required fields and well-formedness count.
LENIENT = {names.PROVIDER_EVENTS_QUEUE}

QUEUES = tuple(BASE)
NO_REPLY = {names.ORDER_CREATED_QUEUE, names.PROVIDER_EVENTS_QUEUE}


@dataclass(frozen=True)
class Hostile:
    queue: str
    body: bytes
    categories: tuple[str, ...]
    must_be_invalid: bool

    def describe(self) -> str:
        text = self.body[:300].decode(errors="replace")
        return f"{self.queue} {self.categories} {len(self.body)} bytes: {text!r}"


def all_paths(value: Any, prefix: Path = ()) -> Iterator[Path]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*prefix, key)
            yield from all_paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield (*prefix, index)
            yield from all_paths(item, (*prefix, index))


def pattern(path: Path) -> str:
    return ".".join("*" if isinstance(part, int) else str(part) for part in path)


def required(queue: str, path: Path) -> bool:
    """Whether the contract requires the field at `path` (fields the fuzzer added are not)."""
    if pattern(path) not in {pattern(p) for p in all_paths(BASE[queue])}:
        return False
    if isinstance(path[-1], int):
        return True  # the base's lists hold exactly their one required element
    return pattern(path) not in OPTIONAL[queue]


def get_at(value: Any, path: Path) -> Any:
    for part in path:
        value = value[part]
    return value


def set_at(value: Any, path: Path, new: Any) -> None:
    get_at(value, path[:-1])[path[-1]] = new


def delete_at(value: Any, path: Path) -> None:
    parent = get_at(value, path[:-1])
    del parent[path[-1]]


def money_paths(message: dict[str, Any]) -> list[Path]:
    return [
        path
        for path in all_paths(message)
        if isinstance(get_at(message, path), dict) and set(get_at(message, path)) == set(MONEY)
    ]


def independently_valid_money(amount: Any, currency: Any) -> bool:
    """The money rules of the wire contract, written out again without its code."""
    if not isinstance(amount, str) or not isinstance(currency, str):
        return False
    if currency not in CURRENCY_EXPONENTS:
        return False
    match = re.fullmatch(r"(0|[1-9][0-9]*)(?:\.([0-9]+))?", amount)
    if match is None:
        return False
    fraction, exponent = match.group(2) or "", CURRENCY_EXPONENTS[currency]
    if len(fraction) > exponent:
        return False
    minor = int(match.group(1)) * 10**exponent + int(fraction.ljust(exponent, "0") or "0")
    return minor <= 2**63 - 1  # a PostgreSQL BIGINT of minor units


ODD_STRINGS = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\ud800",
    "\udfff",
    "\ufeff",
    "\u202eevil",
    "😀" * 50,
    "ǅ",
    "\uffff",
    "\n\r\t",
    "Ω" * 300,
    "null",
    "true",
    "0",
    "-1",
    "1e309",
    "<script>",
    "'; DROP TABLE transactions; --",
    "../../etc/passwd",
    "%s%s%n",
    "\\u0000",
]
ODD_AMOUNTS = [
    "-1.00",
    "-0",
    "+1.00",
    "1.001",
    "0.0001",
    "1e3",
    "1E-2",
    "NaN",
    "Infinity",
    "-Infinity",
    " 1.00",
    "1.00 ",
    "1,00",
    "1.",
    ".5",
    "01.00",
    "00",
    "\uff11.\uff10\uff10",  # full-width digits
    "\u0661\u066b\u0660\u0660",  # Arabic-Indic digits and separator
    "0x10",
    "9" * 19,
    "9" * 20,
    "92233720368547758.08",
    "92233720368547758.07",
    "1" * 24,
    "",
    "1_000.00",
    "0.00",
    "0",
    "1.5",
]
ODD_CURRENCIES = ["usd", "XXX", "XYZ", "US", "USDD", "", "JPY", "KWD", "BGN", "EUR", "\u0055SD"]

scalars = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.text(max_size=30),
)
any_json = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
unicode_text = st.one_of(
    st.sampled_from(ODD_STRINGS),
    st.text(min_size=1, max_size=80),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=80),
)


@st.composite
def hostile(draw: st.DrawFn, queue: str) -> Hostile:
    """One broken (or, rarely, accidentally valid) message for `queue`."""
    lenient = queue in LENIENT
    if draw(st.integers(0, 19)) == 0:  # not a JSON object at all
        body = draw(
            st.one_of(
                st.binary(max_size=200),
                st.sampled_from(
                    [
                        b"",
                        b"null",
                        b"[]",
                        b"42",
                        b'"text"',
                        b"{",
                        b"{}}",
                        b"\xff\xfe",
                        b'{"a":1,}',
                        b"[" * 10_000 + b"]" * 10_000,
                    ]
                ),
                st.builds(
                    lambda n: json.dumps(BASE[queue]).encode()[:n],
                    st.integers(1, len(json.dumps(BASE[queue])) - 1),
                ),
            )
        )
        return Hostile(queue, body, ("not_json",), must_be_invalid=True)

    message = copy.deepcopy(BASE[queue])
    raw: list[str] = []  # JSON text spliced in place of placeholders
    categories: list[str] = []
    # Why the message must be refused, each judged on the final message (a later mutation
    # can overwrite an earlier one).
    reasons: list[Callable[[dict[str, Any], str], bool]] = []
    for _ in range(draw(st.integers(1, 3))):
        paths = list(all_paths(message))
        if not paths:
            break
        category = draw(
            st.sampled_from(
                [
                    "wrong_type",
                    "huge_string",
                    "deep_nesting",
                    "unicode",
                    "nan",
                    "unknown_field",
                    "missing_field",
                    "money",
                    "money",
                ]
            )
        )
        path = draw(st.sampled_from(paths))
        if category == "wrong_type":
            set_at(message, path, draw(any_json))
        elif category == "huge_string":
            size = draw(st.sampled_from([256, 501, 2049, 70_000, 300_000]))
            set_at(message, path, draw(st.sampled_from(["x", "é", "😀", "\x00"])) * size)
        elif category == "deep_nesting":
            depth = draw(st.sampled_from([250, 2_000, 10_000]))
            placeholder = json.dumps(_RAW.format(len(raw)))
            set_at(message, path, _RAW.format(len(raw)))
            raw.append("[" * depth + "]" * depth)
            if not lenient or depth >= 2_000:
                reasons.append(lambda _m, text, p=placeholder: p in text)
        elif category == "unicode":
            set_at(message, path, draw(unicode_text))
        elif category == "nan":
            placeholder = json.dumps(_RAW.format(len(raw)))
            set_at(message, path, _RAW.format(len(raw)))
            raw.append(draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "-NaN"])))
            if not lenient:
                reasons.append(lambda _m, text, p=placeholder: p in text)
        elif category == "unknown_field":
            holders = [p for p in [(), *paths] if isinstance(get_at(message, p), dict)]
            where = draw(st.sampled_from(holders))
            holder = get_at(message, where)
            name = draw(st.text(min_size=1, max_size=20).filter(lambda n, h=holder: n not in h))
            holder[name] = draw(any_json)
            if not lenient:
                reasons.append(lambda m, _t, w=where, n=name: has_key(lookup(m, w), n))
        elif category == "missing_field":
            delete_at(message, path)
            if required(queue, path):
                # Invalid only while its parent is there: a later mutation may delete an
                # optional parent (a refund's `amount`) with it, which is valid again.
                reasons.append(
                    lambda m, _t, p=path: (
                        lookup(m, p, missing=True) is _MISSING
                        and lookup(m, p[:-1], missing=True) is not _MISSING
                    )
                )
        elif category == "money":
            targets = money_paths(message)
            if not targets:
                continue
            where = draw(st.sampled_from(targets))
            target = get_at(message, where)
            target["amount"] = draw(
                st.one_of(
                    st.sampled_from(ODD_AMOUNTS),
                    st.from_regex(r"-?[0-9]{1,22}(\.[0-9]{0,5})?", fullmatch=True),
                    st.decimals(allow_nan=False, allow_infinity=False, places=3).map(str),
                )
            )
            if draw(st.booleans()):
                target["currency"] = draw(
                    st.one_of(st.sampled_from(ODD_CURRENCIES), st.text(max_size=4))
                )
            if not lenient:
                reasons.append(lambda m, _t, w=where: bad_money(lookup(m, w)))
        categories.append(category)
    text = json.dumps(fresh(message))
    must = any(reason(message, text) for reason in reasons)
    return Hostile(queue, splice(text, raw), tuple(categories), must_be_invalid=must)


_MISSING = object()


def lookup(value: Any, path: Path, missing: bool = False) -> Any:
    """The value at `path`, or None (`_MISSING` when asked) if it is not there any more."""
    try:
        return get_at(value, path)
    except (KeyError, IndexError, TypeError):
        return _MISSING if missing else None


def has_key(value: Any, name: str) -> bool:
    return isinstance(value, dict) and name in value


def bad_money(value: Any) -> bool:
    """True when `value` is still a money object whose amount breaks the wire rules."""
    return (
        isinstance(value, dict)
        and set(value) == set(MONEY)
        and not independently_valid_money(value["amount"], value["currency"])
    )


def splice(text: str, raw: list[str]) -> bytes:
    for index, token in enumerate(raw):
        text = text.replace(json.dumps(_RAW.format(index)), token)
    return text.encode()


def fresh(value: Any) -> Any:
    """Unique ids for every example, so no two examples meet on one key."""
    if isinstance(value, dict):
        return {key: fresh(item) for key, item in value.items()}
    if isinstance(value, list):
        return [fresh(item) for item in value]
    if value == "@key":
        return uuid.uuid4().hex
    if value == "@id":
        return f"fuzz-{uuid.uuid4().hex[:12]}"
    if value == "@user":
        return f"fuzz-user-{uuid.uuid4().hex[:4]}"
    return value


def draw(strategy: st.SearchStrategy[Any], count: int) -> list[Any]:
    """`count` examples of `strategy`, drawn by hypothesis's engine (no shrinking: the test
    reports the offending message itself)."""
    drawn: list[Any] = []

    @settings(
        max_examples=count,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(example: Any) -> None:
        drawn.append(example)

    collect()
    return drawn


# Values of one field worth trying on every run, beside the random draws (which reach a
# given field of a message only now and then): (queue, field, value, must_be_invalid).
# A valid value is handled like any message (an unknown rate is `not_found`).
FIELD_VALUES: list[tuple[str, str, Any, bool]] = [
    *(
        (names.PLAN_UPSERT, "tax_rate", value, invalid)
        for value, invalid in [
            ("fuzz-vat", False),  # the rate the test sets up
            ("no-such-rate", False),  # unknown: not_found
            (None, False),
            ("FUZZ-VAT", False),  # codes are case-sensitive: unknown
            ("x" * 100, False),
            ("x" * 101, True),
            ("x" * 300_000, True),
            ("", True),
            (" fuzz-vat", True),
            ("fuzz vat", True),
            ("-fuzz", True),
            ("fuzz\x00", True),
            ("😀", True),
            ("\u0661", True),
            ("../../etc/passwd", True),
            (19, True),
            (19.5, True),
            (True, True),
            (["fuzz-vat"], True),
            ({"code": "fuzz-vat"}, True),
        ]
    ),
    *(
        (names.SUBSCRIPTION_CREATE, "quantity", value, invalid)
        for value, invalid in [
            (1, False),
            (10_000, False),
            (0, True),
            (-1, True),
            (10_001, True),
            (2**63, True),
            (10**40, True),
            (1.0, True),
            (2.5, True),
            ("2", True),
            (True, True),
            (None, True),
            ([2], True),
        ]
    ),
]


def field_values() -> list[Hostile]:
    """FIELD_VALUES as messages: the queue's valid base with that one field replaced."""
    examples = []
    for queue, field, value, invalid in FIELD_VALUES:
        message = fresh(copy.deepcopy(BASE[queue]))
        message[field] = value
        examples.append(Hostile(queue, json.dumps(message).encode(), (f"field:{field}",), invalid))
    return examples


def oversize(queue: str) -> Hostile:
    """A message of just over 1 MiB: one of its own string fields made huge (an extra field
    on the lenient provider queue, where that alone would be acceptable)."""
    message = fresh(copy.deepcopy(BASE[queue]))
    huge = "x" * (1024 * 1024 + 1)
    strings = [key for key, value in message.items() if isinstance(value, str)]
    if queue in LENIENT or not strings:
        message["padding"] = huge
    else:
        message[strings[-1]] = huge
    return Hostile(queue, json.dumps(message).encode(), ("oversize",), must_be_invalid=True)


def nul_character(queue: str) -> Hostile:
    """A message whose string fields carry a NUL character: well-formed JSON, which
    PostgreSQL cannot store in a text column (it must be refused, not retried)."""
    message = fresh(copy.deepcopy(BASE[queue]))
    strings = [
        p
        for p in all_paths(message)
        if isinstance(get_at(message, p), str)
        and p[-1]
        not in (
            "amount",
            "currency",
            "invoice_id",
            "subscription_id",
            "interval",
            "provider",
            "payment_source",
            "source",
            "type",
            "due_at",
            "email",
        )
    ]
    for path in strings:
        set_at(message, path, get_at(message, path) + "\x00")
    return Hostile(
        queue,
        json.dumps(message).encode(),
        ("nul_character",),
        must_be_invalid=bool(strings) and queue not in LENIENT,
    )
