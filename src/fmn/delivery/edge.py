"""The Lambda edge every sender shares: lazy clients, batch processing, dead letters, metrics.

A sender's ``app.py`` builds one :class:`SenderFunction` with its backend and
a ``make_send(settings) -> Send`` factory, and its Chalice handler calls
:meth:`SenderFunction.handle` with the raw SQS event and the context.  Each
record is one payload (:func:`fmn.delivery.base.deliver_payload`): a
retryable failure reports it in ``batchItemFailures`` and backs it off (it
comes back after a growing delay, its delivered items are skipped:
:mod:`fmn.pipeline.redelivery`); an unreadable payload goes to the
dead-letter queue at once; a postponed one (:class:`~fmn.errors.Postponed`)
goes back on its queue as a fresh message; an item that cannot be sent goes
alone to the dead-letter queue (with the reason as a message attribute) and
is counted.  A sender built with ``deadline_margin_s`` watches its
invocation's deadline (the context's remaining time): it starts no record,
and no item, that close to it, and the rest goes back on its queue as a
fresh message the same way (:class:`~fmn.errors.Postponed`; what was sent is
remembered and skipped when it comes back), so an invocation never runs past
its timeout while its records are handed out again, which would send them
twice.  Metrics (Powertools EMF, names in :mod:`fmn.pipeline.alarms`): each
outcome's count (``Sent``, ``DeadLettered``, ``RetryableFailures``...) and
the bus-to-send latency of what was sent; every log line of a record carries
its bus message id as the correlation id.  Nothing is built at import.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Protocol

from fmn import emf
from fmn.delivery.base import (
    DeadLetter,
    Delivery,
    Send,
    TimeUp,
    dead_letter_body,
    deliver_payload,
    seconds_left,
    time_up,
)
from fmn.delivery.once import Once, PowertoolsOnce, sends_prefix
from fmn.errors import PermanentError, Postponed, RetryableError
from fmn.message import sent_time
from fmn.pipeline.alarms import BUS_TO_SEND_LATENCY
from fmn.pipeline.notifications import unpack_all
from fmn.pipeline.queues import queue
from fmn.pipeline.redelivery import Redelivery, reason_attributes
from fmn.settings import Settings

#: bus-to-send latencies recorded per flush: Powertools flushes a metric by itself, with
#: print(), when it reaches 100 values, which would bypass a local run's log file
LATENCY_SAMPLE = 99


class SenderFunction:
    """One sender Lambda's shared state and its SQS handler."""

    def __init__(self, backend: str, make_send: Callable[[Settings], Send],
                 service: str | None = None, deadline_margin_s: float | None = None) -> None:
        from aws_lambda_powertools import Logger
        from aws_lambda_powertools.metrics import EphemeralMetrics

        self.backend = backend
        self.make_send = make_send
        #: start no record or item this close to the invocation's deadline (None: no watch)
        self.deadline_margin_s = deadline_margin_s
        self.service = service or f"fmn-send-{backend}"
        self.logger = Logger(service=self.service)
        # its own metric set: Powertools' Metrics share one across a process's instances
        self.metrics = EphemeralMetrics(namespace="FMN", service=self.service)
        #: totals since the process started (the local stack's status reads them)
        self.totals: Counter[str] = Counter()
        self._state: dict[str, Any] = {}
        self._lock = threading.Lock()

    # -- state, built on first use and kept across warm invocations ----------

    def reset(self) -> None:
        """Forget settings, clients and the send callable (tests, new settings)."""
        with self._lock:
            self._state.clear()

    def get(self, name: str) -> Any:
        if not self._state:
            with self._lock:
                if not self._state:
                    self._build()
        return self._state[name]

    def _build(self) -> None:
        from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers

        from fmn.aws import client
        from fmn.redisconn import connect

        copy_config_to_registered_loggers(source_logger=self.logger, include={"fmn"})
        s = Settings.from_env()
        redis_client = connect(s.redis_url, socket_timeout=5, socket_connect_timeout=5)
        sqs = client("sqs", s)
        self._state.update(settings=s, sqs=sqs, redis=redis_client,
                           redelivery=Redelivery(sqs, s.first_retry_delay_s),
                           # keys per stage: stages may share one Redis
                           once=PowertoolsOnce(redis_client, s.idempotency_ttl_s,
                                               name=sends_prefix(s.queue_prefix, self.backend)),
                           send=self.make_send(s), dlq_url=None)

    @property
    def settings(self) -> Settings:
        settings: Settings = self.get("settings")
        return settings

    @property
    def once(self) -> Once:
        once: Once = self.get("once")
        return once

    def count(self, counts: Counter[str]) -> None:
        """Add to the totals and the metrics (work done outside :meth:`handle`)."""
        from aws_lambda_powertools.metrics import MetricUnit

        counts = +counts  # only what happened
        if not counts:
            return
        with self._lock:
            self.totals.update(counts)
            for name, value in sorted(counts.items()):
                self.metrics.add_metric(name=_metric_name(name), unit=MetricUnit.Count,
                                        value=value)
            emf.flush(self.metrics)

    def begin(self, context: Any) -> None:
        """Start an invocation: its deadline bounds the in-progress marks of sends."""
        once = self.once
        if isinstance(once, PowertoolsOnce) and context is not None:
            once.register_context(context)

    def dead_letter(self, item: Delivery, reason: str) -> None:
        """Put one item on the backend's dead-letter queue; retryable if SQS refuses."""
        sqs = self.get("sqs")
        try:
            if self._state.get("dlq_url") is None:
                name = queue(self.backend).dlq_name(self.settings.queue_prefix)
                self._state["dlq_url"] = sqs.get_queue_url(QueueName=name)["QueueUrl"]
            sqs.send_message(QueueUrl=self._state["dlq_url"],
                             MessageBody=dead_letter_body(item, reason),
                             MessageAttributes=reason_attributes(reason))
        except Exception as exc:  # botocore errors: the item must not vanish
            raise RetryableError(f"dead-letter queue refused an item: {exc}") from exc
        self.logger.warning("dead-lettered", extra={"user": item.user, "reason": reason[:300],
                                                    "message_id": item.message_id[:200]})

    # -- the handler -----------------------------------------------------------

    def handle(self, event: dict[str, Any], context: Any,
               deliver: Callable[[str, Send, Once, DeadLetter], Counter[str]] | None = None
               ) -> Any:
        """Lambda's SQS handler: a partial batch response.

        ``deliver(body, send, once, dead_letter)`` replaces the per-record
        default (:func:`deliver_payload`) for senders that plan across items.
        """
        from aws_lambda_powertools.utilities.batch import (
            BatchProcessor,
            EventType,
            process_partial_response,
        )
        from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

        counts: Counter[str] = Counter()
        latencies: list[float] = []
        self.begin(context)
        once, send = self.once, self.get("send")
        redelivery: Redelivery = self.get("redelivery")
        out_of_time = self.out_of_time(context)
        if out_of_time is not None:
            send = Watched(send, out_of_time)

        def took(done: Counter[str], sent_at: list[str]) -> None:
            """Count what a record did; what it sent gives bus-to-send latencies."""
            counts.update(done)
            if done.get("sent"):
                latencies.extend(ms for ms in map(_since_ms, sent_at) if ms is not None)

        def record_handler(record: Any) -> None:
            message_id, sent_at = _message_of(record.body)
            # every log line of this record names the bus message it is about
            self.logger.set_correlation_id(message_id)
            try:
                if out_of_time is not None and out_of_time():
                    raise Postponed(f"{self.backend} sender out of time for this record")
                if deliver is None:
                    done = deliver_payload(record.body, self.backend, send, once,
                                           self.dead_letter)
                else:
                    done = deliver(record.body, send, once, self.dead_letter)
                took(done, sent_at)
            except Postponed as exc:
                # what the record did before is done, and counted: it is skipped later
                took(exc.done, sent_at)
                # the rest waits as a fresh message: waiting uses up no receive
                try:
                    requeued = redelivery.postpone(record.raw_event, str(exc), exc.delay_s)
                except Exception as requeue_failed:  # botocore: back off like a failure
                    raise RetryableError(f"{exc}; requeue failed: {requeue_failed}") \
                        from requeue_failed
                if requeued:
                    counts["postponed"] += 1
                    self.logger.info("record postponed", extra={
                        "sqs_message_id": record.message_id, "reason": str(exc)[:300]})
                else:  # it has waited too long: an operator looks at it
                    counts["PermanentFailures"] += 1
                    self.logger.warning("record dead-lettered", extra={
                        "sqs_message_id": record.message_id,
                        "error": f"postponed too long: {exc}"[:500]})
            except PermanentError as exc:
                # nothing can read it: retrying cannot help, so it ends now
                counts["PermanentFailures"] += 1
                self.logger.warning("record dead-lettered", extra={
                    "sqs_message_id": record.message_id, "error": str(exc)[:500]})
                try:
                    redelivery.dead_letter(record.raw_event, str(exc))
                except Exception as dlq_failed:  # botocore: it comes back, nothing lost
                    raise RetryableError(f"dead-letter queue refused a record: {dlq_failed}") \
                        from dlq_failed
            except Exception as exc:
                counts["RetryableFailures"] += 1
                if isinstance(exc, RetryableError):  # what went before it: done, counted
                    took(exc.done, sent_at)
                self.logger.warning("record failed", extra={
                    "sqs_message_id": record.message_id, "failure": "retryable",
                    "error": str(exc)[:500]})
                raise

        records = event.get("Records", ())
        try:
            try:
                response = process_partial_response(
                    event=event, record_handler=record_handler,
                    processor=BatchProcessor(event_type=EventType.SQS), context=context)
            except BatchProcessingError:  # every record failed
                redelivery.back_off(records)
                raise
            failed = {f["itemIdentifier"] for f in response["batchItemFailures"]}
            if failed:
                redelivery.back_off(r for r in records if r.get("messageId") in failed)
            self.logger.info("batch done", extra={"records": len(records),
                                                  "failed": len(failed),
                                                  "counts": dict(counts)})
            return response
        finally:
            self.count(counts)
            self.record_latency(latencies)
            self.logger.set_correlation_id(None)

    def handle_planned(self, event: dict[str, Any], context: Any) -> Any:
        """:meth:`handle` for a sender that plans across a whole batch (IRC, Matrix):
        its send callable's ``batch(bodies, remaining_s)`` returns the per-record
        ``deliver``, given the seconds the invocation has left (None: no deadline)."""
        planner: Planner = self.get("send")
        plan = planner.batch((record.get("body", "") for record in event.get("Records", ())),
                             remaining_s=seconds_left(context))
        return self.handle(event, context, deliver=plan)

    def out_of_time(self, context: Any) -> TimeUp | None:
        """Whether the invocation is within the margin of its deadline (None: not watched).

        The margin is at most half the time the invocation starts with, so a
        function given a short timeout (a fault test's) still gets work done.
        """
        if self.deadline_margin_s is None:
            return None
        return time_up(context, self.deadline_margin_s)

    def record_latency(self, latencies: list[float]) -> None:
        """Bus-to-send latency (ms) of the payloads just sent, at most
        :data:`LATENCY_SAMPLE` values a flush: a spread over the range, the maximum kept."""
        from aws_lambda_powertools.metrics import MetricUnit

        if not latencies:
            return
        latencies = sorted(latencies)
        step = -(-len(latencies) // (LATENCY_SAMPLE - 1))  # ceiling division
        sample = latencies[:-1:step][:LATENCY_SAMPLE - 1] + [latencies[-1]]
        with self._lock:
            for ms in sample:
                self.metrics.add_metric(name=BUS_TO_SEND_LATENCY,
                                        unit=MetricUnit.Milliseconds, value=ms)
            emf.flush(self.metrics)


class Planner(Protocol):
    """A send callable that also plans a batch (:meth:`SenderFunction.handle_planned`)."""

    def batch(self, bodies: Iterable[str | bytes], remaining_s: Callable[[], float] | None = None
              ) -> Callable[[str, Send, Once, DeadLetter], Counter[str]]: ...


class Watched:
    """``send``, refusing to start an item once out of time (:class:`Postponed`: nothing is
    remembered for it, and the record goes back on its queue).  A ``deliver`` that does
    more than send items (the email sender's digests) asks :attr:`out_of_time` too."""

    def __init__(self, send: Send, out_of_time: TimeUp) -> None:
        self.send = send
        self.out_of_time = out_of_time

    def __call__(self, item: Delivery) -> str | None:
        if self.out_of_time():
            raise Postponed(f"{item.backend} sender out of time: the record's rest comes back")
        return self.send(item)


def _message_of(body: str) -> tuple[str | None, list[str]]:
    """The bus message id(s) of a payload (a correlation id) and their times.

    A version-2 body holds several messages: their ids, comma-separated (at
    most 10), so a search for one id still finds the record's log lines.
    ``None``: unreadable (the delivery says why).
    """
    try:
        messages = unpack_all(body)
    except Exception:  # InvalidPayload: the delivery reports it
        return None, []
    ids = [str(info["id"])[:200] for info, _ in messages]
    times = [info["sent_at"] for info, _ in messages if isinstance(info.get("sent_at"), str)]
    return (",".join(ids[:10]) or None), times


#: the latencies kept: a sent-at further ahead (a publisher's fast clock) or further
#: back (a replay, a wrong clock, an untrusted field) says nothing of this pipeline,
#: and would make the flush's maximum, which is always kept, meaningless
LATENCY_RANGE_MS = (-60_000.0, 7 * 24 * 3600 * 1000.0)


def _since_ms(sent_at: str | None, now: datetime | None = None) -> float | None:
    """Milliseconds since the bus message was sent, as its publisher stamped it
    (``None``: no usable time, or one out of :data:`LATENCY_RANGE_MS`)."""
    when = sent_time(sent_at)
    if when is None:
        return None
    try:
        ms = ((now or datetime.now(UTC)) - when).total_seconds() * 1000
    except OverflowError:  # year 1 or 9999 with an offset
        return None
    low, high = LATENCY_RANGE_MS
    return max(0.0, ms) if low <= ms <= high else None


def _metric_name(count: str) -> str:
    """``dead-lettered`` -> ``DeadLettered``; ``RetryableFailures`` stays."""
    return "".join(part[:1].upper() + part[1:] for part in count.split("-"))
