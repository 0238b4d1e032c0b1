"""Faults under load, each ending with a clean ledger (tests/chaos/chaos_harness.py).

Every test drives ``FMN_CHAOS_MESSAGES`` re-keyed real bus messages (200 in
``make test``, 2,000 in ``make chaos``) through the whole local stack while
one fault happens, waits until every queue is empty, and reads the ledger:
nothing lost, nothing delivered twice, and nothing dead-lettered but what
the fault must dead-letter.  Time is scaled (harness docstring); no
assertion is on a duration.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from chaos_harness import MESSAGES_PER_FAULT, SCALE, AcrossRestart, ChaosRun, Row, record_row

from fmn.ledger import LedgerReport, format_report
from fmn.local.aws import redrive

pytestmark = [pytest.mark.chaos, pytest.mark.e2e]

#: ``make test`` runs the short form: one stack, the kill -9 fault with a poison message
#: among a few hundred messages
full_only = pytest.mark.skipif("FMN_CHAOS_MESSAGES" not in os.environ,
                               reason="make chaos runs it (the short form is the kill -9 "
                               "fault, a poison message included)")


POISON = {"topic": "org.fedoraproject.prod.poison", "msg_id": "poison",
          "neither": "msg nor body: no bus message"}


def assert_the_poison_alone_in_the_dead_letter_queue(run: ChaosRun, ledger: LedgerReport) -> None:
    dead = run.stack.sqs.receive_message(
        QueueUrl=run.stack.urls["incoming"].dlq_url, MaxNumberOfMessages=10,
        VisibilityTimeout=0).get("Messages", [])
    assert len(dead) == 1 and "no bus message" in dead[0]["Body"], dead
    assert ledger.dead_lettered == 1, format_report(ledger)


@full_only
def test_a_poison_message_is_alone_in_the_dead_letter_queue(tmp_path: Path) -> None:
    with ChaosRun(tmp_path, "poison") as run:
        run.publish_fedmsg(background=False, extra=(POISON,))
        ledger = run.settle()
        assert_the_poison_alone_in_the_dead_letter_queue(run, ledger)
    record_row(Row.from_ledger("poison message", ledger, "dead-lettered: the poison alone"))
    assert ledger.ok, format_report(ledger)
    assert sum(b.dead_lettered for b in ledger.backends.values()) == 0


def test_kill_9_of_the_match_and_sender_workers_mid_batch(tmp_path: Path) -> None:
    """Nothing lost; nothing twice but what a sender had just sent when it was killed.

    A sender records each send once it went (the idempotency record): killed
    between the mail server's (or the feed's) acceptance and that record, its
    redelivered record cannot tell that the item went, and sends it again (at
    least once, by design: docs/notification-payload.md).  An invocation sends
    its items one after the other, so at most one item per invocation in flight
    at the kill, hence at most one per record in flight then.

    Also the short form's poison message: one stack in ``make test``, both
    proofs.  Visibility timeouts of 30 s: the killed batches come back sooner
    (they prove the same), which keeps the short form cheap.
    """
    in_flight: dict[str, int] = {}
    with ChaosRun(tmp_path, "kill -9", external=("incoming", "email", "sse"),
                  visibility_s=30) as run:
        # the sse worker waits for its turn: a slow machine once drained sse before it
        # came, and its later batches are in flight for milliseconds; held back, it
        # finds a backlog and holds a batch at once
        run.stack.kill_worker("sse")
        run.publish_fedmsg(rate=25, extra=(POISON,))
        for queue in ("incoming", "email", "sse"):
            if queue == "sse":
                run.stack.start_worker("sse")
            run.wait_until(f"a batch in flight on {queue}", lambda q=queue: run.in_flight(q) > 0)
            in_flight[queue] = run.in_flight(queue)
            run.stack.kill_worker(queue)  # mid-batch: its records wait out their visibility
            time.sleep(1)
            run.stack.start_worker(queue)
        ledger = run.settle()
        assert_the_poison_alone_in_the_dead_letter_queue(run, ledger)
    bound = in_flight["email"] + in_flight["sse"]
    twice = ledger.duplicates_total
    record_row(Row.from_ledger(
        "kill -9 match, email, sse workers", ledger,
        "dead-lettered: the poison message sent along"
        + (f"; duplicates: sent as the sender was killed, before it recorded the send "
           f"(at least once; at most one per record in flight: {bound})" if twice else "")))
    assert ledger.lost_total == 0, format_report(ledger)
    assert twice <= bound, format_report(ledger)
    assert all(e[2] in ("email", "sse") for e in ledger.exceptions
               if e[0] in ("duplicate", "unexpected")), format_report(ledger)
    assert sum(b.dead_lettered for b in ledger.backends.values()) == 0


@full_only
def test_redis_unreachable_for_five_minutes_sends_nothing_to_a_dead_letter_queue(
        tmp_path: Path) -> None:
    with ChaosRun(tmp_path, "redis down") as run:
        run.publish_fedmsg(rate=50)
        run.wait_until("some matched", lambda: run.matched() > 10)
        run.redis.pause()
        time.sleep(300 / SCALE)
        run.redis.resume()
        ledger = run.settle()
    record_row(Row.from_ledger(f"Redis unreachable 5 min (/{SCALE:g})", ledger))
    assert ledger.ok, format_report(ledger)
    assert ledger.dead_lettered == 0
    assert sum(b.dead_lettered for b in ledger.backends.values()) == 0


@full_only
def test_smtp_4xx_then_5xx_then_fixed_and_the_dead_letters_redriven(tmp_path: Path) -> None:
    with ChaosRun(tmp_path, "smtp") as run:
        sink = run.stack.mail
        sink.refuse["*"] = "451 4.3.0 try again later"
        run.publish_fedmsg(rate=50)
        run.wait_until("some matched", lambda: run.matched() > 10)
        time.sleep(120 / SCALE)
        sink.refuse["*"] = "550 5.7.1 relay refused"
        time.sleep(120 / SCALE)
        del sink.refuse["*"]
        run.wait_until("publishing done", lambda: run.drained(("incoming",)))
        dead_before = run.stack.ledger()
        urls = run.stack.urls["email"]
        moved = redrive(run.stack.sqs, urls.dlq_url, urls.url)
        ledger = run.settle()
    record_row(Row.from_ledger(
        "SMTP 4xx, then 5xx, then fixed + redrive", ledger,
        f"{moved} dead letters re-driven; all delivered after"))
    assert moved > 0, format_report(dead_before)
    assert ledger.ok, format_report(ledger)
    assert sum(b.dead_lettered for b in ledger.backends.values()) == 0


@full_only
def test_the_bridge_killed_and_restarted_on_the_amqp_source(tmp_path: Path) -> None:
    with ChaosRun(tmp_path, "bridge") as run:
        run.publish_amqp(rate=50)
        run.wait_until("some bridged", lambda: run.matched() > 10)
        run.stack.restart_bridge()
        ledger = run.settle()
    record_row(Row.from_ledger("bridge kill -9 + restart (AMQP)", ledger))
    assert ledger.ok, format_report(ledger)
    assert ledger.dead_lettered == 0


@full_only
def test_the_irc_server_down_then_back(tmp_path: Path) -> None:
    with ChaosRun(tmp_path, "irc") as run:
        run.publish_fedmsg(rate=50)
        run.wait_until("some matched", lambda: run.matched() > 10)
        run.stack.ircd.stop()
        time.sleep(120 / SCALE)
        run.stack.ircd.start()  # the same port: the sender connects again
        ledger = run.settle()
    record_row(Row.from_ledger(f"IRC server down 2 min (/{SCALE:g}), then back", ledger))
    assert ledger.ok, format_report(ledger)
    assert sum(b.dead_lettered for b in ledger.backends.values()) == 0


@full_only
def test_redis_restarted_empty(tmp_path: Path) -> None:
    """The snapshot rebuilds itself from the database; what only Redis held is counted.

    docs/redis.md: digest items live only in Redis (the deployment requires
    persistence), so those queued when it restarts empty are lost, and the
    email sender reports it (``DigestStoreLost``, ``DigestItemsLost``); sends
    are remembered only in Redis, so a backend record in flight at the restart
    may send again what it had sent: at most its notifications.
    """
    import redis

    from fmn.delivery.digest import digest_prefix
    from fmn.ledger.account import read_digests
    from fmn.pipeline.queues import queue as queue_def
    from fmn.snapshot.store import RedisSnapshotStore

    with ChaosRun(tmp_path, "redis restart") as run:
        prefix = run.stack.settings.queue_prefix
        run.publish_fedmsg(rate=50)
        run.wait_until("a quarter matched", lambda: run.matched() > MESSAGES_PER_FAULT // 4)
        in_flight = {q: run.in_flight(q) for q in ("email", "irc", "sse")}
        before = run.restart_redis_empty()
        held = len(read_digests(before, prefix))
        run.join_publishers()
        # matched after the restart for certain, whenever the stream ended
        run.publish_fedmsg(count=50, background=False, part="-after")
        now = redis.Redis.from_url(run.redis.url)
        ledger = run.settle(redis=AcrossRestart(now, before, digest_prefix(prefix)))
        reported = dict(run.stack.functions["send_email"].totals)
        rebuilt = RedisSnapshotStore.from_url(
            run.redis.url, run.stack.settings.snapshot_prefix).current_id() is not None
    # a payload holds at most its queue's cap (sse has none: 256 KiB, a few hundred)
    bound = sum(n * (queue_def(q).notifications_per_message or 500)
                for q, n in in_flight.items())
    record_row(Row.from_ledger(
        "Redis restarted empty", ledger,
        f"lost: digest items only Redis held ({held} at the restart; the sender reported "
        f"DigestItemsLost {reported.get('digest-items-lost', 0)}; docs/redis.md requires "
        f"persistence); duplicates: sends remembered only in Redis, at most the "
        f"notifications of the {sum(in_flight.values())} backend records in flight "
        f"(bound {bound})"))
    assert rebuilt, "no snapshot after the restart"
    assert ledger.dead_lettered == 0, format_report(ledger)
    assert sum(b.dead_lettered for b in ledger.backends.values()) == 0, format_report(ledger)
    lost = [e for e in ledger.exceptions if e[0] == "lost"]
    assert all(e[2] == "email" and e[1] == "" for e in lost), format_report(ledger)
    assert ledger.lost_total <= held, format_report(ledger)
    assert reported.get("digest-store-lost", 0) >= 1, reported
    assert ledger.duplicates_total <= bound, format_report(ledger)


@full_only
def test_the_aws_endpoint_unreachable_for_ten_seconds(tmp_path: Path) -> None:
    """The bridge buffers what the bus brings meanwhile (fedmsg cannot redeliver)."""
    with ChaosRun(tmp_path, "aws") as run:
        run.publish_fedmsg(rate=50)
        run.wait_until("some matched", lambda: run.matched() > 10)
        run.aws_unreachable(10)
        ledger = run.settle()
    record_row(Row.from_ledger("AWS endpoint unreachable 10 s", ledger))
    assert ledger.ok, format_report(ledger)
    assert ledger.dead_lettered == 0
    assert sum(b.dead_lettered for b in ledger.backends.values()) == 0
