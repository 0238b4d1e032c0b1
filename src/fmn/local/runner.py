"""Run a Lambda handler in-process the way Lambda's SQS event source mapping does.

:class:`EventSourceMapping` polls one queue of :mod:`fmn.pipeline.queues` and
invokes one handler ``handler(event, context)`` with Lambda's SQS event: a dict
``{"Records": [...]}`` whose records are shaped exactly as Lambda shapes them
(``messageId``, ``receiptHandle``, ``body``, ``attributes`` with
``ApproximateReceiveCount``, ``messageAttributes``, ``md5OfBody``,
``eventSource`` ``aws:sqs``, ``eventSourceARN``, ``awsRegion``), and a
:class:`LambdaContext` good enough for Powertools.  Contract, as in Lambda:

* each poller long-polls (``poll_wait_s``, 1 to 20 s; Lambda uses 20) and gathers
  up to the queue's ``batch_size`` records, receiving again until the batch is
  full or ``batching_window_s`` has passed since its first record (window 0:
  invoke with what one receive returned);
* after the handler returns, exactly the records that succeeded are deleted:
  with ``report_batch_item_failures`` (the ``ReportBatchItemFailures``
  response type, which ``infra/`` must set on the mapping) a response
  ``{"batchItemFailures": [{"itemIdentifier": id}, ...]}`` fails those records
  only; a missing, ``None`` or empty list means all succeeded; a malformed
  response (an identifier that is empty or not in the batch) fails the whole
  batch.  A handler that raises, or runs past the function timeout, fails the
  whole batch.  Failed records are left alone: they stay invisible until the
  queue's visibility timeout ends, come back with a higher
  ``ApproximateReceiveCount``, and SQS itself moves them to the dead-letter
  queue once they have been received ``maxReceiveCount`` times;
* :meth:`EventSourceMapping.stop` stops receiving, lets every in-flight
  invocation finish and delete its records, and joins the threads.

Scaling.  Lambda (standard queues) starts five pollers long-polling the queue;
while messages are waiting it adds concurrent invocations, since November 2023
at up to 300 per minute (previously 60), up to the mapping's maximum
concurrency (2 to 1,000; unset: the function's and account's concurrency); when
receives come back empty it retires pollers gradually (the exact rate is not
documented), and it also backs off on function errors and throttles.  Here one
poller thread is one concurrent invocation, and a scaler thread applies this
policy every ``scale_interval_s``:

* start with ``min_concurrency`` pollers (default 1 rather than Lambda's 5, so
  a 2-core machine is not crowded and the growth is visible);
* scale up: if the queue's ``ApproximateNumberOfMessages`` (visible backlog) is
  above zero, add ``min(step, ceil(backlog / batch_size), max - current)``
  pollers, where ``step = max(1, round(scale_up_per_minute * scale_interval_s
  / 60))`` (default 300 per minute, Lambda's rate): never more pollers than
  waiting batches, never more than the queue's ``max_concurrency``;
* scale down: if the visible backlog is zero and at least one poller's latest
  receive came back empty (after its full long poll), lower the target by one,
  never below ``min_concurrency``.  A poller above the target retires after
  its current receive and invocation, so nothing received is dropped;
* not modelled: backing off on function errors, and Lambda's account-wide
  limits.

:meth:`EventSourceMapping.stats` gives live figures for a status display and
:meth:`EventSourceMapping.history` every change of the concurrency.
"""

from __future__ import annotations

import base64
import logging
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NamedTuple

from fmn.errors import RetryableError
from fmn.local.aws import QueueUrls
from fmn.pipeline.queues import QueueDef

log = logging.getLogger(__name__)

#: The handler: Lambda's (event, context) signature; the return value matters
#: only as a partial batch response.
Handler = Callable[[dict[str, Any], "LambdaContext"], Any]

#: SQS returns at most this many messages per ReceiveMessage and deletes at
#: most this many per DeleteMessageBatch.
SQS_BATCH_MAX = 10
#: SQS's longest long poll.
SQS_MAX_WAIT_S = 20
#: Pause between receives while filling a batching window, so as not to spin.
_WINDOW_PAUSE_S = 0.05


