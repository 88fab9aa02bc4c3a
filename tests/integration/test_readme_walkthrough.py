"""The README's "A subscription business, end to end" script, run as written against a
live worker: an independent client knowing only the README sells a plan, reprices it
for new customers only, upgrades a subscriber mid-period, pauses and resumes, and gets a
numbered invoice with tax and discount for every charge."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import pytest

from billing_worker.app import Worker
from billing_worker.db.engine import driver_connection
from billing_worker.ops.audit import audit
from billing_worker.settings import Settings
from support.settings import make_settings

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"
_BLOCK = re.compile(
    r"<!-- walkthrough:start -->\n```python\n(.*?)```\n<!-- walkthrough:end -->", re.S
)


@pytest.fixture
def settings(fresh_database_url: str, rabbitmq_url: str) -> Settings:
    # as the README starts it: BILLING_CREDIT_WITHOUT_POLICY=true make run (sandbox on);
    # a database of its own, so the audit at the end judges this business alone (other
    # tests plant findings in the shared one on purpose)
    return make_settings(fresh_database_url, rabbitmq_url, credit_without_policy=True)


def walkthrough() -> str:
    found = _BLOCK.findall(README.read_text(encoding="utf-8"))
    assert len(found) == 1, "the README has one walkthrough block"
    return str(found[0])


async def test_the_readme_walkthrough_runs_a_subscription_business(
    worker: Worker, rabbitmq_url: str
) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", walkthrough(),
        env={**os.environ, "BILLING_URL": rabbitmq_url},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout=180)
    finally:
        if process.returncode is None:
            process.kill()
    text = out.decode()
    print(text)  # shown with pytest -s
    assert process.returncode == 0, f"{text}\n{err.decode()}"

    assert re.search(r"^Alice: starter-\w+ version 1 active$", text, re.M), text
    assert "Starter is now version 2 - Bob is on version 2 - Alice stays on version 1" in text
    assert re.search(r"^Alice upgraded to team-\w+ version 1$", text, re.M), text
    assert "Alice pauses at the period end: True" in text
    assert "... and keeps going: active False" in text

    invoice = re.compile(
        r"^(alice|bob)-\w+: (INV-\d{4}-\d{6,}) paid  subtotal (\S+)  discount (\S+)  tax (\S+)"
        r"  total (\S+) USD  \((.*)\)$", re.M,
    )  # fmt: skip
    found = invoice.findall(text)
    alice = [row for row in found if row[0] == "alice"]
    bob = [row for row in found if row[0] == "bob"]
    # Alice's first period: 10.00 - 50 % = 5.00, VAT 20 % on what is left: 1.00
    assert alice[0][2:6] == ("10.00", "5.00", "1.00", "6.00"), text
    # Bob bought after the reprice: version 2's 12.00, VAT 2.40, no coupon
    assert [row[2:6] for row in bob] == [("12.00", "0.00", "2.40", "14.40")], text
    # the upgrade: a second invoice of Alice's, the prorated difference, taxed
    assert len(alice) == 2, text
    subtotal, discount, tax, total = (int(v.replace(".", "")) for v in alice[1][2:6])
    assert 0 < subtotal <= 2000, text
    assert total == subtotal - discount + tax, text
    assert len({row[1] for row in found}) == len(found) == 3  # numbered, none twice

    spent = 600 + total  # Alice's 100.00 less her two invoices
    assert f"Alice's balance: {(10000 - spent) // 100}.{(10000 - spent) % 100:02d} USD" in text
    async with driver_connection(worker.engine) as db:
        assert not await audit(db)
