"""The command, query and event models refuse what the wire contract does not allow."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

import billing_contracts
from billing_contracts import (
    CancelSubscription,
    Command,
    CreateInvoice,
    CreateSubscription,
    Deposit,
    GetBalance,
    GetInvoices,
    GetSubscriptions,
    ListPlans,
    ListTransactions,
    OrderCreated,
    PayInvoice,
    Query,
    UpsertPlan,
    Withdraw,
)

SUBSCRIPTION_ID = "6b9f8a5e-0d8e-4a8e-9b7c-1f2e3d4c5b6a"
USD_10 = {"amount": "10.00", "currency": "USD"}
LINE = {"description": "Pro plan, March", "quantity": 1, "unit_price": USD_10}
ITEM = {"sku": "SKU-1", "description": "Blue mug", "quantity": 2, "unit_price": USD_10}

COMMANDS: dict[type[Command], dict[str, Any]] = {
    Deposit: {"user_id": "u1", "amount": USD_10, "provider": "sandbox"},
    Withdraw: {"user_id": "u1", "amount": USD_10, "description": "Coffee"},
    UpsertPlan: {"code": "pro", "name": "Pro", "price": USD_10, "interval": "month"},
    CreateSubscription: {"user_id": "u1", "plan_code": "pro", "payment_source": "balance"},
    CancelSubscription: {"user_id": "u1", "subscription_id": SUBSCRIPTION_ID},
    CreateInvoice: {"user_id": "u1", "currency": "USD", "lines": [LINE]},
    PayInvoice: {"user_id": "u1", "invoice_id": SUBSCRIPTION_ID, "source": "balance"},
}
QUERIES: dict[type[Query], dict[str, Any]] = {
    ListPlans: {},
    GetSubscriptions: {"user_id": "u1"},
    GetBalance: {"user_id": "u1"},
    ListTransactions: {"user_id": "u1"},
    GetInvoices: {"user_id": "u1"},
}
ORDER: dict[str, Any] = {"order_id": "ord_42", "user_id": "u1", "currency": "USD", "items": [ITEM]}

command_types = pytest.mark.parametrize("model", list(COMMANDS), ids=lambda m: m.__name__)
query_types = pytest.mark.parametrize("model", list(QUERIES), ids=lambda m: m.__name__)


def command(model: type[Command], **changes: Any) -> dict[str, Any]:
    return {"idempotency_key": "key-1", **COMMANDS[model], **changes}


def wire(payload: dict[str, Any]) -> str:
    return json.dumps(payload)


@command_types
def test_a_valid_command_is_accepted_from_json_and_round_trips(model: type[Command]) -> None:
    parsed = model.model_validate_json(wire(command(model)))
    assert model.model_validate_json(parsed.model_dump_json()) == parsed


@query_types
def test_a_valid_query_is_accepted_from_json(model: type[Query]) -> None:
    model.model_validate_json(wire(QUERIES[model]))


@command_types
def test_a_command_with_an_unknown_field_is_refused(model: type[Command]) -> None:
    with pytest.raises(ValidationError, match="extra_forbidden"):
        model.model_validate_json(wire(command(model, surprise=1)))


@query_types
def test_a_query_with_an_unknown_field_is_refused(model: type[Query]) -> None:
    with pytest.raises(ValidationError, match="extra_forbidden"):
        model.model_validate_json(wire({**QUERIES[model], "surprise": 1}))


@command_types
def test_a_command_without_an_idempotency_key_is_refused(model: type[Command]) -> None:
    payload = command(model)
    del payload["idempotency_key"]
    with pytest.raises(ValidationError, match="idempotency_key"):
        model.model_validate_json(wire(payload))


@command_types
@pytest.mark.parametrize("key", ["", "k" * 256], ids=["empty", "256-chars"])
def test_an_empty_or_too_long_idempotency_key_is_refused(model: type[Command], key: str) -> None:
    with pytest.raises(ValidationError, match="idempotency_key"):
        model.model_validate_json(wire(command(model, idempotency_key=key)))


@command_types
def test_an_idempotency_key_of_255_characters_is_accepted(model: type[Command]) -> None:
    model.model_validate_json(wire(command(model, idempotency_key="k" * 255)))


@command_types
def test_a_command_is_immutable(model: type[Command]) -> None:
    parsed = model.model_validate(command(model))
    with pytest.raises(ValidationError):
        parsed.idempotency_key = "other"  # type: ignore[misc]


@pytest.mark.parametrize("model", [Deposit, Withdraw], ids=lambda m: m.__name__)
@pytest.mark.parametrize("amount", ["0", "0.00"])
def test_a_deposit_or_withdrawal_of_zero_is_refused(model: type[Command], amount: str) -> None:
    with pytest.raises(ValidationError, match="greater than zero"):
        model.model_validate(command(model, amount={"amount": amount, "currency": "USD"}))


@pytest.mark.parametrize("model", [Deposit, Withdraw], ids=lambda m: m.__name__)
def test_a_deposit_or_withdrawal_of_a_float_amount_is_refused(model: type[Command]) -> None:
    with pytest.raises(ValidationError):
        model.model_validate_json(wire(command(model, amount={"amount": 10.0, "currency": "USD"})))


@pytest.mark.parametrize(
    ("model", "id_field"),
    [(GetSubscriptions, "subscription_id"), (GetInvoices, "invoice_id")],
    ids=["GetSubscriptions", "GetInvoices"],
)
@pytest.mark.parametrize("selectors", ["neither", "id alone"])
def test_a_get_query_needs_the_user_it_reads_for(
    model: type[Query], id_field: str, selectors: str
) -> None:
    payload = {} if selectors == "neither" else {id_field: SUBSCRIPTION_ID}
    with pytest.raises(ValidationError, match="user_id"):
        model.model_validate_json(wire(payload))


@pytest.mark.parametrize(
    ("model", "id_field"),
    [(GetSubscriptions, "subscription_id"), (GetInvoices, "invoice_id")],
    ids=["GetSubscriptions", "GetInvoices"],
)
def test_a_get_query_by_id_names_the_user_too(model: type[Query], id_field: str) -> None:
    query = model.model_validate_json(wire({id_field: SUBSCRIPTION_ID, "user_id": "u1"}))
    fields = query.model_dump(mode="json")
    assert (fields[id_field], fields["user_id"]) == (SUBSCRIPTION_ID, "u1")


@pytest.mark.parametrize(
    ("model", "fields"),
    [
        (PayInvoice, {"invoice_id": SUBSCRIPTION_ID, "source": "balance"}),
        (CancelSubscription, {"subscription_id": SUBSCRIPTION_ID}),
    ],
    ids=["PayInvoice", "CancelSubscription"],
)
def test_a_command_on_an_object_by_id_needs_the_user_it_acts_for(
    model: type[Command], fields: dict[str, Any]
) -> None:
    with pytest.raises(ValidationError, match="user_id"):
        model.model_validate_json(wire({"idempotency_key": "key-1", **fields}))
    with pytest.raises(ValidationError, match="user_id"):
        model.model_validate_json(wire({"idempotency_key": "key-1", "user_id": "", **fields}))


def test_a_get_query_refuses_an_id_that_is_not_a_uuid() -> None:
    with pytest.raises(ValidationError):
        GetSubscriptions.model_validate_json(wire({"user_id": "u1", "subscription_id": "42"}))


@pytest.mark.parametrize("model", [ListTransactions, GetInvoices], ids=lambda m: m.__name__)
@pytest.mark.parametrize("limit", [0, 101, -1, "20", 20.0])
def test_a_page_limit_outside_1_to_100_or_not_an_integer_is_refused(
    model: type[Query], limit: object
) -> None:
    with pytest.raises(ValidationError, match="limit"):
        model.model_validate_json(wire({"user_id": "u1", "limit": limit}))


@pytest.mark.parametrize("model", [ListTransactions, GetInvoices], ids=lambda m: m.__name__)
def test_a_page_limit_defaults_to_20(model: type[ListTransactions | GetInvoices]) -> None:
    assert model.model_validate({"user_id": "u1"}).limit == 20


def test_an_order_with_no_items_is_refused() -> None:
    with pytest.raises(ValidationError, match="items"):
        OrderCreated.model_validate_json(wire({**ORDER, "items": []}))


def test_an_order_with_more_than_100_items_is_refused() -> None:
    OrderCreated.model_validate_json(wire({**ORDER, "items": [ITEM] * 100}))
    with pytest.raises(ValidationError, match="items"):
        OrderCreated.model_validate_json(wire({**ORDER, "items": [ITEM] * 101}))


def test_an_order_is_an_event_without_an_idempotency_key() -> None:
    order = OrderCreated.model_validate_json(wire(ORDER))
    assert order.order_id == "ord_42"
    assert order.items[0].quantity == 2
    with pytest.raises(ValidationError, match="extra_forbidden"):
        OrderCreated.model_validate_json(wire({**ORDER, "idempotency_key": "k"}))


def test_an_order_item_without_a_sku_and_with_a_free_price_is_accepted() -> None:
    item = {
        "description": "Gift wrap",
        "quantity": 1,
        "unit_price": {"amount": "0", "currency": "USD"},
    }
    OrderCreated.model_validate_json(wire({**ORDER, "items": [item]}))


@pytest.mark.parametrize("order_id", ["", "o" * 256])
def test_an_order_id_that_is_empty_or_too_long_is_refused(order_id: str) -> None:
    with pytest.raises(ValidationError, match="order_id"):
        OrderCreated.model_validate_json(wire({**ORDER, "order_id": order_id}))


@pytest.mark.parametrize("quantity", [0, -1, "2", 2.0, 1_000_001, True])
def test_a_line_quantity_must_be_a_positive_integer_within_bounds(quantity: object) -> None:
    with pytest.raises(ValidationError, match="quantity"):
        CreateInvoice.model_validate_json(
            wire(command(CreateInvoice, lines=[{**LINE, "quantity": quantity}]))
        )
    with pytest.raises(ValidationError, match="quantity"):
        OrderCreated.model_validate_json(wire({**ORDER, "items": [{**ITEM, "quantity": quantity}]}))


def test_an_invoice_needs_between_1_and_100_lines() -> None:
    CreateInvoice.model_validate_json(wire(command(CreateInvoice, lines=[LINE] * 100)))
    for lines in ([], [LINE] * 101):
        with pytest.raises(ValidationError, match="lines"):
            CreateInvoice.model_validate_json(wire(command(CreateInvoice, lines=lines)))


def test_an_invoice_line_in_another_currency_is_left_to_the_worker() -> None:
    eur_line = {**LINE, "unit_price": {"amount": "10.00", "currency": "EUR"}}
    invoice = CreateInvoice.model_validate_json(wire(command(CreateInvoice, lines=[eur_line])))
    assert invoice.lines[0].unit_price.currency == "EUR"


def test_an_invoice_line_with_an_unknown_field_is_refused() -> None:
    with pytest.raises(ValidationError, match="extra_forbidden"):
        CreateInvoice.model_validate_json(wire(command(CreateInvoice, lines=[{**LINE, "tax": 1}])))


def test_an_invoice_due_date_without_a_timezone_is_refused() -> None:
    with pytest.raises(ValidationError, match="due_at"):
        CreateInvoice.model_validate_json(
            wire(command(CreateInvoice, due_at="2026-04-01T00:00:00"))
        )
    CreateInvoice.model_validate_json(wire(command(CreateInvoice, due_at="2026-04-01T00:00:00Z")))


def test_an_invoice_is_paid_from_the_balance_or_by_card_through_a_named_provider() -> None:
    for source in ("balance", "stripe", "yookassa"):
        PayInvoice.model_validate_json(wire(command(PayInvoice, source=source)))
    for source in ("sandbox", "card", ""):
        with pytest.raises(ValidationError, match="source"):
            PayInvoice.model_validate_json(wire(command(PayInvoice, source=source)))


def test_a_free_plan_is_accepted() -> None:
    plan = UpsertPlan.model_validate_json(
        wire(command(UpsertPlan, price={"amount": "0", "currency": "USD"}))
    )
    assert plan.price.minor == 0
    assert (plan.interval_count, plan.trial_days, plan.active) == (1, 0, True)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("interval", "fortnight"),
        ("interval_count", 0),
        ("interval_count", 367),
        ("trial_days", -1),
        ("trial_days", 731),
        ("active", "yes"),
        ("code", ""),
    ],
)
def test_a_plan_with_terms_out_of_bounds_is_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        UpsertPlan.model_validate_json(wire(command(UpsertPlan, **{field: value})))


@pytest.mark.parametrize(
    "email", ["nobody", "@example.com", "ada@", "ada @example.com", "a" * 315 + "@b.com"]
)
def test_a_subscription_with_a_malformed_email_is_refused(email: str) -> None:
    with pytest.raises(ValidationError, match="email"):
        CreateSubscription.model_validate_json(wire(command(CreateSubscription, email=email)))


def test_a_subscription_with_a_plain_email_is_accepted() -> None:
    sub = CreateSubscription.model_validate_json(
        wire(command(CreateSubscription, email="ada@example.com"))
    )
    assert sub.email == "ada@example.com"


def test_a_subscription_with_an_unknown_payment_source_is_refused() -> None:
    with pytest.raises(ValidationError, match="payment_source"):
        CreateSubscription.model_validate_json(
            wire(command(CreateSubscription, payment_source="cash"))
        )


def test_a_cancel_defaults_to_the_end_of_the_period_and_wants_a_real_boolean() -> None:
    assert CancelSubscription.model_validate(command(CancelSubscription)).at_period_end is True
    with pytest.raises(ValidationError, match="at_period_end"):
        CancelSubscription.model_validate_json(
            wire(command(CancelSubscription, at_period_end="no"))
        )
    with pytest.raises(ValidationError, match="reason"):
        CancelSubscription.model_validate_json(wire(command(CancelSubscription, reason="r" * 501)))


def test_every_public_model_has_a_json_schema() -> None:
    models = [
        value
        for name in billing_contracts.__all__
        if isinstance(value := getattr(billing_contracts, name), type)
        and issubclass(value, BaseModel)
        and not value.__pydantic_generic_metadata__["parameters"]
    ]
    assert len(models) > 40
    for model in models:
        assert model.model_json_schema()["type"] == "object"
