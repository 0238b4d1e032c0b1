"""The live feed: each user's recent notifications in a bounded stream, and their SSE frames.

Writers :meth:`FeedStore.append` one event (:func:`event_data`: one line of
JSON, version :data:`EVENT_VERSION`) to the user's stream.  The store gives
it an id ``<milliseconds>-<sequence>`` that only grows, and keeps at most
``maxlen`` events, none older than ``max_age_s`` (a stream nobody appends to
disappears ``max_age_s`` after its last event).  Readers ask for the
``latest`` events, or for the events strictly ``after`` an id (the SSE
``Last-Event-ID``), optionally waiting for one to arrive; a reader that was
away longer than the feed keeps gets what is still kept, and
:meth:`FeedStore.missed_after` tells it so (the endpoint then sends a
:func:`gap_frame` first): its position is older than the oldest event kept
and the feed has dropped events (by length or age).

:class:`RedisFeed` (appends and reads, blocking) and :class:`AsyncRedisFeed`
(reads for the asyncio server) keep one Redis stream per user under a key
prefix (default ``fmn:feed:<user>``).  :class:`MemoryFeed` is the in-process
fake, with an async view (:meth:`MemoryFeed.reader`).  Redis failures raise
:class:`~fmn.errors.RetryableError`; a malformed event id
:class:`InvalidEventId` (a :class:`~fmn.errors.PermanentError`).

The event's content is untrusted (it comes from the bus): it travels as JSON
strings, so CR, LF, ESC and every other control character are escaped, and
so are U+0085, U+2028 and U+2029, which some line readers split on.  A
frame's ``id:`` and ``event:`` fields are only ever a store id (validated)
and a fixed event name, so nothing from a message can start a field of its
own (:func:`sse_frame`).  Escaping for HTML is the page's job: the web UI
inserts the text as text.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from fmn.delivery.base import Delivery
from fmn.delivery.text import clean, shorten
from fmn.errors import PermanentError, RetryableError
from fmn.pipeline.notifications import MAX_NAME_CHARS, MAX_NAMES, hashed_id

#: Version of the event JSON (the ``v`` key); readers ignore keys they do not know.
EVENT_VERSION = 1
DEFAULT_PREFIX = "fmn:feed:"
#: The SSE event name of a notification (``event: notification``).
EVENT_NAME = "notification"
#: The position before any event: reading after it gives the whole feed.
START = "0-0"
SEVERITIES = frozenset({"DEBUG", "INFO", "WARNING", "ERROR"})
#: The most characters of an event's summary, topic and names: shown in a list and a
#: desktop notification (a feed keeps 1000 events a person, so each counts).
MAX_SUMMARY_CHARS = 1000
#: The longest link an event carries (a longer one is left out, not cut)
MAX_URL_CHARS = 2048
#: The one field of a stream entry: the event JSON.
ENTRY_FIELD = "d"
_EVENT_ID = re.compile(r"\A([0-9]{1,20})-([0-9]{1,20})\Z")  # not \d: no other digits
_SURROGATES = re.compile("[\ud800-\udfff]")
_LINE_BREAKS = re.compile(r"\r\n|\r|\n")
#: what the event JSON escapes as six bytes for one character, and lone surrogates
_ESCAPED = re.compile("[\x00-\x1f\u0085\u2028\u2029\ud800-\udfff]")
_UINT64_MAX = 2**64 - 1

Clock = Callable[[], float]


class InvalidEventId(PermanentError):
    """Not an event id of a feed (``<milliseconds>-<sequence>``)."""


@dataclass(frozen=True, slots=True)
class FeedEvent:
    #: the store's id, ``<milliseconds>-<sequence>``: the SSE event id
    id: str
    #: the event JSON, one line (:func:`event_data`)
    data: str


def parse_event_id(value: str) -> tuple[int, int]:
    """``(milliseconds, sequence)`` of an event id; :class:`InvalidEventId` otherwise."""
    found = _EVENT_ID.match(value)
    if found is None:
        raise InvalidEventId(f"not a feed event id: {value[:60]!r}")
    ms, seq = int(found.group(1)), int(found.group(2))
    if ms > _UINT64_MAX or seq > _UINT64_MAX:
        raise InvalidEventId(f"feed event id out of range: {value[:60]!r}")
    return ms, seq


# -- the event and its frame (pure) ---------------------------------------------


def _text(value: Any, limit: int) -> str | None:
    if not isinstance(value, str):
        return None
    return _SURROGATES.sub("\ufffd", value[:limit])


def feed_message_id(message_id: Any) -> str | None:
    """The message id an event carries: the payload's id when it is short and plain (as
    Fedora's are), else what ``clean`` leaves of its start and a hash of the whole.
    An id is the publisher's choice: 10,000 U+2028s are 60 kB once JSON-escaped."""
    if not isinstance(message_id, str):
        return None
    if len(message_id) <= MAX_NAME_CHARS and not _ESCAPED.search(message_id):
        return message_id
    return hashed_id(clean(message_id), message_id, MAX_NAME_CHARS)


