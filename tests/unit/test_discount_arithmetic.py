"""Discounts, exactly, in integer minor units: percent off per line (half even), amount
off by the largest remainder, tax on the discounted amount, JPY/USD/KWD."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing_contracts.invoices import InvoiceLineIn
from billing_contracts.money import Money
from billing_worker.domain.discounts import (
    Coupon,
    Duration,
    amount_shares,
    percent_shares,
    scaled_off,
)
from billing_worker.domain.errors import CurrencyMismatch
from billing_worker.domain.invoices import price
from billing_worker.domain.taxes import TaxRate


def percent(p: str, code: str = "p") -> Coupon:
    return Coupon(code, code, Decimal(p), None, None, Duration.ONCE, None)


def amount(minor: int, currency: str, code: str = "a") -> Coupon:
    return Coupon(code, code, None, minor, currency, Duration.FOREVER, None)


def item(quantity: int, unit: str, currency: str) -> InvoiceLineIn:
    return InvoiceLineIn(
        description="item", quantity=quantity, unit_price=Money(amount=unit, currency=currency)
    )


def rate(p: str, inclusive: bool) -> TaxRate:
    return TaxRate("vat", "VAT", Decimal(p), inclusive)


@pytest.mark.parametrize(
    ("amounts", "p", "expected"),
    [
        ([450], "10", [45]),
        ([455], "10", [46]),  # 45.5 -> 46 (45 is odd)
        ([445], "10", [44]),  # 44.5 -> 44 (even)
        ([1005, 1], "50", [502, 0]),  # 502.5 -> 502, 0.5 -> 0
        ([999], "100", [999]),
        ([10000], "12.3456", [1235]),  # 1234.56 -> 1235
    ],
)
def test_percent_off_is_per_line_half_even(amounts: list[int], p: str, expected: list[int]) -> None:
    assert percent_shares(amounts, Decimal(p)) == expected


@pytest.mark.parametrize(
    ("amounts", "off", "expected"),
    [
        ([100, 100, 100], 100, [34, 33, 33]),  # remainders tie: the earlier line
        ([100, 200], 100, [33, 67]),  # 33.33 / 66.67 -> the larger remainder gets the unit
        ([500, 0, 500], 3, [2, 0, 1]),
        ([300, 200], 10_000, [300, 200]),  # capped at the subtotal
        ([0, 0], 5, [0, 0]),
        ([7], 0, [0]),
    ],
)
def test_amount_off_by_largest_remainder(amounts: list[int], off: int, expected: list[int]) -> None:
    assert amount_shares(amounts, off) == expected


@pytest.mark.parametrize("bad", ["0", "100.0001", "-1", "5.00001"])
def test_percent_off_range(bad: str) -> None:
    with pytest.raises(ValueError, match="percent off"):
        scaled_off(Decimal(bad))


def test_tax_on_the_discounted_amount_exclusive_and_inclusive() -> None:
    # USD: $10.00 at 20 % exclusive, 10 % off: discount 100, tax 20 % of 900 = 180
    priced = price("USD", [item(1, "10.00", "USD")], [rate("20", False)], percent("10"))
    (line,) = priced.lines
    assert (line.discount_minor, line.tax_minor) == (100, 180)
    assert (priced.subtotal_minor, priced.discount_minor, priced.tax_minor) == (1000, 100, 180)
    assert priced.total_minor == 1080
    # inclusive: 1200 gross with 20 % in it, 200 off -> 1000 gross, tax 1000 x 20/120 = 167
    priced = price("USD", [item(1, "12.00", "USD")], [rate("20", True)], amount(200, "USD"))
    (line,) = priced.lines
    assert (line.discount_minor, line.tax_minor) == (200, 167)
    assert priced.total_minor == 1000  # the discounted gross
    assert priced.subtotal_minor - priced.discount_minor + priced.tax_minor == 1000


@pytest.mark.parametrize(
    ("currency", "unit", "off", "discount", "total"),
    [
        ("JPY", "1005", 101, 101, 904 + 90),  # 10 % of 904 = 90.4 -> 90
        ("USD", "10.05", 101, 101, 904 + 90),
        ("KWD", "1.005", 101, 101, 904 + 90),
    ],
)
def test_currencies_of_zero_two_three_digits(
    currency: str, unit: str, off: int, discount: int, total: int
) -> None:
    priced = price(currency, [item(1, unit, currency)], [rate("10", False)], amount(off, currency))
    assert (priced.discount_minor, priced.total_minor) == (discount, total)


def test_amount_off_in_another_currency_is_a_mismatch() -> None:
    with pytest.raises(CurrencyMismatch):
        price("USD", [item(1, "1.00", "USD")], (), amount(50, "EUR"))


def test_durations() -> None:
    once = percent("5")
    repeating = Coupon("r", "r", Decimal(5), None, None, Duration.REPEATING, 3)
    forever = amount(1, "USD")
    assert [once.applies_to(n) for n in range(3)] == [True, False, False]
    assert [repeating.applies_to(n) for n in range(5)] == [True, True, True, False, False]
    assert all(forever.applies_to(n) for n in range(100))


CURRENCIES = st.sampled_from(["JPY", "USD", "KWD"])
UNITS = {"JPY": 1, "USD": 100, "KWD": 1000}


@st.composite
def invoices(draw: st.DrawFn) -> tuple[str, list[InvoiceLineIn], list[TaxRate | None], Coupon]:
    currency = draw(CURRENCIES)
    count = draw(st.integers(1, 5))
    lines, taxes = [], []
    for _ in range(count):
        minor = draw(st.integers(0, 10**9))
        exponent = {"JPY": 0, "USD": 2, "KWD": 3}[currency]
        whole, frac = divmod(minor, 10**exponent)
        text = f"{whole}" if exponent == 0 else f"{whole}.{frac:0{exponent}d}"
        lines.append(item(draw(st.integers(1, 50)), text, currency))
        p = draw(st.one_of(st.none(), st.integers(0, 999_999)))
        taxes.append(None if p is None else rate(str(Decimal(p) / 10_000), draw(st.booleans())))
    if draw(st.booleans()):
        coupon = percent(str(Decimal(draw(st.integers(1, 1_000_000))) / 10_000))
    else:
        coupon = amount(draw(st.integers(0, 10**12)), currency)
    return currency, lines, taxes, coupon


@given(invoices())
def test_never_negative_and_discount_within_subtotal(
    case: tuple[str, list[InvoiceLineIn], list[TaxRate | None], Coupon],
) -> None:
    currency, lines, taxes, coupon = case
    priced = price(currency, lines, taxes, coupon)
    assert 0 <= priced.discount_minor <= priced.subtotal_minor
    assert priced.total_minor >= 0
    assert priced.total_minor == priced.subtotal_minor - priced.discount_minor + priced.tax_minor
    assert priced.discount_minor == sum(line.discount_minor for line in priced.lines)
    undiscounted = sum(line.amount_minor for line in priced.lines)
    for line in priced.lines:
        assert 0 <= line.discount_minor <= line.amount_minor
        assert 0 <= line.tax_minor <= line.amount_minor - line.discount_minor
        assert line.total_minor >= 0
    if coupon.amount_off_minor is not None:
        assert priced.discount_minor == min(coupon.amount_off_minor, undiscounted)
