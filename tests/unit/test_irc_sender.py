"""The IRC sender's record handling (fmn.delivery.irc, functions/send_irc) on fakes.

A :class:`MemoryIrcLink` stands for the connection and :class:`MemoryOnce`
for Redis.  What the user would notice: a redelivered notification is never
sent twice, a crash before the send still sends it, a backlog for one nick
is a few lines and one summary (which redelivery does not repeat, and whose
items are never dropped when the summary could not be written), a bad nick
is dead-lettered alone, an offline nick does not fail the batch, and the
Lambda handler turns all of it into the right partial batch response.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError
from delivery_data import irc_body, notification, payload
from fakes import FakeClock

from fmn.delivery.base import Delivery
from fmn.delivery.irc import MAX_LINES_PER_NOTIFICATION, IrcNotifier, check_wire
from fmn.delivery.irc_client import MemoryIrcLink
from fmn.delivery.once import MemoryOnce
from fmn.errors import RetryableError
from fmn.local.stack import load_module
from fmn.pipeline.redelivery import Redelivery
from fmn.settings import Settings

pytestmark = pytest.mark.unit

WEB = "https://web.test"
APP_PATH = Path(__file__).resolve().parents[2] / "functions" / "send_irc" / "app.py"


body = irc_body


class DeadLetters(list[tuple[str, str]]):
    def __call__(self, item: Delivery, reason: str) -> None:
        self.append((item.address, reason))


class Sender:
    """A warm sender process: one link, one notifier, one Once, batch after batch."""

    def __init__(self, link: MemoryIrcLink | None = None) -> None:
        self.link = link or MemoryIrcLink()
        self.clock = FakeClock()
        self.notifier = IrcNotifier(self.link, WEB, clock=self.clock)
        self.once = MemoryOnce()
        self.dead = DeadLetters()

    def run(self, bodies: list[str], remaining_s: Any = None) -> tuple[Counter[str], list[int]]:
        """Deliver one batch as the handler does; (counts, indexes of the failed records)."""
        deliver = self.notifier.batch(bodies, remaining_s)
        counts: Counter[str] = Counter()
        failed = []
        for i, b in enumerate(bodies):
            try:
                counts += deliver(b, self.notifier, self.once, self.dead)
            except RetryableError:
                failed.append(i)
        return counts, failed

    def lines(self, nick: str) -> list[str]:
        return self.link.lines_to(nick)


def test_each_notification_is_sent_once_across_redeliveries() -> None:
    s = Sender()
    batch = [body("m1", ["alice", "bob"]), body("m2", ["alice"])]
    counts, failed = s.run(batch)
    assert failed == [] and counts == Counter(sent=3)
    assert s.lines("alice") == ["[koji] a build completed (m1) https://koji.test/m1 "
                                "(rule: My builds)",
                                "[koji] a build completed (m2) https://koji.test/m2 "
                                "(rule: My builds)"]
    sent = list(s.link.sent)
    counts, failed = s.run(batch + [body("m1", ["alice"])])  # redelivered, and again
    assert failed == [] and counts == Counter(duplicate=4)
    assert s.link.sent == sent


def test_a_crash_before_the_send_still_sends() -> None:
    s = Sender()
    s.link.down = True
    counts, failed = s.run([body("m1", ["alice"])])
    assert failed == [0] and s.link.sent == []
    s.link.down = False
    counts, failed = s.run([body("m1", ["alice"])])
    assert failed == [] and counts == Counter(sent=1) and len(s.lines("alice")) == 1


def test_a_connection_lost_mid_item_sends_the_item_again() -> None:
    s = Sender()
    long = body("m1", ["alice"], summary="word " * 150)  # two lines
    s.link.fail_after = 1
    _, failed = s.run([long])
    assert failed == [0] and len(s.lines("alice")) == 1
    s.link.fail_after = None
    counts, failed = s.run([long])
    assert failed == [] and counts == Counter(sent=1)
    assert len(s.lines("alice")) == 1 + 2  # the first line again, then both: at least once


def test_a_backlog_for_one_nick_is_a_few_lines_and_one_summary() -> None:
    s = Sender()
    batch = [body(f"m{i}", ["alice", "bob"] if i < 2 else ["alice"]) for i in range(10)]
    counts, failed = s.run(batch)
    assert failed == []
    assert counts == Counter(sent=3 + 2, summarised=7, **{"summary-lines": 1})
    alice = s.lines("alice")
    assert [line.split(" (m")[1][:1] for line in alice[:3]] == ["0", "1", "2"]
    assert alice[3:] == [f"7 more notifications: {WEB}/#/notifications"]
    assert len(s.lines("bob")) == 2

    counts, failed = s.run(batch)  # the whole batch again: nothing at all
    assert failed == [] and counts == Counter(duplicate=12) and len(s.lines("alice")) == 4


def test_a_warm_sender_keeps_summarising_a_backlog_across_batches() -> None:
    s = Sender()
    s.run([body(f"m{i}", ["alice"]) for i in range(5)])
    counts, _ = s.run([body(f"n{i}", ["alice"]) for i in range(5)])
    assert counts == Counter(summarised=5, **{"summary-lines": 1})  # no allowance left
    assert s.lines("alice")[-1] == f"5 more notifications: {WEB}/#/notifications"
    s.clock.now += 61  # the window has passed
    counts, _ = s.run([body("p0", ["alice"])])
    assert counts == Counter(sent=1)


def test_a_summary_line_that_failed_is_written_by_the_next_item_and_nothing_is_lost() -> None:
    class FlakyLink(MemoryIrcLink):
        failures = 1

        def send(self, nick: str, lines: Sequence[str]) -> None:
            if self.failures and "more notifications" in lines[0]:
                self.failures -= 1
                raise RetryableError("connection lost (fake)")
            super().send(nick, lines)

    s = Sender(FlakyLink())
    batch = [body(f"m{i}", ["alice"]) for i in range(8)]
    counts, failed = s.run(batch)
    assert failed == [3]  # the first summarised item's record comes back
    assert counts == Counter(sent=3, summarised=4, **{"summary-lines": 1})
    assert s.lines("alice")[3] == f"5 more notifications: {WEB}/#/notifications"

    counts, failed = s.run([batch[3]])  # SQS redelivers the failed record alone
    assert failed == [] and counts == Counter(sent=1)
    assert "(m3)" in s.lines("alice")[-1]
    assert len(s.lines("alice")) == len(set(s.lines("alice"))) == 5  # no line twice


def test_a_failed_record_elsewhere_in_the_batch_does_not_repeat_the_summary() -> None:
    class BobUnreachable(MemoryIrcLink):
        broken = True

        def send(self, nick: str, lines: Sequence[str]) -> None:
            if self.broken and nick == "bob":
                raise RetryableError("bob's line failed (fake)")
            super().send(nick, lines)

    link = BobUnreachable()
    s = Sender(link)
    batch = [body(f"m{i}", ["alice"]) for i in range(6)] + [body("x", ["bob", "carol"])]
    _, failed = s.run(batch)
    assert failed == [6] and len(s.lines("alice")) == 4
    link.broken = False
    counts, failed = s.run(batch)
    assert failed == [] and counts == Counter(duplicate=6, sent=2)
    assert len(s.lines("alice")) == 4 and len(s.lines("bob")) == len(s.lines("carol")) == 1


def test_the_summary_counts_what_is_left_not_what_was_sent_before() -> None:
    s = Sender()
    s.run([body("m3", ["alice"]), body("m4", ["alice"])])  # sent earlier, on their own
    s.notifier = IrcNotifier(s.link, WEB, clock=s.clock)  # a new process, same Redis
    counts, _ = s.run([body(f"m{i}", ["alice"]) for i in range(12)])
    assert counts == Counter(sent=3, duplicate=2, summarised=7, **{"summary-lines": 1})
    assert s.lines("alice")[-1] == f"7 more notifications: {WEB}/#/notifications"


def test_an_address_that_is_not_a_nick_is_dead_lettered_alone() -> None:
    s = Sender()
    counts, failed = s.run([body("m1", ["alice", "not a nick", "#fedora", "bob"])])
    assert failed == [] and counts == Counter({"sent": 2, "dead-lettered": 2})
    assert [a for a, _ in s.dead] == ["not a nick", "#fedora"]
    assert all("not an IRC nick" in reason for _, reason in s.dead)
    assert {n for n, _ in s.link.sent} == {"alice", "bob"}
    counts, _ = s.run([body("m1", ["not a nick"])])  # remembered: not dead-lettered twice
    assert counts == Counter(duplicate=1) and len(s.dead) == 2


def test_an_offline_nick_is_counted_not_retried() -> None:
    s = Sender(MemoryIrcLink(online=["alice"]))
    counts, failed = s.run([body("m1", ["alice", "ghost"])])
    assert failed == [] and counts == Counter(sent=2, offline=1)
    counts, _ = s.run([body("m1", ["alice", "ghost"])])
    assert counts == Counter(duplicate=2)


def test_a_batch_that_runs_out_of_time_leaves_the_rest_for_later() -> None:
    s = Sender()
    left = iter([60.0, 5.0, 5.0])
    counts, failed = s.run([body("m1", ["alice"]), body("m2", ["bob"]), body("m3", ["carol"])],
                           remaining_s=lambda: next(left))
    assert failed == [1, 2] and counts == Counter(sent=1)


def test_no_item_starts_with_less_time_left_than_the_link_may_block() -> None:
    # one send may reconnect: a silent server's PING check, a connection, its
    # registration and a stalled write, a minute with the defaults; a 10 s margin let
    # that run past the invocation's deadline and fail the whole batch
    from fmn.delivery.irc_client import IrcClientLink, IrcServer, TokenBucket

    real = IrcClientLink(IrcServer("irc.example", 6667, "fmn"), TokenBucket(5, 2.0))
    assert real.longest_send_s == 5 + 10 + 15 + 30
    tls = IrcClientLink(IrcServer("irc.example", 6697, "fmn", tls=True), TokenBucket(5, 2.0))
    assert tls.longest_send_s == 5 + 10 + 10 + 15 + 30  # the handshake: the connect timeout
    link = MemoryIrcLink()
    link.longest_send_s = real.longest_send_s
    s = Sender(link)
    left = iter([280.0, 100.0, 59.0])
    counts, failed = s.run([body("m1", ["alice"]), body("m2", ["bob"]), body("m3", ["carol"])],
                           remaining_s=lambda: next(left))
    assert failed == [2] and counts == Counter(sent=2)
    # a short invocation still gets work done: at most half its time is kept back
    s = Sender(link)
    left = iter([40.0, 21.0, 19.0])
    counts, failed = s.run([body("m4", ["alice"]), body("m5", ["bob"]), body("m6", ["carol"])],
                           remaining_s=lambda: next(left))
    assert failed == [2] and counts == Counter(sent=2)


def test_hostile_content_reaches_the_link_only_as_safe_lines() -> None:
    s = Sender()
    hostile = "\x1b[31mx\r\nQUIT :bye\r\n\x01ACTION\x01 <b>" + "z" * 10_000
    counts, failed = s.run([body("m1", ["alice"], summary=hostile)])
    assert failed == [] and counts == Counter(sent=1)
    lines = s.lines("alice")
    assert 1 <= len(lines) <= MAX_LINES_PER_NOTIFICATION
    for line in lines:
        check_wire("alice", line)
        assert not any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for c in line)


# -- the Lambda handler (functions/send_irc/app.py), on the same fakes ---------------


class FakeSQS:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        #: (receipt handle, visibility timeout) of every ChangeMessageVisibility
        self.hidden: list[tuple[str, int]] = []

    def get_queue_url(self, QueueName: str) -> dict[str, str]:  # noqa: N803 (boto3's names)
        return {"QueueUrl": f"https://sqs.test/{QueueName}"}

    def send_message(self, **kwargs: Any) -> dict[str, str]:
        self.sent.append(kwargs)
        return {"MessageId": "x"}

    def change_message_visibility_batch(self, **kwargs: Any) -> dict[str, Any]:
        self.hidden.extend((e["ReceiptHandle"], e["VisibilityTimeout"])
                           for e in kwargs["Entries"])
        return {"Successful": [{"Id": e["Id"]} for e in kwargs["Entries"]], "Failed": []}


@pytest.fixture
def app() -> Any:
    return load_module(APP_PATH, "fmn_send_irc_app_unit")


def wire(app: ModuleType, link: MemoryIrcLink) -> FakeSQS:
    """The function's lazy state, built from fakes instead of Redis and SQS."""
    sqs = FakeSQS()
    settings = Settings(queue_prefix="t-")
    app.function._state.update(settings=settings, sqs=sqs, redis=None,
                               once=MemoryOnce(), send=IrcNotifier(link, WEB), dlq_url=None,
                               redelivery=Redelivery(sqs, settings.first_retry_delay_s))
    return sqs


