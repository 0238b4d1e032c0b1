"""A snapshot store that lost its snapshot, or answers with an older one.

Redis restarted without persistence holds no ``current``: matchers must
rebuild it from the database, one at a time, instead of failing every record.
A lagging replica may name an older snapshot than a matcher holds: the
matcher must not go back to it.  The database is SQLite in a temporary file;
the store the in-memory one (the Redis store passes the same contract in
``tests/integration/test_snapshot_store.py``).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from shared_data import golden_messages, golden_prefs_doc
from sqlalchemy import Engine

from fmn import db
from fmn.errors import SnapshotUnavailable
from fmn.matcher import IndexedMatcher, NaiveMatcher
from fmn.snapshot import compile_snapshot, sync
from fmn.snapshot.live import LiveSnapshot
from fmn.snapshot.store import MemorySnapshotStore, Poll

pytestmark = pytest.mark.unit


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'prefs.sqlite'}")
    db.upgrade(engine)
    db.import_document(engine, json.loads(golden_prefs_doc()))
    return engine


def routed(matcher: Any) -> list[Any]:
    return [n for m in golden_messages()[:200] for n in matcher.match(m)]


def test_a_cold_matcher_rebuilds_a_missing_snapshot_once(engine: Engine) -> None:
    store = MemorySnapshotStore()
    sync.publish_full(engine, store)
    store.clear()  # Redis restarted empty
    published: list[str] = []
    real_publish = store.publish

    def counting_publish(data: Any) -> bool:
        published.append(data.id)
        return real_publish(data)

    store.publish = counting_publish  # type: ignore[method-assign]
    lives = [LiveSnapshot(store, rebuild=lambda: sync.rebuild_if_missing(engine, store))
             for _ in range(6)]
    results: list[Any] = []
    threads = [threading.Thread(target=lambda live=live: results.append(live()))
               for live in lives]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 6 and len(published) == 1  # one rebuild, no stampede
    assert routed(IndexedMatcher(lives[0])) == routed(NaiveMatcher(db.load_preferences(engine)))


def test_without_a_rebuild_a_missing_snapshot_stays_an_error() -> None:
    with pytest.raises(SnapshotUnavailable):
        LiveSnapshot(MemorySnapshotStore())()


def test_a_warm_matcher_rebuilds_when_the_store_loses_its_snapshot(engine: Engine) -> None:
    store = MemorySnapshotStore()
    sync.publish_full(engine, store)
    live = LiveSnapshot(store, poll_interval=0,
                        rebuild=lambda: sync.rebuild_if_missing(engine, store))
    first = live()
    store.clear()
    live()  # notices, rebuilds
    assert store.current_id() is not None and live.rebuilds == 1
    assert live().id == store.current_id() != first.id


class LaggingReplica(MemorySnapshotStore):
    """Answers polls with an older ``current`` (a replica behind its primary)."""

    stale: str | None = None

    def poll(self, snapshot_id: str, after: str) -> Poll:
        poll = super().poll(snapshot_id, after)
        return Poll(self.stale, poll.changes) if self.stale else poll


def test_a_lagging_replica_never_moves_a_matcher_back(engine: Engine) -> None:
    prefs = db.load_preferences(engine)
    store = LaggingReplica()
    old, new = compile_snapshot(prefs), compile_snapshot(prefs)
    store.publish(old)
    live = LiveSnapshot(store, poll_interval=0)
    assert live().id == old.id
    store.publish(new)
    assert live().id == new.id
    store.stale = old.id  # the replica still says the old one is current
    assert live().id == new.id and live.full_loads == 2 and live.stale_current >= 1
