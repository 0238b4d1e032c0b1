"""The IRC sender against a real IRC server (miniircd), through the Lambda handler.

A local miniircd (:class:`fmn.local.ircd.LocalIrcd`) relays the sender's
PRIVMSGs to listeners logged in as the recipients (raw sockets that record
what arrives, when).  The sender is ``functions/send_irc/app.py`` driven
with Lambda-shaped SQS events, remembering its sends in real Redis
(Powertools idempotency) and dead-lettering to a queue on the moto server.
Between the sender and the server sits a recording proxy: the server's view
of every line the sender writes (registration and PONGs included), which
must never come faster than ``burst + rate * elapsed``.  The test asserts
only that the sender is not faster than its limit, never that it is fast.

miniircd has neither SASL nor a flood limit of its own, so SASL is checked
against a scripted server speaking the IRCv3 SASL exchange, and TLS against
miniircd with a self-signed certificate made here.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import ipaddress
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType, SimpleNamespace

import boto3
import orjson
import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError
from delivery_data import irc_body
from lambda_events import context, message_ids, sqs_event
from services import REDIS_URL, redis_client

from fmn.delivery.base import deliveries
from fmn.delivery.irc import TokenBucket, render_lines
from fmn.delivery.irc_client import IrcClientLink, IrcServer
from fmn.errors import RetryableError
from fmn.local.ircd import IrcListener as Listener
from fmn.local.ircd import LocalIrcd
from fmn.local.stack import load_module

pytestmark = pytest.mark.integration

APP_PATH = Path(__file__).resolve().parents[2] / "functions" / "send_irc" / "app.py"
BURST, RATE = 3, 10.0
WEB = "http://web.test"
SENDER_NICK = "fmnbot"


# -- the people on the server ----------------------------------------------------------


class LineRecorder:
    """A TCP proxy in front of the server that timestamps every line a client writes."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        #: (arrival at the proxy, line) for every line from the client
        self.lines: list[tuple[float, bytes]] = []
        self._socks: list[socket.socket] = []
        #: connections whose traffic is dropped both ways (a dead route, no FIN)
        self._dead: set[socket.socket] = set()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            self._socks += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False),
                             daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, record: bool) -> None:
        buffer = b""
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if not data:
                for s in (source, sink):
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)
                return
            if source in self._dead or sink in self._dead:
                continue
            if record:
                now = time.monotonic()
                *lines, buffer = (buffer + data).split(b"\r\n")
                self.lines += [(now, line) for line in lines]
            try:
                sink.sendall(data)
            except OSError:
                return

    def blackhole(self) -> None:
        """From now on, the open connections lose everything, silently, both ways."""
        self._dead.update(self._socks)

    def close(self) -> None:
        self.listener.close()
        for s in self._socks:
            s.close()


def assert_never_faster_than(times: Sequence[float], burst: int, rate: float,
                             slack_s: float = 0.05) -> None:
    """No window of the arrivals holds more lines than ``burst + rate * its length``.

    ``slack_s`` absorbs scheduling jitter (a late line shortens the gap to the
    next); without pacing, 15 lines arrive within milliseconds and fail.
    """
    times = sorted(times)
    for i in range(len(times)):
        for j in range(i + 1, len(times)):
            allowed = burst + rate * (times[j] - times[i] + slack_s)
            assert j - i + 1 <= allowed, (
                f"{j - i + 1} lines in {times[j] - times[i]:.3f}s (limit {allowed:.1f})")


# -- payloads and events -------------------------------------------------------------


body = irc_body


# -- fixtures ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def irc_app() -> ModuleType:
    return load_module(APP_PATH, "fmn_send_irc_app")


@pytest.fixture
def ircd() -> Iterator[LocalIrcd]:
    with LocalIrcd() as server:
        yield server


