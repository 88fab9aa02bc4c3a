"""BILLING_YOOKASSA_ALLOWED_NETWORKS: unset, the relay takes YooKassa's published
networks (held by the yookassa package); set, exactly the CIDRs it lists."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from billing_worker.providers.yookassa.webhook import PUBLISHED_NETWORKS
from billing_worker.relay.addresses import IPNetwork, allowed, networks
from billing_worker.relay.runner import relay_config
from billing_worker.settings import Settings

VARIABLE = "BILLING_YOOKASSA_ALLOWED_NETWORKS"


def sources(monkeypatch: pytest.MonkeyPatch, value: str | None) -> tuple[IPNetwork, ...]:
    if value is None:
        monkeypatch.delenv(VARIABLE, raising=False)
    else:
        monkeypatch.setenv(VARIABLE, value)
    return relay_config(Settings(_env_file=None)).yookassa_sources


def test_unset_is_yookassas_published_networks(monkeypatch: pytest.MonkeyPatch) -> None:
    published = sources(monkeypatch, None)
    assert published == networks(PUBLISHED_NETWORKS)
    assert allowed("185.71.76.10", networks(PUBLISHED_NETWORKS))


def test_a_list_replaces_them(monkeypatch: pytest.MonkeyPatch) -> None:
    assert sources(monkeypatch, " 10.0.0.0/8 , 2001:db8::/32,") == networks(
        ("10.0.0.0/8", "2001:db8::/32")
    )


def test_set_but_empty_allows_no_address(monkeypatch: pytest.MonkeyPatch) -> None:
    assert sources(monkeypatch, "") == ()


def test_a_bad_cidr_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(VARIABLE, "185.71.76.0/27,not-a-network")
    with pytest.raises(ValidationError, match="not-a-network"):
        Settings(_env_file=None)
