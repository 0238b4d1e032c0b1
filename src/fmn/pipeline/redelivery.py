"""What an SQS-fed function does with a record it could not process: back off, or end it.

Lambda's event source mapping leaves a failed record on its queue; SQS hands
it out again when its visibility timeout ends and counts every receive, and
after the queue's ``maxReceiveCount`` moves it to the dead-letter queue.  Left
at that, a dependency away for a few minutes (Redis restarting) burns every
receive of every waiting record within ``max_receive_count`` visibility
timeouts and drains whole queues into their dead-letter queues.  So the edge
(:class:`fmn.delivery.edge.SenderFunction`, the match function) tells each
failed record apart:

* **retryable** (a dependency away): :meth:`Redelivery.back_off` sets the
  record's visibility timeout to :func:`retry_delay_s` of its
  ``ApproximateReceiveCount``: the first delay, then twice as long each
  time (``ChangeMessageVisibilityBatch``, the record is not deleted, so SQS
  keeps the new timeout).  With the queues' five receives and a first delay
  of the visibility timeout (60 s), a record survives an outage of 31
  minutes before it is dead-lettered (62 for email, 120 s at first);
* **permanent** (bad input: an envelope or payload nobody can read):
  :meth:`Redelivery.dead_letter` puts the body on the queue's dead-letter
  queue at once, with the reason as the ``error`` attribute, and the record
  counts as done: retrying cannot help, so it does not wait five receives;
* **postponed** (:class:`~fmn.errors.Postponed`: not a failure, the rest of
  a record's work must wait, an IRC batch out of time): :meth:`Redelivery.requeue`
  sends the body again as a fresh message and the record counts as done, so
  a paced backlog never uses up receives.  The fresh message carries when
  the record was first postponed (the ``fmn-postponed-since`` attribute):
  a requeued message is young again to SQS, so the queue's age alarm cannot
  see a record that keeps coming back, and :meth:`Redelivery.postpone`
  dead-letters it instead once it has waited :data:`MAX_POSTPONED_S`.

A record the edge cannot treat so (SQS refusing the call) stays failed and
comes back after its visibility timeout: at least once, nothing lost.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping
from typing import Any

log = logging.getLogger(__name__)

#: SQS's longest delay of a message it is sent (DelaySeconds)
MAX_DELAY_S = 900

#: SQS's longest visibility timeout (12 hours from the receive).
MAX_VISIBILITY_S = 12 * 3600

#: the message attribute of a requeued record: when it was first postponed (epoch seconds)
POSTPONED_SINCE = "fmn-postponed-since"

#: the message attribute of a dead letter a function put there: why
REASON = "error"

#: how long a record may keep being postponed before it goes to the dead-letter queue
#: (a notice a day late; the queue's message-age alarm never sees a requeued record)
MAX_POSTPONED_S = 24 * 3600


def retry_delay_s(receive_count: int, first_s: float, max_s: float = 6 * 3600) -> int:
    """Seconds a record that failed on its ``receive_count``-th receive stays hidden.

    ``first_s`` after the first receive, doubling with each one after it,
    at most ``max_s`` (and SQS's 12 hours); whole seconds, at least one.
    """
    exponent = max(0, min(receive_count, 40) - 1)
    delay = min(first_s * 2**exponent, max_s, MAX_VISIBILITY_S)
    return max(1, int(delay))


def queue_name(arn: str) -> str:
    """The queue's name from its ARN (``arn:aws:sqs:REGION:ACCOUNT:NAME``)."""
    return arn.rsplit(":", 1)[-1]


class Redelivery:
    """Backs off, dead-letters or requeues failed records of one function (module docstring).

    ``sqs`` is a boto3 SQS client; ``first_delay_s(queue_name)`` gives a
    queue's first retry delay (its visibility timeout by default).
    """

    def __init__(self, sqs: Any, first_delay_s: Any, max_delay_s: float = 6 * 3600) -> None:
        self.sqs = sqs
        self.first_delay_s = first_delay_s
        self.max_delay_s = max_delay_s
        self._urls: dict[str, str] = {}

    def url(self, name: str) -> str:
        if name not in self._urls:
            self._urls[name] = self.sqs.get_queue_url(QueueName=name)["QueueUrl"]
        return self._urls[name]

    def back_off(self, records: Iterable[Mapping[str, Any]]) -> int:
        """Hide each record for its retry delay; how many were backed off."""
        by_queue: dict[str, list[Mapping[str, Any]]] = {}
        for record in records:
            by_queue.setdefault(queue_name(str(record.get("eventSourceARN", ""))),
                                []).append(record)
        done = 0
        for name, group in by_queue.items():
            first = float(self.first_delay_s(name))
            for start in range(0, len(group), 10):  # ten entries per request
                chunk = group[start:start + 10]
                entries = [{"Id": str(i), "ReceiptHandle": r["receiptHandle"],
                            "VisibilityTimeout": retry_delay_s(_receives(r), first,
                                                               self.max_delay_s)}
                           for i, r in enumerate(chunk)]
                try:
                    response = self.sqs.change_message_visibility_batch(
                        QueueUrl=self.url(name), Entries=entries)
                except Exception as exc:  # the record comes back after its timeout anyway
                    log.warning("backing off %d records of %s failed: %s", len(chunk), name, exc)
                    continue
                failed = response.get("Failed", [])
                if failed:  # e.g. received again meanwhile: it comes back at its timeout
                    log.warning("backing off %d of %d records of %s failed: %s", len(failed),
                                len(chunk), name, failed[0].get("Message", failed[0]))
                done += len(chunk) - len(failed)
        return done

    def dead_letter(self, record: Mapping[str, Any], reason: str) -> None:
        """Put the record's body on its queue's dead-letter queue now (raises if SQS refuses)."""
        name = queue_name(str(record.get("eventSourceARN", "")))
        self.sqs.send_message(
            QueueUrl=self.url(f"{name}-dlq"), MessageBody=record["body"],
            MessageAttributes=reason_attributes(reason))

    def postpone(self, record: Mapping[str, Any], reason: str, delay_s: float = 0.0,
                 now: float | None = None) -> bool:
        """Requeue the record (True), or dead-letter it (False) once it has been
        postponed for :data:`MAX_POSTPONED_S`; raises if SQS refuses."""
        now = time.time() if now is None else now
        since = postponed_since(record, now)
        if now - since >= MAX_POSTPONED_S:
            hours = (now - since) / 3600
            self.dead_letter(record, f"postponed for {hours:.0f} h: {reason}")
            return False
        self.requeue(record, delay_s, since)
        return True

    def requeue(self, record: Mapping[str, Any], delay_s: float = 0.0,
                since: float | None = None) -> None:
        """Send the record's body again as a new message, visible after ``delay_s``
        (rounded up, at most SQS's 900 s), marked as postponed ``since`` (now by
        default); raises if SQS refuses."""
        name = queue_name(str(record.get("eventSourceARN", "")))
        # what the other side asked for: a homeserver's "retry_after_ms": 1e999 is inf
        delay = min(MAX_DELAY_S, max(0, math.ceil(delay_s))) if math.isfinite(delay_s) \
            else MAX_DELAY_S
        since = time.time() if since is None else since
        self.sqs.send_message(
            QueueUrl=self.url(name), MessageBody=record["body"],
            MessageAttributes={POSTPONED_SINCE: {"DataType": "Number",
                                                 "StringValue": f"{since:.3f}"}},
            **({"DelaySeconds": delay} if delay else {}))


def reason_attributes(reason: str) -> dict[str, Any]:
    """The message attributes of a dead letter sent with ``reason`` (:data:`REASON`)."""
    return {REASON: {"DataType": "String", "StringValue": reason[:256] or "-"}}


def reason_of(message: Mapping[str, Any]) -> str | None:
    """The :data:`REASON` of a dead letter as ``ReceiveMessage`` returns it, if any."""
    attribute = (message.get("MessageAttributes") or {}).get(REASON) or {}
    value = attribute.get("StringValue")
    return str(value) if value else None


def postponed_since(record: Mapping[str, Any], now: float) -> float:
    """When a Lambda SQS record was first postponed: its :data:`POSTPONED_SINCE`
    attribute, ``now`` if it has none (or one that is no time, or in the future)."""
    attribute = (record.get("messageAttributes") or {}).get(POSTPONED_SINCE) or {}
    try:
        since = float(attribute.get("stringValue", now))
    except (AttributeError, TypeError, ValueError):
        return now
    return min(since, now) if math.isfinite(since) else now


def _receives(record: Mapping[str, Any]) -> int:
    try:
        return int((record.get("attributes") or {}).get("ApproximateReceiveCount", 1))
    except (TypeError, ValueError):
        return 1
