"""The queues of the pipeline: one definition for deployment and local runs.

``infra/`` deploys exactly these, and the local Lambda runner creates and
polls exactly these; nothing else spells a queue name, a dead-letter queue,
a maximum receive count or a visibility timeout.  Names get a per-stage
prefix (``FMN_QUEUE_PREFIX``, default ``fmn-``).
"""

from __future__ import annotations

from dataclasses import dataclass

#: How long a dead-letter queue keeps a message: SQS's longest retention, so
#: dead letters outlive the messages of their source queue.
DLQ_RETENTION_S = 14 * 24 * 3600

#: The delivery backends, each with its own notifications queue.
BACKENDS: tuple[str, ...] = ("email", "irc", "sse", "matrix")


@dataclass(frozen=True)
class QueueDef:
    #: logical name (``incoming``, ``email``, ...); the SQS name is prefix + name
    name: str
    #: the function fed by this queue (``None``: nothing consumes it yet)
    function: str | None
    #: how long a received message stays invisible (must exceed the function's timeout)
    visibility_timeout_s: int
    #: receives before a message moves to the dead-letter queue
    max_receive_count: int
    #: event source mapping: records per invocation and how long to gather them
    batch_size: int
    batching_window_s: int
    #: the most concurrent invocations of the function for this queue.  On AWS
    #: the event source mapping's MaximumConcurrency must be 2 or more, so
    #: infra deploys 1 as the function's reserved concurrency instead.
    max_concurrency: int
    #: how long messages are kept (SQS maximum: 14 days)
    retention_s: int = 4 * 24 * 3600
    #: a backend queue: the most notifications the match function packs into
    #: one SQS message, so that a slow sender gets through one within its
    #: timeout (``None``: as many as fit in 256 KiB)
    notifications_per_message: int | None = None

    def sqs_name(self, prefix: str) -> str:
        return f"{prefix}{self.name}"

    def dlq_name(self, prefix: str) -> str:
        return f"{prefix}{self.name}-dlq"


QUEUES: tuple[QueueDef, ...] = (
    QueueDef("incoming", "match", visibility_timeout_s=60, max_receive_count=5,
             batch_size=100, batching_window_s=1, max_concurrency=20),
    # SES sends 14+ mails/s per account by default: 200 fit in one timeout.
    QueueDef("email", "send_email", visibility_timeout_s=120, max_receive_count=5,
             batch_size=10, batching_window_s=1, max_concurrency=10,
             notifications_per_message=200),
    # One IRC connection respects the network's flood limits: concurrency 1.
    # At 2 lines/s, 50 notifications are at most half a minute of lines.
    # Its reserved concurrency of 1 throttles the event source mapping, and a
    # throttled batch still counts a receive (AWS advises at least 5): 20 keep
    # a paced backlog out of the dead-letter queue.  (A batch out of time is
    # requeued as a fresh message: it uses up no receive.)
    QueueDef("irc", "send_irc", visibility_timeout_s=300, max_receive_count=20,
             batch_size=10, batching_window_s=1, max_concurrency=1,
             notifications_per_message=50),
    # (AWS requires a batching window of at least 1 s above 10 records.)
    QueueDef("sse", "sse", visibility_timeout_s=60, max_receive_count=5,
             batch_size=100, batching_window_s=1, max_concurrency=5),
    # One bot account: its homeserver rate-limits it as a whole, so concurrency 1
    # keeps each room in order.  The sender waits out M_LIMIT_EXCEEDED within
    # its timeout: 100 notifications at a few a second fit in one visibility timeout.
    QueueDef("matrix", "send_matrix", visibility_timeout_s=300, max_receive_count=5,
             batch_size=10, batching_window_s=1, max_concurrency=1,
             notifications_per_message=100),
)


def queue(name: str) -> QueueDef:
    for q in QUEUES:
        if q.name == name:
            return q
    raise KeyError(f"no queue named {name!r}; known: {', '.join(q.name for q in QUEUES)}")


def idempotency_window_s(queues: tuple[QueueDef, ...] = QUEUES) -> int:
    """How long a sender must remember a send so that nothing it sent is sent again.

    A record can carry a notification that was already sent for as long as
    the record itself exists: in its queue, then in the dead-letter queue
    (SQS counts a dead letter's retention from its *first* enqueue), and,
    re-driven at the last moment, once more for a whole queue retention in
    its source queue (a redrive enqueues it afresh).  A postponed record
    (:mod:`fmn.pipeline.redelivery`) goes round as fresh messages for up to
    :data:`~fmn.pipeline.redelivery.MAX_POSTPONED_S` after its first sends;
    the last of them may wait a queue retention, and the sender then puts it
    on the dead-letter queue itself, a fresh message whose retention starts
    there.  So the window is a day plus the dead-letter retention plus twice
    the longest queue retention (23 days): one redrive at any time while SQS
    still holds the dead letter sends nothing twice.  (A dead letter of the
    incoming queue, re-driven, is matched and sent within the same bound.)
    What it does not cover: a redriven record starts its postponement clock
    again (:mod:`fmn.ops.dlq`), so one postponed again after a late redrive,
    or dead-lettered and redriven a second time, can outlive the window, and
    what it had sent before may then go again (at least once, as after a lost
    send-once record).  ``docs/notification-payload.md`` states it.
    """
    from fmn.pipeline.redelivery import MAX_POSTPONED_S

    longest = max(q.retention_s for q in queues)
    return MAX_POSTPONED_S + longest + DLQ_RETENTION_S + longest
