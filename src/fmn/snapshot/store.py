"""Where snapshots live, and how per-user changes reach the readers.

A store holds one *current* full snapshot (an immutable blob under its own id)
and, per snapshot, an append-only *change log* of user entries.  Writers:

* :meth:`SnapshotStore.publish` writes a new blob, then switches the current
  id to it in one atomic step: a reader sees the old snapshot or the new one,
  never half of one.  It never goes backwards: a snapshot older than the
  current one (:func:`is_newer`: ids order snapshots by when they were
  compiled) is refused, and readers refuse to switch to one (a lagging
  replica answering with an older ``current``).
* :meth:`SnapshotStore.publish_user` appends one user's new entry (``None``:
  nothing of theirs can fire any more) to the current snapshot's change log.

Readers :meth:`SnapshotStore.load` a blob, then call :meth:`SnapshotStore.poll`
with the last change they applied (:data:`LOG_START` at first): one round
trip answers either "a new snapshot exists" or "here are the changes after
the one you saw".  :class:`MemorySnapshotStore` is the in-process fake;
:class:`RedisSnapshotStore` the real one (Redis or ElastiCache, a single
server or a cluster: every key of a store shares one hash tag).

A store with no current snapshot at all (Redis restarted without persistence)
raises :class:`SnapshotMissing`; :meth:`SnapshotStore.rebuild_lock` lets one
process rebuild it from the database while the others wait
(:func:`fmn.snapshot.sync.rebuild_if_missing`).
"""

from __future__ import annotations

import logging
import threading
import zlib
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from fmn.errors import SnapshotUnavailable
from fmn.snapshot.compiled import Snapshot, SnapshotData, UserEntry


class SnapshotMissing(SnapshotUnavailable):
    """The store answers but holds no current snapshot: one must be published."""


def snapshot_order(snapshot_id: str) -> tuple[str, str]:
    """What orders snapshot ids: the compile time before the random suffix, then the id.

    Ids are ``<UTC time>-<random>`` (:func:`fmn.snapshot.new_snapshot_id`); the
    time part is fixed-width digits, so comparing it as text compares times
    (an id with seconds only sorts before any with microseconds of that second).
    """
    when, _, _rest = snapshot_id.rpartition("-")
    return (when or snapshot_id, snapshot_id)


def is_newer(candidate: str, than: str | None) -> bool:
    """Whether ``candidate`` was compiled after ``than`` (anything is newer than nothing)."""
    return than is None or snapshot_order(candidate) > snapshot_order(than)

log = logging.getLogger(__name__)

#: An old blob stays readable this long after a newer one became current, so
#: that a reader that looked up the id just before the switch can finish.
OLD_SNAPSHOT_GRACE_S = 3600


#: The position before a change log's first entry (valid for every store).
LOG_START = "0"


@dataclass
class Change:
    """One user's new entry, at a position in a snapshot's change log."""

    position: str
    user: str
    entry: UserEntry | None


@dataclass
class Poll:
    """What a reader learns from one poll."""

    current_id: str | None
    changes: list[Change] = field(default_factory=list)


class SnapshotStore(Protocol):
    def publish(self, data: SnapshotData) -> bool:
        """Make ``data`` current; False (nothing written) if the current one is newer."""
        ...

    def publish_user(self, user: str, entry: UserEntry | None) -> None: ...

    def current_id(self) -> str | None: ...

    def load(self, snapshot_id: str | None = None) -> Snapshot:
        """A full snapshot as published, indexed; its change log is read with :meth:`poll`."""
        ...

    def poll(self, snapshot_id: str, after: str) -> Poll: ...

    def rebuild_lock(self, ttl_s: float) -> AbstractContextManager[bool]:
        """Try to become the one process rebuilding the snapshot: yields whether it did.

        Never blocks; the lock lapses after ``ttl_s`` if its holder dies.
        """
        ...


def encode_blob(data: SnapshotData) -> bytes:
    # zlib level 1: a 100,000-user snapshot is mostly repeated keys, and a
    # cold Lambda reads the blob over the network.
    return zlib.compress(data.encode(), 1)


def snapshot_from_blob(blob: bytes) -> Snapshot:
    return Snapshot.from_document(zlib.decompress(blob))


def _encode_change(user: str, entry: UserEntry | None) -> bytes:
    return orjson.dumps({"user": user, "entry": entry})


def _decode_change(position: str, raw: bytes) -> Change:
    doc = orjson.loads(raw)
    return Change(position=position, user=doc["user"], entry=doc["entry"])


