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
