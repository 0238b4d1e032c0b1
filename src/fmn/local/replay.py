"""``fmn replay``: publish recorded bus messages onto a local bus, for the bridge.

Two targets, as the real buses carry them:

* ``fedmsg``: binds a ZeroMQ PUB socket (default ``tcp://127.0.0.1:9940``) and
  sends each record as fedmsg's hub does, a two-frame message ``[topic,
  JSON envelope]``.  Any record is sent verbatim, so a fedora-messaging record
  replayed this way reaches the bridge unchanged too.
* ``amqp``: publishes fedora-messaging records to RabbitMQ the way
  ``fedora_messaging.api.publish`` does (exchange ``amq.topic``, routing key =
  topic, the record's headers and id as AMQP properties, the body as JSON).
  A fedmsg envelope has no AMQP form of its own; it is refused with a clear
  message rather than being turned into something it was not.

``--rate`` paces the messages (per second; default: as fast as possible).
A line that is not a JSON object with a topic is reported with its line
number and skipped; the others are still published.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DEFAULT_FEDMSG_ENDPOINT = "tcp://127.0.0.1:9940"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def read_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open("rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                _say(f"{path}:{lineno}: skipped: not JSON ({exc})")
                continue
            if not isinstance(record, dict) or not isinstance(record.get("topic"), str):
                _say(f"{path}:{lineno}: skipped: not a bus record with a topic")
                continue
            yield lineno, record


class _Pacer:
    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self.next = time.monotonic()

    def wait(self) -> None:
        if self.interval:
            now = time.monotonic()
            if now < self.next:
                time.sleep(self.next - now)
            self.next = max(now, self.next) + self.interval


def bind_publisher(endpoint: str, wait_s: float = 60.0) -> Any:
    """An XPUB socket bound to ``endpoint``, once a subscriber has subscribed.

    A PUB socket drops what it sends while nobody is subscribed, and a
    subscriber (the bridge) that tried to connect before we bound may be
    waiting out a reconnect back-off of many seconds.  XPUB sees the
    subscription arrive: publish only then (or warn after ``wait_s``).
    """
    import zmq

    ctx: Any = zmq.Context.instance()
    sock = ctx.socket(zmq.XPUB)
    sock.setsockopt(zmq.LINGER, 5000)
    sock.setsockopt(zmq.SNDHWM, 0)  # never drop for a slow subscriber
    sock.bind(endpoint)
    if sock.poll(int(wait_s * 1000), zmq.POLLIN):
        sock.recv()  # the subscription message
        time.sleep(0.2)  # let other subscribers that connect together join too
    else:
        _say(f"no subscriber on {endpoint} after {wait_s:.0f}s: publishing anyway "
             "(is the bridge running?)")
    return sock


def message_id(record: dict[str, Any]) -> str:
    """The bus message id the pipeline will know ``record`` by (the ledger's key)."""
    from fmn.errors import InvalidMessage
    from fmn.metadata import parse

    try:
        return parse(record).id
    except InvalidMessage:  # the pipeline refuses it too; it is known by its own id field
        return str(record.get("msg_id") or record.get("id") or "?")


def replay_fedmsg(path: Path, endpoint: str, rate: float | None,
                  settle_s: float = 60.0, journal: Any = None) -> int:
    """Publish every record of ``path``; with a ledger ``journal``, journal their ids."""
    sock = bind_publisher(endpoint, settle_s)
    pacer, sent = _Pacer(rate), 0
    try:
        for _, record in read_records(path):
            pacer.wait()
            sock.send_multipart([record["topic"].encode(), json.dumps(record).encode()])
            sent += 1
            if journal is not None:
                journal.published([message_id(record)], "fedmsg")
    finally:
        sock.close()
    _say(f"replayed {sent} messages from {path} on {endpoint}")
    return sent


def replay_amqp(path: Path, url: str, rate: float | None, exchange: str = "amq.topic",
                journal: Any = None) -> int:
    """Publish every record of ``path``; with a ledger ``journal``, journal their ids."""
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(url))
    channel = conn.channel()
    channel.confirm_delivery()  # publish returns once the broker has the message
    pacer, sent = _Pacer(rate), 0
    try:
        for lineno, record in read_records(path):
            if "msg" in record and "body" not in record:
                _say(f"{path}:{lineno}: skipped: a fedmsg envelope has no AMQP form "
                     "(replay it with --to fedmsg)")
                continue
            pacer.wait()
            headers = dict(record.get("headers") or {})
            properties = pika.BasicProperties(
                content_type="application/json", content_encoding="utf-8",
                delivery_mode=2, headers=headers, message_id=record.get("id"),
                priority=record.get("priority") or 0)
            channel.basic_publish(exchange=exchange, routing_key=record["topic"],
                                  body=json.dumps(record.get("body")).encode(),
                                  properties=properties, mandatory=False)
            sent += 1
            if journal is not None:
                journal.published([message_id(record)], "amqp")
    finally:
        conn.close()
    _say(f"replayed {sent} messages from {path} to {exchange} at {url.split('@')[-1]}")
    return sent
