"""What every sender shares: a notification as a typed item, each item of a payload sent once.

:func:`deliveries` reads one SQS body (``docs/notification-payload.md``) into
:class:`Delivery` items.  :func:`deliver_payload` sends each item through a
backend's ``send`` callable inside :class:`~fmn.delivery.once.Once`, keyed on
the send itself (message id, backend, user, destination, address), so a
redelivered payload, or one that comes back because a later item failed,
does not send an item twice.  Outcomes:

* ``send`` returns: the item is delivered and remembered;
* ``send`` raises :class:`~fmn.errors.PermanentError` (an unknown address, a
  5xx), or anything unforeseen: the item alone goes to the backend's
  dead-letter queue through ``dead_letter`` and is counted; the payload's
  other items go on.  ``dead-lettered`` is remembered for the item's
  *generation* only (its ``dead_letters`` count, one more in each dead
  letter, is part of its key): a redelivery of the same payload (another of
  its items failed for a while) neither dead-letters it twice nor sends it
  once the cause is fixed, since its dead letter will; the redrive of the
  dead letter is the next generation and sends it, and a redriven item
  that fails again goes back to the dead-letter queue;
* ``send`` raises :class:`~fmn.errors.RetryableError` (a 4xx, throttling, the
  server away): nothing is remembered for that item and the error propagates,
  so the whole SQS message comes back later (its delivered items are then
  skipped as duplicates).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fmn.delivery.once import Once
from fmn.errors import Deferred, PermanentError, RetryableError
from fmn.pipeline.notifications import unpack_all
from fmn.prefs import Digest

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One notification to send: the bus message's header and one recipient.

    ``message`` is the payload's message object (untrusted strings: escaping
    for a mail header, an IRC line or HTML is the renderer's job).
    """

    backend: str
    message: Mapping[str, Any]
    user: str
    address: str
    destination: str
    rules: tuple[str, ...]
    #: the rules' names, in the order of ``rules`` (their ids when the payload has none)
    rule_names: tuple[str, ...]
    digest: Digest | None = None
    #: how many times this notification went to a dead-letter queue before
    dead_letters: int = 0

    @property
    def message_id(self) -> str:
        return str(self.message["id"])

    def key(self) -> dict[str, str]:
        """What makes this send unique: the idempotency key.

        A re-driven dead letter is a send of its own (``redrive``: its
        generation): it was never sent under the earlier key, where it may
        be remembered as queued into a digest that then could not go out.
        """
        key = {"message": self.message_id, "backend": self.backend, "user": self.user,
               "destination": self.destination, "address": self.address}
        if self.dead_letters:
            key["redrive"] = str(self.dead_letters)
        return key

    def notification(self) -> dict[str, Any]:
        """The payload's notification object (to dead-letter this item alone)."""
        item: dict[str, Any] = {"user": self.user, "address": self.address,
                                "destination": self.destination, "rules": list(self.rules),
                                "rule_names": list(self.rule_names)}
        if self.digest is not None:
            item["digest"] = {"interval_s": self.digest.interval_s,
                              "max_count": self.digest.max_count}
        if self.dead_letters:
            item["dead_letters"] = self.dead_letters
        return item


def to_doc(item: Delivery) -> dict[str, Any]:
    """``item`` as JSON-ready data (digests keep items in Redis this way)."""
    return {"backend": item.backend, "message": dict(item.message), **item.notification()}


def from_doc(doc: Mapping[str, Any]) -> Delivery:
    """The inverse of :func:`to_doc`."""
    rules = tuple(doc["rules"])
    return Delivery(backend=doc["backend"], message=doc["message"], user=doc["user"],
                    address=doc["address"], destination=doc["destination"], rules=rules,
                    rule_names=_names(doc, rules), digest=_digest(doc.get("digest")),
                    dead_letters=_dead_letters(doc))


def _dead_letters(item: Mapping[str, Any]) -> int:
    value = item.get("dead_letters")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _digest(value: Any) -> Digest | None:
    if not isinstance(value, Mapping):
        return None
    interval, count = value.get("interval_s"), value.get("max_count")
    if isinstance(interval, int) and isinstance(count, int) and interval > 0 and count > 0:
        return Digest(interval, count)
    return None


def _names(item: Mapping[str, Any], rules: tuple[str, ...]) -> tuple[str, ...]:
    names = item.get("rule_names")
    if (isinstance(names, list) and len(names) == len(rules)
            and all(isinstance(n, str) for n in names)):
        return tuple(names)
    return rules


def deliveries(body: str | bytes, backend: str) -> list[Delivery]:
    """The items of one payload body, of one bus message or several (version 2), in order
    (raises ``InvalidPayload``, a PermanentError)."""
    out = []
    for info, items in unpack_all(body, backend):
        for item in items:
            rules = tuple(item["rules"])
            out.append(Delivery(backend=backend, message=info, user=item["user"],
                                address=item["address"], destination=item["destination"],
                                rules=rules, rule_names=_names(item, rules),
                                digest=_digest(item.get("digest")),
                                dead_letters=_dead_letters(item)))
    return out


