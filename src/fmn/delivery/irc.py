"""IRC notifications, the pure part: safe lines from untrusted text, the flood limit, backlogs.

Everything here is plain Python (no sockets); the connection is the
:class:`~fmn.delivery.irc_client.IrcLink` port.  Contract:

* **Text.**  :func:`fmn.delivery.text.clean` turns any string from the bus into one line of
  printable text: ANSI/VT escape sequences, IRC formatting codes (bold,
  colour with its digits, reset, ...), C0 and C1 controls, DEL, line and
  paragraph separators and bidi overrides are removed (line breaks and tabs
  become spaces), lone surrogates become U+FFFD, runs of white space one
  space.  HTML is not interpreted by IRC, so it stays literal text.
* **Lines.**  :func:`render_lines` renders one notification as
  ``[app] summary url (rule: name)`` and splits it with :func:`split_utf8`
  into at most :data:`MAX_LINES_PER_NOTIFICATION` payloads of at most
  :func:`payload_budget` bytes each, so that ``PRIVMSG nick :payload\\r\\n``
  plus the ``:nick!user@host`` prefix a server adds when relaying stays
  within the protocol's 512 bytes.  Splits fall on UTF-8 character
  boundaries, at a space when there is one in the second half of the line.
  :func:`check_wire` is the last guard every link applies: a target that is
  not a valid nick (:func:`check_nick`, :class:`InvalidNick`, a
  :class:`~fmn.errors.PermanentError`: the item is dead-lettered) or a line
  with CR, LF or NUL never becomes a command.
* **Flood limit.**  :class:`TokenBucket` (``burst`` lines at once, then
  ``rate`` lines per second) on an injectable clock; the link draws one
  token for every line it writes to the server.
* **Backlog.**  Within one batch, a nick gets at most ``per_nick``
  notifications as their own lines (fewer if it already had lines in the
  last ``window_s`` seconds); when two or more are left over they collapse
  into one line ``"12 more notifications: <web>/#/notifications"`` (the UI's
  page of recent notifications).  The planning, and the bookkeeping that
  keeps summaries idempotent, are shared with Matrix: :mod:`fmn.delivery.backlog`.
* **Time.**  The flood limit can make a batch outlast its invocation: items
  are not started within :attr:`BatchDelivery.deadline_margin_s` of the
  deadline (:class:`~fmn.errors.Postponed`: the record goes back on the
  queue as a fresh message, using up no receive; its sent items are
  skipped then).
* **Idempotency.**  Every item runs inside :class:`~fmn.delivery.once.Once`
  under its own key, a summarised one too (:meth:`fmn.delivery.backlog.BatchPlan.deliver`).
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fmn.delivery.backlog import BatchPlan, RecentLines, plan_batch
from fmn.delivery.base import DeadLetter, Delivery, Send, deliveries, time_kept_back
from fmn.delivery.text import clean
from fmn.errors import PermanentError, Postponed, RetryableError

if TYPE_CHECKING:
    from fmn.delivery.irc_client import IrcLink
    from fmn.delivery.once import Once

#: RFC 1459/2812: a line, CR LF included.
MAX_LINE_BYTES = 512
#: Room for ``:nick!user@host `` that the server puts before our line when it
#: relays it to the recipient (a 30-byte nick, 10-byte user, 63-byte host
#: would need a little more; real hostmasks and cloaks are far shorter).
RELAY_PREFIX_BYTES = 100
#: The most payload bytes per line, whatever the nick.
MAX_PAYLOAD_BYTES = 400
#: One notification never takes more lines than this.
MAX_LINES_PER_NOTIFICATION = 3
#: Budgets of the rendered parts (UTF-8 bytes), before the line is split.
SUMMARY_MAX_BYTES = 600
URL_MAX_BYTES = 300
APP_MAX_BYTES = 40
RULE_NAME_MAX_BYTES = 40
#: Rule names shown; the rest are counted (``+3``).
RULES_SHOWN = 2
ELLIPSIS = "\u2026"

# -- text ---------------------------------------------------------------------

def truncate_utf8(text: str, limit: int, ellipsis: str = ELLIPSIS) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes on a character boundary, marked if cut."""
    data = text.encode()
    if len(data) <= limit:
        return text
    room = max(0, limit - len(ellipsis.encode()))
    return data[:room].decode("utf-8", "ignore").rstrip() + ellipsis


