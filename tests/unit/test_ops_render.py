"""What an operator reads: dead letters described, and ``fmn status`` with its alarms.

Dead-letter bodies are untrusted and may be anything (the reason they are
dead): each is described without raising, every field one clean line.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from fmn.local.stack import format_status
from fmn.ops.dlq import describe
from fmn.pipeline.envelope import Envelope, make_claim
from fmn.pipeline.queues import queue

pytestmark = pytest.mark.unit


def _message(body: str, receives: int = 6, error: str | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"MessageId": "m-1", "Body": body,
                               "Attributes": {"ApproximateReceiveCount": str(receives)}}
    if error is not None:
        message["MessageAttributes"] = {"error": {"DataType": "String", "StringValue": error}}
    return message


def test_a_bus_envelope_moved_by_sqs() -> None:
    record = json.dumps({"topic": "org.fedoraproject.prod.git.receive", "msg_id": "2026-abc",
                         "msg": {}}).encode()
    letter = describe(queue("incoming"), _message(Envelope.wrap("fedmsg", "tcp://h:1",
                                                                record).encode()))
    assert (letter.kind, letter.bus_message_id, letter.topic) == \
        ("envelope", "2026-abc", "org.fedoraproject.prod.git.receive")
    assert letter.receive_count == 5 and "failed 5 receives" in letter.reason


def test_a_fedmsg_envelope_without_an_id_gets_the_id_every_stage_derives() -> None:
    from fmn.metadata._fields import message_id

    doc = {"topic": "org.fedoraproject.stg.wiki.article.edit", "msg": {"title": "x"}}
    letter = describe(queue("incoming"), _message(Envelope.wrap(
        "fedmsg", "tcp://h:1", json.dumps(doc).encode()).encode()))
    assert letter.bus_message_id == message_id(None, doc, "msg_id")


@pytest.mark.parametrize("body, reason", [
    ("not json at all \x1b[2J", "not a bus envelope"),
    ('{"v": 1, "bus": "fedmsg", "source": "s", "record_text": "<xml/>"}', "not JSON"),
    ('{"v": 1, "bus": "fedmsg", "source": "s", "record": [1, 2]}', "not a JSON object"),
    ('{"v": 2}', "not a bus envelope"),
])
def test_unreadable_bodies_are_described_not_raised(body: str, reason: str) -> None:
    letter = describe(queue("incoming"), _message(body))
    assert letter.kind == "unreadable" and reason in letter.reason
    assert "\x1b" not in letter.reason


def test_a_claim_checked_record_says_where_it_is() -> None:
    env = Envelope.wrap("fedmsg", "tcp://h:1", b"{}").with_claim(
        make_claim("fmn-claims", "claims/2026/12/02/abc-1", b"{}"))
    letter = describe(queue("incoming"), _message(env.encode()))
    assert letter.kind == "envelope" and "s3://fmn-claims/claims/2026/12/02/abc-1" in letter.topic


def test_a_senders_dead_letter_and_a_moved_payload() -> None:
    payload = {"v": 1, "backend": "email", "part": 1, "parts": 1,
               "message": {"id": "2026-x", "topic": "t\r\nBcc: victim@example.org"},
               "notifications": [{"user": "bob\u202e", "address": "b@example.org",
                                  "destination": "d1", "rules": ["r1"]}]}
    moved = describe(queue("email"), _message(json.dumps(payload)))
    assert (moved.kind, moved.bus_message_id, moved.receive_count) == ("notifications",
                                                                       "2026-x", 5)
    assert "\n" not in moved.topic and "\r" not in moved.topic
    assert moved.recipients == ("bob",)
    sent = describe(queue("email"), _message(json.dumps({**payload, "error": "550 no such user"}),
                                             receives=1, error="550 no such user"))
    assert sent.reason == "550 no such user" and sent.receive_count == 0


def test_status_shows_each_alarm_by_its_queue() -> None:
    queues = {name: {"visible": 0, "in_flight": 0, "dlq": 0, "concurrency": 1,
                     "messages_per_s": 0.0} for name in ("incoming", "email")}
    alarms = [{"name": "p-incoming-age", "kind": "queue", "subject": "incoming", "state": "OK"},
              {"name": "p-incoming-depth", "kind": "queue", "subject": "incoming",
               "state": "ALARM"},
              {"name": "p-incoming-dlq", "kind": "dlq", "subject": "incoming",
               "state": "INSUFFICIENT_DATA"},
              {"name": "p-bridge-silent", "kind": "bridge", "subject": "bridge",
               "state": "ALARM"}]
    doc = {"queues": queues, "alarms": alarms,
           "counters": {"bridged": 0, "matched": 0, "notifications": {}, "delivered": {}}}
    lines = format_status(doc).splitlines()
    assert lines[0].split()[-4:] == ["alarms:", "age", "depth", "DLQ"]
    assert lines[1].split()[-4:] == ["ok", "ALARM", "no", "data"]
    assert lines[2].split()[-3:] == ["-", "-", "-"]
    assert "p-bridge-silent ALARM" in lines[3]
    assert "alarms" not in format_status({**doc, "alarms": []}).splitlines()[0]
