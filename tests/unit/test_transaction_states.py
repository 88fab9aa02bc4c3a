"""Every allowed and every refused move of the transaction state machine."""

from __future__ import annotations

import itertools

import pytest

from billing_contracts.wallet import TransactionStatus as S
from billing_worker.domain.errors import InvalidState
from billing_worker.domain.transactions import ALLOWED, TERMINAL, path, transition

EXPECTED_MOVES = {
    (S.CREATED, S.PROCESSING),
    (S.CREATED, S.FAILED),
    (S.PROCESSING, S.COMPLETED),
    (S.PROCESSING, S.FAILED),
    (S.PROCESSING, S.CANCELED),
    (S.COMPLETED, S.REFUNDED),
}
ALL_PAIRS = list(itertools.product(S, S))


def test_the_table_allows_exactly_the_designed_moves() -> None:
    allowed = {(source, target) for source, targets in ALLOWED.items() for target in targets}
    assert allowed == EXPECTED_MOVES


@pytest.mark.parametrize(("source", "target"), sorted(EXPECTED_MOVES))
def test_an_allowed_move_returns_the_transition_to_record(source: S, target: S) -> None:
    step = transition(source, target, reason="test")
    assert (step.source, step.target, step.reason) == (source, target, "test")


@pytest.mark.parametrize(
    ("source", "target"), [pair for pair in ALL_PAIRS if pair not in EXPECTED_MOVES]
)
def test_every_other_move_is_refused_as_invalid_state(source: S, target: S) -> None:
    with pytest.raises(InvalidState) as refused:
        transition(source, target)
    assert refused.value.code == "invalid_state"
    assert refused.value.details == {"status": source.value, "requested": target.value}


def test_failed_canceled_and_refunded_are_terminal() -> None:
    assert {S.FAILED, S.CANCELED, S.REFUNDED} == TERMINAL


def test_a_path_records_creation_and_each_step() -> None:
    trail = path(S.CREATED, S.PROCESSING, S.COMPLETED, reason="withdrawal")
    assert [(t.source, t.target) for t in trail] == [
        (None, S.CREATED),
        (S.CREATED, S.PROCESSING),
        (S.PROCESSING, S.COMPLETED),
    ]


def test_a_path_that_skips_a_state_is_refused() -> None:
    with pytest.raises(InvalidState):
        path(S.CREATED, S.COMPLETED)


def test_a_path_must_start_at_created() -> None:
    with pytest.raises(InvalidState):
        path(S.PROCESSING, S.COMPLETED)
