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
                    seed: int = 4) -> Iterator[LocalStack]:
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
                           web_port=free_port(), feed_port=free_port())
    stack = LocalStack(settings, options)
    stack.start(say=lambda *_: None)
    try:
        yield stack
    finally:
        stack.stop()
        # a connection of its own: one held idle through the test can lose its heartbeats
        rabbit = rabbitmq_connection()
        rabbit.channel().queue_delete(options.amqp_queue)
        rabbit.close()
        client = redis_client()
        for pattern in (f"fmn-test:{tag}:*", f"fmn:digest:{prefix}*", f"{prefix}*",
                        f"fmn:preview:{prefix}*"):
            keys = list(client.scan_iter(match=pattern))
            if keys:
                client.delete(*keys)
