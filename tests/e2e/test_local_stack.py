"""The whole local stack, end to end: bus -> bridge -> SQS -> match -> backend queues.

``fmn up``'s stack is started in-process on the real services (the moto
server, Redis, RabbitMQ) and every shared Fedora message is replayed through
fedmsg (a ZeroMQ publisher, as fedmsg's hubs publish), and every
fedora-messaging record through RabbitMQ as well.  (A fedmsg envelope has no
AMQP form: fedora-messaging messages are schema-typed bodies with headers, so
the fedmsg file goes through fedmsg only.)  The notifications found on the
backend queues must be exactly what the matcher gives for the same
preferences and messages, counted: every message bridged once per bus it was
sent on, each notification present once per message sent, no dead letters.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from services import REDIS_URL, rabbitmq_connection, redis_client
from shared_data import MESSAGES

from fmn.generate import generate_preferences
from fmn.local import replay
from fmn.local.stack import LocalStack, StackOptions, free_port
from fmn.matcher import IndexedMatcher
from fmn.metadata import parse
from fmn.pipeline.notifications import unpack
from fmn.pipeline.queues import BACKENDS
from fmn.settings import Settings
from fmn.snapshot import build_snapshot

pytestmark = pytest.mark.e2e

USERS, SEED = 300, 4


@pytest.fixture
def stack(aws_env: str, tmp_path: Path) -> Iterator[LocalStack]:
    redis_client()  # fail in CI / skip locally when there is none
    rabbit = rabbitmq_connection()
    tag = uuid.uuid4().hex[:8]
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'prefs.sqlite'}",
                        redis_url=REDIS_URL, snapshot_prefix=f"fmn-test:{tag}:snapshot:",
                        aws_endpoint_url=aws_env, queue_prefix=f"e2e{tag}-",
                        claim_bucket=f"claims-{tag}", snapshot_poll_s=0.25)
    options = StackOptions(users=USERS, seed=SEED, workdir=tmp_path / "stack",
                           fedmsg_endpoint=f"tcp://127.0.0.1:{free_port()}",
                           amqp_queue=f"fmn-e2e-{tag}", poll_wait_s=1)
    local = LocalStack(settings, options)
    local.start(say=lambda *_: None)
    assert (tmp_path / "prefs.sqlite").exists() and "incoming" in local.urls
    assert local.urls["incoming"].url.endswith(f"/e2e{tag}-incoming")
    try:
        yield local
    finally:
        local.stop()
        rabbit.channel().queue_delete(options.amqp_queue)
        rabbit.close()
        client = redis_client()
        keys = list(client.scan_iter(match=f"fmn-test:{tag}:*"))
        if keys:
            client.delete(*keys)


def drain(sqs: Any, url: str) -> list[str]:
    bodies: list[str] = []
    while True:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                  WaitTimeSeconds=0).get("Messages", [])
        if not got:
            return bodies
        bodies += [m["Body"] for m in got]
        sqs.delete_message_batch(QueueUrl=url, Entries=[
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)])


def test_every_shared_message_flows_through_the_stack(stack: LocalStack,
                                                    tmp_path: Path) -> None:
    fedmsg_file, fm_file = MESSAGES / "fedmsg.jsonl", MESSAGES / "fedora-messaging.jsonl"
    fedmsg_lines = [ln for ln in fedmsg_file.read_bytes().splitlines() if ln.strip()]
    fm_lines = [ln for ln in fm_file.read_bytes().splitlines() if ln.strip()]
    both = tmp_path / "both.jsonl"
    both.write_bytes(b"\n".join(fedmsg_lines + fm_lines) + b"\n")
    lines = fedmsg_lines + fm_lines + fm_lines  # fedora-messaging records: both buses
    replay.replay_fedmsg(both, stack.options.fedmsg_endpoint, None)
    replay.replay_amqp(fm_file, stack.options.amqp_url, None)

    deadline = time.monotonic() + 240
    status = stack.status()
    while time.monotonic() < deadline:
        status = stack.status()
        incoming = status["queues"]["incoming"]
        if status["counters"]["matched"] >= len(lines) and \
                incoming["visible"] == incoming["in_flight"] == 0:
            break
        time.sleep(0.5)
    counters = status["counters"]
    assert counters["bridged"] == len(lines), "every message reached the incoming queue once"
    assert counters["matched"] == len(lines)
    assert all(q["dlq"] == 0 for q in status["queues"].values()), status

    found: Counter[tuple[Any, ...]] = Counter()
    for backend in BACKENDS:
        for body in drain(stack.sqs, stack.urls[backend].url):
            message, notifications = unpack(body, backend)
            for n in notifications:
                found[(message["id"], n["user"], backend, n["address"], tuple(n["rules"]))] += 1

    matcher = IndexedMatcher(build_snapshot(generate_preferences(USERS, SEED)))
    expected: Counter[tuple[Any, ...]] = Counter()
    for line in lines:
        for n in matcher.match(parse(line)):
            expected[(n.message_id, n.user, n.protocol, n.address, n.rules)] += 1
    assert expected, "the demo preferences must route some of the shared messages"
    assert found == expected
    assert {b: counters["notifications"][b] for b in BACKENDS} == {
        b: sum(c for k, c in expected.items() if k[2] == b) for b in BACKENDS}
