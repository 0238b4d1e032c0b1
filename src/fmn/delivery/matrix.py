"""Matrix notifications, the pure part: notices from untrusted text, direct rooms, rate limits.

Everything here is plain Python (no sockets); the homeserver is the
:class:`MatrixLink` port (:mod:`fmn.delivery.matrix_client` has the real one)
and the memory of each person's room the :class:`RoomStore` port
(:class:`RedisRooms`, :class:`MemoryRooms`).  Contract:

* **Recipient.**  An address must be a Matrix user id ``@localpart:server``
  (:func:`check_user_id`); anything else is :class:`InvalidUserId`, a
  :class:`~fmn.errors.PermanentError` (the item is dead-lettered alone).
* **Notice.**  One notification is one ``m.notice`` (bots speak in notices,
  which clients never answer automatically).  Its ``body`` is the IRC line's
  text (:func:`fmn.delivery.irc.render_text`: every string run through
  :func:`fmn.delivery.text.clean`, so one line with no control, escape or bidi
  characters), its ``formatted_body`` (``org.matrix.custom.html``) the same
  parts with every piece of message text HTML-escaped, and a link only for
  an ``http(s)`` URL: content from the bus never becomes markup.
* **Rooms.**  Each person gets one direct room with the bot, created on first
  use (``is_direct``, the person invited) and remembered in the store.  The
  first send to a person in each batch asks the homeserver whether they are
  still in it (or still invited); if they left or were banned, or the bot
  can no longer post there (:class:`RoomGone`), a new room is created,
  remembered, and the notice goes there.
* **Rate limits.**  ``M_LIMIT_EXCEEDED`` is :class:`LimitExceeded` with the
  server's ``retry_after_ms``.  The notifier waits that long and tries again
  while the invocation has time for it (``remaining_s`` minus the time kept
  back, :attr:`MatrixNotifier.margin_s`); otherwise it raises
  :class:`~fmn.errors.Postponed`, so the record (and every later one of the
  batch, to keep each room in order) goes back to the queue as a fresh
  message, visible once the limit has passed (SQS delays up to 15 minutes),
  using up none of its receives (a limit is no failure: it must not
  dead-letter anything): nothing is dropped, and what was sent is
  remembered and skipped when it comes back.  Synapse limits room creations
  apart from sends (``rc_room_creation``: ten, then one a minute), so a
  burst of people new to Matrix notices would otherwise hold back everyone
  else's: when only creations are limited (:class:`RoomsLimited`), records
  for people who have a room go on, and only those for people without one,
  or for someone whose record went back, wait.
* **Time.**  No request starts with less than :attr:`MatrixNotifier.margin_s`
  left in the invocation (10 s plus the link's longest request, up to half
  the time the invocation started with): a slow homeserver makes the batch
  go back in order (:class:`OutOfTime`, a Postponed), never run past the
  deadline, where Lambda would end it and every record would spend a receive.
* **Twice.**  Each notice is sent with a transaction id derived from the
  notification's idempotency key and the room, so a send whose answer was
  lost and that is retried is stored once by the homeserver.
* **Backlog.**  As for IRC (:mod:`fmn.delivery.backlog`): within a batch a
  person gets at most ``per_user`` notices of their own (fewer if they had
  some within ``window_s``); two or more left over become one notice
  ``"N more notifications: <web>/#/notifications"``, kept idempotent by the
  same bookkeeping; a notice that fails other than retryably dead-letters
  its item alone.
"""

from __future__ import annotations

import hashlib
import html
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import orjson

from fmn.delivery.backlog import BatchPlan, RecentLines, plan_batch
from fmn.delivery.base import DeadLetter, Delivery, Send, deliveries, time_kept_back
from fmn.delivery.irc import (
    APP_MAX_BYTES,
    _rules,
    _url,
    render_text,
    truncate_utf8,
)
from fmn.delivery.text import clean
from fmn.errors import PermanentError, Postponed, RetryableError

