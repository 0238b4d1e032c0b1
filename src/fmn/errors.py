"""The project's error tree.

Everything the core raises on purpose derives from :class:`FmnError`, and
falls in one of two families that tell an edge (a Lambda handler, the bridge,
the CLI) what to do:

* :class:`PermanentError`: retrying cannot help (bad input).  Dead-letter the
  item, count it, move on.
* :class:`RetryableError`: a dependency is away or overloaded.  Leave the item
  where it is (report a batch-item failure) and let it come back.

Library exceptions are translated into these at the edge; nobody branches on
the text of an exception.
"""

from __future__ import annotations

from collections import Counter


class FmnError(Exception):
    """Base of every error the project raises on purpose."""


class PermanentError(FmnError):
    """Retrying will not help: the input itself is wrong."""


class RetryableError(FmnError):
    """A dependency failed; the same input may succeed later.

    ``done`` is what a record's delivery did before this stopped it (``sent``...):
    the edge counts it, since when the record comes back those items are skipped
    as done."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.done: Counter[str] = Counter()


class Deferred(RetryableError):
    """This one item cannot go *for now* (a mailbox full, greylisting): the items
    sent with it go on, and its record comes back later."""


class NotSent(RetryableError):
    """A send that certainly did not go out: the server could not be reached, or it
    refused the connection or the login, before any of the message was handed over.
    (A plain :class:`RetryableError` from a send may come after the message went.)"""


class Postponed(RetryableError):
    """Not a failure: the rest of this record's work must wait (an IRC batch paced
    past its invocation's time, a homeserver's rate limit).  The edge sends the
    record again as a fresh message, so waiting never uses up the record's
    receives, after ``delay_s`` (what the other side asked for; SQS delays up to
    15 minutes); a record postponed for a day goes to the dead-letter queue
    (:mod:`fmn.pipeline.redelivery`)."""

    def __init__(self, detail: str, delay_s: float = 0.0) -> None:
        super().__init__(detail)
        self.delay_s = delay_s


class InvalidMessage(PermanentError):
    """A bus record that cannot be turned into a :class:`fmn.message.Message`.

    ``reason`` is a short machine-friendly tag (``not-json``, ``not-an-object``,
    ``missing-topic``, ``topic-too-long``, ``unknown-format``, ``bad-field``,
    ``too-complex``), ``detail`` the human explanation.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class SnapshotUnavailable(RetryableError):
    """No preferences snapshot could be read from the store."""
