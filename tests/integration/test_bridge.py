"""The bus bridge against real services: ZeroMQ, RabbitMQ, and SQS/S3 on the moto server.

Each test uses its own SQS queue prefix, S3 bucket and RabbitMQ queue and
exchange (deleted afterwards), so tests never see each other's messages.
The kill test runs the bridge as a subprocess (``python -m fmn_bridge.cli``),
SIGKILLs it mid-stream and restarts it: every message must reach SQS, and
duplicates are allowed only within the unacknowledged window (prefetch).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from services import AMQP_URL, rabbitmq_connection
from shared_data import MESSAGES, read_jsonl

from fmn.local.stack import free_port
from fmn.pipeline.envelope import MAX_INLINE_BYTES, Envelope

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


# -- helpers -------------------------------------------------------------------


def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _clients(endpoint: str) -> tuple[Any, Any]:
    import boto3

    return (boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1"),
            boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1"))


class Aws:
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.sqs, self.s3 = _clients(endpoint)
        tag = uuid.uuid4().hex[:10]
        self.prefix = f"t{tag}-"
        self.queue_name = f"{self.prefix}incoming"
        self.queue_url = self.sqs.create_queue(QueueName=self.queue_name)["QueueUrl"]
        self.bucket = f"claims-{tag}"
        self.s3.create_bucket(Bucket=self.bucket)

    def count(self) -> int:
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=self.queue_url, AttributeNames=["ApproximateNumberOfMessages"])
        return int(attrs["Attributes"]["ApproximateNumberOfMessages"])

    def drain(self) -> list[Envelope]:
        """Every message on the queue (received once, invisible for the rest of the test)."""
        out: list[Envelope] = []
        while True:
            resp = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10,
                                            VisibilityTimeout=600, WaitTimeSeconds=0)
            msgs = resp.get("Messages", [])
            if not msgs:
                return out
            out.extend(Envelope.decode(m["Body"]) for m in msgs)

    def sink(self, sqs: Any = None, **kw: Any) -> Any:
        from fmn_bridge.sqs_sink import SqsSink

        kw.setdefault("backoff_max_s", 0.5)
        return SqsSink(sqs or self.sqs, self.s3, self.queue_name, self.bucket, **kw)


@pytest.fixture
def aws(aws_env: str) -> Aws:
    return Aws(aws_env)


def _fedmsg(record: bytes, seq: int | None = None) -> Envelope:
    return Envelope.wrap("fedmsg", "tcp://hub:9940", record, seq=seq)


def _sent_through(sink: Any, aws: Aws, records: list[bytes]) -> dict[int, Envelope]:
    """Each record as a fedmsg envelope numbered by its place, through a started sink:
    every one acknowledged; what reached the queue, by number."""
    acked: list[int] = []
    for n, record in enumerate(records):
        sink.put(_fedmsg(record, n), ack=lambda n=n: acked.append(n))
    assert sink.flush_and_stop(10)
    assert sorted(acked) == list(range(len(records)))
    got = {e.seq or 0: e for e in aws.drain()}
    assert set(got) == set(range(len(records)))
    return got


def _claimed(aws: Aws, envelope: Envelope) -> bytes:
    """The record an envelope's claim names, read from S3."""
    claim = envelope.claim
    assert claim is not None
    return bytes(aws.s3.get_object(Bucket=claim.bucket, Key=claim.key)["Body"].read())


def _down_clients() -> tuple[Any, Any]:
    """SQS and S3 clients of an endpoint where nothing listens: AWS unreachable."""
    from fmn_bridge.sqs_sink import make_clients

    return make_clients("http://127.0.0.1:9", "us-east-1")


def _left_in(spool: Path) -> list[str]:
    """What a spool directory holds, less the lock file that stays in it."""
    return sorted(p.name for p in spool.iterdir() if p.name != ".lock")


def _whole_envelope(line: bytes) -> bool:
    """Whether a spool line is one whole envelope."""
    try:
        Envelope.decode(json.loads(line))
    except ValueError:
        return False
    return True


def _canon(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True)


# -- (a) fedmsg over ZeroMQ ----------------------------------------------------


def _fedmsg_stream(n: int) -> tuple[list[dict[str, Any]], int]:
    """n fedmsg envelopes from two publishers: alpha skips one ``i`` (a gap), beta restarts."""
    out = []
    counters = {"alpha": 0, "beta": 0}
    for k, env in enumerate(read_jsonl(MESSAGES / "fedmsg.jsonl")[:n]):
        env = {key: v for key, v in env.items()
               if key not in ("certificate", "signature", "crypto")}
        user = "alpha" if k % 2 == 0 else "beta"
        counters[user] += 1
        if user == "alpha" and counters[user] == 5:
            counters[user] += 1  # alpha's i=5 is never sent
        if user == "beta" and counters[user] == 11:
            counters[user] = 1  # beta's process restarted: not a gap
        env["username"] = user
        env["i"] = counters[user]
        out.append(env)
    return out, 5


def test_fedmsg_zmq_all_forwarded_once_and_gap_reported(aws: Aws) -> None:
    import zmq

    from fmn_bridge.fedmsg_source import FedmsgSource, publisher_key

    ctx = zmq.Context.instance()
    pubs, endpoints = [], []
    for _ in range(2):  # alpha publishes on the first endpoint, beta on the second
        pub = ctx.socket(zmq.XPUB)  # XPUB: we see the bridge's subscription arrive
        pub.setsockopt(zmq.LINGER, 0)
        endpoints.append(f"tcp://127.0.0.1:{pub.bind_to_random_port('tcp://127.0.0.1')}")
        pubs.append(pub)
    sink = aws.sink()
    source = FedmsgSource(endpoints, sink)
    sink.start()
    thread = threading.Thread(target=source.run, daemon=True)
    thread.start()
    try:
        for pub in pubs:
            assert pub.poll(10_000), "the bridge never subscribed"
            assert pub.recv() == b"\x01"  # subscribe to everything
        stream, missing_i = _fedmsg_stream(40)
        for env in stream:
            pub = pubs[0] if env["username"] == "alpha" else pubs[1]
            pub.send_multipart([env["topic"].encode(), json.dumps(env).encode()])
        _wait(lambda: sink.stats.forwarded == len(stream), 20, "every message in SQS")
    finally:
        source.request_stop()
        assert source.stopped_receiving.wait(5)
        assert sink.flush_and_stop(10)
        thread.join(5)
        for pub in pubs:
            pub.close()

    got = aws.drain()
    assert len(got) == len(stream)  # exactly once
    assert Counter(_canon(json.loads(e.record or b"")) for e in got) == \
        Counter(_canon(env) for env in stream)
    assert {e.bus for e in got} == {"fedmsg"}
    for e in got:  # each envelope names the endpoint it came from
        record = json.loads(e.record or b"")
        assert e.source == endpoints[0 if record["username"] == "alpha" else 1]
        assert e.seq == record["i"]
    # the gap: reported once, for alpha, exactly where it is; beta's restart is no gap
    gaps = source.tracker.gaps
    assert [(g.publisher, g.expected, g.got) for g in gaps] == [
        (publisher_key(endpoints[0], {"username": "alpha"}), missing_i, missing_i + 1)]
    assert source.tracker.missing == 1 and source.stats()["gaps"] == 1
    assert source.tracker.restarts == 1


class Collected(list[Envelope]):
    """A sink that keeps what it is given."""

    def put(self, envelope: Envelope, ack: Any = None, *, block: Any = True) -> None:
        self.append(envelope)


def test_fedmsg_a_frame_above_the_size_limit_is_never_read_and_the_bridge_goes_on() -> None:
    import zmq

    from fmn_bridge.fedmsg_source import FedmsgSource

    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 0)
    endpoint = f"tcp://127.0.0.1:{pub.bind_to_random_port('tcp://127.0.0.1')}"
    sink = Collected()
    source = FedmsgSource([endpoint], sink, max_frame_bytes=64 * 1024,  # type: ignore[arg-type]
                          reconnect_ivl_ms=50)
    thread = threading.Thread(target=source.run, daemon=True)
    thread.start()
    try:
        assert pub.poll(10_000) and pub.recv() == b"\x01"
        huge = json.dumps({"topic": "t.huge", "msg": {"x": "y" * 1_000_000}, "i": 1}).encode()
        pub.send_multipart([b"t.huge", huge])
        # the bridge drops that connection and comes back: small frames flow again
        deadline = time.monotonic() + 20
        n = 1
        while not sink:
            assert time.monotonic() < deadline, "nothing arrived after the huge frame"
            n += 1
            pub.send_multipart([b"t.small", json.dumps({"topic": "t.small", "msg": {},
                                                        "i": n}).encode()])
            time.sleep(0.05)
    finally:
        source.request_stop()
        thread.join(5)
        pub.close()
    assert all(len(e.record or b"") < 64 * 1024 for e in sink)
    assert {json.loads(e.record or b"")["topic"] for e in sink} == {"t.small"}


def test_fedmsg_a_record_too_complex_to_read_is_forwarded_unread_and_dead_lettered(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # 32 MiB of {},{},... took 1.8 GB to read in the bridge and over 1 GB in the match
    # function; such a record is counted, forwarded as it is, and refused by match
    import zmq

    import fmn.message
    from fmn.errors import InvalidMessage
    from fmn.metadata import parse
    from fmn_bridge.fedmsg_source import FedmsgSource

    monkeypatch.setattr(fmn.message, "MAX_JSON_CONTAINERS", 100)
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 0)
    endpoint = f"tcp://127.0.0.1:{pub.bind_to_random_port('tcp://127.0.0.1')}"
    sink = Collected()
    source = FedmsgSource([endpoint], sink)  # type: ignore[arg-type]
    thread = threading.Thread(target=source.run, daemon=True)
    thread.start()
    first = json.dumps({"topic": "t.first", "msg": {}, "i": 1}).encode()
    complex_ = json.dumps({"topic": "t.complex", "msg": {"a": [{}] * 200}, "i": 2}).encode()
    simple = json.dumps({"topic": "t.simple", "msg": {"a": [{}] * 10}, "i": 3}).encode()
    try:
        assert pub.poll(10_000) and pub.recv() == b"\x01"
        pub.send_multipart([b"t.first", first])
        pub.send_multipart([b"t.complex", complex_])
        pub.send_multipart([b"t.simple", simple])
        deadline = time.monotonic() + 20
        while len(sink) < 3:
            assert time.monotonic() < deadline, f"{len(sink)} of 3 arrived"
            time.sleep(0.02)
    finally:
        source.request_stop()
        thread.join(5)
        pub.close()
    by_topic = {json.loads(e.record or b"")["topic"]: e for e in sink}
    assert by_topic["t.complex"].record == complex_ and by_topic["t.complex"].seq is None
    assert by_topic["t.simple"].seq == 3 and source.malformed == 1
    # its i went unread: the rise from 1 to 3 is a gap (whose the record was cannot be
    # known), and it says that a record went on unread just before
    assert [(g.expected, g.got, g.unread) for g in source.tracker.gaps] == [(2, 3, 1)]
    with pytest.raises(InvalidMessage) as refused:  # what the match function dead-letters
        parse(Envelope.decode(by_topic["t.complex"].encode()).record or b"")
    assert refused.value.reason == "too-complex"
    assert parse(simple).topic == "t.simple"


def _fedmsg_through(frames: list[bytes], source_options: dict[str, Any] | None = None,
                    *, before: Callable[[Any], None] | None = None
                    ) -> tuple[Any, Collected, threading.Thread]:
    """Publish ``frames`` (fedmsg records) on a ZeroMQ hub to a fedmsg source, until
    all arrived in its sink or the source's thread ended; the source, the sink and
    the thread (stopped, or still running if the source died)."""
    import zmq

    from fmn_bridge.fedmsg_source import FedmsgSource

    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 0)
    endpoint = f"tcp://127.0.0.1:{pub.bind_to_random_port('tcp://127.0.0.1')}"
    sink = Collected()
    source = FedmsgSource([endpoint], sink, **(source_options or {}))  # type: ignore[arg-type]
    if before is not None:
        before(source)
    thread = threading.Thread(target=source.run, daemon=True)
    thread.start()
    try:
        assert pub.poll(10_000) and pub.recv() == b"\x01"
        for frame in frames:
            pub.send_multipart([b"t", frame])
            time.sleep(0.05)
        deadline = time.monotonic() + 10
        while len(sink) < len(frames) and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        alive = thread.is_alive()
    finally:
        source.request_stop()
        thread.join(5)
        pub.close()
    assert alive, "the fedmsg source died"
    return source, sink, thread


