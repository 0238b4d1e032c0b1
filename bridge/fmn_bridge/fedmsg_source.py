"""The fedmsg source: ZeroMQ SUB sockets on fedmsg endpoints, every frame forwarded.

fedmsg publishers send two-frame messages ``[topic, json_envelope]`` on a PUB
socket.  This source opens one SUB socket per endpoint (subscribed to every
topic), so it always knows which endpoint a message came from, and puts the
JSON frame, byte for byte, into the sink as an envelope's record (``bus``
``fedmsg``, ``source`` the endpoint, ``seq`` the envelope's ``i``).  ZeroMQ
reconnects by itself, with the exponential backoff set below.  ZeroMQ has no
acknowledgement: what a publisher sent while we were disconnected, or what
was in the socket when the process died, is gone; this source can only
*report* such losses, from fedmsg's per-publisher sequence number ``i``
(``FedMsgContext.publish`` increments it per process).  A publisher is the
endpoint plus the envelope's ``username`` plus its signing certificate (or
GPG signer); a rise of ``i`` by more than one is a gap (logged, counted), a
fall is a publisher restart.  Processes sharing a user and certificate (the
WSGI workers of one app on one host) cannot be told apart by the envelope and
may show as spurious restarts or gaps; a relay preserves ``i``.  A record too
complex to read (:func:`fmn.message.too_many_containers`) is forwarded without
its ``i`` (or its publisher) being known, so the next rise of its publisher
looks like a gap.  Whose it was cannot be known (a relay carries many
publishers, and one may be new), and crediting it to the wrong one would
hide a real loss: a gap stays a gap, counted, and its warning says how many
records of that endpoint went on unread within :data:`UNREAD_WINDOW`
records before it (:attr:`Gap.unread`: perhaps those).

Frames are bounded (``ZMQ_MAXMSGSIZE``, :data:`MAX_FRAME_BYTES` by default,
what the match function accepts through a claim check at most): ZeroMQ
drops the connection of a peer that sends a larger one instead of reading
it into memory, so one huge frame cannot exhaust the bridge and lose its
buffer (which fedmsg cannot redeliver).  ZeroMQ does not reconnect after
such a protocol error by itself, so the source watches each socket's
disconnections (a socket monitor) and connects again; what the peer sent
meanwhile is lost, as with any disconnection, and shows as a gap.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from fmn.message import too_many_containers
from fmn.pipeline.envelope import Envelope, loads
from fmn.pipeline.match import MAX_CLAIM_BYTES

from .sqs_sink import SinkClosed, SqsSink

log = logging.getLogger(__name__)

#: The largest frame read (the largest record the match function reads, through S3).
MAX_FRAME_BYTES = MAX_CLAIM_BYTES

#: a record forwarded unread is named in a gap at its endpoint among the next this many
#: records the source receives (:attr:`Gap.unread`)
UNREAD_WINDOW = 1000
#: At a stop, the most seconds spent taking in what ZeroMQ had already received
STOP_INTAKE_S = 10.0


@dataclass
class Gap:
    publisher: str
    expected: int
    got: int
    #: how many records of the publisher's endpoint went on unread shortly before (too
    #: complex to read): perhaps some of the missing, perhaps another publisher's
    unread: int = 0

    @property
    def missing(self) -> int:
        return self.got - self.expected


@dataclass
class SequenceTracker:
    """Per-publisher fedmsg ``i``: reports gaps and restarts."""

    last: dict[str, int] = field(default_factory=dict)
    gaps: list[Gap] = field(default_factory=list)
    missing: int = 0
    restarts: int = 0
    #: the most gaps kept in ``gaps`` (the counters keep counting)
    keep: int = 1000
    #: the most publishers whose ``i`` is remembered
    max_publishers: int = 10_000
    #: per endpoint, when each record forwarded unread came (the count of records seen)
    unread: dict[str, deque[int]] = field(default_factory=dict)
    seen: int = 0

    def forwarded_unread(self, endpoint: str) -> None:
        """A record of ``endpoint`` went on unread: its ``i`` is not known."""
        self.seen += 1
        recent = self.unread.setdefault(endpoint, deque())
        self._lapse(recent)
        recent.append(self.seen)

    def see(self, publisher: str, i: int, endpoint: str = "") -> Gap | None:
        self.seen += 1
        prev = self.last.pop(publisher, None)
        self.last[publisher] = i  # the most recently seen last (dicts keep order)
        if len(self.last) > self.max_publishers:
            # hostile input can invent publishers without end: the one heard from
            # longest ago is forgotten (its next message starts it afresh, no gap)
            del self.last[next(iter(self.last))]
        if prev is None or i == prev + 1:
            return None
        if i <= prev:  # a fall (or a repeat): the publisher's process restarted
            self.restarts += 1
            log.info("fedmsg publisher %s restarted its sequence (i %d after %d)",
                     publisher, i, prev)
            return None
        gap = Gap(publisher, prev + 1, i, self._unread(endpoint, i - prev - 1))
        self.missing += gap.missing
        if len(self.gaps) < self.keep:
            self.gaps.append(gap)
        log.warning("fedmsg GAP: publisher %s skipped i=%d..%d (%d message(s) never received%s)",
                    publisher, gap.expected, i - 1, gap.missing,
                    f"; {gap.unread} record(s) of {endpoint} went on unread, too complex to "
                    "read, just before: perhaps among them" if gap.unread else "")
        return gap

    def _unread(self, endpoint: str, missing: int) -> int:
        """How many of ``missing`` numbers the endpoint's recent unread records may be
        (each is named in one gap at most)."""
        recent = self.unread.get(endpoint)
        if not recent:
            return 0
        self._lapse(recent)
        taken = min(missing, len(recent))
        for _ in range(taken):
            recent.popleft()
        return taken

    def _lapse(self, recent: deque[int]) -> None:
        while recent and recent[0] <= self.seen - UNREAD_WINDOW:
            recent.popleft()


def publisher_key(endpoint: str, envelope: dict[str, Any]) -> str:
    """Who incremented this envelope's ``i``: endpoint, user, signing identity."""
    signer = envelope.get("certificate") or envelope.get("signer") or ""
    # surrogatepass: JSON may escape a lone surrogate (the text "\ud800"), which
    # Python's json reads and a strict UTF-8 encode refuses
    ident = hashlib.sha1(str(signer).encode("utf-8", "surrogatepass"),
                         usedforsecurity=False).hexdigest()[:12] if signer else "unsigned"
    user = str(envelope.get("username", "?"))
    if len(user) > 64:  # a name is short; the key of a long one must not be the whole text
        user = "sha1:" + hashlib.sha1(user.encode("utf-8", "replace"),
                                      usedforsecurity=False).hexdigest()
    return f"{endpoint}|{user}|{ident}"


