"""The Matrix notifier on in-memory fakes: rooms, rate limits against the deadline, backlogs.

The same behaviour against a real Synapse is in
``tests/integration/test_matrix_server.py``; here the homeserver is a fake
link whose rate limit and memberships the test sets, and time is a fake clock.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import pytest
from delivery_data import HOSTILE_SUMMARY, message, notification, payload

from fmn.delivery.base import deliveries
from fmn.delivery.matrix import (
    LimitExceeded,
    MatrixNotifier,
    MemoryRooms,
    RoomGone,
    check_user_id,
    render,
    summary_notice,
)
from fmn.delivery.once import MemoryOnce
from fmn.errors import PermanentError, Postponed, RetryableError

pytestmark = pytest.mark.unit


class FakeLink:
    """A homeserver: rooms with members; ``limited`` sends answer M_LIMIT_EXCEEDED."""

    def __init__(self) -> None:
        self.rooms: dict[str, dict[str, str]] = {}
        self.sent: list[tuple[str, dict[str, Any], str]] = []
        self.limit_next: list[float] = []
        self.limit_rooms: list[float] = []  # room creations are limited apart (Synapse)
        self.limit_membership: list[float] = []
        #: called before each request (a slow homeserver moves a clock)
        self.before: Any = None
        self.longest_request_s = 0.0
        self.gone: set[str] = set()

    def create_direct_room(self, user_id: str) -> str:
        if self.before is not None:
            self.before()
        if self.limit_rooms:
            raise LimitExceeded(self.limit_rooms.pop(0))
        room = f"!r{len(self.rooms)}:test"
        self.rooms[room] = {user_id: "invite"}
        return room

    def membership(self, room_id: str, user_id: str) -> str | None:
        if self.before is not None:
            self.before()
        if self.limit_membership:
            raise LimitExceeded(self.limit_membership.pop(0))
        if room_id in self.gone:
            raise RoomGone(room_id)
        return self.rooms.get(room_id, {}).get(user_id)

    def send(self, room_id: str, content: Mapping[str, Any], txn: str) -> str:
        if self.before is not None:
            self.before()
        if self.limit_next:
            raise LimitExceeded(self.limit_next.pop(0))
        if room_id in self.gone:
            raise RoomGone(room_id)
        if any(t == txn for _, _, t in self.sent):  # the homeserver's own dedup
            return "$dup"
        self.sent.append((room_id, dict(content), txn))
        return f"$e{len(self.sent)}"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def make(per_user: int = 10) -> tuple[FakeLink, MemoryRooms, MatrixNotifier, Clock]:
    link, rooms, clock = FakeLink(), MemoryRooms(), Clock()
    return link, rooms, MatrixNotifier(link, rooms, "https://web.test", per_user=per_user,
                                       clock=clock, sleep=clock.sleep), clock


def body(i: int, people: list[str], summary: str | None = None) -> str:
    return payload("matrix", [notification(p[1:3], p, "d") for p in people],
                   id=f"m-{i}", summary=summary or f"n-{i}")


def run(notifier: MatrixNotifier, bodies: list[str], once: MemoryOnce,
        remaining_s: float | None = None) -> tuple[Counter[str], list[int]]:
    """One batch: counts and the indexes of the records that went back."""
    dead: list[tuple[str, str]] = []
    plan = notifier.batch(bodies, (lambda: remaining_s) if remaining_s is not None else None)
    counts: Counter[str] = Counter()
    failed = []
    for i, b in enumerate(bodies):
        try:
            counts.update(plan(b, notifier, once, lambda item, why: dead.append((item.address,
                                                                                  why))))
        except RetryableError:
            failed.append(i)
    counts["dead"] = len(dead)
    return counts, failed


def test_the_notice_is_plain_text_and_escaped_html() -> None:
    plain, html = render(message(summary="<b>x</b> & y", app="koji<"), ["My <rule>"])
    assert plain == ("[koji<] <b>x</b> & y https://koji.fedoraproject.org/koji/buildinfo?"
                     "buildID=1 (rule: My <rule>)")
    assert html == ('<b>[koji&lt;]</b> &lt;b&gt;x&lt;/b&gt; &amp; y <a href="https://koji.'
                    'fedoraproject.org/koji/buildinfo?buildID=1">https://koji.fedoraproject.'
                    'org/koji/buildinfo?buildID=1</a> <i>(rule: My &lt;rule&gt;)</i>')
    plain, html = render(message(summary=HOSTILE_SUMMARY, url="javascript:x"), [])
    assert "\n" not in plain and "\x1b" not in plain and "\u202e" not in plain
    assert "<script" not in html and "href" not in html and len(plain.encode()) < 2100
    assert summary_notice(3, "https://web.test")[0] == \
        "3 more notifications: https://web.test/#/notifications"


def test_a_notice_mentions_nobody_whatever_its_text_says() -> None:
    """Without m.mentions, "@room" or the person's name in a summary highlights."""
    link, _rooms, notifier, _ = make()
    summary = "@room urgent: @ann:x, ann, please look"
    run(notifier, [body(0, ["@ann:x"], summary=summary)], MemoryOnce())
    [(_room, content, _txn)] = link.sent
    assert "@room urgent" in content["body"] and content["m.mentions"] == {}