@pytest.fixture
def stack(aws_env: str, ircd: LocalIrcd, monkeypatch: pytest.MonkeyPatch,
          irc_app: ModuleType) -> Iterator[SimpleNamespace]:
    """The sender's settings: Redis, a fresh queue prefix, the server behind a recorder."""
    redis_client()  # skip locally / fail in CI without Redis
    tag = uuid.uuid4().hex[:10]
    recorder = LineRecorder(ircd.port)
    for name, value in {"REDIS_URL": REDIS_URL, "FMN_QUEUE_PREFIX": f"irc{tag}-",
                        "FMN_IRC_URL": f"irc://{SENDER_NICK}@127.0.0.1:{recorder.port}",
                        "FMN_IRC_BURST": str(BURST), "FMN_IRC_RATE": str(RATE),
                        "FMN_WEB_URL": WEB, "FMN_IDEMPOTENCY_TTL_S": "300"}.items():
        monkeypatch.setenv(name, value)
    irc_app.reset()
    listeners: list[Listener] = []

    def listen(nick: str) -> Listener:
        listeners.append(Listener(ircd.port, nick))
        return listeners[-1]

    def invoke(bodies: list[str]) -> list[str]:
        event = sqs_event(bodies, "irc")
        ids = message_ids(event)
        response = irc_app.handle_irc(event, context("send_irc", 200))
        failed = {f["itemIdentifier"] for f in response["batchItemFailures"]}
        return [str(ids.index(f)) for f in failed]

    yield SimpleNamespace(tag=tag, recorder=recorder, listen=listen, invoke=invoke,
                          prefix=f"irc{tag}-")
    irc_app.reset()
    for listener in listeners:
        listener.close()
        assert listener.errors == []
    recorder.close()


def link_of(irc_app: ModuleType) -> IrcClientLink:
    (link,) = irc_app._links
    assert isinstance(link, IrcClientLink)
    return link


# -- delivery and the flood limit ------------------------------------------------------


def test_lines_arrive_intact_and_never_faster_than_the_flood_limit(
        stack: SimpleNamespace) -> None:
    nicks = [f"user{i}" for i in range(5)]
    people = {n: stack.listen(n) for n in nicks}
    long_summary = "\x1b[1mhostile\r\nQUIT :x\x1b[0m " + "é" * 300 + " word" * 100
    bodies = [body(f"{stack.tag}-m{i}", nicks, long_summary if i == 1 else "a build completed")
              for i in range(3)]
    assert stack.invoke(bodies) == []

    expected = {n: [line for b in bodies for item in deliveries(b, "irc")
                    if item.address == n for line in render_lines(item)] for n in nicks}
    assert all(len(lines) >= 4 for lines in expected.values())  # the long one takes 2 or 3
    for nick, person in people.items():
        assert person.wait_for(len(expected[nick])) == expected[nick]  # intact, in order
        assert all(src.startswith(f"{SENDER_NICK}!") for _, src, _ in person.got)

    # The server's view: every line the sender wrote, registration included.
    written = stack.recorder.lines
    assert sum(line.startswith(b"PRIVMSG ") for _, line in written) == \
        sum(len(v) for v in expected.values())
    assert [line.split(b" ")[0] for _, line in written[:2]] == [b"NICK", b"USER"]
    assert_never_faster_than([t for t, _ in written], BURST, RATE)
    arrivals = [t for person in people.values() for t, _, _ in person.got]
    assert_never_faster_than(arrivals, BURST, RATE)


def test_a_backlog_is_summarised_and_a_redelivery_sends_nothing_twice(
        stack: SimpleNamespace) -> None:
    alice = stack.listen("alice")
    bodies = [body(f"{stack.tag}-m{i}", ["alice"]) for i in range(8)]
    assert stack.invoke(bodies) == []
    got = alice.wait_for(4)
    assert got[3] == f"5 more notifications: {WEB}/#/notifications"
    assert [t.split("(")[1].split(")")[0] for t in got[:3]] == [f"{stack.tag}-m{i}"
                                                                 for i in range(3)]

    assert stack.invoke(bodies) == []  # redelivered: every item is a duplicate
    assert stack.invoke([body(f"{stack.tag}-last", ["alice"])]) == []
    got = alice.wait_for(5)
    time.sleep(0.2)  # time for anything sent twice to arrive
    assert len(alice.got) == 5 and f"{stack.tag}-last" in got[4]