def _shown(value: Any, limit: int) -> str | None:
    """Bus text a person reads (in the page, in a desktop notification): cleaned as mail
    and IRC are (no bidi overrides, escapes or control characters), and capped."""
    if not isinstance(value, str):
        return None
    return shorten(clean(value), limit)


def _url(value: Any) -> str | None:
    # A feed entry's link is clicked in a browser: only web addresses, never
    # javascript: or data: URLs; one that cleaning would change, or too long, is
    # left out rather than altered into another address.
    if not isinstance(value, str) or len(value) > MAX_URL_CHARS or clean(value) != value \
            or not value.lower().startswith(("https://", "http://")):
        return None
    return value


def _names(values: tuple[str, ...]) -> list[str]:
    return [_text(v, MAX_NAME_CHARS) or "" for v in values[:MAX_NAMES]]


def encode_event(doc: Mapping[str, Any]) -> str:
    """One line of JSON: control characters and the Unicode line separators escaped."""
    # orjson escapes U+0000..U+001F; these three are legal raw in JSON but
    # some line readers (and old JavaScript string literals) break on them.
    return (orjson.dumps(doc).decode()
            .replace("\u0085", "\\u0085").replace("\u2028", "\\u2028")
            .replace("\u2029", "\\u2029"))


def message_fields(m: Mapping[str, Any]) -> dict[str, Any]:
    """What a page shows of a bus message (``id``, ``topic``, ``app``, ``agent``,
    ``summary``, ``url``, ``sent_at``, ``severity``), cleaned: the publisher wrote it."""
    severity = m.get("severity")
    return {
        "message_id": feed_message_id(m.get("id")),
        "topic": _shown(m.get("topic"), MAX_NAME_CHARS),
        "app": _shown(m.get("app"), MAX_NAME_CHARS),
        "agent": _shown(m.get("agent"), MAX_NAME_CHARS),
        "summary": _shown(m.get("summary"), MAX_SUMMARY_CHARS),
        "url": _url(m.get("url")),
        "sent_at": _shown(m.get("sent_at"), 64),
        "severity": severity if isinstance(severity, str) and severity in SEVERITIES else None,
    }


def event_data(item: Delivery, received_at: float) -> str:
    """The feed event of one notification (the JSON documented in functions/sse/README.md)."""
    return encode_event({
        "v": EVENT_VERSION,
        **message_fields(item.message),
        "rules": _names(item.rules),
        "rule_names": _names(item.rule_names),
        "received_at": datetime.fromtimestamp(received_at, UTC)
        .isoformat(timespec="milliseconds"),
    })


def sse_frame(event: FeedEvent, name: str = EVENT_NAME) -> bytes:
    """One Server-Sent Events frame: ``id:``, ``event:``, ``data:`` lines and a blank line.

    The id must be a store id and the name a plain word (both are ours);
    data that somehow holds line breaks becomes several ``data:`` lines,
    which a client joins back, so it can never start another field.
    """
    parse_event_id(event.id)
    if not re.fullmatch(r"[a-z][a-z0-9_-]{0,31}", name):
        raise ValueError(f"not an SSE event name: {name[:40]!r}")
    data = "".join(f"data: {line}\n" for line in _LINE_BREAKS.split(event.data))
    return f"id: {event.id}\nevent: {name}\n{data}\n".encode()


def cursor_frame(event_id: str) -> bytes:
    """A frame with an id and no data: the client's reconnection point, no event fired.

    EventSource sets its last event id from every frame it dispatches, even
    one without data, which it then drops; so after this frame a reconnect
    asks for what came after ``event_id``, even if no event arrived before it.
    """
    parse_event_id(event_id)
    return f"id: {event_id}\n\n".encode()


