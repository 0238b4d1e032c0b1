"""The message window: the most recent bus messages, kept for rule previews.

The match function appends every message it matches (:func:`record_many`,
one store round trip per batch); the web API's preview index reads the window
back (:meth:`WindowStore.read`) and then only what was appended since.  The
window keeps at most ``max_count`` messages (default 100,000) and none older
than ``max_age_s`` (default 7 days, by the time it was appended).

An entry holds only what a preview needs, compactly: a JSON array of the
:class:`~fmn.message.Message` fields that matching reads and a preview shows
(``groups`` is left out: no rule looks at it), and the message body,
zlib-compressed, for the ``fields`` filter.  A body larger than
:data:`MAX_BODY_BYTES` compressed is left out; a ``fields`` filter cannot be
decided on that message, and a preview says how many it met.

Positions are Redis stream ids (``<milliseconds>-<sequence>``), also in the
in-memory fake, so the age of an entry is read from its position.
:class:`MemoryWindowStore` is the in-process fake; :class:`RedisWindowStore`
the real one, a Redis stream trimmed with ``MAXLEN ~`` and ``MINID ~``.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from fmn.errors import RetryableError
from fmn.message import Message

#: Encoding version of an entry's metadata array (its first item).
ENTRY_VERSION = 1
DEFAULT_MAX_COUNT = 100_000
DEFAULT_MAX_AGE_S = 7 * 24 * 3600
#: A compressed body larger than this is not kept (a ``fields`` filter is then
#: undecidable on that message).
MAX_BODY_BYTES = 64 * 1024
#: Summaries and URLs are for display; longer ones are cut.
MAX_TEXT_CHARS = 1024
#: Entries per read round trip.
READ_CHUNK = 10_000
#: The position before the first entry.
START = "0-0"


class WindowUnavailable(RetryableError):
    """The window's store (Redis) failed; recording or loading may succeed later."""


@dataclass(frozen=True, slots=True)
class WindowEntry:
    """One encoded entry: its metadata array and its compressed body (or ``None``)."""

    meta: bytes
    body: bytes | None


def _text(value: str | None) -> str | None:
    return value[:MAX_TEXT_CHARS] if value is not None else None


def encode(message: Message) -> WindowEntry:
    """A message as a window entry."""
    meta = orjson.dumps([
        ENTRY_VERSION, message.id, message.topic, message.app_name, message.agent_name,
        sorted(message.usernames), sorted(message.rpms), sorted(message.containers),
        sorted(message.modules), sorted(message.flatpaks), message.severity,
        _text(message.summary), _text(message.url), message.sent_at,
    ])
    body: bytes | None
    try:
        body = zlib.compress(orjson.dumps(message.body), 1)
    except (orjson.JSONEncodeError, TypeError):  # e.g. an integer beyond 64 bits
        body = None
    if body is not None and len(body) > MAX_BODY_BYTES:
        body = None
    return WindowEntry(meta, body)


def decode_meta(meta: bytes) -> list[Any]:
    """An entry's metadata array (see :func:`encode`); ``ValueError`` if it is not one."""
    doc = orjson.loads(meta)
    if not isinstance(doc, list) or len(doc) < 14 or doc[0] != ENTRY_VERSION:
        raise ValueError(f"not a version {ENTRY_VERSION} window entry")
    return doc


def decode_body(body: bytes) -> Any:
    return orjson.loads(zlib.decompress(body))


def position_ms(position: str) -> int:
    """The milliseconds part of a position (when the entry was appended)."""
    return int(position.partition("-")[0])


def _after(position: str) -> tuple[int, int]:
    ms, _, seq = position.partition("-")
    return int(ms), int(seq or 0)


class WindowStore(Protocol):
    """Where the window lives."""

    def append(self, entries: Sequence[WindowEntry]) -> None:
        """Append entries (one round trip) and trim the window by count and age."""
        ...

    def read(self, after: str, count: int) -> list[tuple[str, WindowEntry]]:
        """Up to ``count`` entries after position ``after``, oldest first."""
        ...


def record(store: WindowStore, message: Message) -> None:
    """Append one matched message to the window."""
    store.append([encode(message)])


