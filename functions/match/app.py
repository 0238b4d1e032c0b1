"""The match Lambda (Chalice): incoming queue -> indexed matcher -> one queue per backend.

A thin adapter around :func:`fmn.pipeline.match.match_record`.  Each SQS
record is matched on its own (Powertools partial batch processing), then
the payloads of all the batch's records are sent together, ten to a
SendMessageBatch request (a record that changes ownership first sends its
own, then applies the change: :meth:`_Invocation._send_then_apply`).  A
record that cannot be read (a permanent
error: not an envelope, not a bus message) goes to the dead-letter queue at
once with its reason; one that fails for a while (the snapshot store away,
its payloads not all accepted) is reported in ``batchItemFailures`` and
backed off, coming back after a growing delay
(:mod:`fmn.pipeline.redelivery`), so an outage does not use up its
receives; the others are not retried.  Clients, the live snapshot and the matcher are
built on first use and kept across warm invocations; nothing does I/O at
import.  ``handle_incoming(event, context)`` takes the raw Lambda SQS event
(the local runner calls it directly); ``reset()`` forgets the singletons.
The event source mapping needs ``FunctionResponseTypes:
["ReportBatchItemFailures"]``, which Chalice 1.34 cannot set (README.md).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from chalice.app import Chalice

from fmn import emf
from fmn.delivery.base import time_up
from fmn.errors import PermanentError, RetryableError
from fmn.pipeline.envelope import Claim
from fmn.pipeline.match import MatchResult, match_record, send_batches
from fmn.pipeline.notifications import combine
from fmn.pipeline.queues import BACKENDS, queue
from fmn.pipeline.redelivery import Redelivery
from fmn.settings import Settings

INCOMING = queue("incoming")
SEND_ATTEMPTS = 3

# configure_logs=False: Chalice would add a plain handler to the logger Powertools uses
app = Chalice(app_name="fmn-match", configure_logs=False)
logger = Logger(service="fmn-match")
# its own metric set (Powertools' Metrics share one across every instance in a
# process: a function run beside others, as locally, flushed theirs as its own)
metrics = EphemeralMetrics(namespace="FMN", service="match")
_state: dict[str, Any] = {}
#: totals since the process started (the local stack's status display reads them)
totals: Counter[str] = Counter()
# Lambda runs one invocation per process at a time, the local runner several
# in threads: per-invocation state stays local; what is shared is locked
# (re-entrant: a snapshot rebuild counts its metric under it, wherever it runs from).
_lock = threading.RLock()


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
    journal = None
    if s.ledger_dir:  # local runs: what was produced, for fmn ledger
        from fmn.ledger.journal import Journal

        journal = Journal(s.ledger_dir)
    live = LiveSnapshot(store, s.snapshot_poll_s, rebuild=_rebuilder(s, store))
    sqs = client("sqs", s)
    _state.update(settings=s, sqs=sqs, s3=client("s3", s),
                  redelivery=Redelivery(sqs, s.first_retry_delay_s), journal=journal,
                  matcher=IndexedMatcher(live), live=live, store=store, urls={},
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
        if rebuilt:  # concurrent invocations are threads under the local runner
            with _lock:
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


def send(backend: str, entries: list[tuple[tuple[str, ...], str]]) -> set[str]:
    """SendMessageBatch ``(record ids, body)`` entries; the ids of records not fully sent.

    Entries SQS reports as failed are retried; a record whose bodies still
    did not all go comes back whole (the senders drop what they already sent).
    """
    try:
        sqs, url = _get("sqs"), queue_url(backend)
    except Exception as exc:
        logger.warning("no %s queue: %s", backend, exc)
        return {owner for owners, _ in entries for owner in owners}
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
        unsent |= {owner for owners, _ in pending.values() for owner in owners}
    return unsent


def _sync_settings() -> Any:
    from fmn.ownership.settings import SyncSettings

    _get("settings")  # the state is built first: _get builds it only while it is empty
    if "ownership" not in _state:
        with _lock:
            if "ownership" not in _state:
                _state["ownership"] = SyncSettings.from_env()
    return _state["ownership"]


def changes_ownership(message: Any) -> bool:
    """Whether ``message`` is an ownership or membership change to apply live."""
    from fmn.ownership.live import classify

    sync = _sync_settings()
    return bool(sync.live) and classify(message, dict(sync.live_namespaces)) is not None


#: HTTP timeout of a FASJSON request made while matching (FMN_LIVE_FASJSON=1); the
#: reconcile's requests keep FMN_SYNC_TIMEOUT_S (60 s), longer than this function runs
LIVE_FASJSON_TIMEOUT_S = 5.0


def live_updater() -> Any:
    """The :class:`~fmn.ownership.live.LiveUpdater` of this process, built on first use."""
    from fmn.ownership.live import LiveUpdater
    from fmn.ownership.sources import RetryPolicy

    sync = _sync_settings()
    with _lock:
        if "updater" not in _state:
            from fmn import db

            _state["updater"] = LiveUpdater(
                db.make_engine(_get("settings").database_url), _get("store"),
                # a request may not take the invocation past its deadline (30 s): one
                # try, no back-off (the record fails and comes back after its own)
                fasjson=dataclasses.replace(
                    sync, timeout_s=min(sync.timeout_s, LIVE_FASJSON_TIMEOUT_S)
                ).fasjson(RetryPolicy(retries=0)) if sync.live_fasjson else None,
                namespaces=dict(sync.live_namespaces))
        return _state["updater"]


def live_ownership(message: Any) -> None:
    """Apply an ownership or membership message once its notifications went out
    (fmn.ownership.live).

    Here rather than in a consumer of its own: SQS gives each message to one
    consumer, and this one already sees every message in bus order, so the
    change is in the snapshot before the next message of the same batch is
    matched.  Only the few ownership topics touch the database.  The caller
    applies it only after every payload of the message's record was accepted
    (:meth:`_Invocation.record`): a record that comes back is then matched
    again on the same owners, not on those its first attempt wrote.
    """
    if not changes_ownership(message):
        return
    result = live_updater().handle(message)
    if result is not None and result.snapshot_changes:
        _get("live").refresh_now()
        with _lock:
            totals["OwnershipUpdates"] += 1


def process(body: str) -> MatchResult:
    """Match one incoming body and send its notifications (the local runner's shortcut);
    an ownership change is applied once they were all accepted."""
    result = match_record(body, _get("matcher"), fetch_claim)
    for backend, bodies in result.bodies.items():
        if send(backend, [((), b) for b in bodies]):
            raise RetryableError(f"{backend} payloads not accepted by SQS")
    if result.message is not None:
        live_ownership(result.message)
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


#: Start no record this close to the invocation's deadline (at most half the time it
#: started with): the matched records' payloads still have to go out, and one record
#: (a claim-checked one, fetched from S3) may take seconds.
DEADLINE_MARGIN_S = 10.0


class _Invocation:
    """One invocation's matched records and counts."""

    def __init__(self, context: Any = None) -> None:
        self.counts: Counter[str] = Counter()
        #: whether the invocation is too close to its deadline to start a record
        self.out_of_time = time_up(context, DEADLINE_MARGIN_S)
        #: (SQS message id, result), sent together at the end
        self.matched: list[tuple[str, MatchResult]] = []
        #: SQS message id -> when it entered the incoming queue (ms; the ledger's journal)
        self.queued_at: dict[str, int] = {}
        #: records whose payloads went out already (ownership changes: before applying them)
        self.sent_early: set[str] = set()

    def record(self, record: SQSRecord) -> None:
        if self.out_of_time is not None and self.out_of_time():
            self._postpone(record)
            return
        try:
            result = match_record(record.body, _get("matcher"), fetch_claim)
            if result.message is not None and changes_ownership(result.message):
                self._send_then_apply(record.message_id, result)
        except PermanentError as exc:
            # retrying cannot help: to the dead-letter queue now, with the reason
            self.counts["PermanentFailures"] += 1
            logger.warning("record dead-lettered", extra={"sqs_message_id": record.message_id,
                                                          "error": str(exc)[:500]})
            journal = _get("journal")
            if journal is not None:
                journal.failed(record.message_id, "permanent", f"{type(exc).__name__}: {exc}")
            try:
                _get("redelivery").dead_letter(record.raw_event, str(exc))
            except Exception as dlq_failed:  # botocore: it comes back, nothing lost
                raise RetryableError(f"dead-letter queue refused a record: {dlq_failed}") \
                    from dlq_failed
            self.counts["DeadLettered"] += 1
            return
        except Exception as exc:
            self.counts["RetryableFailures"] += 1
            logger.warning("record failed", extra={"sqs_message_id": record.message_id,
                                                   "failure": "retryable",
                                                   "error": str(exc)[:500]})
            journal = _get("journal")
            if journal is not None:
                journal.failed(record.message_id, "retryable", f"{type(exc).__name__}: {exc}")
            raise
        # the rest of this record's log lines name its bus message
        logger.set_correlation_id(result.message_id)
        self.matched.append((record.message_id, result))
        self.queued_at[record.message_id] = int(record.attributes.sent_timestamp or 0)
        self.counts["MessagesMatched"] += 1
        for backend, count in result.notifications.items():
            self.counts[f"Notifications_{backend}"] += count
            self.counts[f"Payloads_{backend}"] += len(result.bodies[backend])

    def _postpone(self, record: SQSRecord) -> None:
        """Out of time: the record goes back on the queue as a fresh message (it spends
        no receive, as running past the timeout would for the whole batch)."""
        reason = "match out of time for this record"
        try:
            requeued = _get("redelivery").postpone(record.raw_event, reason)
        except Exception as exc:  # botocore: it comes back when its visibility ends
            raise RetryableError(f"{reason}; requeue failed: {exc}") from exc
        if requeued:
            self.counts["Postponed"] += 1
            logger.info("record postponed", extra={"sqs_message_id": record.message_id,
                                                   "reason": reason})
        else:  # postponed for too long: dead-lettered with the reason
            self.counts["PermanentFailures"] += 1
            self.counts["DeadLettered"] += 1
            journal = _get("journal")
            if journal is not None:
                journal.failed(record.message_id, "permanent", f"postponed too long: {reason}")

    def _send_then_apply(self, mid: str, result: MatchResult) -> None:
        """An ownership change: its own notifications go out first, on the owners it
        names as before, and the change is applied only once SQS accepted every one
        of its payloads.  Otherwise the record fails (RetryableError) with the
        ownership unchanged, so that when it comes back it is matched again on the
        same owners (the senders drop what already went).  Applied, it is in the
        snapshot before the batch's next record is matched."""
        for backend, bodies in result.bodies.items():
            self.counts[f"Bodies_{backend}"] += len(bodies)
            if send(backend, [((mid,), b) for b in bodies]):
                raise RetryableError(f"{backend} payloads of an ownership change not accepted "
                                     "by SQS: the change waits for them")
        self.sent_early.add(mid)
        assert result.message is not None
        live_ownership(result.message)

    def journal(self, unsent: set[str]) -> None:
        """Journal every record whose payloads all went (local runs: ``fmn ledger``)."""
        journal = _get("journal")
        if journal is None:
            return
        describe = _get("matcher").describe
        entries = []
        for mid, result in self.matched:
            if mid in unsent:
                continue
            produced = {backend: [(n.user, n.destination, n.address,
                                   int(describe(n)[1] is not None)) for n in group]
                        for backend, group in result.recipients.items()}
            entries.append({"id": result.message_id, "sqs": mid,
                            "q": self.queued_at.get(mid, 0), "n": produced})
        journal.matched(entries)

    def send_matched(self) -> set[str]:
        """Send every matched record's payloads, backend by backend, across records.

        The records' bodies for one backend travel together: as few SQS
        messages as the size and the queue's notifications cap allow
        (:func:`~fmn.pipeline.notifications.combine`), so a batch of a hundred
        messages costs a few requests per backend, not a hundred.
        """
        unsent: set[str] = set()
        pending = [(mid, result) for mid, result in self.matched
                   if mid not in self.sent_early]
        for backend in BACKENDS:
            owners = [mid for mid, result in pending
                      for _ in result.bodies.get(backend, ())]
            parts = [(body, n) for _, result in pending
                     for body, n in zip(result.bodies.get(backend, ()),
                                        result.counts.get(backend, ()), strict=True)]
            if not parts:
                continue
            # A sender invocation takes up to batch_size bodies and must get through
            # them within its timeout: a combined body holds no more than its share of
            # the per-message cap (a message's own body may still hold the whole cap).
            q = queue(backend)
            cap = None if q.notifications_per_message is None else \
                max(1, q.notifications_per_message // q.batch_size)
            entries = [(tuple(owners[i] for i in positions), body)
                       for body, positions in combine(parts, backend, max_notifications=cap)]
            self.counts[f"Bodies_{backend}"] += len(entries)
            unsent |= send(backend, entries)
        return unsent


@app.on_sqs_message(queue=INCOMING.sqs_name(Settings.from_env().queue_prefix),
                    batch_size=INCOMING.batch_size,
                    maximum_batching_window_in_seconds=INCOMING.batching_window_s,
                    maximum_concurrency=INCOMING.max_concurrency)
def handle_incoming(event: Any) -> PartialItemFailureResponse:
    return handle_event(event.to_dict(), event.context)


def handle_event(raw: dict[str, Any], context: Any) -> PartialItemFailureResponse:
    """The handler on the raw Lambda SQS event (what the local runner calls)."""
    from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

    call = _Invocation(context)
    redelivery: Redelivery = _get("redelivery")
    try:
        try:
            response = process_partial_response(
                event=raw, record_handler=call.record,
                processor=BatchProcessor(event_type=EventType.SQS), context=context)
        except BatchProcessingError:  # every record failed
            redelivery.back_off(raw["Records"])
            raise
        unsent = call.send_matched()
        call.journal(unsent)
        missed = len(call.matched) - record_window([r for _, r in call.matched])
        if missed:
            call.counts["PreviewWindowMisses"] += missed
        if unsent:
            call.counts["RetryableFailures"] += len(unsent)
            failures = response["batchItemFailures"]
            failures += [{"itemIdentifier": mid} for mid, _ in call.matched if mid in unsent]
        if response["batchItemFailures"]:
            failed = {f["itemIdentifier"] for f in response["batchItemFailures"]}
            redelivery.back_off(r for r in raw["Records"] if r.get("messageId") in failed)
            if len(failed) == len(raw["Records"]):  # nothing succeeded: fail the invocation
                raise RetryableError(f"none of {len(failed)} records went through")
        logger.info("batch done", extra={"records": len(raw["Records"]),
                                         "failed": len(response["batchItemFailures"]),
                                         "counts": dict(call.counts)})
        return response
    finally:
        with _lock:
            totals.update(call.counts)
            for name, value in sorted(call.counts.items()):
                metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
            emf.flush(metrics)