if TYPE_CHECKING:
    from fmn.delivery.once import Once

T = TypeVar("T")

#: The most bytes of a message's summary in one notice (events may be 64 KiB; a
#: notification is a glance, and its link has the rest).
SUMMARY_MAX_BYTES = 2000
HTML_FORMAT = "org.matrix.custom.html"
# The spec's user id grammar (historical characters allowed), 255 bytes at most.
_USER_ID = re.compile(r"@[\x21-\x39\x3b-\x7e]+:[A-Za-z0-9.\-\[\]:]+")


class InvalidUserId(PermanentError):
    """An address that is not a Matrix user id: nothing is sent."""


class LimitExceeded(RetryableError):
    """The homeserver said ``M_LIMIT_EXCEEDED``; try again after ``retry_after_s``."""

    def __init__(self, retry_after_s: float, detail: str = "") -> None:
        super().__init__(f"rate limited by the homeserver for {retry_after_s:.3f} s {detail}")
        self.retry_after_s = retry_after_s


class RoomGone(RetryableError):
    """The bot cannot post in a room it remembered (it left, was kicked, or the room is
    gone): a new room is made."""


def valid_user_id(address: str) -> bool:
    return (isinstance(address, str) and len(address.encode()) <= 255
            and _USER_ID.fullmatch(address) is not None)


def check_user_id(address: str) -> str:
    if not valid_user_id(address):
        raise InvalidUserId(f"not a Matrix user id: {clean(str(address))[:80]!r}")
    return address


def fold(user_id: str) -> str:
    """Matrix user ids are case-sensitive: one spelling, one person."""
    return user_id


# -- rendering -------------------------------------------------------------


def render(message: Mapping[str, Any], rule_names: Sequence[str]) -> tuple[str, str]:
    """One notification's ``body`` (plain, one line) and ``formatted_body`` (escaped HTML)."""
    body = render_text(message, rule_names, SUMMARY_MAX_BYTES)
    app = truncate_utf8(clean(message.get("app")) or "fedora", APP_MAX_BYTES)
    summary = truncate_utf8(clean(message.get("summary")) or clean(message.get("topic")),
                            SUMMARY_MAX_BYTES)
    url, rules = _url(message.get("url")), _rules(rule_names)
    parts = [f"<b>[{html.escape(app)}]</b>"]
    if summary:
        parts.append(html.escape(summary))
    if url:
        parts.append(f'<a href="{html.escape(url, quote=True)}">{html.escape(url)}</a>')
    if rules:
        parts.append(f"<i>{html.escape(rules)}</i>")
    return body, " ".join(parts)


def summary_notice(count: int, web_url: str) -> tuple[str, str]:
    # the UI is one page with #/ routes, as in the IRC summary line
    link = clean(f"{web_url.rstrip('/')}/#/notifications")
    body = f"{count} more notifications: {link}"
    if not link.startswith(("https://", "http://")) or " " in link:
        return body, html.escape(body)
    return body, (f'{count} more notifications: '
                  f'<a href="{html.escape(link, quote=True)}">{html.escape(link)}</a>')


def notice(body: str, formatted: str) -> dict[str, Any]:
    # "m.mentions": {} says the notice mentions nobody: without it, clients and the
    # homeserver fall back to scanning the text, and a summary holding "@room" (the bot
    # may use it: it made the room) or the person's name would notify as a highlight
    return {"msgtype": "m.notice", "body": body, "format": HTML_FORMAT,
            "formatted_body": formatted, "m.mentions": {}}


def txn_id(*parts: Any) -> str:
    """A transaction id (``[A-Za-z0-9]``) stable for the same parts."""
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()[:40]


# -- ports -------------------------------------------------------------------


