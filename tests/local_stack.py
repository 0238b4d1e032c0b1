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

from fmn.local.messaging import remove_stage
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