class FedmsgSource:
    """Subscribe to fedmsg endpoints and feed the sink (see the module docstring)."""

    bus = "fedmsg"

    def __init__(self, endpoints: list[str], sink: SqsSink, *, rcvhwm: int = 100_000,
                 reconnect_ivl_ms: int = 100, reconnect_ivl_max_ms: int = 30_000,
                 max_frame_bytes: int = MAX_FRAME_BYTES,
                 stop_intake_s: float = STOP_INTAKE_S) -> None:
        if not endpoints:
            raise ValueError("at least one fedmsg endpoint is needed")
        self.endpoints = list(endpoints)
        self.sink = sink
        self.tracker = SequenceTracker()
        self.received = 0
        self.malformed = 0
        self.disconnects = 0
        self._rcvhwm = rcvhwm
        self.max_frame_bytes = max_frame_bytes
        self.stop_intake_s = stop_intake_s
        self._ivl = reconnect_ivl_ms
        self._ivl_max = reconnect_ivl_max_ms
        self._stop = threading.Event()
        self.stopped_receiving = threading.Event()
        self.ready = threading.Event()

    @property
    def connected(self) -> bool:
        """Subscribed and receiving.  ZeroMQ reconnects by itself and does not say
        when a hub is away: the silence alarm covers that."""
        return self.ready.is_set() and not self.stopped_receiving.is_set()

    def request_stop(self) -> None:
        self._stop.set()

    def _running(self) -> bool:
        """Whether a full sink should hold this source back (not once it is stopping)."""
        return not self._stop.is_set()

    def sink_drained(self) -> None:
        """Nothing to do: ZeroMQ has no acknowledgement."""

    def stats(self) -> dict[str, int]:
        return {"gaps": len(self.tracker.gaps), "missing": self.tracker.missing,
                "restarts": self.tracker.restarts, "malformed": self.malformed,
                "disconnects": self.disconnects}

    def run(self) -> None:
        import zmq

        ctx: Any = zmq.Context.instance()
        sockets: dict[Any, str] = {}
        monitors: dict[Any, Any] = {}  # monitor socket -> the socket it watches
        poller = zmq.Poller()
        try:
            for endpoint in self.endpoints:
                sock = ctx.socket(zmq.SUB)
                # why: ZeroMQ reconnects by itself; these make it back off
                # exponentially instead of hammering a hub that is down
                sock.setsockopt(zmq.RECONNECT_IVL, self._ivl)
                sock.setsockopt(zmq.RECONNECT_IVL_MAX, self._ivl_max)
                # why: a silently dead TCP peer would otherwise look like a quiet bus
                sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
                sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, 60)
                sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, 10)
                sock.setsockopt(zmq.HEARTBEAT_IVL, 10_000)
                sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 30_000)
                # why: while SQS is down the sink blocks us; let ZeroMQ hold a backlog
                sock.setsockopt(zmq.RCVHWM, self._rcvhwm)
                # why: a peer sending a larger frame is disconnected, not read into memory
                sock.setsockopt(zmq.MAXMSGSIZE, self.max_frame_bytes)
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.SUBSCRIBE, b"")
                monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
                sock.connect(endpoint)
                sockets[sock] = endpoint
                monitors[monitor] = sock
                poller.register(sock, zmq.POLLIN)
                poller.register(monitor, zmq.POLLIN)
                log.info("fedmsg: subscribed to %s", endpoint)
            self.ready.set()
            while not self._stop.is_set():
                for sock, _ in poller.poll(200):
                    if sock in monitors:  # a monitor: its socket lost a connection
                        watched = monitors[sock]
                        self._reconnect(watched, sock, sockets[watched])
                        continue
                    # drain what is there, but look at the stop flag between batches
                    for _ in range(1000):
                        try:
                            frames = sock.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        if not self._handle(sockets[sock], frames):
                            return
        finally:
            self._take_in_queued(sockets)
            for sock in sockets:
                sock.disable_monitor()
                sock.close(linger=0)
            for monitor in monitors:
                monitor.close(linger=0)
            self.stopped_receiving.set()
            log.info("fedmsg source stopped (%d received)", self.received)

    def _take_in_queued(self, sockets: dict[Any, str]) -> None:
        """At a stop: what ZeroMQ has received and queued would go with the socket
        (thousands, when SQS was slow): it goes to the sink instead, past its bounds
        (it is in memory either way), which sends it or spools it for the next start."""
        import zmq

        if not self._stop.is_set():
            return  # ended by a closed sink: nothing takes them
        taken = 0
        deadline = time.monotonic() + self.stop_intake_s
        for sock, endpoint in sockets.items():
            while time.monotonic() < deadline:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except (zmq.Again, zmq.ZMQError):
                    break
                if not self._handle(endpoint, frames):
                    return
                taken += 1
        if taken:
            log.warning("fedmsg: %d message(s) ZeroMQ had already received taken in at the"
                        " stop", taken)
        if time.monotonic() >= deadline:
            log.error("fedmsg: stopped taking in ZeroMQ's queue after %.0f s; what is left"
                      " in it is lost", self.stop_intake_s)

    def _reconnect(self, sock: Any, monitor: Any, endpoint: str) -> None:
        """A connection dropped: a frame above the limit, or the peer went away."""
        import zmq
        from zmq.utils.monitor import recv_monitor_message

        recv_monitor_message(monitor)
        self.disconnects += 1
        log.warning("fedmsg: connection to %s dropped (a frame above %d bytes, or the peer"
                    " went away); connecting again", endpoint, self.max_frame_bytes)
        # already gone after a protocol error (which ends the connection for good)
        with contextlib.suppress(zmq.ZMQError):
            sock.disconnect(endpoint)
        sock.connect(endpoint)

    def _handle(self, endpoint: str, frames: list[bytes]) -> bool:
        """Forward one ZeroMQ message; False when the sink is closed."""
        self.received += 1
        # fedmsg sends [topic, json]; anything else is forwarded all the same
        record = frames[-1] if frames else b""
        try:
            seq = self._read(endpoint, frames, record)
        except Exception:  # noqa: BLE001 - whatever a hostile record provokes
            # the bookkeeping is ours, the record the publisher's: a record it
            # cannot read must not stop the source (fedmsg never sends again what
            # arrives while none runs); it goes on as it came, its i unknown
            seq = None
            self.malformed += 1
            log.exception("fedmsg: reading a message from %s (%d bytes) failed; forwarded"
                          " as is", endpoint, len(record))
        try:
            self.sink.put(Envelope.wrap(self.bus, endpoint, record, seq=seq),
                          block=self._running)
        except SinkClosed:
            log.error("fedmsg: a message arrived during shutdown and could not be forwarded")
            return False
        return True

    def _read(self, endpoint: str, frames: list[bytes], record: bytes) -> int | None:
        """The envelope's ``i``, seen by the sequence tracker; None if it has none."""
        seq: int | None = None
        containers = too_many_containers(record)
        if containers is not None:  # read, it would take gigabytes (fmn.message)
            self.malformed += 1
            self.tracker.forwarded_unread(endpoint)
            log.warning("fedmsg: message from %s holds up to %d JSON objects and arrays"
                        " (%d bytes): forwarded unread", endpoint, containers, len(record))
            return None
        try:
            doc = loads(record)  # as Python's json reads it: NaN and all
        except ValueError:
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("i"), int):
            seq = doc["i"]
            self.tracker.see(publisher_key(endpoint, doc), doc["i"], endpoint)
        elif not isinstance(doc, dict):
            self.malformed += 1
            log.warning("fedmsg: message from %s is not a JSON envelope (%d frames,"
                        " %d bytes); forwarded as is", endpoint, len(frames), len(record))
        del doc  # not held while the sink encodes the record (which reads it again)
        return seq
