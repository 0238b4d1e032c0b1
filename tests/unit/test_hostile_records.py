"""Hostile bus content at the pipeline's edges: never a crash, never a lost neighbour."""

from __future__ import annotations

from typing import Any

import orjson
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
    b"[" * 100_000 + b"]" * 100_000,          # deep enough to exhaust the stack
    b"\xff\xfe not utf-8",
    b"{'single': 'quotes'}",
])
def test_an_amqp_body_the_bridge_cannot_rebuild_is_forwarded_raw(body: bytes) -> None:
    # None: the bridge forwards the body as received (record_text / record_b64)
    # instead of raising out of the consumer callback and stopping.
    assert make_record("org.fedoraproject.prod.x", Props(), body, "q") is None


def test_a_deep_record_is_carried_and_one_too_deep_to_read_is_an_invalid_envelope() -> None:
    deep = "[" * 600 + "]" * 600
    body = '{"v": 1, "bus": "fedmsg", "record": ' + deep + "}"
    assert Envelope.decode(body).record == deep.encode()
    with pytest.raises(InvalidEnvelope):
        Envelope.decode('{"v": 1, "bus": "fedmsg", "record": ' + "[" * 100_000 + "]" * 100_000
                        + "}")


# Valid on Fedora's buses (Python's json writes them), refused or rounded by strict parsers.
PYTHON_JSON_BODY = (b'{"agent": "alice", "ratio": NaN, "max": Infinity, "min": -Infinity,'
                    b' "big": 123456789012345678901234567890, "neg": -9223372036854775809,'
                    b' "s": "\\ud800 lone"}')


def test_an_amqp_body_is_carried_through_the_bridge_and_the_envelope_unchanged() -> None:
    record = make_record("org.fedoraproject.prod.bodhi.update.comment", Props(),
                         PYTHON_JSON_BODY, "q")
    assert record is not None and PYTHON_JSON_BODY in record
    encoded = Envelope.wrap("fedora-messaging", "amqp://broker/%2F#q", record).encode()
    assert '"record":' in encoded and "record_text" not in encoded
    assert Envelope.decode(encoded).record == record  # byte for byte


def test_a_record_in_python_json_is_a_bus_message() -> None:
    from fmn.metadata import parse

    record = make_record("org.fedoraproject.prod.bodhi.update.comment", Props(),
                         PYTHON_JSON_BODY, "q")
    assert record is not None
    message = parse(Envelope.decode(Envelope.wrap("fedora-messaging", "amqp://b#q",
                                                  record).encode()).record or b"")
    assert message.topic == "org.fedoraproject.prod.bodhi.update.comment"
    assert message.id == "m1"
    fedmsg = b'{"topic": "org.fedoraproject.prod.x", "msg": {"n": NaN, "big": ' \
             b'123456789012345678901234567890}, "i": 1}'
    assert parse(fedmsg).id  # derived from the content, integers and all


@pytest.mark.parametrize("record", [
    b" 0",                                          # whitespace the slice would lose
    b'{"topic": "x"}\n',
    '{"topic": "x"}'.encode("utf-16"),              # Python's json reads UTF-16 bytes
    '{"topic": "x"}'.encode("utf-32-le"),
    b'\xef\xbb\xbf{"topic": "x"}',                  # a UTF-8 byte-order mark
], ids=["leading-space", "trailing-newline", "utf-16", "utf-32", "utf-8-bom"])
def test_a_record_json_reads_but_the_envelope_cannot_embed_comes_back_unchanged(
        record: bytes) -> None:
    encoded = Envelope.wrap("fedmsg", "tcp://hub:9940", record).encode()
    assert Envelope.decode(encoded).record == record


@pytest.mark.parametrize("depth", [600, 995, 1010, 1020, 1100])
def test_a_record_nested_as_deep_as_orjson_reads_comes_back_unchanged(depth: int) -> None:
    # orjson reads 1024 levels, the standard library (which reads the envelope) fewer
    record = b'{"topic": "x", "msg": ' + b"[" * depth + b"]" * depth + b"}"
    encoded = Envelope.wrap("fedmsg", "tcp://hub:9940", record).encode()
    assert Envelope.decode(encoded).record == record


