"""What a matcher produces, and the interface both engines share.

A :class:`Notification` is one (message, user, destination) decision of spec
section 3 with the sorted ids of every rule that produced it.  Engines return
them sorted by user, protocol and address (then destination id, so that two
destinations with the same address keep a stable order), which is the order
the CLI prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from fmn.message import Message


@dataclass(frozen=True, slots=True)
class Notification:
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


class Matcher(Protocol):
    """Decides who gets which message where."""

    name: str

    def match(self, message: Message) -> list[Notification]:
        """The notifications for one message, sorted by :meth:`Notification.sort_key`."""
        ...