@pytest.mark.parametrize("address", ["bob", "bob@example.org", "@bob", "@:x", "@bo b:x",
                                     "@bob:x\n", "@" + "a" * 260 + ":x"])
def test_addresses_that_are_not_user_ids_are_refused(address: str) -> None:
    with pytest.raises(PermanentError):
        check_user_id(address)


def test_one_room_per_person_made_once_and_remade_when_they_left() -> None:
    link, rooms, notifier, _ = make()
    once = MemoryOnce()
    run(notifier, [body(0, ["@ann:x", "@bo:x"]), body(1, ["@ann:x"])], once)
    assert len(link.rooms) == 2 and [r for r, _, _ in link.sent] == ["!r0:test", "!r1:test",
                                                                     "!r0:test"]
    link.rooms["!r0:test"]["@ann:x"] = "leave"
    run(notifier, [body(2, ["@ann:x"])], once)
    assert rooms.get("@ann:x") == "!r2:test" and link.sent[-1][0] == "!r2:test"
    link.gone.add("!r2:test")  # the bot was kicked: a send finds out, a new room is made
    notifier._checked.add("@ann:x")
    notifier(deliveries(body(3, ["@ann:x"]), "matrix")[0])
    assert link.sent[-1][0] == "!r3:test"


def test_a_rate_limit_is_waited_out_within_the_deadline() -> None:
    link, _, notifier, clock = make()
    link.limit_next = [0.5, 1.5]
    counts, failed = run(notifier, [body(i, ["@ann:x"]) for i in range(3)], MemoryOnce(),
                         remaining_s=100)
    assert failed == [] and counts["sent"] == 3 and counts["rate-limited"] == 2
    assert clock.slept == [0.5, 1.5]


def test_a_limit_on_the_membership_check_is_waited_out_too() -> None:
    # a limit on "is the person still in the room" failed the whole batch back to the
    # queue, using up a receive of every record, where a limit on a send is waited out
    link, _, notifier, clock = make()
    once = MemoryOnce()
    run(notifier, [body(0, ["@ann:x"])], once)  # ann has a room
    link.limit_membership = [0.5]
    counts, failed = run(notifier, [body(1, ["@ann:x"]), body(2, ["@ann:x"])], once,
                         remaining_s=100)
    assert failed == [] and counts["sent"] == 2 and counts["rate-limited"] == 1
    assert clock.slept == [0.5]
    link.limit_membership = [60.0]  # too long to wait: the batch goes back, in order,
    plan = notifier.batch([body(3, ["@ann:x"])], lambda: 30)  # using up no receive
    with pytest.raises(Postponed):
        plan(body(3, ["@ann:x"]), notifier, once, lambda *_: None)


@pytest.mark.parametrize("limits", [False, True])
def test_a_slow_homeserver_sends_the_rest_back_before_the_deadline(limits: bool) -> None:
    """No request starts without the time for it: every request of a batch of 100
    notices ends before a 280 s invocation's deadline when each takes as long as the
    link allows, with rate limits on checks and sends waited out or not, new rooms
    needed and rooms gone; the rest goes back in order, and what went is counted."""
    from fmn.delivery.matrix_client import NioLink

    link, rooms, notifier, clock = make()
    link.longest_request_s = NioLink.longest_request_s  # 40 s
    people = [f"@p{i}:x" for i in range(100)]
    for person in people[::2]:  # half of them have a room
        rooms.put(person, link.create_direct_room(person))
        link.rooms[rooms.get(person) or ""][person] = "join"
    link.gone = {rooms.get(p) or "" for p in people[:20:4]}
    ends: list[float] = []

    def slow() -> None:
        clock.now += link.longest_request_s
        ends.append(clock.now)
        if limits and len(ends) % 3 == 0:
            link.limit_membership.append(25.0)
            link.limit_next.append(5.0)

    link.before = slow
    clock.now = 0.0
    bodies = [body(r, people[r * 10:(r + 1) * 10]) for r in range(10)]
    plan = notifier.batch(bodies, lambda: 280 - clock.now)
    counted: Counter[str] = Counter()
    failed = []
    for i, b in enumerate(bodies):
        try:
            counted.update(plan(b, notifier, MemoryOnce(), lambda *_: None))
        except Postponed as exc:
            counted.update(exc.done)
            failed.append(i)
    assert ends and max(ends) <= 280  # Lambda would have killed a request still running
    assert failed and failed == list(range(failed[0], 10))  # the rest, in order
    assert counted["sent"] == len(link.sent) > 0


