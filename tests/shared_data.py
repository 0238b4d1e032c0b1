"""Loaders for the shared Fedora test data (``../shared/data`` beside the repository)."""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

from fmn.message import Message

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("FMN_SHARED_DATA", ROOT.parent / "shared" / "data"))
GOLDEN = SHARED / "golden"
MESSAGES = SHARED / "messages"


def read_jsonl(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@cache
def golden_messages() -> tuple[Message, ...]:
    """The golden messages with their golden metadata (independent of fmn.metadata)."""
    raws = read_jsonl(GOLDEN / "messages.jsonl")
    metas = read_jsonl(GOLDEN / "metadata.jsonl")
    return tuple(
        Message.from_metadata(meta, raw["msg"] if "msg" in raw else raw["body"])
        for raw, meta in zip(raws, metas, strict=True)
    )


@cache
def golden_prefs_doc() -> str:
    return (GOLDEN / "prefs.json").read_text()
