"""Hostile bus content at the pipeline's edges: never a crash, never a lost neighbour."""

from __future__ import annotations

from typing import Any

import pytest

from fmn.matcher.base import Notification
from fmn.message import Message
from fmn.pipeline.envelope import Envelope, InvalidEnvelope
from fmn.pipeline.notifications import pack, unpack
from fmn_bridge.amqp_source import make_record

pytestmark = pytest.mark.unit


class Props:
    headers: dict[str, Any] = {}
    message_id = "m1"
    priority = 0
    content_encoding = None


@pytest.mark.parametrize("body", [
    b'{"a": "\\ud800"}',                      # a lone surrogate, escaped: valid JSON
    b"[" * 100_000 + b"]" * 100_000,          # deep enough to exhaust the stack
    b"\xff\xfe not utf-8",
])
def test_an_amqp_body_the_bridge_cannot_rebuild_is_forwarded_raw(body: bytes) -> None:
    # None: the bridge forwards the body as received (record_text / record_b64)
    # instead of raising out of the consumer callback and stopping.
    assert make_record("org.fedoraproject.prod.x", Props(), body, "q") is None


def test_a_record_too_deep_to_re_encode_is_an_invalid_envelope() -> None:
    body = '{"v": 1, "bus": "fedmsg", "record": ' + "[" * 600 + "]" * 600 + "}"
    with pytest.raises(InvalidEnvelope):
        Envelope.decode(body)


def test_a_boolean_version_is_not_version_1() -> None:
    with pytest.raises(InvalidEnvelope):
        Envelope.decode('{"v": true, "bus": "fedmsg", "record": {}}')


def test_one_unsendable_notification_does_not_sink_its_neighbours() -> None:
    message = Message(id="m1", topic="t")
    good = Notification("m1", "alice", "email", "alice@example.org", "d1", ("r1",))
    bad = Notification("m1", "bob", "email", "b\uffff@example.org", "d1", ("r1",))
    bodies = pack(message, [good, bad, good._replace(user="carol")], "email")
    notifications = [n for body in bodies for n in unpack(body, "email")[1]]
    assert [n["user"] for n in notifications] == ["alice", "carol"]
