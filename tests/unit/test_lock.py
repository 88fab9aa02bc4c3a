"""The locks agree with pyproject.toml: what it asks for is pinned, hash-checked, in range.

requirements.lock is what the image installs, requirements-dev.lock what `make install`
installs; `make lock` writes both. When a dependency is added to or changed in
pyproject.toml (or contracts/pyproject.toml) without re-running `make lock`, the image
and the venv would silently lack it or get another version: these tests fail instead.
No network: names and specifiers only.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_LOCK = ROOT / "requirements.lock"
DEV_LOCK = ROOT / "requirements-dev.lock"
LOCAL_PACKAGES = frozenset({"billing-contracts", "billing-worker"})
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)")
# The image runs on Linux with CPython 3.11 (the Dockerfile's base).
TARGET = {**default_environment(), "python_version": "3.11", "sys_platform": "linux",
          "platform_system": "Linux", "implementation_name": "cpython"}  # fmt: skip


def project(path: Path) -> dict[str, object]:
    document = tomllib.loads(path.read_text())["project"]
    assert isinstance(document, dict)
    return document


def runtime_requirements() -> list[Requirement]:
    worker = project(ROOT / "pyproject.toml")["dependencies"]
    contracts = project(ROOT / "contracts" / "pyproject.toml").get("dependencies", [])
    assert isinstance(worker, list)
    assert isinstance(contracts, list)
    return [Requirement(text) for text in [*worker, *contracts]]


def dev_requirements() -> list[Requirement]:
    extras = project(ROOT / "pyproject.toml")["optional-dependencies"]
    assert isinstance(extras, dict)
    return [*runtime_requirements(), *(Requirement(text) for text in extras["dev"])]


def pins(lock: Path) -> dict[str, set[Version]]:
    """Name -> the versions pinned (a universal lock may pin one per platform)."""
    found: dict[str, set[Version]] = {}
    lines = lock.read_text().splitlines()
    for index, line in enumerate(lines):
        if match := PIN.match(line):
            name = canonicalize_name(match["name"])
            found.setdefault(name, set()).add(Version(match["version"]))
            following = lines[index + 1] if index + 1 < len(lines) else ""
            assert line.rstrip().endswith("\\"), f"{lock.name}: {match['name']} has no hash"
            assert "--hash=sha256:" in following, f"{lock.name}: {match['name']} has no hash"
        elif line.strip() and not line.startswith((" ", "#")):
            pytest.fail(f"{lock.name}: not a pinned requirement: {line}")
    return found


def extra_requirements(requirement: Requirement) -> list[Requirement]:
    """What the requested extras of an installed distribution add."""
    if not requirement.extras:
        return []
    added = []
    for text in metadata.requires(requirement.name) or []:
        extra_requirement = Requirement(text)
        marker = extra_requirement.marker
        if marker is None:
            continue
        wanted = any(marker.evaluate({**TARGET, "extra": e}) for e in requirement.extras)
        if wanted and not marker.evaluate({**TARGET, "extra": ""}):
            added.append(extra_requirement)
    return added


def missing_or_out_of_range(
    requirements: list[Requirement], locked: dict[str, set[Version]]
) -> list[str]:
    problems = []
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        if name in LOCAL_PACKAGES:
            continue
        if requirement.marker is not None and not requirement.marker.evaluate(TARGET):
            continue
        if name not in locked:
            problems.append(f"{requirement} is not in the lock")
        elif not any(requirement.specifier.contains(v, prereleases=True) for v in locked[name]):
            versions = ", ".join(str(v) for v in sorted(locked[name]))
            problems.append(f"{requirement}: the lock pins {versions}")
    return problems


@pytest.mark.parametrize(
    ("lock", "requirements"),
    [(RUNTIME_LOCK, runtime_requirements), (DEV_LOCK, dev_requirements)],
    ids=["runtime", "dev"],
)
def test_every_dependency_of_pyproject_is_locked_in_range(lock: Path, requirements: object) -> None:
    wanted = requirements()  # type: ignore[operator]
    locked = pins(lock)
    problems = missing_or_out_of_range(wanted, locked)
    assert not problems, f"{lock.name} is stale (run `make lock`): {problems}"


@pytest.mark.parametrize("lock", [RUNTIME_LOCK, DEV_LOCK], ids=["runtime", "dev"])
def test_the_extras_asked_for_are_locked(lock: Path) -> None:
    locked = pins(lock)
    wanted = runtime_requirements() if lock == RUNTIME_LOCK else dev_requirements()
    added = [extra for requirement in wanted for extra in extra_requirements(requirement)]
    assert added, "faststream[rabbit,...] adds requirements: the extras were not read"
    problems = missing_or_out_of_range(added, locked)
    assert not problems, f"{lock.name} is stale (run `make lock`): {problems}"


def test_the_image_lock_has_no_dev_tools_and_the_dev_lock_has_the_image_s_versions() -> None:
    runtime, dev = pins(RUNTIME_LOCK), pins(DEV_LOCK)
    dev_only = {canonicalize_name(r.name) for r in dev_requirements()} - {
        canonicalize_name(r.name) for r in runtime_requirements()
    }
    assert "pytest" in dev_only
    assert not dev_only & set(runtime), sorted(dev_only & set(runtime))
    # The tests run against what the image ships (shared packages pinned alike).
    differing = {name for name in runtime if name in dev and runtime[name] != dev[name]}
    assert not differing, f"the two locks pin these differently: {sorted(differing)}"


def test_the_stale_check_sees_a_missing_and_an_out_of_range_dependency() -> None:
    locked = {"aio-pika": {Version("10.2.1")}}
    problems = missing_or_out_of_range(
        [Requirement("aio-pika>=11"), Requirement("opentelemetry-sdk>=1.30")], locked
    )
    assert len(problems) == 2
    assert not missing_or_out_of_range([Requirement("aio-pika>=10.2,<11")], locked)