@pytest.mark.parametrize("i", ["18446744073709551616", "-9223372036854775809", "1e400", "true"])
def test_a_fedmsg_sequence_number_json_cannot_write_is_dropped_not_fatal(i: str) -> None:
    from fmn_bridge.fedmsg_source import FedmsgSource

    class Sink(list[Envelope]):
        def put(self, envelope: Envelope, ack: Any = None, *, block: Any = True) -> None:
            self.append(envelope.decode(envelope.encode()))  # what the SQS sink does

    record = b'{"topic": "org.fedoraproject.prod.x", "msg": {"n": NaN}, "i": ' + i.encode() + b"}"
    sink = Sink()
    source = FedmsgSource(["tcp://hub:9940"], sink)  # type: ignore[arg-type]
    assert source._handle("tcp://hub:9940", [b"org.fedoraproject.prod.x", record])
    (envelope,) = sink
    assert envelope.record == record and envelope.seq is None


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


def test_a_record_with_too_many_objects_to_read_is_carried_unread_and_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import fmn.message
    from fmn.errors import InvalidMessage
    from fmn.metadata import parse

    monkeypatch.setattr(fmn.message, "MAX_JSON_CONTAINERS", 100)
    body = orjson.dumps({"summary": "x", "items": [{}] * 200})
    # AMQP: not rebuilt into a record (which reads it), forwarded raw
    assert make_record("org.fedoraproject.prod.x", Props(), body, "q") is None
    # the envelope carries it as text rather than read it to embed it, byte for byte
    record = orjson.dumps({"topic": "t", "msg": {"items": [[]] * 200}})
    envelope = Envelope.wrap("fedmsg", "tcp://x", record)
    assert '"record_text"' in envelope.encode()
    assert Envelope.decode(envelope.encode()).record == record
    with pytest.raises(InvalidMessage) as refused:  # the match function dead-letters it
        parse(record)
    assert refused.value.reason == "too-complex" and "100" in str(refused.value)


def test_two_message_ids_never_become_one_idempotency_key() -> None:
    # the id travels capped and cleaned; a publisher chooses it, and it is part of every
    # notification's key: two ids alike in their first 10,000 characters, or apart only
    # in a character SQS refuses, must stay two messages
    from fmn.pipeline.notifications import MAX_TEXT_CHARS, message_info

    def carried(message_id: str) -> str:
        text = message_info(Message(id=message_id, topic="t"))["id"]
        assert isinstance(text, str) and len(text) <= MAX_TEXT_CHARS
        return text

    long = "a" * MAX_TEXT_CHARS
    ids = [long + "1", long + "2", "x\ufffe", "x\uffff", "x\ufffd", "2024-abc"]
    assert len({carried(i) for i in ids}) == len(ids)
    assert carried("2024-abc") == "2024-abc" and carried("x\ufffd") == "x\ufffd"
    assert carried(long + "1").startswith("a" * 100)  # still readable


def test_a_header_shrunk_to_fit_keeps_two_ids_apart() -> None:
    # Over 64 KB of header (a long id and a summary of control characters, each escaped
    # to six bytes): the id is shortened too, and must keep what told it apart, or the
    # second message's notifications are taken for the first's and never sent.
    from fmn.delivery.base import deliver_payload
    from fmn.delivery.once import MemoryOnce

    once, sent = MemoryOnce(), []
    ids = []
    for i in (1, 2):
        m = Message(id="release-" + "x" * 9000 + f"-{i}", topic="org.fedoraproject.prod.x",
                    summary="\x07" * 10_000 + f" message {i}")
        [body] = pack(m, [Notification(m.id, "bob", "email", "bob@example.org", "d1",
                                       ("r1",))], "email")
        carried = orjson.loads(body)["message"]["id"]
        assert len(carried) < len(m.id) and carried.startswith("release-xxx")
        ids.append(carried)
        counts = deliver_payload(body, "email", lambda item: sent.append(item.message["id"]),
                                 once, lambda item, reason: None)
        assert counts == {"sent": 1}
    assert ids[0] != ids[1] and sent == ids