def split_utf8(text: str, limit: int) -> list[str]:
    """``text`` in pieces of at most ``limit`` UTF-8 bytes, none splitting a character.

    A piece ends at a space when one falls in its second half (the space is
    dropped), otherwise at the last whole character that fits.  ``text`` must
    be encodable (run it through :func:`fmn.delivery.text.clean`).
    """
    if limit < 4:
        raise ValueError("a piece must hold at least one character (4 bytes)")
    pieces: list[str] = []
    rest = text.strip(" ")
    while len(data := rest.encode()) > limit:
        head = data[:limit].decode("utf-8", "ignore")
        cut = len(head) if rest[len(head)] == " " else head.rfind(" ")
        if cut >= max(1, len(head) // 2):
            pieces.append(head[:cut].rstrip(" "))
            rest = rest[cut:].lstrip(" ")
        else:
            pieces.append(head)
            rest = rest[len(head):]
    if rest:
        pieces.append(rest)
    return pieces


# -- nicks ------------------------------------------------------------------

# RFC 2812 section 2.3.1, with the longer nicks today's networks allow.
_NICK = re.compile(r"[A-Za-z\[\]\\`_^{|}][A-Za-z0-9\[\]\\`_^{|}-]{0,31}")
_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ[]\\^", "abcdefghijklmnopqrstuvwxyz{}|~")


class InvalidNick(PermanentError):
    """An address that is not an IRC nick: it must never reach the wire."""


def valid_nick(nick: str) -> bool:
    return isinstance(nick, str) and _NICK.fullmatch(nick) is not None


def check_nick(nick: str) -> str:
    """``nick`` if it is a valid IRC nick, else :class:`InvalidNick`."""
    if not valid_nick(nick):
        raise InvalidNick(f"not an IRC nick: {clean(str(nick))[:64]!r}")
    return nick


def irc_lower(nick: str) -> str:
    """The rfc1459 case-folded nick: two spellings of one nick are one recipient."""
    return nick.translate(_LOWER)


def payload_budget(nick: str) -> int:
    """The most payload bytes of one PRIVMSG to ``nick`` (see :data:`RELAY_PREFIX_BYTES`)."""
    overhead = len(f"PRIVMSG {nick} :\r\n".encode())
    return min(MAX_PAYLOAD_BYTES, MAX_LINE_BYTES - overhead - RELAY_PREFIX_BYTES)


def check_wire(nick: str, line: str) -> bytes:
    """The bytes of ``PRIVMSG nick :line`` CR LF, or PermanentError if they are not safe."""
    check_nick(nick)
    if not line or any(c in line for c in "\r\n\0"):
        raise PermanentError("an IRC line must be non-empty, without CR, LF or NUL")
    wire = f"PRIVMSG {nick} :{line}\r\n".encode()
    if len(wire) + RELAY_PREFIX_BYTES > MAX_LINE_BYTES:
        raise PermanentError(f"an IRC line of {len(wire)} bytes leaves no room to relay it")
    return wire


# -- rendering ---------------------------------------------------------------


def _url(value: Any) -> str:
    url = clean(value)
    # Only a whole, clickable web link is worth a line's room.
    if (not url.startswith(("https://", "http://")) or " " in url
            or len(url.encode()) > URL_MAX_BYTES):
        return ""
    return url


def _rules(names: Sequence[str]) -> str:
    shown = [truncate_utf8(n, RULE_NAME_MAX_BYTES) for n in map(clean, names[:RULES_SHOWN])]
    shown = [n for n in shown if n]
    if not shown:
        return ""
    more = f" +{len(names) - RULES_SHOWN}" if len(names) > RULES_SHOWN else ""
    return f"({'rule' if len(names) == 1 else 'rules'}: {', '.join(shown)}{more})"


def render_text(message: Mapping[str, Any], rule_names: Sequence[str],
                summary_max_bytes: int = SUMMARY_MAX_BYTES) -> str:
    """One notification as one (possibly long) line of safe text."""
    app = truncate_utf8(clean(message.get("app")) or "fedora", APP_MAX_BYTES)
    summary = clean(message.get("summary")) or clean(message.get("topic"))
    parts = [f"[{app}]", truncate_utf8(summary, summary_max_bytes) if summary_max_bytes else "",
             _url(message.get("url")), _rules(rule_names)]
    return " ".join(p for p in parts if p)


def render_lines(item: Delivery, nick: str | None = None) -> list[str]:
    """The payloads of the PRIVMSGs for one notification (1 to MAX_LINES_PER_NOTIFICATION)."""
    budget = payload_budget(nick or item.address)
    summary_max = SUMMARY_MAX_BYTES
    while True:
        lines = split_utf8(render_text(item.message, item.rule_names, summary_max), budget)
        # Word wrapping can waste room: shorten the summary until the lines fit.
        if len(lines) <= MAX_LINES_PER_NOTIFICATION or summary_max == 0:
            return lines[:MAX_LINES_PER_NOTIFICATION]
        summary_max //= 2


def summary_line(count: int, web_url: str, nick: str) -> str:
    """The line that stands for ``count`` notifications not sent on their own."""
    # the UI is one page: its views are fragments (webapp/static/README.md)
    link = f"{web_url.rstrip('/')}/#/notifications"
    return truncate_utf8(clean(f"{count} more notifications: {link}"), payload_budget(nick))


# -- the flood limit ----------------------------------------------------------


class TokenBucket:
    """``burst`` lines at once, then ``rate`` lines per second.

    :meth:`reserve` never refuses: it takes a token (going into debt if there
    is none) and says how long the caller must wait before writing, so any
    sequence of lines written after their waits never exceeds
    ``burst + rate * elapsed``.
    """

    def __init__(self, burst: int, rate: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if burst < 1 or rate <= 0:
            raise ValueError(f"a token bucket needs burst >= 1 and rate > 0, not {burst}, {rate}")
        self.burst = burst
        self.rate = rate
        self.clock = clock
        self._tokens = float(burst)
        self._updated = clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self.clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    def available(self) -> float:
        """Tokens now (negative while in debt)."""
        with self._lock:
            self._refill()
            return self._tokens

    def reserve(self) -> float:
        """Take one token; seconds to wait before using it (0: now)."""
        with self._lock:
            self._refill()
            self._tokens -= 1
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


class IrcNotifier:
    """The IRC backend's :data:`~fmn.delivery.base.Send`: renders items, writes them on a link.

    Also sends the summary lines and plans batches (:meth:`batch`).  Built
    once per process by the function's ``make_send``; nothing here does I/O
    until a line is sent.
    """

    def __init__(self, link: IrcLink, web_url: str, per_nick: int = 3, window_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.link = link
        self.web_url = web_url
        self.recent = RecentLines(per_nick, window_s, fold=irc_lower, clock=clock)

    def __call__(self, item: Delivery) -> None:
        nick = check_nick(item.address)
        self.link.send(nick, render_lines(item, nick))
        self.recent.note(nick)

    def summary(self, nick: str, count: int) -> None:
        check_nick(nick)
        self.link.send(nick, [summary_line(count, self.web_url, nick)])
        self.recent.note(nick)

    def batch(self, bodies: Iterable[str | bytes],
              remaining_s: Callable[[], float] | None = None) -> BatchDelivery:
        """The per-record ``deliver`` for one invocation, planned across all its bodies.

        ``remaining_s`` tells the seconds left before the invocation's deadline.
        """
        items: list[Delivery] = []
        for body in bodies:
            try:
                items += deliveries(body, "irc")
            except PermanentError:
                continue  # the record fails on its own when it is delivered
        plan = plan_batch(items, self.recent.allowance, valid=valid_nick, fold=irc_lower)
        return BatchDelivery(self, plan, remaining_s)


class BatchDelivery:
    """Delivers the records of one planned batch; the ``deliver`` of :class:`SenderFunction`.

    Outcomes counted: ``sent``, ``summarised``, ``duplicate``,
    ``dead-lettered``, plus ``summary-lines`` (summary lines written) and
    ``offline`` (recipients the server said were not there; not retried).
    """

    #: Stop starting items this close to the deadline: an invocation killed mid-send
    #: would fail its whole batch and leave its item in progress.  Longer when the
    #: link's longest send is (a reconnect's timeouts), up to half the time the
    #: invocation started with.
    deadline_margin_s = 10.0

    def __init__(self, notifier: IrcNotifier, plan: BatchPlan,
                 remaining_s: Callable[[], float] | None = None) -> None:
        self.notifier = notifier
        self.plan = plan
        self.remaining_s = remaining_s
        self._margin_s: float | None = None

    def _out_of_time(self) -> bool:
        if self.remaining_s is None:
            return False
        left = self.remaining_s()
        if self._margin_s is None:  # the first item: the time the invocation started with
            self._margin_s = time_kept_back(self.notifier.link.longest_send_s, left,
                                            floor_s=self.deadline_margin_s)
        return left < self._margin_s

    def __call__(self, body: str, send: Send, once: Once,
                 dead_letter: DeadLetter) -> Counter[str]:
        # ``send`` is the function's send, i.e. self.notifier: the plan needs its summaries.
        counts: Counter[str] = Counter()
        stopped: RetryableError | None = None
        try:
            for item in deliveries(body, "irc"):
                if self._out_of_time():
                    # The flood limit made the batch longer than the invocation: the
                    # rest comes back (what was sent is remembered).
                    raise Postponed("IRC sender out of time for this batch")
                for outcome in self._one(item, once, dead_letter):
                    counts[outcome] += 1
        except RetryableError as exc:  # out of time, or the server away
            stopped = exc
            raise
        finally:
            offline = self.notifier.link.offline()
            if offline:
                counts["offline"] += len(offline)
            if stopped is not None:  # what went before it is counted all the same
                stopped.done.update(counts)
        return counts

    def _one(self, item: Delivery, once: Once, dead_letter: DeadLetter) -> list[str]:
        return self.plan.deliver(
            item, once, dead_letter, send=self.notifier,
            summarise=lambda group, key: self.notifier.summary(group.nick,
                                                               group.remaining(key)),
            summary_outcome="summary-lines")
