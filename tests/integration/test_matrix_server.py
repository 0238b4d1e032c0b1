"""The Matrix sender against a real homeserver (Synapse), through the Lambda handler.

The session's Synapse (the ``synapse`` fixture, :mod:`fmn.local.synapse`)
has a bot account per test and people reading their rooms
(:class:`~fmn.local.synapse.MatrixListener`: a ``/sync`` loop that accepts
invitations).  The sender is ``functions/send_matrix/app.py`` driven with
Lambda-shaped SQS events, remembering its sends and each person's room in
real Redis and dead-lettering to a queue on the moto server.  What a person
got is read back from the server (the room's history), not from the sender.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import boto3
import orjson
import pytest
from delivery_data import HOSTILE_SUMMARY, notification, payload
from lambda_events import context, message_ids, sqs_event
from services import REDIS_URL, redis_client

from fmn.local.stack import load_module
from fmn.local.synapse import LocalSynapse, MatrixListener

pytestmark = pytest.mark.integration

APP_PATH = Path(__file__).resolve().parents[2] / "functions" / "send_matrix" / "app.py"
WEB = "http://web.test"


def body_for(message_id: str, people: list[str], summary: str | None = None,
             **over: Any) -> str:
    """One ``matrix`` payload: one bus message, one notification per person."""
    fields: dict[str, Any] = {"id": message_id, "url": f"https://koji.test/{message_id}",
                              "summary": summary or f"a build completed ({message_id})",
                              "packages": ["kernel"], "num_packages": 1, **over}
    return payload("matrix", [notification(p.split(":")[0][1:], p, f"d-{p}",
                                           names=("My builds",)) for p in people], **fields)


@pytest.fixture(scope="module")
def matrix_app() -> ModuleType:
    return load_module(APP_PATH, "fmn_send_matrix_app")


@pytest.fixture
def stack(aws_env: str, synapse: LocalSynapse, monkeypatch: pytest.MonkeyPatch,
          matrix_app: ModuleType) -> Iterator[SimpleNamespace]:
    """A bot of this test's own, its settings, and people to read their rooms."""
    client = redis_client()
    tag = uuid.uuid4().hex[:10]
    bot = synapse.register(f"bot{tag}", admin=True)
    prefix = f"mx{tag}-"
    for name, value in {"REDIS_URL": REDIS_URL, "FMN_QUEUE_PREFIX": prefix,
                        "FMN_MATRIX_URL": synapse.url, "FMN_MATRIX_TOKEN": bot.access_token,
                        "FMN_WEB_URL": WEB, "FMN_IDEMPOTENCY_TTL_S": "300"}.items():
        monkeypatch.setenv(name, value)
    matrix_app.reset()
    matrix_app.totals.clear()
    listeners: list[MatrixListener] = []

    def person(name: str) -> MatrixListener:
        listeners.append(MatrixListener(synapse.url, synapse.register(f"{name}{tag}")))
        return listeners[-1]

    def invoke(bodies: list[str], timeout_s: float = 200) -> list[int]:
        """Run one batch; the indexes of the records that failed."""
        event = sqs_event(bodies, "matrix")
        ids = message_ids(event)
        response = matrix_app.handle_matrix(event, context("send_matrix", timeout_s))
        return sorted(ids.index(f["itemIdentifier"]) for f in response["batchItemFailures"])

    yield SimpleNamespace(tag=tag, bot=bot, person=person, invoke=invoke, prefix=prefix,
                          synapse=synapse)
    matrix_app.reset()
    for listener in listeners:
        listener.close()
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)


def notices(reader: MatrixListener, room_id: str) -> list[dict[str, Any]]:
    return [e["content"] for e in reader.history(room_id)]


def test_a_notification_reaches_the_direct_room_exactly_once(
        stack: SimpleNamespace, matrix_app: ModuleType) -> None:
    alice = stack.person("alice")
    body = body_for("m-1", [alice.user_id])
    assert stack.invoke([body]) == []
    (got,) = alice.wait_for(1)
    assert got.sender == stack.bot.user_id
    assert got.content["msgtype"] == "m.notice"
    assert got.body == ("[koji] a build completed (m-1) https://koji.test/m-1 "
                        "(rule: My builds)")
    assert got.content["format"] == "org.matrix.custom.html"
    assert '<a href="https://koji.test/m-1">' in got.content["formatted_body"]
    # Redelivered: by the same warm function, then by a cold one (state in Redis only)
    assert stack.invoke([body]) == []
    matrix_app.reset()
    assert stack.invoke([body, body]) == []
    assert [n["body"] for n in notices(alice, got.room_id)] == [got.body]
    assert alice.joined_rooms() == [got.room_id]  # one direct room, reused
    assert matrix_app.totals["sent"] == 1 and matrix_app.totals["duplicate"] == 3


