"""The billing-worker wheel migrates a database from anywhere: its migrations ride inside it.

The wheel is built from this checkout (`pip wheel --no-deps`), installed with `--no-deps`
into a fresh venv in a temporary directory, and `billing-worker migrate` runs from there
against a new database. The venv finds the third-party packages through a .pth line naming
this checkout's site-packages (plain paths: the editable install's own .pth files there are
not processed, so `billing_worker` can only be the wheel's). No BILLING_MIGRATIONS_DIR.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from billing_worker.db.migrate import head_revision
from support import services

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(  # noqa: S603 - our own tools on our own files
        [str(arg) for arg in args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture
async def empty_database(postgres_server: str, run_name: str) -> AsyncIterator[str]:
    """A database name nobody has created: `migrate` must create it."""
    url = services.database_url_for(postgres_server, f"billing_wheel_{run_name}")
    await services.drop_database(url)
    yield url
    await services.drop_database(url)


async def test_the_installed_wheel_migrates_a_new_database_from_outside_the_repo(
    tmp_path: Path, empty_database: str
) -> None:
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir",
        tmp_path / "dist", ROOT, cwd=tmp_path)  # fmt: skip
    [wheel] = (tmp_path / "dist").glob("billing_worker-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    migrations = {name for name in shipped if name.startswith("billing_worker/migrations/")}
    expected = {f"billing_worker/migrations/{p.relative_to(ROOT / 'migrations')}"
                for p in (ROOT / "migrations").rglob("*.py")}  # fmt: skip
    assert expected <= migrations, sorted(expected - migrations)

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    site = run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))",
               cwd=tmp_path).strip()  # fmt: skip
    (Path(site) / "outer-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    run(python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", wheel,
        cwd=tmp_path)  # fmt: skip

    env = {key: value for key, value in os.environ.items() if not key.startswith("BILLING_")}
    env["BILLING_DATABASE_URL"] = empty_database
    home = tmp_path / "elsewhere"
    home.mkdir()
    where = run(python, "-c", "import billing_worker.db.migrate as m; "
                "print(m.__file__); print(m.migrations_dir())", cwd=home, env=env)  # fmt: skip
    module, directory = where.split()
    assert Path(module).is_relative_to(venv), module
    assert Path(directory).is_relative_to(venv), directory
    run(venv / "bin" / "billing-worker", "migrate", cwd=home, env=env)

    url = make_url(empty_database)
    connection = await asyncpg.connect(
        host=url.host, port=url.port, user=url.username, password=url.password,
        database=url.database,
    )  # fmt: skip
    try:
        revision = await connection.fetchval("SELECT version_num FROM alembic_version")
    finally:
        await connection.close()
    assert revision == head_revision()
