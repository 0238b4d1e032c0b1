"""The match Lambda (Chalice): incoming queue -> indexed matcher -> one queue per backend.

A thin adapter around :func:`fmn.pipeline.match.match_record`.  Each SQS
record is matched on its own (Powertools partial batch processing), then
the payloads of all the batch's records are sent together, ten to a
SendMessageBatch request.  A record that fails (to match, or to have all its
payloads accepted) is reported in ``batchItemFailures`` and comes back
alone, then goes to the dead-letter queue after the queue's maximum
receives; the others are not retried.  Clients, the live snapshot and the matcher are
built on first use and kept across warm invocations; nothing does I/O at
import.  ``handle_incoming(event, context)`` takes the raw Lambda SQS event
(the local runner calls it directly); ``reset()`` forgets the singletons.
The event source mapping needs ``FunctionResponseTypes:
["ReportBatchItemFailures"]``, which Chalice 1.34 cannot set (README.md).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from chalice.app import Chalice

from fmn.errors import PermanentError, RetryableError
from fmn.pipeline.envelope import Claim
from fmn.pipeline.match import MatchResult, match_record, send_batches
from fmn.pipeline.queues import BACKENDS, queue
from fmn.settings import Settings

INCOMING = queue("incoming")
SEND_ATTEMPTS = 3

# configure_logs=False: Chalice would add a plain handler to the logger Powertools uses
app = Chalice(app_name="fmn-match", configure_logs=False)
logger = Logger(service="fmn-match")
metrics = Metrics(namespace="FMN", service="match")
_state: dict[str, Any] = {}
#: totals since the process started (the local stack's status display reads them)
totals: Counter[str] = Counter()
# Lambda runs one invocation per process at a time, the local runner several
# in threads: per-invocation state stays local; what is shared is locked.
_lock = threading.Lock()


def reset() -> None:
    """Forget the settings, clients, snapshot and queue URLs (tests, new settings)."""
    _state.clear()


def _get(name: str) -> Any:
    if not _state:
        with _lock:
            if not _state:
                _build_state()
    return _state[name]


def _build_state() -> None:
    from fmn.aws import client
    from fmn.matcher import IndexedMatcher
    from fmn.preview.window import RedisWindowStore, window_key
    from fmn.snapshot.live import LiveSnapshot
    from fmn.snapshot.store import RedisSnapshotStore

    copy_config_to_registered_loggers(source_logger=logger, include={"fmn"})
    s = Settings.from_env()
    store = RedisSnapshotStore.from_url(s.redis_url, s.snapshot_prefix)
    live = LiveSnapshot(store, s.snapshot_poll_s, rebuild=_rebuilder(s, store))
    _state.update(settings=s, sqs=client("sqs", s), s3=client("s3", s),
                  matcher=IndexedMatcher(live), live=live, urls={},
                  window=RedisWindowStore.from_url(s.redis_url,
                                                   key=window_key(s.queue_prefix)))


def _rebuilder(s: Settings, store: Any) -> Any:
    """What rebuilds the snapshot from the database when Redis holds none (one
    process at a time: :func:`fmn.snapshot.sync.rebuild_if_missing`)."""
    engines: list[Any] = []

    def rebuild() -> bool:
        from fmn import db
        from fmn.snapshot.sync import rebuild_if_missing

        if not engines:
            engines.append(db.make_engine(s.database_url))
        rebuilt = rebuild_if_missing(engines[0], store)
        if rebuilt:
            metrics.add_metric(name="SnapshotRebuilt", unit=MetricUnit.Count, value=1)
        return rebuilt

    return rebuild


def queue_url(backend: str) -> str:
    urls: dict[str, str] = _get("urls")
    if backend not in urls:
        name = queue(backend).sqs_name(_get("settings").queue_prefix)
        urls[backend] = _get("sqs").get_queue_url(QueueName=name)["QueueUrl"]
    return urls[backend]


def fetch_claim(claim: Claim) -> bytes:
    """The claim-checked record from S3 (the core verifies size and SHA-256)."""
    if claim.bucket != _get("settings").claim_bucket:
        raise PermanentError(f"claim names bucket {claim.bucket!r}, not the claim bucket")
    try:
        # At most one byte more than the claim states: a forged claim pointing
        # at a huge object must not be read whole (the size check then fails).
        data: bytes = _get("s3").get_object(Bucket=claim.bucket, Key=claim.key,
                                            Range=f"bytes=0-{claim.size}")["Body"].read()
    except Exception as exc:  # botocore ClientError (NoSuchKey, throttling), network
        raise RetryableError(f"s3://{claim.bucket}/{claim.key}: {exc}") from exc
    return data


def send(backend: str, entries: list[tuple[str, str]]) -> set[str]:
    """SendMessageBatch ``(record id, body)`` entries; the ids of records not fully sent.

    Entries SQS reports as failed are retried; a record whose bodies still
    did not all go comes back whole (the senders drop what they already sent).
    """
    try:
        sqs, url = _get("sqs"), queue_url(backend)
    except Exception as exc:
        logger.warning("no %s queue: %s", backend, exc)
        return {owner for owner, _ in entries}
    unsent: set[str] = set()
    for batch in send_batches([body for _, body in entries]):
        pending = {str(i): entries[i] for i in batch}
        for attempt in range(SEND_ATTEMPTS):
            request = [{"Id": i, "MessageBody": body} for i, (_, body) in pending.items()]
            try:
                failed = sqs.send_message_batch(QueueUrl=url, Entries=request).get("Failed", [])
            except Exception as exc:  # the whole call failed: the same entries again
                logger.warning("SendMessageBatch to %s failed: %s", backend, exc)
                failed = [{"Id": i} for i in pending]
            pending = {f["Id"]: pending[f["Id"]] for f in failed}
            if not pending:
                break
            time.sleep(0.1 * 2**attempt)
        unsent |= {owner for owner, _ in pending.values()}
    return unsent


def process(body: str) -> MatchResult:
    """Match one incoming body and send its notifications (the local runner's shortcut)."""
    result = match_record(body, _get("matcher"), fetch_claim)
    for backend, bodies in result.bodies.items():
        if send(backend, [("", b) for b in bodies]):
            raise RetryableError(f"{backend} payloads not accepted by SQS")
    record_window([result])
    return result


def record_window(results: list[MatchResult]) -> int:
    """Keep the matched messages in the preview window (one Redis round trip).

    Every parsed message, notified or not: a rule being edited may match
    what nobody gets today.  The window must never hold delivery up, so a
    failure is logged and counted, not raised.
    """
    from fmn.preview.window import record_many

    messages = [r.message for r in results if r.message is not None]
    if not messages:
        return 0
    try:
        record_many(_get("window"), messages)
    except Exception as exc:  # WindowUnavailable, or a message it cannot encode
        logger.warning("preview window not updated", extra={"error": str(exc)[:300]})
        return 0
    return len(messages)


class _Invocation:
    """One invocation's matched records and counts."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        #: (SQS message id, result), sent together at the end
        self.matched: list[tuple[str, MatchResult]] = []

    def record(self, record: SQSRecord) -> None:
        try:
            result = match_record(record.body, _get("matcher"), fetch_claim)
        except Exception as exc:
            kind = "Permanent" if isinstance(exc, PermanentError) else "Retryable"
            self.counts[f"{kind}Failures"] += 1
            logger.warning("record failed", extra={"sqs_message_id": record.message_id,
                                                   "failure": kind.lower(),
                                                   "error": str(exc)[:500]})
            raise
        # the rest of this record's log lines name its bus message
        logger.set_correlation_id(result.message_id)
        self.matched.append((record.message_id, result))
        self.counts["MessagesMatched"] += 1
        for backend, count in result.notifications.items():
            self.counts[f"Notifications_{backend}"] += count
            self.counts[f"Payloads_{backend}"] += len(result.bodies[backend])

    def send_matched(self) -> set[str]:
        """Send every matched record's payloads, backend by backend, across records."""
        unsent: set[str] = set()
        for backend in BACKENDS:
            entries = [(mid, body) for mid, result in self.matched
                       for body in result.bodies.get(backend, ())]
            if entries:
                unsent |= send(backend, entries)
        return unsent


@app.on_sqs_message(queue=INCOMING.sqs_name(Settings.from_env().queue_prefix),
                    batch_size=INCOMING.batch_size,
                    maximum_batching_window_in_seconds=INCOMING.batching_window_s,
                    maximum_concurrency=INCOMING.max_concurrency)
def handle_incoming(event: Any) -> PartialItemFailureResponse:
    call = _Invocation()
    raw = event.to_dict()
    try:
        response = process_partial_response(
            event=raw, record_handler=call.record,
            processor=BatchProcessor(event_type=EventType.SQS), context=event.context)
        unsent = call.send_matched()
        missed = len(call.matched) - record_window([r for _, r in call.matched])
        if missed:
            call.counts["PreviewWindowMisses"] += missed
        if unsent:
            call.counts["RetryableFailures"] += len(unsent)
            failures = response["batchItemFailures"]
            failures += [{"itemIdentifier": mid} for mid, _ in call.matched if mid in unsent]
            if len(failures) == len(raw["Records"]):  # nothing succeeded: fail the invocation
                raise RetryableError(f"no payload of {len(unsent)} records reached SQS")
        logger.info("batch done", extra={"records": len(raw["Records"]),
                                         "failed": len(response["batchItemFailures"]),
                                         "counts": dict(call.counts)})
        return response
    finally:
        with _lock:
            totals.update(call.counts)
            for name, value in sorted(call.counts.items()):
                metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
            metrics.flush_metrics()