def event(bodies: list[str], receives: int = 1) -> dict[str, Any]:
    return {"Records": [{"messageId": f"id-{i}", "receiptHandle": f"h-{i}", "body": b,
                         "attributes": {"ApproximateReceiveCount": str(receives)},
                         "messageAttributes": {}, "md5OfBody": "", "eventSource": "aws:sqs",
                         "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:t-irc",
                         "awsRegion": "us-east-1"} for i, b in enumerate(bodies)]}


CONTEXT = SimpleNamespace(function_name="send_irc", memory_limit_in_mb=256,
                          invoked_function_arn="arn:aws:lambda:us-east-1:1:function:send_irc",
                          aws_request_id="req-1", get_remaining_time_in_millis=lambda: 200_000)


def test_what_a_record_sent_before_it_ran_out_of_time_is_counted_sent(
        app: ModuleType) -> None:
    # the record goes back, and its sent items come back as duplicates: counted only
    # then, Sent would miss them and Duplicate hold them
    link = MemoryIrcLink()
    sqs = wire(app, link)
    # time runs out once the first line is written (ms, as Lambda's context says)
    late = SimpleNamespace(**{**vars(CONTEXT), "get_remaining_time_in_millis":
                              lambda: 5_000 if link.sent else 200_000})
    before = Counter(app.totals)
    assert app.handle_irc(event([body("m1", ["alice", "bob", "carol"])]), late) \
        == {"batchItemFailures": []}
    (requeued,) = sqs.sent  # the rest of the record, as a fresh message
    counted = Counter(app.totals)
    counted.subtract(before)
    assert len(link.sent) == 1 and counted["sent"] == 1 and counted["postponed"] == 1
    app.handle_irc(event([requeued["MessageBody"]]), CONTEXT)
    counted = Counter(app.totals)
    counted.subtract(before)
    assert len(link.sent) == 3 and counted["sent"] == 3 and counted["duplicate"] == 1
    app.reset()