def test_fedmsg_a_signer_with_a_lone_surrogate_is_forwarded_and_the_source_goes_on() -> None:
    """JSON may escape a lone surrogate, which Python's json reads: keying its signer
    by it (a strict UTF-8 encode) raised, the source's thread died, and what the hub
    published after it was lost until a restart."""
    frames = [b'{"topic": "t", "i": 1, "msg": {}, "certificate": "abc"}',
              b'{"topic": "t", "i": 7, "msg": {}, "certificate": "\\ud800"}',
              b'{"topic": "t", "i": 9, "msg": {}, "signer": "\\udc80"}',
              b'{"topic": "t", "i": 2, "msg": {}, "certificate": "abc"}']
    source, sink, _ = _fedmsg_through(frames)
    assert [e.record for e in sink] == frames  # each as it came
    assert [e.seq for e in sink] == [1, 7, 9, 2]
    # each signer is a publisher of its own: no gap, no restart, nothing malformed
    assert source.tracker.gaps == [] and source.tracker.restarts == 0
    assert source.malformed == 0 and len(source.tracker.last) == 3


def test_fedmsg_a_message_whose_bookkeeping_fails_is_forwarded_as_is(
        caplog: pytest.LogCaptureFixture) -> None:
    """Whatever reading a record for its sequence number raises, the record goes on
    (fedmsg never sends again what arrives while no source runs)."""
    frames = [json.dumps({"topic": "t", "i": i, "msg": {}}).encode() for i in (1, 2, 3)]

    def failing_on_two(source: Any) -> None:
        see = source.tracker.see

        def see_or_fail(publisher: str, i: int, endpoint: str = "") -> Any:
            if i == 2:
                raise RuntimeError("a bug in the bookkeeping")
            return see(publisher, i, endpoint)
        source.tracker.see = see_or_fail

    with caplog.at_level(logging.ERROR, logger="fmn_bridge.fedmsg_source"):
        source, sink, _ = _fedmsg_through(frames, before=failing_on_two)
    assert [e.record for e in sink] == frames
    assert [e.seq for e in sink] == [1, None, 3]  # its i not taken as known
    assert source.malformed == 1
    assert any(r.exc_info and isinstance(r.exc_info[1], RuntimeError)
               for r in caplog.records)  # logged, with the traceback


# -- fedora-messaging over AMQP ------------------------------------------------


class Rabbit:
    """A unique topic exchange and queue on the test RabbitMQ, deleted afterwards."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:10]
        self.exchange = f"fmn-test-{tag}"
        self.queue = f"fmn-test-bridge-{tag}"
        self.conn = rabbitmq_connection()
        self.ch = self.conn.channel()
        self.ch.exchange_declare(self.exchange, exchange_type="topic", auto_delete=False)
        self.ch.queue_declare(self.queue, durable=True)
        self.ch.queue_bind(self.queue, self.exchange, routing_key="#")

    def config(self, path: Path, prefetch: int = 50) -> Path:
        path.write_text(f"""\
amqp_url = "{AMQP_URL}"
passive_declares = false

[client_properties]
app = "fmn bridge test"

[qos]
prefetch_size = 0
prefetch_count = {prefetch}

[queues."{self.queue}"]
durable = true
auto_delete = false
exclusive = false
arguments = {{}}

[[bindings]]
queue = "{self.queue}"
exchange = "{self.exchange}"
routing_keys = ["#"]
""")
        return path

    def publish(self, records: list[dict[str, Any]], ch: Any = None,
                pause: float = 0.0) -> None:
        """As fedora-messaging publishes: JSON body, headers, message_id, topic as routing key."""
        import pika

        ch = ch or self.ch
        for rec in records:
            props = pika.BasicProperties(
                content_type="application/json", content_encoding="utf-8", delivery_mode=2,
                headers=rec["headers"], message_id=rec["id"], priority=rec["priority"])
            ch.basic_publish(self.exchange, rec["topic"], json.dumps(rec["body"]).encode(),
                             props)
            if pause:
                time.sleep(pause)

    def counts(self) -> tuple[int, int]:
        """(messages ready, consumers) on the queue."""
        frame = self.ch.queue_declare(self.queue, passive=True)
        return frame.method.message_count, frame.method.consumer_count

    def close(self) -> None:
        try:
            self.ch.queue_delete(self.queue)
            self.ch.exchange_delete(self.exchange)
        finally:
            self.conn.close()


@pytest.fixture
def rabbit() -> Iterator[Rabbit]:
    r = Rabbit()
    try:
        yield r
    finally:
        r.close()


def _fm_records() -> list[dict[str, Any]]:
    return list(read_jsonl(MESSAGES / "fedora-messaging.jsonl"))


def _expected(records: list[dict[str, Any]], queue: str) -> Counter[str]:
    # the bridge's record is fedora-messaging's, with the queue it was consumed from
    return Counter(_canon({**rec, "queue": queue}) for rec in records)


def test_amqp_all_forwarded_once_and_acked(aws: Aws, rabbit: Rabbit, tmp_path: Path) -> None:
    from fmn_bridge.amqp_source import AmqpSource, load_config

    records = _fm_records()
    rabbit.publish(records)
    sink = aws.sink()
    source = AmqpSource(load_config(str(rabbit.config(tmp_path / "fm.toml"))), sink)
    sink.start()
    thread = threading.Thread(target=source.run, daemon=True)
    thread.start()
    try:
        _wait(lambda: source.acked == len(records), 30, "every delivery acknowledged")
    finally:
        _stop_amqp(source, sink, thread)
    assert not thread.is_alive()
    assert rabbit.counts() == (0, 0)  # nothing left, nothing unacked (it would be requeued)
    got = aws.drain()
    assert len(got) == len(records)
    assert Counter(_canon(json.loads(e.record or b"")) for e in got) == \
        _expected(records, rabbit.queue)
    assert {e.bus for e in got} == {"fedora-messaging"}
    assert source.acks_lost == 0 and sink.stats.forwarded == len(records)


def test_amqp_headers_pika_cannot_read_stop_nothing_behind_them(
        aws: Aws, rabbit: Rabbit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """RabbitMQ passes on header values pika cannot decode: each one was a lost
    connection, the same message redelivered, and nothing behind it ever consumed."""
    import struct

    import pika
    import pika.data

    from fmn_bridge.amqp_source import UNREADABLE_HEADERS, AmqpSource, load_config

    class Raw(bytes):
        """A header value written as its raw AMQP field (type octet, then the value)."""

    encode_value = pika.data.encode_value

    def raw_or_encoded(pieces: list[bytes], value: Any) -> int:
        if isinstance(value, Raw):
            pieces.append(bytes(value))
            return len(value)
        return int(encode_value(pieces, value))

    deep: Any = "leaf"
    for _ in range(700):
        deep = {"a": deep}
    with monkeypatch.context() as patch:  # only the publisher writes what pika cannot read
        patch.setattr(pika.data, "encode_value", raw_or_encoded)
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(20_000)  # pika encodes a table by recursion too
        try:
            for n, headers in enumerate([{"when": Raw(b"T" + struct.pack(">Q", 2**63))},
                                         {"deep": deep}, {"fine": "yes"}]):
                rabbit.ch.basic_publish(
                    rabbit.exchange, f"org.test.m{n}", json.dumps({"n": n}).encode(),
                    pika.BasicProperties(headers=headers, message_id=f"m{n}",
                                         content_type="application/json"))
        finally:
            sys.setrecursionlimit(limit)
    sink = aws.sink()
    source = AmqpSource(load_config(str(rabbit.config(tmp_path / "fm.toml"))), sink)
    sink.start()
    thread = threading.Thread(target=source.run, daemon=True)
    thread.start()
    try:
        _wait(lambda: source.acked == 3, 30, "every delivery acknowledged")
    finally:
        _stop_amqp(source, sink, thread)
    assert rabbit.counts() == (0, 0) and source.connects == 1
    got = {json.loads(e.record or b"")["id"]: json.loads(e.record or b"") for e in aws.drain()}
    assert sorted(got) == ["m0", "m1", "m2"]
    assert "OverflowError" in got["m0"]["headers"][UNREADABLE_HEADERS]
    assert "RecursionError" in got["m1"]["headers"][UNREADABLE_HEADERS]
    assert got["m2"]["headers"] == {"fine": "yes"}
    assert [got[m]["body"] for m in ("m0", "m1", "m2")] == [{"n": 0}, {"n": 1}, {"n": 2}]


def _amqp_consumed(aws: Aws, rabbit: Rabbit, tmp_path: Path, n: int,
                   sqs_away: _GatedSqs | None = None) -> tuple[Any, dict[str, dict[str, Any]]]:
    """An AMQP source consuming ``rabbit``'s queue until ``n`` deliveries are
    acknowledged (it must not die meanwhile), then stopped; the source, and the
    records that reached SQS by message id.  With ``sqs_away``, SQS takes nothing
    until the ``n`` are received, and none is acknowledged before."""
    from fmn_bridge.amqp_source import AmqpSource, load_config

    sink = aws.sink(sqs_away)
    source = AmqpSource(load_config(str(rabbit.config(tmp_path / "fm.toml"))), sink)
    sink.start()
    thread = threading.Thread(target=source.run, daemon=True)
    thread.start()
    try:
        if sqs_away is not None:
            _wait(lambda: source.received == n or not thread.is_alive(), 30, "delivered")
            time.sleep(0.5)
            assert thread.is_alive(), "the AMQP source died"
            assert source.acked == 0 and rabbit.counts() == (0, 1)
            sqs_away.up.set()
        _wait(lambda: source.acked == n or not thread.is_alive(), 30,
              "every delivery acknowledged")
        assert thread.is_alive(), "the AMQP source died"
    finally:
        if sqs_away is not None:
            sqs_away.up.set()
        _stop_amqp(source, sink, thread)
    got = [json.loads(e.record or b"") for e in aws.drain()]
    assert len(got) == n
    return source, {rec.get("id"): rec for rec in got}


def test_amqp_a_routing_key_that_is_not_utf8_is_forwarded_and_nothing_behind_it_stops(
        aws: Aws, rabbit: Rabbit, tmp_path: Path) -> None:
    """pika hands a short string that is not UTF-8 over as bytes: keying a routing key
    as text raised out of pika's callback, the source died, and the broker gave
    the same message first to every restart (a poison message)."""
    import pika

    for n, topic in enumerate([b"org.test.good", b"org.test.\xff\xfe.bad", b"org.test.after"]):
        rabbit.ch.basic_publish(rabbit.exchange, topic, json.dumps({"n": n}).encode(),
                                pika.BasicProperties(message_id=f"m{n}",
                                                     content_type="application/json"))
    source, got = _amqp_consumed(aws, rabbit, tmp_path, 3)
    assert rabbit.counts() == (0, 0) and source.connects == 1
    assert {m: rec["topic"] for m, rec in got.items()} == {
        "m0": "org.test.good", "m1": "org.test.\\xff\\xfe.bad", "m2": "org.test.after"}
    assert [got[m]["body"] for m in ("m0", "m1", "m2")] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert source.not_json == 0


def test_amqp_header_names_that_are_not_utf8_keep_the_record(
        aws: Aws, rabbit: Rabbit, tmp_path: Path) -> None:
    """A header name that is not UTF-8 (pika hands it over as bytes) made the record
    unwritable (JSON names are text): the message went on as its bare body, which
    the match function dead-letters, logged as a body that is not JSON."""
    import pika

    headers = {"fedora_messaging_schema": "base.message", b"x-\xff": "v",
               "table": {b"k\xfe": 1, "list": [{b"\xfd": True}]}}
    rabbit.ch.basic_publish(rabbit.exchange, "org.test.headers", b'{"comment": "hi"}',
                            pika.BasicProperties(message_id=b"m-\xfc", headers=headers,
                                                 content_type="application/json"))
    source, got = _amqp_consumed(aws, rabbit, tmp_path, 1)
    assert rabbit.counts() == (0, 0) and source.not_json == 0
    assert got == {"m-\\xfc": {
        "body": {"comment": "hi"}, "id": "m-\\xfc", "priority": 0, "queue": rabbit.queue,
        "topic": "org.test.headers",
        "headers": {"fedora_messaging_schema": "base.message", "x-\\xff": "v",
                    "table": {"k\\xfe": 1, "list": [{"\\xfd": True}]}}}}


def test_amqp_a_delivery_whose_reading_fails_is_forwarded_raw_once_sqs_has_it(
        aws: Aws, rabbit: Rabbit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Whatever reading a delivery raises, it must not leave pika's callback: that
    stopped the source, and every restart met the same message first.  Its body
    is forwarded raw, and acknowledged only once SQS has it."""
    import pika

    import fmn_bridge.amqp_source

    make_record = fmn_bridge.amqp_source.make_record

    def failing(routing_key: Any, properties: Any, body: bytes, queue: str) -> Any:
        if b"boom" in body:
            raise RuntimeError("a bug in reading deliveries")
        return make_record(routing_key, properties, body, queue)

    monkeypatch.setattr(fmn_bridge.amqp_source, "make_record", failing)
    bodies = [b'{"n": 0}', b'{"n": 1, "boom": true}', b'{"n": 2}']
    for n, body in enumerate(bodies):
        rabbit.ch.basic_publish(rabbit.exchange, f"org.test.m{n}", body,
                                pika.BasicProperties(message_id=f"m{n}"))
    with caplog.at_level(logging.ERROR, logger="fmn_bridge.amqp_source"):
        source, got = _amqp_consumed(aws, rabbit, tmp_path, 3, _GatedSqs(aws.sqs))
    assert rabbit.counts() == (0, 0) and source.connects == 1
    assert got[None] == {"n": 1, "boom": True}  # the body alone: dead-lettered downstream
    assert [got[m]["body"] for m in ("m0", "m2")] == [{"n": 0}, {"n": 2}]
    assert source.stats()["unreadable"] == 1 and source.not_json == 0
    assert any(r.exc_info and isinstance(r.exc_info[1], RuntimeError)
               for r in caplog.records)  # logged, with the traceback