# -- the connection ---------------------------------------------------------------------


def test_the_sender_takes_another_nick_when_its_own_is_taken(
        stack: SimpleNamespace, irc_app: ModuleType) -> None:
    squatter = stack.listen(SENDER_NICK)
    alice = stack.listen("alice")
    assert stack.invoke([body(f"{stack.tag}-m1", ["alice"])]) == []
    alice.wait_for(1)
    (_, source, _), = alice.got
    assert source.startswith(f"{SENDER_NICK}_!")
    assert link_of(irc_app).nickname == f"{SENDER_NICK}_"
    assert squatter.got == []


def test_the_sender_reconnects_after_the_server_restarts(
        stack: SimpleNamespace, ircd: LocalIrcd, irc_app: ModuleType) -> None:
    alice = stack.listen("alice")
    assert stack.invoke([body(f"{stack.tag}-m1", ["alice"])]) == []
    alice.wait_for(1)
    link = link_of(irc_app)
    assert link.connects == 1

    ircd.stop()  # the network goes away: the records come back, nothing is remembered
    with pytest.raises(BatchProcessingError):
        stack.invoke([body(f"{stack.tag}-m2", ["alice"])])
    ircd.start()
    alice = stack.listen("alice")
    time.sleep(link.backoff_s + 0.1)  # the sender waits before trying again
    assert stack.invoke([body(f"{stack.tag}-m2", ["alice"]),
                         body(f"{stack.tag}-m3", ["alice"])]) == []
    assert len(alice.wait_for(2)) == 2
    assert link.connects == 2


def test_the_sender_notices_a_dead_connection_before_writing_on_it(
        stack: SimpleNamespace, ircd: LocalIrcd, irc_app: ModuleType) -> None:
    alice = stack.listen("alice")
    assert stack.invoke([body(f"{stack.tag}-m1", ["alice"])]) == []
    alice.wait_for(1)
    ircd.stop()
    ircd.start()  # back at once: the old connection is closed, not yet noticed
    alice = stack.listen("alice")
    assert stack.invoke([body(f"{stack.tag}-m2", ["alice"])]) == []
    assert len(alice.wait_for(1)) == 1
    assert link_of(irc_app).connects == 2


def test_a_silent_connection_is_checked_with_a_ping_before_a_line_is_lost_on_it(
        stack: SimpleNamespace, ircd: LocalIrcd) -> None:
    alice = stack.listen("alice")
    link = IrcClientLink.from_url(f"irc://{SENDER_NICK}@127.0.0.1:{stack.recorder.port}",
                                  TokenBucket(BURST, RATE), idle_check_s=0.3,
                                  pong_timeout_s=0.5)
    try:
        link.send("alice", ["before"])
        alice.wait_for(1)
        stack.recorder.blackhole()  # the route dies without a FIN: writes still "succeed"
        time.sleep(0.4)
        link.send("alice", ["after"])
        assert alice.wait_for(2) == ["before", "after"]
        assert link.connects == 2  # the unanswered PING made it reconnect first
    finally:
        link.close()


def test_a_server_that_cannot_be_reached_got_no_line() -> None:
    from fmn.errors import NotSent
    from fmn.local.stack import free_port

    link = IrcClientLink.from_url(f"irc://{SENDER_NICK}@127.0.0.1:{free_port()}",
                                  TokenBucket(BURST, RATE))
    for _ in range(2):  # connecting, then waiting for the next attempt: both NotSent
        with pytest.raises(NotSent):
            link.send("alice", ["your verification code is 123456"])


def test_an_offline_nick_does_not_fail_the_batch(stack: SimpleNamespace,
                                                 irc_app: ModuleType) -> None:
    alice = stack.listen("alice")
    assert stack.invoke([body(f"{stack.tag}-m1", ["ghost", "alice"]),
                         body(f"{stack.tag}-m2", ["alice"])]) == []
    assert len(alice.wait_for(2)) == 2
    deadline = time.monotonic() + 5
    offline = irc_app.totals.get("offline", 0)
    while not offline and time.monotonic() < deadline:
        offline = len(link_of(irc_app).offline())
        time.sleep(0.05)
    assert offline == 1  # the server said 401; counted, not retried


