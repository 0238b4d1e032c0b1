"""The local Lambda runner against the moto server: partial batches, errors, scaling.

Queues are built from test definitions (short visibility timeouts, small
receive counts) through the same ``ensure_queues`` that creates the
pipeline's; each test uses its own queue prefix.  Assertions are on what the
handler saw, what is left in the queues and the runner's recorded
concurrency, never on durations.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any
from uuid import uuid4

import pytest

from fmn.local.aws import AwsClients, QueueUrls, clients, ensure_queues
from fmn.local.runner import EventSourceMapping, LambdaContext
from fmn.pipeline.queues import QUEUES, QueueDef
from fmn.settings import Settings

pytestmark = pytest.mark.integration

# Moto's ReceiveMessage takes no lock: two concurrent receives can hand out the
# same message (a standard queue is at-least-once anyway).  Tests that count
# deliveries exactly therefore poll with a single poller.
FAST = {"poll_wait_s": 1, "scale_interval_s": 0.1, "error_backoff_s": 0.1}


@pytest.fixture
def aws(aws_env: str) -> AwsClients:
    return clients(Settings.from_env())


@pytest.fixture
def prefix() -> str:
    return f"t{uuid4().hex[:8]}-"


@pytest.fixture
def runners() -> Iterator[list[EventSourceMapping]]:
    started: list[EventSourceMapping] = []
    yield started
    for r in started:
        r.stop(timeout=10)


def _send(sqs: Any, url: str, bodies: list[str]) -> None:
    for i in range(0, len(bodies), 10):
        entries = [{"Id": str(j), "MessageBody": b} for j, b in enumerate(bodies[i:i + 10])]
        resp = sqs.send_message_batch(QueueUrl=url, Entries=entries)
        assert not resp.get("Failed")


def _drain(sqs: Any, url: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        msgs = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                   MessageSystemAttributeNames=["All"]).get("Messages", [])
        if not msgs:
            return out
        out += msgs


def _counts(sqs: Any, url: str) -> tuple[int, int]:
    a = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(a["ApproximateNumberOfMessages"]), int(a["ApproximateNumberOfMessagesNotVisible"])


def _wait_for(cond: Callable[[], bool], timeout: float = 12.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_ensure_queues_from_the_definitions_idempotently(aws: AwsClients, prefix: str) -> None:
    first = ensure_queues(aws.sqs, prefix)
    again = ensure_queues(aws.sqs, prefix)
    assert first == again
    assert set(first) == {q.name for q in QUEUES}
    for q in QUEUES:
        urls = first[q.name]
        attrs = aws.sqs.get_queue_attributes(QueueUrl=urls.url, AttributeNames=["All"])[
            "Attributes"]
        assert attrs["VisibilityTimeout"] == str(q.visibility_timeout_s)
        assert json.loads(attrs["RedrivePolicy"]) == {
            "deadLetterTargetArn": urls.dlq_arn, "maxReceiveCount": q.max_receive_count}
        assert urls.url.endswith(q.sqs_name(prefix)) and urls.dlq_url.endswith(q.dlq_name(prefix))
    # A changed definition converges on the existing queue.
    changed = replace(QUEUES[0], visibility_timeout_s=7, max_receive_count=9)
    urls = ensure_queues(aws.sqs, prefix, [changed])[changed.name]
    assert urls == first[changed.name]
    attrs = aws.sqs.get_queue_attributes(QueueUrl=urls.url, AttributeNames=["All"])["Attributes"]
    assert attrs["VisibilityTimeout"] == "7"
    assert json.loads(attrs["RedrivePolicy"])["maxReceiveCount"] == 9


def test_poison_message_alone_in_dlq_batch_mates_once(
    aws: AwsClients, prefix: str, runners: list[EventSourceMapping]
) -> None:
    from aws_lambda_powertools.utilities.batch import (
        BatchProcessor,
        EventType,
        process_partial_response,
    )
    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

    qdef = QueueDef("poison", "worker", visibility_timeout_s=1, max_receive_count=3,
                    batch_size=10, batching_window_s=0, max_concurrency=1)
    urls = ensure_queues(aws.sqs, prefix, [qdef])["poison"]
    seen: Counter[str] = Counter()
    receive_counts: list[int] = []
    contexts: list[tuple[LambdaContext, int]] = []
    lock = threading.Lock()

    def work(record: SQSRecord) -> None:
        with lock:
            seen[record.body] += 1
            if record.body == "poison":
                receive_counts.append(int(record.attributes.approximate_receive_count))
        if record.body == "poison":
            raise ValueError("cannot digest this one")

    # Powertools' own partial-batch handling: it reads our records and context
    # and answers with batchItemFailures.
    processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)

    def handler(event: dict[str, Any], context: LambdaContext) -> object:
        contexts.append((context, context.get_remaining_time_in_millis()))
        return process_partial_response(event=event, record_handler=work,
                                        processor=processor, context=context)

    bodies = ["poison"] + [f"good-{i}" for i in range(6)]
    _send(aws.sqs, urls.url, bodies)
    runner = EventSourceMapping(aws.sqs, qdef, urls, handler, **FAST)
    runners.append(runner.start())

    _wait_for(lambda: _counts(aws.sqs, urls.dlq_url)[0] == 1)
    assert runner.stop(timeout=10)

    dead = _drain(aws.sqs, urls.dlq_url)
    assert [m["Body"] for m in dead] == ["poison"]
    assert _counts(aws.sqs, urls.url) == (0, 0)
    # Received exactly max_receive_count times, then SQS moved it.
    assert receive_counts == [1, 2, 3]
    assert seen["poison"] == qdef.max_receive_count
    assert {b: n for b, n in seen.items() if b != "poison"} == {b: 1 for b in bodies[1:]}
    stats = runner.stats()
    assert stats.records_ok == 6 and stats.records_failed == 3
    ctx, remaining_ms = contexts[0]
    assert ctx.function_name == "worker" and ctx.invoked_function_arn.endswith(":function:worker")
    assert 0 < remaining_ms <= 1000  # the function timeout defaults to the visibility timeout


def test_chalice_handler_gets_lambda_records_and_context(
    aws: AwsClients, prefix: str, runners: list[EventSourceMapping]
) -> None:
    from aws_lambda_powertools import Logger
    from chalice import Chalice  # type: ignore[attr-defined]

    qdef = QueueDef("shape", "worker", visibility_timeout_s=5, max_receive_count=2,
                    batch_size=10, batching_window_s=0, max_concurrency=1)
    urls = ensure_queues(aws.sqs, prefix, [qdef])["shape"]
    app = Chalice(app_name="worker")
    logger = Logger(service="worker")
    events: list[dict[str, Any]] = []
    bodies: list[str] = []

    contexts: list[Any] = []

    @app.on_sqs_message(queue=qdef.sqs_name(prefix), batch_size=qdef.batch_size)
    def worker(event: Any) -> None:
        events.append(event.to_dict())
        contexts.append(event.context)
        bodies.extend(record.body for record in event)

    aws.sqs.send_message(QueueUrl=urls.url, MessageBody="hello", MessageAttributes={
        "topic": {"DataType": "String", "StringValue": "org.fedoraproject.prod.x"},
        "blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01"},
    })
    runner = EventSourceMapping(aws.sqs, qdef, urls, worker, **FAST)
    runners.append(runner.start())
    _wait_for(lambda: runner.stats().records_ok == 1)
    assert bodies == ["hello"]
    (record,) = events[0]["Records"]
    assert set(record) >= {"messageId", "receiptHandle", "body", "attributes",
                           "messageAttributes", "md5OfBody", "eventSource",
                           "eventSourceARN", "awsRegion"}
    assert record["body"] == "hello" and record["eventSource"] == "aws:sqs"
    assert record["eventSourceARN"] == urls.arn and record["awsRegion"] == "us-east-1"
    assert record["attributes"]["ApproximateReceiveCount"] == "1"
    assert record["messageAttributes"]["topic"] == {
        "stringValue": "org.fedoraproject.prod.x", "stringListValues": [],
        "binaryListValues": [], "dataType": "String"}
    assert record["messageAttributes"]["blob"]["binaryValue"] == "AAE="
    # Powertools' Logger reads its Lambda fields from our context.
    seen_keys: list[dict[str, Any]] = []
    logger.inject_lambda_context(
        lambda e, c: seen_keys.append(logger.get_current_keys()))({}, contexts[0])
    assert seen_keys[0]["function_name"] == "worker"
    assert seen_keys[0]["function_request_id"] == contexts[0].aws_request_id


def test_busy_time_is_the_handlers_wall_time_and_cpu_time_its_threads_work(
    aws: AwsClients, prefix: str, runners: list[EventSourceMapping]
) -> None:
    import time

    qdef = QueueDef("cpu", "worker", visibility_timeout_s=5, max_receive_count=2,
                    batch_size=10, batching_window_s=0, max_concurrency=1)
    urls = ensure_queues(aws.sqs, prefix, [qdef])["cpu"]

    def handler(event: Any, context: Any) -> None:
        time.sleep(0.4)  # waiting, as for a server: busy, not CPU
        t = time.thread_time()
        while time.thread_time() - t < 0.2:  # working
            pass

    _send(aws.sqs, urls.url, ["one"])
    runner = EventSourceMapping(aws.sqs, qdef, urls, handler, **FAST)
    runners.append(runner.start())
    _wait_for(lambda: runner.stats().records_ok == 1)
    stats = runner.stats()
    assert stats.busy_s >= 0.6
    assert 0.2 <= stats.cpu_s < 0.45


def test_batching_window_gathers_beyond_one_receive(
    aws: AwsClients, prefix: str, runners: list[EventSourceMapping]
) -> None:
    qdef = QueueDef("window", "worker", visibility_timeout_s=5, max_receive_count=2,
                    batch_size=25, batching_window_s=1, max_concurrency=2)
    urls = ensure_queues(aws.sqs, prefix, [qdef])["window"]
    sizes: list[int] = []
    _send(aws.sqs, urls.url, [f"w{i}" for i in range(25)])
    # A long scale interval keeps a single poller, so one batch takes everything.
    runner = EventSourceMapping(aws.sqs, qdef, urls,
                                lambda e, c: sizes.append(len(e["Records"])),
                                **{**FAST, "scale_interval_s": 30})
    runners.append(runner.start())
    _wait_for(lambda: runner.stats().records_ok == 25)
    assert sizes == [25]  # SQS returns at most 10 per receive


def test_raising_handler_deletes_nothing_and_batch_comes_back(
    aws: AwsClients, prefix: str, runners: list[EventSourceMapping]
) -> None:
    qdef = QueueDef("flaky", "worker", visibility_timeout_s=1, max_receive_count=3,
                    batch_size=10, batching_window_s=0, max_concurrency=1)
    urls = ensure_queues(aws.sqs, prefix, [qdef])["flaky"]
    deliveries: dict[str, list[int]] = {}
    lock = threading.Lock()

    def handler(event: dict[str, Any], context: LambdaContext) -> None:
        counts = [int(r["attributes"]["ApproximateReceiveCount"]) for r in event["Records"]]
        with lock:
            for r, n in zip(event["Records"], counts, strict=True):
                deliveries.setdefault(r["body"], []).append(n)
        if 1 in counts:
            raise RuntimeError("first delivery always fails")

    bodies = [f"m{i}" for i in range(4)]
    _send(aws.sqs, urls.url, bodies)
    runner = EventSourceMapping(aws.sqs, qdef, urls, handler, **FAST)
    runners.append(runner.start())
    _wait_for(lambda: runner.stats().records_ok == len(bodies))
    assert runner.stop(timeout=10)

    # Every message came back after the failed invocation: none was deleted.
    assert deliveries == {b: [1, 2] for b in bodies}
    assert _counts(aws.sqs, urls.url) == (0, 0)
    assert _counts(aws.sqs, urls.dlq_url) == (0, 0)
    stats = runner.stats()
    assert stats.invocation_errors >= 1 and stats.records_failed == len(bodies)


def test_stopping_brings_in_flight_deadlines_to_now(
    aws: AwsClients, prefix: str, runners: list[EventSourceMapping]
) -> None:
    """A long invocation that watches its deadline (the flood-limited IRC sender)
    winds down when the runner stops, its batch left on the queue."""
    qdef = QueueDef("slow", "worker", visibility_timeout_s=300, max_receive_count=3,
                    batch_size=10, batching_window_s=0, max_concurrency=1)
    urls = ensure_queues(aws.sqs, prefix, [qdef])["slow"]
    started = threading.Event()

    def handler(event: dict[str, Any], context: LambdaContext) -> None:
        started.set()
        while context.get_remaining_time_in_millis() > 10_000:  # paced work, one item a tick
            time.sleep(0.05)
        raise RuntimeError("out of time: the rest comes back")

    _send(aws.sqs, urls.url, ["m0"])
    runner = EventSourceMapping(aws.sqs, qdef, urls, handler, **FAST)
    runners.append(runner.start())
    assert started.wait(10)
    assert runner.stop(timeout=10)
    assert _counts(aws.sqs, urls.url) == (0, 1)  # not deleted: invisible until it times out


def test_concurrency_rises_to_max_with_backlog_and_falls_back(
    aws: AwsClients, prefix: str, runners: list[EventSourceMapping]
) -> None:
    qdef = QueueDef("backlog", "worker", visibility_timeout_s=5, max_receive_count=3,
                    batch_size=10, batching_window_s=0, max_concurrency=4)
    urls: QueueUrls = ensure_queues(aws.sqs, prefix, [qdef])["backlog"]
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    def handler(event: dict[str, Any], context: LambdaContext) -> None:
        time.sleep(0.05)
        with lock:
            seen.update(r["body"] for r in event["Records"])

    # Moto's ReceiveMessage costs about 1 ms per queued message: a backlog of
    # 160 (16 batches) outlasts the scale-up while keeping the test light.
    bodies = [f"b{i}" for i in range(160)]
    _send(aws.sqs, urls.url, bodies)
    runner = EventSourceMapping(aws.sqs, qdef, urls, handler, **FAST)
    runners.append(runner.start())
    assert runner.stats().concurrency == 1

    _wait_for(lambda: runner.stats().records_ok >= len(bodies))
    _wait_for(lambda: runner.stats().concurrency == runner.min_concurrency)
    history = runner.history()
    assert runner.stop(timeout=10)

    series = [p.concurrency for p in history]
    peak = series.index(max(series))
    assert series[0] == 1 and max(series) == qdef.max_concurrency
    # Up one step at a time to the maximum, then down one at a time to the minimum.
    assert series[:peak + 1] == sorted(series[:peak + 1])
    assert series[peak:] == sorted(series[peak:], reverse=True)
    assert series[-1] == 1
    assert all(p.target <= qdef.max_concurrency for p in history)
    # Every message processed (at least once: see the note on moto at the top).
    assert set(seen) == set(bodies)
    assert _counts(aws.sqs, urls.url) == (0, 0)


def test_fmn_up_starts_from_a_clean_stage_in_redis(tmp_path: Any) -> None:
    """A second `make run` replays the same messages: the senders' memory of the first
    run's sends (and its digests, window, feeds) must not swallow them."""
    from services import REDIS_URL, redis_client

    from fmn.local.stack import LocalStack, StackOptions

    client = redis_client()
    tag = uuid4().hex[:8]
    prefix, other = f"up{tag}-", f"other{tag}-"
    settings = Settings(redis_url=REDIS_URL, queue_prefix=prefix,
                        feed_prefix=f"fmn-test:{tag}:feed:")
    mine = [f"{prefix}email#abc", f"{prefix}irc#def", f"fmn:digest:{{{prefix}}}due",
            f"fmn:preview:{prefix}window", f"fmn-test:{tag}:feed:alice"]
    theirs = [f"{other}email#abc", f"fmn:digest:{{{other}}}due"]
    for key in mine + theirs:
        client.set(key, "1")
    try:
        LocalStack(settings, StackOptions(workdir=tmp_path))._clear_stage_state()
        assert [k for k in mine if client.exists(k)] == []
        assert all(client.exists(k) for k in theirs)
    finally:
        client.delete(*mine, *theirs)