def _bridge(aws: Aws, config: Path, log: Path) -> subprocess.Popen[bytes]:
    """``fmn bridge`` as a process of its own, logging to ``log``."""
    env = {**os.environ, "AWS_ENDPOINT_URL": aws.endpoint, "FMN_QUEUE_PREFIX": aws.prefix,
           "FMN_CLAIM_BUCKET": aws.bucket, "PYTHONPATH": str(REPO / "bridge")}
    with log.open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "fmn_bridge.cli", "--amqp-config", str(config),
             "--linger-ms", "20", "--stats-interval", "0.5", "--backoff-max", "0.5"],
            env=env, stdout=subprocess.DEVNULL, stderr=err)


def _stats(log: Path) -> dict[str, int]:
    """The last periodic stats line of a bridge's log."""
    lines = [ln for ln in log.read_text().splitlines() if " stats: " in ln]
    if not lines:
        return {}
    pairs = (kv.split("=", 1) for kv in lines[-1].split(" stats: ", 1)[1].split())
    return {k: int(v) for k, v in pairs}


def _stopped(proc: subprocess.Popen[bytes], log: Path) -> str:
    """Wait for the process to exit; its log."""
    proc.wait(30)
    return log.read_text()


def test_amqp_kill_mid_stream_and_restart_loses_nothing(
        aws: Aws, rabbit: Rabbit, tmp_path: Path) -> None:
    prefetch = 50
    config = rabbit.config(tmp_path / "fm.toml", prefetch=prefetch)
    records = _fm_records()
    first = _bridge(aws, config, tmp_path / "first.log")
    second: subprocess.Popen[bytes] | None = None
    try:
        _wait(lambda: rabbit.counts()[1] == 1, 30, "the bridge consuming")
        # a publisher on its own connection, streaming while the bridge is killed
        pub_conn = rabbitmq_connection()
        publisher = threading.Thread(
            target=rabbit.publish, args=(records, pub_conn.channel(), 0.004), daemon=True)
        publisher.start()
        _wait(lambda: aws.count() >= 60, 30, "the stream under way")
        first.send_signal(signal.SIGKILL)  # no chance to flush or ack
        first.wait(10)
        in_sqs_at_kill = aws.count()
        assert in_sqs_at_kill < len(records), "the kill came too late to be mid-stream"
        log = tmp_path / "second.log"
        second = _bridge(aws, config, log)
        publisher.join(30)
        pub_conn.close()

        def caught_up() -> bool:
            st = _stats(log)
            return (rabbit.counts()[0] == 0 and st.get("received", 0) > 0
                    and st["received"] == st["forwarded"] == st["acked"]
                    and st["unacked"] == 0 and st["buffered"] == 0)

        _wait(caught_up, 60, "the restarted bridge to catch up")
        second.send_signal(signal.SIGTERM)  # a clean shutdown this time
        err = _stopped(second, log)
        assert second.returncode == 0, err[-2000:]
        assert "SIGTERM received" in err
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert rabbit.counts() == (0, 0)  # every delivery acknowledged by the second bridge
    got = aws.drain()
    seen = Counter(_canon(json.loads(e.record or b"")) for e in got)
    expected = _expected(records, rabbit.queue)
    assert set(seen) == set(expected)  # none missing, nothing foreign
    duplicates = len(got) - len(records)
    print(f"\nkill test: {in_sqs_at_kill} in SQS at the kill, {len(got)} in SQS in all,"
          f" {duplicates} duplicate(s) (unacked window: prefetch {prefetch})")
    assert 0 <= duplicates <= prefetch


def test_amqp_sigterm_mid_stream_flushes_acks_and_duplicates_nothing(
        aws: Aws, rabbit: Rabbit, tmp_path: Path) -> None:
    """A clean shutdown: what reached SQS was acked, the rest is still in RabbitMQ."""
    config = rabbit.config(tmp_path / "fm.toml", prefetch=50)
    records = _fm_records()
    log = tmp_path / "bridge.log"
    proc = _bridge(aws, config, log)
    try:
        _wait(lambda: rabbit.counts()[1] == 1, 30, "the bridge consuming")
        pub_conn = rabbitmq_connection()
        publisher = threading.Thread(
            target=rabbit.publish, args=(records, pub_conn.channel(), 0.004), daemon=True)
        publisher.start()
        _wait(lambda: aws.count() >= 60, 30, "the stream under way")
        proc.send_signal(signal.SIGTERM)
        err = _stopped(proc, log)
        assert proc.returncode == 0, err[-2000:]
        assert "SQS sink flushed" in err
        publisher.join(30)
        pub_conn.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    in_sqs = [json.loads(e.record or b"")["id"] for e in aws.drain()]
    left = []
    while True:
        method, props, _ = rabbit.ch.basic_get(rabbit.queue, auto_ack=True)
        if method is None:
            break
        left.append(props.message_id)
    assert 0 < len(in_sqs) < len(records)
    assert len(in_sqs) == len(set(in_sqs))  # no duplicate on a clean shutdown
    assert set(in_sqs).isdisjoint(left)  # nothing both forwarded and left unacked
    assert sorted(in_sqs + left) == sorted(r["id"] for r in records)


# -- (d) claim check -----------------------------------------------------------


def test_oversized_record_goes_to_s3_with_a_claim(aws: Aws) -> None:
    big = json.dumps({"topic": "org.fedoraproject.prod.big", "msg": {"log": "x" * 300_000}},
                     sort_keys=True).encode()
    small = json.dumps({"topic": "org.fedoraproject.prod.small", "msg": {}}).encode()
    assert len(big) > 256 * 1024 > MAX_INLINE_BYTES
    acked: list[str] = []
    sink = aws.sink()
    sink.start()
    sink.put(Envelope.wrap("fedmsg", "tcp://hub:9940", big, seq=7),
             ack=lambda: acked.append("big"))
    sink.put(Envelope.wrap("fedmsg", "tcp://hub:9940", small, seq=8),
             ack=lambda: acked.append("small"))
    assert sink.flush_and_stop(10)
    assert sorted(acked) == ["big", "small"]
    got = {e.seq: e for e in aws.drain()}
    assert set(got) == {7, 8}
    claim = got[7].claim
    assert claim is not None and got[7].record is None
    assert claim.bucket == aws.bucket and claim.size == len(big)
    assert claim.sha256 == hashlib.sha256(big).hexdigest()
    assert claim.key.startswith("claims/") and claim.sha256 in claim.key
    stored = aws.s3.get_object(Bucket=claim.bucket, Key=claim.key)["Body"].read()
    assert stored == big
    assert got[8].claim is None and json.loads(got[8].record or b"") == json.loads(small)
    assert sink.stats.claimed == 1


def test_a_claim_bucket_that_cannot_be_written_holds_up_the_oversized_record_alone(
        aws: Aws, caplog: pytest.LogCaptureFixture) -> None:
    """A claim bucket that cannot be written (missing, a wrong FMN_CLAIM_BUCKET, no
    s3:PutObject) failed the whole batch holding an oversized record, retried for ever:
    the flusher sent nothing else though SQS worked.  Now the oversized one waits aside,
    tried again, said once, and is sent once the bucket can be written."""
    from fmn_bridge.sqs_sink import SqsSink

    caplog.set_level(logging.INFO, logger="fmn_bridge.sqs_sink")
    bucket = f"{aws.bucket}-later"  # not there yet
    sink = SqsSink(aws.sqs, aws.s3, aws.queue_name, bucket, backoff_initial_s=0.05,
                   backoff_max_s=0.3)
    sink.start()
    big = json.dumps({"topic": "t", "msg": {"log": "x" * 300_000}}).encode()
    acked: list[int] = []
    try:
        sink.put(_fedmsg(big, 0), ack=lambda: acked.append(0))
        for n in range(1, 51):
            sink.put(_fedmsg(json.dumps({"topic": "t", "msg": {"n": n}}).encode(), n),
                     ack=lambda n=n: acked.append(n))
        _wait(lambda: len(acked) == 50, 20, "the 50 small envelopes sent")
        got = aws.drain()
        assert sorted(e.seq or 0 for e in got) == list(range(1, 51))
        # the oversized one waits aside, tried again: not lost, not sent inline
        _wait(lambda: sink.stats.claim_errors >= 3, 10, "the claim tried again")
        assert 0 not in acked and sink.claims_waiting == 1 and sink.buffered == 1
        assert sink.stats.claim_errors_permanent == sink.stats.claim_errors
        _wait(lambda: any("does not exist" in r.getMessage() for r in caplog.records
                          if r.levelno == logging.WARNING), 10, "the start's bucket check")
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "NoSuchBucket" in errors[0]  # once, not per try
        aws.s3.create_bucket(Bucket=bucket)
        _wait(lambda: 0 in acked, 10, "the oversized one sent once its bucket exists")
        assert sink.flush_and_stop(10)
    finally:
        if sink.alive:
            sink.flush_and_stop(1)
    got = aws.drain()
    assert [e.seq for e in got] == [0] and got[0].claim is not None
    assert got[0].claim.bucket == bucket and _claimed(aws, got[0]) == big
    assert sink.claims_waiting == 0 and sink.stats.claimed == 1
    assert any("work again" in r.getMessage() for r in caplog.records)


