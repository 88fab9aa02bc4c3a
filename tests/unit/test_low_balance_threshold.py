from decimal import Decimal

import pytest

from billing_worker.domain.money import threshold_minor


@pytest.mark.parametrize(
    ("threshold", "currency", "expected"),
    [
        ("10.00", "USD", 1000),
        ("10.00", "JPY", 10),
        ("10.00", "KWD", 10000),
        ("10.5", "JPY", 10),  # rounded down to what the currency can express
        ("0", "EUR", 0),
    ],
)
def test_the_threshold_in_major_units_becomes_minor_units_of_each_currency(
    threshold: str, currency: str, expected: int
) -> None:
    assert threshold_minor(Decimal(threshold), currency) == expected
