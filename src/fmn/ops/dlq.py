"""The dead-letter queues: what is in them, and sending it back, losing nothing.

Every queue of :mod:`fmn.pipeline.queues` has a dead-letter queue.  Two kinds
of bodies end up there:

* on ``incoming``, bus envelopes (:mod:`fmn.pipeline.envelope`) that SQS moved
  after the match function failed them ``maxReceiveCount`` times;
* on a backend queue, notification payloads (:mod:`fmn.pipeline.notifications`):
  either moved by SQS the same way, or put there by a sender, one
  notification alone with an ``"error"`` (and an ``error`` message attribute).

:func:`peek` reads up to N of them and makes them visible again at once
(``ChangeMessageVisibility`` to 0): looking loses nothing and leaves them
where they were.  :func:`describe` turns one into a readable line: the bus
message id, topic, the reason, the receive count; message content is
untrusted (it comes from the bus), so every field is cleaned of control and
escape characters and shortened.  :func:`redrive` moves them back to their
source queue: with ``StartMessageMoveTask`` where the endpoint has it (AWS,
LocalStack), otherwise (the moto server) by a batched move that sends each
batch to the source queue before deleting exactly the messages SQS accepted,
so a failure midway leaves every message in one queue or the other (at
worst in both: the senders' idempotency makes that harmless).  A backend
queue's dead letters always go by the batched move, which drops their
postponement clock (:data:`~fmn.pipeline.redelivery.POSTPONED_SINCE`):
``StartMessageMoveTask`` keeps every attribute, and a record postponed once
before it failed would go straight back to the dead-letter queue at its
next postponement, a day after the first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC
from typing import Any

import orjson

from fmn.delivery.text import clean, shorten
from fmn.pipeline.match import batches_by_size
from fmn.pipeline.queues import BACKENDS, QUEUES, QueueDef
from fmn.pipeline.redelivery import POSTPONED_SINCE, REASON, reason_of

log = logging.getLogger(__name__)

SQS_BATCH_MAX = 10
#: the attributes a redrive does not carry back (:func:`_sendable`)
_DROPPED_ON_REDRIVE = frozenset({POSTPONED_SINCE, REASON})
#: how long a message being read or moved stays invisible to others
_HOLD_S = 60
#: the answers of an endpoint without ``StartMessageMoveTask`` (the moto server answers
#: 500 with an HTML page); the batched move is correct wherever it runs, only slower
_UNSUPPORTED = {"InvalidAction", "UnsupportedOperation", "NotImplemented",
                "AWS.SimpleQueueService.UnsupportedOperation", "InternalFailure",
                "InternalError", "404", "500", "501"}


class DlqError(Exception):
    """A dead-letter queue cannot be read or moved; the message says what to do."""


@dataclass(frozen=True)
class Dlq:
    """One queue's dead-letter queue, and how many messages it holds."""

    queue: QueueDef
    name: str
    url: str
    arn: str
    source_url: str
    source_arn: str
    #: visible messages, and messages being read or moved right now
    visible: int = 0
    in_flight: int = 0

    @property
    def messages(self) -> int:
        return self.visible + self.in_flight


@dataclass(frozen=True)
class DeadLetter:
    """A dead-lettered message, readable (every text field cleaned and shortened)."""

    sqs_message_id: str
    #: ``envelope`` (a bus message), ``notifications`` (a payload) or ``unreadable``
    kind: str
    bus_message_id: str
    topic: str
    reason: str
    #: times SQS handed it out before this look (moved by SQS: its source's
    #: receives; put there by a sender: 0)
    receive_count: int
    #: a payload's recipients (``user`` names), empty for a bus envelope
    recipients: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"sqs_message_id": self.sqs_message_id, "kind": self.kind,
                "bus_message_id": self.bus_message_id, "topic": self.topic,
                "reason": self.reason, "receive_count": self.receive_count,
                "recipients": list(self.recipients)}


@dataclass(frozen=True)
class RedriveResult:
    moved: int
    #: ``StartMessageMoveTask`` or ``batched move``
    method: str
    #: messages still in the dead-letter queue after the move
    left: int


def _text(value: Any, cap: int = 200) -> str:
    return shorten(clean(value), cap) if value is not None else "-"


def _counts_answer(sqs: Any, url: str) -> dict[str, Any]:
    """GetQueueAttributes for the visible and in-flight counts, the whole answer."""
    answer: dict[str, Any] = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages",
                                      "ApproximateNumberOfMessagesNotVisible"])
    return answer