def test_out_of_time_before_a_new_room_is_not_a_room_creation_limit() -> None:
    # a room-creation limit lets the records of people with a room go on; running out
    # of time must stop the batch, in order, whatever request it falls on
    from fmn.delivery.matrix import OutOfTime

    link, _, notifier, clock = make()
    once = MemoryOnce()
    run(notifier, [body(0, ["@ann:x"])], once)  # ann has a room, new has none
    link.longest_request_s = 20.0
    link.before = lambda: setattr(clock, "now", clock.now + 20.0)
    clock.now = 0.0
    plan = notifier.batch([body(1, ["@ann:x"]), body(2, ["@new:x"]), body(3, ["@ann:x"])],
                          lambda: 60 - clock.now)  # 30 s kept back: one request of 20 s
    plan(body(1, ["@ann:x"]), notifier, once, lambda *_: None)  # check and send: 40 s
    with pytest.raises(OutOfTime):
        plan(body(2, ["@new:x"]), notifier, once, lambda *_: None)
    assert plan.rooms_limited is None
    with pytest.raises(Postponed):  # the later record waits its turn
        plan(body(3, ["@ann:x"]), notifier, once, lambda *_: None)


def test_a_verification_code_does_not_inherit_a_batch_deadline() -> None:
    link, _, notifier, _ = make()
    notifier.batch([body(0, ["@ann:x"])], lambda: 0.0)  # a batch whose time is up
    notifier.send_text("@ann:x", "your code is 123456", "t1")
    assert link.sent[-1][1]["body"] == "your code is 123456"
    assert notifier.remaining_s is not None  # the batch's own deadline is untouched


def test_a_limit_too_long_for_the_deadline_returns_the_rest_in_order() -> None:
    link, _, notifier, clock = make()
    once = MemoryOnce()
    bodies = [body(i, ["@ann:x"]) for i in range(4)]
    link.sent.clear()
    first = notifier.batch(bodies[:1], lambda: 100)
    first(bodies[0], notifier, once, lambda *_: None)
    link.limit_next = [30.0]  # more than the 15 s left minus the margin
    counts, failed = run(notifier, bodies, once, remaining_s=15)
    assert failed == [1, 2, 3]  # record 1 hit the limit; 2 and 3 wait their turn
    assert clock.slept == [] and [c["body"].split()[1] for _, c, _ in link.sent] == ["n-0"]
    counts, failed = run(notifier, bodies, once, remaining_s=100)  # they come back
    assert failed == [] and counts["duplicate"] == 1 and counts["sent"] == 3
    assert [c["body"].split()[1] for _, c, _ in link.sent] == ["n-0", "n-1", "n-2", "n-3"]


def test_a_room_creation_limit_holds_back_only_people_without_a_room() -> None:
    # Synapse limits room creations apart from sends: a burst of people new to Matrix
    # held back every later record of the batch, other people's too, for minutes
    link, _, notifier, _ = make()
    once = MemoryOnce()
    run(notifier, [body(0, ["@ann:x"])], once)  # ann has a room
    bodies = [body(1, ["@new:x"]), body(2, ["@ann:x"]), body(3, ["@cy:x"]),
              body(4, ["@new:x"]), body(5, ["@dee:x"]), body(6, ["@dee:x", "@new:x"]),
              body(7, ["@dee:x"])]
    run(notifier, [body(0, ["@dee:x"])], once)  # so has dee
    link.limit_rooms = [60.0]  # more than the 15 s left minus the margin
    counts, failed = run(notifier, bodies, once, remaining_s=15)
    # 1 went back; 3 needs a room; 4 is new's, after 1; 6 is new's too, and 7 is dee's
    # after 6: each person's notices stay in order; 2 and 5 went on
    assert failed == [0, 2, 3, 5, 6] and counts["sent"] == 2
    assert [c["body"].split()[1] for _, c, _ in link.sent] == ["n-0", "n-0", "n-2", "n-5"]
    counts, failed = run(notifier, [bodies[i] for i in failed], once, remaining_s=100)
    assert failed == [] and counts["sent"] == 6
    assert [c["body"].split()[1] for _, c, _ in link.sent][4:] == [
        "n-1", "n-3", "n-4", "n-6", "n-6", "n-7"]


