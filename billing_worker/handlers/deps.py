"""What handlers need besides the unit of work, injected by the composition root."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from billing_worker.domain.money import threshold_minor
from billing_worker.providers.base import Gateways
from billing_worker.providers.yookassa.receipts import ReceiptPolicy


@dataclass(frozen=True, slots=True)
class Deps:
    gateways: Gateways
    low_balance_threshold: Decimal
    dunning_days: tuple[int, ...] = (1, 3, 5)
    receipts: ReceiptPolicy | None = None  # YooKassa receipts (54-FZ); None = off

    def low_balance_minor(self, currency: str) -> int:
        return threshold_minor(self.low_balance_threshold, currency)
