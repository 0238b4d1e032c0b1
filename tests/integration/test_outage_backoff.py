"""A Redis outage longer than a queue's receives used to allow sends nothing to a dead-letter queue.

The live-feed writer (``functions/sse/app.py``) runs under the local runner
on a queue whose visibility timeout is scaled down to one second (five
receives: without back-off, five seconds of outage dead-letter everything),
on a private ``redis-server`` that is killed for eight seconds and started
again, empty.  Failed records back off (their visibility doubles with each
receive), so when Redis is back every notification arrives and the
dead-letter queue is empty.  Assertions are on what arrived and what is
left in the queues, never on durations.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest
from delivery_data import notification, payload

from fmn.delivery.feed import RedisFeed
from fmn.local.aws import clients, ensure_queue
from fmn.local.redis_server import RedisServer
from fmn.local.runner import EventSourceMapping
from fmn.local.stack import load_function
from fmn.pipeline.queues import queue
from fmn.settings import Settings

pytestmark = pytest.mark.integration

VISIBILITY_S = 1
RECEIVES = 5
#: longer than RECEIVES visibility timeouts: without back-off, all would be dead letters
OUTAGE_S = 2 * RECEIVES * VISIBILITY_S - 2


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def sse_app() -> ModuleType:
    return load_function("sse")


def test_a_redis_outage_sends_nothing_to_the_dead_letter_queue(
        aws_env: str, monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer,
        sse_app: ModuleType) -> None:
    prefix = f"fmn-o{uuid.uuid4().hex[:8]}-"
    for name, value in {"REDIS_URL": redis_server.url, "FMN_QUEUE_PREFIX": prefix,
                        "FMN_FEED_PREFIX": f"{prefix}feed:",
                        "FMN_RETRY_DELAY_S": str(VISIBILITY_S)}.items():
        monkeypatch.setenv(name, value)
    sse_app.reset()
    sqs = clients(Settings.from_env()).sqs
    q = replace(queue("sse"), visibility_timeout_s=VISIBILITY_S, max_receive_count=RECEIVES,
                batch_size=10)
    urls = ensure_queue(sqs, prefix, q)
    users = [f"u{i}" for i in range(20)]
    receives: list[int] = []

    def handler(event: dict[str, Any], context: Any) -> Any:
        receives.extend(int(r["attributes"]["ApproximateReceiveCount"])
                        for r in event["Records"])
        return sse_app.handle_sse(event, context)

    runner = EventSourceMapping(sqs, q, urls, handler, function_name="sse", poll_wait_s=1,
                                error_backoff_s=0.1, serialize_receives=True)
    redis_server.stop()  # Redis away ...
    try:
        runner.start()
        for i in range(0, len(users), 10):
            sqs.send_message_batch(QueueUrl=urls.url, Entries=[
                {"Id": u, "MessageBody": payload("sse", [notification(u, u, f"d-{u}")],
                                                 id=f"m-{prefix}{u}")}
                for u in users[i:i + 10]])
        time.sleep(OUTAGE_S)
        assert receives, "the runner never received during the outage"
        redis_server.start()  # ... and back, empty
        feed = RedisFeed.from_url(redis_server.url, f"{prefix}feed:")
        deadline = time.monotonic() + 60
        while (arrived := sum(len(feed.latest(u, 10)) for u in users)) < len(users):
            assert time.monotonic() < deadline, f"only {arrived} of {len(users)} arrived"
            time.sleep(0.2)
    finally:
        runner.stop(timeout=20)
        sse_app.reset()
    dead = sqs.receive_message(QueueUrl=urls.dlq_url, MaxNumberOfMessages=10,
                               MessageAttributeNames=["All"]).get("Messages", [])
    assert [orjson.loads(m["Body"])["notifications"][0]["user"] for m in dead] == []
    assert max(receives) < RECEIVES  # backed off: receives were not used up
    assert {orjson.loads(e.data)["message_id"] for u in users for e in feed.latest(u, 10)} == \
        {f"m-{prefix}{u}" for u in users}
