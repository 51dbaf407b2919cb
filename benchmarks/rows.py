"""Result rows of the resumable benchmarks: append one as it finishes, read what is done."""

from __future__ import annotations

import csv
from pathlib import Path


def append(path: Path, columns: list[str], row: dict) -> None:
    """Append ``row`` to the CSV at ``path`` (its header first when the file is new)."""
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        if new:
            w.writeheader()
        w.writerow(row)


def read(path: Path) -> list[dict]:
    """The rows written so far (none when the file does not exist yet)."""
    if not path.exists():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))
