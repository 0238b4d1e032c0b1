"""What a record did before it stopped is counted: sent items are not lost to the metrics.

A record stopped part way (out of time, a rate limit, the server away) comes
back, and the items it had sent are then skipped as done ("duplicate"): unless
the stop carries what was done (``RetryableError.done``), ``Sent`` and the
bus-to-send latency would miss them.
"""

from __future__ import annotations

from collections import Counter

import pytest
from delivery_data import notification, payload

from fmn.delivery.base import Delivery, Send, deliver_payload
from fmn.delivery.once import MemoryOnce
from fmn.errors import Deferred, Postponed, RetryableError

pytestmark = pytest.mark.unit

BODY = payload("email", [notification(u, f"{u}@example.org") for u in ("ann", "bob", "cy", "dee")])


def stopping(at: str, error: RetryableError) -> tuple[list[str], Send]:
    sent: list[str] = []

    def send(item: Delivery) -> None:
        if item.user == at:
            raise error
        sent.append(item.user)

    return sent, send


@pytest.mark.parametrize("error", [Postponed("out of time"), RetryableError("relay away")])
def test_a_payload_stopped_part_way_carries_what_it_sent(error: RetryableError) -> None:
    sent, send = stopping("cy", error)
    with pytest.raises(RetryableError) as raised:
        deliver_payload(BODY, "email", send, MemoryOnce(), lambda *_: None)
    assert raised.value is error and sent == ["ann", "bob"]
    assert raised.value.done == Counter(sent=2)


def test_a_deferred_item_carries_what_the_others_did() -> None:
    sent, send = stopping("bob", Deferred("452 mailbox full"))
    with pytest.raises(Deferred) as raised:
        deliver_payload(BODY, "email", send, MemoryOnce(), lambda *_: None)
    assert sent == ["ann", "cy", "dee"]
    assert raised.value.done == Counter(sent=3, deferred=1)