class LambdaContext:
    """The parts of Lambda's context object that handlers and Powertools read."""

    def __init__(
        self,
        function_name: str,
        invoked_function_arn: str,
        memory_limit_in_mb: int,
        timeout_s: float,
    ) -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = invoked_function_arn
        self.memory_limit_in_mb = memory_limit_in_mb
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = f"local/[$LATEST]{uuid.uuid4().hex}"
        self.identity: Any = None
        self.client_context: Any = None
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))

    def expire(self) -> None:
        """Bring the deadline to now: a handler that watches it winds down (stopping)."""
        self._deadline = min(self._deadline, time.monotonic())


def scheduled_context(function_name: str, timeout_s: float) -> LambdaContext:
    """The context of one run of a scheduled function (an EventBridge rule invokes it
    with a deadline of its own, as any invocation: the send-once marks of what it
    sends last no longer than that run)."""
    return LambdaContext(function_name,
                         f"arn:aws:lambda:us-east-1:000000000000:function:{function_name}",
                         128, timeout_s)


@dataclass(frozen=True)
class RunnerStats:
    """A live reading of one mapping, for a status display."""

    function: str
    queue: str
    #: live pollers, i.e. the most invocations that can run at once right now
    concurrency: int
    #: what the scaler wants; pollers above it retire after their current batch
    target: int
    max_concurrency: int
    #: invocations running now
    in_flight: int
    #: the queue's visible messages at the scaler's last reading
    backlog: int
    invocations: int
    #: invocations that raised or timed out (their whole batch failed)
    invocation_errors: int
    records_ok: int
    records_failed: int
    #: records processed successfully per second over the last few seconds
    messages_per_s: float
    #: seconds spent inside the handler since start (what Lambda bills)
    busy_s: float = 0.0
    #: CPU seconds the handler's threads used since start: without the waits for the
    #: interpreter lock and a core that concurrent invocations, threads of one
    #: process here, add to ``busy_s`` (and without the waits for servers)
    cpu_s: float = 0.0


class ScalePoint(NamedTuple):
    t: float  # time.monotonic()
    concurrency: int
    target: int
    backlog: int


