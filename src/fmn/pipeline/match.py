"""The match function's core: one incoming SQS body in, per-backend SQS bodies out.

:func:`match_record` decodes the bus envelope (:mod:`fmn.pipeline.envelope`),
fetches the record from S3 through the ``fetch_claim`` port when the
envelope carries a claim check (and checks its size and SHA-256), normalises
the record once (:func:`fmn.metadata.parse`), matches it, groups the
notifications by backend and packs them (:func:`fmn.pipeline.notifications.pack`).
It does no cloud I/O itself: the edge (``functions/match/app.py``) supplies
the port and sends the bodies.  Errors are typed for the edge:
:class:`~fmn.errors.PermanentError` for bad input (invalid envelope, invalid
record, a claim that does not verify: the record fails alone and goes to the
dead-letter queue after the queue's maximum receives) and
:class:`~fmn.errors.RetryableError` for dependencies (the snapshot store, S3).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from fmn.errors import FmnError, PermanentError, RetryableError
from fmn.matcher.base import Matcher, Notification
from fmn.message import Message
from fmn.metadata import parse
from fmn.pipeline.envelope import Claim, Envelope
from fmn.pipeline.notifications import pack_counted
from fmn.pipeline.queues import BACKENDS, queue

log = logging.getLogger(__name__)

#: A claim-checked record larger than this is refused before it is fetched
#: (a hostile envelope must not make the function read gigabytes).
MAX_CLAIM_BYTES = 32 * 1024 * 1024

FetchClaim = Callable[[Claim], bytes]


class InvalidClaim(PermanentError):
    """A claim check whose object is not the one the envelope describes."""


@dataclass
class MatchResult:
    """What one incoming record gave."""

    message_id: str
    topic: str
    #: backend -> SQS bodies for that backend's queue (backends with none left out)
    bodies: dict[str, list[str]] = field(default_factory=dict)
    #: backend -> number of notifications in those bodies
    notifications: dict[str, int] = field(default_factory=dict)
    #: whether the record came from S3 (claim check)
    claimed: bool = False
    #: the parsed message (the preview window records it)
    message: Message | None = None
    #: backend -> the notifications packed into ``bodies`` (the ledger's journal reads them)
    recipients: dict[str, list[Notification]] = field(default_factory=dict)
    #: backend -> how many notifications each of ``bodies`` carries
    counts: dict[str, list[int]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.notifications.values())


def fetch_verified(claim: Claim, fetch_claim: FetchClaim) -> bytes:
    """The claim-checked record, verified; retryable if the port fails."""
    if claim.size > MAX_CLAIM_BYTES:
        raise InvalidClaim(f"claimed record of {claim.size} bytes exceeds {MAX_CLAIM_BYTES}")
    try:
        data = fetch_claim(claim)
    except FmnError:
        raise
    except Exception as exc:  # the port's own failure: S3 away, object missing, ...
        raise RetryableError(f"fetching s3://{claim.bucket}/{claim.key}: {exc!r}") from exc
    if len(data) != claim.size:
        raise InvalidClaim(f"s3://{claim.bucket}/{claim.key} has {len(data)} bytes, "
                           f"the claim says {claim.size}")
    if hashlib.sha256(data).hexdigest() != claim.sha256.lower():
        raise InvalidClaim(f"s3://{claim.bucket}/{claim.key} does not match the claim's SHA-256")
    return data


def group_by_backend(notifications: list[Notification]) -> dict[str, list[Notification]]:
    """The notifications per backend, each list keeping the matcher's order."""
    groups: dict[str, list[Notification]] = {}
    for n in notifications:
        groups.setdefault(n.protocol, []).append(n)
    for backend in [b for b in groups if b not in BACKENDS]:
        # The preferences only allow known protocols; a stray one is a bug
        # upstream, not a reason to lose everybody else's notifications.
        log.error("dropping %d notifications for unknown backend %r",
                  len(groups.pop(backend)), backend)
    return groups


def match_record(body: str | bytes, matcher: Matcher, fetch_claim: FetchClaim,
                 max_notifications: int | None = None) -> MatchResult:
    """Decode, parse, match, group and pack one incoming SQS body.

    A message that changes who owns a package (the live ownership update) is
    the edge's to apply, and only once every payload of its record was
    accepted: the message goes to the owners it names as before, and a
    record that comes back is matched again on those same owners.
    """
    envelope = Envelope.decode(body)  # InvalidEnvelope is a PermanentError
    if envelope.claim is not None:
        record = fetch_verified(envelope.claim, fetch_claim)
    else:
        assert envelope.record is not None  # decode guarantees one of the two
        record = envelope.record
    message = parse(record)  # InvalidMessage is a PermanentError
    try:
        notifications = matcher.match(message)
    except FmnError:
        raise  # SnapshotUnavailable is already retryable
    except Exception as exc:  # the snapshot store (Redis) failing mid-poll
        raise RetryableError(f"matching {message.id}: {exc!r}") from exc
    result = MatchResult(message_id=message.id, topic=message.topic,
                         claimed=envelope.claim is not None, message=message)
    for backend, group in group_by_backend(notifications).items():
        cap = max_notifications or queue(backend).notifications_per_message
        packed = pack_counted(message, group, backend, max_notifications=cap,
                              describe=matcher.describe)
        result.bodies[backend] = [body for body, _ in packed]
        result.counts[backend] = [n for _, n in packed]
        result.notifications[backend] = len(group)
        result.recipients[backend] = group
    return result


#: SendMessageBatch limits: entries per request, and bytes per request.
SEND_BATCH_ENTRIES = 10
SEND_BATCH_BYTES = 256 * 1024


def send_batches(bodies: Sequence[str]) -> list[list[int]]:
    """The positions of ``bodies`` grouped into SendMessageBatch requests.

    Each request holds at most 10 bodies and 256 KiB, in order; the edge
    sends the bodies of every record of an invocation together, so a batch
    of small payloads costs one request per ten, not one per record.
    """
    return batches_by_size([len(body.encode()) for body in bodies])


def batches_by_size(sizes: Sequence[int]) -> list[list[int]]:
    """:func:`send_batches` of entries of these sizes (bytes)."""
    batches: list[list[int]] = []
    batch: list[int] = []
    used = 0
    for i, size in enumerate(sizes):
        if batch and (len(batch) >= SEND_BATCH_ENTRIES or used + size > SEND_BATCH_BYTES):
            batches.append(batch)
            batch, used = [], 0
        batch.append(i)
        used += size
    if batch:
        batches.append(batch)
    return batches
