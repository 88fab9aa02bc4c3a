"""Every allowed and every refused move of the invoice state machine."""

from __future__ import annotations

import itertools

import pytest

from billing_contracts.invoices import InvoiceStatus as S
from billing_worker.domain.errors import InvalidState
from billing_worker.domain.invoices import ALLOWED, TERMINAL, issue, transition

EXPECTED_MOVES = {
    (S.DRAFT, S.OPEN),
    (S.OPEN, S.PAID),
    (S.OPEN, S.VOID),
    (S.OPEN, S.UNCOLLECTIBLE),
    (S.UNCOLLECTIBLE, S.PAID),  # a written-off invoice can still be paid (as at Stripe)
}
ALL_PAIRS = list(itertools.product(S, S))


def test_the_table_allows_exactly_the_designed_moves() -> None:
    allowed = {(source, target) for source, targets in ALLOWED.items() for target in targets}
    assert allowed == EXPECTED_MOVES


@pytest.mark.parametrize(("source", "target"), sorted(EXPECTED_MOVES))
def test_an_allowed_move_returns_the_new_status(source: S, target: S) -> None:
    assert transition(source, target) is target


@pytest.mark.parametrize(
    ("source", "target"), [pair for pair in ALL_PAIRS if pair not in EXPECTED_MOVES]
)
def test_every_other_move_is_refused_as_invalid_state(source: S, target: S) -> None:
    with pytest.raises(InvalidState) as refused:
        transition(source, target)
    assert refused.value.code == "invalid_state"
    assert refused.value.details == {"status": source.value, "requested": target.value}


def test_paid_and_void_are_terminal() -> None:
    assert {S.PAID, S.VOID} == TERMINAL


def test_a_new_invoice_is_issued_from_draft_to_open() -> None:
    assert issue() is S.OPEN


def test_a_paid_invoice_cannot_be_paid_again() -> None:
    with pytest.raises(InvalidState, match="a paid invoice cannot become paid"):
        transition(S.PAID, S.PAID)
