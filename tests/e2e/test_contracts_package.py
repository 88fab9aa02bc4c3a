"""billing-contracts as an outsider installs it: a wheel built with `python -m build`,
installed with pip into a fresh venv (not this checkout's editable install), then checked
with `mypy --strict`, and the contracts README's program run as written against a real
worker with the sandbox on its own vhost."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support import services
from support.processes import Process, worker_env

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = ROOT / "contracts"
MYPY = Path(sys.executable).with_name("mypy")

# Uses the installed package the way a caller's service does; every name is typed.
TYPED_PROGRAM = """
from billing_contracts.client import BillingClient, BillingError, Event
from billing_contracts.events import DepositCompleted
from billing_contracts.money import Money
from billing_contracts.wallet import WithdrawResult


async def charge(billing: BillingClient, user_id: str) -> Money:
    result: WithdrawResult = await billing.withdraw(
        user_id=user_id, amount=Money(amount="9.99", currency="USD"),
        description="Pro plan", idempotency_key="order-42-charge",
    )
    return result.balance


def credited(event: Event) -> str | None:
    return event.data.balance.amount if isinstance(event.data, DepositCompleted) else None


def code_of(error: BillingError) -> str:
    return error.code
"""
# The same package seen wrongly: mypy must say so, which it can only when it reads the
# package's own types (an untyped package would be Any and let this through).
MISTYPED_PROGRAM = """
from billing_contracts.money import Money

def cents(money: Money) -> int:
    return money.amount
"""


@dataclass(frozen=True)
class Outsider:
    wheel: Path
    python: Path
    home: Path  # a directory outside the checkout


def run(
    *args: str | Path, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own tools on our own files
        [str(arg) for arg in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def outsider(tmp_path_factory: pytest.TempPathFactory) -> Outsider:
    home = tmp_path_factory.mktemp("outsider")
    built = run(sys.executable, "-m", "build", "--wheel", "--outdir", home / "dist", CONTRACTS,
                cwd=home)  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    [wheel] = (home / "dist").glob("billing_contracts-*.whl")
    venv = run(sys.executable, "-m", "venv", home / "venv", cwd=home)
    assert venv.returncode == 0, venv.stderr
    python = home / "venv" / "bin" / "python"
    installed = run(python, "-m", "pip", "install", "--quiet", f"{wheel}[client]", cwd=home)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return Outsider(wheel=wheel, python=python, home=home)


def test_the_wheel_ships_py_typed_and_the_asyncapi_document(outsider: Outsider) -> None:
    names = zipfile.ZipFile(outsider.wheel).namelist()
    assert "billing_contracts/py.typed" in names
    assert "billing_contracts/asyncapi.json" in names
    script = (
        "import billing_contracts, importlib.resources as r; print(billing_contracts.__file__); "
        "print(r.files('billing_contracts').joinpath('asyncapi.json').read_text(), end='')"
    )
    shipped = run(outsider.python, "-c", script, cwd=outsider.home)
    assert shipped.returncode == 0, shipped.stderr
    location, document = shipped.stdout.split("\n", 1)
    assert Path(location).is_relative_to(outsider.home / "venv"), location
    assert json.loads(document) == json.loads((CONTRACTS / "asyncapi.json").read_text())


def mypy_strict(outsider: Outsider, source: str) -> subprocess.CompletedProcess[str]:
    program = outsider.home / f"program_{uuid.uuid4().hex[:8]}.py"
    program.write_text(source)
    (outsider.home / "mypy.ini").write_text("[mypy]\n")  # not this repository's settings
    return run(MYPY, "--strict", "--no-incremental", "--config-file", outsider.home / "mypy.ini",
               "--python-executable", outsider.python, program, cwd=outsider.home)  # fmt: skip


def test_mypy_strict_passes_on_a_program_using_the_installed_package(outsider: Outsider) -> None:
    checked = mypy_strict(outsider, TYPED_PROGRAM)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Success: no issues found in 1 source file" in checked.stdout


def test_mypy_strict_sees_the_installed_packages_types(outsider: Outsider) -> None:
    checked = mypy_strict(outsider, MISTYPED_PROGRAM)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert 'Incompatible return value type (got "str", expected "int")' in checked.stdout


def test_pip_installs_it_from_a_git_url_with_the_contracts_subdirectory(tmp_path: Path) -> None:
    """The README's git install command, against this repository's committed HEAD."""
    head = run("git", "rev-parse", "HEAD", cwd=ROOT).stdout.strip()
    url = f"billing-contracts @ git+file://{ROOT}@{head}#subdirectory=contracts"
    built = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir",
                tmp_path, url, cwd=tmp_path)  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    [wheel] = tmp_path.glob("billing_contracts-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"billing_contracts/py.typed", "billing_contracts/asyncapi.json"} <= set(names)


def readme_program() -> str:
    text = (CONTRACTS / "README.md").read_text()
    section = text[text.index("## Python client") :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "the contracts README has a Python program under ## Python client"
    return match.group(1)


def test_the_readme_program_type_checks_strictly(outsider: Outsider) -> None:
    checked = mypy_strict(outsider, readme_program())
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.fixture
def own_vhost(rabbitmq_url: str) -> Iterator[str]:
    name = f"billing-readme-{uuid.uuid4().hex[:10]}"
    url = services.create_vhost(rabbitmq_url, name)
    if url is None:
        pytest.skip("needs a broker it can administer (rabbitmqctl) for a vhost of its own")
    yield url
    services.delete_vhost(name)


async def test_the_readme_program_runs_as_written_against_a_sandbox_worker(
    outsider: Outsider, fresh_database_url: str, own_vhost: str, tmp_path: Path
) -> None:
    worker = Process("run", worker_env(fresh_database_url, own_vhost, sandbox_enabled="true"),
                     tmp_path / "worker.log")  # fmt: skip
    worker.start()
    try:
        await worker.ready()
        program = outsider.home / "example.py"
        program.write_text(readme_program())
        clean = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}
        ran = run(outsider.python, program, cwd=outsider.home, timeout=120,
                  env={**clean, "BILLING_RABBITMQ_URL": own_vhost})  # fmt: skip
    finally:
        await worker.stop()
        worker.ensure_dead()
    assert ran.returncode == 0, ran.stdout + ran.stderr + worker.text()[-3000:]
    assert ran.stdout.splitlines()[:3] == [
        "deposit processing",
        "deposit completed, balance 25.00 USD",
        "charged, balance 15.01 USD",
    ], ran.stdout
    rest = ran.stdout.splitlines()[3:]
    assert sorted(rest) == ["deposit completed 25.00 USD", "withdrawal completed 9.99 USD"], rest
