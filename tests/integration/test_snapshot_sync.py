"""From the preferences database to a matcher's snapshot, through real Redis.

The database is imported from the golden preferences, compiled into Redis
with ``publish_full``, and read by a ``LiveSnapshot`` as a warm match
function would.  A user's change saved in the database and published with
``publish_user`` reroutes the next matching message after one poll interval,
without a full reload; a change racing a full rebuild is not lost.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeClock
from shared_data import golden_messages, golden_prefs_doc
from sqlalchemy import Engine

from fmn import db
from fmn.matcher import IndexedMatcher, NaiveMatcher
from fmn.prefs import Rule, User
from fmn.snapshot import sync
from fmn.snapshot.live import LiveSnapshot
from fmn.snapshot.store import RedisSnapshotStore

pytestmark = pytest.mark.integration


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'prefs.sqlite'}")
    db.upgrade(engine)
    db.import_document(engine, json.loads(golden_prefs_doc()))
    return engine


@pytest.fixture
def store(redis_any: Any) -> Iterator[RedisSnapshotStore]:
    """A store on the single Redis and on the cluster."""
    store = RedisSnapshotStore(redis_any, f"fmn-test:{uuid.uuid4().hex}:")
    yield store
    for key in list(redis_any.scan_iter(match=store.prefix + "*")):
        redis_any.delete(key)


def routed(matcher: Any) -> list[Any]:
    return [n for m in golden_messages() for n in matcher.match(m)]


def silenced(user: User) -> User:
    return User(user.name, user.enabled, user.destinations,
                tuple(Rule(r.id, r.name, False, r.tracking, r.generation_rules)
                      for r in user.rules))


def test_database_to_matcher_equals_the_oracle(engine: Engine,
                                               store: RedisSnapshotStore) -> None:
    sync.publish_full(engine, store)
    live = LiveSnapshot(store)
    assert routed(IndexedMatcher(live)) == routed(NaiveMatcher(db.load_preferences(engine)))


def test_a_saved_change_reroutes_the_next_message(engine: Engine,
                                                  store: RedisSnapshotStore) -> None:
    clock = FakeClock()
    sync.publish_full(engine, store)
    live = LiveSnapshot(store, poll_interval=0.25, clock=clock)
    matcher = IndexedMatcher(live)
    before = routed(matcher)
    name = before[0].user
    user = db.load_user(engine, name)
    assert user is not None

    revision = db.save_user(engine, silenced(user))
    sync.publish_user(store, name, db.load_user(engine, name), revision)
    clock.now += 0.25  # one poll interval: well within a second

    after = routed(matcher)
    assert after == [n for n in before if n.user != name]
    assert after == routed(NaiveMatcher(db.load_preferences(engine)))
    assert (live.full_loads, live.changes_applied) == (1, 1)


def test_a_change_racing_a_full_rebuild_is_not_lost(engine: Engine,
                                                    store: RedisSnapshotStore,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    sync.publish_full(engine, store)
    name = routed(NaiveMatcher(db.load_preferences(engine)))[0].user
    real_publish = store.publish

    def publish_while_a_user_changes(data: Any) -> bool:
        # The web UI saves a change after the rebuild read the database but
        # before the new snapshot is current: its change goes to the old log.
        user = db.load_user(engine, name)
        assert user is not None
        revision = db.save_user(engine, silenced(user))
        sync.publish_user(store, name, db.load_user(engine, name), revision)
        return real_publish(data)

    monkeypatch.setattr(store, "publish", publish_while_a_user_changes)
    sync.publish_full(engine, store)

    matcher = IndexedMatcher(LiveSnapshot(store))
    assert name not in {n.user for n in routed(matcher)}
    assert routed(matcher) == routed(NaiveMatcher(db.load_preferences(engine)))


def test_a_deleted_user_leaves_the_snapshot(engine: Engine, store: RedisSnapshotStore) -> None:
    sync.publish_full(engine, store)
    live = LiveSnapshot(store, poll_interval=0)
    name = routed(IndexedMatcher(live))[0].user
    user = db.load_user(engine, name)
    assert db.delete_user(engine, name)
    sync.publish_user(store, name, None, db.db_state(engine).change_seq)
    assert name not in {n.user for n in routed(IndexedMatcher(live))}
    assert live.full_loads == 1
    # a change from before the deletion, published late, does not bring them back
    sync.publish_user(store, name, user, 1)
    assert name not in {n.user for n in routed(IndexedMatcher(live))}
