"""The match Lambda (functions/match/app.py), driven with Lambda-shaped SQS events.

Real services throughout: the golden preferences compiled and published to
Redis under a unique prefix, the pipeline's queues (from
:mod:`fmn.pipeline.queues`) and a claim bucket created on the moto server
under a unique prefix per test.  The app is imported from its folder and
its lazy singletons are reset between tests.  What lands on the backend
queues, unpacked, must be exactly what the indexed matcher (and the golden
``expected.jsonl``) gives; a poisoned record must fail alone.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError
from lambda_events import context, message_ids, sqs_event
from services import REDIS_URL, redis_client
from shared_data import GOLDEN, read_jsonl

from fmn.errors import RetryableError, SnapshotUnavailable
from fmn.local.stack import load_module
from fmn.matcher import IndexedMatcher
from fmn.metadata import parse
from fmn.pipeline.envelope import Envelope, make_claim
from fmn.pipeline.notifications import unpack_all
from fmn.pipeline.queues import BACKENDS, QUEUES
from fmn.pipeline.redelivery import POSTPONED_SINCE
from fmn.prefs import parse_document
from fmn.snapshot import build_snapshot, compile_snapshot
from fmn.snapshot.store import RedisSnapshotStore

pytestmark = pytest.mark.integration

APP_PATH = Path(__file__).resolve().parents[2] / "functions" / "match" / "app.py"
Key = tuple[str, str, str, str, tuple[str, ...]]


@pytest.fixture(scope="module")
def match_app() -> ModuleType:
    return load_module(APP_PATH, "fmn_match_app")


@pytest.fixture(scope="module")
def records() -> list[bytes]:
    return [line.encode() for line in (GOLDEN / "messages.jsonl").read_text().splitlines()
            if line.strip()]


@pytest.fixture(scope="module")
def expected(records: list[bytes]) -> list[Key]:
    """What the indexed matcher gives for the golden prefs and messages (and the golden file)."""
    prefs = parse_document(json.loads((GOLDEN / "prefs.json").read_text()))
    matcher = IndexedMatcher(build_snapshot(prefs))
    keys = [(n.message_id, n.user, n.protocol, n.address, n.rules)
            for r in records for n in matcher.match(parse(r))]
    golden = [(e["message_id"], e["user"], e["protocol"], e["address"], tuple(e["rules"]))
              for e in read_jsonl(GOLDEN / "expected.jsonl")]
    assert Counter(keys) == Counter(golden)
    return keys


@pytest.fixture
def env(aws_env: str, monkeypatch: pytest.MonkeyPatch, match_app: ModuleType
        ) -> Iterator[SimpleNamespace]:
    """Queues, a claim bucket and a published snapshot, all unique to this test."""
    tag = uuid.uuid4().hex[:10]
    prefix, bucket, snap_prefix = f"fmn-t{tag}-", f"fmn-t{tag}-claims", f"fmn-test:{tag}:"
    sqs = boto3.client("sqs")
    s3 = boto3.client("s3")
    urls = {}
    for q in QUEUES:
        dlq = sqs.create_queue(QueueName=q.dlq_name(prefix))["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])
        redrive = {"deadLetterTargetArn": dlq_arn["Attributes"]["QueueArn"],
                   "maxReceiveCount": str(q.max_receive_count)}
        urls[q.name] = sqs.create_queue(QueueName=q.sqs_name(prefix), Attributes={
            "VisibilityTimeout": str(q.visibility_timeout_s),
            "RedrivePolicy": json.dumps(redrive)})["QueueUrl"]
    s3.create_bucket(Bucket=bucket)
    client = redis_client()
    store = RedisSnapshotStore(client, snap_prefix)
    store.publish(compile_snapshot(parse_document(json.loads((GOLDEN / "prefs.json")
                                                             .read_text()))))
    for name, value in {"REDIS_URL": REDIS_URL, "FMN_SNAPSHOT_PREFIX": snap_prefix,
                        "FMN_QUEUE_PREFIX": prefix, "FMN_CLAIM_BUCKET": bucket}.items():
        monkeypatch.setenv(name, value)
    match_app.reset()
    yield SimpleNamespace(sqs=sqs, s3=s3, urls=urls, bucket=bucket, prefix=prefix, store=store)
    match_app.reset()
    keys = list(client.scan_iter(match=store.prefix + "*"))
    keys += list(client.scan_iter(match=f"fmn:preview:{prefix}*"))
    if keys:
        client.delete(*keys)


def invoke(match_app: ModuleType, env: SimpleNamespace, bodies: list[str]
           ) -> tuple[list[str], list[str]]:
    """Run the handler on one batch; (failed message ids, all message ids)."""
    event = sqs_event(bodies, f"{env.prefix}incoming")
    response = match_app.handle_incoming(event, context("fmn-match", memory_mb=1024))
    return [f["itemIdentifier"] for f in response["batchItemFailures"]], message_ids(event)


def drain(env: SimpleNamespace) -> tuple[list[Key], Counter[str]]:
    """Every notification on the backend queues, and the SQS messages per backend."""
    found: list[Key] = []
    messages: Counter[str] = Counter()
    for backend in BACKENDS:
        while True:
            got = env.sqs.receive_message(QueueUrl=env.urls[backend], MaxNumberOfMessages=10,
                                          WaitTimeSeconds=0).get("Messages", [])
            if not got:
                break
            # deleted as a sender would (and moto scans what is left on every receive)
            env.sqs.delete_message_batch(QueueUrl=env.urls[backend], Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)])
            for m in got:
                messages[backend] += 1
                for info, items in unpack_all(m["Body"], backend=backend):
                    found += [(info["id"], n["user"], backend, n["address"], tuple(n["rules"]))
                              for n in items]
    return found, messages


def wrap(record: bytes) -> str:
    return Envelope.wrap("fedora-messaging" if b'"body"' in record else "fedmsg",
                         "tcp://hub.test:9940", record).encode()


def test_the_handler_is_chalice_wired_to_the_incoming_queue(match_app: ModuleType) -> None:
    (source,) = match_app.app.event_sources
    assert source.queue.endswith("incoming") and source.batch_size == 100
    assert source.maximum_batching_window_in_seconds == 1


def test_backend_queues_get_exactly_what_the_matcher_decides(
        match_app: ModuleType, env: SimpleNamespace, records: list[bytes],
        expected: list[Key]) -> None:
    bodies = [wrap(r) for r in records]
    found: list[Key] = []
    messages: Counter[str] = Counter()
    for start in range(0, len(bodies), 100):
        failed, _ = invoke(match_app, env, bodies[start:start + 100])
        assert failed == []
        # drained batch by batch: moto's receive scans the whole queue each time
        more, sent = drain(env)
        found += more
        messages += sent
    assert Counter(found) == Counter(expected)  # every notification, each exactly once
    # one SQS message per (bus message, backend) here: none carries thousands
    per_backend = Counter(k[2] for k in expected)
    assert set(messages) == set(per_backend)
    assert all(messages[b] <= per_backend[b] for b in messages)
    # every message, notified or not, is kept for the rule preview
    from fmn.preview.window import RedisWindowStore, read_all, window_key

    window = RedisWindowStore(redis_client(), key=window_key(env.prefix))
    kept = [entry for _, entry in read_all(window)]
    assert len(kept) == len(records)


def test_a_poisoned_record_fails_alone(match_app: ModuleType, env: SimpleNamespace,
                                       records: list[bytes], expected: list[Key]) -> None:
    with_notes = {k[0] for k in expected}
    good = [r for r in records if parse(r).id in with_notes][:6]
    bodies = [wrap(r) for r in good]
    poison = ["this is not JSON", '{"v": 2, "bus": "fedmsg", "record": {}}',
              Envelope.wrap("fedmsg", "tcp://hub", b'{"topic": "x"}').encode()]
    batch = bodies[:2] + [poison[0]] + bodies[2:4] + poison[1:] + bodies[4:]
    failed, ids = invoke(match_app, env, batch)
    # retrying cannot help: the poison ends in the dead-letter queue now, with its reason
    assert failed == []
    found, _ = drain(env)
    good_ids = {parse(r).id for r in good}
    assert Counter(found) == Counter(k for k in expected if k[0] in good_ids)
    dlq = env.sqs.get_queue_url(QueueName=f"{env.prefix}incoming-dlq")["QueueUrl"]
    dead = []
    while got := env.sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10,
                                         MessageAttributeNames=["All"]).get("Messages"):
        dead += got
        env.sqs.delete_message_batch(QueueUrl=dlq, Entries=[
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)])
    assert sorted(m["Body"] for m in dead) == sorted(poison)
    assert all(m["MessageAttributes"]["error"]["StringValue"] for m in dead)


def test_records_left_when_time_runs_short_go_back_fresh(
        match_app: ModuleType, env: SimpleNamespace, records: list[bytes],
        expected: list[Key]) -> None:
    # one slow record must not take the batch past the timeout: Lambda would end the
    # invocation, nothing of the batch would be sent, and every record spend a receive
    with_notes = {k[0] for k in expected}
    good = [r for r in records if parse(r).id in with_notes][:6]
    bodies = [wrap(r) for r in good]
    asked = 0

    def remaining_ms() -> int:  # asked at the start, then before each record
        nonlocal asked
        asked += 1
        return 60_000 if asked <= 3 else 5_000

    ctx = context("fmn-match", memory_mb=1024)
    ctx.get_remaining_time_in_millis = remaining_ms  # type: ignore[method-assign]
    response = match_app.handle_incoming(sqs_event(bodies, f"{env.prefix}incoming"), ctx)
    assert response["batchItemFailures"] == []  # none spends a receive
    found, _ = drain(env)
    first = {parse(r).id for r in good[:2]}
    assert Counter(found) == Counter(k for k in expected if k[0] in first)
    back = []
    while got := env.sqs.receive_message(QueueUrl=env.urls["incoming"], MaxNumberOfMessages=10,
                                         MessageAttributeNames=["All"]).get("Messages"):
        back += got
        env.sqs.delete_message_batch(QueueUrl=env.urls["incoming"], Entries=[
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)])
    assert sorted(m["Body"] for m in back) == sorted(bodies[2:])  # in full, to match later
    assert all(POSTPONED_SINCE in m["MessageAttributes"] for m in back)


def test_a_claim_checked_record_is_fetched_from_s3(match_app: ModuleType, env: SimpleNamespace,
                                                   records: list[bytes],
                                                   expected: list[Key]) -> None:
    record = next(r for r in records if parse(r).id in {k[0] for k in expected})
    env.s3.put_object(Bucket=env.bucket, Key="claims/1", Body=record)
    body = Envelope.wrap("fedmsg", "tcp://hub", record).with_claim(
        make_claim(env.bucket, "claims/1", record)).encode()
    failed, _ = invoke(match_app, env, [body])
    assert failed == []
    found, _ = drain(env)
    assert Counter(found) == Counter(k for k in expected if k[0] == parse(record).id)


def test_a_missing_s3_object_is_a_retryable_failure(
        match_app: ModuleType, env: SimpleNamespace, records: list[bytes]) -> None:
    missing = Envelope.wrap("fedmsg", "tcp://hub", records[0]).with_claim(
        make_claim(env.bucket, "claims/gone", records[0])).encode()
    with pytest.raises(RetryableError):
        match_app.process(missing)
    failed, ids = invoke(match_app, env, [wrap(records[1]), missing])
    assert failed == [ids[1]]


def no_database(monkeypatch: pytest.MonkeyPatch) -> None:
    """No snapshot and no database to rebuild it from.  Not the default database: that is
    ``var/fmn.sqlite`` under the working directory, which ``make run`` fills, and the
    matcher would rebuild the snapshot from it."""
    monkeypatch.setenv("FMN_DATABASE_URL", "sqlite:////nonexistent/fmn-test/prefs.sqlite")


def test_no_snapshot_is_a_retryable_failure(match_app: ModuleType, env: SimpleNamespace,
                                            records: list[bytes],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FMN_SNAPSHOT_PREFIX", f"fmn-test:{uuid.uuid4().hex}:empty:")
    no_database(monkeypatch)
    match_app.reset()
    with pytest.raises(SnapshotUnavailable):
        match_app.process(wrap(records[0]))


def test_a_retryable_failure_backs_off_by_receive_count(
        match_app: ModuleType, env: SimpleNamespace, records: list[bytes],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The record is hidden for a delay that doubles with each receive, not dead-lettered."""
    monkeypatch.setenv("FMN_SNAPSHOT_PREFIX", f"fmn-test:{uuid.uuid4().hex}:empty:")
    no_database(monkeypatch)
    match_app.reset()
    url = env.urls["incoming"]
    # without a back-off, a failed record would be visible again at once
    env.sqs.set_queue_attributes(QueueUrl=url, Attributes={"VisibilityTimeout": "0"})
    env.sqs.send_message(QueueUrl=url, MessageBody=wrap(records[0]))
    receives = []
    for _ in range(3):  # each receive fails; make the record visible again at once to go on
        (msg,) = env.sqs.receive_message(QueueUrl=url, MessageSystemAttributeNames=["All"],
                                         WaitTimeSeconds=1)["Messages"]
        event = sqs_event([msg["Body"]], f"{env.prefix}incoming")
        record = event["Records"][0]
        record.update(receiptHandle=msg["ReceiptHandle"], attributes=msg["Attributes"])
        with pytest.raises(BatchProcessingError):  # the only record failed: the invocation fails
            match_app.handle_incoming(event, context("fmn-match"))
        assert env.sqs.receive_message(QueueUrl=url).get("Messages") is None  # hidden
        receives.append(int(msg["Attributes"]["ApproximateReceiveCount"]))
        env.sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=msg["ReceiptHandle"],
                                          VisibilityTimeout=0)
    assert receives == [1, 2, 3]
    from fmn.pipeline.redelivery import retry_delay_s

    assert [retry_delay_s(n, 60) for n in receives] == [60, 120, 240]