def record_many(store: WindowStore, messages: Iterable[Message]) -> None:
    """Append a batch of matched messages in one round trip."""
    entries = [encode(m) for m in messages]
    if entries:
        store.append(entries)


def read_all(store: WindowStore, after: str = START,
             chunk: int = READ_CHUNK) -> Iterator[tuple[str, WindowEntry]]:
    """Every entry after ``after``, oldest first, read ``chunk`` at a time."""
    while True:
        got = store.read(after, chunk)
        yield from got
        if len(got) < chunk:
            return
        after = got[-1][0]


class MemoryWindowStore:
    """An in-process window with the same behaviour (exact trimming), for tests."""

    def __init__(self, max_count: int = DEFAULT_MAX_COUNT, max_age_s: float = DEFAULT_MAX_AGE_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.max_count = max_count
        self.max_age_s = max_age_s
        self.clock = clock
        self._lock = threading.Lock()
        self._entries: list[tuple[tuple[int, int], str, WindowEntry]] = []
        self._last = (0, 0)

    def append(self, entries: Sequence[WindowEntry]) -> None:
        with self._lock:
            ms = int(self.clock() * 1000)
            for entry in entries:
                pos = (ms, 0) if ms > self._last[0] else (self._last[0], self._last[1] + 1)
                self._last = pos
                self._entries.append((pos, f"{pos[0]}-{pos[1]}", entry))
            cutoff = ms - int(self.max_age_s * 1000)
            drop = max(0, len(self._entries) - self.max_count)
            while drop < len(self._entries) and self._entries[drop][0][0] < cutoff:
                drop += 1
            del self._entries[:drop]

    def read(self, after: str, count: int) -> list[tuple[str, WindowEntry]]:
        key = _after(after)
        with self._lock:
            return [(p, e) for k, p, e in self._entries if k > key][:count]

    def __len__(self) -> int:
        return len(self._entries)


@contextmanager
def _redis_errors(action: str) -> Iterator[None]:
    import redis

    try:
        yield
    except redis.RedisError as exc:
        raise WindowUnavailable(f"Redis failed to {action}: {exc}") from exc


def window_key(queue_prefix: str) -> str:
    """The window's Redis key for a stage (stages may share one Redis, as queues do)."""
    return f"fmn:preview:{queue_prefix}window"


class RedisWindowStore:
    """The window as a Redis stream (key ``fmn:preview:window`` by default).

    Each entry has a field ``m`` (the metadata array) and, when kept, ``b``
    (the compressed body).  :meth:`append` sends, in one pipeline, one
    ``XADD ... MAXLEN ~ max_count`` per entry and one ``XTRIM ... MINID ~``
    for the age: Redis trims whole stream nodes, so the stream may keep a few
    more entries than the caps; readers apply the caps exactly.
    """

    def __init__(self, client: Any, key: str = "fmn:preview:window",
                 max_count: int = DEFAULT_MAX_COUNT, max_age_s: float = DEFAULT_MAX_AGE_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.key = key
        self.max_count = max_count
        self.max_age_s = max_age_s
        self.clock = clock

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisWindowStore:
        from fmn.redisconn import connect

        return cls(connect(url, socket_timeout=10, socket_connect_timeout=5),
                   **kwargs)

    def append(self, entries: Sequence[WindowEntry]) -> None:
        cutoff = int((self.clock() - self.max_age_s) * 1000)
        with _redis_errors("append to the preview window"), \
                self.client.pipeline(transaction=False) as pipe:
            for entry in entries:
                fields = {"m": entry.meta} if entry.body is None else {"m": entry.meta,
                                                                       "b": entry.body}
                pipe.xadd(self.key, fields, maxlen=self.max_count, approximate=True)
            pipe.xtrim(self.key, minid=f"{max(cutoff, 0)}-0", approximate=True)
            pipe.execute()

    def read(self, after: str, count: int) -> list[tuple[str, WindowEntry]]:
        with _redis_errors("read the preview window"):
            got = self.client.xrange(self.key, min=f"({after}", max="+", count=count)
        out = []
        for pos, fields in got:
            position = pos.decode() if isinstance(pos, bytes) else str(pos)
            out.append((position, WindowEntry(fields[b"m"], fields.get(b"b"))))
        return out
