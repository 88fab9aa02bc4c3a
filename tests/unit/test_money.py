"""Money on the wire: decimal strings with the currency's ISO 4217 exponent, never floats."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from billing_contracts.money import (
    CURRENCY_EXPONENTS,
    MAX_MINOR_UNITS,
    Money,
    MoneyFormatError,
    format_minor,
    parse_minor,
)


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [
        ("12.50", "USD", 1250),
        ("12.5", "USD", 1250),
        ("12", "USD", 1200),
        ("0", "USD", 0),
        ("0.01", "USD", 1),
        ("1000", "JPY", 1000),
        ("0", "JPY", 0),
        ("1.234", "KWD", 1234),
        ("0.5", "KWD", 500),
        ("1.2345", "CLF", 12345),
        ("7", "CLF", 70000),
    ],
)
def test_an_amount_is_parsed_into_minor_units_with_the_currency_exponent(
    amount: str, currency: str, minor: int
) -> None:
    assert parse_minor(amount, currency) == minor


@pytest.mark.parametrize(
    ("minor", "currency", "amount"),
    [
        (1250, "USD", "12.50"),
        (1, "USD", "0.01"),
        (0, "USD", "0.00"),
        (5, "JPY", "5"),
        (0, "JPY", "0"),
        (1234, "KWD", "1.234"),
        (5, "KWD", "0.005"),
        (12345, "CLF", "1.2345"),
        (70000, "CLF", "7.0000"),
    ],
)
def test_minor_units_are_formatted_with_exactly_the_currency_exponent_digits(
    minor: int, currency: str, amount: str
) -> None:
    assert format_minor(minor, currency) == amount


@pytest.mark.parametrize(
    ("currency", "exponent"),
    [
        ("USD", 2),
        ("EUR", 2),
        ("RUB", 2),
        ("JPY", 0),
        ("KRW", 0),
        ("ISK", 0),
        ("CLP", 0),
        ("XAF", 0),
        ("KWD", 3),
        ("BHD", 3),
        ("IQD", 3),
        ("CLF", 4),
        ("UYW", 4),
        ("MGA", 2),
        ("MRU", 2),
    ],
)
def test_the_currency_table_has_the_iso_4217_exponent(currency: str, exponent: int) -> None:
    assert CURRENCY_EXPONENTS[currency] == exponent


@pytest.mark.parametrize("code", ["XAU", "XAG", "XDR", "XXX", "XTS", "ANG", "BGN", "HRK"])
def test_codes_without_a_minor_unit_or_withdrawn_from_the_list_are_not_currencies(
    code: str,
) -> None:
    assert code not in CURRENCY_EXPONENTS
    with pytest.raises(ValidationError):
        Money(amount="1", currency=code)


def test_the_currency_table_is_read_only() -> None:
    assert isinstance(CURRENCY_EXPONENTS, Mapping)
    with pytest.raises(TypeError):
        CURRENCY_EXPONENTS["ZZZ"] = 2  # type: ignore[index]


def test_money_round_trips_through_json_unchanged() -> None:
    money = Money(amount="12.50", currency="USD")
    assert Money.model_validate_json(money.model_dump_json()) == money
    assert money.model_dump(mode="json") == {"amount": "12.50", "currency": "USD"}


def test_money_built_from_minor_units_reports_the_same_minor_units() -> None:
    money = Money.from_minor(123_456, "KWD")
    assert money.amount == "123.456"
    assert money.minor == 123_456
    assert str(money) == "123.456 KWD"


def test_an_amount_sent_as_a_json_number_is_refused() -> None:
    with pytest.raises(ValidationError):
        Money.model_validate_json('{"amount": 12.5, "currency": "USD"}')
    with pytest.raises(ValidationError):
        Money.model_validate_json('{"amount": 12, "currency": "USD"}')


@pytest.mark.parametrize(
    "amount",
    [
        "NaN",
        "Infinity",
        "1e3",
        "1E3",
        "-1.00",
        "+1",
        " 1.00",
        "1.00 ",
        "1.00\n",
        "1.",
        ".5",
        "01.00",
        "00",
        "1,00",
        "1_000",
        "١٢",
        "",
    ],
)
def test_an_amount_that_is_not_a_plain_non_negative_decimal_is_refused(amount: str) -> None:
    with pytest.raises(MoneyFormatError):
        parse_minor(amount, "USD")
    with pytest.raises(ValidationError):
        Money(amount=amount, currency="USD")


@pytest.mark.parametrize(
    ("amount", "currency"),
    [("1.001", "USD"), ("1.5", "JPY"), ("0.0001", "KWD"), ("1.00001", "CLF")],
)
def test_an_amount_with_more_fraction_digits_than_the_currency_allows_is_refused(
    amount: str, currency: str
) -> None:
    with pytest.raises(MoneyFormatError):
        parse_minor(amount, currency)
    with pytest.raises(ValidationError):
        Money(amount=amount, currency=currency)


@pytest.mark.parametrize("currency", ["XYZ", "usd", "Usd", "US", "USDT", ""])
def test_an_unknown_or_malformed_currency_is_refused(currency: str) -> None:
    with pytest.raises(ValidationError):
        Money(amount="1.00", currency=currency)


def test_parse_minor_refuses_an_unknown_currency() -> None:
    with pytest.raises(MoneyFormatError):
        parse_minor("1.00", "XYZ")


def test_the_largest_amount_that_fits_a_bigint_is_accepted() -> None:
    assert parse_minor("92233720368547758.07", "USD") == MAX_MINOR_UNITS
    assert parse_minor("9223372036854775807", "JPY") == MAX_MINOR_UNITS
    assert Money(amount="92233720368547758.07", currency="USD").minor == MAX_MINOR_UNITS


@pytest.mark.parametrize(
    ("amount", "currency"),
    [
        ("92233720368547758.08", "USD"),
        ("9223372036854775808", "JPY"),
        ("922337203685477.5808", "CLF"),
        ("99999999999999999999", "JPY"),
    ],
)
def test_an_amount_above_the_bigint_bound_is_refused(amount: str, currency: str) -> None:
    with pytest.raises(MoneyFormatError):
        parse_minor(amount, currency)
    with pytest.raises(ValidationError):
        Money(amount=amount, currency=currency)


@given(st.sampled_from(sorted(CURRENCY_EXPONENTS)), st.integers(min_value=0, max_value=10**15))
def test_formatting_then_parsing_minor_units_gives_them_back_in_every_currency(
    currency: str, minor: int
) -> None:
    assert parse_minor(format_minor(minor, currency), currency) == minor


@given(
    st.sampled_from(sorted(CURRENCY_EXPONENTS)),
    st.integers(min_value=0, max_value=MAX_MINOR_UNITS),
)
def test_every_bigint_amount_round_trips_through_wire_money(currency: str, minor: int) -> None:
    assert Money.from_minor(minor, currency).minor == minor
