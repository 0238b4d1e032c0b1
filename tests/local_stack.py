"""``fmn up``'s stack for a test: on the real services, under names of its own, cleaned up.

A generator for a fixture to ``yield from``: the moto server of the test
session, the local Redis and RabbitMQ (skipped locally, failed in CI when
missing), queues, keys and the RabbitMQ queue named after a fresh tag, free
ports for the fedmsg endpoint, the feed endpoint and the web UI.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from services import REDIS_URL, rabbitmq_connection, redis_client

from fmn.local.stack import LocalStack, StackOptions, free_port
from fmn.settings import Settings


def run_local_stack(aws_env: str, tmp_path: Path, name: str, users: int,
                    seed: int = 4, synapse: Any = None) -> Iterator[LocalStack]:
    """``synapse``: the session's homeserver for the Matrix sender (none: no Matrix)."""
    redis_client()
    rabbitmq_connection().close()
    tag = uuid.uuid4().hex[:8]
    prefix = f"{name}{tag}-"
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'prefs.sqlite'}",
                        redis_url=REDIS_URL, snapshot_prefix=f"fmn-test:{tag}:snapshot:",
                        aws_endpoint_url=aws_env, queue_prefix=prefix,
                        claim_bucket=f"claims-{tag}", snapshot_poll_s=0.25,
                        feed_prefix=f"fmn-test:{tag}:feed:")
    options = StackOptions(users=users, seed=seed, workdir=tmp_path / "stack",
                           fedmsg_endpoint=f"tcp://127.0.0.1:{free_port()}",
                           amqp_queue=f"fmn-{name}-{tag}", poll_wait_s=1,
                           # an exchange of its own: other stacks on the same broker
                           # (tests running at the same time) bind amq.topic's "#"
                           amqp_exchange=f"fmn-{name}-{tag}",
                           web_port=free_port(), feed_port=free_port(),
                           matrix=synapse is not None, synapse=synapse)
    stack = LocalStack(settings, options)
    stack.start(say=lambda *_: None)
    try:
        yield stack
    finally:
        stack.stop()
        if stack.emulator == "localstack":  # shared by the machine: leave nothing behind
            remove_stage(stack.settings)
        # a fresh connection: the first one may have been idle past its heartbeat
        rabbit = rabbitmq_connection()
        channel = rabbit.channel()
        channel.queue_delete(options.amqp_queue)
        channel.exchange_delete(options.amqp_exchange)
        rabbit.close()
        client = redis_client()
        for pattern in (f"fmn-test:{tag}:*", f"{{fmn-test:{tag}:*", f"fmn:digest:{{{prefix}}}*",
                        f"{prefix}*",
                        f"fmn:preview:{prefix}*"):
            keys = list(client.scan_iter(match=pattern))
            if keys:
                client.delete(*keys)


def remove_stage(settings: Settings) -> None:
    """Delete a stage's AWS resources: its messaging stack, queues, alarms, topic, bucket."""
    import contextlib

    from fmn.aws import client
    from fmn.local import messaging
    from fmn.ops.alarms import topic_name
    from fmn.pipeline.alarms import alarm_names

    prefix = settings.queue_prefix
    s3 = client("s3", settings)
    messaging.remove(client("cloudformation", settings), s3, prefix)
    sqs = client("sqs", settings)
    for url in sqs.list_queues(QueueNamePrefix=prefix).get("QueueUrls", []):
        sqs.delete_queue(QueueUrl=url)
    client("cloudwatch", settings).delete_alarms(AlarmNames=alarm_names(prefix))
    sns = client("sns", settings)
    for topic in sns.list_topics().get("Topics", []):
        if topic["TopicArn"].endswith(f":{topic_name(prefix)}"):
            sns.delete_topic(TopicArn=topic["TopicArn"])
    with contextlib.suppress(s3.exceptions.NoSuchBucket):
        for obj in s3.list_objects_v2(Bucket=settings.claim_bucket).get("Contents", []):
            s3.delete_object(Bucket=settings.claim_bucket, Key=obj["Key"])
        s3.delete_bucket(Bucket=settings.claim_bucket)
