"""Dead-letter queues for real, on the moto server and on LocalStack alike.

* A record the function keeps failing is moved to the dead-letter queue by
  SQS itself; ``peek`` reads it (bus message id, topic, receive count) and
  leaves it there; ``redrive`` sends it back (``StartMessageMoveTask`` on
  LocalStack, a batched move on the moto server, which lacks it) and, the
  function fixed, it is delivered exactly once.
* ``fmn dlq list``, ``show`` and ``redrive`` on the pipeline's own queues
  (under a fresh prefix): a sender's dead letter with its reason, a bus
  envelope, a hostile topic printed harmlessly, nothing lost by looking.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from shared_data import MESSAGES

from fmn.cli import main
from fmn.local.aws import AwsClients, clients, ensure_queues
from fmn.local.emulator import is_localstack
from fmn.local.runner import EventSourceMapping, LambdaContext
from fmn.ops import dlq
from fmn.pipeline.envelope import Envelope
from fmn.pipeline.queues import QueueDef
from fmn.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def aws(any_aws_env: str) -> AwsClients:
    return clients(Settings.from_env())


@pytest.fixture
def prefix(aws: AwsClients) -> Iterator[str]:
    tag = f"t{uuid4().hex[:8]}-"
    yield tag
    # the shared LocalStack keeps what a test leaves: remove this test's queues
    for url in aws.sqs.list_queues(QueueNamePrefix=tag).get("QueueUrls", []):
        aws.sqs.delete_queue(QueueUrl=url)


def _counts(sqs: Any, url: str) -> tuple[int, int]:
    a = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return int(a["ApproximateNumberOfMessages"]), int(a["ApproximateNumberOfMessagesNotVisible"])


def _wait_for(cond: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.1)


def _fedmsg_record() -> tuple[bytes, str, str]:
    """A shared fedmsg record, its id as every stage reads it (fmn.metadata), its topic."""
    from fmn.metadata import parse

    line = next(ln for ln in (MESSAGES / "fedmsg.jsonl").read_bytes().splitlines()
                if ln.strip() and b'"msg_id"' not in ln)  # an id derived from the content
    message = parse(line)
    return line, message.id, message.topic


def test_a_dead_letter_redriven_is_delivered_once(aws: AwsClients, prefix: str,
                                                   any_aws_env: str) -> None:
    qdef = QueueDef("work", "worker", visibility_timeout_s=1, max_receive_count=2,
                    batch_size=10, batching_window_s=0, max_concurrency=1)
    urls = ensure_queues(aws.sqs, prefix, [qdef])["work"]
    record, bus_id, topic = _fedmsg_record()
    body = Envelope.wrap("fedmsg", "tcp://hub.example:9940", record).encode()
    delivered: Counter[str] = Counter()
    broken = threading.Event()
    broken.set()

    def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        failures = []
        for r in event["Records"]:
            if broken.is_set():
                failures.append({"itemIdentifier": r["messageId"]})
            else:
                delivered[r["body"]] += 1
        return {"batchItemFailures": failures}

    aws.sqs.send_message(QueueUrl=urls.url, MessageBody=body)
    runner = EventSourceMapping(aws.sqs, qdef, urls, handler, poll_wait_s=1,
                                scale_interval_s=0.2, serialize_receives=True).start()
    try:
        _wait_for(lambda: _counts(aws.sqs, urls.dlq_url)[0] == 1)
        found = dlq.find(aws.sqs, prefix, "work", [qdef])
        assert (found.visible, found.source_url) == (1, urls.url)

        letters = dlq.peek(aws.sqs, found, limit=5)
        assert [(d.bus_message_id, d.topic, d.kind) for d in letters] == \
            [(bus_id, topic, "envelope")]
        assert letters[0].receive_count == qdef.max_receive_count
        assert _counts(aws.sqs, urls.dlq_url) == (1, 0), "looking took nothing away"

        broken.clear()
        result = dlq.redrive(aws.sqs, found)
        expected = "StartMessageMoveTask" if is_localstack(any_aws_env) else "batched move"
        assert (result.moved, result.method) == (1, expected)
        _wait_for(lambda: delivered[body] == 1)
        _wait_for(lambda: _counts(aws.sqs, urls.url) == (0, 0))
        time.sleep(1.5)  # past the visibility timeout: nothing comes back
    finally:
        assert runner.stop(timeout=15)
    assert delivered == Counter({body: 1})
    assert _counts(aws.sqs, urls.dlq_url) == (0, 0)


def test_fmn_dlq_list_show_redrive(aws: AwsClients, prefix: str,
                                   monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FMN_QUEUE_PREFIX", prefix)
    urls = ensure_queues(aws.sqs, prefix)
    record, bus_id, topic = _fedmsg_record()
    aws.sqs.send_message(QueueUrl=urls["incoming"].dlq_url,
                         MessageBody=Envelope.wrap("fedmsg", "tcp://h:1", record).encode())
    hostile = "org.fedoraproject.prod.\x1b[2Jwiped\nX-Injected: yes"
    payload = {"v": 1, "backend": "sse", "part": 1, "parts": 1,
               "message": {"id": "2026-hostile", "topic": hostile},
               "notifications": [{"user": "alice", "address": "alice", "destination": "d1",
                                  "rules": ["r1"]}],
               "error": "the feed refused it"}
    for _ in range(2):
        aws.sqs.send_message(QueueUrl=urls["sse"].dlq_url, MessageBody=json.dumps(payload),
                             MessageAttributes={"error": {"DataType": "String",
                                                          "StringValue": "the feed refused it"}})

    assert main(["dlq", "list"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["incoming"][1:3] == [f"{prefix}incoming-dlq", "1"]
    assert rows["sse"][1:3] == [f"{prefix}sse-dlq", "2"]
    assert rows["email"][2] == "0"

    assert main(["dlq", "show", "incoming"]) == 0
    out = capsys.readouterr().out
    assert f"bus message {bus_id}" in out and f"topic {topic}" in out

    assert main(["dlq", "show", f"{prefix}sse-dlq", "--limit", "1", "--json"]) == 0
    [shown] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert shown["bus_message_id"] == "2026-hostile"
    assert shown["reason"] == "the feed refused it" and shown["recipients"] == ["alice"]
    assert "\x1b" not in shown["topic"] and "\n" not in shown["topic"]
    assert shown["topic"].startswith("org.fedoraproject.prod.")
    assert _counts(aws.sqs, urls["sse"].dlq_url) == (2, 0), "show leaves them all there"

    assert main(["dlq", "redrive", "sse"]) == 0
    assert "2 moved back" in capsys.readouterr().out
    _wait_for(lambda: _counts(aws.sqs, urls["sse"].url)[0] == 2)
    assert _counts(aws.sqs, urls["sse"].dlq_url) == (0, 0)
    bodies = [m["Body"] for m in aws.sqs.receive_message(
        QueueUrl=urls["sse"].url, MaxNumberOfMessages=10, WaitTimeSeconds=1)["Messages"]]
    assert bodies and all(json.loads(b) == payload for b in bodies)

    assert main(["dlq", "show", "nonesuch"]) == 2
    assert "no queue named 'nonesuch'" in capsys.readouterr().err


def test_an_unreachable_endpoint_is_an_error_not_a_traceback(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        tmp_path: Path) -> None:
    from fmn.local.stack import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    assert main(["dlq", "list", "--workdir", str(tmp_path)]) == 2
    assert "AWS error: Could not connect" in capsys.readouterr().err


def test_a_redriven_backend_record_loses_its_postponement_clock(aws: AwsClients,
                                                                prefix: str) -> None:
    # StartMessageMoveTask keeps every attribute: a record postponed once and then moved
    # by SQS after its receives would, redriven, be dead-lettered again at its next
    # postponement ("postponed for 48 h"), undoing the redrive
    from fmn.pipeline.queues import queue
    from fmn.pipeline.redelivery import POSTPONED_SINCE

    urls = ensure_queues(aws.sqs, prefix, [queue("irc")])["irc"]
    aws.sqs.send_message(QueueUrl=urls.dlq_url, MessageBody="paced", MessageAttributes={
        POSTPONED_SINCE: {"DataType": "Number", "StringValue": "1700000000.000"},
        "error": {"DataType": "String", "StringValue": "IRC server away"}})
    found = dlq.find(aws.sqs, prefix, "irc")
    result = dlq.redrive(aws.sqs, found)
    assert (result.moved, result.method) == (1, "batched move")
    got = aws.sqs.receive_message(QueueUrl=urls.url, WaitTimeSeconds=2,
                                  MessageAttributeNames=["All"])["Messages"]
    assert [m["Body"] for m in got] == ["paced"]
    # nor its old reason: if it comes back, it must be with the new one
    assert not got[0].get("MessageAttributes")


def test_a_redrive_of_large_dead_letters_fits_each_request(aws: AwsClients,
                                                          prefix: str) -> None:
    # bodies are packed up to 250 KiB; ten of them in one SendMessageBatch is far over
    # what a request takes (BatchRequestTooLong), and the redrive moved nothing
    from fmn.pipeline.queues import queue

    urls = ensure_queues(aws.sqs, prefix, [queue("email")])["email"]
    bodies = [f"{n}:" + "x" * 240_000 for n in range(6)]
    for body in bodies:
        aws.sqs.send_message(QueueUrl=urls.dlq_url, MessageBody=body)
    found = dlq.find(aws.sqs, prefix, "email")
    assert dlq.redrive(aws.sqs, found).moved == 6
    got: list[str] = []
    deadline = time.monotonic() + 30
    while len(got) < 6 and time.monotonic() < deadline:
        for m in aws.sqs.receive_message(QueueUrl=urls.url, MaxNumberOfMessages=10,
                                         WaitTimeSeconds=1).get("Messages", []):
            got.append(m["Body"])
            aws.sqs.delete_message(QueueUrl=urls.url, ReceiptHandle=m["ReceiptHandle"])
    assert sorted(got) == sorted(bodies)
    assert _counts(aws.sqs, urls.dlq_url) == (0, 0)


def _dead_letters(aws: AwsClients, dlq_url: str, bodies: list[str]) -> None:
    for start in range(0, len(bodies), 10):
        aws.sqs.send_message_batch(QueueUrl=dlq_url, Entries=[
            {"Id": str(i), "MessageBody": b} for i, b in enumerate(bodies[start:start + 10])])


def _drain(aws: AwsClients, url: str, expected: int) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + 30
    while len(got) < expected and time.monotonic() < deadline:
        for m in aws.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                         WaitTimeSeconds=1).get("Messages", []):
            got.append(m["Body"])
            aws.sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
    return got


def test_dead_letters_with_one_body_all_move(aws: AwsClients, prefix: str) -> None:
    # the move stopped at a body it had moved before, taking a second dead letter with the
    # same body (the same bus message dead-lettered twice) for one that came back
    from fmn.pipeline.queues import queue

    urls = ensure_queues(aws.sqs, prefix, [queue("email")])["email"]
    _dead_letters(aws, urls.dlq_url, ["the same payload"] * 12)  # two receives at least
    result = dlq.redrive(aws.sqs, dlq.find(aws.sqs, prefix, "email"))
    assert result.moved == 12
    assert _drain(aws, urls.url, 12) == ["the same payload"] * 12
    assert _counts(aws.sqs, urls.dlq_url) == (0, 0)


@pytest.mark.parametrize("returns", ["moved by SQS", "dead-lettered by the sender",
                                     "its notification dead-lettered by the sender"])
def test_a_dead_letter_that_fails_again_at_once_stops_the_move(
        aws: AwsClients, prefix: str, caplog: pytest.LogCaptureFixture, returns: str) -> None:
    # SQS keeps a message's id when it moves it to the dead-letter queue: the copies this
    # move sent come back under the ids SQS gave them, and the move stops there.  A
    # sender that dead-letters a record itself sends its body anew, under a new id.
    qdef = QueueDef("email", "send_email", visibility_timeout_s=30, max_receive_count=1,
                    batch_size=10, batching_window_s=0, max_concurrency=1)
    urls = ensure_queues(aws.sqs, prefix, [qdef])["email"]
    _dead_letters(aws, urls.dlq_url, [f"held {n}" for n in range(10)])
    # ten dead letters someone is looking at: counted, so the move may move 20, but not
    # to be received; only the copies that come back are there to receive after the first
    held = _receive_all(aws, urls.dlq_url, 10)
    from delivery_data import notification, payload

    from fmn.delivery.base import dead_letter_body, deliveries

    poison = [payload("email", [notification(f"u{n}", f"u{n}@example.org", "email")])
              for n in range(10)]
    _dead_letters(aws, urls.dlq_url, poison)

    def fail_at_once(**_kwargs: Any) -> None:
        if returns == "its notification dead-lettered by the sender":  # 550, say
            time.sleep(1.1)  # (as below)
            while got := aws.sqs.receive_message(QueueUrl=urls.url, MaxNumberOfMessages=10,
                                                 WaitTimeSeconds=1).get("Messages", []):
                for m in got:
                    for item in deliveries(m["Body"], "email"):
                        aws.sqs.send_message(QueueUrl=urls.dlq_url,
                                             MessageBody=dead_letter_body(item, "550 again"))
                    aws.sqs.delete_message(QueueUrl=urls.url, ReceiptHandle=m["ReceiptHandle"])
            return
        if returns == "dead-lettered by the sender":  # as Redelivery.dead_letter does
            # after the second the move began in (SQS's Date header has whole seconds:
            # a copy back sooner is taken for an older dead letter and moved once more)
            time.sleep(1.1)
            while got := aws.sqs.receive_message(QueueUrl=urls.url, MaxNumberOfMessages=10,
                                                 WaitTimeSeconds=1).get("Messages", []):
                for m in got:
                    aws.sqs.send_message(QueueUrl=urls.dlq_url, MessageBody=m["Body"])
                    aws.sqs.delete_message(QueueUrl=urls.url, ReceiptHandle=m["ReceiptHandle"])
            return
        # the consumer receives the copies and fails them: their second receive moves
        # them back to the dead-letter queue
        for _ in range(40):
            aws.sqs.receive_message(QueueUrl=urls.url, MaxNumberOfMessages=10,
                                    VisibilityTimeout=0)
            if _counts(aws.sqs, urls.url) == (0, 0):
                return
            time.sleep(0.05)

    aws.sqs.meta.events.register("after-call.sqs.SendMessageBatch", fail_at_once)
    try:
        with caplog.at_level("WARNING", logger="fmn.ops.dlq"):
            result = dlq.redrive(aws.sqs, dlq.find(aws.sqs, prefix, "email", [qdef]))
    finally:
        aws.sqs.meta.events.unregister("after-call.sqs.SendMessageBatch", fail_at_once)
    assert result.moved == 10
    assert "10 dead letters came back while being moved" in caplog.text
    assert _counts(aws.sqs, urls.url) == (0, 0)
    # nothing lost: what came back and what was held are in the dead-letter queue
    aws.sqs.change_message_visibility_batch(QueueUrl=urls.dlq_url, Entries=[
        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
        for i, m in enumerate(held)])
    def digest(body: str) -> list[str]:
        return sorted(dlq._digest(body))

    assert sorted(map(digest, _drain(aws, urls.dlq_url, 20))) == sorted(
        map(digest, [f"held {n}" for n in range(10)] + poison))


def _receive_all(aws: AwsClients, url: str, count: int) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    while len(got) < count and time.monotonic() < deadline:
        got += aws.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=count - len(got),
                                       VisibilityTimeout=120, WaitTimeSeconds=1
                                       ).get("Messages", [])
    assert len(got) == count
    return got


def _spoil_receipt(times: int) -> tuple[Callable[..., None], list[int]]:
    """A botocore hook that spoils the first entry's receipt handle in the first
    ``times`` DeleteMessageBatch requests: SQS then answers it as ``Failed``."""
    calls: list[int] = []

    def spoil(params: dict[str, Any], **_kwargs: Any) -> None:
        calls.append(len(params["Entries"]))
        if len(calls) <= times:
            params["Entries"][0]["ReceiptHandle"] = "spoiled"

    return spoil, calls


def test_a_delete_sqs_fails_is_tried_again(aws: AwsClients, prefix: str) -> None:
    from fmn.pipeline.queues import queue

    urls = ensure_queues(aws.sqs, prefix, [queue("email")])["email"]
    _dead_letters(aws, urls.dlq_url, [f"letter {n}" for n in range(5)])
    spoil, calls = _spoil_receipt(times=1)
    aws.sqs.meta.events.register("before-parameter-build.sqs.DeleteMessageBatch", spoil)
    try:
        result = dlq.redrive(aws.sqs, dlq.find(aws.sqs, prefix, "email"))
    finally:
        aws.sqs.meta.events.unregister("before-parameter-build.sqs.DeleteMessageBatch", spoil)
    assert result.moved == 5 and calls[-1] == 1  # the failed entry alone, once more
    assert sorted(_drain(aws, urls.url, 5)) == [f"letter {n}" for n in range(5)]
    assert _counts(aws.sqs, urls.dlq_url) == (0, 0)


def test_a_delete_sqs_keeps_failing_is_an_error_not_a_move(aws: AwsClients,
                                                          prefix: str) -> None:
    # before: a Failed delete counted as moved, and its copy came back to the dead-letter
    # queue unannounced (the next redrive sent it a second time)
    from fmn.pipeline.queues import queue

    urls = ensure_queues(aws.sqs, prefix, [queue("email")])["email"]
    _dead_letters(aws, urls.dlq_url, [f"letter {n}" for n in range(5)])
    spoil, _calls = _spoil_receipt(times=99)
    aws.sqs.meta.events.register("before-parameter-build.sqs.DeleteMessageBatch", spoil)
    try:
        with pytest.raises(dlq.DlqError, match=r"deleting 1 of the last 5 .* failed"):
            dlq.redrive(aws.sqs, dlq.find(aws.sqs, prefix, "email"))
    finally:
        aws.sqs.meta.events.unregister("before-parameter-build.sqs.DeleteMessageBatch", spoil)
    # all five were sent; the one not deleted is still in the dead-letter queue (held)
    assert sorted(_drain(aws, urls.url, 5)) == [f"letter {n}" for n in range(5)]
    assert sum(_counts(aws.sqs, urls.dlq_url)) == 1