class MatrixLink(Protocol):
    """The bot's session on a homeserver; errors are translated (module docstring)."""

    #: the longest one request may block before it raises: no request starts with
    #: less time than this left in the invocation
    longest_request_s: float

    def create_direct_room(self, user_id: str) -> str:
        """A new room with ``user_id`` invited, marked direct; its room id."""
        ...

    def membership(self, room_id: str, user_id: str) -> str | None:
        """``join``, ``invite``, ``leave``, ``ban``, ``knock`` or ``None`` (never a member);
        RoomGone if the bot cannot see the room."""
        ...

    def send(self, room_id: str, content: Mapping[str, Any], txn: str) -> str:
        """Send ``m.room.message`` content; the event id (LimitExceeded, RoomGone, ...)."""
        ...


class RoomStore(Protocol):
    def get(self, user_id: str) -> str | None: ...

    def put(self, user_id: str, room_id: str) -> None: ...

    def forget(self, user_id: str, room_id: str) -> None:
        """Forget ``room_id`` as ``user_id``'s room (only if it still is)."""
        ...


class MemoryRooms:
    def __init__(self) -> None:
        self.rooms: dict[str, str] = {}

    def get(self, user_id: str) -> str | None:
        return self.rooms.get(user_id)

    def put(self, user_id: str, room_id: str) -> None:
        self.rooms[user_id] = room_id

    def forget(self, user_id: str, room_id: str) -> None:
        if self.rooms.get(user_id) == room_id:
            del self.rooms[user_id]


class RedisRooms:
    """Each person's room in a Redis hash ``<prefix>rooms`` (prefix per stage and bot)."""

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.key = f"{prefix}rooms"

    def _call(self, name: str, *args: Any) -> Any:
        import redis

        try:
            return getattr(self.client, name)(self.key, *args)
        except redis.RedisError as exc:
            raise RetryableError(f"Redis failed ({name}): {exc}") from exc

    def get(self, user_id: str) -> str | None:
        value = self._call("hget", user_id)
        return None if value is None else (value.decode() if isinstance(value, bytes)
                                           else str(value))

    def put(self, user_id: str, room_id: str) -> None:
        self._call("hset", user_id, room_id)

    def forget(self, user_id: str, room_id: str) -> None:
        if self.get(user_id) == room_id:
            self._call("hdel", user_id)


# -- the notifier --------------------------------------------------------------


