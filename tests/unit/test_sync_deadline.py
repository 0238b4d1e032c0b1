"""The account sync within a deadline: a pass over every account that runs out of time
goes on in the next run, from the first account it did not reach (SQLite, the
in-memory snapshot store)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from fmn import db
from fmn.ownership import store as ostore
from fmn.ownership.data import Account
from fmn.ownership.reconcile import (
    ACCOUNT_PASS_EVERY,
    account_pass,
    format_status,
    reconcile_accounts,
)
from fmn.ownership.sources import RetryPolicy, SourceError
from fmn.prefs import Preferences, parse_document
from fmn.snapshot import compile_snapshot
from fmn.snapshot.store import MemorySnapshotStore

pytestmark = pytest.mark.unit

NAMES = [f"user{i:02d}" for i in range(50)]


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'prefs.sqlite'}")
    db.upgrade(engine)
    db.import_preferences(engine, parse_document({"version": 1, "users": [
        {"name": n, "enabled": True, "destinations": [], "rules": []}
        for n in reversed(NAMES)]}))  # positions are not name order
    return engine


@pytest.fixture
def store() -> MemorySnapshotStore:
    store = MemorySnapshotStore()
    store.publish(compile_snapshot(Preferences()))
    return store


def out_of_time_after(n: int) -> Callable[[], bool]:
    calls = iter(range(10_000))
    return lambda: next(calls) >= n


def test_a_pass_out_of_time_goes_on_where_it_stopped(engine: Engine,
                                                     store: MemorySnapshotStore) -> None:
    asked: list[str] = []
    locked = {"user05", "user40"}

    def fetch(name: str) -> Account:
        asked.append(name)
        return Account(username=name, locked=name in locked)

    assert account_pass(engine) == (True, None, None)  # never ran
    first = reconcile_accounts(engine, store, fetch, workers=1, out_of_time=out_of_time_after(30))
    assert first.ok and first.fetched == 30 and first.not_reached == 20
    assert first.resume_from == "user30" and asked == NAMES[:30]
    assert "20 accounts not reached in time" in first.summary()
    assert ostore.blocked_users(engine) == {"user05"}  # what it fetched is applied
    line = format_status(ostore.sync_states(engine))
    assert "20 not reached in time (the next run starts with user30)" in line

    due, start_at, began = account_pass(engine)
    assert due and start_at == "user30" and began == first.pass_started_at
    asked.clear()
    second = reconcile_accounts(engine, store, fetch, workers=3, start_at=start_at,
                                pass_started_at=began)
    assert second.ok and second.resume_from is None and second.not_reached == 0
    assert sorted(asked) == NAMES[30:]
    assert second.pass_started_at == first.pass_started_at  # the same pass
    assert ostore.blocked_users(engine) == locked

    # done: the next pass is due a day after this one began
    assert account_pass(engine)[0] is False
    began_at = datetime.fromisoformat(second.pass_started_at or "")
    assert account_pass(engine, began_at + ACCOUNT_PASS_EVERY) == (True, None, None)
    assert account_pass(engine, began_at + ACCOUNT_PASS_EVERY - timedelta(minutes=1))[0] is False


def test_a_run_out_of_time_at_once_records_where_to_start(
        engine: Engine, store: MemorySnapshotStore) -> None:
    report = reconcile_accounts(engine, store, lambda n: Account(username=n),
                                out_of_time=lambda: True)
    assert report.ok and report.fetched == 0 and report.resume_from == "user00"
    assert account_pass(engine)[:2] == (True, "user00")


def test_a_refused_run_is_retried_from_where_it_began(engine: Engine,
                                                      store: MemorySnapshotStore) -> None:
    fine = reconcile_accounts(engine, store, lambda n: Account(username=n), workers=1,
                              out_of_time=out_of_time_after(10))
    assert fine.resume_from == "user10"

    def down(name: str) -> Account:
        raise SourceError(f"GET /v1/users/{name}/: HTTP 503", source_down=True)

    refused = reconcile_accounts(engine, store, down, start_at="user10",
                                 pass_started_at=fine.pass_started_at)
    assert not refused.ok
    assert account_pass(engine) == (True, "user10", fine.pass_started_at)

    # a run over a few named accounts leaves the pass where it was
    assert reconcile_accounts(engine, store, lambda n: Account(username=n),
                              names=["user03"]).ok
    assert account_pass(engine) == (True, "user10", fine.pass_started_at)


def test_a_refused_new_pass_starts_over(engine: Engine, store: MemorySnapshotStore) -> None:
    reconcile_accounts(engine, store, lambda n: Account(username=n))
    ostore.record_sync(engine, "accounts", ok=False, error="fetch failed: x",
                       detail={"resume_from": None})
    assert account_pass(engine, datetime.now(UTC)) == (True, None, None)


def test_the_longest_get_bounds_the_time_kept_back() -> None:
    # three tries of 60 s, two waits of at most 30 s (Retry-After's cap)
    assert RetryPolicy().worst_get_s(60) == 240
    assert RetryPolicy(retries=0).worst_get_s(5) == 5


def test_a_pass_whose_last_accounts_are_all_gone_finishes(engine: Engine,
                                                          store: MemorySnapshotStore) -> None:
    # the tail of a pass is part of one: all of it deleted is no source answering nothing
    first = reconcile_accounts(engine, store, lambda n: Account(username=n), workers=1,
                               out_of_time=out_of_time_after(48))
    assert first.resume_from == "user48"
    gone = {"user48", "user49"}
    tail = reconcile_accounts(engine, store, lambda n: Account(username=n, deleted=n in gone),
                              start_at="user48", pass_started_at=first.pass_started_at)
    assert tail.ok, tail.reason
    assert tail.resume_from is None and tail.pass_finished_at is not None
    assert ostore.blocked_users(engine) == gone
    assert account_pass(engine)[0] is False  # done, not stuck retrying the tail


def test_a_run_over_named_accounts_does_not_hide_an_unfinished_pass(
        engine: Engine, store: MemorySnapshotStore) -> None:
    assert reconcile_accounts(engine, store, lambda n: Account(username=n)).ok
    # every account a 404 at once: refused, the pass is not done
    refused = reconcile_accounts(engine, store, lambda n: Account(username=n, deleted=True))
    assert not refused.ok
    assert account_pass(engine) == (True, None, None)
    assert reconcile_accounts(engine, store, lambda n: Account(username=n),
                              names=["user03"]).ok
    assert account_pass(engine) == (True, None, None)  # still due


def test_a_run_stopped_by_a_failing_source_keeps_what_it_fetched(
        engine: Engine, store: MemorySnapshotStore) -> None:
    def fails_from_user20(name: str) -> Account:
        if name >= "user20":  # the source starts failing (rate limited, say)
            raise SourceError(f"GET /v1/users/{name}/: HTTP 503", source_down=True)
        return Account(username=name, locked=name == "user05")

    stopped = reconcile_accounts(engine, store, fails_from_user20, workers=1)
    assert not stopped.ok and stopped.stopped and "20 accounts in a row" in (stopped.reason or "")
    assert stopped.fetched == 20 and stopped.resume_from == "user20"
    assert ostore.blocked_users(engine) == {"user05"}  # applied, not thrown away
    assert "STOPPED" in format_status(ostore.sync_states(engine))
    due, start_at, began = account_pass(engine)
    assert due and start_at == "user20" and began == stopped.pass_started_at
    rest = reconcile_accounts(engine, store, lambda n: Account(username=n, locked=n == "user05"),
                              start_at=start_at, pass_started_at=began)
    assert rest.ok and rest.fetched == 30 and rest.pass_finished_at is not None