def _attributes(sqs: Any, url: str, answer: dict[str, Any] | None = None) -> tuple[int, int]:
    attrs = (answer or _counts_answer(sqs, url))["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]), \
        int(attrs["ApproximateNumberOfMessagesNotVisible"])


def _url_arn(sqs: Any, name: str) -> tuple[str, str]:
    try:
        url: str = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    except sqs.exceptions.QueueDoesNotExist:
        raise DlqError(f"queue {name} does not exist (is FMN_QUEUE_PREFIX right, and the "
                       "stack deployed?)") from None
    arn: str = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    return url, arn


def find(sqs: Any, prefix: str, name: str, queues: Iterable[QueueDef] = QUEUES) -> Dlq:
    """A dead-letter queue by its queue's logical name (``email``), SQS name
    (``fmn-email``) or its own name (``fmn-email-dlq``), with its counts."""
    for q in queues:
        if name in (q.name, q.sqs_name(prefix), q.dlq_name(prefix)):
            url, arn = _url_arn(sqs, q.dlq_name(prefix))
            source_url, source_arn = _url_arn(sqs, q.sqs_name(prefix))
            visible, in_flight = _attributes(sqs, url)
            return Dlq(q, q.dlq_name(prefix), url, arn, source_url, source_arn,
                       visible, in_flight)
    known = ", ".join(q.name for q in queues)
    raise DlqError(f"no queue named {name!r} (known: {known}; with the prefix "
                   f"{prefix!r} or -dlq also accepted)")


def list_dlqs(sqs: Any, prefix: str, queues: Iterable[QueueDef] = QUEUES) -> list[Dlq]:
    """Every queue's dead-letter queue with its counts."""
    return [find(sqs, prefix, q.name, (q,)) for q in queues]


def describe(queue: QueueDef, message: dict[str, Any]) -> DeadLetter:
    """What a dead-lettered SQS message (as ``ReceiveMessage`` returns it) is, readably."""
    sqs_id = str(message.get("MessageId", "-"))
    count = max(0, int(message.get("Attributes", {}).get("ApproximateReceiveCount", 1)) - 1)
    attribute = reason_of(message)
    moved = (f"failed {count} receives (the queue's limit is {queue.max_receive_count})"
             if count else "moved here after repeated failures")
    body = message.get("Body", "")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = None
    if not isinstance(doc, dict) or "notifications" not in doc and (
            queue.name == "incoming" or "bus" in doc):
        # a bus envelope (what the incoming queue carries), or not even JSON
        bus_id, topic, reason = _describe_envelope(body)
        return DeadLetter(sqs_id, "envelope" if reason is None else "unreadable",
                          _text(bus_id), _text(topic), _text(reason or attribute or moved, 300),
                          count)
    try:
        info = doc["message"]
        users = tuple(_text(n.get("user"), 64) for n in doc.get("notifications", ())
                      if isinstance(n, dict))
        reason = doc.get("error") or attribute or moved
        return DeadLetter(sqs_id, "notifications", _text(info.get("id")),
                          _text(info.get("topic")), _text(reason, 300), count, users)
    except (KeyError, TypeError, AttributeError) as exc:
        return DeadLetter(sqs_id, "unreadable", "-", "-",
                          _text(f"not a notification payload ({type(exc).__name__}); "
                                f"{attribute or moved}", 300), count)


def _describe_envelope(body: str) -> tuple[Any, Any, str | None]:
    """(bus message id, topic, why it cannot be matched or None)."""
    from fmn.pipeline.envelope import Envelope, InvalidEnvelope

    try:
        env = Envelope.decode(body)
    except InvalidEnvelope as exc:
        return None, None, f"not a bus envelope: {exc}"
    if env.claim is not None:  # a large record, in the claim bucket
        return None, f"(record in s3://{env.claim.bucket}/{env.claim.key})", None
    try:
        record = orjson.loads(env.record or b"")
    except orjson.JSONDecodeError:
        return None, None, "the record is not JSON"
    if not isinstance(record, dict):
        return None, None, "the record is not a JSON object"
    from fmn.errors import InvalidMessage
    from fmn.metadata._fields import message_id

    # the id every stage uses: fedmsg's msg_id, fedora-messaging's id, or (a
    # fedmsg envelope without one) the id derived from the record's content
    key = "msg_id" if env.bus == "fedmsg" else "id"
    try:
        bus_id: Any = message_id(record.get(key), record, key)
    except InvalidMessage as exc:
        return record.get(key), record.get("topic"), f"not a bus message: {exc}"
    return bus_id, record.get("topic"), None


def _release(sqs: Any, url: str, handles: list[str]) -> None:
    """Make received messages visible again at once."""
    for start in range(0, len(handles), SQS_BATCH_MAX):
        chunk = handles[start:start + SQS_BATCH_MAX]
        response = sqs.change_message_visibility_batch(QueueUrl=url, Entries=[
            {"Id": str(i), "ReceiptHandle": h, "VisibilityTimeout": 0}
            for i, h in enumerate(chunk)])
        for failure in response.get("Failed", []):
            log.warning("message stays invisible for up to %ds: %s", _HOLD_S,
                        failure.get("Message", failure.get("Code")))


def _receive(sqs: Any, url: str, count: int, wait_s: int = 1) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=min(SQS_BATCH_MAX, count), WaitTimeSeconds=wait_s,
        VisibilityTimeout=_HOLD_S, MessageSystemAttributeNames=["All"],
        MessageAttributeNames=["All"]).get("Messages", [])
    return messages


