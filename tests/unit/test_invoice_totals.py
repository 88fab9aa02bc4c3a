"""Invoice lines and totals in integer minor units, and invoice numbers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing_contracts.invoices import MAX_QUANTITY, InvoiceLineIn
from billing_contracts.money import MAX_MINOR_UNITS, Money
from billing_worker.domain.errors import CurrencyMismatch, InvalidInput
from billing_worker.domain.invoices import invoice_number, number_value, price


def line(quantity: int, amount: str, currency: str, description: str = "item") -> InvoiceLineIn:
    return InvoiceLineIn(
        description=description,
        quantity=quantity,
        unit_price=Money(amount=amount, currency=currency),
    )


def test_a_line_amount_is_quantity_times_unit_price_and_the_total_their_sum() -> None:
    priced = price("USD", [line(3, "0.10", "USD"), line(1, "19.99", "USD"), line(2, "0", "USD")])

    assert [(x.quantity, x.unit_price_minor, x.amount_minor) for x in priced.lines] == [
        (3, 10, 30),
        (1, 1999, 1999),
        (2, 0, 0),
    ]
    assert priced.subtotal_minor == priced.total_minor == 2029


def test_yen_have_no_minor_digits() -> None:
    priced = price("JPY", [line(7, "1500", "JPY"), line(1, "1", "JPY")])
    assert priced.total_minor == 10_501


def test_dinars_have_three_minor_digits() -> None:
    priced = price("KWD", [line(3, "0.125", "KWD"), line(2, "10.005", "KWD")])
    assert [x.amount_minor for x in priced.lines] == [375, 20_010]
    assert priced.total_minor == 20_385


@given(st.lists(st.tuples(st.integers(1, 1000), st.integers(0, 10**9)), min_size=1, max_size=20))
def test_the_total_is_exact_whatever_the_lines(items: list[tuple[int, int]]) -> None:
    lines = [
        line(quantity, str(cents // 100) + f".{cents % 100:02d}", "EUR")
        for quantity, cents in items
    ]
    assert price("EUR", lines).total_minor == sum(quantity * cents for quantity, cents in items)


def test_a_line_in_another_currency_is_a_currency_mismatch() -> None:
    with pytest.raises(CurrencyMismatch) as refused:
        price("USD", [line(1, "1.00", "USD"), line(1, "1.00", "EUR")])
    assert refused.value.code == "currency_mismatch"
    assert refused.value.details == {"line": 1, "currency": "EUR", "invoice_currency": "USD"}


def test_a_line_amount_beyond_bigint_is_refused_as_invalid_input() -> None:
    huge = str(MAX_MINOR_UNITS // 2)  # fits alone; twice it does not
    with pytest.raises(InvalidInput, match="line 0"):
        price("JPY", [line(3, huge, "JPY")])


def test_a_total_beyond_bigint_is_refused_as_invalid_input() -> None:
    huge = str(MAX_MINOR_UNITS // 2 + 1)
    with pytest.raises(InvalidInput, match="invoice total") as refused:
        price("JPY", [line(1, huge, "JPY"), line(1, huge, "JPY")])
    assert refused.value.code == "invalid_message"


def test_the_largest_quantity_of_the_largest_fitting_price_is_accepted() -> None:
    unit = MAX_MINOR_UNITS // MAX_QUANTITY
    priced = price("JPY", [line(MAX_QUANTITY, str(unit), "JPY")])
    assert priced.total_minor == unit * MAX_QUANTITY <= MAX_MINOR_UNITS


@pytest.mark.parametrize(
    ("year", "value", "number"),
    [
        (2026, 1, "INV-2026-000001"),
        (2026, 42, "INV-2026-000042"),
        (2027, 1_000_000, "INV-2027-1000000"),
    ],
)
def test_numbers_have_the_year_and_six_digits_at_least(year: int, value: int, number: str) -> None:
    assert invoice_number(year, value) == number
    assert number_value(number) == (year, value)


def test_numbers_start_at_one() -> None:
    with pytest.raises(ValueError, match="start at 1"):
        invoice_number(2026, 0)