def test_a_stop_while_a_claim_fails_spools_the_oversized_fedmsg_record_for_the_next_start(
        aws: Aws, tmp_path: Path) -> None:
    """An envelope waiting aside for its claim is buffered like any other: a stop that
    cannot send it writes it to the spool, and the next start sends it."""
    from fmn_bridge.sqs_sink import SqsSink

    bucket = f"{aws.bucket}-later"
    spool = tmp_path / "spool"
    sink = SqsSink(aws.sqs, aws.s3, aws.queue_name, bucket, backoff_initial_s=0.05,
                   backoff_max_s=0.3, spool_dir=spool)
    sink.start()
    big = json.dumps({"topic": "t", "msg": {"log": "y" * 300_000}}).encode()
    sink.put(_fedmsg(big, 0))
    sink.put(_fedmsg(b'{"topic": "t", "msg": {}}', 1))
    _wait(lambda: sink.stats.forwarded == 1 and sink.claims_waiting == 1, 10,
          "the small one sent, the oversized one aside")
    assert not sink.flush_and_stop(1)
    assert sink.stats.spooled == 1
    assert [e.seq for e in aws.drain()] == [1]
    aws.s3.create_bucket(Bucket=bucket)
    again = SqsSink(aws.sqs, aws.s3, aws.queue_name, bucket, spool_dir=spool)
    again.start()
    assert again.flush_and_stop(10)
    got = aws.drain()
    assert [e.seq for e in got] == [0] and _claimed(aws, got[0]) == big
    assert _left_in(spool) == []



def test_records_waiting_for_their_claim_take_the_buffers_room_the_rest_spills(
        aws: Aws, tmp_path: Path) -> None:
    """Records waiting aside for their claim (the bucket missing) took no room in the
    buffer: each freed its place, so ``put`` never spilled, and what had spilled was read
    back into memory only to wait aside too: 40 records of 300 kB all held in memory
    with a buffer of 5 items and 2 MB.  They count now: memory stays within the bounds,
    the rest waits in the journal on disk (small envelopes too, once held records fill
    the buffer), and once the bucket exists each reaches SQS once."""
    from fmn_bridge.sqs_sink import SqsSink

    bucket = f"{aws.bucket}-later"  # not there yet
    spool = tmp_path / "spool"
    max_items, max_bytes = 5, 2_000_000
    sink = SqsSink(aws.sqs, aws.s3, aws.queue_name, bucket, spool_dir=spool,
                   max_items=max_items, max_bytes=max_bytes, backoff_initial_s=0.05,
                   backoff_max_s=0.2)
    sink.start()

    def in_memory() -> tuple[int, int]:
        with sink._cond:
            held = sink._held
            return (len(sink._buf) + len(held),
                    sink._buf_bytes + sum(i.size for i in held))

    try:
        bigs = {n: json.dumps({"topic": "t", "msg": {"n": n, "log": "x" * 300_000}}
                              ).encode() for n in range(40)}
        deadline = time.monotonic() + 20  # a put that blocks gives up (rather than hang)
        for n, big in bigs.items():
            sink.put(_fedmsg(big, n), block=lambda: time.monotonic() < deadline)
        _wait(lambda: sink.stats.claim_errors >= 3 and sink.claims_waiting > 0, 10,
              "claims failing, records aside")
        for n in range(100, 110):  # small ones: behind them, on disk
            sink.put(_fedmsg(json.dumps({"topic": "t", "msg": {"n": n}}).encode(), n),
                     block=lambda: time.monotonic() < deadline)
        for _ in range(20):  # the held ones tried again meanwhile, and again held
            items, nbytes = in_memory()
            assert items <= max_items and nbytes <= max_bytes, (items, nbytes)
            time.sleep(0.05)
        assert sink.claims_waiting <= max_items and sink.buffered == 50
        assert sink.stats.spilled >= 50 - max_items and _journaled(spool) == 50
        assert sink.stats.forwarded == 0

        aws.s3.create_bucket(Bucket=bucket)
        _wait(lambda: sink.stats.forwarded == 50, 60, "everything sent once claims work")
        assert sink.flush_and_stop(10)
    finally:
        if sink.alive:
            sink.flush_and_stop(1)
    got = aws.drain()
    assert sorted(e.seq or 0 for e in got) == [*range(40), *range(100, 110)]  # once each
    assert all(_claimed(aws, e) == bigs[e.seq or 0] for e in got if (e.seq or 0) < 40)
    assert sink.claims_waiting == 0 and sink.stats.claimed == 40
    assert _left_in(spool) == []

# -- (e) SQS outage ------------------------------------------------------------


def test_sqs_outage_buffers_blocks_when_full_then_delivers(aws: Aws) -> None:
    from moto.server import ThreadedMotoServer

    from fmn_bridge.sqs_sink import SqsSink

    port = free_port()  # nothing listens here yet: SQS is "down"
    sqs, s3 = _clients(f"http://127.0.0.1:{port}")
    sink = SqsSink(sqs, s3, aws.queue_name, aws.bucket, max_items=10,
                   backoff_initial_s=0.05, backoff_max_s=0.3)
    sink.start()
    acked: list[int] = []
    put: list[int] = []

    def produce() -> None:
        for n in range(30):
            body = json.dumps({"topic": "t", "msg": {"n": n}}).encode()
            sink.put(Envelope.wrap("fedmsg", "tcp://hub:9940", body, seq=n),
                     ack=lambda n=n: acked.append(n))
            put.append(n)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    server = None
    try:
        # one batch of 10 in flight, 10 in the buffer, the producer blocked
        _wait(lambda: sink.stats.full_episodes == 1, 10, "the buffer-full alarm")
        assert len(put) == 20 and producer.is_alive() and acked == []
        assert sink.stats.full_episodes == 1 and sink.buffered == 20
        # SQS comes back (the same moto state, on the port the sink points at)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        _wait(lambda: len(acked) == 30, 20, "the backlog delivered")
        producer.join(5)
        assert sink.flush_and_stop(10)
    finally:
        if server is not None:
            server.stop()
    got = aws.drain()
    assert sorted(e.seq for e in got if e.seq is not None) == list(range(30))
    assert sorted(acked) == list(range(30))


def test_refused_entries_are_retried_or_claim_checked(aws: Aws) -> None:
    """SQS's per-entry failures: a transient one is retried, a sender fault goes to S3."""
    from fmn_bridge.sqs_sink import SqsSink

    class Refusing:
        def __init__(self, real: Any) -> None:
            self.real = real
            self.throttled = False

        def get_queue_url(self, **kw: Any) -> Any:
            return self.real.get_queue_url(**kw)

        def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, str]]) -> Any:  # noqa: N803
            bad = [e for e in Entries if "refuse me" in e["MessageBody"]]
            good = [e for e in Entries if e not in bad]
            failed = [{"Id": e["Id"], "SenderFault": True, "Code": "InvalidMessageContents",
                       "Message": "Invalid characters"} for e in bad]
            if good and not self.throttled:  # the first time, SQS's own fault for one entry
                self.throttled = True
                failed.append({"Id": good[0]["Id"], "SenderFault": False,
                               "Code": "InternalError", "Message": "try again"})
                good = good[1:]
            resp = (self.real.send_message_batch(QueueUrl=QueueUrl, Entries=good) if good
                    else {"Successful": []})
            resp["Failed"] = failed
            return resp

    odd = json.dumps({"topic": "t", "msg": {"text": "refuse me"}}).encode()
    sink = SqsSink(Refusing(aws.sqs), aws.s3, aws.queue_name, aws.bucket,
                   backoff_initial_s=0.01, backoff_max_s=0.05)
    sink.start()
    got = _sent_through(sink, aws, [odd] + [
        json.dumps({"topic": "t", "msg": {"n": n}}).encode() for n in range(1, 5)])
    assert _claimed(aws, got[0]) == odd
    assert sink.stats.retried_entries == 2 and sink.stats.claimed == 1


@pytest.mark.parametrize("emulator", ["moto", "localstack"])
def test_a_record_with_characters_sqs_does_not_take_goes_to_s3_as_received(
        emulator: str, request: pytest.FixtureRequest, aws_env: str) -> None:
    """U+FFFE and U+FFFF are valid in JSON and refused by SQS (LocalStack: not as a
    sender fault): one such record held its batch, then the whole bridge, for ever."""
    aws = Aws(aws_env if emulator == "moto" else request.getfixturevalue("localstack_endpoint"))
    odd = json.dumps({"topic": "t", "msg": {"text": "a\ufffeb\uffff"}},
                     ensure_ascii=False).encode()
    sink = aws.sink(backoff_initial_s=0.01, backoff_max_s=0.05)
    sink.start()
    got = _sent_through(sink, aws, [odd] + [
        json.dumps({"topic": "t", "msg": {"n": n, "text": "\U0001f600\ue000"}},
                   ensure_ascii=False).encode() for n in range(1, 10)])
    assert _claimed(aws, got[0]) == odd
    assert all(got[n].claim is None for n in range(1, 10))  # allowed characters stay inline
    assert sink.stats.claimed == 1 and sink.stats.retried_entries == 0


@pytest.mark.parametrize("whole_call", [False, True])
def test_a_body_refused_for_its_contents_goes_to_s3_whatever_the_fault_flag(
        aws: Aws, whole_call: bool) -> None:
    from fmn_bridge.sqs_sink import SqsSink

    class Refusing:
        """Refuses bodies holding "refuse me": per entry not as a sender fault
        (LocalStack's answer), or, the first time, the whole call."""

        def __init__(self, real: Any) -> None:
            self.real = real
            self.calls = 0

        def get_queue_url(self, **kw: Any) -> Any:
            return self.real.get_queue_url(**kw)

        def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, str]]) -> Any:  # noqa: N803
            self.calls += 1
            bad = [e for e in Entries if "refuse me" in e["MessageBody"]]
            if bad and whole_call and self.calls == 1:
                raise RuntimeError("An error occurred (InvalidMessageContents) when calling "
                                   "the SendMessageBatch operation: Invalid characters")
            resp = self.real.send_message_batch(
                QueueUrl=QueueUrl, Entries=[e for e in Entries if e not in bad]) \
                if len(bad) < len(Entries) else {"Successful": []}
            resp["Failed"] = [{"Id": e["Id"], "SenderFault": False,
                               "Code": "InvalidMessageContents", "Message": "no"} for e in bad]
            return resp

    sink = SqsSink(Refusing(aws.sqs), aws.s3, aws.queue_name, aws.bucket,
                   backoff_initial_s=0.01, backoff_max_s=0.05)
    sink.start()
    got = _sent_through(sink, aws, [
        json.dumps({"topic": "t", "msg": "refuse me" if n == 0 else f"fine {n}"}).encode()
        for n in range(4)])
    if whole_call:  # which body is not said, so each went as a claim
        assert all(e.claim is not None for e in got.values())
    else:
        assert got[0].claim is not None and all(got[n].claim is None for n in (1, 2, 3))


class Proxy:
    """A TCP relay to RabbitMQ whose connections the test can cut (a network failure)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self.lsock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.lsock.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.accepted += 1
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def cut(self) -> None:
        for s in self.conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        self.conns.clear()

    def close(self) -> None:
        self.lsock.close()
        self.cut()


class _GatedSqs:
    """A real SQS client whose sends fail until :attr:`up` is set (SQS away, then back)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.up = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def send_message_batch(self, **kw: Any) -> Any:
        if not self.up.is_set():
            raise ConnectionError("SQS unreachable")
        return self.client.send_message_batch(**kw)


def _amqp_through_a_proxy(rabbit: Rabbit, tmp_path: Path, sink: Any, *, prefetch: int,
                          **queue: Any) -> tuple[Any, Proxy, threading.Thread]:
    """An AMQP source consuming ``rabbit``'s queue over a :class:`Proxy` the test can cut;
    ``queue`` overrides its declaration (``exclusive``, ``auto_delete``, ``arguments``)."""
    from urllib.parse import urlsplit

    from fmn_bridge.amqp_source import AmqpSource, load_config

    broker = urlsplit(AMQP_URL)
    proxy = Proxy(broker.hostname or "127.0.0.1", broker.port or 5672)
    conf = load_config(str(rabbit.config(tmp_path / "fm.toml", prefetch=prefetch)))
    conf["amqp_url"] = AMQP_URL.replace(f":{broker.port or 5672}/", f":{proxy.port}/")
    conf["queues"][rabbit.queue].update(queue)
    source = AmqpSource(conf, sink, backoff_initial_s=0.1, backoff_max_s=0.2,
                        drain_timeout_s=5)
    thread = threading.Thread(target=source.run, daemon=True)
    thread.start()
    return source, proxy, thread


