"""Live ownership messages applied in the order they were sent, not the order they arrive.

On SQLite and the in-memory snapshot store: SQS reorders messages, retries a
failed one after a back-off of up to half an hour, and a dead-letter redrive
replays messages days old.  A message older than the last one applied to the
same artifact (or the same member of the same group), or than the last full
reconcile, changes nothing: a removed maintainer does not come back.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from fmn import db
from fmn.message import Message
from fmn.ownership import store as ostore
from fmn.ownership.data import Ownership
from fmn.ownership.diff import OwnershipDelta
from fmn.ownership.live import LiveUpdater, sent_at
from fmn.ownership.reconcile import reconcile_ownership
from fmn.prefs import Owners, Preferences, parse_document
from fmn.snapshot import compile_snapshot
from fmn.snapshot.store import MemorySnapshotStore

pytestmark = pytest.mark.unit

KEY = ("rpms", "foo")


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'prefs.sqlite'}")
    db.upgrade(engine)
    return engine


@pytest.fixture
def updater(engine: Engine) -> LiveUpdater:
    store = MemorySnapshotStore()
    store.publish(compile_snapshot(Preferences()))
    return LiveUpdater(engine, store)


def pagure(kind: str, at: str | None, owners: list[str], **body: Any) -> Message:
    """A dist-git message about rpms/foo; ``owners``: its project's access lists."""
    project = {"namespace": "rpms", "name": "foo",
               "access_users": {"owner": owners[:1], "admin": owners[1:]}}
    return Message(id=f"{kind}-{at}", topic=f"org.fedoraproject.prod.pagure.project.{kind}",
                   sent_at=at, body={"project": project, **body})


def member(kind: str, at: str, user: str) -> Message:
    return Message(id=f"{kind}-{at}-{user}", topic=f"org.fedoraproject.prod.fas.group.{kind}",
                   sent_at=at, body={"msg": {"group": "developers", "user": user}})


def owners(engine: Engine) -> set[str]:
    found = ostore.owners_of(engine, [KEY]).get(KEY)
    return set(found.users) if found else set()


def test_a_late_message_does_not_bring_a_removed_maintainer_back(
        engine: Engine, updater: LiveUpdater) -> None:
    added = pagure("user.added", "2024-01-02T10:00:00+00:00", ["pingou", "newu"],
                   new_user="newu", new_access="admin")
    removed = pagure("user.removed", "2024-01-02T11:00:00+00:00", ["pingou"],
                     removed_user="newu")
    updater.handle(added)
    updater.handle(removed)
    assert owners(engine) == {"pingou"}
    late = updater.handle(added)  # retried after a back-off, or re-driven days later
    assert late is not None and late.stale == 1 and not late.delta
    assert owners(engine) == {"pingou"}
    assert ostore.sync_states(engine)["live"]["detail"]["stale"] == 1
    # a newer message still applies; so does one that cannot be placed in time
    updater.handle(pagure("user.added", "2024-01-02T12:00:00+00:00", ["pingou", "newu"],
                          new_user="newu", new_access="admin"))
    assert owners(engine) == {"pingou", "newu"}
    updater.handle(pagure("user.removed", None, ["pingou"], removed_user="newu"))
    assert owners(engine) == {"pingou"}


def test_a_late_membership_message_changes_only_what_it_is_newest_about(
        engine: Engine, updater: LiveUpdater) -> None:
    delta = OwnershipDelta()
    delta.groups["developers"] = ("testuser", "someone")
    ostore.apply_delta(engine, delta)
    updater.handle(member("member.removed", "2024-01-02T10:40:00+00:00", "testuser"))
    # sponsored ten minutes before the removal, arriving after it
    late = updater.handle(member("member.sponsor", "2024-01-02T10:30:00+00:00", "testuser"))
    assert late is not None and late.stale == 1
    # about another member, the same age: applied
    updater.handle(member("member.sponsor", "2024-01-02T10:30:00+00:00", "newbie"))
    assert set(ostore.members_of(engine, ["developers"])["developers"]) == {
        "someone", "newbie"}


def test_a_message_older_than_the_last_reconcile_is_already_in_it(
        engine: Engine, updater: LiveUpdater) -> None:
    def fetch() -> Ownership:
        return Ownership(owners={"rpms": {"foo": Owners(users=("pingou",))}},
                         groups={"developers": ("testuser",)})

    assert reconcile_ownership(engine, updater.store, fetch).ok
    hour_ago = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    updater.handle(pagure("user.added", hour_ago, ["pingou", "newu"], new_user="newu",
                          new_access="admin"))
    updater.handle(member("member.removed", hour_ago, "testuser"))
    assert owners(engine) == {"pingou"}
    assert ostore.members_of(engine, ["developers"])["developers"] == ("testuser",)
    soon = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    updater.handle(pagure("user.added", soon, ["pingou", "newu"], new_user="newu",
                          new_access="admin"))
    assert owners(engine) == {"pingou", "newu"}