class EventSourceMapping:
    """Polls one queue with a growing and shrinking set of pollers; see the module docstring."""

    def __init__(
        self,
        sqs: Any,
        queue: QueueDef,
        urls: QueueUrls,
        handler: Handler,
        *,
        function_name: str | None = None,
        min_concurrency: int = 1,
        poll_wait_s: int = SQS_MAX_WAIT_S,
        scale_interval_s: float = 1.0,
        scale_up_per_minute: int = 300,
        function_timeout_s: float | None = None,
        memory_limit_mb: int = 128,
        report_batch_item_failures: bool = True,
        error_backoff_s: float = 1.0,
        rate_window_s: float = 5.0,
        serialize_receives: bool = False,
    ) -> None:
        # Lambda always long-polls; a zero wait would spin on an empty queue.
        if not 1 <= poll_wait_s <= SQS_MAX_WAIT_S:
            raise ValueError(f"poll_wait_s must be 1..{SQS_MAX_WAIT_S}, not {poll_wait_s}")
        if not 1 <= min_concurrency <= queue.max_concurrency:
            raise ValueError(
                f"min_concurrency must be 1..{queue.max_concurrency}, not {min_concurrency}"
            )
        self.sqs = sqs
        self.queue = queue
        self.urls = urls
        self.handler = handler
        self.function_name = function_name or queue.function or queue.name
        self.min_concurrency = min_concurrency
        self.poll_wait_s = poll_wait_s
        self.scale_interval_s = scale_interval_s
        self.scale_step = max(1, round(scale_up_per_minute * scale_interval_s / 60))
        # Lambda advises a visibility timeout of at least the function timeout;
        # by default the function may use all of it.
        self.function_timeout_s = (
            float(queue.visibility_timeout_s) if function_timeout_s is None else function_timeout_s
        )
        self.memory_limit_mb = memory_limit_mb
        self.report_batch_item_failures = report_batch_item_failures
        self.error_backoff_s = error_backoff_s
        self.rate_window_s = rate_window_s
        # The moto server's ReceiveMessage takes no lock: two pollers receiving
        # at the same instant can get the same message.  Real SQS does not do
        # that within a visibility timeout; with this set, pollers take turns
        # to receive (a receive returns at once when messages wait), so a local
        # run delivers like SQS does.
        self._receive_lock: threading.Lock | None = threading.Lock() if serialize_receives \
            else None
        region = urls.region
        account = urls.arn.split(":")[4]
        self.function_arn = f"arn:aws:lambda:{region}:{account}:function:{self.function_name}"

        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pollers: dict[int, threading.Thread] = {}
        self._idle: set[int] = set()
        self._target = min_concurrency
        self._backlog = 0
        self._in_flight = 0
        #: the contexts of in-flight invocations (stop() expires them)
        self._contexts: set[LambdaContext] = set()
        self._invocations = 0
        self._invocation_errors = 0
        self._records_ok = 0
        self._records_failed = 0
        #: seconds spent inside the handler (Lambda bills these)
        self._busy_s = 0.0
        self._cpu_s = 0.0
        self._done: deque[tuple[float, int]] = deque()
        self._history: list[ScalePoint] = []
        self._scaler: threading.Thread | None = None
        self._started_at = 0.0

    # -- lifecycle -------------------------------------------------------

    def start(self) -> EventSourceMapping:
        if self._scaler is not None:
            raise RuntimeError("already started")
        self._started_at = time.monotonic()
        with self._lock:
            for i in range(self._target):
                self._spawn(i)
        self._scaler = threading.Thread(
            target=self._scale_loop, name=f"esm-{self.queue.name}-scaler", daemon=True
        )
        self._scaler.start()
        log.info(
            "polling %s for %s (concurrency %d..%d, batch %d, window %ss)",
            self.urls.url, self.function_name, self.min_concurrency,
            self.queue.max_concurrency, self.queue.batch_size, self.queue.batching_window_s,
        )
        return self

    def stop(self, timeout: float | None = None) -> bool:
        """Stop receiving, let in-flight invocations finish; True if every thread ended.

        In-flight invocations see their deadline arrive: one that watches it
        (the IRC sender, paced by the flood limit) ends early, leaving the
        rest of its batch on the queue.
        """
        self._stop.set()
        with self._lock:
            for context in self._contexts:
                context.expire()
        deadline = None if timeout is None else time.monotonic() + timeout
        threads = [self._scaler] if self._scaler is not None else []
        with self._lock:
            threads += list(self._pollers.values())
        for t in threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in threads if t.is_alive()]
        if alive:
            log.warning("still running after stop: %s", ", ".join(alive))
        return not alive

    def __enter__(self) -> EventSourceMapping:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- readings --------------------------------------------------------

    def stats(self) -> RunnerStats:
        now = time.monotonic()
        with self._lock:
            self._prune_rate(now)
            span = min(self.rate_window_s, max(now - self._started_at, 1e-9))
            rate = sum(n for _, n in self._done) / span if self._started_at else 0.0
            return RunnerStats(
                function=self.function_name,
                queue=self.queue.name,
                concurrency=len(self._pollers),
                target=self._target,
                max_concurrency=self.queue.max_concurrency,
                in_flight=self._in_flight,
                backlog=self._backlog,
                invocations=self._invocations,
                invocation_errors=self._invocation_errors,
                records_ok=self._records_ok,
                records_failed=self._records_failed,
                messages_per_s=rate,
                busy_s=self._busy_s,
                cpu_s=self._cpu_s,
            )

    def history(self) -> list[ScalePoint]:
        """Every change of the concurrency or its target since start, oldest first."""
        with self._lock:
            return list(self._history)

    # -- scaling ---------------------------------------------------------

    def _record_point(self) -> None:
        # Called with the lock held.
        point = ScalePoint(time.monotonic(), len(self._pollers), self._target, self._backlog)
        last = self._history[-1] if self._history else None
        if last is None or (last.concurrency, last.target) != (point.concurrency, point.target):
            self._history.append(point)

    def _spawn(self, index: int) -> None:
        # Called with the lock held, so the scaler never starts a poller twice.
        thread = threading.Thread(
            target=self._poll_loop, args=(index,),
            name=f"esm-{self.queue.name}-{index}", daemon=True,
        )
        self._pollers[index] = thread
        self._record_point()
        thread.start()

    def _scale_loop(self) -> None:
        while not self._stop.wait(self.scale_interval_s):
            try:
                attrs = self.sqs.get_queue_attributes(
                    QueueUrl=self.urls.url, AttributeNames=["ApproximateNumberOfMessages"]
                )["Attributes"]
                backlog = int(attrs["ApproximateNumberOfMessages"])
            except Exception:
                log.exception("reading the backlog of %s failed", self.urls.url)
                continue
            self._scale(backlog)

    def _scale(self, backlog: int) -> None:
        maximum = self.queue.max_concurrency
        with self._lock:
            if self._stop.is_set():
                return
            self._backlog = backlog
            target = self._target
            if backlog > 0 and target < maximum:
                waiting_batches = math.ceil(backlog / self.queue.batch_size)
                target += min(self.scale_step, waiting_batches, maximum - target)
            elif (
                backlog == 0
                and target > self.min_concurrency
                and any(i < target for i in self._idle)
            ):
                target -= 1
            if target != self._target:
                log.debug("%s: concurrency target %d -> %d (backlog %d)",
                          self.function_name, self._target, target, backlog)
                self._target = target
            for i in range(target):
                if i not in self._pollers:
                    self._spawn(i)
            self._record_point()

    # -- polling and invoking -------------------------------------------

    def _poll_loop(self, index: int) -> None:
        try:
            while not self._stop.is_set():
                with self._lock:
                    if index >= self._target:
                        break
                try:
                    records = self._gather(index)
                except Exception:
                    log.exception("receiving from %s failed", self.urls.url)
                    self._stop.wait(self.error_backoff_s)
                    continue
                if records:
                    self._invoke(records)
        finally:
            with self._lock:
                del self._pollers[index]
                self._idle.discard(index)
                self._record_point()

    def _receive(self, max_messages: int, wait_s: int) -> list[dict[str, Any]]:
        if self._receive_lock is None:
            return self._receive_now(max_messages, wait_s)
        # Take turns with short receives, and wait between them outside the
        # lock: holding it through a long poll would let one idle poller stall
        # all the others.  The long poll is kept as a client-side deadline.
        deadline = time.monotonic() + wait_s
        pause = 0.02
        while True:
            with self._receive_lock:
                messages = self._receive_now(max_messages, 0)
            if messages or time.monotonic() >= deadline or self._stop.is_set():
                return messages
            self._stop.wait(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 0.5)

    def _receive_now(self, max_messages: int, wait_s: int) -> list[dict[str, Any]]:
        response = self.sqs.receive_message(
            QueueUrl=self.urls.url,
            MaxNumberOfMessages=max_messages,
            WaitTimeSeconds=wait_s,
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        messages: list[dict[str, Any]] = response.get("Messages", [])
        return messages

    def _gather(self, index: int) -> list[dict[str, Any]]:
        """One batch: a long poll, then more receives until full or the window ends."""
        size = self.queue.batch_size
        messages = self._receive(min(SQS_BATCH_MAX, size), self.poll_wait_s)
        with self._lock:
            if messages:
                self._idle.discard(index)
            else:
                self._idle.add(index)
        window_end = time.monotonic() + self.queue.batching_window_s
        while len(messages) < size and not self._stop.is_set() and messages:
            remaining = window_end - time.monotonic()
            if remaining <= 0:
                break
            # WaitTimeSeconds is whole seconds: long-poll only for whole
            # seconds left in the window, then pause briefly between receives.
            more = self._receive(
                min(SQS_BATCH_MAX, size - len(messages)),
                min(self.poll_wait_s, int(remaining)),
            )
            messages.extend(more)
            if not more:
                self._stop.wait(min(_WINDOW_PAUSE_S, max(0.0, remaining)))
        return [self._record(m) for m in messages]

    def _record(self, message: dict[str, Any]) -> dict[str, Any]:
        record: dict[str, Any] = {
            "messageId": message["MessageId"],
            "receiptHandle": message["ReceiptHandle"],
            "body": message["Body"],
            "attributes": dict(message.get("Attributes", {})),
            "messageAttributes": {
                name: _lambda_attribute(value)
                for name, value in message.get("MessageAttributes", {}).items()
            },
            "md5OfBody": message["MD5OfBody"],
            "eventSource": "aws:sqs",
            "eventSourceARN": self.urls.arn,
            "awsRegion": self.urls.region,
        }
        if "MD5OfMessageAttributes" in message:
            record["md5OfMessageAttributes"] = message["MD5OfMessageAttributes"]
        return record

    def _invoke(self, records: list[dict[str, Any]]) -> None:
        context = LambdaContext(
            self.function_name, self.function_arn, self.memory_limit_mb, self.function_timeout_s
        )
        all_ids = {r["messageId"] for r in records}
        with self._lock:
            self._in_flight += 1
            self._contexts.add(context)
        started, started_cpu = time.monotonic(), time.thread_time()
        errored = False
        try:
            result = self.handler({"Records": records}, context)
        except RetryableError as exc:  # back-pressure (a dependency away): a one-line note
            log.warning("%s: a batch of %d comes back after the visibility timeout: %s",
                        self.function_name, len(records), str(exc)[:200])
            failed, errored = all_ids, True
        except Exception:
            log.exception(
                "%s raised on a batch of %d; it comes back after the visibility timeout",
                self.function_name, len(records),
            )
            failed, errored = all_ids, True
        else:
            elapsed = time.monotonic() - started
            if elapsed > self.function_timeout_s:
                # Lambda would have killed the invocation: the batch failed.
                log.warning("%s ran %.1fs, past its %.1fs timeout; batch failed",
                          self.function_name, elapsed, self.function_timeout_s)
                failed, errored = all_ids, True
            else:
                failed = self._failed_ids(result, all_ids)
        finally:
            handler_s = time.monotonic() - started
            handler_cpu_s = time.thread_time() - started_cpu
            with self._lock:
                self._in_flight -= 1
                self._contexts.discard(context)
        succeeded = [r for r in records if r["messageId"] not in failed]
        self._delete(succeeded)
        now = time.monotonic()
        with self._lock:
            self._invocations += 1
            self._busy_s += handler_s
            self._cpu_s += handler_cpu_s
            self._invocation_errors += errored
            self._records_ok += len(succeeded)
            self._records_failed += len(records) - len(succeeded)
            self._done.append((now, len(succeeded)))
            self._prune_rate(now)

    def _failed_ids(self, result: Any, batch_ids: set[str]) -> set[str]:
        """The records a returned partial batch response fails, as Lambda reads it."""
        if not self.report_batch_item_failures or result is None:
            return set()
        if not isinstance(result, dict):
            log.error("%s returned %r, not a partial batch response; batch failed",
                      self.function_name, type(result).__name__)
            return batch_ids
        items = result.get("batchItemFailures")
        if not items:
            return set()
        if not isinstance(items, list):
            log.error("%s: batchItemFailures is not a list; batch failed", self.function_name)
            return batch_ids
        failed: set[str] = set()
        for item in items:
            ident = item.get("itemIdentifier") if isinstance(item, dict) else None
            if not isinstance(ident, str) or ident not in batch_ids:
                log.error("%s: bad itemIdentifier %r; batch failed", self.function_name, ident)
                return batch_ids
            failed.add(ident)
        return failed

    def _delete(self, records: list[dict[str, Any]]) -> None:
        for start in range(0, len(records), SQS_BATCH_MAX):
            chunk = records[start:start + SQS_BATCH_MAX]
            entries = [
                {"Id": str(i), "ReceiptHandle": r["receiptHandle"]} for i, r in enumerate(chunk)
            ]
            try:
                response = self.sqs.delete_message_batch(QueueUrl=self.urls.url, Entries=entries)
            except Exception:
                # The records come back after the visibility timeout: at least once.
                log.exception("deleting %d records from %s failed", len(chunk), self.urls.url)
                continue
            for failure in response.get("Failed", []):
                log.warning("could not delete record %s from %s: %s",
                            chunk[int(failure["Id"])]["messageId"], self.urls.url,
                            failure.get("Message", failure.get("Code")))

    def _prune_rate(self, now: float) -> None:
        # Called with the lock held.
        while self._done and self._done[0][0] < now - self.rate_window_s:
            self._done.popleft()


def _lambda_attribute(value: dict[str, Any]) -> dict[str, Any]:
    """An SQS message attribute as Lambda puts it in a record (camelCase, binary as base64)."""
    out: dict[str, Any] = {
        "stringListValues": list(value.get("StringListValues", [])),
        "binaryListValues": [
            base64.b64encode(b).decode("ascii") for b in value.get("BinaryListValues", [])
        ],
        "dataType": value["DataType"],
    }
    if "StringValue" in value:
        out["stringValue"] = value["StringValue"]
    if "BinaryValue" in value:
        out["binaryValue"] = base64.b64encode(value["BinaryValue"]).decode("ascii")
    return out
