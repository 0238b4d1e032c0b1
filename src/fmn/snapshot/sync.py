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

import dataclasses
import logging

from sqlalchemy import Engine

from fmn import db
from fmn.prefs import Preferences, User
from fmn.snapshot import SnapshotData, compile_snapshot, compile_user
from fmn.snapshot.store import SnapshotStore

log = logging.getLogger(__name__)


def publish_full(engine: Engine, store: SnapshotStore) -> SnapshotData:
    from fmn.ownership.store import blocked_users

    revisions = db.user_revisions(engine)
    ownership_before = db.db_state(engine).ownership_revision
    prefs = receivable(db.load_preferences(engine), blocked_users(engine))
    data = compile_snapshot(prefs, revisions)
    store.publish(data)
    # Users changed since we read the revisions: their change may have gone
    # to the previous snapshot's log.  Publish them again on the new one.
    now = db.user_revisions(engine)
    blocked = blocked_users(engine)
    for name, revision in now.items():
        if revision != revisions.get(name):
            user = db.load_user(engine, name)
            publish_user(store, name, None if name in blocked else user, revision)
    if db.db_state(engine).ownership_revision != ownership_before:
        # Ownership moved meanwhile (a bus message, a reconcile): its change
        # may be in the old log.  Send the whole of it as one change.
        owners = db.load_preferences(engine)
        store.publish_ownership({
            "replace": True,
            "owners": {t: {n: [list(o.users), list(o.groups)] for n, o in names.items()}
                       for t, names in owners.owners.items()},
            "groups": {g: list(m) for g, m in owners.groups.items()}})
    gone = revisions.keys() - now.keys()
    if gone:
        seq = db.db_state(engine).change_seq
        for name in gone:
            publish_user(store, name, None, seq)
    log.info("published snapshot %s: %d users with live rules", data.id, len(data.users))
    return data


def receivable(prefs: Preferences, blocked: set[str]) -> Preferences:
    """``prefs`` with the users whose Fedora account is locked or deleted switched off."""
    if not blocked:
        return prefs
    return dataclasses.replace(prefs, users=tuple(
        dataclasses.replace(u, enabled=False) if u.name in blocked and u.enabled else u
        for u in prefs.users))


def publish_user(store: SnapshotStore, name: str, user: User | None, revision: int) -> None:
    """Publish one user's preferences at ``revision``.

    ``None``: the user is gone; pass the database's change sequence after the
    deletion as the revision, so that an older change published late cannot
    bring them back.
    """
    entry = (compile_user(user, revision) if user is not None
             else {"rev": revision, "dests": {}, "rules": []})
    store.publish_user(name, entry)
