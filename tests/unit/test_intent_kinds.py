"""Every kind of provider intent the schema allows has its flow, and no flow is missing
from the schema's CHECK (an intent of an unknown kind could never be settled)."""

from billing_worker.db.tables_core import INTENT_KINDS
from billing_worker.handlers.flows import FLOWS


def test_the_schema_and_the_flows_know_the_same_intent_kinds() -> None:
    assert set(FLOWS) == set(INTENT_KINDS)