def _stop_amqp(source: Any, sink: Any, thread: threading.Thread,
               proxy: Proxy | None = None) -> None:
    """Stop the AMQP source as the CLI does: no more deliveries, the sink flushed, the
    last acknowledgements sent."""
    source.request_stop()
    assert source.stopped_receiving.wait(10)
    assert sink.flush_and_stop(10)
    source.sink_drained()
    thread.join(10)
    if proxy is not None:
        proxy.close()


def test_amqp_reconnects_after_a_network_cut(aws: Aws, rabbit: Rabbit, tmp_path: Path) -> None:
    records = _fm_records()[:80]
    sink = aws.sink()
    sink.start()
    source, proxy, thread = _amqp_through_a_proxy(rabbit, tmp_path, sink, prefetch=20)
    try:
        rabbit.publish(records[:40])
        _wait(lambda: source.acked >= 20, 20, "the first deliveries acknowledged")
        proxy.cut()
        rabbit.publish(records[40:])
        _wait(lambda: rabbit.counts()[0] == 0 and source.connects >= 2
              and source.stats()["unacked"] == 0 and sink.buffered == 0, 30, "catching up")
    finally:
        _stop_amqp(source, sink, thread, proxy)
    assert rabbit.counts() == (0, 0)
    got = aws.drain()
    seen = Counter(_canon(json.loads(e.record or b"")) for e in got)
    assert set(seen) == set(_expected(records, rabbit.queue))
    assert len(got) - len(records) <= 20  # duplicates only from the unacked window


@pytest.mark.parametrize("kind", ["classic", "quorum"])
def test_amqp_reconnects_while_sqs_is_away_buffer_each_message_once(
        aws: Aws, rabbit: Rabbit, tmp_path: Path, kind: str) -> None:
    """While SQS is away nothing is acknowledged, so each lost connection's deliveries
    come again on the next: each redelivery takes its buffered copy's place (it was a
    prefetch of copies more per reconnect, each sent twice once SQS was back).  A
    quorum queue adds a header that counts the deliveries: the same message still."""
    arguments = {"x-queue-type": kind}
    if kind == "quorum":
        rabbit.ch.queue_delete(rabbit.queue)
        rabbit.ch.queue_declare(rabbit.queue, durable=True, arguments=arguments)
        rabbit.ch.queue_bind(rabbit.queue, rabbit.exchange, routing_key="#")
    records = _fm_records()[:20]
    rabbit.publish(records)
    gated = _GatedSqs(aws.sqs)
    sink = aws.sink(gated, backoff_max_s=0.1)
    sink.start()
    source, proxy, thread = _amqp_through_a_proxy(rabbit, tmp_path, sink, prefetch=5,
                                                  arguments=arguments)
    try:
        for cut in range(1, 6):
            _wait(lambda cut=cut: source.connects == cut and source.received >= 5 * cut, 20,
                  "a prefetch delivered")
            proxy.cut()
        _wait(lambda: source.connects == 6 and source.received >= 30, 20, "redelivered")
        assert sink.buffered == 5 and source.merged == 25
        gated.up.set()
        _wait(lambda: rabbit.counts()[0] == 0 and source.stats()["unacked"] == 0
              and sink.buffered == 0, 30, "everything sent and acknowledged")
    finally:
        gated.up.set()
        _stop_amqp(source, sink, thread, proxy)
    assert rabbit.counts() == (0, 0)
    got = aws.drain()
    assert Counter(_canon(json.loads(e.record or b"")) for e in got) == \
        _expected(records, rabbit.queue)  # each once: no copy of a lost connection's
    assert source.acks_lost == 0


def test_amqp_an_exclusive_queue_lost_with_its_connection_loses_no_buffered_message(
        aws: Aws, rabbit: Rabbit, tmp_path: Path) -> None:
    """An exclusive queue dies with its connection and nothing is redelivered: what
    the bridge buffered from it is all there is, and SQS gets it once it is back."""
    records = _fm_records()[:12]
    gated = _GatedSqs(aws.sqs)
    sink = aws.sink(gated, backoff_max_s=0.1)
    sink.start()
    rabbit.ch.queue_delete(rabbit.queue)  # the source declares it, as its own
    source, proxy, thread = _amqp_through_a_proxy(rabbit, tmp_path, sink, prefetch=50,
                                                  durable=False, exclusive=True,
                                                  auto_delete=True)
    try:
        _wait(source.ready.is_set, 20, "consuming")
        rabbit.publish(records[:6])
        _wait(lambda: source.received == 6, 20, "delivered")
        proxy.cut()
        _wait(lambda: source.connects == 2 and source.connected, 20, "connected again")
        rabbit.publish(records[6:])
        _wait(lambda: source.received == 12, 20, "delivered on the new connection")
        gated.up.set()
        _wait(lambda: sink.buffered == 0, 30, "sent")
    finally:
        gated.up.set()
        _stop_amqp(source, sink, thread, proxy)
    got = aws.drain()
    assert Counter(_canon(json.loads(e.record or b"")) for e in got) == \
        _expected(records, rabbit.queue)


def test_amqp_a_channel_the_broker_closed_is_consumed_again_each_message_once(
        aws: Aws, rabbit: Rabbit, tmp_path: Path) -> None:
    """The broker closes a channel on a channel error (what RabbitMQ's consumer_timeout
    does to deliveries unacknowledged while SQS is away: 406), the connection staying
    up: the source went on with nothing more delivered, reported connected.  It
    reconnects; the redeliveries take the place of their copies waiting in the sink."""
    from fmn_bridge.amqp_source import AmqpSource, load_config

    records = _fm_records()[:9]
    gated = _GatedSqs(aws.sqs)
    sink = aws.sink(gated, backoff_max_s=0.1)
    sink.start()
    source = AmqpSource(load_config(str(rabbit.config(tmp_path / "fm.toml", prefetch=10))),
                        sink, backoff_initial_s=0.1, backoff_max_s=0.2, drain_timeout_s=5)
    thread = threading.Thread(target=source.run, daemon=True)
    thread.start()
    try:
        rabbit.publish(records[:6])
        _wait(lambda: source.received == 6, 20, "delivered, waiting for SQS")
        # a channel error, as the broker's timeout makes it: an acknowledgement of a
        # delivery tag the channel never gave, sent on the source's own channel
        delivery = next(iter(source._unacked.values()))
        delivery.conn.add_callback_threadsafe(lambda: delivery.ch.basic_ack(999_999))
        _wait(lambda: source.connects == 2 and source.received == 12, 20,
              "consuming again, the channel's deliveries made again")
        assert source.connected and source.merged == 6 and sink.buffered == 6
        rabbit.publish(records[6:])
        gated.up.set()
        _wait(lambda: source.acked == 9 and rabbit.counts() == (0, 1), 30,
              "everything sent and acknowledged")
    finally:
        gated.up.set()
        _stop_amqp(source, sink, thread)
    assert rabbit.counts() == (0, 0)
    got = aws.drain()
    assert Counter(_canon(json.loads(e.record or b"")) for e in got) == \
        _expected(records, rabbit.queue)  # each once
    assert source.acks_lost == 0


def test_amqp_a_consumer_the_broker_cancelled_is_consumed_again(
        aws: Aws, rabbit: Rabbit, tmp_path: Path) -> None:
    """The broker cancels a consumer whose queue is deleted or whose node fails over
    (Basic.Cancel), the channel and connection staying up: the source went on with
    nothing more delivered, reported connected.  It reconnects and declares again."""
    from fmn_bridge.amqp_source import AmqpSource, load_config

    records = _fm_records()[:6]
    sink = aws.sink()
    sink.start()
    source = AmqpSource(load_config(str(rabbit.config(tmp_path / "fm.toml"))), sink,
                        backoff_initial_s=0.1, backoff_max_s=0.2, drain_timeout_s=5)
    thread = threading.Thread(target=source.run, daemon=True)
    thread.start()
    try:
        rabbit.publish(records[:3])
        _wait(lambda: source.acked == 3, 20, "the first deliveries acknowledged")
        rabbit.ch.queue_delete(rabbit.queue)  # the broker cancels its consumers
        rabbit.ch.queue_declare(rabbit.queue, durable=True)
        rabbit.ch.queue_bind(rabbit.queue, rabbit.exchange, routing_key="#")
        rabbit.publish(records[3:])
        _wait(lambda: source.acked == 6, 20, "consuming the queue again")
        assert source.connects == 2 and source.connected and rabbit.counts() == (0, 1)
    finally:
        _stop_amqp(source, sink, thread)
    got = aws.drain()
    assert Counter(_canon(json.loads(e.record or b"")) for e in got) == \
        _expected(records, rabbit.queue)


def test_amqp_a_declare_refused_each_time_backs_off_more_and_more(
        caplog: pytest.LogCaptureFixture) -> None:
    """A connection that never consumed is no reason to start the backoff over (it
    reconnected to the broker twice a second, for ever, on a missing queue)."""
    from fmn_bridge.amqp_source import AmqpSource

    conf = {"amqp_url": AMQP_URL, "passive_declares": True,
            "queues": {f"fmn-test-missing-{uuid.uuid4().hex[:8]}": {"durable": True}},
            "bindings": []}
    source = AmqpSource(conf, sink=None, backoff_initial_s=0.1, backoff_max_s=30)
    thread = threading.Thread(target=source.run, daemon=True)
    with caplog.at_level(logging.WARNING, logger="fmn_bridge.amqp_source"):
        thread.start()
        _wait(lambda: source.connects >= 4, 30, "four attempts")
        source.request_stop()
        thread.join(10)
    waits = [float(m.group(1)) for r in caplog.records
             if (m := re.search(r"reconnecting in ([0-9.]+)s", r.getMessage()))]
    assert len(waits) >= 3
    assert all(later > earlier for earlier, later in zip(waits, waits[1:], strict=False))


def test_fedmsg_envelopes_sqs_has_not_taken_at_a_stop_are_sent_by_the_next_start(
        aws: Aws, tmp_path: Path) -> None:
    """fedmsg has no redelivery: what a stop could not send goes to the spool, and the
    next start sends it ahead of everything (AMQP's are left to the broker)."""
    from fmn_bridge.sqs_sink import SqsSink

    spool = tmp_path / "spool"
    down_sqs, _ = _down_clients()

    def envelopes(first: int, n: int) -> list[Envelope]:
        return [_fedmsg(json.dumps({"topic": "t", "msg": {"n": k}}).encode(), k)
                for k in range(first, first + n)]

    def down() -> Any:
        return SqsSink(down_sqs, aws.s3, aws.queue_name, aws.bucket, spool_dir=spool,
                       backoff_initial_s=0.05, backoff_max_s=0.1)

    first = down()
    first.start()
    for env in envelopes(0, 12):
        first.put(env)
    first.put(envelopes(100, 1)[0], ack=lambda: None)  # AMQP's: the broker redelivers
    assert not first.flush_and_stop(1.0)
    [written] = list(spool.glob("*.jsonl"))
    assert len(written.read_text().splitlines()) == 12 and first.stats.spooled == 12

    # a start that cannot send either: the file stays as it is, nothing is written twice
    second = down()
    second.start()
    assert second.stats.unspooled == 12
    assert not second.flush_and_stop(1.0)
    assert list(spool.glob("*.jsonl")) == [written] and second.stats.spooled == 0

    third = SqsSink(aws.sqs, aws.s3, aws.queue_name, aws.bucket, spool_dir=spool)
    third.start()
    for env in envelopes(12, 3):
        third.put(env)
    assert third.flush_and_stop(10)
    assert sorted(e.seq for e in aws.drain()) == list(range(15))  # once each
    assert _left_in(spool) == []


