"""The fedora-messaging source: a pika consumer that acknowledges only what SQS accepted.

Configured by a fedora-messaging TOML file, read with fedora-messaging's own
parser (``amqp_url``, ``[tls]`` ca_cert/certfile/keyfile, ``[client_properties]``,
``[queues.NAME]``, ``[[bindings]]``, ``[qos]``, ``passive_declares``), as
Fedora's public broker needs.  It declares the configured queues and
bindings, consumes the chosen queue (``--amqp-queue``, else
``consumer_config.fmn_bridge_queue``, else every configured queue) with a
bounded prefetch, and turns each delivery into the record that
``fedora_messaging.message.dumps`` writes (``body``, ``headers``, ``id``,
``priority``, ``queue``, ``topic``; sorted keys).  Each delivery is
acknowledged, through ``add_callback_threadsafe`` on the connection's own
thread, only after the sink reports SQS accepted it; so a crash at any point
loses nothing (RabbitMQ redelivers what was unacknowledged; the one price is
a possible duplicate, which the pipeline tolerates).  Connection failures are
retried with exponential backoff, and so are a channel the broker closed and a
consumer it cancelled (the connection up, nothing delivered any more).  A
delivery the broker makes again after a lost connection, while its first copy
still waits in the sink (SQS away), is not buffered twice: the copy
acknowledges the new delivery once SQS takes it.
On stop it cancels the consumer (pika returns undelivered prefetched messages
to the queue), waits for the sink to flush and the acks to go out, and closes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import ssl
import threading
import time
from base64 import b64encode
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from fmn.message import too_many_containers
from fmn.pipeline.envelope import Envelope

from .sqs_sink import SinkClosed, SqsSink

log = logging.getLogger(__name__)


def load_config(path: str) -> dict[str, Any]:
    """A fedora-messaging configuration file, merged with its defaults and validated."""
    from fedora_messaging.config import LazyConfig

    if not os.path.isfile(path):  # fedora-messaging would silently use its defaults
        raise FileNotFoundError(f"no fedora-messaging configuration at {path}")
    # a private LazyConfig: the global ``fedora_messaging.config.conf`` stays untouched
    return dict(LazyConfig().load_config(config_path=path))


def _jsonable(value: Any) -> Any:
    """AMQP header values JSON cannot carry as they are (pika decodes these types)."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return b64encode(value).decode()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _text(value: Any) -> Any:
    """An AMQP short string as text.  pika hands one that is not UTF-8 (a routing
    key, a header name, a message id) over as ``bytes``: its bytes that are not
    UTF-8 are escaped (``\\xff``), the rest kept.  Anything else as it is."""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "backslashreplace")
    return value


