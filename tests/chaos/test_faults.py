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
from chaos_harness import SCALE, ChaosRun, Row, record_row

from fmn.ledger import format_report
from fmn.local.aws import redrive

pytestmark = [pytest.mark.chaos, pytest.mark.e2e]

#: ``make test`` runs the short form: the poison and kill -9 faults, a few hundred messages
full_only = pytest.mark.skipif("FMN_CHAOS_MESSAGES" not in os.environ,
                               reason="make chaos runs it (the short form has two faults)")


def test_a_poison_message_is_alone_in_the_dead_letter_queue(tmp_path: Path) -> None:
    poison = {"topic": "org.fedoraproject.prod.poison", "msg_id": "poison",
              "neither": "msg nor body: no bus message"}
    with ChaosRun(tmp_path, "poison") as run:
        run.publish_fedmsg(background=False, extra=(poison,))
        ledger = run.settle()
        dead = run.stack.sqs.receive_message(
            QueueUrl=run.stack.urls["incoming"].dlq_url, MaxNumberOfMessages=10,
            VisibilityTimeout=0).get("Messages", [])
    record_row(Row.from_ledger("poison message", ledger, "dead-lettered: the poison alone"))
    assert len(dead) == 1 and "no bus message" in dead[0]["Body"]
    assert ledger.lost_total == 0 and ledger.duplicates_total == 0, format_report(ledger)
    assert ledger.dead_lettered == 1
    assert sum(b.dead_lettered for b in ledger.backends.values()) == 0


def test_kill_9_of_the_match_and_sender_workers_mid_batch(tmp_path: Path) -> None:
    with ChaosRun(tmp_path, "kill -9", external=("incoming", "email", "sse")) as run:
        run.publish_fedmsg(rate=50)
        for queue in ("incoming", "email", "sse"):
            run.wait_until(f"a batch in flight on {queue}", lambda q=queue: run.in_flight(q) > 0)
            run.stack.kill_worker(queue)  # mid-batch: its records wait out their visibility
            time.sleep(1)
            run.stack.start_worker(queue)
        ledger = run.settle()
    record_row(Row.from_ledger("kill -9 match, email, sse workers", ledger))
    assert ledger.ok, format_report(ledger)
    assert ledger.dead_lettered == 0
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