def peek(sqs: Any, dlq: Dlq, limit: int = 10) -> list[DeadLetter]:
    """Up to ``limit`` dead letters, left in the queue and visible again."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    seen: dict[str, dict[str, Any]] = {}
    handles: list[str] = []
    try:
        while len(seen) < limit:
            batch = _receive(sqs, dlq.url, limit - len(seen))
            handles += [m["ReceiptHandle"] for m in batch]
            new = [m for m in batch if m["MessageId"] not in seen]
            if not new:
                break
            seen.update((m["MessageId"], m) for m in new)
    finally:
        _release(sqs, dlq.url, handles)
    return [describe(dlq.queue, m) for m in seen.values()]


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", "")) or \
        str(response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


def redrive(sqs: Any, dlq: Dlq, progress: Callable[[int], None] | None = None,
            timeout_s: float = 600.0) -> RedriveResult:
    """Move every message of ``dlq`` back to its source queue."""
    from botocore.exceptions import ClientError

    if dlq.queue.name in BACKENDS:  # not StartMessageMoveTask (module docstring)
        moved = _batched_move(sqs, dlq, progress)
        return RedriveResult(moved, "batched move", sum(_attributes(sqs, dlq.url)))
    try:
        handle = sqs.start_message_move_task(SourceArn=dlq.arn,
                                             DestinationArn=dlq.source_arn)["TaskHandle"]
    except ClientError as exc:
        if _error_code(exc) not in _UNSUPPORTED:
            raise DlqError(f"StartMessageMoveTask refused: {exc}") from exc
        log.info("no StartMessageMoveTask here (%s): moving in batches", _error_code(exc))
        moved = _batched_move(sqs, dlq, progress)
        return RedriveResult(moved, "batched move", sum(_attributes(sqs, dlq.url)))
    moved = _wait_for_task(sqs, dlq, handle, progress, timeout_s)
    return RedriveResult(moved, "StartMessageMoveTask", sum(_attributes(sqs, dlq.url)))


def _wait_for_task(sqs: Any, dlq: Dlq, handle: str, progress: Callable[[int], None] | None,
                   timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        tasks = sqs.list_message_move_tasks(SourceArn=dlq.arn, MaxResults=10)["Results"]
        task = next((t for t in tasks if t.get("TaskHandle") == handle), tasks[0] if tasks
                    else {})
        moved = int(task.get("ApproximateNumberOfMessagesMoved", 0))
        status = task.get("Status", "RUNNING")
        if progress is not None:
            progress(moved)
        if status == "COMPLETED":
            return moved
        if status in ("FAILED", "CANCELLED", "CANCELLING"):
            raise DlqError(f"the move task {status.lower()} after {moved} messages: "
                           f"{task.get('FailureReason', 'no reason given')}")
        if time.monotonic() > deadline:
            raise DlqError(f"the move task is still running after {timeout_s:.0f}s "
                           f"({moved} moved); it goes on: fmn dlq list shows what is left")
        time.sleep(0.5)


def _sendable(attributes: dict[str, Any]) -> dict[str, Any]:
    """Message attributes as ``SendMessage`` takes them (no empty list fields), but for
    the postponement clock (a redriven record starts again: module docstring) and the
    reason it was dead-lettered (if it comes back, the reason must be the new one)."""
    out = {}
    for name, value in attributes.items():
        if name in _DROPPED_ON_REDRIVE:
            continue
        kept = {k: v for k, v in value.items()
                if k in ("DataType", "StringValue", "BinaryValue") and v is not None}
        out[name] = kept
    return out


def _batched_move(sqs: Any, dlq: Dlq, progress: Callable[[int], None] | None) -> int:
    """Send each batch to the source queue, then delete what SQS accepted.

    Moves at most the messages the dead-letter queue held when it began, and
    never a copy it sent itself: a message that still fails for good comes
    straight back, and would otherwise be moved round forever.  A copy that
    came back is held (kept invisible) while the move goes on with the
    others, and is visible again in the dead-letter queue when it ends: one
    bad notification among thousands does not keep the rest there.  A copy
    comes back under the id SQS gave it when SQS moves it after its receives
    (SQS keeps a message's id), or under a new id, with its body, when a
    sender dead-letters it itself
    (:meth:`~fmn.pipeline.redelivery.Redelivery.dead_letter`): then it carries
    a notification of a copy sent (:func:`_digest`), on a message SQS took
    after the move began, by SQS's own clock (:func:`_sqs_now`; a copy back
    within the second the move began in is taken for an older dead letter and
    moved once more).  Two dead letters with the same body that were there
    before are two messages, and both move.
    """
    first = _counts_answer(sqs, dlq.url)
    # every dead letter there before the move was sent before this (one second later
    # than SQS's answer said: its Date header has whole seconds)
    after = _sqs_now(first) + 1
    limit = sum(_attributes(sqs, dlq.url, first))
    moved = 0
    empty_receives = 0
    sent_ids: set[str] = set()  # the ids SQS gave the copies this move sent
    sent_bodies: set[bytes] = set()  # and what their bodies carry (_digest)
    held: dict[str, dict[str, Any]] = {}  # copies come back, by id: their latest receipt

    def returned(m: dict[str, Any]) -> bool:
        if m.get("MessageId") in sent_ids or m.get("MessageId") in held:
            return True
        sent_at = int(m.get("Attributes", {}).get("SentTimestamp", 0)) / 1000
        return sent_at >= after and not _digest(m["Body"]).isdisjoint(sent_bodies)

    try:
        while empty_receives < 2 and moved < limit:
            # one empty answer can be a sampling miss; an answer of held copies alone
            # (they come back every _HOLD_S) counts as empty too, or copies coming back
            # in turn would keep the move going for ever.  Copies seen for the first
            # time do not: they are bounded by the notifications moved, and while they
            # come back faster than the rest move they would end the move early
            batch = _receive(sqs, dlq.url, min(SQS_BATCH_MAX, limit - moved))
            again = [m for m in batch if returned(m)]
            first_seen = any(m["MessageId"] not in held for m in again)
            held.update((m["MessageId"], m) for m in again)
            batch = [m for m in batch if m not in again]
            if not batch:
                empty_receives = 0 if first_seen else empty_receives + 1
                continue
            empty_receives = 0
            moved = _move_batch(sqs, dlq, batch, moved, sent_ids, sent_bodies, progress)
    finally:
        if held:
            log.warning("%d dead letters came back while being moved (they fail again at "
                        "once): left in %s", len(held), dlq.name)
            _release_quietly(sqs, dlq, list(held.values()))
    return moved


def _move_batch(sqs: Any, dlq: Dlq, batch: list[dict[str, Any]], moved: int,
                sent_ids: set[str], sent_bodies: set[bytes],
                progress: Callable[[int], None] | None) -> int:
    """Send ``batch`` to the source queue and delete what SQS took: ``moved`` plus those
    (DlqError, with the rest of the batch visible again at once, on any failure)."""
    entries = [{"MessageBody": m["Body"],
                "MessageAttributes": _sendable(m.get("MessageAttributes", {}))}
               for m in batch]
    # ten bodies of up to 250 KiB each are more than one request takes
    groups = batches_by_size([_entry_bytes(e) for e in entries])
    for n, group in enumerate(groups):
        later = [batch[i] for g in groups[n + 1:] for i in g]  # given back on a failure
        try:
            sent = sqs.send_message_batch(QueueUrl=dlq.source_url, Entries=[
                {"Id": str(i), **entries[i]} for i in group])
        except Exception as exc:  # SQS away: what was not sent is visible again at once
            _release_quietly(sqs, dlq, [*(batch[i] for i in group), *later])
            raise DlqError(f"sending to the source queue failed ({exc}); {moved} moved, "
                           f"the rest stay in {dlq.name}") from exc
        accepted = {int(e["Id"]) for e in sent.get("Successful", [])}
        sent_ids.update(str(e["MessageId"]) for e in sent.get("Successful", [])
                        if e.get("MessageId"))
        done = [batch[i] for i in group if i in accepted]
        refused = [batch[i] for i in group if i not in accepted]
        for m in done:
            sent_bodies |= _digest(m["Body"])
        if done:
            cause: Exception | None = None
            try:
                undeleted, why = _delete(sqs, dlq, done)
            except Exception as exc:
                cause, undeleted, why = exc, len(done), str(exc)
            if undeleted:  # sent: their copies come back, and go twice
                _release_quietly(sqs, dlq, refused + later)
                raise DlqError(f"{moved + len(done)} moved, but deleting {undeleted} "
                               f"of the last {len(done)} from {dlq.name} failed ({why}): "
                               "they come back there within a minute; the senders "
                               "send each notification once") from cause
        moved += len(done)
        if progress is not None:
            progress(moved)
        if refused:
            _release_quietly(sqs, dlq, refused + later)
            reasons = "; ".join(sorted({str(f.get("Message", f.get("Code")))
                                        for f in sent.get("Failed", [])}))
            raise DlqError(f"the source queue refused {len(refused)} messages "
                           f"({reasons}); {moved} moved, the rest stay in {dlq.name}")
    return moved


def _digest(body: str) -> set[bytes]:
    """What a body is, whoever dead-lettered it: the notifications it carries, each as
    (bus message, backend, user, destination, address), hashed (a publisher chooses
    the message id, up to 10,000 characters).  A sender dead-letters one
    notification of a payload alone, with a new ``error``, one more ``dead_letters``
    and a part of its own (:func:`fmn.delivery.base.dead_letter_body`), so a copy that
    comes back is known by any notification it shares with a body sent.  A body that
    is no payload is its own digest."""
    import hashlib

    from fmn.delivery.base import deliveries

    try:
        doc = orjson.loads(body)
        items = deliveries(body, str(doc["backend"])) if isinstance(doc, dict) else []
    except Exception:  # noqa: BLE001 - not a payload: the body is what it is
        items = []
    if not items:
        return {hashlib.sha256(body.encode("utf-8", "surrogatepass")).digest()}
    return {hashlib.sha256(orjson.dumps(
        [i.message_id, i.backend, i.user, i.destination, i.address])).digest()
        for i in items}


def _sqs_now(answer: dict[str, Any]) -> float:
    """SQS's time when it answered (its ``Date`` header, whole seconds); this machine's
    if the answer has none."""
    from email.utils import parsedate_to_datetime

    date = answer.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    try:
        if not date:
            return time.time()
        when = parsedate_to_datetime(date)
        # "-0000" and asctime dates parse naive: they are UTC (RFC 5322), not local time
        return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    except (TypeError, ValueError):
        return time.time()


def _delete(sqs: Any, dlq: Dlq, messages: list[dict[str, Any]]) -> tuple[int, str]:
    """Delete ``messages`` from the dead-letter queue, trying the entries SQS failed
    once more: how many it still failed, and why (raises what the client raises)."""
    why = ""
    for attempt in (1, 2):
        try:
            answer = sqs.delete_message_batch(QueueUrl=dlq.url, Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                for i, m in enumerate(messages)])
        except Exception as exc:
            if attempt == 1:
                raise
            return len(messages), f"{why}; then {exc}"
        failed = answer.get("Failed", [])
        if not failed:
            return 0, ""
        why = "; ".join(sorted({str(f.get("Message", f.get("Code"))) for f in failed}))
        messages = [messages[int(f["Id"])] for f in failed]
    return len(messages), why


def _release_quietly(sqs: Any, dlq: Dlq, messages: list[dict[str, Any]]) -> None:
    """:func:`_release`, on the way out of a failure (they come back in a minute anyway)."""
    try:
        _release(sqs, dlq.url, [m["ReceiptHandle"] for m in messages])
    except Exception as exc:
        log.warning("%d messages stay invisible in %s for up to %ds: %s", len(messages),
                    dlq.name, _HOLD_S, exc)


def _entry_bytes(entry: dict[str, Any]) -> int:
    """What a SendMessageBatch entry counts towards the request's size: its body and
    its attributes' names, types and values."""
    size = len(entry["MessageBody"].encode())
    for name, value in entry.get("MessageAttributes", {}).items():
        size += len(name.encode()) + sum(len(str(v).encode()) for v in value.values())
    return size