def test_fedmsg_bridge_stopped_while_sqs_is_down_loses_nothing_across_the_restart(
        aws: Aws, tmp_path: Path) -> None:
    """SIGTERM while SQS is unreachable: what the bridge buffered, and what ZeroMQ had
    already received behind it, goes to the spool; the next start sends it."""
    spool = tmp_path / "spool"
    with _FedmsgHub() as hub:
        down = hub.bridge(aws, "http://127.0.0.1:9", spool, tmp_path / "down.log",
                          "--buffer-items", "50")  # nothing listens at :9
        hub.publish(1, 301)  # 50 fill the buffer; ZeroMQ holds the rest
        time.sleep(1.0)
        down.send_signal(signal.SIGTERM)
        assert down.wait(30) == 1  # not everything reached SQS: said so
        log = (tmp_path / "down.log").read_text()
        assert "written to the spool" in log
        [spooled] = list((spool / aws.queue_name).glob("*.jsonl"))
        assert len(spooled.read_text().splitlines()) == 300

        up = hub.bridge(aws, aws.endpoint, spool, tmp_path / "up.log")
        _wait(lambda: aws.count() >= 300, 30, "the spool sent")
        up.send_signal(signal.SIGTERM)
        assert up.wait(30) == 0
    got = aws.drain()
    assert sorted(e.seq or 0 for e in got) == list(range(1, 301))  # each once
    assert _left_in(spool / aws.queue_name) == []


class _FedmsgHub:
    """A fedmsg hub's PUB socket, and ``fmn bridge`` processes subscribed to it."""

    def __init__(self) -> None:
        import zmq

        self.pub = zmq.Context.instance().socket(zmq.XPUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.endpoint = f"tcp://127.0.0.1:{self.pub.bind_to_random_port('tcp://127.0.0.1')}"
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> _FedmsgHub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pub.close()
        for proc in self.procs:  # a test that failed half-way leaves none running
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)

    def bridge(self, aws: Aws, aws_endpoint: str, spool: Path, log: Path,
               *options: str) -> subprocess.Popen[bytes]:
        """Start a bridge and wait until it has subscribed."""
        env = {**os.environ, "AWS_ENDPOINT_URL": aws_endpoint, "FMN_QUEUE_PREFIX": aws.prefix,
               "FMN_CLAIM_BUCKET": aws.bucket, "PYTHONPATH": str(REPO / "bridge")}
        with log.open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "fmn_bridge.cli", "--fedmsg", self.endpoint,
                 "--spool-dir", str(spool), "--backoff-max", "0.2", "--shutdown-timeout",
                 "3", "--heartbeat-interval", "0", "--linger-ms", "20", *options],
                env=env, stdout=subprocess.DEVNULL, stderr=err)
        self.procs.append(proc)
        while True:  # a bridge gone before unsubscribed: its b"\x00" comes first
            assert self.pub.poll(20_000), "the bridge never subscribed"
            if self.pub.recv().startswith(b"\x01"):
                return proc

    def publish(self, first: int, end: int) -> None:
        """fedmsg envelopes numbered ``first`` to ``end - 1`` (their ``i``)."""
        for i in range(first, end):
            env = {"topic": "org.fedoraproject.prod.test", "i": i, "username": "alpha",
                   "msg": {"n": i}, "msg_id": f"2026-{i}", "timestamp": 0}
            self.pub.send_multipart([env["topic"].encode(), json.dumps(env).encode()])


def _journaled(spool: Path) -> int:
    """Lines written ahead to the journals in ``spool`` (a bridge's, as it runs)."""
    return sum(len(p.read_bytes().splitlines()) for p in spool.glob("*.jsonl"))


def test_fedmsg_bridge_killed_while_sqs_is_down_loses_nothing_it_took_in(
        aws: Aws, tmp_path: Path) -> None:
    """SIGKILL runs no stop: what the bridge had taken in was in memory alone, and fedmsg
    never sends it again.  Written ahead to the journal, the next start sends it."""
    spool = tmp_path / "spool"
    with _FedmsgHub() as hub:
        down = hub.bridge(aws, "http://127.0.0.1:9", spool, tmp_path / "down.log")
        hub.publish(1, 201)
        _wait(lambda: _journaled(spool / aws.queue_name) == 200, 30, "200 written ahead")
        down.send_signal(signal.SIGKILL)
        down.wait(10)

        up = hub.bridge(aws, aws.endpoint, spool, tmp_path / "up.log")
        _wait(lambda: aws.count() >= 200, 30, "the journal sent")
        hub.publish(201, 211)  # and the bus goes on
        _wait(lambda: aws.count() >= 210, 30, "the new messages sent")
        up.send_signal(signal.SIGTERM)
        assert up.wait(30) == 0
    assert "re-sending 200 envelope(s) an earlier run left unsent" in \
        (tmp_path / "up.log").read_text()
    assert sorted(e.seq or 0 for e in aws.drain()) == list(range(1, 211))  # each once
    assert _left_in(spool / aws.queue_name) == []


def test_fedmsg_bridge_killed_after_sqs_took_everything_sends_nothing_twice(
        aws: Aws, tmp_path: Path) -> None:
    """The journal's ``.sent`` lists what SQS accepted: a kill after it took everything
    leaves nothing to send again."""
    spool = tmp_path / "spool"
    with _FedmsgHub() as hub:
        first = hub.bridge(aws, aws.endpoint, spool, tmp_path / "first.log")
        hub.publish(1, 101)
        _wait(lambda: aws.count() >= 100, 30, "100 in SQS")
        [journal] = list((spool / aws.queue_name).glob("*.jsonl"))
        _wait(lambda: len(journal.with_name(journal.name + ".sent").read_bytes().split())
              == 100, 10, "100 recorded as sent")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert journal.exists()  # no stop removed it

        second = hub.bridge(aws, aws.endpoint, spool, tmp_path / "second.log")
        hub.publish(101, 106)
        _wait(lambda: aws.count() >= 105, 30, "the new messages sent")
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
    assert "re-sending" not in (tmp_path / "second.log").read_text()
    assert sorted(e.seq or 0 for e in aws.drain()) == list(range(1, 106))  # each once
    assert _left_in(spool / aws.queue_name) == []


def test_a_start_waits_for_the_bridge_letting_the_spool_go(
        aws: Aws, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A restart overlapping the old bridge's shutdown flush (or an AMQP-only bridge
    still sending what an earlier one left) waited for nothing: exit 2 at once."""
    from fmn_bridge.sqs_sink import SpoolInUse

    spool = tmp_path / "spool"
    old = aws.sink(spool_dir=spool)
    old.start()
    old.put(_fedmsg(b'{"i": 1}', 1))
    new = aws.sink(spool_dir=spool, spool_wait_s=30)
    started = threading.Thread(target=new.start, daemon=True)
    try:
        with caplog.at_level(logging.INFO, logger="fmn_bridge.sqs_sink"):
            started.start()
            time.sleep(0.5)
            assert started.is_alive(), "did not wait for the directory"
            assert old.flush_and_stop(10)
            started.join(10)
            assert not started.is_alive(), "the directory let go, and still waiting"
        assert "waiting up to 30s for it to let go" in caplog.text
        assert "is this bridge's now" in caplog.text
        new.put(_fedmsg(b'{"i": 2}', 2))
    finally:
        assert new.flush_and_stop(10)
    assert sorted(e.seq or 0 for e in aws.drain()) == [1, 2]
    # without a wait, or past it, a held directory is refused
    holder = aws.sink(spool_dir=spool)
    holder.start()
    try:
        t0 = time.monotonic()
        with pytest.raises(SpoolInUse, match=r"\(waited 0.3s\); give each its own"):
            aws.sink(spool_dir=spool, spool_wait_s=0.3).start()
        assert time.monotonic() - t0 >= 0.3
        with pytest.raises(SpoolInUse):
            aws.sink(spool_dir=spool).start()
    finally:
        assert holder.flush_and_stop(10)


def test_two_bridges_never_share_a_spool_directory(aws: Aws, tmp_path: Path) -> None:
    """A second bridge on the same spool would send the first's journal as the first
    writes it, then remove it: it refuses to start, and says why."""
    spool = tmp_path / "spool"
    with _FedmsgHub() as hub:
        first = hub.bridge(aws, aws.endpoint, spool, tmp_path / "first.log")
        try:
            second = subprocess.run(
                [sys.executable, "-m", "fmn_bridge.cli", "--fedmsg", hub.endpoint,
                 "--spool-dir", str(spool), "--heartbeat-interval", "0",
                 "--spool-wait", "1"],
                env={**os.environ, "AWS_ENDPOINT_URL": aws.endpoint,
                     "FMN_QUEUE_PREFIX": aws.prefix, "PYTHONPATH": str(REPO / "bridge")},
                capture_output=True, text=True, timeout=60)
            assert second.returncode == 2
            assert "waiting up to 1s for it to let go" in second.stderr
            assert "is in use by another bridge on the same queue (waited 1s)" \
                in second.stderr
        finally:
            first.send_signal(signal.SIGTERM)
            assert first.wait(30) == 0


def test_amqp_a_buffer_full_of_other_sources_messages_never_holds_pika_up(
        rabbit: Rabbit, tmp_path: Path) -> None:
    """The buffer is shared with fedmsg: a wait for room on pika's thread stopped its
    heartbeats, the broker dropped the connection, and every message came twice."""
    from fmn_bridge.amqp_source import AmqpSource, load_config
    from fmn_bridge.sqs_sink import SqsSink

    records = _fm_records()[:5]
    rabbit.publish(records)
    down_sqs, down_s3 = _down_clients()
    sink = SqsSink(down_sqs, down_s3, "q", "b", max_items=1, backoff_max_s=0.1)
    sink.start()
    sink.put(_fedmsg(b'{"i": 1}'))  # full from now on
    source = AmqpSource(load_config(str(rabbit.config(tmp_path / "fm.toml", prefetch=5))),
                        sink, drain_timeout_s=1)
    thread = threading.Thread(target=source.run, daemon=True)
    thread.start()
    try:
        _wait(lambda: source.received == len(records), 20, "every prefetched delivery taken")
        assert source.connects == 1 and source.acked == 0  # none in SQS: none acknowledged
    finally:
        source.request_stop()
        assert source.stopped_receiving.wait(10)
        sink.flush_and_stop(0.5)
        source.sink_drained()
        thread.join(10)
    # back on the queue for the next consumer
    _wait(lambda: rabbit.counts()[0] == len(records), 10, "the deliveries requeued")


def test_a_spool_whose_bad_line_cannot_be_set_aside_is_sent_all_the_same(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Setting a bad line aside writes two files; on a full disk that fails, and the
    error escaped the start: the bridge did not start, and later files went unread."""
    import errno

    from fmn_bridge import sqs_sink

    def full(path: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sqs_sink, "_append", full)
    spool = tmp_path / "spool"
    spool.mkdir()
    good = json.dumps(_fedmsg(b'{"i": 4}', 4).encode())
    (spool / "0-other.jsonl").write_text(f'"not an envelope"\n{good}\n')
    (spool / "1-later.jsonl").write_text(f"{good}\n")
    down_sqs, down_s3 = _down_clients()
    sink = sqs_sink.SqsSink(down_sqs, down_s3, "q", "b", spool_dir=spool,
                            backoff_initial_s=0.05, backoff_max_s=0.1)
    sink.start()
    try:
        assert sink.stats.unspooled == 2
    finally:
        sink.flush_and_stop(0.2)
    assert (spool / "0-other.jsonl").read_text() == f'"not an envelope"\n{good}\n'


