"""Where snapshots live, and how per-user changes reach the readers.

A store holds one *current* full snapshot (an immutable blob under its own id)
and, per snapshot, an append-only *change log* of user entries.  Writers:

* :meth:`SnapshotStore.publish` writes a new blob, then switches the current
  id to it in one atomic step: a reader sees the old snapshot or the new one,
  never half of one.
* :meth:`SnapshotStore.publish_user` appends one user's new entry (``None``:
  nothing of theirs can fire any more) to the current snapshot's change log.
* :meth:`SnapshotStore.publish_ownership` appends an ownership change (who
  owns which artifacts, who is in which group) to the same log.

Readers :meth:`SnapshotStore.load` a blob, then call :meth:`SnapshotStore.poll`
with the last change they applied (:data:`LOG_START` at first): one round
trip answers either "a new snapshot exists" or "here are the changes after
the one you saw".  :class:`MemorySnapshotStore` is the in-process fake;
:class:`RedisSnapshotStore` the real one (Redis or ElastiCache).
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from fmn.errors import SnapshotUnavailable
from fmn.snapshot.compiled import Snapshot, SnapshotData, UserEntry

#: An old blob stays readable this long after a newer one became current, so
#: that a reader that looked up the id just before the switch can finish.
OLD_SNAPSHOT_GRACE_S = 3600


#: The position before a change log's first entry (valid for every store).
LOG_START = "0"


@dataclass
class Change:
    """One user's new entry, or an ownership change, at a position in a snapshot's change log."""

    position: str
    user: str
    entry: UserEntry | None
    #: an ownership change (``{"owners": ..., "groups": ...}``) instead of a user's entry
    ownership: dict[str, Any] | None = None


@dataclass
class Poll:
    """What a reader learns from one poll."""

    current_id: str | None
    changes: list[Change] = field(default_factory=list)


class SnapshotStore(Protocol):
    def publish(self, data: SnapshotData) -> None: ...

    def publish_user(self, user: str, entry: UserEntry | None) -> None: ...

    def publish_ownership(self, change: dict[str, Any]) -> None: ...

    def current_id(self) -> str | None: ...

    def load(self, snapshot_id: str | None = None) -> Snapshot:
        """A full snapshot as published, indexed; its change log is read with :meth:`poll`."""
        ...

    def poll(self, snapshot_id: str, after: str) -> Poll: ...


def encode_blob(data: SnapshotData) -> bytes:
    # zlib level 1: a 100,000-user snapshot is mostly repeated keys, and a
    # cold Lambda reads the blob over the network.
    return zlib.compress(data.encode(), 1)


def snapshot_from_blob(blob: bytes) -> Snapshot:
    return Snapshot.from_document(zlib.decompress(blob))


def _encode_change(user: str, entry: UserEntry | None) -> bytes:
    return orjson.dumps({"user": user, "entry": entry})


def _encode_ownership(change: dict[str, Any]) -> bytes:
    return orjson.dumps({"ownership": change})


def _decode_change(position: str, raw: bytes) -> Change:
    doc = orjson.loads(raw)
    if "ownership" in doc:
        return Change(position=position, user="", entry=None, ownership=doc["ownership"])
    return Change(position=position, user=doc["user"], entry=doc["entry"])


class MemorySnapshotStore:
    """An in-process store with the same behaviour, for unit tests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._blobs: dict[str, bytes] = {}
        self._logs: dict[str, list[bytes]] = {}
        self._current: str | None = None

    def publish(self, data: SnapshotData) -> None:
        blob = encode_blob(data)
        with self._lock:
            self._blobs[data.id] = blob
            self._logs[data.id] = []
            self._current = data.id

    def publish_user(self, user: str, entry: UserEntry | None) -> None:
        with self._lock:
            if self._current is None:
                raise SnapshotUnavailable("no snapshot to change: publish one first")
            self._logs[self._current].append(_encode_change(user, entry))

    def publish_ownership(self, change: dict[str, Any]) -> None:
        with self._lock:
            if self._current is None:
                raise SnapshotUnavailable("no snapshot to change: publish one first")
            self._logs[self._current].append(_encode_ownership(change))

    def current_id(self) -> str | None:
        return self._current

    def load(self, snapshot_id: str | None = None) -> Snapshot:
        with self._lock:
            sid = snapshot_id or self._current
            if sid is None or sid not in self._blobs:
                raise SnapshotUnavailable(f"no snapshot {sid!r} in the store")
            blob = self._blobs[sid]
        return snapshot_from_blob(blob)

    def poll(self, snapshot_id: str, after: str) -> Poll:
        with self._lock:
            log = self._logs.get(snapshot_id, [])
            start = int(after)
            return Poll(self._current, [_decode_change(str(i + 1), raw)
                                        for i, raw in enumerate(log[start:], start)])


# Appends to the change log of whatever snapshot is current at that instant,
# so a change can never land in the log of a snapshot being replaced.
_PUBLISH_USER = """
local current = redis.call('GET', KEYS[1])
if not current then return false end
redis.call('XADD', KEYS[2] .. current .. ':changes', '*', 'c', ARGV[1])
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

    Keys, under ``prefix`` (default ``fmn:snapshot:``): ``current`` (the id),
    ``<id>`` (the zlib-compressed blob), ``<id>:changes`` (a stream whose
    entries carry one field ``c``, a JSON ``{"user", "entry"}``).
    """

    def __init__(self, client: Any, prefix: str = "fmn:snapshot:") -> None:
        self.client = client
        self.prefix = prefix
        self._publish_user = client.register_script(_PUBLISH_USER)

    @classmethod
    def from_url(cls, url: str, prefix: str = "fmn:snapshot:") -> RedisSnapshotStore:
        import redis

        return cls(redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5),
                   prefix)

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def publish(self, data: SnapshotData) -> None:
        import redis

        blob = encode_blob(data)
        current = self._key("current")
        with _redis_errors("publish a snapshot"), self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    # WATCH: two publishers racing must not leave an old blob
                    # without its expiry
                    pipe.watch(current)
                    old = pipe.get(current)
                    old = old.decode() if isinstance(old, bytes) else old
                    pipe.multi()
                    pipe.set(self._key(data.id), blob)
                    pipe.set(current, data.id)
                    if old is not None and old != data.id:
                        pipe.expire(self._key(old), OLD_SNAPSHOT_GRACE_S)
                        pipe.expire(self._key(old, "changes"), OLD_SNAPSHOT_GRACE_S)
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue

    def publish_user(self, user: str, entry: UserEntry | None) -> None:
        with _redis_errors("publish a change"):
            current = self._publish_user(keys=[self._key("current"), self.prefix],
                                         args=[_encode_change(user, entry)])
        if not current:
            raise SnapshotUnavailable("no snapshot to change: publish one first")

    def publish_ownership(self, change: dict[str, Any]) -> None:
        with _redis_errors("publish an ownership change"):
            current = self._publish_user(keys=[self._key("current"), self.prefix],
                                         args=[_encode_ownership(change)])
        if not current:
            raise SnapshotUnavailable("no snapshot to change: publish one first")

    def current_id(self) -> str | None:
        with _redis_errors("read the current snapshot id"):
            value = self.client.get(self._key("current"))
        return value.decode() if isinstance(value, bytes) else value

    def load(self, snapshot_id: str | None = None) -> Snapshot:
        sid = snapshot_id or self.current_id()
        if sid is None:
            raise SnapshotUnavailable("no current snapshot in Redis")
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
