"""A line's tax, exactly, in integer minor units: exclusive and inclusive rates, rounded
half to even once per line, on currencies of 0, 2 and 3 minor digits."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing_contracts.invoices import InvoiceLineIn
from billing_contracts.money import MAX_MINOR_UNITS, Money
from billing_worker.domain.errors import InvalidInput
from billing_worker.domain.invoices import price
from billing_worker.domain.taxes import (
    TaxRate,
    format_percent,
    line_tax,
    round_half_even,
    scaled,
)


def rate(percent: str, inclusive: bool = False, code: str = "vat") -> TaxRate:
    return TaxRate(code, code.upper(), Decimal(percent), inclusive)


def line(quantity: int, amount: str, currency: str) -> InvoiceLineIn:
    return InvoiceLineIn(
        description="item", quantity=quantity, unit_price=Money(amount=amount, currency=currency)
    )


@pytest.mark.parametrize(
    ("amount", "percent", "inclusive", "tax"),
    [
        # USD (2 digits): 19 % of $4.50 is 85.5 cents -> 86 (85 is odd), of $1.50 28.5 -> 28
        (450, "19", False, 86),
        (150, "19", False, 28),
        (1000, "20", True, 167),  # $10.00 with 20 % in it: 166.67 -> 167, net 833
        # inclusive ties: 60 % in 4 cents is 1.5 -> 2, in 12 cents 4.5 -> 4
        (4, "60", True, 2),
        (12, "60", True, 4),
        # JPY (0 digits): 10 % of 1005 yen is 100.5 -> 100; 10 % in 1100 yen is 100
        (1005, "10", False, 100),
        (1015, "10", False, 102),
        (1100, "10", True, 100),
        # KWD (3 digits): 5 % of 1.250 is 62.5 fils -> 62; 5 % in 1.050 is 50
        (1250, "5", False, 62),
        (1050, "5", True, 50),
        # four decimal places: 8.875 % of $100.00 is 887.5 cents -> 888
        (10000, "8.875", False, 888),
        (10000, "0.0001", False, 0),
        (500_000, "0.0001", False, 0),  # 0.5 -> 0 (even)
        (1_500_000, "0.0001", False, 2),  # 1.5 -> 2
        (999, "0", False, 0),
        (999, "0", True, 0),
        (0, "19", False, 0),
        (0, "19", True, 0),
        (1, "99.9999", False, 1),
    ],
)
def test_the_tax_of_a_line(amount: int, percent: str, inclusive: bool, tax: int) -> None:
    assert line_tax(amount, Decimal(percent), inclusive) == tax


def test_half_even_rounds_ties_to_the_even_integer_and_the_rest_to_the_nearest() -> None:
    assert [round_half_even(n, 2) for n in (1, 3, 5, 7)] == [0, 2, 2, 4]
    assert [round_half_even(n, 10) for n in (14, 16, 25, 35)] == [1, 2, 2, 4]


@pytest.mark.parametrize("percent", ["100", "-1", "0.00001", "150"])
def test_a_percent_out_of_range_or_too_precise_is_refused(percent: str) -> None:
    with pytest.raises(ValueError, match="tax percent"):
        scaled(Decimal(percent))


def test_percents_are_shown_in_their_shortest_exact_form() -> None:
    assert [format_percent(Decimal(p)) for p in ("19.0000", "7.5000", "0.0000", "8.875")] == [
        "19",
        "7.5",
        "0",
        "8.875",
    ]


def test_exclusive_lines_add_the_tax_and_inclusive_lines_contain_it() -> None:
    priced = price(
        "USD",
        [line(3, "1.50", "USD"), line(1, "10.00", "USD"), line(2, "5.00", "USD")],
        [rate("19"), rate("20", inclusive=True, code="vat20"), None],
    )
    assert [(x.amount_minor, x.tax_minor, x.net_minor) for x in priced.lines] == [
        (450, 86, 450),
        (1000, 167, 833),
        (1000, 0, 1000),
    ]
    assert [(x.tax_rate_code, x.tax_inclusive) for x in priced.lines] == [
        ("vat", False),
        ("vat20", True),
        (None, None),
    ]
    assert (priced.subtotal_minor, priced.tax_minor, priced.total_minor) == (
        450 + 833 + 1000,
        86 + 167,
        450 + 833 + 1000 + 86 + 167,
    )


@pytest.mark.parametrize(
    ("currency", "amount", "percent", "expected"),
    [("JPY", "1005", "10", (1005, 100, 1105)), ("KWD", "1.250", "5", (1250, 62, 1312))],
)
def test_an_exclusive_rate_on_zero_and_three_digit_currencies(
    currency: str, amount: str, percent: str, expected: tuple[int, int, int]
) -> None:
    priced = price(currency, [line(1, amount, currency)], [rate(percent)])
    assert (priced.subtotal_minor, priced.tax_minor, priced.total_minor) == expected


def test_many_lines_are_rounded_each_on_its_own_not_on_their_sum() -> None:
    # 100 lines of 1.50 at 19 %: each 28.5 cents -> 28; on the sum it would be 2850
    priced = price("USD", [line(1, "1.50", "USD")] * 100, [rate("19")] * 100)
    assert priced.tax_minor == 28 * 100
    assert priced.total_minor == 150 * 100 + 2800


def test_a_total_past_bigint_with_its_tax_is_refused() -> None:
    big = Money.from_minor(MAX_MINOR_UNITS - 10, "USD")
    item = InvoiceLineIn(description="big", quantity=1, unit_price=big)
    price("USD", [item], [rate("19", inclusive=True)])  # the tax is inside: fits
    with pytest.raises(InvalidInput):
        price("USD", [item], [rate("19")])


amounts = st.integers(min_value=0, max_value=10**15)
percents = st.integers(min_value=0, max_value=999_999).map(lambda p: Decimal(p).scaleb(-4))


@given(amount=amounts, percent=percents)
def test_inclusive_net_and_tax_make_the_amount(amount: int, percent: Decimal) -> None:
    tax = line_tax(amount, percent, inclusive=True)
    assert (amount - tax) + tax == amount
    assert 0 <= tax <= amount * percent / 100 + 1
    # the nearest integer to the exact share (a tie either way)
    assert abs(tax - Decimal(amount) * percent / (100 + percent)) <= Decimal("0.5")


@given(amount=amounts, percent=percents)
def test_exclusive_total_less_tax_is_the_amount(amount: int, percent: Decimal) -> None:
    tax = line_tax(amount, percent, inclusive=False)
    total = amount + tax
    assert total - tax == amount
    assert 0 <= tax <= amount * percent / 100 + 1
    assert abs(tax - Decimal(amount) * percent / 100) <= Decimal("0.5")
