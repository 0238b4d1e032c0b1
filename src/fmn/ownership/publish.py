"""Sending ownership and account changes to the snapshot's change log.

An ownership change (who owns which artifact, who is in which group) is one
log entry per 2,000 changed artifacts or groups: owners live in the
snapshot's shared tables, looked up per message, so no user's entry has to be
rebuilt for them.  An account that became locked, deleted or usable again
changes that user's own entry: it goes through the per-user path
(:func:`fmn.snapshot.sync.publish_user`) at the revision the database gave it.

A store that is away does not undo what the database already holds: the
failure is logged and the next full publish (``fmn snapshot publish``, or the
scheduled one of ``functions/snapshot``) carries the change.  The ownership
reconcile does not: it compares the sources with the database, which already
has the change.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Engine

from fmn import db
from fmn.errors import FmnError
from fmn.ownership import store as ostore
from fmn.ownership.data import Account
from fmn.ownership.diff import OwnershipDelta

log = logging.getLogger(__name__)


def publish_delta(store: Any, delta: OwnershipDelta) -> int:
    """Append ``delta`` to the current snapshot's log; the number of entries appended."""
    if store is None or not delta:
        return 0
    done = 0
    try:
        for change in delta.changes():
            store.publish_ownership(change)
            done += 1
    except FmnError as exc:
        log.error("ownership saved but not published (%d of its changes were): %s", done, exc)
    return done


def publish_account_users(engine: Engine, store: Any, revisions: dict[str, int]) -> int:
    """Publish the users whose account became blocked or usable, at their new revision."""
    from fmn.snapshot.sync import publish_user

    if store is None or not revisions:
        return 0
    blocked = ostore.blocked_users(engine)
    done = 0
    try:
        for name, revision in sorted(revisions.items()):
            user = None if name in blocked else db.load_user(engine, name)
            publish_user(store, name, user, revision)
            done += 1
    except FmnError as exc:
        log.error("accounts saved but %d users not published: %s", len(revisions) - done, exc)
    return done


def publish_accounts(engine: Engine, store: Any, accounts: Iterable[Account]) -> int:
    """Store ``accounts``; publish the users whose account changed state."""
    _, revisions = ostore.apply_accounts(engine, accounts)
    return publish_account_users(engine, store, revisions)
