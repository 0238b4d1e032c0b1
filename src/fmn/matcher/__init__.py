"""The matchers: who gets which message where (spec section 3).

``naive`` is the spec written literally, the oracle; ``indexed`` reads a
:class:`fmn.snapshot.Snapshot` and looks only at rules the message can
touch.  Both return the same :class:`Notification` lists.
"""

from __future__ import annotations

from fmn.matcher.base import Matcher, Notification
from fmn.matcher.indexed import IndexedMatcher
from fmn.matcher.naive import NaiveMatcher
from fmn.prefs import Preferences

ENGINES = ("indexed", "naive")


def make_matcher(engine: str, prefs: Preferences) -> Matcher:
    """A matcher of the named engine over a whole preferences set."""
    if engine == "naive":
        return NaiveMatcher(prefs)
    if engine == "indexed":
        from fmn.snapshot import build_snapshot

        return IndexedMatcher(build_snapshot(prefs))
    raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")


__all__ = ["ENGINES", "IndexedMatcher", "Matcher", "NaiveMatcher", "Notification",
           "make_matcher"]
