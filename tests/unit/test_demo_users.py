"""The demo user ``fmn up`` suggests is one the replay notifies (and on the live feed).

Generated preferences have a long tail: by position alone, the suggested user
often receives nothing from the shared messages.  The ranking runs the
matcher over the replay's messages instead.
"""

from __future__ import annotations

from collections import Counter

import pytest
from shared_data import MESSAGES

from fmn.generate import generate_preferences
from fmn.local.demo import rank_demo_users, read_messages
from fmn.matcher import IndexedMatcher
from fmn.snapshot import build_snapshot

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("users, seed", [(300, 4), (2000, 0)])
def test_the_suggested_user_is_the_one_the_replay_notifies_most(users: int, seed: int) -> None:
    prefs = generate_preferences(users, seed)
    snapshot = build_snapshot(prefs)
    messages = read_messages([MESSAGES / "fedmsg.jsonl", MESSAGES / "fedora-messaging.jsonl"])
    ranking = rank_demo_users(prefs, snapshot, messages)

    total: Counter[str] = Counter()
    feed: Counter[str] = Counter()
    seen = set()
    matcher = IndexedMatcher(snapshot)
    for m in messages:
        if m.id not in seen:
            seen.add(m.id)
            for n in matcher.match(m):
                total[n.user] += 1
                feed[n.user] += n.protocol == "sse"
    top = ranking[0]
    assert top.feed > 0, "the suggested user's live feed gets events from the replay"
    assert (top.notifications, top.feed) == (total[top.name], feed[top.name])
    assert top.notifications == max(c for u, c in total.items() if feed[u] > 0)
    user = next(u for u in prefs.users if u.name == top.name)
    assert user.enabled and any(d.protocol == "sse" and d.verified for d in user.destinations)
    # everyone ranked is notified; users with feed events come first
    assert all(u.notifications > 0 for u in ranking)
    with_feed = [u.feed > 0 for u in ranking]
    assert with_feed == sorted(with_feed, reverse=True)

    # what position alone would have suggested gets less, often nothing
    by_position = next(u.name for u in prefs.users if u.enabled and any(
        d.protocol == "sse" and d.verified for d in u.destinations))
    assert total[by_position] <= top.notifications
