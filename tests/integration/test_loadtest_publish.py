"""The load test's publisher journals each message at the time it stamped into it.

Latencies are measured from that journal: the bus stage's median came out below
zero on AMQP when a batch of 200 confirmed publishes (about 1.5 s) was journalled
at the time of the write instead of each message's own.
"""

from __future__ import annotations

import itertools
import uuid
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from services import AMQP_URL, rabbitmq_connection

from fmn.ledger.journal import PUBLISHED, Journal, read_lines


@pytest.mark.parametrize("count", [3, 205])  # within one journal batch, and across two
def test_each_message_is_journalled_at_its_own_publish_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    import time

    import loadtest.run as run
    from loadtest.messages import Outgoing

    conn = rabbitmq_connection()
    channel = conn.channel()
    queue = channel.queue_declare("", exclusive=True).method.queue
    topic = f"org.fedoraproject.test.loadtest.{uuid.uuid4().hex}"
    channel.queue_bind(queue, "amq.topic", topic)
    clock = itertools.count(1_700_000_000, 10)  # each publish ten seconds after the last
    monkeypatch.setattr(run, "time", SimpleNamespace(time=lambda: float(next(clock)),
                                                     perf_counter=time.perf_counter))
    outgoing = [Outgoing("amqp", f"m{i}", topic, {"body": {"n": i}, "headers": {}})
                for i in range(count)]
    stack = SimpleNamespace(journal=Journal(tmp_path),
                            options=SimpleNamespace(amqp_url=AMQP_URL,
                                                    amqp_exchange="amq.topic"))
    try:
        run._publish(stack, "amqp", outgoing, SimpleNamespace(publish_s=0.0))
        journalled = {d["id"]: d["t"] for d in read_lines(tmp_path / PUBLISHED)}
        stamped: dict[str, Any] = {
            o.id: datetime.fromisoformat(o.record["headers"]["sent-at"]).timestamp()
            for o in outgoing}
        assert journalled == stamped
        assert len(set(journalled.values())) == count
        assert channel.queue_declare(queue, passive=True).method.message_count == count
    finally:
        conn.close()