#: The SSE event name of the gap marker (``event: gap``).
GAP_EVENT = "gap"


def gap_frame(last_id: str) -> bytes:
    """The marker a client resuming past the feed's trim gets before the events kept:
    events after ``last_id`` may have been dropped (the web UI's recent-notifications
    page has them).  No ``id:``: the client's position does not move."""
    parse_event_id(last_id)
    data = orjson.dumps({"v": EVENT_VERSION, "after": last_id}).decode()
    return f"event: {GAP_EVENT}\ndata: {data}\n\n".encode()


#: The SSE event name of the caught-up marker (``event: live``).
LIVE_EVENT = "live"


def live_frame(position: str) -> bytes:
    """The marker after what the feed already held when the client connected (the
    replayed history, or what it missed while away): every event after it is new.
    The web UI shows desktop notifications only for those, without comparing clocks.
    No ``id:``: the client's position does not move."""
    parse_event_id(position)
    data = orjson.dumps({"v": EVENT_VERSION, "after": position}).decode()
    return f"event: {LIVE_EVENT}\ndata: {data}\n\n".encode()


def missed(last_id: str, first_kept: str | None, dropped: bool) -> bool:
    """Whether a client at ``last_id`` may have missed events the feed dropped."""
    last = parse_event_id(last_id)
    return (dropped and first_kept is not None and last != (0, 0)
            and last < parse_event_id(first_kept))


def retry_frame(retry_ms: int) -> bytes:
    """A frame telling the client how long to wait before reconnecting."""
    return f"retry: {int(retry_ms)}\n\n".encode()


# -- the ports -------------------------------------------------------------------


class FeedStore(Protocol):
    """Each user's bounded feed (synchronous: the SQS function and tests)."""

    def append(self, user: str, data: str) -> str:
        """Add one event (:func:`event_data`) to the user's feed; its new id."""
        ...

    def latest(self, user: str, count: int) -> list[FeedEvent]:
        """The user's last ``count`` events, oldest first."""
        ...

    def after(self, user: str, last_id: str, count: int,
              block_s: float | None = None) -> list[FeedEvent]:
        """Up to ``count`` events after ``last_id`` (exclusive), oldest first.

        With ``block_s``, waits up to that long for one when there are none yet.
        """
        ...

    def missed_after(self, user: str, last_id: str) -> bool:
        """Whether events after ``last_id`` may have been dropped (:func:`missed`)."""
        ...


class FeedReader(Protocol):
    """The reading half of a feed, for an asyncio server."""

    async def latest(self, user: str, count: int) -> list[FeedEvent]: ...

    async def after(self, user: str, last_id: str, count: int,
                    block_s: float | None = None) -> list[FeedEvent]: ...

    async def missed_after(self, user: str, last_id: str) -> bool: ...

    async def aclose(self) -> None: ...


# -- in memory -------------------------------------------------------------------


class MemoryFeed:
    """In-process :class:`FeedStore`: ids from ``clock``, trimmed like Redis on append."""

    def __init__(self, maxlen: int = 1000, max_age_s: float = 7 * 24 * 3600,
                 clock: Clock = time.time) -> None:
        self.maxlen = maxlen
        self.max_age_s = max_age_s
        self.clock = clock
        self.streams: dict[str, list[FeedEvent]] = {}
        #: events ever appended per user (with the streams' lengths: what was dropped)
        self.added: dict[str, int] = {}
        self._last = (0, 0)
        self._changed = threading.Condition()

    def append(self, user: str, data: str) -> str:
        with self._changed:
            ms = int(self.clock() * 1000)
            last_ms, last_seq = self._last
            self._last = (ms, 0) if ms > last_ms else (last_ms, last_seq + 1)
            event = FeedEvent(f"{self._last[0]}-{self._last[1]}", data)
            cutoff = int((self.clock() - self.max_age_s) * 1000)
            kept = [e for e in self.streams.get(user, []) if parse_event_id(e.id)[0] >= cutoff]
            self.streams[user] = (kept + [event])[-self.maxlen:]
            self.added[user] = self.added.get(user, 0) + 1
            self._changed.notify_all()
            return event.id

    def latest(self, user: str, count: int) -> list[FeedEvent]:
        with self._changed:
            return list(self.streams.get(user, [])[-count:]) if count > 0 else []

    def _after(self, user: str, last: tuple[int, int], count: int) -> list[FeedEvent]:
        events = [e for e in self.streams.get(user, []) if parse_event_id(e.id) > last]
        return events[:count]

    def after(self, user: str, last_id: str, count: int,
              block_s: float | None = None) -> list[FeedEvent]:
        last = parse_event_id(last_id)
        deadline = time.monotonic() + (block_s or 0)
        with self._changed:
            while True:
                found = self._after(user, last, count)
                left = deadline - time.monotonic()
                if found or left <= 0:
                    return found
                self._changed.wait(left)

    def missed_after(self, user: str, last_id: str) -> bool:
        with self._changed:
            events = self.streams.get(user, [])
            return missed(last_id, events[0].id if events else None,
                          self.added.get(user, 0) > len(events))

    def reader(self, poll_s: float = 0.02) -> MemoryFeedReader:
        """This feed as a :class:`FeedReader` (waits by polling every ``poll_s``)."""
        return MemoryFeedReader(self, poll_s)


