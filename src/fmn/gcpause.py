"""Pausing Python's cyclic garbage collector around bulk building.

Building a 100,000-user preferences set or snapshot makes millions of
long-lived containers; each allocation burst triggers collections that
rescan everything built so far, which made such builds several times slower.
Nothing built there forms garbage cycles worth collecting mid-way, so the
collector is paused for the duration and restored (if it was on) after.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