class MemorySnapshotStore:
    """An in-process store with the same behaviour, for unit tests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._blobs: dict[str, bytes] = {}
        self._logs: dict[str, list[bytes]] = {}
        self._current: str | None = None
        self._rebuilding = threading.Lock()

    def publish(self, data: SnapshotData) -> bool:
        blob = encode_blob(data)
        with self._lock:
            if not is_newer(data.id, self._current):
                return False
            self._blobs[data.id] = blob
            self._logs[data.id] = []
            self._current = data.id
            return True

    def clear(self) -> None:
        """Forget everything, as a Redis restarted without persistence does."""
        with self._lock:
            self._blobs.clear()
            self._logs.clear()
            self._current = None

    @contextmanager
    def rebuild_lock(self, ttl_s: float) -> Iterator[bool]:
        mine = self._rebuilding.acquire(blocking=False)
        try:
            yield mine
        finally:
            if mine:
                self._rebuilding.release()

    def publish_user(self, user: str, entry: UserEntry | None) -> None:
        with self._lock:
            if self._current is None:
                raise SnapshotMissing("no snapshot to change: publish one first")
            self._logs[self._current].append(_encode_change(user, entry))

    def current_id(self) -> str | None:
        return self._current

    def load(self, snapshot_id: str | None = None) -> Snapshot:
        with self._lock:
            sid = snapshot_id or self._current
            if sid is None:
                raise SnapshotMissing("no current snapshot in the store")
            if sid not in self._blobs:
                raise SnapshotUnavailable(f"no snapshot {sid!r} in the store")
            blob = self._blobs[sid]
        return snapshot_from_blob(blob)

    def poll(self, snapshot_id: str, after: str) -> Poll:
        with self._lock:
            changes = self._logs.get(snapshot_id, [])
            start = int(after)
            return Poll(self._current, [_decode_change(str(i + 1), raw)
                                        for i, raw in enumerate(changes[start:], start)])


# Appends to the change log of the snapshot the caller read as current, if it
# still is at that instant, so a change can never land in the log of a
# snapshot being replaced.  Answers the current id (the caller retries when it
# differs from the one it passed); every key is declared, as a cluster wants.
_PUBLISH_USER = """
local current = redis.call('GET', KEYS[1])
if not current then return false end
if current ~= ARGV[1] then return current end
redis.call('XADD', KEYS[2], '*', 'c', ARGV[2])
return current
"""


@contextmanager
def _redis_errors(action: str) -> Iterator[None]:
    """Redis' own errors, as the project's retryable one."""
    import redis

    try:
        yield
    except redis.RedisError as exc:
        raise SnapshotUnavailable(f"Redis failed to {action}: {exc}") from exc


class RedisSnapshotStore:
    """The store on Redis (ElastiCache in AWS).

    Keys, under ``prefix`` made a hash tag (default ``fmn:snapshot:``, so
    ``{fmn:snapshot:}``): ``current`` (the id), ``<id>`` (the zlib-compressed
    blob), ``<id>:changes`` (a stream whose entries carry one field ``c``, a
    JSON ``{"user", "entry"}``), ``rebuild-lock``.  One tag, one slot: the
    publish transaction and the change script work on a cluster too.
    """

    def __init__(self, client: Any, prefix: str = "fmn:snapshot:") -> None:
        from fmn.redisconn import hash_tagged

        self.client = client
        self.prefix = hash_tagged(prefix)
        self._publish_user = client.register_script(_PUBLISH_USER)

    @classmethod
    def from_url(cls, url: str, prefix: str = "fmn:snapshot:") -> RedisSnapshotStore:
        from fmn.redisconn import connect

        return cls(connect(url, socket_timeout=10, socket_connect_timeout=5),
                   prefix)

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def publish(self, data: SnapshotData) -> bool:
        import redis

        blob = encode_blob(data)
        current = self._key("current")
        with _redis_errors("publish a snapshot"), self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    # WATCH: two publishers racing must not leave an old blob
                    # without its expiry, nor a newer snapshot replaced by an older
                    pipe.watch(current)
                    old = pipe.get(current)
                    old = old.decode() if isinstance(old, bytes) else old
                    if not is_newer(data.id, old):
                        pipe.unwatch()
                        return False
                    pipe.multi()
                    pipe.set(self._key(data.id), blob)
                    pipe.set(current, data.id)
                    if old is not None and old != data.id:
                        pipe.expire(self._key(old), OLD_SNAPSHOT_GRACE_S)
                        pipe.expire(self._key(old, "changes"), OLD_SNAPSHOT_GRACE_S)
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue

    def publish_user(self, user: str, entry: UserEntry | None) -> None:
        change = _encode_change(user, entry)
        sid = self.current_id()
        for _ in range(10):  # a full publish switching meanwhile: use the new one
            if sid is None:
                raise SnapshotMissing("no snapshot to change: publish one first")
            with _redis_errors("publish a change"):
                found = self._publish_user(keys=[self._key("current"),
                                                 self._key(sid, "changes")],
                                           args=[sid, change])
            found = found.decode() if isinstance(found, bytes) else found
            if found == sid:
                return
            sid = found or None
        raise SnapshotUnavailable("the current snapshot keeps changing: change not published")

    @contextmanager
    def rebuild_lock(self, ttl_s: float) -> Iterator[bool]:
        import redis.exceptions

        lock = self.client.lock(self._key("rebuild-lock"), timeout=ttl_s, blocking=False)
        with _redis_errors("take the rebuild lock"):
            mine = bool(lock.acquire(blocking=False))
        try:
            yield mine
        finally:
            if mine:
                try:
                    lock.release()
                except redis.exceptions.LockError:
                    pass  # it lapsed: the rebuild outlived its ttl
                except redis.RedisError as exc:
                    log.warning("could not release the snapshot rebuild lock: %s", exc)

    def current_id(self) -> str | None:
        with _redis_errors("read the current snapshot id"):
            value = self.client.get(self._key("current"))
        return value.decode() if isinstance(value, bytes) else value

    def load(self, snapshot_id: str | None = None) -> Snapshot:
        sid = snapshot_id or self.current_id()
        if sid is None:
            raise SnapshotMissing("no current snapshot in Redis")
        with _redis_errors("read a snapshot"):
            blob = self.client.get(self._key(sid))
        if blob is None:
            raise SnapshotUnavailable(f"snapshot {sid!r} is not in Redis")
        return snapshot_from_blob(blob)

    def poll(self, snapshot_id: str, after: str) -> Poll:
        with _redis_errors("poll for changes"), self.client.pipeline(transaction=False) as pipe:
            pipe.get(self._key("current"))
            pipe.xrange(self._key(snapshot_id, "changes"),
                        min="-" if after == LOG_START else f"({after}")
            current, entries = pipe.execute()
        current_id = current.decode() if isinstance(current, bytes) else current
        return Poll(current_id, [_decode_change(pos.decode(), fields[b"c"])
                                 for pos, fields in entries])