class Competitor:
    """Other sends by the same bot account, in parallel, while the sender starts its burst:
    they keep the account's rate budget empty, so that the sender surely meets
    M_LIMIT_EXCEEDED however fast or slow this machine is.  They stop once
    ``enough()`` holds or after ``max_s`` seconds."""

    def __init__(self, synapse: LocalSynapse, bot: Any, enough: Any, threads: int = 4,
                 max_s: float = 30.0) -> None:
        import threading

        import httpx

        self.http = httpx.Client(base_url=synapse.url, timeout=10,
                                 headers={"Authorization": f"Bearer {bot.access_token}"})
        answer = self.http.post("/_matrix/client/v3/createRoom", json={"preset":
                                                                     "private_chat"})
        answer.raise_for_status()
        self.room = answer.json()["room_id"]
        self.enough, self.deadline = enough, time.monotonic() + max_s
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True)
                        for n in range(threads)]
        for t in self.threads:
            t.start()

    def _run(self, n: int) -> None:
        i = 0
        while not self.enough() and time.monotonic() < self.deadline:
            i += 1
            with contextlib.suppress(Exception):
                self.http.put(f"/_matrix/client/v3/rooms/{self.room}/send/m.room.message/"
                              f"noise{n}-{i}", json={"msgtype": "m.notice", "body": "noise"})

    def stop(self) -> None:
        self.deadline = 0
        for t in self.threads:
            t.join(15)
        self.http.close()


