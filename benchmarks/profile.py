"""Where the worker's CPU goes: py-spy samples of the worker during a measured window.

`--profile` of `benchmarks.run` records the first worker process of every worker run
with `py-spy record --nonblocking` (the worker is not paused: the figures stay those of
an unprofiled run, within a few per cent) for the run's window, and reports the share of
samples by package of the frame on top of the stack — the code that was running:
`asyncio`, `asyncpg`, `aiormq`, `pydantic`, `faststream`, `billing_worker`, ... (the
standard library's modules by name). Idle samples (waiting in `epoll`) are not counted,
so the shares add up to the worker's busy time.

py-spy is a dev dependency; reading another process needs ptrace rights (root, or
`kernel.yama.ptrace_scope = 0`). Without them the run says so and goes on unprofiled.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

RATE = 100  # samples per second
_LIBRARY = re.compile(r"^.*/(?:site-packages|lib/python3\.\d+)/")


def py_spy() -> str | None:
    """py-spy of this interpreter's environment, else the one on PATH."""
    here = Path(sys.executable).with_name("py-spy")
    return str(here) if here.exists() else shutil.which("py-spy")


def package_of(frame: str) -> str:
    """`func (asyncpg/connection.py:12)` -> `asyncpg`. py-spy writes a file's path
    relative to its `sys.path` entry; a full path is cut at site-packages or the
    standard library's directory the same way."""
    path = frame[frame.rfind("(") + 1 :].rsplit(":", 1)[0]
    path = _LIBRARY.sub("", path)
    if path.startswith("/"):  # a file outside sys.path: named by its directory
        path = path.rsplit("/", 2)[-2] if path.count("/") > 1 else path
    return path.split("/", 1)[0].removesuffix(".py") or "(native)"


def by_package(raw: str, top: int = 12) -> dict[str, Any]:
    """Shares (per cent) of samples by the package of the running frame, largest first."""
    packages: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        packages[package_of(frames[-1])] += int(count)
        total += int(count)
    shares = (
        {name: round(100 * n / total, 1) for name, n in packages.most_common(top)} if total else {}
    )
    return {"samples": total, "by_package_pct": shares}


def _read(out: Path) -> str | None:
    return out.read_text() if out.exists() else None


async def record(pid: int, seconds: float, out: Path) -> dict[str, Any]:
    """Sample `pid` for `seconds`; the figures, or {"error": why}."""
    binary = py_spy()
    if binary is None:
        return {"error": "py-spy is not installed (pip install py-spy)"}
    process = await asyncio.create_subprocess_exec(
        binary, "record", "--nonblocking", "-p", str(pid), "-d", str(max(1, round(seconds))),
        "-r", str(RATE), "-f", "raw", "-o", str(out),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        output, _ = await asyncio.wait_for(process.communicate(), seconds + 30)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        return {"error": "py-spy did not finish"}
    raw = await asyncio.to_thread(_read, out)
    if process.returncode != 0 or raw is None:
        text = output.decode(errors="replace").strip().splitlines()
        return {"error": f"py-spy failed: {text[-1] if text else process.returncode}"}
    return by_package(raw)


def line(profile: dict[str, Any]) -> str:
    """`asyncio 25.3 %, asyncpg 12.0 %, ...` (what the table prints)."""
    if "error" in profile:
        return str(profile["error"])
    shares = profile.get("by_package_pct", {})
    return ", ".join(f"{name} {share:.1f} %" for name, share in shares.items()) or "no samples"