def _table(value: Any) -> Any:
    """A header table (and the tables and arrays within) whose names are all text:
    JSON has no other names."""
    if isinstance(value, Mapping):
        return {_text(k): _table(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_table(v) for v in value]
    return value


def make_record(routing_key: str | bytes, properties: Any, body: bytes,
                queue: str) -> bytes | None:
    """The ``fedora_messaging.message.dumps`` line for one delivery; None if the body is not JSON.

    Built from the AMQP message the way ``fedora_messaging.message.get_message``
    reads it: topic = routing key, id = message_id, headers and priority from
    the properties, body = the payload.  The body is carried **unchanged**:
    its JSON text goes into the record as it came (only transcoded to UTF-8
    from another content encoding), never parsed and re-encoded, so what
    Python's ``json`` accepts and strict encoders refuse or round (``NaN``,
    ``Infinity``, integers beyond 64 bits) arrives as it was sent.
    """
    encoding = _text(getattr(properties, "content_encoding", None)) or "utf-8"
    # Message content is untrusted: whatever it holds (an unknown encoding,
    # nesting deep enough to exhaust the stack), this must not raise out of
    # the consumer callback and stop the bridge.  A body we cannot carry as
    # a record is forwarded raw instead (None), and the match function
    # dead-letters it: nothing is lost.
    if too_many_containers(body) is not None:  # reading it would take gigabytes
        return None
    try:
        text = body.decode(encoding)
        json.loads(text)  # JSON as fedora-messaging reads it (the standard library)
        members = {
            "headers": _table(dict(getattr(properties, "headers", None) or {})),
            "id": _text(getattr(properties, "message_id", None)),
            "priority": getattr(properties, "priority", None) or 0,
            "queue": queue,
            "topic": _text(routing_key),
        }
        # sorted keys, as fedora-messaging writes them: "body" comes first
        rest = json.dumps(members, ensure_ascii=False, sort_keys=True, default=_jsonable)
        return ('{"body": ' + text.strip() + ", " + rest[1:]).encode()
    except (UnicodeError, LookupError, ValueError, RecursionError, TypeError):
        return None


#: Headers a broker adds to a delivery each time it makes it again (a quorum queue
#: counts them): two deliveries of one message differ in nothing else
REDELIVERY_HEADERS = frozenset({"x-delivery-count"})


def delivery_key(queue: str, routing_key: str | bytes, properties: Any, body: bytes,
                 record: bytes) -> bytes:
    """What every delivery of one message has in common: its queue, routing key and
    record (``record``, less the headers the broker adds at each redelivery)."""
    headers = getattr(properties, "headers", None) or {}
    if isinstance(routing_key, bytes):  # not UTF-8: its bytes as they came
        raw_key = routing_key
    else:
        raw_key = routing_key.encode("utf-8", "surrogatepass")
    if not REDELIVERY_HEADERS.isdisjoint(headers):
        same = SimpleNamespace(
            content_encoding=getattr(properties, "content_encoding", None),
            message_id=getattr(properties, "message_id", None),
            priority=getattr(properties, "priority", None),
            headers={k: v for k, v in headers.items() if k not in REDELIVERY_HEADERS})
        record = make_record(routing_key, same, body, queue) or body
    digest = hashlib.sha256()
    for part in (queue.encode("utf-8", "surrogatepass"), raw_key, record):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()


#: Seconds a connection must have consumed for its loss to start the backoff over
STABLE_S = 10.0
#: The header a delivery gets when the broker sent headers pika cannot decode
UNREADABLE_HEADERS = "x-fmn-unreadable-headers"


def tolerate_unreadable_headers() -> None:
    """Make pika decode a delivery whose header table it cannot read, without it.

    RabbitMQ passes on header values pika's decoder raises on (a timestamp past
    2038 x 2**32, tables nested hundreds deep).  The error surfaces as a lost
    connection, the broker redelivers the same message, and nothing behind it
    in the queue is ever consumed.  So when the properties fail to decode, they
    are decoded again with the header table skipped (it is length-prefixed),
    and the headers say only why: the message itself is forwarded and the
    match function decides what it is.  Idempotent; the bridge calls it once.
    """
    import struct

    from pika import data
    from pika.spec import BasicProperties

    decode = BasicProperties.decode
    if getattr(decode, "fmn_tolerant", False):
        return

    def tolerant(self: Any, encoded: bytes, offset: int = 0) -> Any:
        try:
            return decode(self, encoded, offset)
        except Exception as exc:  # noqa: BLE001 - whatever the table decoder raised
            reason = f"{type(exc).__name__}: {str(exc)[:200]}"
        flags, = struct.unpack_from(">H", encoded, offset)
        if flags & 1 or not flags & BasicProperties.FLAG_HEADERS:
            raise ValueError(f"unreadable message properties ({reason})")
        end = offset + 2
        for flag in (BasicProperties.FLAG_CONTENT_TYPE, BasicProperties.FLAG_CONTENT_ENCODING):
            if flags & flag:
                _, end = data.decode_short_string(encoded, end)
        table_size, = struct.unpack_from(">I", encoded, end)
        if end + 4 + table_size > len(encoded):  # the length itself is wrong: give up
            raise ValueError(f"unreadable message properties ({reason})")
        rest = encoded[end + 4 + table_size:]
        without = struct.pack(">H", flags & ~BasicProperties.FLAG_HEADERS) \
            + encoded[offset + 2:end] + rest
        result = decode(self, without, 0)
        self.headers = {UNREADABLE_HEADERS: reason}
        log.warning("AMQP: a delivery's headers could not be read (%s); forwarded "
                    "without them", reason)
        return result

    tolerant.fmn_tolerant = True  # type: ignore[attr-defined]
    BasicProperties.decode = tolerant


def redact(url: str) -> str:
    """The broker URL without credentials or query (it names the envelope's source)."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path or "/", "", ""))


def connection_parameters(conf: Mapping[str, Any]) -> Any:
    """pika parameters from a fedora-messaging configuration (TLS as fedora-messaging does)."""
    import pika

    params = pika.URLParameters(conf["amqp_url"])
    params.client_properties = dict(conf.get("client_properties") or {})
    params.connection_attempts = 1  # the source does its own backoff
    tls = conf.get("tls") or {}
    if params.ssl_options is not None or tls.get("certfile") or tls.get("keyfile") \
            or conf["amqp_url"].startswith("amqps"):
        ctx = ssl.create_default_context(purpose=ssl.Purpose.SERVER_AUTH)
        if tls.get("ca_cert"):
            ctx.load_verify_locations(cafile=tls["ca_cert"])
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if tls.get("certfile") and tls.get("keyfile"):
            ctx.load_cert_chain(tls["certfile"], tls["keyfile"])
            # Fedora's broker authenticates by client certificate
            params.credentials = pika.credentials.ExternalCredentials()
        params.ssl_options = pika.SSLOptions(ctx, server_hostname=params.host)
    return params


@dataclass
class _Delivery:
    """Which delivery a buffered envelope's acknowledgement goes to.

    The envelope is in the sink, not yet accepted by SQS (``key``: its
    :func:`delivery_key`).  If its connection is lost
    meanwhile, the broker delivers the same message again on the next one; that
    delivery takes this place (:meth:`AmqpSource._on_message`) instead of adding a
    second copy to the buffer, and the envelope's acknowledgement, when SQS takes
    it, goes to the new delivery.
    """

    key: bytes
    conn: Any
    ch: Any
    gen: int
    tag: int


class AmqpSource:
    """Consume fedora-messaging queues into the sink (see the module docstring)."""

    bus = "fedora-messaging"

    def __init__(self, conf: Mapping[str, Any], sink: SqsSink, *, queue: str | None = None,
                 prefetch: int | None = None, backoff_initial_s: float = 0.5,
                 backoff_max_s: float = 60.0, drain_timeout_s: float = 30.0) -> None:
        self.conf = conf
        self.sink = sink
        configured = list((conf.get("queues") or {}).keys())
        chosen = queue or (conf.get("consumer_config") or {}).get("fmn_bridge_queue")
        if chosen is not None and chosen not in configured:
            raise ValueError(f"queue {chosen!r} is not configured; configured: {configured}")
        self.queues = [chosen] if chosen is not None else configured
        if not self.queues:
            raise ValueError("the configuration names no queue to consume")
        self.prefetch = prefetch or int((conf.get("qos") or {}).get("prefetch_count") or 10)
        self.source_name = redact(str(conf["amqp_url"]))
        self._backoff_initial = backoff_initial_s
        self._backoff_max = backoff_max_s
        self._drain_timeout = drain_timeout_s
        self._stop = threading.Event()
        self._drained = threading.Event()
        self.stopped_receiving = threading.Event()
        self.ready = threading.Event()
        self._generation = 0
        self._outstanding = 0  # delivered on the current connection, not yet acked
        self.received = 0
        self.acked = 0
        self.acks_lost = 0
        self.not_json = 0
        #: deliveries whose reading failed unexpectedly (forwarded raw)
        self.unreadable = 0
        self.connects = 0
        #: redeliveries that took the place of their lost connection's copy in the buffer
        self.merged = 0
        #: record digest -> the delivery its buffered envelope acknowledges
        self._unacked: dict[bytes, _Delivery] = {}
        self._unacked_lock = threading.Lock()
        #: when the current connection began consuming (None: not yet)
        self._consuming_since: float | None = None
        #: consuming on an open connection (the heartbeat reports it)
        self.connected = False

    def request_stop(self) -> None:
        self._stop.set()

    def sink_drained(self) -> None:
        self._drained.set()

    def stats(self) -> dict[str, int]:
        return {"acked": self.acked, "unacked": self._outstanding, "acks_lost": self.acks_lost,
                "not_json": self.not_json, "unreadable": self.unreadable,
                "connects": self.connects, "merged": self.merged}

    # -- the connection thread --------------------------------------------------

    def run(self) -> None:
        import pika.exceptions

        delay = self._backoff_initial
        try:
            while not self._stop.is_set():
                self._consuming_since = None
                try:
                    self._consume()
                    return
                except (pika.exceptions.AMQPError, OSError) as exc:
                    self._generation += 1  # acks for the lost connection are void
                    self._outstanding = 0
                    since = self._consuming_since
                    if since is not None and time.monotonic() - since >= STABLE_S:
                        # it had worked a while: start the backoff over.  Not on a mere
                        # connect: a declare refused, or a connection lost at once each
                        # time, would reconnect to the broker twice a second for ever.
                        delay = self._backoff_initial
                    if self._stop.is_set():
                        log.warning("AMQP connection lost during shutdown (%s: %s); the"
                                    " broker redelivers what was not acknowledged",
                                    type(exc).__name__, exc)
                        return
                    wait = delay * random.uniform(0.8, 1.2)  # jitter: no thundering herd
                    log.warning("AMQP connection to %s failed (%s: %s); reconnecting in %.1fs",
                                self.source_name, type(exc).__name__, exc, wait)
                    self._stop.wait(wait)
                    delay = min(delay * 2, self._backoff_max)
        finally:
            self.stopped_receiving.set()
            log.info("AMQP source stopped (%d received, %d acknowledged)",
                     self.received, self.acked)

    def _consume(self) -> None:
        import pika

        tolerate_unreadable_headers()
        conn = pika.BlockingConnection(connection_parameters(self.conf))
        try:
            self._generation += 1
            gen = self._generation
            self._outstanding = 0
            self.connects += 1
            ch = conn.channel()
            ch.basic_qos(prefetch_count=self.prefetch)
            names = self._declare(ch)
            tags: dict[str, str] = {}  # consumer tag -> queue
            for configured, actual in names.items():
                def on_message(ch_: Any, method: Any, props: Any, body: bytes,
                               _q: str = actual) -> None:
                    self._on_message(conn, ch_, gen, _q, method, props, body)
                tags[ch.basic_consume(actual, on_message, auto_ack=False)] = actual
                log.info("AMQP: consuming %s (configured as %r) on %s, prefetch %d",
                         actual, configured, self.source_name, self.prefetch)
            self.ready.set()
            self.connected = True
            self._consuming_since = time.monotonic()
            while not self._stop.is_set():
                conn.process_data_events(time_limit=0.2)
                self._check_channel(ch, tags)
            # Shutdown: no new deliveries (pika requeues prefetched, undispatched
            # ones), then keep the connection serving acks while the sink flushes.
            for tag in tags:
                if tag in ch.consumer_tags:
                    ch.basic_cancel(tag)
            self.stopped_receiving.set()
            deadline = time.monotonic() + self._drain_timeout
            while time.monotonic() < deadline and not (
                    self._drained.is_set() and self._outstanding == 0):
                conn.process_data_events(time_limit=0.1)
            conn.process_data_events(time_limit=0)
            if self._outstanding:
                log.warning("AMQP: closing with %d delivery(ies) unacknowledged: the broker"
                            " redelivers them", self._outstanding)
        finally:
            self.connected = False
            if conn.is_open:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001 - closing a broken connection
                    log.debug("closing the AMQP connection failed", exc_info=True)

    @staticmethod
    def _check_channel(ch: Any, tags: Mapping[str, str]) -> None:
        """Raise if the channel can consume no more, though the connection is up.

        The broker closes a channel on any channel error (a delivery left
        unacknowledged past RabbitMQ's ``consumer_timeout``, as while SQS is away,
        is one: 406 PRECONDITION_FAILED), and cancels a consumer whose queue was
        deleted or whose node failed over (Basic.Cancel).  Neither raises out of
        ``process_data_events``: the source would go on with nothing delivered,
        reported connected.  Raised, it reconnects as after a lost connection: the
        broker redelivers the channel's unacknowledged messages, and what of them
        still waits in the sink takes the redelivery's place (the generation).
        """
        import pika.exceptions

        if not ch.is_open:
            raise pika.exceptions.AMQPChannelError(
                "the broker closed the channel (the reason is logged above)")
        gone = [queue for tag, queue in tags.items() if tag not in ch.consumer_tags]
        if gone:
            raise pika.exceptions.AMQPChannelError(
                f"the broker cancelled the consumer of {', '.join(gone)} (queue deleted,"
                " or its node failed over)")

    def _declare(self, ch: Any) -> dict[str, str]:
        """Declare the consumed queues and their bindings; configured name -> actual name."""
        passive = bool(self.conf.get("passive_declares"))
        queues_conf = self.conf.get("queues") or {}
        names: dict[str, str] = {}
        for name in self.queues:
            qc = dict(queues_conf.get(name) or {})
            frame = ch.queue_declare(
                queue=name, passive=bool(qc.get("passive", passive)),
                durable=bool(qc.get("durable", False)), exclusive=bool(qc.get("exclusive", False)),
                auto_delete=bool(qc.get("auto_delete", False)), arguments=qc.get("arguments"))
            names[name] = frame.method.queue
            if qc.get("auto_delete") or qc.get("exclusive"):
                log.warning("AMQP queue %r is exclusive/auto-delete: what is published while"
                            " the bridge is down is lost; use a durable named queue", name)
        for binding in self.conf.get("bindings") or []:
            qname = binding.get("queue", "")
            if qname not in names:
                continue
            keys = binding.get("routing_keys") or []
            for key in [keys] if isinstance(keys, str) else keys:
                ch.queue_bind(queue=names[qname], exchange=binding["exchange"], routing_key=key,
                              arguments=binding.get("arguments"))
        return names

    def _on_message(self, conn: Any, ch: Any, gen: int, queue: str, method: Any, props: Any,
                    body: bytes) -> None:
        self.received += 1
        self._outstanding += 1
        tag = method.delivery_tag
        try:
            record, key = self._read(queue, method, props, body)
        except Exception:  # noqa: BLE001 - whatever a hostile delivery provokes
            # raised out of pika's callback, it stopped the source, and the broker
            # gives the same message first to every restart: forwarded raw instead
            # (the match function dead-letters it), acknowledged once SQS has it
            self.unreadable += 1
            record = body
            key = hashlib.sha256(b"raw\0" + queue.encode("utf-8", "surrogatepass")
                                 + b"\0" + body).digest()
            log.exception("AMQP: a delivery on %s could not be read; its body forwarded raw",
                          queue)
        delivery = _Delivery(key, conn, ch, gen, tag)
        with self._unacked_lock:
            earlier = self._unacked.get(delivery.key)
            if method.redelivered and earlier is not None and earlier.gen != gen:
                # its copy from a lost connection is still buffered (SQS has not taken
                # it): that copy now acknowledges this delivery, and no second is added
                earlier.conn, earlier.ch, earlier.gen, earlier.tag = conn, ch, gen, tag
                self.merged += 1
                return
            self._unacked[delivery.key] = delivery
        try:
            # never blocks: this runs on pika's thread, whose heartbeats a wait for a
            # full buffer (filled by fedmsg too) would stop, and the broker would
            # drop the connection; what it adds is bounded by the prefetch anyway
            self.sink.put(Envelope.wrap(self.bus, f"{self.source_name}#{queue}", record),
                          ack=lambda: self._accepted(delivery), block=False)
        except SinkClosed:
            self._forget(delivery)
            self._outstanding -= 1
            ch.basic_nack(tag, requeue=True)

    def _read(self, queue: str, method: Any, props: Any, body: bytes) -> tuple[bytes, bytes]:
        """A delivery's record and :func:`delivery_key`."""
        record = make_record(method.routing_key, props, body, queue)
        if record is None:
            # forwarded raw (the envelope keeps it verbatim); the match
            # function dead-letters it: never dropped here
            self.not_json += 1
            record = body
            log.warning("AMQP: message %s on %s has a body that is not JSON; forwarded raw",
                        getattr(props, "message_id", None), method.routing_key)
        return record, delivery_key(queue, method.routing_key, props, body, record)

    def _forget(self, delivery: _Delivery) -> None:
        """Out of the map: no redelivery can take its place any more."""
        with self._unacked_lock:
            if self._unacked.get(delivery.key) is delivery:
                del self._unacked[delivery.key]

    def _accepted(self, delivery: _Delivery) -> None:
        """Called by the sink thread once SQS accepted the envelope: acknowledge the
        delivery it stands for now (a later one, if its connection was lost).  Only a
        delivery in the map is ever retargeted, so once forgotten its target holds."""
        self._forget(delivery)
        self._ack_threadsafe(delivery.conn, delivery.ch, delivery.gen, delivery.tag)

    def _ack_threadsafe(self, conn: Any, ch: Any, gen: int, tag: int) -> None:
        """Called by the sink thread once SQS accepted the message."""
        if gen != self._generation:
            self.acks_lost += 1  # that connection is gone: the broker redelivers
            return
        try:
            conn.add_callback_threadsafe(lambda: self._ack(ch, gen, tag))
        except Exception:  # noqa: BLE001 - the connection closed meanwhile
            self.acks_lost += 1

    def _ack(self, ch: Any, gen: int, tag: int) -> None:
        """On the connection thread."""
        if gen != self._generation or not ch.is_open:
            self.acks_lost += 1
            return
        ch.basic_ack(delivery_tag=tag)
        self._outstanding -= 1
        self.acked += 1
