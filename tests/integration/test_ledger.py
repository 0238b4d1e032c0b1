"""The ledger's readers on the real services: the journal, send-once records, feeds, queues."""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest
from services import REDIS_URL, redis_client

from fmn.delivery.feed import RedisFeed
from fmn.delivery.once import PowertoolsOnce, sends_prefix
from fmn.ledger.account import once_key, peek_queue, read_feeds, read_once
from fmn.ledger.journal import MATCHED, Journal, read_lines
from fmn.local.runner import scheduled_context

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
    once.register_context(scheduled_context("send_irc", 60))  # as the sender's invocation
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


def test_a_digest_sent_while_the_ledger_reads_is_counted_once(
        aws_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The digest schedule keeps running while the ledger reads: a digest that goes out
    after the mail was read and is cleared before the digests are read must not count
    as lost (what the kill -9 fault once reported: seven digest notifications)."""
    import email.message
    import importlib
    import mailbox

    from fmn.ledger import account

    account_module = importlib.import_module("fmn.ledger.account")  # the package's
    stage = _digest_stage(tmp_path, aws_env, "alice", 3)  # name for it is the function
    claimed = stage.store.claim(stage.dk, stage.now)  # the schedule is sending it
    assert claimed is not None and len(claimed.items) == 3
    box = mailbox.Maildir(str(stage.maildir), create=True)

    reads = []
    read_mail = account_module.read_mail

    def read_mail_while_the_digest_goes_out(path: Path) -> object:
        got = read_mail(path)
        if not reads:  # the mail arrives just after the Maildir was listed, then the
            mail = email.message.EmailMessage()  # batch is cleared
            mail["To"] = stage.address
            mail["X-Fedmsg-Digest-Count"] = "3"
            mail.set_content("3 notifications")
            box.add(mail)
            stage.store.finish(stage.dk, claimed.batch_id, stage.now)
        reads.append(path)
        return got

    monkeypatch.setattr(account_module, "read_mail", read_mail_while_the_digest_goes_out)
    try:
        report = account(tmp_path / "ledger", sqs=stage.sqs, redis=stage.redis)
    finally:
        _remove_stage(stage)
    email_count = report.backends["email"]
    assert report.lost_total == 0 and report.duplicates_total == 0, report.exceptions
    assert email_count.sent_in_digest == 3 and email_count.waiting_in_digest == 0


def test_a_digest_sent_but_not_cleared_counts_as_sent(
        aws_env: str, tmp_path: Path) -> None:
    """A sender killed between a digest's mail and clearing its batch leaves the batch
    in Redis, its send remembered: the items are in the mail, not still waiting."""
    import email.message
    import mailbox

    from fmn.ledger import account

    stage = _digest_stage(tmp_path, aws_env, "bob", 2)
    claimed = stage.store.claim(stage.dk, stage.now)
    assert claimed is not None
    once = PowertoolsOnce(stage.redis, 60, name=sends_prefix(stage.prefix, "email"))
    once.register_context(scheduled_context("send_email-flush_digests", 60))
    mail = email.message.EmailMessage()
    mail["To"] = stage.address
    mail["X-Fedmsg-Digest-Count"] = "2"
    mail.set_content("2 notifications")
    once.run({"digest": stage.dk, "batch": claimed.batch_id},
             lambda: mailbox.Maildir(str(stage.maildir), create=True).add(mail) and "sent")
    try:  # ... and the sender is gone before store.finish
        report = account(tmp_path / "ledger", sqs=stage.sqs, redis=stage.redis)
    finally:
        _remove_stage(stage, f"{stage.prefix}*")  # the sends remembered too
    assert report.ok, report.exceptions
    assert report.backends["email"].sent_in_digest == 2
    assert report.backends["email"].waiting_in_digest == 0


def _digest_stage(tmp_path: Path, aws_env: str, user: str, count: int) -> SimpleNamespace:
    """A stage of its own (queues, a journal) where ``count`` bus messages were published
    and matched to ``user``'s e-mail digest, and their items queued in the digest."""
    import time

    import boto3

    from fmn.delivery.base import Delivery
    from fmn.delivery.digest import DigestStore, destination_key, digest_prefix
    from fmn.local.aws import ensure_queues
    from fmn.prefs import Digest

    prefix = f"ledger-{uuid.uuid4().hex[:8]}-"
    sqs = boto3.client("sqs", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    urls = ensure_queues(sqs, prefix)
    maildir = tmp_path / "mail"
    journal = Journal(tmp_path / "ledger")
    journal.write_stack({"queue_prefix": prefix, "redis_url": REDIS_URL,
                         "feed_prefix": f"{prefix}feed:", "aws_endpoint_url": aws_env,
                         "aws_region": "us-east-1", "maildir": str(maildir)})
    address = f"{user}@example.org"
    ids = [f"{prefix}m{i}" for i in range(count)]
    journal.published(ids, "fedmsg")
    journal.matched([{"id": i, "sqs": f"s-{i}", "q": 0,
                      "n": {"email": [[user, "d1", address, 1]]}} for i in ids])
    client = redis_client()
    store = DigestStore(client, digest_prefix(prefix))
    items = [Delivery(backend="email", message={"id": i}, user=user, address=address,
                      destination="d1", rules=("r1",), rule_names=("r1",),
                      digest=Digest(300, 10)) for i in ids]
    now = time.time()
    for item in items:
        store.add(item, now)
    return SimpleNamespace(prefix=prefix, sqs=sqs, urls=urls, maildir=maildir, redis=client,
                           address=address, store=store, dk=destination_key(items[0]), now=now)


def _remove_stage(stage: SimpleNamespace, *keys: str) -> None:
    """Delete a :func:`_digest_stage`'s digests, its other Redis keys matching ``keys``
    and its queues."""
    from fmn.delivery.digest import digest_prefix

    for pattern in (f"{digest_prefix(stage.prefix)}*", *keys):
        for key in stage.redis.scan_iter(match=pattern):
            stage.redis.delete(key)
    for q in stage.urls.values():
        stage.sqs.delete_queue(QueueUrl=q.url)
        stage.sqs.delete_queue(QueueUrl=q.dlq_url)


def test_a_record_a_sender_dead_lettered_whole_is_counted_with_its_reason(
        aws_env: str, tmp_path: Path) -> None:
    """A sender puts a whole record on its dead-letter queue (postponed for a day, or
    unreadable) with the reason as its ``error`` attribute; the ledger said "moved after
    the queue's maximum receives" instead."""
    from delivery_data import irc_body

    from fmn.ledger import account

    stage = _digest_stage(tmp_path, aws_env, "alice", 1)  # queues, a journal, a digest item
    journal = Journal(tmp_path / "ledger")
    mid = f"{stage.prefix}m-irc"
    journal.published([mid], "fedmsg")
    journal.matched([{"id": mid, "sqs": "s-irc", "q": 0,
                      "n": {"irc": [["bob", "d-bob", "bob", 0]]}}])
    reason = "postponed for 24 h: IRC sender out of time for this batch"
    stage.sqs.send_message(QueueUrl=stage.urls["irc"].dlq_url, MessageBody=irc_body(mid, ["bob"]),
                           MessageAttributes={"error": {"DataType": "String",
                                                        "StringValue": reason}})
    try:
        report = account(tmp_path / "ledger", sqs=stage.sqs, redis=stage.redis)
    finally:
        _remove_stage(stage)
    assert report.backends["irc"].dead_lettered == 1 and report.lost_total == 0
    assert ("dead-lettered", mid, "irc", "bob bob", reason) in [
        tuple(e) for e in report.exceptions], report.exceptions


def test_a_feed_event_whose_id_was_shortened_is_counted_as_delivered(
        aws_env: str, tmp_path: Path) -> None:
    """An id the event cannot carry as it is (long, or full of characters JSON escapes
    to six bytes) goes as a hash: the ledger still finds the notification delivered."""
    from fmn.delivery.base import Delivery
    from fmn.delivery.feed import event_data, feed_message_id
    from fmn.ledger import account

    stage = _digest_stage(tmp_path, aws_env, "alice", 1)
    journal = Journal(tmp_path / "ledger")
    mid = f"{stage.prefix}" + "\u2028" * 400
    assert feed_message_id(mid) != mid
    journal.published([mid], "fedmsg")
    journal.matched([{"id": mid, "sqs": "s-sse", "q": 0,
                      "n": {"sse": [["bob", "d-feed", None, 0]]}}])
    feed = RedisFeed(stage.redis, f"{stage.prefix}feed:")
    feed.append("bob", event_data(Delivery(
        backend="sse", message={"id": mid}, user="bob", address=None, destination="d-feed",
        rules=("r1",), rule_names=("r1",)), 0))
    try:
        report = account(tmp_path / "ledger", sqs=stage.sqs, redis=stage.redis)
    finally:
        _remove_stage(stage, f"{stage.prefix}feed:*")
    assert report.backends["sse"].delivered == 1, report.exceptions
    assert report.lost_total == 0 and report.duplicates_total == 0, report.exceptions
