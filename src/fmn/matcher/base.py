"""What a matcher produces, and the interface both engines share.

A :class:`Notification` is one (message, user, destination) decision of spec
section 3 with the sorted ids of every rule that produced it.  Engines return
them sorted by user, protocol and address (then destination id, so that two
destinations with the same address keep a stable order), which is the order
the CLI prints.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any, NamedTuple, Protocol

from fmn.message import Message


class Notification(NamedTuple):
    # A named tuple rather than a frozen dataclass: a message followed by
    # thousands makes thousands of these, and a tuple is built several times
    # faster.
    message_id: str
    user: str
    protocol: str
    address: str
    #: The id of the user's destination (not printed; senders use it).
    destination: str
    rules: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """The spec's notification line (section 4)."""
        return {
            "message_id": self.message_id,
            "user": self.user,
            "protocol": self.protocol,
            "address": self.address,
            "rules": list(self.rules),
        }

    def sort_key(self) -> tuple[str, str, str, str]:
        return (self.user, self.protocol, self.address, self.destination)


#: :meth:`Notification.sort_key`, as a fast key function for ``list.sort``.
SORT_KEY = itemgetter(1, 2, 3, 4)


class Matcher(Protocol):
    """Decides who gets which message where."""

    name: str

    def match(self, message: Message) -> list[Notification]:
        """The notifications for one message, sorted by :meth:`Notification.sort_key`."""
        ...

    def describe(self, n: Notification) -> Description:
        """The names of ``n``'s rules and its destination's digest setting (senders show
        and use them; matching never does)."""
        ...


#: (the rules' names in the order of ``Notification.rules``, the destination's
#: digest setting ``(interval_s, max_count)`` or ``None``)
Description = tuple[tuple[str, ...], tuple[int, int] | None]
