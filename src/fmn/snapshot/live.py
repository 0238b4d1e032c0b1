"""A snapshot kept in memory and kept current, for a long-lived matcher.

A warm Lambda (or the CLI's ``--watch``) holds one :class:`LiveSnapshot`.
Calling it returns the in-memory :class:`Snapshot`; at most every
``poll_interval`` seconds it first asks the store, in one round trip, whether
a new full snapshot exists (then it reloads everything) or which users changed
since the last change it applied (then it replaces only those users' parts).
With the default interval of 0.25 s, a preference change is picked up well
within a second, and a busy matcher pays one store round trip per interval,
not per message.

Two things it refuses to do: switch to a snapshot older than the one it
holds (a lagging replica's ``current``: it keeps its own and counts
``stale_current``), and fail forever when the store holds no snapshot at all
(Redis restarted empty): with a ``rebuild`` callable
(:func:`fmn.snapshot.sync.rebuild_if_missing` bound to the database), a
missing snapshot is rebuilt, by one process at a time, before loading.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable

from fmn.errors import FmnError
from fmn.snapshot.compiled import Snapshot
from fmn.snapshot.store import LOG_START, SnapshotMissing, SnapshotStore, is_newer

log = logging.getLogger(__name__)


class LiveSnapshot:
    def __init__(self, store: SnapshotStore, poll_interval: float = 0.25,
                 clock: Callable[[], float] = time.monotonic,
                 rebuild: Callable[[], object] | None = None) -> None:
        self.store = store
        #: publishes a snapshot when the store has none (None: wait for someone to)
        self.rebuild = rebuild
        self.poll_interval = poll_interval
        self.clock = clock
        self._snapshot: Snapshot | None = None
        self._position = LOG_START
        self._next_poll = 0.0
        #: how many full loads and per-user changes were applied (for metrics and tests)
        self.full_loads = 0
        self.changes_applied = 0
        self.bad_changes = 0
        self.poll_failures = 0
        #: polls that named an older snapshot than the one held (ignored)
        self.stale_current = 0
        #: rebuilds asked for because the store had no snapshot
        self.rebuilds = 0
        self._lock = threading.Lock()

    def __call__(self) -> Snapshot:
        now = self.clock()
        snapshot = self._snapshot
        if snapshot is not None and now < self._next_poll:
            return snapshot  # the common case: no lock, no I/O
        # One caller refreshes (invocations may run in threads, as under the
        # local runner); the others wait for it rather than apply changes twice.
        with self._lock:
            if self._snapshot is None:
                self._load(None)  # nothing to serve yet: a failure here is the caller's
                self._next_poll = now + self.poll_interval
            elif now >= self._next_poll:
                self._next_poll = now + self.poll_interval
                try:
                    self.refresh()
                except FmnError as exc:
                    # The store is away: keep matching on what we hold, retry at
                    # the next interval (not at every message).
                    self.poll_failures += 1
                    log.warning("snapshot store unavailable, matching on snapshot %s: %s",
                                self._snapshot.id, exc)
            assert self._snapshot is not None
            return self._snapshot

    def _rebuild(self) -> None:
        if self.rebuild is None:
            return
        self.rebuilds += 1
        log.warning("the snapshot store holds no snapshot: rebuilding it")
        self.rebuild()

    def _load(self, snapshot_id: str | None) -> None:
        started = time.perf_counter()
        try:
            fresh = self.store.load(snapshot_id)  # the old one serves until this succeeds
        except SnapshotMissing:
            if snapshot_id is not None or self.rebuild is None:
                raise
            self._rebuild()
            fresh = self.store.load(None)
        # The previous snapshot (frozen below) must become collectable again.
        gc.unfreeze()
        self._snapshot = fresh
        del fresh
        # A snapshot is millions of objects that live until the next reload:
        # move them out of the cyclic GC's sight, or every full collection
        # rescans them in the middle of matching (the p99 spikes).
        gc.collect()
        gc.freeze()
        self._position = LOG_START
        self.full_loads += 1
        log.info("loaded snapshot %s (%d users) in %.2fs", self._snapshot.id,
                 len(self._snapshot.users), time.perf_counter() - started)
        # The blob is the state at publication; its log holds every change since.
        self.refresh()

    def refresh(self) -> None:
        """Ask the store now, whatever the interval."""
        if self._snapshot is None:
            self._load(None)
            return
        poll = self.store.poll(self._snapshot.id, self._position)
        if poll.current_id is None:
            # Our snapshot's log is gone with it: changes made now would be lost.
            self._rebuild()
            return
        if poll.current_id != self._snapshot.id:
            if is_newer(poll.current_id, self._snapshot.id):
                self._load(poll.current_id)
                return
            self.stale_current += 1
            log.warning("the store names snapshot %s, older than %s: keeping %s",
                        poll.current_id, self._snapshot.id, self._snapshot.id)
        for change in poll.changes:
            try:
                self._snapshot.apply_user(change.user, change.entry)
                self.changes_applied += 1
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                # A malformed entry (a writer's bug, a version skew) must not
                # block the log: skip it, loudly; the next full publish heals.
                self.bad_changes += 1
                log.error("skipping unusable change for user %r at %s: %r", change.user,
                          change.position, exc)
            self._position = change.position
        if poll.changes:
            log.info("applied %d user changes to snapshot %s", len(poll.changes),
                     self._snapshot.id)