def test_the_spool_keeps_records_with_line_breaks_and_sets_a_bad_line_aside(
        aws: Aws, tmp_path: Path) -> None:
    """A record travels byte for byte: a raw LF between its tokens, or a U+2028 in a
    string, split a spool line, and the whole file was never sent."""
    from fmn_bridge.sqs_sink import SqsSink

    spool = tmp_path / "spool"
    down_sqs, _ = _down_clients()
    records = [b'{"i": 1,\n "msg": {"text": "a\r\nb"}}',
               '{"i": 2, "msg": {"text": "a\u2028b\u0085c"}}'.encode(), b'{"i": 3}']
    first = SqsSink(down_sqs, aws.s3, aws.queue_name, aws.bucket, spool_dir=spool,
                    backoff_initial_s=0.05, backoff_max_s=0.1)
    first.start()
    for n, record in enumerate(records, 1):
        first.put(_fedmsg(record, n))
    assert not first.flush_and_stop(1.0)
    [written] = list(spool.glob("*.jsonl"))
    # another file: one line that is no envelope among good ones; and one not even text
    good = json.dumps(_fedmsg(b'{"i": 4}', 4).encode())
    (spool / "0-other.jsonl").write_text(f'"not an envelope"\n{good}\n')
    (spool / "1-garbage.jsonl").write_bytes(b"\xff\xfe\x00 not utf-8\n")
    (spool / "2-empty.jsonl").write_bytes(b"")  # read at every start, had it stayed
    again = SqsSink(down_sqs, aws.s3, aws.queue_name, aws.bucket, spool_dir=spool,
                    backoff_initial_s=0.05, backoff_max_s=0.1)  # a start with SQS still away
    again.start()
    assert not again.flush_and_stop(0.5)

    up = SqsSink(aws.sqs, aws.s3, aws.queue_name, aws.bucket, spool_dir=spool)
    up.start()
    assert up.flush_and_stop(10)
    got = {e.seq: e.record for e in aws.drain()}
    assert got == {1: records[0], 2: records[1], 3: records[2], 4: b'{"i": 4}'}
    assert not written.exists() and not (spool / "0-other.jsonl").exists()
    assert (spool / "0-other.jsonl.bad").read_text() == '"not an envelope"\n'  # once
    assert (spool / "1-garbage.jsonl.bad").exists()  # set aside, not a crash at start
    assert _left_in(spool) == ["0-other.jsonl.bad",
                                                       "1-garbage.jsonl.bad"]


def test_the_journal_is_replaced_and_removed_as_sqs_takes_it(
        aws: Aws, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While SQS keeps up, the disk holds one journal of at most a segment's lines; what
    a broker sends again (an ``ack``) is not written ahead."""
    from fmn_bridge import sqs_sink

    monkeypatch.setattr(sqs_sink, "JOURNAL_SEGMENT_LINES", 10)
    spool = tmp_path / "spool"
    sink = aws.sink(spool_dir=spool)
    sink.start()
    try:
        for n in range(25):
            sink.put(_fedmsg(b'{"i": %d}' % n, n))
        sink.put(_fedmsg(b'{"i": 99}', 99), ack=lambda: None)
        _wait(lambda: sink.stats.forwarded == 26, 30, "all accepted")
        _wait(lambda: len(list(spool.glob("*.jsonl"))) == 1, 10, "full journals removed")
        [journal] = list(spool.glob("*.jsonl"))
        assert len(journal.read_bytes().splitlines()) == 5  # the 21st to 25th
        assert sink.stats.journaled == 25
    finally:
        assert sink.flush_and_stop(10)
    assert _left_in(spool) == []
    assert sorted(e.seq or 0 for e in aws.drain()) == [*range(25), 99]


def test_a_journal_that_cannot_be_written_is_said_once_and_a_stop_still_spools(
        aws: Aws, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A full disk: the envelopes go on without their journal line (one error, not one
    a message), and a stop with SQS away writes them to the spool all the same."""
    import errno

    from fmn_bridge import sqs_sink

    real_open = os.open

    def full(path: Any, flags: int, *args: Any) -> int:
        if str(path).endswith(".jsonl") and flags & os.O_APPEND:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, flags, *args)

    spool = tmp_path / "spool"
    down_sqs, _ = _down_clients()
    first = sqs_sink.SqsSink(down_sqs, aws.s3, aws.queue_name, aws.bucket, spool_dir=spool,
                             backoff_initial_s=0.05, backoff_max_s=0.1)
    first.start()
    with monkeypatch.context() as patch:
        patch.setattr(sqs_sink.os, "open", full)
        for n in range(3):
            first.put(_fedmsg(b'{"i": %d}' % n, n))
    first.put(_fedmsg(b'{"i": 3}', 3))  # the disk has room again
    assert not first.flush_and_stop(0.5)
    assert (first.stats.journal_errors, first.stats.journaled, first.stats.spooled) == (3, 1, 4)
    failed = [r for r in caplog.records if "writing ahead to the journal" in r.getMessage()]
    assert [r.levelname for r in failed] == ["ERROR", "WARNING"]  # failed; works again

    up = aws.sink(spool_dir=spool)
    up.start()
    assert up.flush_and_stop(10)
    assert sorted(e.seq or 0 for e in aws.drain()) == [0, 1, 2, 3]
    assert _left_in(spool) == []


def test_a_sent_list_cut_short_names_no_line_it_did_not_mean(tmp_path: Path) -> None:
    """A crash of the machine can cut a ``.sent`` write short: "13\\n" as "1" would
    have skipped line 1, never sent."""
    from fmn_bridge.sqs_sink import _append, _read_sent

    sent = tmp_path / "j.jsonl.sent"
    sent.write_bytes(b"0\n2\n1")
    assert _read_sent(sent) == {0, 2}
    _append(sent, b"20\n")  # the next record after it: not line 120
    assert _read_sent(sent) == {0, 2, 20}
    assert _read_sent(tmp_path / "none.sent") == set()


def test_the_spool_lock_is_a_file_so_it_holds_where_directories_cannot_be_locked(
        aws: Aws, tmp_path: Path) -> None:
    """``flock`` on the directory itself fails on NFS (EBADF); a regular lock file is
    what every file system locks.  It stays in the directory, empty."""
    from fmn_bridge.sqs_sink import SpoolInUse

    spool = tmp_path / "spool"
    first = aws.sink(spool_dir=spool)
    first.start()
    try:
        assert (spool / ".lock").is_file()
        with pytest.raises(SpoolInUse):  # another open file description: refused
            aws.sink(spool_dir=spool).start()
    finally:
        assert first.flush_and_stop(10)
    second = aws.sink(spool_dir=spool)
    second.start()  # free again
    assert second.flush_and_stop(10)


