"""Fuzzing the decoders that read untrusted bytes: no crash but the documented errors.

Hypothesis at the byte level (raw bytes, and valid documents with bytes
mutated in them) against every place bus content enters the pipeline:

* the bridge: a fedmsg ZeroMQ message (any frames) and an AMQP delivery
  (any body, any content encoding) become an envelope or are forwarded
  raw, never an exception out of the consumer;
* the envelope: :meth:`Envelope.decode` raises :class:`InvalidEnvelope` or
  nothing, and gives back the exact record bytes the bridge wrapped,
  whatever they are;
* the bus record: :func:`fmn.metadata.parse` raises ``InvalidMessage`` or
  nothing;
* the notification payload: :func:`unpack` and the senders' reader
  :func:`deliveries` raise ``InvalidPayload`` or nothing.

Each property is bounded (``FMN_FUZZ_EXAMPLES`` examples, 200 by default:
a few seconds in ``make test``; ``make fuzz`` runs more).
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

import pytest
from delivery_data import notification, payload
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fmn.delivery.base import deliveries
from fmn.errors import InvalidMessage
from fmn.metadata import parse
from fmn.pipeline.envelope import Envelope, InvalidEnvelope
from fmn.pipeline.notifications import InvalidPayload, unpack
from fmn_bridge.amqp_source import make_record
from fmn_bridge.fedmsg_source import FedmsgSource

pytestmark = pytest.mark.unit

EXAMPLES = int(os.environ.get("FMN_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- inputs --------------------------------------------------------------------------

#: JSON values as Python's json writes them: NaN, infinities, integers of any size
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=5),
    max_leaves=20)


@st.composite
def mutated(draw: Any, documents: st.SearchStrategy[bytes]) -> bytes:
    """A valid document with a few bytes replaced, inserted or cut out."""
    data = bytearray(draw(documents))
    for _ in range(draw(st.integers(0, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["replace", "insert", "cut"]))
        byte = draw(st.integers(0, 255))
        if action == "replace":
            data[at] = byte
        elif action == "insert":
            data.insert(at, byte)
        else:
            del data[at:at + draw(st.integers(1, 8))]
    return bytes(data)


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


fedmsg_records = st.builds(
    lambda topic, msg, i: dumps({"topic": topic, "msg": msg, "i": i, "timestamp": 1.5}),
    st.text(max_size=30), json_values, st.integers())
fm_records = st.builds(
    lambda topic, body, mid: dumps({"body": body, "headers": {}, "id": mid, "priority": 0,
                                    "queue": "q", "topic": topic}),
    st.text(max_size=30), json_values, st.text(max_size=20))
records = st.binary(max_size=300) | mutated(fedmsg_records | fm_records)
envelopes = st.builds(
    lambda bus, record: Envelope.wrap(bus, "src", record).encode().encode(),
    st.sampled_from(["fedmsg", "fedora-messaging"]), records)
payloads = st.builds(
    lambda users, mid: payload("email", [notification(u, f"{u}@example.org")
                                         for u in users], id=mid).encode(),
    st.lists(st.text(min_size=1, max_size=10), max_size=3), st.text(max_size=20))


# -- the bridge -----------------------------------------------------------------------


class Sink(list[Envelope]):
    def put(self, envelope: Envelope, ack: Any = None, *, block: Any = True) -> None:
        self.append(envelope)


@FUZZ
@given(st.lists(st.binary(max_size=200) | mutated(fedmsg_records), max_size=3))
def test_any_fedmsg_message_is_forwarded_as_received(frames: list[bytes]) -> None:
    sink = Sink()
    source = FedmsgSource(["tcp://hub:9940"], sink)  # type: ignore[arg-type]
    assert source._handle("tcp://hub:9940", frames)
    (envelope,) = sink
    assert Envelope.decode(envelope.encode()).record == (frames[-1] if frames else b"")


class Props:
    def __init__(self, encoding: str | None, headers: dict[str, Any]) -> None:
        self.content_encoding = encoding
        self.headers = headers
        self.message_id = "m1"
        self.priority = 0


@FUZZ
@given(body=st.binary(max_size=300) | mutated(st.builds(dumps, json_values)),
       encoding=st.sampled_from([None, "utf-8", "latin-1", "utf-16", "no-such-codec", ""]),
       headers=st.dictionaries(st.text(max_size=8), json_values | st.binary(max_size=8),
                               max_size=3))
def test_any_amqp_delivery_becomes_a_record_or_is_forwarded_raw(
        body: bytes, encoding: str | None, headers: dict[str, Any]) -> None:
    record = make_record("org.fedoraproject.prod.x", Props(encoding, headers), body, "q")
    wrapped = Envelope.wrap("fedora-messaging", "amqp://b#q", record if record else body)
    assert Envelope.decode(wrapped.encode()).record == (record if record else body)
    if record is not None:
        assert json.loads(record)["topic"] == "org.fedoraproject.prod.x"


# -- the envelope, the record, the payload ------------------------------------------------


@FUZZ
@given(st.binary(max_size=400) | mutated(envelopes))
def test_an_envelope_decodes_or_is_an_invalid_envelope(body: bytes) -> None:
    with contextlib.suppress(InvalidEnvelope):
        Envelope.decode(body)


@FUZZ
@given(records)
def test_any_record_survives_the_envelope_byte_for_byte(record: bytes) -> None:
    envelope = Envelope.wrap("fedmsg", "tcp://hub", record, seq=1)
    assert Envelope.decode(envelope.encode()).record == record


@FUZZ
@given(records)
def test_a_record_is_a_message_or_an_invalid_message(record: bytes) -> None:
    with contextlib.suppress(InvalidMessage):
        parse(record)


@FUZZ
@given(st.binary(max_size=400) | mutated(payloads))
def test_a_payload_unpacks_or_is_an_invalid_payload(body: bytes) -> None:
    with contextlib.suppress(InvalidPayload):
        unpack(body)
    with contextlib.suppress(InvalidPayload):
        deliveries(body, "email")