def test_what_a_failed_record_sent_before_is_counted_sent(
        app: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    link = MemoryIrcLink()
    wire(app, link)
    latencies: list[float] = []
    monkeypatch.setattr(app.function, "record_latency", latencies.extend)
    link.fail_after = 1  # the connection drops after the first line
    before = Counter(app.totals)
    just_sent = datetime.now(UTC).isoformat()  # the bus-to-send latency counts it
    record = payload("irc", [notification(n, n, f"d-{n}") for n in ("alice", "bob")],
                     id="m1", sent_at=just_sent)
    with pytest.raises(BatchProcessingError):  # its one record failed: it comes back
        app.handle_irc(event([record]), CONTEXT)
    counted = Counter(app.totals)
    counted.subtract(before)
    assert len(link.sent) == 1 and counted["sent"] == 1  # alice's line went
    assert counted["RetryableFailures"] == 1
    assert len(latencies) == 1 and 0 <= latencies[0] < 60_000  # and how long it took
    app.reset()


def test_the_handler_is_chalice_wired_to_the_irc_queue(app: ModuleType) -> None:
    (source,) = app.app.event_sources
    assert source.queue.endswith("irc") and source.batch_size == 10
    assert app.app.app_name == "fmn-send-irc"


def test_the_handler_plans_the_batch_and_reports_failed_records(app: ModuleType) -> None:
    link = MemoryIrcLink()
    sqs = wire(app, link)
    bodies = [body(f"m{i}", ["alice"]) for i in range(6)] + [body("b", ["bad nick", "bob"]),
                                                             "not a payload"]
    response = app.handle_irc(event(bodies), CONTEXT)
    # the unreadable record ends now, in the dead-letter queue: retrying cannot help
    assert response == {"batchItemFailures": []}
    assert link.lines_to("alice")[-1] == f"3 more notifications: {WEB}/#/notifications"
    assert len(link.lines_to("alice")) == 4 and len(link.lines_to("bob")) == 1
    dead, record = sqs.sent
    assert dead["QueueUrl"].endswith("t-irc-dlq") and "bad nick" in dead["MessageBody"]
    assert record["QueueUrl"].endswith("t-irc-dlq") and record["MessageBody"] == "not a payload"
    assert record["MessageAttributes"]["error"]["StringValue"]
    assert app.totals["sent"] == 4 and app.totals["summarised"] == 3
    assert sqs.hidden == []

    link.down = True  # the server is away: every record fails, so the invocation does
    with pytest.raises(BatchProcessingError):
        app.handle_irc(event([body("n1", ["carol"]), body("n2", ["dave"])]), CONTEXT)
    # ... and each backs off by the queue's visibility timeout, not burning receives
    assert sqs.hidden == [("h-0", 300), ("h-1", 300)]
    response = app.handle_irc(event([body("n1", ["carol"]), body("n2", ["dave"]),
                                     body("n3", [])], receives=3), CONTEXT)
    assert response == {"batchItemFailures": [{"itemIdentifier": "id-0"},
                                              {"itemIdentifier": "id-1"}]}
    assert sqs.hidden[2:] == [("h-0", 1200), ("h-1", 1200)]  # twice as long per receive
    link.down = False
    assert app.handle_irc(event([body("n1", ["carol"])]), CONTEXT) == {"batchItemFailures": []}
    assert link.lines_to("carol") and not link.lines_to("dave")
    app.reset()


def test_a_batch_out_of_time_goes_back_as_fresh_messages_using_up_no_receive(
        app: ModuleType) -> None:
    link = MemoryIrcLink()
    sqs = wire(app, link)
    late = SimpleNamespace(**{**vars(CONTEXT), "get_remaining_time_in_millis": lambda: 5_000})
    bodies = [body("m1", ["alice"]), body("m2", ["bob"])]
    assert app.handle_irc(event(bodies, receives=4), late) == {"batchItemFailures": []}
    assert [m["MessageBody"] for m in sqs.sent] == bodies
    assert all(m["QueueUrl"].endswith("/t-irc") for m in sqs.sent)
    assert sqs.hidden == [] and link.sent == []
    app.reset()
