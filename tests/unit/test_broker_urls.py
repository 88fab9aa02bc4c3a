"""Several broker addresses in BILLING_RABBITMQ_URL, and the quorum queues' arguments."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from billing_contracts import names
from billing_worker.messaging import topology as topo
from billing_worker.settings import Settings

NODES = (
    "amqp://worker:pw@rabbit-1:5672/billing",
    "amqp://worker:pw@rabbit-2:5673/billing",
    "amqps://worker:pw@rabbit-3/billing",
)


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def test_a_comma_separated_list_names_every_node_in_order() -> None:
    chosen = settings(rabbitmq_url=" , ".join(NODES) + ",")
    assert chosen.amqp_urls == NODES
    assert chosen.amqp_url == NODES[0]


def test_one_url_is_a_list_of_one() -> None:
    assert settings().amqp_urls == ("amqp://guest:guest@127.0.0.1:5672/",)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (f"{NODES[0]},amqp://other:pw@rabbit-2:5672/billing", "same user and the same vhost"),
        (f"{NODES[0]},amqp://worker:pw@rabbit-2:5672/other", "same user and the same vhost"),
        (f"{NODES[0]},http://rabbit-2:5672/billing", "URL 2 is not an amqp"),
        (" , ", "at least one"),
    ],
)
def test_a_list_that_is_not_one_cluster_is_refused(value: str, reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        settings(rabbitmq_url=value)


def arguments(queue: object) -> dict[str, object]:
    return dict(queue.arguments or {})  # type: ignore[attr-defined]


def test_consumed_quorum_queues_get_a_delivery_limit_above_max_deliveries() -> None:
    topology = topo.Topology.from_settings(settings(quorum_queues=True, max_deliveries=7))
    limit = topo.delivery_limit(7)
    assert limit > 7
    for queue in (
        topology.work_queue(names.WALLET_DEPOSIT),
        topology.provider_events,
        topology.order_created,
    ):
        args = arguments(queue)
        assert args["x-delivery-limit"] == limit
        assert args["x-dead-letter-strategy"] == "at-least-once"
        assert args["x-overflow"] == "reject-publish"
        assert args["x-dead-letter-exchange"] == names.DEAD_LETTER_EXCHANGE
    # Nobody consumes these: no limit (the DLQ has nowhere to send what it would drop).
    assert "x-delivery-limit" not in arguments(topology.dead_letter_queue)
    for _, retry in topology.retry_queues():
        assert "x-delivery-limit" not in arguments(retry)
        assert arguments(retry)["x-dead-letter-strategy"] == "at-least-once"


def test_classic_queues_get_no_quorum_arguments() -> None:
    topology = topo.Topology.from_settings(settings(quorum_queues=False))
    args = arguments(topology.work_queue(names.WALLET_DEPOSIT))
    assert not {"x-delivery-limit", "x-dead-letter-strategy", "x-overflow"} & set(args)