def test_a_message_stamped_ahead_of_the_clock_does_not_freeze_the_package(
        engine: Engine, updater: LiveUpdater) -> None:
    now = datetime.now(UTC)
    tomorrow = (now + timedelta(days=1)).isoformat()  # a publisher's clock a day ahead
    updater.handle(pagure("user.added", tomorrow, ["pingou", "eve"], new_user="eve",
                          new_access="admin"))
    assert owners(engine) == {"pingou", "eve"}
    # the genuine removal sent a minute later is applied, not "older than what is known"
    soon = (now + timedelta(minutes=1)).isoformat()
    removed = updater.handle(pagure("user.removed", soon, ["pingou"], removed_user="eve"))
    assert removed is not None and removed.stale == 0
    assert owners(engine) == {"pingou"}


@pytest.mark.parametrize("stamp", ["9999-12-31T23:59:59-05:00", "2999-01-01T00:00:00+00:00"])
def test_a_sent_at_beyond_the_skew_or_the_calendar_is_taken_as_now(stamp: str) -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    message = pagure("user.added", stamp, ["pingou"])
    assert sent_at(message, now) == now
    # within the skew, and in the past, the message's own time (in UTC)
    assert sent_at(pagure("x", "2026-01-02T03:08:05+00:00", []), now) == \
        now + timedelta(minutes=4)
    assert sent_at(pagure("x", "2026-01-01T22:04:05-05:00", []), now) == now


def test_a_reconcile_brings_back_stamps_ahead_of_its_fetch(
        engine: Engine, updater: LiveUpdater) -> None:
    far = datetime.now(UTC) + timedelta(days=400)  # left by a message before the fix
    ostore.stamp_live(engine, "artifact", {"rpms/foo": far})
    ostore.stamp_live(engine, "member", {"developers/testuser": far})

    def fetch() -> Ownership:
        return Ownership(owners={"rpms": {"foo": Owners(users=("pingou",))}},
                         groups={"developers": ("testuser",)})

    assert reconcile_ownership(engine, updater.store, fetch).ok
    soon = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    added = updater.handle(pagure("user.added", soon, ["pingou", "newu"], new_user="newu",
                                  new_access="admin"))
    assert added is not None and added.stale == 0
    assert owners(engine) == {"pingou", "newu"}
    gone = updater.handle(member("member.removed", soon, "testuser"))
    assert gone is not None and gone.stale == 0
    assert ostore.members_of(engine, ["developers"])["developers"] == ()


def test_an_account_is_fetched_without_holding_other_updates_up(engine: Engine) -> None:
    """A FASJSON request (up to seconds) is no ownership write: other live updates, of
    every match process, do not wait for it."""
    from fmn.ownership import live
    from fmn.ownership.data import Account

    db.import_preferences(engine, parse_document({"version": 1, "users": [
        {"name": "alice", "enabled": True, "destinations": [], "rules": []}]}))
    held: list[bool] = []

    class Fasjson:
        def user(self, name: str) -> Account:
            held.append(live._process_lock.locked())
            return Account(username=name, locked=True)

    store = MemorySnapshotStore()
    store.publish(compile_snapshot(Preferences()))
    updater = LiveUpdater(engine, store, fasjson=Fasjson())
    result = updater.handle(Message(id="u1", topic="org.fedoraproject.prod.fas.user.update",
                                    sent_at=datetime.now(UTC).isoformat(),
                                    body={"msg": {"user": "alice"}}))
    assert result is not None and result.accounts == 1 and held == [False]
    assert ostore.blocked_users(engine) == {"alice"}


def test_a_reconcile_writes_as_one_writer_with_live_updates(
        engine: Engine, updater: LiveUpdater, monkeypatch: pytest.MonkeyPatch) -> None:
    """A live message older than the fetch that passed its staleness check must not write
    after the reconcile: the reconcile reads, compares and writes under the same lock."""
    from fmn.ownership import live

    held: list[bool] = []
    apply_delta = ostore.apply_delta

    def watched(engine: Engine, delta: OwnershipDelta) -> int:
        held.append(live._process_lock.locked())
        return apply_delta(engine, delta)

    monkeypatch.setattr(ostore, "apply_delta", watched)

    def fetch() -> Ownership:
        held.append(live._process_lock.locked())  # the fetch (network) holds nothing up
        return Ownership(owners={"rpms": {"foo": Owners(users=("pingou",))}},
                         groups={"developers": ("testuser",)})

    assert reconcile_ownership(engine, updater.store, fetch).ok
    assert held == [False, True]
