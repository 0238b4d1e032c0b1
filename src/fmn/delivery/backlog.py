"""Backlogs on a paced channel (IRC, Matrix): a few notifications each, the rest summarised.

IRC and Matrix deliver to people over channels with a rate limit, so a
burst for one person must not become a wall of lines.  Within one batch
(one invocation's records), :func:`plan_batch` lets each recipient have at
most their allowance of notifications on their own (fewer if they got some
within the window, :class:`RecentLines`); when two or more are left over
they collapse into one summary ("12 more notifications: ...").  Each
backend supplies what a recipient is (``valid``) and when two spellings are
one (``fold``): IRC's nicks (:mod:`fmn.delivery.irc`), Matrix user ids
(:mod:`fmn.delivery.matrix`).

**Idempotency** (:meth:`BatchPlan.deliver`).  Every item, summarised or
not, runs inside :class:`~fmn.delivery.once.Once` under its own key
(:meth:`~fmn.delivery.base.Delivery.key`).  An item sent on its own is
remembered once it is written.  For a summarised group, the first item
whose action runs in this invocation sends the summary inside its own
action, and the group's later items, in whatever record, are remembered as
``summarised`` without another.  So a redelivered item is a duplicate
whether it was sent or summarised; an action that fails (the summary was
not written) is forgotten and its item comes back; an item is never marked
summarised unless a summary covering it was written.  The summary's count
is the group's items not already found done (a later item of the group may
still turn out a duplicate, so it can overstate, never understate).  An
exception other than a :class:`~fmn.errors.RetryableError` dead-letters
that item alone, never the rest of its payload.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fmn.delivery.base import DeadLetter, Delivery, deliver_one

if TYPE_CHECKING:
    from fmn.delivery.once import Once

Key = tuple[str, ...]


def item_key(item: Delivery) -> Key:
    return tuple(item.key().values())


class RecentLines:
    """What each recipient got in the last ``window_s`` seconds (this process only).

    Lambda keeps a warm process for the next batch, so a backlog draining
    batch after batch still collapses; a cold start forgets, which only
    means a few more individual lines.  ``fold`` makes two spellings of one
    recipient one.
    """

    def __init__(self, per_nick: int, window_s: float, *, fold: Callable[[str], str],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_nick = per_nick
        self.window_s = window_s
        self.clock = clock
        self.fold = fold
        self._lines: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._lines.setdefault(key, deque())
        while times and times[0] <= now - self.window_s:
            times.popleft()
        return times

    def allowance(self, nick: str) -> int:
        """How many notifications ``nick`` may still get on their own now."""
        with self._lock:
            now = self.clock()
            recent = self._recent(self.fold(nick), now)
            if not recent:
                del self._lines[self.fold(nick)]
            return max(0, self.per_nick - len(recent))

    def note(self, nick: str) -> None:
        with self._lock:
            now = self.clock()
            self._recent(self.fold(nick), now).append(now)


@dataclass
class Group:
    """One recipient's notifications of one batch that collapse into one summary."""

    #: as the first summarised item spells it
    nick: str
    keys: set[Key]
    #: keys found done (sent or summarised earlier) or handled in this invocation
    settled: set[Key] = field(default_factory=set)
    summary_sent: bool = False

    def remaining(self, key: Key) -> int:
        return len(self.keys - (self.settled - {key}))


#: Sends one group's summary, as the item with this key finds it (raises like a send).
Summarise = Callable[[Group, Key], None]


class BatchPlan:
    """Which items of one batch are summarised (per recipient), from the whole batch."""

    def __init__(self, groups: Mapping[Key, Group] | None = None) -> None:
        self.groups: dict[Key, Group] = dict(groups or {})

    def group(self, item: Delivery) -> Group | None:
        return self.groups.get(item_key(item))

    def deliver(self, item: Delivery, once: Once, dead_letter: DeadLetter, *,
                send: Callable[[Delivery], None], summarise: Summarise,
                summary_outcome: str) -> list[str]:
        """Deliver one item once, on its own or summarised (module docstring).

        The outcomes: ``sent``, ``summarised`` (after ``summary_outcome`` when
        this item's action wrote its group's summary), ``dead-lettered``, or
        ``duplicate``.  A RetryableError propagates and nothing is remembered.
        """
        group = self.group(item)
        key = item_key(item)
        summaries: list[str] = []

        def send_or_summarise(item: Delivery) -> str | None:
            if group is None:
                send(item)
                return None  # "sent"
            if not group.summary_sent:
                summarise(group, key)
                group.summary_sent = True
                summaries.append(summary_outcome)
            return "summarised"

        # once, and dead-lettered alone on anything but a RetryableError, as every send
        outcome = deliver_one(item, send_or_summarise, once, dead_letter)
        if group is not None:
            group.settled.add(key)
        return [*summaries, outcome]


def plan_batch(items: Iterable[Delivery], allowance: Callable[[str], int], *,
               valid: Callable[[str], bool], fold: Callable[[str], str]) -> BatchPlan:
    """Per recipient, in batch order: ``allowance(address)`` items on their own, the rest
    summarised.

    A single leftover item is sent on its own too: one line either way.
    Items whose address is not ``valid`` are left out of every group (they
    are dead-lettered on their own).  ``fold`` makes two spellings of an
    address one recipient.
    """
    per_nick: dict[str, list[tuple[Key, str]]] = {}
    seen: set[Key] = set()
    for item in items:
        key = item_key(item)
        if not valid(item.address) or key in seen:  # twice in a batch is once
            continue
        seen.add(key)
        per_nick.setdefault(fold(item.address), []).append((key, item.address))
    groups: dict[Key, Group] = {}
    for keys in per_nick.values():
        rest = keys[max(0, allowance(keys[0][1])):]
        if len(rest) >= 2:
            group = Group(rest[0][1], {k for k, _ in rest})
            groups.update((k, group) for k, _ in rest)
    return BatchPlan(groups)
