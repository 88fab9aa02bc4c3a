"""The redaction of log text and failure reasons (billing_worker.redaction)."""

from __future__ import annotations

import logging
import sys

import pytest

from billing_worker.redaction import REDACTED, RedactingFilter, failure_reason, redact


@pytest.mark.parametrize(
    ("text", "kept", "gone"),
    [
        (
            'duplicate key value violates unique constraint "uq_billing_users_user_id"\n'
            "DETAIL:  Key (user_id)=(alice@example.com) already exists.",
            'unique constraint "uq_billing_users_user_id"',
            "alice@example.com",
        ),
        (
            "check failed. Failing row contains (42, alice@example.com, null).",
            "check failed.",
            "Failing row contains",
        ),
        (
            "[SQL: INSERT INTO billing_users VALUES ($1)]\n[parameters: ('alice@example.com',)]",
            "[SQL: INSERT INTO billing_users VALUES ($1)]",
            "alice@example.com",
        ),
        (
            'invalid input syntax for type uuid: "alice@example.com"',
            "invalid input syntax for type uuid",
            "alice@example.com",
        ),
        ('{"client_secret": "pi_1_secret_abc", "id": "pi_1"}', '"id": "pi_1"', "_secret_abc"),
        ("client_secret=pi_1_secret_abc&amount=2000", "amount=2000", "_secret_abc"),
        ("{'client_secret': 'seti_9_secret_xyz'}", "client_secret", "_secret_xyz"),
        ("action pi_3Abc_secret_Def42 for the customer", "for the customer", "pi_3Abc"),
        ("Authorization: Bearer sk_test_51abcDEF", "Bearer", "sk_test_51abcDEF"),
    ],
)
def test_redact_keeps_the_message_and_drops_the_data(text: str, kept: str, gone: str) -> None:
    clean = redact(text)
    assert kept in clean
    assert gone not in clean
    assert REDACTED in clean


def test_text_without_data_is_left_alone() -> None:
    text = 'new row for relation "billing_users" violates check constraint "ck_x"'
    assert redact(text) == text


def test_a_failure_reason_of_an_ordinary_exception_is_its_class_and_message() -> None:
    assert failure_reason(ValueError("malformed Stripe event: 'type'")) == (
        "ValueError: malformed Stripe event: 'type'"
    )
    assert len(failure_reason(RuntimeError("x" * 2000))) == 500


def test_the_filter_scrubs_message_arguments_and_exception_text() -> None:
    try:
        raise RuntimeError("boom\nDETAIL:  Failing row contains (alice@example.com)")
    except RuntimeError:
        record = logging.LogRecord(
            "t", logging.ERROR, __file__, 1, "paid with %s", ("pi_1_secret_abc",), None
        )
        record.exc_info = sys.exc_info()
    record.note = "client_secret=pi_2_secret_def"

    assert RedactingFilter().filter(record)

    rendered = logging.Formatter("%(message)s %(note)s").format(record)
    assert "RuntimeError: boom" in rendered
    for secret in ("_secret_abc", "_secret_def", "alice@example.com", "Failing row contains"):
        assert secret not in rendered
