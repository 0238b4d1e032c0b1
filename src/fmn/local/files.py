"""JSON files the local stack's processes hand each other (status, totals, counts).

Written whole or not at all (a temporary file renamed over the old one), so a
reader never sees half a document; read as nothing when absent or unreadable.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_json(path: str | Path, doc: Any, indent: int | None = None) -> None:
    """``doc`` into ``path`` as JSON, atomically (values JSON cannot hold as strings)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=indent, default=str))
    tmp.replace(path)


def read_json(path: str | Path) -> Any:
    """What :func:`write_json` wrote at ``path``; None when there is nothing to read."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, ValueError):
        return None
