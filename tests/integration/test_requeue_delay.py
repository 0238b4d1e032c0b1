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

from fmn.pipeline.redelivery import MAX_DELAY_S, Redelivery

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
