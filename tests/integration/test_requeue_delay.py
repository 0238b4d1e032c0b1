"""A postponed record goes back on its queue as a fresh message, after the delay asked.

On the moto server and on LocalStack (``any_aws_env``): the record is not visible
before its delay and is afterwards, with a receive count of its own (1), and a
delay past SQS's 15 minutes is held to them.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import boto3
import pytest

from fmn.pipeline.redelivery import (
    MAX_DELAY_S,
    MAX_POSTPONED_S,
    POSTPONED_SINCE,
    Redelivery,
    postponed_since,
)

pytestmark = pytest.mark.integration


def test_a_postponed_record_comes_back_fresh_after_its_delay(any_aws_env: str) -> None:
    sqs: Any = boto3.client("sqs", region_name="us-east-1")
    name = f"fmn-test-{uuid.uuid4().hex[:8]}-matrix"
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    try:
        arn = f"arn:aws:sqs:us-east-1:000000000000:{name}"
        redelivery = Redelivery(sqs, lambda queue: 300)
        redelivery.requeue({"eventSourceARN": arn, "body": "later"}, delay_s=2.2)
        early = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1,
                                    AttributeNames=["ApproximateReceiveCount"])
        assert early.get("Messages", []) == []  # not before its delay (3 s, rounded up)
        deadline = time.monotonic() + 15
        got: list[dict[str, Any]] = []
        while not got and time.monotonic() < deadline:
            got = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1,
                                      AttributeNames=["ApproximateReceiveCount"]
                                      ).get("Messages", [])
        assert [m["Body"] for m in got] == ["later"]
        assert got[0]["Attributes"]["ApproximateReceiveCount"] == "1"
        calls: list[dict[str, Any]] = []

        class Recording:
            def get_queue_url(self, QueueName: str) -> dict[str, str]:  # noqa: N803
                return {"QueueUrl": url}

            def send_message(self, **kw: Any) -> dict[str, Any]:
                calls.append(kw)
                return {}

        Redelivery(Recording(), lambda queue: 300).requeue(
            {"eventSourceARN": arn, "body": "x"}, delay_s=3600)
        assert calls[0]["DelaySeconds"] == MAX_DELAY_S == 900
        for endless in (float("inf"), float("nan")):  # "retry_after_ms": 1e999 reads as inf
            Redelivery(Recording(), lambda queue: 300).requeue(
                {"eventSourceARN": arn, "body": "x"}, delay_s=endless)
            assert calls[-1]["DelaySeconds"] == MAX_DELAY_S
    finally:
        sqs.delete_queue(QueueUrl=url)


def lambda_record(message: dict[str, Any], arn: str) -> dict[str, Any]:
    """A received message as Lambda's event source mapping hands it over."""
    return {"eventSourceARN": arn, "body": message["Body"],
            "messageAttributes": {
                name: {"stringValue": value["StringValue"], "dataType": value["DataType"]}
                for name, value in message.get("MessageAttributes", {}).items()}}


def test_a_record_postponed_for_a_day_is_dead_lettered(any_aws_env: str) -> None:
    """A requeued record is young again to SQS (its age alarm cannot see it), so it
    carries when it was first postponed; a day later it goes to the dead-letter queue."""
    sqs: Any = boto3.client("sqs", region_name="us-east-1")
    name = f"fmn-test-{uuid.uuid4().hex[:8]}-irc"
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    dlq = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    arn = f"arn:aws:sqs:us-east-1:000000000000:{name}"
    redelivery = Redelivery(sqs, lambda queue: 300)
    start = 1_700_000_000.0

    def take(queue_url: str) -> dict[str, Any]:
        got = sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=2,
                                  MessageAttributeNames=["All"])["Messages"]
        sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=got[0]["ReceiptHandle"])
        return got[0]

    try:
        assert redelivery.postpone({"eventSourceARN": arn, "body": "paced"}, "flood limit",
                                   now=start)
        first = take(url)
        assert first["MessageAttributes"][POSTPONED_SINCE]["StringValue"] == f"{start:.3f}"
        # postponed again an hour later: it keeps the first time, not the requeue's
        assert redelivery.postpone(lambda_record(first, arn), "flood limit", now=start + 3600)
        second = take(url)
        assert second["MessageAttributes"] == first["MessageAttributes"]
        assert not redelivery.postpone(lambda_record(second, arn), "flood limit",
                                       now=start + MAX_POSTPONED_S)
        assert sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0).get("Messages", []) == []
        dead = take(dlq)
        assert dead["Body"] == "paced"
        assert dead["MessageAttributes"]["error"]["StringValue"] == \
            "postponed for 24 h: flood limit"
    finally:
        sqs.delete_queue(QueueUrl=url)
        sqs.delete_queue(QueueUrl=dlq)


@pytest.mark.parametrize("value", ["soon", "nan", "inf", "-inf", None, 5])
def test_an_unreadable_postponed_time_starts_over(value: Any) -> None:
    """The attribute is ours, but a hand-sent message may carry anything: no time (or
    one in the future) counts as now, and the record is requeued, not lost."""
    now = 1_700_000_000.0
    attribute = {"stringValue": value} if value != 5 else "not a mapping"
    record = {"messageAttributes": {POSTPONED_SINCE: attribute}}
    assert postponed_since(record, now) == now
    assert postponed_since({"messageAttributes": {
        POSTPONED_SINCE: {"stringValue": str(now + 60)}}}, now) == now
    assert postponed_since({}, now) == now
    assert postponed_since({"messageAttributes": None}, now) == now
