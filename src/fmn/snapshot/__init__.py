"""The preferences snapshot: compiled, indexed, versioned, stored atomically.

See docs/snapshot-format.md for the format and the change mechanism.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime

from fmn.prefs import Preferences
from fmn.snapshot.compiled import (
    FORMAT_VERSION,
    Snapshot,
    SnapshotData,
    UserEntry,
    compile_preferences,
    compile_user,
)


def new_snapshot_id() -> str:
    """``<UTC time to the microsecond>-<random>``: ids sort by when they were made
    (:func:`fmn.snapshot.store.is_newer`)."""
    now = datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}"


def compile_snapshot(prefs: Preferences,
                     revisions: Mapping[str, int] | None = None) -> SnapshotData:
    """Compile preferences into a fresh, serialisable snapshot."""
    return compile_preferences(prefs, new_snapshot_id(),
                               datetime.now(UTC).isoformat(timespec="seconds"), revisions)


def build_snapshot(prefs: Preferences) -> Snapshot:
    """Compile and index preferences in one go (tests, CLI)."""
    return Snapshot.from_data(compile_snapshot(prefs))


__all__ = ["FORMAT_VERSION", "Snapshot", "SnapshotData", "UserEntry", "build_snapshot",
           "compile_preferences", "compile_snapshot", "compile_user", "new_snapshot_id"]
