"""AWS clients by endpoint alone, and the pipeline's queues created from their definitions.

:func:`clients` builds the runner's SQS and S3 clients with
:func:`fmn.aws.client` from :class:`fmn.settings.Settings`: the endpoint
(moto server, LocalStack, or unset for AWS) and the region are the only
differences between environments.  :func:`ensure_queues` creates every queue of
:data:`fmn.pipeline.queues.QUEUES` and its dead-letter queue with the
definition's visibility timeout, retention and redrive policy
(``maxReceiveCount``), idempotently: an existing queue has its attributes set
back to the definition, so running it twice, or after a definition changed,
converges.  It returns the URLs and ARNs the runner and the bridge need.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fmn.pipeline.queues import DLQ_RETENTION_S, QUEUES, QueueDef
from fmn.settings import Settings

log = logging.getLogger(__name__)

__all__ = ["DLQ_RETENTION_S", "AwsClients", "QueueUrls", "clients", "ensure_queue",
           "ensure_queues", "redrive"]


@dataclass(frozen=True)
class AwsClients:
    sqs: Any
    s3: Any


@dataclass(frozen=True)
class QueueUrls:
    url: str
    arn: str
    dlq_url: str
    dlq_arn: str

    @property
    def region(self) -> str:
        # arn:aws:sqs:REGION:ACCOUNT:NAME
        return self.arn.split(":")[3]


def clients(settings: Settings, *, max_pool_connections: int = 50) -> AwsClients:
    """The SQS and S3 clients for ``settings``' endpoint and region.

    The connection pool is sized for one connection per concurrent poller
    (boto3's default of 10 would make pollers queue for connections), and the
    read timeout exceeds SQS's longest long poll (20 s).
    """
    from fmn.aws import LONG_POLL_READ_TIMEOUT_S, client

    options: dict[str, Any] = {"max_pool_connections": max_pool_connections,
                               "read_timeout": LONG_POLL_READ_TIMEOUT_S}
    return AwsClients(sqs=client("sqs", settings, **options),
                      s3=client("s3", settings, **options))


def _ensure_queue(sqs: Any, name: str, attributes: dict[str, str]) -> tuple[str, str]:
    # CreateQueue fails on an existing queue whose attributes differ, so look
    # the queue up first and set the definition's attributes on it: the call
    # is idempotent and converges after a definition changed.
    try:
        url: str = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    except sqs.exceptions.QueueDoesNotExist:
        url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        log.debug("created queue %s", url)
    else:
        sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)
    arn: str = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    return url, arn


def ensure_queue(sqs: Any, prefix: str, queue: QueueDef) -> QueueUrls:
    """Create (or update) one queue and its dead-letter queue from its definition."""
    dlq_url, dlq_arn = _ensure_queue(
        sqs, queue.dlq_name(prefix), {"MessageRetentionPeriod": str(DLQ_RETENTION_S)}
    )
    redrive = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": queue.max_receive_count}
    url, arn = _ensure_queue(
        sqs,
        queue.sqs_name(prefix),
        {
            "VisibilityTimeout": str(queue.visibility_timeout_s),
            "MessageRetentionPeriod": str(queue.retention_s),
            "RedrivePolicy": json.dumps(redrive),
        },
    )
    log.info("queue %s ready (dlq %s, max receives %d)", url, dlq_url, queue.max_receive_count)
    return QueueUrls(url=url, arn=arn, dlq_url=dlq_url, dlq_arn=dlq_arn)


def ensure_queues(
    sqs: Any, prefix: str, queues: Iterable[QueueDef] = QUEUES
) -> dict[str, QueueUrls]:
    """Create every queue of ``queues`` (default: the pipeline's) with its DLQ; by logical name."""
    return {q.name: ensure_queue(sqs, prefix, q) for q in queues}


def redrive(sqs: Any, dlq_url: str, url: str) -> int:
    """Move every message of a dead-letter queue back to its source queue; how many.

    Each message is sent before it is deleted, so a failure in between
    re-drives it twice (the senders drop the repeat), never loses it.
    """
    moved = 0
    while True:
        messages = sqs.receive_message(QueueUrl=dlq_url, MaxNumberOfMessages=10,
                                       WaitTimeSeconds=0).get("Messages", [])
        if not messages:
            return moved
        sent = sqs.send_message_batch(QueueUrl=url, Entries=[
            {"Id": str(i), "MessageBody": m["Body"]} for i, m in enumerate(messages)])
        ok = {int(e["Id"]) for e in sent.get("Successful", [])}
        done = [m for i, m in enumerate(messages) if i in ok]
        if done:
            sqs.delete_message_batch(QueueUrl=dlq_url, Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)])
        moved += len(done)
