"""Dead letters are redrivable: what went to a dead-letter queue is sent once its cause is fixed.

On fakes (:class:`MemoryOnce` for Redis, a list for the dead-letter queue):
a refused item is dead-lettered alone, a redelivery of its payload does not
dead-letter it twice, and a redrive of the dead letter, once the cause is
gone, sends it (and, if it fails again, dead-letters it again), whatever
the backend: the shared per-item path and the IRC sender's batch path.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import orjson
import pytest
from delivery_data import irc_body, notification, payload

from fmn.delivery.base import Delivery, deliver_payload
from fmn.delivery.irc import IrcNotifier
from fmn.delivery.irc_client import MemoryIrcLink
from fmn.delivery.once import MemoryOnce
from fmn.errors import PermanentError, RetryableError

pytestmark = pytest.mark.unit


class DeadLetterQueue(list[str]):
    """The dead-letter queue: the bodies put on it (what a redrive sends back)."""

    def __call__(self, item: Delivery, reason: str) -> None:
        from fmn.delivery.base import dead_letter_body

        self.append(dead_letter_body(item, reason))


class Relay:
    """A mail relay that refuses some addresses permanently until it is fixed."""

    def __init__(self) -> None:
        self.refused: set[str] = set()
        self.sent: list[str] = []

    def __call__(self, item: Delivery) -> None:
        if item.address in self.refused:
            raise PermanentError(f"550 no such user {item.address}")
        self.sent.append(item.address)


def test_a_redriven_dead_letter_is_sent_once_the_cause_is_fixed() -> None:
    relay, once, dlq = Relay(), MemoryOnce(), DeadLetterQueue()
    relay.refused.add("gone@example.org")
    body = payload("email", [notification("bob", "bob@example.org"),
                             notification("gone", "gone@example.org")])
    assert deliver_payload(body, "email", relay, once, dlq) == Counter(
        {"sent": 1, "dead-lettered": 1})
    assert len(dlq) == 1

    relay.refused.clear()  # the relay's 5xx is fixed; the dead-letter queue is re-driven
    (redriven,) = dlq
    assert deliver_payload(redriven, "email", relay, once, dlq) == Counter(sent=1)
    assert relay.sent == ["bob@example.org", "gone@example.org"]
    # and the redrive, redelivered, is a duplicate
    assert deliver_payload(redriven, "email", relay, once, dlq) == Counter(duplicate=1)
    assert len(dlq) == 1


def test_a_redelivered_payload_does_not_dead_letter_an_item_twice() -> None:
    relay, once, dlq = Relay(), MemoryOnce(), DeadLetterQueue()
    relay.refused.add("gone@example.org")
    body = payload("email", [notification("gone", "gone@example.org")])
    deliver_payload(body, "email", relay, once, dlq)
    assert deliver_payload(body, "email", relay, once, dlq) == Counter(duplicate=1)
    assert len(dlq) == 1


def test_a_payload_back_after_the_fix_does_not_send_what_it_dead_lettered() -> None:
    """The SMTP fault (4xx, then 5xx, then fixed and the DLQ re-driven) mailed 48
    notifications twice: a payload whose other item was deferred came back after
    the relay was fixed and sent the item it had dead-lettered, then the redrive of
    that dead letter sent it again."""
    from fmn.errors import Deferred

    once, dlq, sent = MemoryOnce(), DeadLetterQueue(), []
    refused, deferred = {"gone@example.org"}, {"later@example.org"}

    def send(item: Delivery) -> None:
        if item.address in refused:
            raise PermanentError(f"550 {item.address}")
        if item.address in deferred:
            raise Deferred(f"451 {item.address}")
        sent.append(item.address)

    body = payload("email", [notification("gone", "gone@example.org"),
                             notification("later", "later@example.org")])
    with pytest.raises(Deferred):  # the record comes back for "later"
        deliver_payload(body, "email", send, once, dlq)
    assert len(dlq) == 1
    refused.clear()  # the relay is fixed
    deferred.clear()
    assert deliver_payload(body, "email", send, once, dlq) == Counter(
        {"sent": 1, "duplicate": 1})
    assert sent == ["later@example.org"]  # not gone@: its dead letter will send it
    assert deliver_payload(dlq[0], "email", send, once, dlq) == Counter(sent=1)
    assert sorted(sent) == ["gone@example.org", "later@example.org"]


def test_a_redriven_item_that_fails_again_goes_back_to_the_dead_letter_queue() -> None:
    relay, once, dlq = Relay(), MemoryOnce(), DeadLetterQueue()
    relay.refused.add("gone@example.org")
    deliver_payload(payload("email", [notification("gone", "gone@example.org")]),
                    "email", relay, once, dlq)
    assert deliver_payload(dlq[0], "email", relay, once, dlq) == Counter({"dead-lettered": 1})
    assert len(dlq) == 2
    assert orjson.loads(dlq[1])["notifications"][0]["dead_letters"] == 2
    relay.refused.clear()
    assert deliver_payload(dlq[1], "email", relay, once, dlq) == Counter(sent=1)


def test_a_payload_dead_lettered_whole_after_its_item_was_does_not_send_it_twice() -> None:
    """alice's item fails for good and is dead-lettered alone; bob's keeps failing
    retryably until SQS moves the whole payload (alice's item included) to the
    dead-letter queue.  Once both causes are fixed and the queue is re-driven,
    alice gets her notification once: from her own dead letter."""
    relay, once, dlq = Relay(), MemoryOnce(), DeadLetterQueue()
    relay.refused.add("alice@example.org")
    away = {"bob@example.org"}

    def send(item: Delivery) -> None:
        if item.address in away:
            raise RetryableError("bob's server is away")
        relay(item)

    body = payload("email", [notification("alice", "alice@example.org"),
                             notification("bob", "bob@example.org")])
    for _ in range(5):  # the queue's receives, each failing on bob
        with pytest.raises(RetryableError):
            deliver_payload(body, "email", send, once, dlq)
    assert len(dlq) == 1  # alice's own dead letter, once
    dlq.append(body)  # SQS: maxReceiveCount reached, the payload itself is dead-lettered

    relay.refused.clear()
    away.clear()
    counts: Counter[str] = Counter()
    for redriven in list(dlq):
        counts += deliver_payload(redriven, "email", send, once, dlq)
    assert relay.sent == ["alice@example.org", "bob@example.org"]
    assert counts == Counter({"sent": 2, "duplicate": 1})
    assert len(dlq) == 2  # nothing dead-lettered again


def test_irc_an_item_dead_lettered_alone_is_not_sent_again_by_its_payload() -> None:
    link = FlakyLink({"carol"})
    notifier = IrcNotifier(link, "https://web.test")
    once, dlq = MemoryOnce(), DeadLetterQueue()
    body = irc_body("m1", ["alice", "carol"])
    assert notifier.batch([body])(body, notifier, once, dlq) == Counter(
        {"sent": 1, "dead-lettered": 1})
    link.broken.clear()
    # the payload comes back (redelivered, or re-driven from the dead-letter queue)
    assert notifier.batch([body])(body, notifier, once, dlq) == Counter(duplicate=2)
    assert not link.lines_to("carol")
    redriven = dlq[0]
    assert notifier.batch([redriven])(redriven, notifier, once, dlq) == Counter(sent=1)
    assert len(link.lines_to("carol")) == 1


def test_an_unforeseen_error_dead_letters_the_item_alone_and_a_redrive_sends_it() -> None:
    once, dlq, sent = MemoryOnce(), DeadLetterQueue(), []
    broken = {"odd@example.org"}

    def send(item: Delivery) -> None:
        if item.address in broken:
            raise KeyError("a case nobody foresaw")
        sent.append(item.address)

    body = payload("email", [notification("odd", "odd@example.org"),
                             notification("bob", "bob@example.org")])
    assert deliver_payload(body, "email", send, once, dlq) == Counter(
        {"sent": 1, "dead-lettered": 1})
    broken.clear()
    assert deliver_payload(dlq[0], "email", send, once, dlq) == Counter(sent=1)
    assert sorted(sent) == ["bob@example.org", "odd@example.org"]


class FlakyLink(MemoryIrcLink):
    """An IRC link that fails unexpectedly (not a typed error) for some nicks."""

    def __init__(self, broken: set[str]) -> None:
        super().__init__()
        self.broken = broken

    def send(self, nick: str, lines: Sequence[str]) -> None:
        if nick in self.broken:
            raise ValueError(f"an unexpected failure for {nick}")
        super().send(nick, lines)


def test_irc_an_unexpected_error_fails_one_item_not_its_payload_and_a_redrive_sends_it(
) -> None:
    link = FlakyLink({"carol"})
    notifier = IrcNotifier(link, "https://web.test")
    once, dlq = MemoryOnce(), DeadLetterQueue()
    body = irc_body("m1", ["alice", "carol", "dave"])
    counts = notifier.batch([body])(body, notifier, once, dlq)
    assert counts == Counter({"sent": 2, "dead-lettered": 1})
    assert link.lines_to("alice") and link.lines_to("dave") and not link.lines_to("carol")

    link.broken.clear()
    redriven = dlq[0]
    assert notifier.batch([redriven])(redriven, notifier, once, dlq) == Counter(sent=1)
    assert link.lines_to("carol")
