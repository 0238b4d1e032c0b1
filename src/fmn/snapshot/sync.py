"""Keeping the snapshot in step with the preferences database.

* :func:`publish_full` compiles the whole database into a new snapshot and
  makes it current (on a schedule, after an ownership import, or at start).
* :func:`publish_user` sends one user's new entry after their preferences
  changed (what the web UI calls after :func:`fmn.db.save_user`).

A change that lands while a full snapshot is being compiled cannot be lost:
revisions are read *before* the preferences, and once the new snapshot is
current every user whose revision moved on meanwhile is published again.

A change whose publish failed cannot be forgotten either: saving it wrote a
``pending_publish`` row (:mod:`fmn.db.pending`) that only a successful publish
clears.  :func:`publish_pending` publishes what such rows name (the web app
calls it on its next write), and :func:`publish_full` clears every row it
covers.

:func:`rebuild_if_missing` is what a matcher calls when the store holds no
snapshot at all (Redis restarted without persistence): one process, holding
the store's rebuild lock, runs :func:`publish_full`; the others wait for it
instead of all compiling the database at once.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from fmn import db
from fmn.db import pending
from fmn.errors import SnapshotUnavailable
from fmn.prefs import Preferences, User
from fmn.snapshot import SnapshotData, compile_snapshot, compile_user
from fmn.snapshot.store import SnapshotMissing, SnapshotStore

log = logging.getLogger(__name__)

#: How long a rebuild may hold the lock before another process may try.
REBUILD_LOCK_S = 300


def publish_full(engine: Engine, store: SnapshotStore) -> SnapshotData:
    from fmn.ownership.store import blocked_users

    waiting = pending.pending(engine, limit=100_000)  # before the revisions: covered below
    revisions = db.user_revisions(engine)
    ownership_before = db.db_state(engine).ownership_revision
    prefs = receivable(db.load_preferences(engine), blocked_users(engine))
    data = compile_snapshot(prefs, revisions)
    if not store.publish(data):
        # A snapshot compiled later is current already: it holds all of this.
        log.info("snapshot %s not published: the store holds a newer one", data.id)
        return data
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
    pending.clear(engine, waiting)
    log.info("published snapshot %s: %d users with live rules", data.id, len(data.users))
    return data


def receivable(prefs: Preferences, blocked: set[str]) -> Preferences:
    """``prefs`` with the users whose Fedora account is locked or deleted switched off."""
    if not blocked:
        return prefs
    return dataclasses.replace(prefs, users=tuple(
        dataclasses.replace(u, enabled=False) if u.name in blocked and u.enabled else u
        for u in prefs.users))


def publish_pending(engine: Engine, store: SnapshotStore, limit: int = 100) -> int:
    """Publish up to ``limit`` users whose saved change may not be in the snapshot;
    how many were.  Raises what the store raises (the rest stay pending)."""
    waiting = pending.pending(engine, limit)
    for name, revision in waiting:
        # The revision before the content: a change landing in between is
        # published with a revision that the change's own publish then supersedes.
        current = pending.user_revision(engine, name)
        user = db.load_user(engine, name) if current is not None else None
        if user is None or current is None:
            publish_user(store, name, None, max(revision, db.db_state(engine).change_seq))
        else:
            publish_saved(engine, store, user, current)
        pending.clear(engine, [(name, revision)])
    if waiting:
        log.info("published %d pending user changes", len(waiting))
    return len(waiting)


def rebuild_if_missing(engine: Engine, store: SnapshotStore, *, wait_s: float = 20.0,
                       sleep: Callable[[float], None] = time.sleep) -> bool:
    """Publish a full snapshot if the store holds none; True if this call did.

    One caller at a time rebuilds (the store's rebuild lock); the others wait
    up to ``wait_s`` for the snapshot to appear, then raise
    :class:`~fmn.errors.SnapshotUnavailable` (retryable: the record comes back).
    """
    if store.current_id() is not None:
        return False
    with store.rebuild_lock(REBUILD_LOCK_S) as mine:
        if mine:
            if store.current_id() is not None:  # rebuilt while we took the lock
                return False
            log.warning("no snapshot in the store: rebuilding it from the database")
            try:
                data = publish_full(engine, store)
            except SQLAlchemyError as exc:
                raise SnapshotUnavailable(f"rebuilding the snapshot: database: {exc}") from exc
            log.warning("rebuilt snapshot %s (%d users)", data.id, len(data.users))
            return True
    waited = 0.0
    while waited < wait_s:
        sleep(0.25)
        waited += 0.25
        if store.current_id() is not None:
            return False
    raise SnapshotMissing(f"no snapshot after waiting {wait_s:.0f}s for another "
                          "process to rebuild it")


def publish_saved(engine: Engine, store: SnapshotStore, user: User, revision: int) -> None:
    """Publish a user as saved at ``revision``: with nothing to receive if their Fedora
    account is locked or deleted, as :func:`publish_full` has them (:func:`receivable`).

    A save after the account was blocked must not bring the user's rules back; one
    before it has the lower revision, which the block's own publish supersedes
    (:func:`fmn.ownership.publish.publish_account_users`).
    """
    from fmn.ownership.store import is_blocked

    publish_user(store, user.name, None if is_blocked(engine, user.name) else user, revision)


def publish_user(store: SnapshotStore, name: str, user: User | None, revision: int) -> None:
    """Publish one user's preferences at ``revision``.

    ``None``: the user is gone; pass the database's change sequence after the
    deletion as the revision, so that an older change published late cannot
    bring them back.
    """
    entry = (compile_user(user, revision) if user is not None
             else {"rev": revision, "dests": {}, "rules": []})
    store.publish_user(name, entry)
