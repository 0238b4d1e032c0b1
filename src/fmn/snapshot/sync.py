"""Keeping the snapshot in step with the preferences database.

* :func:`publish_full` compiles the whole database into a new snapshot and
  makes it current (on a schedule, after an ownership import, or at start).
* :func:`publish_user` sends one user's new entry after their preferences
  changed (what the web UI calls after :func:`fmn.db.save_user`).

A change that lands while a full snapshot is being compiled cannot be lost:
revisions are read *before* the preferences, and once the new snapshot is
current every user whose revision moved on meanwhile is published again.
"""

from __future__ import annotations

import logging

from sqlalchemy import Engine

from fmn import db
from fmn.prefs import User
from fmn.snapshot import SnapshotData, compile_snapshot, compile_user
from fmn.snapshot.store import SnapshotStore

log = logging.getLogger(__name__)


def publish_full(engine: Engine, store: SnapshotStore) -> SnapshotData:
    revisions = db.user_revisions(engine)
    prefs = db.load_preferences(engine)
    data = compile_snapshot(prefs, revisions)
    store.publish(data)
    # Users changed since we read the revisions: their change may have gone
    # to the previous snapshot's log.  Publish them again on the new one.
    now = db.user_revisions(engine)
    for name, revision in now.items():
        if revision != revisions.get(name):
            publish_user(store, name, db.load_user(engine, name), revision)
    gone = revisions.keys() - now.keys()
    if gone:
        seq = db.db_state(engine).change_seq
        for name in gone:
            publish_user(store, name, None, seq)
    log.info("published snapshot %s: %d users with live rules", data.id, len(data.users))
    return data


def publish_user(store: SnapshotStore, name: str, user: User | None, revision: int) -> None:
    """Publish one user's preferences at ``revision``.

    ``None``: the user is gone; pass the database's change sequence after the
    deletion as the revision, so that an older change published late cannot
    bring them back.
    """
    entry = (compile_user(user, revision) if user is not None
             else {"rev": revision, "dests": {}, "rules": []})
    store.publish_user(name, entry)
