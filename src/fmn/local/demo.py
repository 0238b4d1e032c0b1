"""The demo users ``fmn up`` suggests: those the replay will actually notify.

Generated preferences follow Fedora's long tail: most people follow a few
quiet packages, so a demo user picked by position (the first with a live
feed) often receives nothing from the replayed messages while others
receive dozens.  :func:`rank_demo_users` runs the matcher over the replay's
messages at seed time (milliseconds for thousands of users) and ranks the
users by what they will receive: first those with notifications on their
live feed (so the feed line ``fmn up`` prints shows events), then by all
their notifications, whatever the channel (what the web UI's recent
notifications list shows).  The first is the suggested demo user, named in
the feed line and the development login's default.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fmn.errors import InvalidMessage
from fmn.matcher import IndexedMatcher
from fmn.message import Message
from fmn.prefs import Preferences
from fmn.snapshot import Snapshot

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoUser:
    name: str
    #: notifications the replay gives this user, every channel
    notifications: int
    #: of which on the live feed (``sse``)
    feed: int


def read_messages(files: Iterable[Path]) -> list[Message]:
    """The bus messages of JSON Lines files; a line that is no bus message is skipped."""
    from fmn.metadata import parse

    messages = []
    for path in files:
        for line in path.read_bytes().splitlines():
            if not line.strip():
                continue
            try:
                messages.append(parse(line))
            except InvalidMessage as exc:
                log.debug("%s: skipped a line: %s", path, exc)
    return messages


def rank_demo_users(prefs: Preferences, snapshot: Snapshot,
                    messages: Iterable[Message]) -> list[DemoUser]:
    """Every enabled user the messages notify, the best demo user first.

    Order: users with live feed notifications first, then by notifications
    (all channels), then by feed notifications, then by name (stable).
    """
    matcher = IndexedMatcher(snapshot)
    total: Counter[str] = Counter()
    feed: Counter[str] = Counter()
    seen: set[str] = set()
    for message in messages:
        if message.id in seen:  # the same record replayed on both buses
            continue
        seen.add(message.id)
        for n in matcher.match(message):
            total[n.user] += 1
            if n.protocol == "sse":
                feed[n.user] += 1
    enabled = {u.name for u in prefs.users if u.enabled}
    ranked = [DemoUser(name, count, feed[name]) for name, count in total.items()
              if name in enabled]
    ranked.sort(key=lambda u: (u.feed == 0, -u.notifications, -u.feed, u.name))
    return ranked