def test_a_rate_limited_burst_of_200_all_arrive_in_order(
        stack: SimpleNamespace, matrix_app: ModuleType,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """200 notifications to two people, the bot limited to 10 messages a second."""
    monkeypatch.setenv("FMN_MATRIX_PER_USER", "1000")  # every one a notice of its own
    matrix_app.reset()
    stack.synapse.override_ratelimit(stack.bot, stack.bot.user_id, 10, 5)
    people = [stack.person("bob"), stack.person("carol")]
    bodies = [body_for(f"b-{i:03d}", [p.user_id for p in people]) for i in range(100)]
    competitor = Competitor(stack.synapse, stack.bot,
                            lambda: len(people[0].messages()) >= 10)
    try:
        for start in range(0, 100, 10):  # batches of 10 records, as the queue hands them out
            assert stack.invoke(bodies[start:start + 10]) == []
    finally:
        competitor.stop()
    assert matrix_app.totals["sent"] == 200
    assert matrix_app.totals["rate-limited"] > 0  # the limit was really hit
    for reader in people:
        got = reader.wait_for(100, timeout=60)
        (room,) = {m.room_id for m in got}
        order = [n["body"].split("(")[1].split(")")[0] for n in notices(reader, room)]
        assert order == [f"b-{i:03d}" for i in range(100)]


def test_hostile_content_arrives_as_inert_text(stack: SimpleNamespace) -> None:
    dave = stack.person("dave")
    hostile = ("<img src=x onerror=alert(1)><a href='javascript:alert(2)'>x</a>"
               "\u2066\u2067\u2068\u2069" + HOSTILE_SUMMARY)
    body = body_for("h-1", [dave.user_id], summary=hostile, app="<b>koji</b>\r\nX: y",
                    url="javascript:alert(3)")
    assert stack.invoke([body]) == []
    (got,) = dave.wait_for(1)
    plain, formatted = got.content["body"], got.content["formatted_body"]
    for text in (plain, formatted):
        assert not any(c in text for c in "\r\n\x00\x07\x1b\u202e\u2066\u2067\u2068\u2069")
        assert len(text.encode()) < 3000  # 10,000 characters were cut, not sent whole
    assert "<script" not in formatted and "<img" not in formatted
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in formatted
    assert "&lt;img src=x onerror=alert(1)&gt;" in formatted
    assert "<a " not in formatted  # the javascript: URL is no link, and the markup is text
    assert "&lt;a href=&#x27;javascript:alert(2)&#x27;&gt;x&lt;/a&gt;" in formatted
    assert formatted.startswith("<b>[&lt;b&gt;koji&lt;/b&gt; X: y]</b> ")
    assert plain.startswith("[<b>koji</b> X: y] <img src=x onerror=alert(1)><a href='javascript:"
                            "alert(2)'>x</a>evil Bcc: victim@example.org <script>")


def test_a_person_who_left_the_room_gets_a_new_one(stack: SimpleNamespace) -> None:
    erin = stack.person("erin")
    assert stack.invoke([body_for("l-1", [erin.user_id])]) == []
    (first,) = erin.wait_for(1)
    erin.leave(first.room_id)
    assert stack.invoke([body_for("l-2", [erin.user_id])]) == []
    got = erin.wait_for(2)
    assert got[1].room_id != first.room_id
    assert "(l-2)" in got[1].body
    assert erin.joined_rooms() == [got[1].room_id]


def test_a_backlog_is_summarised_per_person_and_nothing_twice(
        stack: SimpleNamespace, matrix_app: ModuleType) -> None:
    frank = stack.person("frank")
    bodies = [payload("matrix", [notification("frank", frank.user_id, "d-f")
                                 for _ in range(1)], id=f"s-{i}", summary=f"s-{i}")
              for i in range(15)]
    # 15 records of one notification each, more than a batch: two batches
    assert stack.invoke(bodies[:10]) == []
    assert stack.invoke(bodies[10:]) == []
    assert stack.invoke(bodies[:10]) == []  # a redelivery adds nothing
    got = frank.wait_for(11)
    room = got[0].room_id
    texts = [n["body"] for n in notices(frank, room)]
    # 10 of its own in the first minute, then one summary for the other 5
    assert len(texts) == 11
    assert texts[-1] == f"5 more notifications: {WEB}/#/notifications"
    assert matrix_app.totals["summarised"] == 5


def test_an_address_that_is_not_a_matrix_user_goes_to_the_dead_letter_queue(
        stack: SimpleNamespace, aws_env: str) -> None:
    sqs = boto3.client("sqs", endpoint_url=aws_env)
    dlq = sqs.create_queue(QueueName=f"{stack.prefix}matrix-dlq")["QueueUrl"]
    grace = stack.person("grace")
    body = body_for("x-1", ["grace@example.org", grace.user_id, "@nobody:elsewhere.test"])
    assert stack.invoke([body]) == []
    assert grace.wait_for(1)[0].body.startswith("[koji] a build completed (x-1)")
    dead = sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10,
                               MessageAttributeNames=["All"])["Messages"]
    assert sorted(orjson.loads(m["Body"])["notifications"][0]["address"] for m in dead) == [
        "@nobody:elsewhere.test", "grace@example.org"]
    assert all(m["MessageAttributes"]["error"]["StringValue"] for m in dead)


def test_a_matrix_destination_is_verified_by_a_code_sent_over_matrix(
        stack: SimpleNamespace, tmp_path: Path) -> None:
    from fmn import db
    from fmn.delivery.mailers import MemoryMailer
    from fmn.delivery.matrix_client import make_notifier
    from fmn.settings import Settings
    from fmn.snapshot.store import MemorySnapshotStore
    from fmn.web.service import PreferencesService
    from fmn.web.verify import MatrixCodeChannel, MemoryKeys, RecordingChannel, Verifier

    engine = db.make_engine(f"sqlite:///{tmp_path / 'prefs.sqlite'}")
    db.upgrade(engine)
    service = PreferencesService(engine, MemorySnapshotStore())
    service.login("heidi", "heidi@example.org")
    heidi = stack.person("heidi")
    notifier = make_notifier(Settings.from_env())
    verifier = Verifier(service, MemoryKeys(), "s3cret", web_url=WEB, mailer=MemoryMailer(),
                        mail_from="fmn@example.org",
                        channels={"irc": RecordingChannel("irc"),
                                  "matrix": MatrixCodeChannel(notifier)})
    try:
        dest = service.add_destination("heidi", {"protocol": "matrix",
                                                 "address": heidi.user_id})
        assert not dest.verified
        assert verifier.start("heidi", dest.id) == "code"
        (got,) = heidi.wait_for(1)
        assert got.sender == stack.bot.user_id and got.content["msgtype"] == "m.notice"
        code = next(w for w in got.body.split() if w.isdigit() and len(w) == 6)
        assert verifier.confirm_code("heidi", dest.id, {"code": code}).verified
    finally:
        notifier.link.close()  # its HTTP session, not left for the interpreter's exit
        engine.dispose()
