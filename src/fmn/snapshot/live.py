"""A snapshot kept in memory and kept current, for a long-lived matcher.

A warm Lambda (or the CLI's ``--watch``) holds one :class:`LiveSnapshot`.
Calling it returns the in-memory :class:`Snapshot`; at most every
``poll_interval`` seconds it first asks the store, in one round trip, whether
a new full snapshot exists (then it reloads everything) or which users changed
since the last change it applied (then it replaces only those users' parts).
With the default interval of 0.25 s, a preference change is picked up well
within a second, and a busy matcher pays one store round trip per interval,
not per message.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable

from fmn.snapshot.compiled import Snapshot
from fmn.snapshot.store import LOG_START, SnapshotStore

log = logging.getLogger(__name__)


class LiveSnapshot:
    def __init__(self, store: SnapshotStore, poll_interval: float = 0.25,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.poll_interval = poll_interval
        self.clock = clock
        self._snapshot: Snapshot | None = None
        self._position = LOG_START
        self._next_poll = 0.0
        #: how many full loads and per-user changes were applied (for metrics and tests)
        self.full_loads = 0
        self.changes_applied = 0

    def __call__(self) -> Snapshot:
        now = self.clock()
        if self._snapshot is None:
            self._load(None)
            self._next_poll = now + self.poll_interval
        elif now >= self._next_poll:
            self.refresh()
            self._next_poll = now + self.poll_interval
        assert self._snapshot is not None
        return self._snapshot

    def _load(self, snapshot_id: str | None) -> None:
        started = time.perf_counter()
        # The previous snapshot (frozen below) must become collectable again.
        gc.unfreeze()
        self._snapshot = None
        self._snapshot = self.store.load(snapshot_id)
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
        if poll.current_id is not None and poll.current_id != self._snapshot.id:
            self._load(poll.current_id)
            return
        for change in poll.changes:
            self._snapshot.apply_user(change.user, change.entry)
            self._position = change.position
            self.changes_applied += 1
        if poll.changes:
            log.info("applied %d user changes to snapshot %s", len(poll.changes),
                     self._snapshot.id)