class MemoryFeedReader:
    """:class:`FeedReader` over a :class:`MemoryFeed`."""

    def __init__(self, feed: MemoryFeed, poll_s: float) -> None:
        self.feed = feed
        self.poll_s = poll_s

    async def latest(self, user: str, count: int) -> list[FeedEvent]:
        return self.feed.latest(user, count)

    async def after(self, user: str, last_id: str, count: int,
                    block_s: float | None = None) -> list[FeedEvent]:
        deadline = time.monotonic() + (block_s or 0)
        while True:
            found = self.feed.after(user, last_id, count)
            if found or time.monotonic() >= deadline:
                return found
            await asyncio.sleep(self.poll_s)

    async def missed_after(self, user: str, last_id: str) -> bool:
        return self.feed.missed_after(user, last_id)

    async def aclose(self) -> None:
        return None


# -- Redis ------------------------------------------------------------------------


@contextmanager
def _redis_errors(doing: str) -> Iterator[None]:
    import redis

    try:
        yield
    except redis.RedisError as exc:
        raise RetryableError(f"feed store: cannot {doing}: {type(exc).__name__}: {exc}") \
            from exc


def _events(entries: Any) -> list[FeedEvent]:
    """``[(id, {field: value})]`` as Redis returns it (bytes) into events."""
    out = []
    for entry_id, fields in entries or ():
        data = fields.get(ENTRY_FIELD.encode(), b"")
        out.append(FeedEvent(entry_id.decode(), data.decode("utf-8", "replace")))
    return out


def _xread_events(reply: Any) -> list[FeedEvent]:
    # XREAD answers [[key, entries]] in RESP2 and {key: [entries]} in RESP3.
    if not reply:
        return []
    if isinstance(reply, dict):
        return [e for value in reply.values() for entries in value for e in _events(entries)]
    return [e for _key, entries in reply for e in _events(entries)]


def _missed(info: Any, last_id: str) -> bool:
    """:func:`missed` from ``XINFO STREAM`` (``None``: no stream)."""
    if not info:
        return False
    first = info.get("first-entry")
    first_id = first[0] if first else None
    if isinstance(first_id, bytes):
        first_id = first_id.decode()
    dropped = int(info.get("entries-added", 0)) > int(info.get("length", 0))
    return missed(last_id, first_id, dropped)


def _no_stream(exc: BaseException) -> bool:
    import redis

    return isinstance(exc, redis.ResponseError)  # XINFO on a missing key


def _block_ms(block_s: float | None) -> int | None:
    # XREAD BLOCK 0 waits forever: "no wait" is no BLOCK at all.
    if block_s is None or block_s <= 0:
        return None
    return max(1, int(block_s * 1000))


