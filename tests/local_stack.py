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

from services import REDIS_URL, rabbitmq_connection, redis_client

from fmn.local.stack import LocalStack, StackOptions, free_port
from fmn.settings import Settings


def run_local_stack(aws_env: str, tmp_path: Path, name: str, users: int,
                    seed: int = 4, own_exchange: bool = False) -> Iterator[LocalStack]:
    """``own_exchange``: the bus's AMQP side is an exchange of the test's own (publish
    to ``stack.options.amqp_exchange``), so that the other stacks on a shared broker,
    whose bridges bind every topic of amq.topic, neither take nor add messages."""
    redis_client()
    rabbitmq_connection().close()  # there (skip or fail otherwise)
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
                           amqp_exchange=f"fmn-{name}-{tag}" if own_exchange else "amq.topic",
                           web_port=free_port(), feed_port=free_port())
    stack = LocalStack(settings, options)
    stack.start(say=lambda *_: None)
    try:
        yield stack
    finally:
        stack.stop()
        if stack.emulator == "localstack":  # shared by the machine: leave nothing behind
            remove_stage(stack.settings)
        # a connection of its own: one held idle through the test can lose its heartbeats
        rabbit = rabbitmq_connection()
        channel = rabbit.channel()
        channel.queue_delete(options.amqp_queue)
        if own_exchange:
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
