"""A saved change whose publish failed is never forgotten.

The database and the snapshot must not disagree silently: an unsubscribe
saved while the snapshot store (Redis) was away stays *pending* in the
database, the API says so, and the next write that reaches the store (or the
next full publish) carries it, so mail stops.  SQLite in a temporary file
and the in-memory snapshot store, made to fail on demand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from fmn import db
from fmn.db import pending
from fmn.errors import SnapshotUnavailable
from fmn.snapshot import sync
from fmn.snapshot.live import LiveSnapshot
from fmn.snapshot.store import MemorySnapshotStore
from fmn.web.service import PreferencesService

pytestmark = pytest.mark.unit


class FlakyStore(MemorySnapshotStore):
    """The in-memory store, unreachable for per-user changes while ``down``."""

    down = False

    def publish_user(self, user: str, entry: Any) -> None:
        if self.down:
            raise SnapshotUnavailable("Redis failed to publish a change: connection refused")
        super().publish_user(user, entry)


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'web.sqlite'}")
    db.upgrade(engine)
    return engine


@pytest.fixture
def store(engine: Engine) -> FlakyStore:
    store = FlakyStore()
    sync.publish_full(engine, store)
    return store


def live_rules(live: LiveSnapshot, name: str) -> Any:
    entry = live().users.get(name)
    return None if entry is None else entry.rules


def test_an_unsubscribe_during_a_redis_blip_is_published_later(engine: Engine,
                                                               store: FlakyStore) -> None:
    service = PreferencesService(engine, store)
    service.login("alice", "alice@example.org")
    live = LiveSnapshot(store, poll_interval=0)
    assert live_rules(live, "alice"), "alice's address is in the snapshot"
    assert service.me("alice")["publish_pending"] is False

    store.down = True
    service.unsubscribe("alice", "email")  # saved; its publish fails
    assert service.me("alice")["publish_pending"] is True
    assert live_rules(live, "alice"), "the matcher still mails alice: not silently"

    store.down = False
    service.login("bob", "bob@example.org")  # the next write drains what is pending
    assert not live_rules(live, "alice")
    assert service.me("alice")["publish_pending"] is False
    assert pending.pending(engine) == []


def test_a_full_publish_clears_what_it_covers(engine: Engine, store: FlakyStore) -> None:
    service = PreferencesService(engine, store)
    store.down = True
    service.login("carol", "carol@example.org")
    assert [name for name, _ in pending.pending(engine)] == ["carol"]
    store.down = False
    sync.publish_full(engine, store)
    assert pending.pending(engine) == []
    assert LiveSnapshot(store)().users.get("carol") is not None


def test_a_crash_between_saving_and_publishing_leaves_the_change_pending(
        engine: Engine, store: FlakyStore) -> None:
    from fmn.web.service import default_user

    revision = db.save_user(engine, default_user("dave", "dave@example.org"))  # then: crash
    assert pending.pending(engine) == [("dave", revision)]
    assert sync.publish_pending(engine, store) == 1
    assert LiveSnapshot(store)().users["dave"].rev == revision
    assert pending.pending(engine) == []