class MatrixNotifier:
    """The Matrix backend's :data:`~fmn.delivery.base.Send`: one notice in the person's room.

    Also sends summaries, verification texts (:meth:`send_text`) and plans
    batches (:meth:`batch`).  ``stats`` counts what happened besides sends
    (``rooms-created``, ``rate-limited`` waits); the batch delivery moves it
    into the function's metrics.
    """

    #: Start no request, and no wait for a rate limit, this close to the invocation's
    #: deadline, plus the link's longest request (up to half the time the invocation
    #: started with, never less than this): the rest goes back (:class:`OutOfTime`).
    deadline_margin_s = 10.0
    #: Outside an invocation (no deadline), the longest single wait.
    max_wait_s = 30.0

    def __init__(self, link: MatrixLink, rooms: RoomStore, web_url: str, per_user: int = 10,
                 window_s: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.link = link
        self.rooms = rooms
        self.web_url = web_url
        self.recent = RecentLines(per_user, window_s, fold=fold, clock=clock)
        self.sleep = sleep
        self.stats: Counter[str] = Counter()
        #: seconds left in the current invocation, and the time kept back (set per batch)
        self.remaining_s: Callable[[], float] | None = None
        self.margin_s = self.deadline_margin_s
        #: people whose room was checked in this batch
        self._checked: set[str] = set()
        self._lock = threading.RLock()

    # -- rooms ---------------------------------------------------------------

    def room_for(self, user_id: str) -> str:
        """The person's direct room: remembered and still theirs, or a new one."""
        room = self.rooms.get(user_id)
        if room is not None and user_id not in self._checked:
            known = room
            try:  # a limit on this check is waited out like one on a send
                state = self._retrying(lambda: self.link.membership(known, user_id))
            except RoomGone:
                state = None
            if state in ("join", "invite"):
                self._checked.add(user_id)
            else:
                self.rooms.forget(user_id, room)
                room = None
        if room is None:
            try:
                room = self._retrying(lambda: self.link.create_direct_room(user_id))
            except OutOfTime:
                raise
            except Postponed as exc:  # the bot's room creations, not its sends, are limited
                raise RoomsLimited(str(exc), exc.delay_s) from exc
            self.rooms.put(user_id, room)
            self.stats["rooms-created"] += 1
            self._checked.add(user_id)
        return room

    # -- sending ---------------------------------------------------------------

    def _retrying(self, call: Callable[[], T]) -> T:
        """One request, rate limits waited out while the invocation has time."""
        while True:
            if self.remaining_s is not None and self.remaining_s() < self.margin_s:
                # a slow homeserver made the batch longer than the invocation: a
                # request started now could still run when Lambda ends it
                raise OutOfTime("Matrix sender out of time for this batch: the rest comes "
                                "back (what was sent is remembered)")
            try:
                return call()
            except LimitExceeded as exc:
                self.stats["rate-limited"] += 1
                left = (self.remaining_s() - self.margin_s if self.remaining_s
                        else self.max_wait_s)
                if exc.retry_after_s > left:
                    # not a failure: the homeserver says "later", as IRC's flood limit
                    # does, so the record waits as a fresh message and no receive of
                    # its own is spent (repeated limits would dead-letter good notices)
                    raise Postponed(
                        f"rate limited for {exc.retry_after_s:.1f} s with {max(left, 0):.1f} s "
                        f"to spare: the rest goes back to the queue",
                        delay_s=exc.retry_after_s) from exc
                self.sleep(exc.retry_after_s)

    def post(self, user_id: str, content: Mapping[str, Any], txn_parts: Sequence[Any]) -> str:
        """Send ``content`` to the person's room (a new one if theirs is gone); the event id."""
        check_user_id(user_id)
        with self._lock:
            room = self.room_for(user_id)
            try:
                return self._retrying(lambda: self.link.send(room, content,
                                                             txn_id(*txn_parts, room)))
            except RoomGone:
                self.rooms.forget(user_id, room)
                self._checked.discard(user_id)
                room = self.room_for(user_id)
                return self._retrying(lambda: self.link.send(room, content,
                                                             txn_id(*txn_parts, room)))

    def __call__(self, item: Delivery) -> None:
        body, formatted = render(item.message, item.rule_names)
        self.post(item.address, notice(body, formatted), [item.key()])
        self.recent.note(item.address)

    def summary(self, user_id: str, count: int, keys: Iterable[Any] = ()) -> None:
        body, formatted = summary_notice(count, self.web_url)
        self.post(user_id, notice(body, formatted), ["summary", sorted(keys)])
        self.recent.note(user_id)

    def send_text(self, user_id: str, text: str, txn: str) -> None:
        """A plain notice (verification codes): checked afresh, never from a batch."""
        with self._lock:
            self._checked.discard(user_id)
            body = clean(text)
            # outside any batch: the last batch's deadline is not this call's
            remaining, self.remaining_s = self.remaining_s, None
            try:
                self.post(user_id, notice(body, html.escape(body)), ["text", txn])
            finally:
                self.remaining_s = remaining

    def batch(self, bodies: Iterable[str | bytes],
              remaining_s: Callable[[], float] | None = None) -> MatrixBatch:
        """The per-record ``deliver`` for one invocation, planned across all its bodies."""
        items: list[Delivery] = []
        for body in bodies:
            try:
                items += deliveries(body, "matrix")
            except PermanentError:
                continue  # the record fails on its own when it is delivered
        with self._lock:
            self._checked.clear()
            self.remaining_s = remaining_s
            self.margin_s = self.deadline_margin_s
            if remaining_s is not None:
                self.margin_s = time_kept_back(
                    self.deadline_margin_s + self.link.longest_request_s, remaining_s(),
                    floor_s=self.deadline_margin_s)
        plan = plan_batch(items, self.recent.allowance, valid=valid_user_id, fold=fold)
        return MatrixBatch(self, plan)


class OutOfTime(Postponed):
    """Too little of the invocation is left to start a request to the homeserver."""


class RoomsLimited(Postponed):
    """The homeserver limits the bot's room creations (Synapse's ``rc_room_creation``,
    a limiter apart from its sends) longer than the invocation can wait."""


class MatrixBatch:
    """Delivers the records of one planned batch; the ``deliver`` of the sender function.

    No request starts within :attr:`MatrixNotifier.margin_s` of the invocation's
    deadline: the rest of the batch goes back to the queue as fresh messages
    (:class:`OutOfTime`), in order, and what a record sent before is counted.

    Counts ``sent``, ``summarised``, ``duplicate``, ``dead-lettered``,
    ``summary-notices``, ``rooms-created`` and ``rate-limited``.  After a
    record fails for want of time (a rate limit too long to wait out), every
    later record of the batch fails too without sending, so that each room
    keeps its order.  When only room creations are limited (:class:`RoomsLimited`),
    the people who already have a room go on: a later record waits only if it
    is for someone without a remembered room, or for someone of a record that
    went back (their order).
    """

    def __init__(self, notifier: MatrixNotifier, plan: BatchPlan) -> None:
        self.notifier = notifier
        self.plan = plan
        self.halted: RetryableError | None = None
        #: the room-creation limit met in this batch, and the people whose records wait
        self.rooms_limited: RoomsLimited | None = None
        self.waiting: set[str] = set()

    def __call__(self, body: str, send: Send, once: Once,
                 dead_letter: DeadLetter) -> Counter[str]:
        if self.halted is not None:  # waits as the record before it does, untried
            detail = f"an earlier record of this batch went back: {self.halted}"
            if isinstance(self.halted, Postponed):
                raise Postponed(detail, self.halted.delay_s)
            raise RetryableError(detail)
        items = deliveries(body, "matrix")
        people = {item.address for item in items}
        try:
            wait = self.rooms_limited is not None and self._must_wait(people)
        except RetryableError as exc:  # Redis, for the rooms
            self.halted = exc
            raise
        if wait and self.rooms_limited is not None:
            self.waiting |= {fold(p) for p in people}
            raise Postponed(f"waits for a room, or for an earlier record of the same person "
                            f"that went back: {self.rooms_limited}", self.rooms_limited.delay_s)
        counts: Counter[str] = Counter()
        stopped: RetryableError | None = None
        try:
            for item in items:
                for outcome in self._one(item, once, dead_letter):
                    counts[outcome] += 1
        except RoomsLimited as exc:
            self.rooms_limited = stopped = exc
            self.waiting |= {fold(p) for p in people}
            raise
        except RetryableError as exc:
            self.halted = stopped = exc
            raise
        finally:
            with self.notifier._lock:
                counts.update(self.notifier.stats)
                self.notifier.stats.clear()
            if stopped is not None:  # what went before it is counted all the same
                stopped.done.update(counts)
        return counts

    def _must_wait(self, people: set[str]) -> bool:
        """Whether a record for ``people`` must wait once room creations are limited."""
        if {fold(p) for p in people} & self.waiting:
            return True
        # an address that is not a user id has no room and needs none: it dead-letters
        return any(valid_user_id(p) and self.notifier.rooms.get(p) is None for p in people)

    def _one(self, item: Delivery, once: Once, dead_letter: DeadLetter) -> list[str]:
        return self.plan.deliver(
            item, once, dead_letter, send=self.notifier,
            summarise=lambda group, key: self.notifier.summary(
                group.nick, group.remaining(key), group.keys),
            summary_outcome="summary-notices")