def test_an_address_that_is_not_a_nick_goes_to_the_dead_letter_queue(
        stack: SimpleNamespace) -> None:
    sqs = boto3.client("sqs")
    dlq = sqs.create_queue(QueueName=f"{stack.prefix}irc-dlq")["QueueUrl"]
    alice = stack.listen("alice")
    assert stack.invoke([body(f"{stack.tag}-m1", ["bad nick\r\nQUIT", "alice"])]) == []
    alice.wait_for(1)
    (dead,) = sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10,
                                  MessageAttributeNames=["All"])["Messages"]
    notification = orjson.loads(dead["Body"])["notifications"][0]
    assert notification["address"] == "bad nick\r\nQUIT"
    assert "not an IRC nick" in dead["MessageAttributes"]["error"]["StringValue"]


def test_a_line_in_another_encoding_from_anyone_on_the_network_loses_nothing(
        stack: SimpleNamespace, irc_app: ModuleType) -> None:
    """Anyone can message the bot: a Latin-1 line (not UTF-8) must not fail a send,
    dead-letter a notification, or hide the 401 that came with it."""
    sqs = boto3.client("sqs")
    dlq = sqs.create_queue(QueueName=f"{stack.prefix}irc-dlq")["QueueUrl"]
    alice = stack.listen("alice")
    mallory = stack.listen("mallory")
    assert stack.invoke([body(f"{stack.tag}-m1", ["alice"])]) == []
    alice.wait_for(1)
    mallory.sock.sendall(f"PRIVMSG {SENDER_NICK} :caf\xe9 cr\xe8me\r\n".encode("latin-1"))
    time.sleep(0.3)  # it waits in the bot's socket
    before = irc_app.totals.get("offline", 0)  # the module's totals, over the tests
    assert stack.invoke([body(f"{stack.tag}-m2", ["ghost", "alice"]),
                         body(f"{stack.tag}-m3", ["alice"])]) == []
    assert len(alice.wait_for(3)) == 3
    assert sqs.receive_message(QueueUrl=dlq, WaitTimeSeconds=0).get("Messages") is None
    deadline = time.monotonic() + 5
    offline = irc_app.totals.get("offline", 0) - before
    while not offline and time.monotonic() < deadline:
        offline = len(link_of(irc_app).offline())
        time.sleep(0.05)
    assert offline == 1  # the 401 for ghost was read


