"""``fmn dlq redrive`` where SQS has no StartMessageMoveTask: the batched move ends.

On an in-memory SQS whose source queue's consumer still fails: every message
the move sends back lands on the dead-letter queue again at once, under the id
SQS gave it when it was sent (as SQS does).  The move takes each dead letter
back once, rather than moving them round forever, and goes on with the others.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import orjson
import pytest
from botocore.exceptions import ClientError

from fmn.ops import dlq
from fmn.pipeline.queues import QueueDef

pytestmark = pytest.mark.unit


def work_dlq(visible: int) -> dlq.Dlq:
    """The dead-letter queue of a queue of no backend (moved as a backend's would be)."""
    return dlq.Dlq(QueueDef("work", "worker", visibility_timeout_s=1, max_receive_count=2,
                            batch_size=10, batching_window_s=0, max_concurrency=1),
                   "fmn-work-dlq", "url-dlq", "arn-dlq", "url-work", "arn-work",
                   visible=visible)


def email_dlq(visible: int) -> dlq.Dlq:
    from fmn.pipeline.queues import queue

    return dlq.Dlq(queue("email"), "fmn-email-dlq", "url-dlq", "arn-dlq", "url-email",
                   "arn-email", visible=visible)


class LoopingSqs:
    """A dead-letter queue and a source queue whose consumer fails at once, for good."""

    def __init__(self, bodies: list[str], overcount: int = 0) -> None:
        #: SQS's counts are approximate: this many more than there are
        self.overcount = overcount
        self.ids = itertools.count()
        # receipt handle -> (message id, body): visible, and received but not yet
        # deleted or released
        self.dead: dict[str, tuple[str, str]] = {}
        self.held: dict[str, tuple[str, str]] = {}
        for body in bodies:
            n = next(self.ids)
            self.dead[f"h{n}"] = (f"m{n}", body)
        self.sent_back = 0
        self.receives = 0

    def start_message_move_task(self, **_: Any) -> Any:
        raise ClientError({"Error": {"Code": "UnsupportedOperation"}}, "StartMessageMoveTask")

    def get_queue_attributes(self, **_: Any) -> dict[str, Any]:
        return {"Attributes": {"ApproximateNumberOfMessages": str(len(self.dead) + self.overcount),
                               "ApproximateNumberOfMessagesNotVisible": str(len(self.held))}}

    def receive_message(self, *, MaxNumberOfMessages: int, **_: Any) -> dict[str, Any]:
        self.receives += 1
        if self.receives > 1000:
            raise AssertionError("the move never ends")
        handles = list(self.dead)[:MaxNumberOfMessages]
        out = []
        for h in handles:
            self.held[h] = self.dead.pop(h)
            out.append({"MessageId": self.held[h][0], "ReceiptHandle": h,
                        "Body": self.held[h][1]})
        return {"Messages": out}

    def send_message_batch(self, *, Entries: list[dict[str, Any]], **_: Any) -> dict[str, Any]:
        ok = []
        for entry in Entries:  # the consumer fails it again: straight back to the DLQ
            self.sent_back += 1
            n = next(self.ids)
            self.dead[f"h{n}"] = (f"m{n}", entry["MessageBody"])
            ok.append({"Id": entry["Id"], "MessageId": f"m{n}"})
        return {"Successful": ok, "Failed": []}

    def delete_message_batch(self, *, Entries: list[dict[str, Any]], **_: Any) -> Any:
        for entry in Entries:
            self.held.pop(entry["ReceiptHandle"])
        return {"Successful": [{"Id": e["Id"]} for e in Entries], "Failed": []}

    def change_message_visibility_batch(self, *, Entries: list[dict[str, Any]],
                                        **_: Any) -> Any:
        for entry in Entries:
            self.dead[entry["ReceiptHandle"]] = self.held.pop(entry["ReceiptHandle"])
        return {"Successful": [{"Id": e["Id"]} for e in Entries], "Failed": []}


@pytest.mark.parametrize("overcount", [0, 40])
def test_a_message_that_fails_again_at_once_is_moved_once_not_forever(overcount: int) -> None:
    """At most what the queue held at the start; and (when SQS's count was too high)
    never a message already moved."""
    sqs = LoopingSqs([f"body-{i}" for i in range(25)], overcount)
    result = dlq.redrive(sqs, work_dlq(25))
    assert (result.moved, result.method) == (25, "batched move")
    assert sqs.sent_back == 25  # each once
    assert len(sqs.dead) == 25 and not sqs.held  # all back where they were, visible


class DeadLetteringSqs(LoopingSqs):
    """Its consumer is a sender that dead-letters each record itself: the copy comes
    back under a new id, with its body (and, here, no id in SendMessageBatch's answer)."""

    def send_message_batch(self, *, Entries: list[dict[str, Any]], **_: Any) -> dict[str, Any]:
        for entry in Entries:
            self.sent_back += 1
            n = next(self.ids)
            self.dead[f"h{n}"] = (f"new-{n}", entry["MessageBody"])
        return {"Successful": [{"Id": e["Id"]} for e in Entries], "Failed": []}

    def receive_message(self, *, MaxNumberOfMessages: int, **kw: Any) -> dict[str, Any]:
        got = super().receive_message(MaxNumberOfMessages=MaxNumberOfMessages, **kw)
        for m in got["Messages"]:  # the copies are young; the first 25 were there before
            young = m["MessageId"].startswith("new-")
            m["Attributes"] = {"SentTimestamp": str(int((time.time() + (2 if young else -60))
                                                        * 1000))}
        return got


@pytest.mark.parametrize("overcount", [0, 40])
def test_a_record_its_sender_dead_letters_again_is_moved_once(overcount: int) -> None:
    # its copy comes back under a new id: told by its body, on a message younger than
    # the move (two dead letters with one body from before both move: the other test)
    sqs = DeadLetteringSqs([f"body-{i}" for i in range(25)], overcount)
    result = dlq.redrive(sqs, work_dlq(25))
    assert result.moved == 25 and sqs.sent_back == 25  # each once
    assert len(sqs.dead) == 25 and not sqs.held


class FailingSqs(LoopingSqs):
    """Its source queue takes one request, then SQS goes away."""

    def send_message_batch(self, *, Entries: list[dict[str, Any]], **kw: Any) -> Any:
        if self.sent_back:
            raise ClientError({"Error": {"Code": "ServiceUnavailable"}}, "SendMessageBatch")
        return super().send_message_batch(Entries=Entries, **kw)


def test_sqs_failing_midway_leaves_what_was_not_sent_visible_in_the_dead_letter_queue() -> None:
    # three bodies of 100 KB: two requests for one receive (256 KiB each at most)
    sqs = FailingSqs([f"{i}:" + "x" * 100_000 for i in range(3)])
    with pytest.raises(dlq.DlqError, match="2 moved, the rest stay in fmn-email-dlq"):
        dlq.redrive(sqs, email_dlq(3))
    assert sqs.sent_back == 2 and not sqs.held  # the third: visible again, not held
    assert sorted(b[:2] for _id, b in sqs.dead.values()) == ["0:", "1:", "2:"]


def test_a_senders_dead_letter_of_a_redriven_notification_is_known_for_it() -> None:
    # a sender dead-letters one notification with a new reason and one more dead letter:
    # the move must know it for the copy it sent, or it circles (a real send each time)
    from delivery_data import notification, payload

    from fmn.delivery.base import dead_letter_body, deliveries

    body = payload("email", [notification("bob", "bob@example.org", "email")])
    [item] = deliveries(body, "email")
    first = dead_letter_body(item, "550 mailbox unavailable")
    [again] = deliveries(first, "email")
    second = dead_letter_body(again, "550 mailbox unavailable, still")
    assert first != second and dlq._digest(first) == dlq._digest(second)
    other = payload("email", [notification("cy", "cy@example.org", "email")])
    assert dlq._digest(other).isdisjoint(dlq._digest(body))
    assert dlq._digest("not json") != dlq._digest("not json either")
    # a whole payload moved by SQS, one of whose notifications its sender dead-letters
    both = payload("email", [notification("bob", "bob@example.org", "email"),
                             notification("cy", "cy@example.org", "email")])
    refused = dead_letter_body(deliveries(both, "email")[1], "550")
    assert dlq._digest(refused) < dlq._digest(both)


def payloads(count: int, per: int, address: Any) -> list[str]:
    """``count`` e-mail payloads of ``per`` notifications; ``address(i, j)`` for each."""
    from delivery_data import notification, payload

    return [payload("email", [notification(f"u{i}-{j}", address(i, j), f"d{j}")
                              for j in range(per)], id=f"msg-{i}")
            for i in range(count)]


class OneBadAddress(DeadLetteringSqs):
    """An email sender that delivers every notification but those to bad@, which it
    dead-letters one by one; SQS hands out the newest dead letters first."""

    def send_message_batch(self, *, Entries: list[dict[str, Any]], **_: Any) -> dict[str, Any]:
        from fmn.delivery.base import dead_letter_body, deliveries

        new = {}
        for entry in Entries:
            self.sent_back += 1
            for item in deliveries(entry["MessageBody"], "email"):
                if item.address.startswith("bad@"):
                    n = next(self.ids)
                    new[f"h{n}"] = (f"new-{n}", dead_letter_body(item, "550 no such user"))
        self.dead = {**new, **self.dead}
        return {"Successful": [{"Id": e["Id"], "MessageId": f"sent-{e['Id']}"}
                              for e in Entries], "Failed": []}


def test_one_bad_address_among_thousands_does_not_keep_the_rest_in_the_queue() -> None:
    """The move stopped at the first copy that came back: with one refused address in a
    payload of 200, the other 99 payloads stayed, run after run."""
    sqs = OneBadAddress(payloads(100, 200, lambda i, j: "bad@example.org" if (i, j) == (0, 5)
                                 else f"u{i}-{j}@example.org"))
    result = dlq.redrive(sqs, email_dlq(100))
    assert result.moved == 100 and sqs.sent_back == 100
    # what is left is the one refused notification, visible again
    assert not sqs.held and [len(orjson.loads(b)["notifications"])
                             for _id, b in sqs.dead.values()] == [1]


class SentHalfThenUndeletable(LoopingSqs):
    """SQS takes half a batch, refuses the rest; then the delete fails."""

    def send_message_batch(self, *, Entries: list[dict[str, Any]], **_: Any) -> dict[str, Any]:
        half = len(Entries) // 2
        return {"Successful": [{"Id": e["Id"], "MessageId": f"s{e['Id']}"}
                               for e in Entries[:half]],
                "Failed": [{"Id": e["Id"], "Code": "InternalError", "Message": "try again",
                            "SenderFault": False} for e in Entries[half:]]}

    def delete_message_batch(self, *, Entries: list[dict[str, Any]], **_: Any) -> Any:
        return {"Successful": [], "Failed": [{"Id": e["Id"], "Code": "ReceiptHandleIsInvalid",
                                              "Message": "gone"} for e in Entries]}


def test_what_sqs_refused_is_visible_at_once_when_the_delete_then_fails() -> None:

    sqs = SentHalfThenUndeletable([f"b{i}" for i in range(10)])
    with pytest.raises(dlq.DlqError, match="deleting 5 of the last 5"):
        dlq.redrive(sqs, email_dlq(10))
    # the five sent stay held (their copies went; they come back in a minute), the five
    # refused were not sent: visible again at once
    assert sorted(b for _id, b in sqs.held.values()) == [f"b{i}" for i in range(5)]
    assert sorted(b for _id, b in sqs.dead.values()) == [f"b{i}" for i in range(5, 10)]


def test_a_digest_holds_a_few_bytes_per_notification_whatever_the_ids() -> None:
    """A publisher chooses the message id (up to 10,000 characters): the digest kept the
    notifications whole, 29 MB for one 250 KiB body of such."""
    from delivery_data import notification, payload

    body = payload("sse", [notification(f"u{j}", f"u{j}", f"d{j}") for j in range(100)],
                   id="i" * 10_000)
    digest = dlq._digest(body)
    assert len(digest) == 100 and {len(d) for d in digest} == {32}
    assert {len(d) for d in dlq._digest("no payload")} == {32}


class ExpiringSqs(LoopingSqs):
    """Received messages become visible again three receives later, as when the move's
    hold (its visibility timeout) runs out."""

    def __init__(self, bodies: list[str], overcount: int = 0) -> None:
        super().__init__(bodies, overcount)
        self.received_at: dict[str, int] = {}

    def receive_message(self, *, MaxNumberOfMessages: int, **kw: Any) -> dict[str, Any]:
        for h in [h for h, n in self.received_at.items() if self.receives - n >= 3]:
            if h in self.held:
                self.dead[h] = self.held.pop(h)
            del self.received_at[h]
        got = super().receive_message(MaxNumberOfMessages=MaxNumberOfMessages, **kw)
        for m in got["Messages"]:
            self.received_at[m["ReceiptHandle"]] = self.receives
        return got

    def change_message_visibility_batch(self, *, Entries: list[dict[str, Any]],
                                        **_: Any) -> Any:
        for entry in Entries:  # a hold that ran out: nothing to give back
            if entry["ReceiptHandle"] in self.held:
                self.dead[entry["ReceiptHandle"]] = self.held.pop(entry["ReceiptHandle"])
        return {"Successful": [{"Id": e["Id"]} for e in Entries], "Failed": []}


def test_copies_whose_hold_runs_out_do_not_keep_the_move_going() -> None:
    """Held copies came back in turn, each receive of them counted as a sign of more to
    move, and with SQS's count too high the move never ended."""
    sqs = ExpiringSqs([f"body-{i}" for i in range(25)], overcount=40)
    result = dlq.redrive(sqs, work_dlq(25))
    assert result.moved == 25 and sqs.sent_back == 25
    assert len(sqs.dead) == 25 and not sqs.held


def test_copies_coming_back_faster_than_the_rest_move_do_not_end_the_move() -> None:
    """Every notification is refused again: each payload moved comes back as three
    copies, newest first, and two receives of new copies alone ended the move with
    nine tenths of the dead letters still there."""
    sqs = OneBadAddress(payloads(100, 3, lambda i, j: f"bad@{i}-{j}.example.org"))
    result = dlq.redrive(sqs, email_dlq(100))
    assert result.moved == 100 and sqs.sent_back == 100
    assert not sqs.held and len(sqs.dead) == 300  # the copies, each one notification
