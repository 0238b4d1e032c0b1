"""A warm matcher's snapshot when things go wrong: store away, bad or stale changes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fakes import FakeClock
from shared_data import golden_prefs_doc

from fmn.errors import SnapshotUnavailable
from fmn.prefs import Preferences, User, parse_document
from fmn.snapshot import Snapshot, compile_snapshot, compile_user
from fmn.snapshot.live import LiveSnapshot
from fmn.snapshot.store import MemorySnapshotStore, Poll

pytestmark = pytest.mark.unit


class FlakyStore(MemorySnapshotStore):
    """The in-memory store, with an outage switch."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def poll(self, snapshot_id: str, after: str) -> Poll:
        if self.down:
            raise SnapshotUnavailable("Redis failed to poll for changes: connection refused")
        return super().poll(snapshot_id, after)

    def load(self, snapshot_id: str | None = None) -> Snapshot:
        if self.down:
            raise SnapshotUnavailable("Redis failed to read a snapshot: connection refused")
        return super().load(snapshot_id)


@pytest.fixture(scope="module")
def prefs() -> Preferences:
    return parse_document(json.loads(golden_prefs_doc()))


def test_a_store_outage_keeps_the_snapshot_serving(prefs: Preferences) -> None:
    store, clock = FlakyStore(), FakeClock()
    store.publish(compile_snapshot(prefs))
    live = LiveSnapshot(store, poll_interval=0.25, clock=clock)
    first = live()
    store.down = True
    for _ in range(5):  # five messages in half a second: one failed poll, not five
        clock.now += 0.1
        assert live() is first
    assert live.poll_failures == 1
    store.down = False
    store.publish(compile_snapshot(prefs))  # a reload happens once the store is back
    clock.now += 0.25
    assert live() is not first and live.full_loads == 2


def test_a_failed_reload_keeps_the_old_snapshot(prefs: Preferences) -> None:
    store, clock = FlakyStore(), FakeClock()
    store.publish(compile_snapshot(prefs))
    live = LiveSnapshot(store, poll_interval=0.25, clock=clock)
    first = live()
    store.publish(compile_snapshot(prefs))
    real_load = store.load

    def broken_load(snapshot_id: str | None = None) -> Snapshot:
        raise SnapshotUnavailable("blob expired")

    store.load = broken_load  # type: ignore[method-assign]
    clock.now += 0.25
    assert live() is first
    store.load = real_load  # type: ignore[method-assign]
    clock.now += 0.25
    assert live() is not first


def test_an_unusable_change_is_skipped_not_blocking(prefs: Preferences) -> None:
    store = MemorySnapshotStore()
    store.publish(compile_snapshot(prefs))
    live = LiveSnapshot(store, poll_interval=0)
    user = prefs.users[3]
    before = live().users[user.name].rules
    bad: dict[str, Any] = compile_user(user, 10)
    bad["rules"][0][3][0][2] = ["no-such-destination"]
    store.publish_user(user.name, bad)
    quiet = compile_user(User(user.name, False, user.destinations, user.rules), 11)
    store.publish_user(prefs.users[4].name, quiet)
    snapshot = live()
    assert live.bad_changes == 1 and live.changes_applied == 1
    assert snapshot.users[user.name].rules == before  # untouched by the failed change
    assert not snapshot.users[prefs.users[4].name].rules  # the next change still applied


def test_a_stale_change_cannot_revive_a_left_out_user(prefs: Preferences) -> None:
    user = next(u for u in prefs.users if u.rules)
    disabled = User(user.name, False, user.destinations, user.rules)
    others = tuple(u for u in prefs.users if u.name != user.name)
    data = compile_snapshot(Preferences((*others, disabled), prefs.owners, prefs.groups),
                            {user.name: 5})
    assert user.name not in data.users and data.absent[user.name] == 5
    snapshot = Snapshot.from_data(data)
    assert not snapshot.apply_user(user.name, compile_user(user, 4))
    assert user.name not in snapshot.users
    assert snapshot.apply_user(user.name, compile_user(user, 6))
    assert snapshot.users[user.name].rules