#: Sends one item; raises PermanentError or RetryableError (module docstring).  It may
#: name what it did instead of sending (``"queued"``: into a digest); ``None`` is ``"sent"``.
Send = Callable[[Delivery], str | None]
#: Puts one item alone on the dead-letter queue, with the reason.
DeadLetter = Callable[[Delivery, str], None]


#: Whether the invocation is too near its deadline to start more work (a send, a digest).
TimeUp = Callable[[], bool]


def time_kept_back(wanted_s: float, started_with_s: float, floor_s: float = 0.0) -> float:
    """How long before its deadline an invocation starts no more work: ``wanted_s`` (the
    longest one piece of work can block), at most half the time the invocation started
    with, so that a short one still gets work done, and never less than ``floor_s``."""
    return max(floor_s, min(wanted_s, started_with_s / 2))


def seconds_left(context: Any) -> Callable[[], float] | None:
    """The seconds an invocation has left, from Lambda's context (None: no deadline)."""
    remaining_ms = getattr(context, "get_remaining_time_in_millis", None)
    if remaining_ms is None:
        return None
    return lambda: remaining_ms() / 1000


def time_up(context: Any, wanted_s: float) -> TimeUp | None:
    """Whether the invocation is within :func:`time_kept_back` of ``wanted_s`` of its
    deadline, from Lambda's context (None: no deadline)."""
    left = seconds_left(context)
    if left is None:
        return None
    margin_s = time_kept_back(wanted_s, left())
    return lambda: left() <= margin_s


class Refused(Exception):
    """Why an item cannot be sent (:func:`refusal`): the reason its dead letter
    carries (:func:`dead_letter_now`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def refusal(item: Delivery, exc: Exception) -> Refused:
    """The :class:`Refused` for an exception a send raised (not a RetryableError)."""
    if isinstance(exc, PermanentError):
        return Refused(str(exc)[:1000])
    # a case nobody foresaw: this item only, never its batch
    log.exception("sending one %s notification failed unexpectedly", item.backend)
    return Refused(f"unexpected {type(exc).__name__}: {str(exc)[:900]}")


def dead_letter_now(item: Delivery, exc: Exception, dead_letter: DeadLetter) -> str:
    """Inside a send's :class:`~fmn.delivery.once.Once` action, for an exception the
    send raised (not a RetryableError): put the item alone on the dead-letter queue
    and return ``dead-lettered``, the outcome remembered for this generation of the
    item.  A redelivery of the same payload then neither sends it nor dead-letters
    it again (the dead letter is where it lives now: its redrive, the next
    generation, has a key of its own and sends it).  If the dead-letter queue
    refuses, the RetryableError leaves nothing remembered."""
    dead_letter(item, refusal(item, exc).reason)
    return "dead-lettered"


def deliver_one(item: Delivery, send: Send, once: Once, dead_letter: DeadLetter) -> str:
    """Send one item once: ``sent`` (or what ``send`` named), ``dead-lettered`` or
    ``duplicate``."""
    ran: list[str] = []

    def action() -> str:
        try:
            outcome = send(item) or "sent"
        except RetryableError:
            raise
        except Exception as exc:
            outcome = dead_letter_now(item, exc, dead_letter)
        ran.append(outcome)
        return outcome

    once.run(item.key(), action)
    return ran[0] if ran else "duplicate"


def deliver_payload(body: str | bytes, backend: str, send: Send, once: Once,
                    dead_letter: DeadLetter) -> Counter[str]:
    """Deliver every item of one payload; counts of each outcome.

    Stops at the first RetryableError (the server is likely away for all of
    them) and lets it propagate; a :class:`~fmn.errors.Deferred` concerns one
    item only, so the others go on first and it is raised at the end.
    """
    counts: Counter[str] = Counter()
    deferred: Deferred | None = None
    for item in deliveries(body, backend):
        try:
            counts[deliver_one(item, send, once, dead_letter)] += 1
        except Deferred as exc:
            counts["deferred"] += 1
            deferred = deferred or exc
        except RetryableError as exc:  # what went before it is counted all the same
            exc.done.update(counts)
            raise
    if deferred is not None:
        deferred.done.update(counts)
        raise deferred
    return counts


def dead_letter_body(item: Delivery, reason: str) -> str:
    """A one-notification payload for the dead-letter queue (redrivable as is); its
    notification counts one more dead letter."""
    import orjson

    notification = {**item.notification(), "dead_letters": item.dead_letters + 1}
    return orjson.dumps({"v": 1, "backend": item.backend, "part": 1, "parts": 1,
                         "message": dict(item.message), "notifications": [notification],
                         "error": reason}).decode()

