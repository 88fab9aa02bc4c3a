"""The repository stands on its own: nothing in it points at notes outside it."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Written in pieces, so that this file does not name them itself.
FORBIDDEN = tuple(
    "".join(parts)
    for parts in (("../", "shared"), ("DESIGN", " §"), ("DESIGN", ".md"),
                  ("PERFORMANCE", ".md"), ("LIBRARIES", ".md"))
)  # fmt: skip


def test_no_file_refers_to_notes_outside_the_repository() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],  # noqa: S607
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    offenders = []
    for name in tracked:
        path = ROOT / name
        if not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        offenders += [f"{name}: {word}" for word in FORBIDDEN if word in text]
    assert not offenders, offenders