def test_a_line_the_library_cannot_handle_drops_the_connection_not_the_notification(
        stack: SimpleNamespace, irc_app: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    sqs = boto3.client("sqs")
    dlq = sqs.create_queue(QueueName=f"{stack.prefix}irc-dlq")["QueueUrl"]
    alice = stack.listen("alice")
    assert stack.invoke([body(f"{stack.tag}-m1", ["alice"])]) == []
    alice.wait_for(1)
    link = link_of(irc_app)
    connects = link.connects

    def unreadable() -> None:
        raise ValueError("a line the parser chokes on")

    monkeypatch.setattr(link._conn, "process_data", unreadable)
    alice.sock.sendall(f"PRIVMSG {SENDER_NICK} :hello\r\n".encode())
    time.sleep(0.3)
    assert stack.invoke([body(f"{stack.tag}-m2", ["alice"])]) == []
    assert len(alice.wait_for(2)) == 2  # sent on a new connection
    assert link.connects == connects + 1
    assert sqs.receive_message(QueueUrl=dlq, WaitTimeSeconds=0).get("Messages") is None


# -- TLS --------------------------------------------------------------------------------


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def test_tls_with_the_certificate_checked(tmp_path: Path) -> None:
    cert_file, key_file = self_signed(tmp_path)
    with LocalIrcd(cert_file=cert_file, key_file=key_file) as server:
        assert server.url.startswith("ircs://")
        trusted = ssl.create_default_context(cafile=str(cert_file))
        link = IrcClientLink.from_url(server.url_for("fmnbot"), TokenBucket(BURST, RATE),
                                      ssl_context=trusted)
        untrusted = IrcClientLink.from_url(server.url_for("other"), TokenBucket(BURST, RATE))
        receiver = socket.create_connection(("127.0.0.1", server.port))
        tls_receiver = trusted.wrap_socket(receiver, server_hostname="127.0.0.1")
        try:
            tls_receiver.sendall(b"NICK alice\r\nUSER alice 0 * :a\r\n")
            link.send("alice", ["over TLS \u2713"])
            received = b""
            deadline = time.monotonic() + 5
            while b"PRIVMSG alice :over TLS \xe2\x9c\x93\r\n" not in received:
                assert time.monotonic() < deadline, received
                tls_receiver.settimeout(1)
                received += tls_receiver.recv(65536)
            with pytest.raises(RetryableError, match="certificate|CERTIFICATE"):
                untrusted.send("alice", ["not over an unchecked connection"])
        finally:
            link.close()
            untrusted.close()
            tls_receiver.close()


# -- SASL (miniircd has none: a scripted server speaks the IRCv3 exchange) ----------


class ScriptedSaslServer:
    """Accepts one client; answers CAP/AUTHENTICATE as an IRCv3 SASL server would."""

    def __init__(self, account: str, password: str) -> None:
        self.account, self.password = account, password
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.received: list[str] = []
        self.logged_in = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        conn.settimeout(10)
        nick, registered, cap_done, buffer = "*", False, False, b""

        def say(line: str) -> None:
            conn.sendall(f":sasl.test {line}\r\n".encode())

        try:
            while True:
                data = conn.recv(4096)
                if not data:
                    return
                *lines, buffer = (buffer + data).split(b"\r\n")
                for raw in lines:
                    line = raw.decode()
                    self.received.append(line)
                    words = line.split(" ")
                    if line == "CAP LS":
                        say("CAP * LS :multi-prefix sasl")
                    elif line.startswith("CAP REQ"):
                        say("CAP * ACK :sasl")
                    elif line == "AUTHENTICATE PLAIN":
                        conn.sendall(b"AUTHENTICATE +\r\n")
                    elif words[0] == "AUTHENTICATE":
                        _, account, password = base64.b64decode(words[1]).decode().split("\0")
                        if (account, password) == (self.account, self.password):
                            self.logged_in = True
                            say(f"900 {nick} {nick}!u@h {account} :You are now logged in")
                            say(f"903 {nick} :SASL authentication successful")
                        else:
                            say(f"904 {nick} :SASL authentication failed")
                    elif line == "CAP END":
                        cap_done = True
                    elif words[0] == "NICK":
                        nick = words[1]
                    elif words[0] == "PING":
                        say(f"PONG sasl.test :{words[-1]}")
                    if cap_done and nick != "*" and not registered and any(
                            r.startswith("USER ") for r in self.received):
                        registered = True
                        say(f"001 {nick} :Welcome")
        except OSError:
            return
        finally:
            conn.close()

    def close(self) -> None:
        self.server.close()


@pytest.mark.parametrize(("password", "accepted"), [("s3cret:x", True), ("wrong", False)])
def test_sasl_plain_login(password: str, accepted: bool) -> None:
    server = ScriptedSaslServer("fmn-account", "s3cret:x")
    quoted = password.replace(":", "%3A")
    url = f"irc://fmnbot:{quoted}@127.0.0.1:{server.port}?account=fmn-account"
    assert IrcServer.from_url(url).password == password
    link = IrcClientLink.from_url(url, TokenBucket(BURST, RATE), register_timeout_s=5)
    try:
        if accepted:
            link.send("alice", ["after SASL"])
            wait_until(lambda: "PRIVMSG alice :after SASL" in server.received)
            assert server.logged_in and link.nickname == "fmnbot"
            assert server.received[:1] == ["CAP LS"]
            assert not any(r.startswith("PASS") for r in server.received)  # SASL, not PASS
        else:
            with pytest.raises(RetryableError, match="SASL"):
                link.send("alice", ["never without the login"])
            assert not any(r.startswith("PRIVMSG") for r in server.received)
    finally:
        link.close()
        server.close()


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
