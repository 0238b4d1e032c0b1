"""Live ownership stamps written by concurrent match invocations, on the embedded SQLite.

Each invocation that applies an ownership message reads the stamps it knows and
writes the newer ones.  On SQLite a transaction that reads and then writes fails
at once ("database is locked") when another writer committed in between; the
load test met it at match concurrency 2 and above, and each time a record went
back on its queue for a minute.  The stamp's transaction now takes the writers'
lock first, so the others wait for it instead.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fmn import db
from fmn.ownership import store as ostore

pytestmark = pytest.mark.integration

THREADS, ROUNDS = 4, 40


def test_concurrent_stamps_all_land_and_only_move_forward(tmp_path: Path) -> None:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'prefs.sqlite'}")
    db.upgrade(engine)
    t0 = datetime(2026, 12, 2, tzinfo=UTC)
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def stamp(worker: int) -> None:
        try:
            start.wait()
            for r in range(ROUNDS):
                when = t0 + timedelta(seconds=r)
                # shared keys (all threads race on them) and keys of its own
                ostore.stamp_live(engine, "artifact", {
                    **{f"rpms/shared-{k}": when for k in range(20)},
                    f"rpms/own-{worker}": when})
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=stamp, args=(w,)) for w in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    last = t0 + timedelta(seconds=ROUNDS - 1)
    keys = [f"rpms/shared-{k}" for k in range(20)] + [f"rpms/own-{w}" for w in range(THREADS)]
    assert ostore.live_stamps(engine, "artifact", keys) == dict.fromkeys(keys, last)
    engine.dispose()


def test_an_older_message_checked_first_cannot_write_after_a_newer_one(tmp_path: Path) -> None:
    """Two invocations apply messages about one package at once: the older one passes
    its staleness check, the newer one runs whole, then the older one writes.  Each
    step was a transaction of its own, so the older access list won (eve, removed by
    the newer message, stayed an owner until the next reconcile)."""
    from fmn.message import Message
    from fmn.ownership.live import LiveUpdater
    from fmn.prefs import Preferences
    from fmn.snapshot import compile_snapshot
    from fmn.snapshot.store import MemorySnapshotStore

    engine = db.make_engine(f"sqlite:///{tmp_path / 'prefs.sqlite'}")
    db.upgrade(engine)
    store = MemorySnapshotStore()
    store.publish(compile_snapshot(Preferences()))

    def pagure(kind: str, at: datetime, owners: list[str], **body: object) -> Message:
        project = {"namespace": "rpms", "name": "foo",
                   "access_users": {"owner": owners[:1], "admin": owners[1:]}}
        return Message(id=f"{kind}-{at}", topic=f"org.fedoraproject.prod.pagure.project.{kind}",
                       sent_at=at.isoformat(), body={"project": project, **body})

    t = datetime.now(UTC) - timedelta(minutes=1)
    older = pagure("user.added", t, ["pingou", "eve"], new_user="eve", new_access="admin")
    newer = pagure("user.removed", t + timedelta(seconds=2), ["pingou"], removed_user="eve")
    a, b = LiveUpdater(engine, store), LiveUpdater(engine, store)
    checked, b_done = threading.Event(), threading.Event()
    check = a._drop_stale

    def check_then_give_b_its_chance(bound: object, update: object, when: datetime) -> int:
        n = check(bound, update, when)  # type: ignore[arg-type]
        checked.set()
        b_done.wait(1.0)  # B runs whole here unless the updates are applied one at a time
        return n

    a._drop_stale = check_then_give_b_its_chance  # type: ignore[method-assign]
    errors: list[BaseException] = []

    def run_b() -> None:
        try:
            checked.wait(10)
            b.handle(newer)
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)
        finally:
            b_done.set()

    other = threading.Thread(target=run_b)
    other.start()
    a.handle(older)
    other.join(10)
    assert errors == [] and not other.is_alive()
    assert ostore.owners_of(engine, [("rpms", "foo")])[("rpms", "foo")].users == ("pingou",)
    engine.dispose()