class FlakySQS:
    """The real client, but every SendMessageBatch first reports its first entry failed."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, str]]) -> Any:  # noqa: N803
        self.calls += 1
        if self.calls % 2:
            response = self.real.send_message_batch(QueueUrl=QueueUrl, Entries=Entries[1:])
            return {"Successful": response.get("Successful", []),
                    "Failed": [{"Id": Entries[0]["Id"], "SenderFault": False,
                                "Code": "InternalError"}]}
        return self.real.send_message_batch(QueueUrl=QueueUrl, Entries=Entries)


def test_entries_sqs_reports_failed_are_retried(match_app: ModuleType, env: SimpleNamespace,
                                                records: list[bytes],
                                                expected: list[Key]) -> None:
    batch = records[:40]
    match_app._get("sqs")  # build the singletons, then wrap the client
    flaky = match_app._state["sqs"] = FlakySQS(match_app._state["sqs"])
    failed, _ = invoke(match_app, env, [wrap(r) for r in batch])
    assert failed == [] and flaky.calls > 1
    found, _ = drain(env)
    ids = {parse(r).id for r in batch}
    assert Counter(found) == Counter(k for k in expected if k[0] in ids)


def test_records_whose_payloads_cannot_be_sent_come_back(
        match_app: ModuleType, env: SimpleNamespace, records: list[bytes],
        expected: list[Key]) -> None:
    env.sqs.delete_queue(QueueUrl=env.urls["irc"])
    irc = {k[0] for k in expected if k[2] == "irc"}
    batch = records[:60]
    failed, ids = invoke(match_app, env, [wrap(r) for r in batch])
    assert failed and set(failed) == {mid for mid, r in zip(ids, batch, strict=True)
                                      if parse(r).id in irc}
    only_irc = [r for r in records if parse(r).id in irc][:3]
    with pytest.raises(RetryableError):  # nothing at all went: the invocation fails
        invoke(match_app, env, [wrap(r) for r in only_irc])


def test_a_snapshot_lost_with_redis_is_rebuilt_from_the_database(
        match_app: ModuleType, env: SimpleNamespace, records: list[bytes],
        expected: list[Key], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis restarted without persistence: no ``current``, no blob.  The cold
    matcher rebuilds the snapshot from the database (once) and matches as before,
    instead of failing every record into the dead-letter queue."""
    from fmn import db

    engine = db.make_engine(f"sqlite:///{tmp_path / 'prefs.sqlite'}")
    db.upgrade(engine)
    db.import_document(engine, json.loads((GOLDEN / "prefs.json").read_text()))
    monkeypatch.setenv("FMN_DATABASE_URL", f"sqlite:///{tmp_path / 'prefs.sqlite'}")
    client = redis_client()
    for key in list(client.scan_iter(match=env.store.prefix + "*")):
        client.delete(key)  # what a restart without persistence leaves
    assert env.store.current_id() is None
    match_app.reset()

    failed, _ = invoke(match_app, env, [wrap(r) for r in records[:100]])
    assert failed == []
    found, _ = drain(env)
    ids = {parse(r).id for r in records[:100]}
    assert Counter(found) == Counter(k for k in expected if k[0] in ids)
    assert env.store.current_id() is not None
    assert match_app._get("live").rebuilds == 1


def test_a_fasjson_request_while_matching_is_bounded_well_within_the_timeout(
        match_app: ModuleType, env: SimpleNamespace, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    # the reconcile's 60 s would let one request take the invocation past its 30 s
    for name, value in {"FMN_DATABASE_URL": f"sqlite:///{tmp_path / 'fmn.sqlite'}",
                        "FMN_LIVE_FASJSON": "1", "FMN_FASJSON_AUTH": "none",
                        "FMN_SYNC_TIMEOUT_S": "60"}.items():
        monkeypatch.setenv(name, value)
    match_app.reset()
    fasjson = match_app.live_updater().fasjson
    assert fasjson.timeout_s == match_app.LIVE_FASJSON_TIMEOUT_S == 5.0
    assert fasjson.session.get_adapter("https://fasjson.test/").max_retries.total == 0
    match_app.reset()
