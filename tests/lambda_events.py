"""Lambda-shaped inputs for calling a function's handler directly, as the local runner does."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from fmn.local.runner import LambdaContext


def sqs_event(bodies: Sequence[str], queue: str = "q",
              ids: Sequence[str] | None = None) -> dict[str, Any]:
    """An SQS event as the event source mapping delivers it (message ids ``m0``, ``m1``, ...
    unless given)."""
    ids = list(ids) if ids is not None else [f"m{i}" for i in range(len(bodies))]
    return {"Records": [{
        "messageId": mid, "receiptHandle": f"handle-{mid}", "body": body,
        "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1704067200000",
                       "SenderId": "AIDATEST", "ApproximateFirstReceiveTimestamp": "1704067200001"},
        "messageAttributes": {}, "md5OfBody": hashlib.md5(body.encode()).hexdigest(),
        "eventSource": "aws:sqs", "awsRegion": "us-east-1",
        "eventSourceARN": f"arn:aws:sqs:us-east-1:123456789012:{queue}",
    } for mid, body in zip(ids, bodies, strict=True)]}


def message_ids(event: dict[str, Any]) -> list[str]:
    return [r["messageId"] for r in event["Records"]]


def context(function: str, timeout_s: float = 60, memory_mb: int = 256) -> LambdaContext:
    """A fresh invocation's context (its deadline starts now)."""
    return LambdaContext(function, f"arn:aws:lambda:us-east-1:123456789012:function:{function}",
                         memory_mb, timeout_s)
