"""The full reconcile's checks that a fetch is believable, on SQLite and the in-memory
snapshot store."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine

from fmn import db
from fmn.ownership import store as ostore
from fmn.ownership.data import Account, Ownership
from fmn.ownership.reconcile import MAX_FAILED_IN_A_ROW, reconcile_accounts, reconcile_ownership
from fmn.ownership.sources import SourceError
from fmn.prefs import Owners, Preferences, parse_document
from fmn.snapshot import compile_snapshot
from fmn.snapshot.store import MemorySnapshotStore

pytestmark = pytest.mark.unit


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'prefs.sqlite'}")
    db.upgrade(engine)
    return engine


@pytest.fixture
def store() -> MemorySnapshotStore:
    store = MemorySnapshotStore()
    store.publish(compile_snapshot(Preferences()))
    return store


def owner_map(users: int, groups: tuple[str, ...] = ("python-sig",)) -> Ownership:
    data = Ownership()
    for i in range(1000):
        data.owners["rpms"][f"pkg{i}"] = Owners(
            users=tuple(f"user{i}-{n}" for n in range(users)), groups=groups)
    return data


def test_an_owner_map_that_keeps_the_packages_but_loses_their_maintainers_is_refused(
        engine: Engine, store: MemorySnapshotStore) -> None:
    assert reconcile_ownership(engine, store, lambda: owner_map(2), with_groups=False).ok
    before = ostore.load_ownership(engine).owners
    stripped = reconcile_ownership(engine, store, lambda: owner_map(0), with_groups=False)
    assert not stripped.ok and stripped.reason is not None
    assert "(artifact, owner) pairs" in stripped.reason and "refused" in stripped.reason
    assert ostore.load_ownership(engine).owners == before
    # a day's churn goes through; the override lets a real change through too
    churn = owner_map(2)
    for i in range(20):
        churn.owners["rpms"][f"pkg{i}"] = Owners(users=(f"user{i}-0",), groups=("python-sig",))
    assert reconcile_ownership(engine, store, lambda: churn, with_groups=False).ok
    forced = reconcile_ownership(engine, store, lambda: owner_map(0), with_groups=False,
                                 max_drop=1.0)
    assert forced.ok
    assert not any(o.users for o in ostore.load_ownership(engine).owners["rpms"].values())


def test_many_group_owners_do_not_hide_the_loss_of_the_user_owners(
        engine: Engine, store: MemorySnapshotStore) -> None:
    groups = tuple(f"sig{n}" for n in range(20))
    assert reconcile_ownership(engine, store, lambda: owner_map(1, groups),
                               with_groups=False).ok
    # 1,000 of 21,000 pairs lost (under 10 %), but every user owner
    stripped = reconcile_ownership(engine, store, lambda: owner_map(0, groups),
                                   with_groups=False)
    assert not stripped.ok and "user owners" in (stripped.reason or "")
    assert all(o.users for o in ostore.load_ownership(engine).owners["rpms"].values())


def test_an_account_that_cannot_be_fetched_is_skipped_not_the_whole_sync(
        engine: Engine, store: MemorySnapshotStore) -> None:
    names = [f"user{i}" for i in range(100)]
    db.import_preferences(engine, parse_document({"version": 1, "users": [
        {"name": n, "enabled": True, "destinations": [], "rules": []} for n in names]}))
    assert reconcile_accounts(engine, store, lambda n: Account(username=n)).ok

    def fetch(name: str) -> Account:
        if name == "user57":  # still failing after the source's retries
            raise SourceError("GET /v1/users/user57/: HTTP 503")
        return Account(username=name, locked=name in ("user3", "user57"))

    report = reconcile_accounts(engine, store, fetch, workers=2)
    assert report.ok and report.failed == 1 and report.fetched == 99
    assert "1 accounts could not be fetched" in report.summary()
    assert ostore.blocked_users(engine) == {"user3"}  # user57 left as it was
    assert ostore.sync_states(engine)["accounts"]["detail"]["failed"] == 1

    def odd(name: str) -> Account:  # 30 accounts side by side it answers oddly for
        if name in {f"user{i}" for i in range(40, 70)}:
            raise SourceError(f"GET /v1/users/{name}/: HTTP 403")
        return Account(username=name, locked=name in ("user3", "user90"))

    report = reconcile_accounts(engine, store, odd, workers=2)
    assert report.ok and report.failed == 30  # not the source failing: the sync goes on
    assert ostore.blocked_users(engine) == {"user3", "user90"}

    asked: list[str] = []

    def down(name: str) -> Account:
        asked.append(name)
        raise SourceError(f"GET /v1/users/{name}/: HTTP 500", source_down=True)

    refused = reconcile_accounts(engine, store, down)
    assert not refused.ok and "HTTP 500" in (refused.reason or "")
    # the source is down: the sync stops, and says so, rather than retry every account
    assert "20 accounts in a row" in (refused.reason or "")
    assert refused.failed == MAX_FAILED_IN_A_ROW and len(asked) < 100
    assert "in a row" in ostore.sync_states(engine)["accounts"]["error"]
    assert ostore.blocked_users(engine) == {"user3", "user90"}


def test_one_locked_account_can_be_synced_on_its_own(engine: Engine,
                                                      store: MemorySnapshotStore) -> None:
    # `fmn sync accounts --user mallory`, to switch a locked account off now: every
    # account fetched is locked, and yet it is no source answering nothing
    names = [f"user{i}" for i in range(30)]
    db.import_preferences(engine, parse_document({"version": 1, "users": [
        {"name": n, "enabled": True, "destinations": [], "rules": []} for n in names]}))
    report = reconcile_accounts(engine, store, lambda n: Account(username=n, locked=True),
                                names=["user7"])
    assert report.ok, report.reason
    assert ostore.blocked_users(engine) == {"user7"}
    # every account locked at once still is
    refused = reconcile_accounts(engine, store, lambda n: Account(username=n, locked=True))
    assert not refused.ok and "usable accounts is empty" in (refused.reason or "")
    assert ostore.blocked_users(engine) == {"user7"}


def test_where_the_next_group_fetch_starts_survives_refusals_and_runs_without_groups(
        engine: Engine, store: MemorySnapshotStore) -> None:
    def resume_from() -> object:
        return ostore.sync_states(engine)["ownership"]["detail"]["resume_from"]

    partial = owner_map(2)
    partial.groups = {"python-sig": ("alice",)}
    partial.not_reached = ("r-group", "s-group")
    assert reconcile_ownership(engine, store, lambda: partial).ok
    assert resume_from() == "r-group"
    # an owner map from a file fetches no group: where they start stays
    assert reconcile_ownership(engine, store, lambda: owner_map(2), with_groups=False).ok
    assert resume_from() == "r-group"
    # refused (every maintainer gone): nothing applied, it starts where it started
    refused = reconcile_ownership(engine, store, lambda: owner_map(0), start_at="r-group")
    assert not refused.ok and resume_from() == "r-group"