def test_a_send_limit_still_holds_back_the_whole_batch() -> None:
    link, _, notifier, _ = make()
    once = MemoryOnce()
    run(notifier, [body(0, ["@ann:x"]), body(1, ["@bob:x"])], once)
    link.limit_next = [60.0]  # the bot's sends: every room alike
    _counts, failed = run(notifier, [body(2, ["@ann:x"]), body(3, ["@bob:x"])], once,
                          remaining_s=15)
    assert failed == [0, 1]


def test_a_backlog_becomes_one_summary_and_a_bad_address_goes_alone() -> None:
    link, _, notifier, _ = make(per_user=2)
    once = MemoryOnce()
    bodies = [body(i, ["@ann:x"]) for i in range(6)] + [body(9, ["ann@example.org"])]
    counts, failed = run(notifier, bodies, once)
    assert failed == [] and counts["sent"] == 2 and counts["summarised"] == 4
    assert counts["summary-notices"] == 1 and counts["dead"] == 1
    assert link.sent[-1][1]["body"] == "4 more notifications: https://web.test/#/notifications"
    counts, _ = run(notifier, bodies[:6], once)
    assert counts["duplicate"] == 6 and len(link.sent) == 3


def test_an_unexpected_failure_dead_letters_that_notice_alone() -> None:
    # a bug or a client library's surprise on one person's notice must not send the
    # whole record back (and with it every later record of the batch, to keep order)
    link, _, notifier, _ = make()
    real_send = link.send

    def send(room_id: str, content: Mapping[str, Any], txn: str) -> str:
        if link.rooms[room_id].get("@bob:x"):
            raise TypeError("an answer nobody expected")
        return real_send(room_id, content, txn)

    link.send = send  # type: ignore[method-assign]
    once = MemoryOnce()
    bodies = [body(0, ["@ann:x", "@bob:x", "@cy:x"]), body(1, ["@ann:x"])]
    counts, failed = run(notifier, bodies, once)
    assert failed == [] and counts["sent"] == 3 and counts["dead-lettered"] == 1
    assert counts["dead"] == 1
    counts, failed = run(notifier, bodies, once)  # redelivered: nothing again
    assert failed == [] and counts["duplicate"] == 4 and counts["dead"] == 0


def test_a_rate_limit_sends_records_back_fresh_using_up_no_receive() -> None:
    # through the function's edge: a limit is no failure, so the records wait as fresh
    # messages (as IRC's flood limit makes them) instead of spending one of their five
    # receives each time, which dead-lettered good notices under a lasting limit; and
    # they wait as long as the homeserver asked, or they would come straight back
    from lambda_events import context, sqs_event

    from fmn.delivery.edge import SenderFunction
    from fmn.pipeline.redelivery import Redelivery

    class Sqs:
        def __init__(self) -> None:
            self.calls: list[str] = []

        def get_queue_url(self, QueueName: str) -> dict[str, str]:  # noqa: N803 - boto3's
            return {"QueueUrl": f"url/{QueueName}"}

        def change_message_visibility_batch(self, **kw: Any) -> dict[str, Any]:
            self.calls += ["back off " + e["Id"] for e in kw["Entries"]]
            return {}

        def send_message(self, **kw: Any) -> dict[str, Any]:
            self.calls.append(f"send to {kw['QueueUrl']} after {kw.get('DelaySeconds', 0)} s")
            return {}

    link, _, notifier, _ = make()
    link.limit_next = [60.0] * 10  # the homeserver: wait a minute, more than there is
    sqs = Sqs()
    function = SenderFunction("matrix", lambda settings: notifier)
    function._state.update(settings=None, sqs=sqs, redelivery=Redelivery(sqs, lambda q: 300),
                           once=MemoryOnce(), send=notifier, dlq_url=None)
    event = sqs_event([body(i, ["@ann:x"]) for i in range(3)], queue="fmn-matrix")
    ctx = context("send_matrix", timeout_s=40)
    plan = notifier.batch([r["body"] for r in event["Records"]],
                          lambda: ctx.get_remaining_time_in_millis() / 1000)
    answer = function.handle(event, ctx, deliver=plan)
    assert answer == {"batchItemFailures": []} and link.sent == []
    # each record again, fresh, once the limit has passed: not round and round at once
    assert sqs.calls == ["send to url/fmn-matrix after 60 s"] * 3
