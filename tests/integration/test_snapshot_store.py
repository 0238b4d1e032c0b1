"""The snapshot store and the live snapshot, on the in-memory fake and on real Redis.

The same tests run against both stores: publishing is atomic, per-user
changes reach a reader without a full reload, a new full snapshot replaces
the old one, and a change published while a reader holds an older snapshot
is not lost.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fakes import FakeClock
from services import redis_client
from shared_data import golden_messages, golden_prefs_doc

from fmn.matcher import IndexedMatcher, NaiveMatcher
from fmn.prefs import Preferences, Rule, User, parse_document
from fmn.redisconn import connect
from fmn.snapshot import compile_snapshot, compile_user
from fmn.snapshot.live import LiveSnapshot
from fmn.snapshot.store import MemorySnapshotStore, RedisSnapshotStore, SnapshotStore

pytestmark = pytest.mark.integration


@pytest.fixture(params=["memory", "redis", "cluster"])
def store(request: pytest.FixtureRequest) -> Iterator[SnapshotStore]:
    if request.param == "memory":
        yield MemorySnapshotStore()
        return
    client = (redis_client() if request.param == "redis"
              else connect(request.getfixturevalue("redis_cluster_url")))
    prefix = f"fmn-test:{uuid.uuid4().hex}:"
    store = RedisSnapshotStore(client, prefix)
    yield store
    keys = list(client.scan_iter(match=store.prefix + "*"))
    for key in keys:
        client.delete(key)


@pytest.fixture(scope="module")
def prefs() -> Preferences:
    return parse_document(json.loads(golden_prefs_doc()))


def notified_users(matcher: Any) -> set[str]:
    return {n.user for m in golden_messages() for n in matcher.match(m)}


def test_round_trip_gives_the_same_answers(store: SnapshotStore, prefs: Preferences) -> None:
    store.publish(compile_snapshot(prefs))
    live = LiveSnapshot(store)
    indexed, naive = IndexedMatcher(live), NaiveMatcher(prefs)
    for m in golden_messages():
        assert indexed.match(m) == naive.match(m)


def test_user_change_is_picked_up_without_a_full_reload(store: SnapshotStore,
                                                        prefs: Preferences) -> None:
    clock = FakeClock()
    store.publish(compile_snapshot(prefs))
    live = LiveSnapshot(store, poll_interval=0.25, clock=clock)
    matcher = IndexedMatcher(live)
    before = notified_users(matcher)
    victim = sorted(before)[0]
    user = prefs.user(victim)
    assert user is not None

    # The user disables every rule: their part of the snapshot goes away.
    quiet = User(user.name, user.enabled, user.destinations,
                 tuple(Rule(r.id, r.name, False, r.tracking, r.generation_rules)
                       for r in user.rules))
    store.publish_user(victim, compile_user(quiet, revision=2))
    assert victim in notified_users(matcher), "no poll before the interval is over"
    clock.now += 0.25  # the poll interval: a change shows within a second
    assert notified_users(matcher) == before - {victim}
    assert (live.full_loads, live.changes_applied) == (1, 1)

    # ... and turns them back on.
    store.publish_user(victim, compile_user(user, revision=3))
    clock.now += 0.25
    assert notified_users(matcher) == before
    assert (live.full_loads, live.changes_applied) == (1, 2)


def test_stale_change_is_ignored(store: SnapshotStore, prefs: Preferences) -> None:
    user = prefs.users[0]
    store.publish(compile_snapshot(prefs, {user.name: 5}))
    live = LiveSnapshot(store, poll_interval=0)
    live()
    store.publish_user(user.name, compile_user(
        User(user.name, user.enabled, user.destinations, ()), revision=4))
    snapshot = live()
    assert snapshot.users[user.name].rev == 5


def test_new_full_snapshot_replaces_the_old(store: SnapshotStore, prefs: Preferences) -> None:
    store.publish(compile_snapshot(prefs))
    live = LiveSnapshot(store, poll_interval=0)
    first = live()
    empty = Preferences(users=(), owners=prefs.owners, groups=prefs.groups)
    store.publish(compile_snapshot(empty))
    second = live()
    assert second is not first and not second.users and live.full_loads == 2
    assert notified_users(IndexedMatcher(live)) == set()


def test_a_reader_joining_late_gets_the_changes_since_the_blob(store: SnapshotStore,
                                                               prefs: Preferences) -> None:
    store.publish(compile_snapshot(prefs))
    gone = prefs.users[0].name
    store.publish_user(gone, None)
    live = LiveSnapshot(store, poll_interval=0)
    snapshot = live()
    assert gone not in snapshot.users
    assert (live.full_loads, live.changes_applied) == (1, 1)


def test_change_without_a_snapshot_is_refused(store: SnapshotStore) -> None:
    from fmn.errors import SnapshotUnavailable

    with pytest.raises(SnapshotUnavailable):
        store.publish_user("alice", None)
    with pytest.raises(SnapshotUnavailable):
        store.load()


def test_an_older_snapshot_never_replaces_a_newer(store: SnapshotStore,
                                                  prefs: Preferences) -> None:
    older, newer = compile_snapshot(prefs), compile_snapshot(prefs)
    assert store.publish(newer)
    assert not store.publish(older)  # compiled first, published last: refused
    assert store.current_id() == newer.id
    assert store.load().id == newer.id


def test_a_missing_snapshot_is_told_apart_from_an_unreachable_store(
        store: SnapshotStore) -> None:
    from fmn.snapshot.store import SnapshotMissing

    with pytest.raises(SnapshotMissing):
        store.load()
    with pytest.raises(SnapshotMissing):
        store.publish_user("alice", None)


def test_one_process_at_a_time_holds_the_rebuild_lock(store: SnapshotStore) -> None:
    with store.rebuild_lock(30) as first, store.rebuild_lock(30) as second:
        assert (first, second) == (True, False)
    with store.rebuild_lock(30) as again:
        assert again
