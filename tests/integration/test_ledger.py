"""The ledger's readers on the real services: the journal, send-once records, feeds, queues."""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

import orjson
import pytest
from services import redis_client

from fmn.delivery.feed import RedisFeed
from fmn.delivery.once import PowertoolsOnce, sends_prefix
from fmn.ledger.account import once_key, peek_queue, read_feeds, read_once
from fmn.ledger.journal import MATCHED, Journal, read_lines

pytestmark = pytest.mark.integration


def test_journal_lines_from_many_threads_stay_whole(tmp_path: Path) -> None:
    journal = Journal(tmp_path)

    def write(n: int) -> None:
        for i in range(200):
            journal.matched([{"id": f"{n}-{i}", "sqs": "s", "q": 0,
                              "n": {"email": [["u", "d", "a" * 300, 0]] * 20}}])

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with (tmp_path / MATCHED).open("ab") as f:
        f.write(b'{"id": "torn')  # a writer killed mid-line
    ids = [d["id"] for d in read_lines(tmp_path / MATCHED)]
    assert len(ids) == len(set(ids)) == 800
    assert journal.lines == 800


def test_once_key_finds_the_senders_record() -> None:
    client = redis_client()
    prefix = f"ledger-{uuid.uuid4().hex[:8]}-"
    once = PowertoolsOnce(client, 60, name=sends_prefix(prefix, "irc"))
    ident = ("msg-1", "alice", "dest-1", "alice_irc")
    key = {"message": ident[0], "backend": "irc", "user": ident[1], "destination": ident[2],
           "address": ident[3]}
    try:
        once.run(key, lambda: "summarised")
        missing = ("msg-2", "alice", "dest-1", "alice_irc")
        assert read_once(client, [once_key(prefix, "irc", ident),
                                  once_key(prefix, "irc", missing)]) == ["summarised", None]
    finally:
        for k in client.scan_iter(match=f"{prefix}*"):
            client.delete(k)


def test_feeds_count_events_and_what_the_cap_trimmed() -> None:
    client = redis_client()
    prefix = f"fmn-test:{uuid.uuid4().hex[:8]}:feed:"
    feed = RedisFeed(client, prefix, maxlen=3)
    try:
        for i in range(5):
            feed.append("bob", orjson.dumps({"v": 1, "message_id": f"m{i}"}).decode())
        feed.append("carol", orjson.dumps({"v": 1, "message_id": "m0"}).decode())
        events, trimmed = read_feeds(client, prefix)
        assert events[("m4", "bob")] == 1 and events[("m0", "carol")] == 1
        assert sum(n for (_, u), n in events.items() if u == "bob") == 3
        assert trimmed == {"bob": 2}
    finally:
        for k in client.scan_iter(match=f"{prefix}*"):
            client.delete(k)


def test_peeking_a_queue_leaves_every_message_there(aws_env: str) -> None:
    import boto3

    sqs = boto3.client("sqs", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    url = sqs.create_queue(QueueName=f"ledger-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    try:
        for start in range(0, 25, 10):
            sqs.send_message_batch(QueueUrl=url, Entries=[
                {"Id": str(i), "MessageBody": f"body-{start + i}"}
                for i in range(min(10, 25 - start))])
        first = peek_queue(sqs, url)
        second = peek_queue(sqs, url)
        assert sorted(m["Body"] for m in first) == sorted(m["Body"] for m in second)
        assert len(first) == 25
    finally:
        sqs.delete_queue(QueueUrl=url)
