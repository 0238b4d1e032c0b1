"""Live preview of a rule over the most recent bus messages.

:mod:`fmn.preview.window` keeps the window (the match function appends to it
with :func:`record_many`); :mod:`fmn.preview.index` loads it into memory and
answers :meth:`PreviewIndex.preview` for a rule being edited, exactly as the
naive matcher would decide each message.  ``fmn bench preview``
(:mod:`fmn.preview.bench`) prints its figures.
"""

from fmn.preview.index import Ownership, PreviewIndex, PreviewMatch, PreviewResult, WindowPreview
from fmn.preview.window import (
    MemoryWindowStore,
    RedisWindowStore,
    WindowEntry,
    WindowStore,
    WindowUnavailable,
    encode,
    record,
    record_many,
)

__all__ = [
    "MemoryWindowStore",
    "Ownership",
    "PreviewIndex",
    "PreviewMatch",
    "PreviewResult",
    "RedisWindowStore",
    "WindowEntry",
    "WindowPreview",
    "WindowStore",
    "WindowUnavailable",
    "encode",
    "record",
    "record_many",
]