class RedisFeed:
    """:class:`FeedStore` on Redis streams, one per user (``XADD`` with exact trimming).

    Trimming is exact by default, so a feed never holds more than ``maxlen``
    events (removing one entry per append costs little at feed sizes);
    ``approximate=True`` trims whole stream nodes instead (``MAXLEN ~``),
    cheaper for very long feeds but keeping up to a node's worth more.
    """

    def __init__(self, client: Any, prefix: str = DEFAULT_PREFIX, maxlen: int = 1000,
                 max_age_s: int = 7 * 24 * 3600, *, approximate: bool = False,
                 clock: Clock = time.time) -> None:
        if maxlen < 1 or max_age_s < 1:
            raise ValueError("a feed keeps at least one event for at least one second")
        self.client = client
        self.prefix = prefix
        self.maxlen = maxlen
        self.max_age_s = max_age_s
        self.approximate = approximate
        self.clock = clock

    @classmethod
    def from_url(cls, url: str, prefix: str = DEFAULT_PREFIX, maxlen: int = 1000,
                 max_age_s: int = 7 * 24 * 3600, **kwargs: Any) -> RedisFeed:
        from fmn.redisconn import connect

        return cls(connect(url, socket_timeout=5, socket_connect_timeout=5),
                   prefix, maxlen, max_age_s, **kwargs)

    def key(self, user: str) -> str:
        return f"{self.prefix}{user}"

    def append(self, user: str, data: str) -> str:
        key = self.key(user)
        cutoff_ms = max(0, int((self.clock() - self.max_age_s) * 1000))
        # One transaction: the event, both caps and the expiry, or none of them.
        with _redis_errors("append to a feed"), self.client.pipeline(transaction=True) as pipe:
            pipe.xadd(key, {ENTRY_FIELD: data}, maxlen=self.maxlen, approximate=self.approximate)
            pipe.xtrim(key, minid=f"{cutoff_ms}-0", approximate=self.approximate)
            pipe.expire(key, self.max_age_s)
            new_id, _, _ = pipe.execute()
        return str(new_id.decode() if isinstance(new_id, bytes) else new_id)

    def latest(self, user: str, count: int) -> list[FeedEvent]:
        if count <= 0:
            return []
        with _redis_errors("read a feed"):
            entries = self.client.xrevrange(self.key(user), count=count)
        return _events(entries)[::-1]

    def after(self, user: str, last_id: str, count: int,
              block_s: float | None = None) -> list[FeedEvent]:
        parse_event_id(last_id)
        with _redis_errors("read a feed"):
            reply = self.client.xread({self.key(user): last_id}, count=count,
                                      block=_block_ms(block_s))
        return _xread_events(reply)

    def missed_after(self, user: str, last_id: str) -> bool:
        parse_event_id(last_id)
        try:
            with _redis_errors("read a feed"):
                info = self.client.xinfo_stream(self.key(user))
        except RetryableError as exc:
            if exc.__cause__ is not None and _no_stream(exc.__cause__):
                return False
            raise
        return _missed(info, last_id)


class AsyncRedisFeed:
    """:class:`FeedReader` on the same streams as :class:`RedisFeed` (``redis.asyncio``).

    The client's socket timeout must outlast the longest ``block_s``, or a
    quiet feed reads as a dead connection.
    """

    def __init__(self, client: Any, prefix: str = DEFAULT_PREFIX) -> None:
        self.client = client
        self.prefix = prefix

    @classmethod
    def from_url(cls, url: str, prefix: str = DEFAULT_PREFIX,
                 max_block_s: float = 30.0) -> AsyncRedisFeed:
        from fmn.redisconn import connect_async

        return cls(connect_async(url, socket_timeout=max_block_s + 10,
                                                socket_connect_timeout=5), prefix)

    def key(self, user: str) -> str:
        return f"{self.prefix}{user}"

    async def latest(self, user: str, count: int) -> list[FeedEvent]:
        if count <= 0:
            return []
        with _redis_errors("read a feed"):
            entries = await self.client.xrevrange(self.key(user), count=count)
        return _events(entries)[::-1]

    async def after(self, user: str, last_id: str, count: int,
                    block_s: float | None = None) -> list[FeedEvent]:
        parse_event_id(last_id)
        with _redis_errors("read a feed"):
            reply = await self.client.xread({self.key(user): last_id}, count=count,
                                            block=_block_ms(block_s))
        return _xread_events(reply)

    async def missed_after(self, user: str, last_id: str) -> bool:
        parse_event_id(last_id)
        try:
            with _redis_errors("read a feed"):
                info = await self.client.xinfo_stream(self.key(user))
        except RetryableError as exc:
            if exc.__cause__ is not None and _no_stream(exc.__cause__):
                return False
            raise
        return _missed(info, last_id)

    async def aclose(self) -> None:
        with _redis_errors("close the feed connections"):
            await self.client.aclose()