def test_a_spool_directory_that_cannot_be_used_is_a_message_and_exit_2(
        aws: Aws, tmp_path: Path) -> None:
    """A bridge that cannot write ahead would lose what a kill interrupts: it does not
    start, and says why in one line (it was a traceback and exit 1)."""
    not_a_dir = tmp_path / "spool"
    not_a_dir.write_text("a file where the directory should be\n")
    run = subprocess.run(
        [sys.executable, "-m", "fmn_bridge.cli", "--fedmsg", "tcp://127.0.0.1:9",
         "--spool-dir", str(not_a_dir), "--heartbeat-interval", "0"],
        env={**os.environ, "AWS_ENDPOINT_URL": aws.endpoint, "FMN_QUEUE_PREFIX": aws.prefix,
             "PYTHONPATH": str(REPO / "bridge")},
        capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run.stderr
    assert f"the spool directory {not_a_dir}/{aws.queue_name} cannot be used" in run.stderr
    assert "Traceback" not in run.stderr


def test_a_spool_that_cannot_be_read_at_start_starts_nothing(
        aws: Aws, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading the spool failing after the lock was taken left the lock held and the
    flusher running behind an exception."""
    from fmn_bridge import sqs_sink

    def unreadable(path: Any) -> Any:  # a directory it may lock but not list (0300)
        raise PermissionError(13, "Permission denied", str(path))

    spool = tmp_path / "spool"
    sink = aws.sink(spool_dir=spool)
    with monkeypatch.context() as patch:  # Path.glob would say nothing: it returns []
        patch.setattr(sqs_sink.os, "listdir", unreadable)
        with pytest.raises(sqs_sink.SpoolUnusable, match="cannot be read"):
            sink.start()
    assert not sink.alive
    again = aws.sink(spool_dir=spool)  # the lock was let go
    again.start()
    assert again.flush_and_stop(10)


def test_a_bridge_with_amqp_alone_sends_what_a_fedmsg_bridge_left_in_its_spool(
        aws: Aws, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Only fedmsg writes ahead, but the spool is the queue's: a bridge moved to AMQP
    alone used to leave an earlier fedmsg bridge's spool unsent, silently.  It sends it
    when no other bridge holds the directory, and writes nothing ahead itself."""
    from fmn_bridge.sqs_sink import SqsSink

    caplog.set_level(logging.INFO, logger="fmn_bridge")
    spool = tmp_path / "spool"
    down_sqs, _ = _down_clients()
    fedmsg = SqsSink(down_sqs, aws.s3, aws.queue_name, aws.bucket, spool_dir=spool,
                     backoff_initial_s=0.05, backoff_max_s=0.1)
    fedmsg.start()
    for n in range(5):
        fedmsg.put(_fedmsg(b'{"i": %d}' % n, n))
    assert not fedmsg.flush_and_stop(0.5)

    holder = aws.sink(spool_dir=spool)  # another bridge holds it: left to that one
    holder._lock(spool)
    try:
        busy = aws.sink(spool_dir=spool, write_ahead=False)
        busy.start()
        assert busy.stats.unspooled == 0
        assert busy.flush_and_stop(10)
    finally:
        holder._unlock()
    assert "another bridge holds the directory and sends them" in caplog.text

    amqp = aws.sink(spool_dir=spool, write_ahead=False)
    amqp.start()
    amqp.put(_fedmsg(b'{"i": 99}', 99), ack=lambda: None)
    assert amqp.stats.unspooled == 5 and amqp.stats.journaled == 0
    # once they are sent it lets go of the directory: a fedmsg bridge may start on it
    _wait(lambda: amqp._lock_fd is None, 30, "the directory let go")
    fedmsg_again = aws.sink(spool_dir=spool)
    fedmsg_again.start()
    assert fedmsg_again.flush_and_stop(10)
    assert amqp.flush_and_stop(10)
    assert sorted(e.seq or 0 for e in aws.drain()) == [0, 1, 2, 3, 4, 99]
    assert _left_in(spool) == []

    empty = tmp_path / "never-made"  # nothing left: the directory is not even made
    nothing = aws.sink(spool_dir=empty, write_ahead=False)
    nothing.start()
    assert nothing.flush_and_stop(10)
    assert not empty.exists()


def test_a_journal_line_cut_short_by_a_full_disk_is_cut_off(
        aws: Aws, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Half a line written, then the disk full: the half stayed, and the next start
    called it "not an envelope" (an ERROR, a .bad file) though nothing was wrong."""
    from fmn_bridge import sqs_sink

    real_write = os.write
    short = {"left": 1}

    def half(fd: int, data: Any) -> int:
        if short["left"] and bytes(data).endswith(b"\n") and len(data) > 20:
            short["left"] = 0
            return real_write(fd, bytes(data)[:len(data) // 2])
        return real_write(fd, data)

    spool = tmp_path / "spool"
    down_sqs, _ = _down_clients()
    first = sqs_sink.SqsSink(down_sqs, aws.s3, aws.queue_name, aws.bucket, spool_dir=spool,
                             backoff_initial_s=0.05, backoff_max_s=0.1)
    first.start()
    first.put(_fedmsg(b'{"i": 0}', 0))
    with monkeypatch.context() as patch:
        patch.setattr(sqs_sink.os, "write", half)
        first.put(_fedmsg(b'{"i": 1}', 1))  # torn, and cut off again
    first.put(_fedmsg(b'{"i": 2}', 2))
    assert first.stats.journal_errors == 1
    for journal in spool.glob("*.jsonl"):  # every line whole: what a kill now leaves
        assert all(_whole_envelope(line) for line in journal.read_bytes().splitlines())
    assert not first.flush_and_stop(0.5)

    caplog.clear()
    up = aws.sink(spool_dir=spool)
    up.start()
    assert up.flush_and_stop(10)
    assert "not an envelope" not in caplog.text
    assert sorted(e.seq or 0 for e in aws.drain()) == [0, 1, 2]
    assert _left_in(spool) == []


def test_a_stop_whose_spool_cannot_be_written_leaves_no_half_file_and_says_what_is_lost(
        aws: Aws, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The stop's spool file, its write failed, stayed as ``.tmp`` forever; and the stop
    said "fedmsg's are lost without a spool directory" with one there.  Now the journal
    keeps what it holds, the half file goes, and the count of what is lost is said."""
    import errno

    from fmn_bridge import sqs_sink

    spool = tmp_path / "spool"
    down_sqs, _ = _down_clients()
    first = sqs_sink.SqsSink(down_sqs, aws.s3, aws.queue_name, aws.bucket, spool_dir=spool,
                             backoff_initial_s=0.05, backoff_max_s=0.1)
    first.start()
    for n in range(3):
        first.put(_fedmsg(b'{"i": %d}' % n, n))

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(sqs_sink.os, "fsync", full)
        assert not first.flush_and_stop(0.5)
    assert list(spool.glob("*.tmp")) == []
    assert "3 in spool files already" in caplog.text and "LOST" not in caplog.text
    (spool / "20260101T000000000000-1-000000.tmp").write_bytes(b'"half a li')  # a crash's

    up = aws.sink(spool_dir=spool)
    up.start()
    assert up.flush_and_stop(10)
    assert sorted(e.seq or 0 for e in aws.drain()) == [0, 1, 2]
    assert _left_in(spool) == []


def test_a_stop_says_how_many_fedmsg_envelopes_are_lost_without_a_spool(
        caplog: pytest.LogCaptureFixture) -> None:
    from fmn_bridge.sqs_sink import SqsSink

    down_sqs, down_s3 = _down_clients()
    sink = SqsSink(down_sqs, down_s3, "q", "b", backoff_initial_s=0.05, backoff_max_s=0.1)
    sink.start()
    sink.put(_fedmsg(b'{"i": 1}', 1))
    sink.put(_fedmsg(b'{"i": 2}', 2), ack=lambda: None)
    assert not sink.flush_and_stop(0.3)
    assert "1 unacknowledged (their AMQP broker sends them again); 1 LOST" in caplog.text


def test_a_stop_with_a_stuck_flusher_keeps_the_spool_locked_until_the_process_ends(
        aws: Aws, tmp_path: Path) -> None:
    """The flusher stuck in a call to SQS may still record lines as sent after the stop
    gave up: another bridge must not take the directory before this process is gone."""
    from fmn_bridge.sqs_sink import SpoolInUse, SqsSink

    release = threading.Event()

    class Hung:
        def get_queue_url(self, **kw: Any) -> Any:
            return aws.sqs.get_queue_url(**kw)

        def send_message_batch(self, **kw: Any) -> Any:
            release.wait(60)
            return aws.sqs.send_message_batch(**kw)

    spool = tmp_path / "spool"
    sink = SqsSink(Hung(), aws.s3, aws.queue_name, aws.bucket, spool_dir=spool)
    sink.start()
    sink.put(_fedmsg(b'{"i": 1}', 1))
    _wait(lambda: sink.buffered == 1 and not sink._buf, 10, "the batch in flight")
    try:
        assert not sink.flush_and_stop(0.1)  # gives up after its 5 s grace
        with pytest.raises(SpoolInUse):
            aws.sink(spool_dir=spool).start()
    finally:
        release.set()
        _wait(lambda: not sink.alive, 10, "the flusher done")
    sink._unlock()  # what the process's end does
    up = aws.sink(spool_dir=spool)
    up.start()  # sends the spooled copy: the batch in flight was the duplicate allowed
    assert up.flush_and_stop(10)
    assert [e.seq for e in aws.drain()] == [1, 1]


class _Switch:
    """An SQS client that fails every send until switched on; ``sent``: the envelopes'
    numbers in the order SQS accepted them."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.on = threading.Event()
        self.sent: list[int | None] = []

    def get_queue_url(self, **kw: Any) -> Any:
        return self.real.get_queue_url(**kw)

    def send_message_batch(self, **kw: Any) -> Any:
        if not self.on.is_set():
            raise ConnectionError("SQS is away")
        resp = self.real.send_message_batch(**kw)
        failed = {f["Id"] for f in resp.get("Failed", ())}
        self.sent += [Envelope.decode(e["MessageBody"]).seq for e in kw["Entries"]
                      if e["Id"] not in failed]
        return resp


def test_a_full_buffer_spills_fedmsg_envelopes_to_the_journal_instead_of_blocking(
        aws: Aws, tmp_path: Path) -> None:
    """SQS away longer than the buffer lasts: fedmsg's source blocked, and what fedmsg kept
    publishing waited in ZeroMQ's memory (lost at a kill; the hub drops it once that is
    full too).  Written ahead anyway, it now waits on disk alone and memory stays bounded;
    an AMQP delivery (its broker holds it) never goes to disk."""
    from fmn_bridge.sqs_sink import SqsSink

    sqs = _Switch(aws.sqs)
    spool = tmp_path / "spool"
    sink = SqsSink(sqs, aws.s3, aws.queue_name, aws.bucket, spool_dir=spool, max_items=5,
                   backoff_initial_s=0.05, backoff_max_s=0.1)
    sink.start()
    try:
        taken = threading.Thread(target=lambda: [sink.put(_fedmsg(b'{"i": %d}' % n, n))
                                                 for n in range(60)], daemon=True)
        taken.start()
        taken.join(20)
        assert not taken.is_alive(), "put blocked on a full buffer"
        assert len(sink._buf) + len(sink._sending) <= 10 and sink.stats.spilled >= 50
        assert sink.buffered == 60 and _journaled(spool) == 60
        spilled = sink.stats.spilled

        acked: list[int] = []
        sink.put(_fedmsg(b'{"i": 99}', 99), ack=lambda: acked.append(99), block=False)
        assert sink.stats.spilled == spilled and _journaled(spool) == 60  # in memory
        sqs.on.set()
        _wait(lambda: sink.stats.forwarded == 61, 30, "everything sent")
        assert acked == [99]
    finally:
        assert sink.flush_and_stop(10)
    assert sorted(e.seq or 0 for e in aws.drain()) == [*range(60), 99]  # once each
    # read back from disk in the order they came (99 took no place in that line)
    assert [n for n in sqs.sent if n != 99] == list(range(60))
    assert _left_in(spool) == []


def test_a_stop_spools_what_waited_on_disk_and_the_next_start_reads_it_back_bounded(
        aws: Aws, tmp_path: Path) -> None:
    """What spilled is copied into the stop's spool file; the next start queues it on
    disk alone too, and reads it back as the buffer empties (it was all read into memory,
    past the buffer's bounds)."""
    from fmn_bridge.sqs_sink import SqsSink

    spool = tmp_path / "spool"
    down = SqsSink(_Switch(aws.sqs), aws.s3, aws.queue_name, aws.bucket, spool_dir=spool,
                   max_items=5, backoff_initial_s=0.05, backoff_max_s=0.1)
    down.start()
    deadline = time.monotonic() + 10  # a put that blocks gives up (rather than hang)
    for n in range(40):
        down.put(_fedmsg(b'{"i": %d}' % n, n), block=lambda: time.monotonic() < deadline)
    assert not down.flush_and_stop(0.5)
    assert down.stats.spooled == 40
    [spooled] = list(spool.glob("*.jsonl"))
    assert len(spooled.read_bytes().splitlines()) == 40

    sqs = _Switch(aws.sqs)
    up = SqsSink(sqs, aws.s3, aws.queue_name, aws.bucket, spool_dir=spool, max_items=5,
                 backoff_initial_s=0.05, backoff_max_s=0.1)
    up.start()
    try:
        assert up.stats.unspooled == 40
        time.sleep(0.3)
        assert len(up._buf) + len(up._sending) <= 10 and up.buffered == 40
        up.put(_fedmsg(b'{"i": 40}', 40))  # new ones wait behind them, on disk too
        sqs.on.set()
        _wait(lambda: up.stats.forwarded == 41, 30, "all sent")
    finally:
        assert up.flush_and_stop(10)
    assert sorted(e.seq or 0 for e in aws.drain()) == list(range(41))
    assert sqs.sent == list(range(41))  # the earlier run's in order, then the new one
    assert _left_in(spool) == []


def test_fedmsg_bridge_killed_after_a_long_outage_loses_nothing_beyond_its_buffer(
        aws: Aws, tmp_path: Path) -> None:
    """A buffer of 20 and 300 messages while SQS is away: the bridge takes them all in
    (on disk), so a SIGKILL finds none in ZeroMQ's memory."""
    spool = tmp_path / "spool"
    with _FedmsgHub() as hub:
        down = hub.bridge(aws, "http://127.0.0.1:9", spool, tmp_path / "down.log",
                          "--buffer-items", "20")
        hub.publish(1, 301)
        _wait(lambda: _journaled(spool / aws.queue_name) == 300, 30, "300 written ahead")
        down.send_signal(signal.SIGKILL)
        down.wait(10)

        up = hub.bridge(aws, aws.endpoint, spool, tmp_path / "up.log", "--buffer-items", "20")
        _wait(lambda: aws.count() >= 300, 60, "the journal sent")
        up.send_signal(signal.SIGTERM)
        assert up.wait(30) == 0
    assert sorted(e.seq or 0 for e in aws.drain()) == list(range(1, 301))  # each once
    assert _left_in(spool / aws.queue_name) == []


def test_a_sent_file_that_cannot_be_removed_stops_nothing(
        aws: Aws, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A directory turned read-only: removing a spool file SQS holds all of raised in the
    flusher, which died (the bridge stopped, and every restart sent the file again)."""
    from fmn_bridge.sqs_sink import SqsSink

    spool = tmp_path / "spool"
    down = SqsSink(_Switch(aws.sqs), aws.s3, aws.queue_name, aws.bucket, spool_dir=spool,
                   backoff_initial_s=0.05, backoff_max_s=0.1)
    down.start()
    down.put(_fedmsg(b'{"i": 1}', 1))
    assert not down.flush_and_stop(0.3)
    [left] = list(spool.glob("*.jsonl"))
    real_unlink = Path.unlink

    def read_only(self: Path, missing_ok: bool = False) -> None:
        if self == left:
            raise PermissionError(13, "Permission denied", str(self))
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", read_only)
    up = aws.sink(spool_dir=spool)
    up.start()
    _wait(lambda: up.stats.forwarded == 1, 30, "the spool sent")
    up.put(_fedmsg(b'{"i": 2}', 2))
    _wait(lambda: up.stats.forwarded == 2, 30, "the next one sent")
    assert up.alive and "cannot be removed" in caplog.text
    assert up.flush_and_stop(10)
    assert sorted(e.seq or 0 for e in aws.drain()) == [1, 2]


def test_a_stop_that_cannot_open_the_next_journal_closes_nothing_twice(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Opening the next journal failing (EMFILE) left the previous one's descriptor to be
    closed again: the error said EBADF, and a number another thread had reused meanwhile
    (the stuck flusher's socket) was closed under it."""
    from fmn_bridge import sqs_sink

    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_bytes(b'"x"\n')
    b.write_bytes(b'"y"\n')
    real_open = os.open
    reused: list[int] = []

    def emfile(path: Any, flags: int, *args: Any) -> int:
        if Path(path) == b:
            reused.append(real_open(os.devnull, os.O_RDONLY))  # the number just freed
            raise OSError(errno.EMFILE, "Too many open files")
        return real_open(path, flags, *args)

    monkeypatch.setattr(sqs_sink.os, "open", emfile)
    with pytest.raises(OSError) as raised:
        sqs_sink._write_spool(tmp_path / "out.jsonl", [],
                              [(a, 0, 0, 4, 0.0), (b, 0, 0, 4, 0.0)])
    monkeypatch.undo()
    assert raised.value.errno == errno.EMFILE
    os.fstat(reused[0])  # still open: not closed by the spool write
    os.close(reused[0])
    assert not (tmp_path / "out.jsonl").exists() and not (tmp_path / "out.tmp").exists()
