"""The email sender Lambda against real servers: an aiosmtpd sink, SES on the moto server, Redis.

Each test gets its own queue prefix (so its own dead-letter queue, digest
keys and idempotency keys) and fresh message ids.  The handler is the real
``functions/send_email/app.py`` called with Lambda-shaped SQS events, as the
local runner calls it.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import boto3
import orjson
import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError
from delivery_data import notification as note
from delivery_data import payload
from lambda_events import context, sqs_event
from services import REDIS_URL, redis_client

from fmn.local.aws import ensure_queue
from fmn.local.mailsink import MailSink
from fmn.local.stack import load_function
from fmn.pipeline.queues import queue

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def email_app() -> ModuleType:
    return load_function("send_email")


@pytest.fixture
def sink() -> Iterator[MailSink]:
    with MailSink() as s:
        yield s


@pytest.fixture
def env(aws_env: str, monkeypatch: pytest.MonkeyPatch, email_app: ModuleType,
        sink: MailSink) -> Iterator[SimpleNamespace]:
    redis_client()  # skip (locally) or fail (CI) without Redis
    tag = uuid.uuid4().hex[:10]
    prefix = f"fmn-t{tag}-"
    sqs = boto3.client("sqs")
    urls = ensure_queue(sqs, prefix, queue("email"))
    for name, value in {"REDIS_URL": REDIS_URL, "FMN_QUEUE_PREFIX": prefix,
                        "FMN_MAIL_TRANSPORT": "smtp", "FMN_SMTP_URL": sink.url,
                        "FMN_WEB_URL": "https://notif.example"}.items():
        monkeypatch.setenv(name, value)
    email_app.reset()
    yield SimpleNamespace(app=email_app, sink=sink, sqs=sqs, urls=urls, tag=tag)
    email_app.reset()
    client = redis_client()
    from fmn.delivery.digest import digest_prefix

    for pattern in (f"{prefix}*", f"{digest_prefix(prefix)}*"):  # sends remembered, digests
        for key in client.scan_iter(pattern):
            client.delete(key)


def invoke(env: SimpleNamespace, *bodies: str) -> list[str]:
    """Run the handler on one event; the ids of the records it reported failed."""
    event = sqs_event(bodies, f"fmn-t{env.tag}-email")
    try:
        result: Any = env.app.handle_email(event, context("send_email"))
    except BatchProcessingError:  # every record failed: the whole batch comes back
        return [r["messageId"] for r in event["Records"]]
    return [f["itemIdentifier"] for f in result["batchItemFailures"]]


def dead_letters(env: SimpleNamespace) -> list[dict[str, Any]]:
    got = env.sqs.receive_message(QueueUrl=env.urls.dlq_url, MaxNumberOfMessages=10,
                                  MessageAttributeNames=["All"], WaitTimeSeconds=0)
    return [{"body": orjson.loads(m["Body"]),
             "error": m["MessageAttributes"]["error"]["StringValue"]}
            for m in got.get("Messages", [])]


def mid(env: SimpleNamespace, n: int = 0) -> str:
    return f"2024-{env.tag}-{n}"


def test_smtp_mail_has_every_header(env: SimpleNamespace) -> None:
    body = payload("email", [note("bob", "bob@example.org"), note("carol", "carol@example.org")],
                   id=mid(env))
    assert invoke(env, body) == []
    got = env.sink.wait_for(2)
    assert sorted(r.rcpt_tos[0] for r in got) == ["bob@example.org", "carol@example.org"]
    msg = got[0].message
    for header in ("X-Fedmsg-Topic", "X-Fedmsg-Category", "X-Fedmsg-Username",
                   "X-Fedmsg-Package", "X-Fedmsg-Num-Packages", "Precedence", "Auto-Submitted",
                   "List-Id", "List-Unsubscribe", "List-Unsubscribe-Post", "Date", "Subject"):
        assert msg[header], header
    assert len(msg.get_all("X-Fedmsg-Package")) == 10
    unsubscribe = msg["List-Unsubscribe"].strip("<>")
    assert unsubscribe.startswith("https://notif.example/unsubscribe/")
    # as mail providers read it: the link itself on the wire, not RFC 2047 words
    assert f"\r\nList-Unsubscribe: <{unsubscribe}>\r\n".encode() in got[0].raw
    from fmn.auth import verify_unsubscribe

    assert verify_unsubscribe(unsubscribe.rsplit("/", 1)[1], "development-only-secret-key") in (
        ("bob", "d1"), ("carol", "d1"))
    assert env.app.totals["sent"] >= 2


def test_redelivery_sends_exactly_once(env: SimpleNamespace) -> None:
    body = payload("email", [note("bob", "bob@example.org")], id=mid(env))
    assert invoke(env, body) == []
    # SQS hands the same message out again (a crash between send and delete)
    assert invoke(env, body) == []
    env.app.reset()  # a cold container: the memory of the send is in Redis
    assert invoke(env, body) == []
    assert len(env.sink.wait_for(2, timeout=1.0)) == 1


class Crash(BaseException):
    """A crash the sender cannot catch (as when Lambda kills the process)."""


def test_crash_before_the_send_still_sends_once(env: SimpleNamespace,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-progress mark of a crashed invocation lapses at its deadline."""
    body = payload("email", [note("bob", "bob@example.org")], id=mid(env))
    sender = env.app.function.get("send")

    def crash(msg: Any) -> None:
        raise Crash

    # Crash mid-invocation, after the send was marked in progress; the
    # invocation's deadline has passed by the time SQS redelivers.
    short = context("send_email", timeout_s=0.0)
    with monkeypatch.context() as patch, pytest.raises(Crash):
        patch.setattr(sender.mailer, "send", crash)
        # (an invocation out of time starts no send: this one is made to start it)
        patch.setattr(env.app.function, "deadline_margin_s", None)
        env.app.handle_email(sqs_event([body]), short)
    env.app.reset()
    assert invoke(env, body) == []
    assert invoke(env, body) == []
    assert len(env.sink.wait_for(2, timeout=1.0)) == 1


def waiting(env: SimpleNamespace) -> list[str]:
    """The bodies waiting on the email queue (taken off it)."""
    got = env.sqs.receive_message(QueueUrl=env.urls.url, MaxNumberOfMessages=10,
                                  WaitTimeSeconds=0)
    for m in got.get("Messages", []):
        env.sqs.delete_message(QueueUrl=env.urls.url, ReceiptHandle=m["ReceiptHandle"])
    return [m["Body"] for m in got.get("Messages", [])]


def test_an_invocation_near_its_deadline_hands_its_records_back(env: SimpleNamespace) -> None:
    """No record is started within the margin of the deadline: it goes back on its
    queue as a fresh message (no receive used up) and is sent from there, once."""
    body = payload("email", [note("bob", "bob@example.org")], id=mid(env))
    event = sqs_event([body], f"fmn-t{env.tag}-email")
    result = env.app.handle_email(event, context("send_email", timeout_s=0.0))
    assert result["batchItemFailures"] == []
    assert env.sink.messages == []
    assert waiting(env) == [body]
    assert invoke(env, body) == []
    assert len(env.sink.wait_for(2, timeout=1.0)) == 1
    assert env.app.totals["postponed"] >= 1


def test_a_record_cut_by_the_deadline_sends_only_its_rest_later(
        env: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    """The deadline comes mid-record: the items sent are remembered, the record comes
    back and sends only the others; nothing twice, the invocation never overruns."""
    people = [note(f"u{i}", f"u{i}@example.org") for i in range(3)]
    body = payload("email", people, id=mid(env))
    sender = env.app.function.get("send")
    real = sender.mailer.send
    ctx = context("send_email", timeout_s=600)

    def send_then_run_late(msg: Any) -> None:
        real(msg)
        ctx.expire()  # the first mail took the invocation's time

    with monkeypatch.context() as patch:
        patch.setattr(sender.mailer, "send", send_then_run_late)
        event = sqs_event([body], f"fmn-t{env.tag}-email")
        assert env.app.handle_email(event, ctx)["batchItemFailures"] == []
    assert len(env.sink.wait_for(1, timeout=1.0)) == 1
    assert waiting(env) == [body]
    assert invoke(env, body) == []
    got = env.sink.wait_for(4, timeout=1.0)
    assert sorted(r.rcpt_tos[0] for r in got) == ["u0@example.org", "u1@example.org",
                                                 "u2@example.org"]


def test_refused_address_is_dead_lettered_alone(env: SimpleNamespace) -> None:
    env.sink.refuse["gone@example.org"] = "550 5.1.1 no such user"
    body = payload("email", [note("bob", "bob@example.org"),
                             note("gone", "gone@example.org"),
                             note("eve", "eve@x, victim@example.org")], id=mid(env))
    assert invoke(env, body) == []
    assert [r.rcpt_tos for r in env.sink.wait_for(1)] == [["bob@example.org"]]
    dead = dead_letters(env)
    assert sorted(d["body"]["notifications"][0]["user"] for d in dead) == ["eve", "gone"]
    assert any("550" in d["error"] for d in dead)
    assert all(d["body"]["v"] == 1 and d["body"]["message"]["id"] == mid(env) for d in dead)
    assert env.app.totals["dead-lettered"] >= 2


def test_a_refused_digest_counts_as_dead_lettered_not_as_digested(
        env: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A digest full at its count goes out within the invocation; its address refused,
    its items are dead-lettered, and counted so (DeadLettered), not as sent (Digested)."""
    from fmn import db
    from fmn.prefs import Destination, Digest, User

    url = f"sqlite:///{tmp_path / 'prefs.sqlite'}"
    engine = db.make_engine(url)
    db.upgrade(engine)
    db.save_user(engine, User("gone", True, (Destination(
        "d9", "email", "gone@example.org", True, Digest(3600, 2)),)))
    monkeypatch.setenv("FMN_DATABASE_URL", url)  # a digest checks its destination there
    env.app.reset()
    env.sink.refuse["gone@example.org"] = "550 5.1.1 no such user"
    before = Counter(env.app.totals)  # totals since the process started
    bodies = [payload("email", [note("gone", "gone@example.org", "d9", digest=(3600, 2))],
                      id=mid(env, n)) for n in range(2)]
    assert invoke(env, *bodies) == []
    assert len(dead_letters(env)) == 2
    counted = Counter(env.app.totals)
    counted.subtract(before)
    assert counted["dead-lettered"] == 2 and counted["digested"] == 0
    assert env.sink.messages == []


def test_digests_full_after_a_record_wait_once_the_invocation_is_out_of_time(
        env: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The digests a record fills go out after its items, while the invocation has time:
    here each mail takes 10 s of a 100 s invocation, which starts nothing in its last
    25 s.  The rest stays due, and the schedule's flush sends it, each digest once."""
    from types import SimpleNamespace as Context

    from fmn import db
    from fmn.prefs import Destination, Digest, User

    url = f"sqlite:///{tmp_path / 'prefs.sqlite'}"
    engine = db.make_engine(url)
    db.upgrade(engine)
    people = [f"p{i}" for i in range(12)]
    for person in people:
        db.save_user(engine, User(person, True, (Destination(
            "d9", "email", f"{person}@example.org", True, Digest(3600, 1)),)))
    monkeypatch.setenv("FMN_DATABASE_URL", url)
    env.app.reset()
    late = Context(**{**vars(context("send_email")),
                      "get_remaining_time_in_millis": lambda: 100_000 - 10_000 * env.sink.count})
    body = payload("email", [note(p, f"{p}@example.org", "d9", digest=(3600, 1))
                             for p in people], id=mid(env))
    result = env.app.handle_email(sqs_event([body], f"fmn-t{env.tag}-email"), late)
    assert result == {"batchItemFailures": []}
    assert env.sink.count == 8  # the ninth would have started with 20 s left
    left = iter([60_000] + [10_000] * 100)  # the schedule's run watches its deadline too
    ending = Context(**{**vars(context("send_email")),
                        "get_remaining_time_in_millis": lambda: next(left)})
    assert env.app.flush_digests_now(ending) == 0 and env.sink.count == 8
    assert env.app.flush_digests_now(context("send_email")) == 4
    got = sorted(r.rcpt_tos[0] for r in env.sink.wait_for(12))
    assert got == sorted(f"{p}@example.org" for p in people)
    assert env.app.flush_digests_now(context("send_email")) == 0


def test_a_redriven_dead_letter_is_sent_once_the_relay_is_fixed(env: SimpleNamespace) -> None:
    env.sink.refuse["gone@example.org"] = "550 5.1.1 mailbox unavailable"
    body = payload("email", [note("bob", "bob@example.org"), note("gone", "gone@example.org")],
                   id=mid(env))
    assert invoke(env, body) == []
    assert [r.rcpt_tos for r in env.sink.wait_for(1)] == [["bob@example.org"]]
    (dead,) = dead_letters(env)
    env.sink.refuse.clear()  # the relay is fixed: re-drive the dead-letter queue
    assert invoke(env, orjson.dumps(dead["body"]).decode()) == []
    got = env.sink.wait_for(2)
    assert sorted(r.rcpt_tos[0] for r in got) == ["bob@example.org", "gone@example.org"]
    assert invoke(env, orjson.dumps(dead["body"]).decode()) == []  # a redrive redelivered
    assert len(env.sink.wait_for(3, timeout=1.0)) == 2


def test_transient_refusal_leaves_the_record_to_retry(env: SimpleNamespace) -> None:
    env.sink.refuse["later@example.org"] = "451 4.3.0 try again later"
    body = payload("email", [note("bob", "bob@example.org"),
                             note("later", "later@example.org")], id=mid(env))
    assert invoke(env, body) == ["m0"]
    assert dead_letters(env) == []
    env.sink.refuse.clear()
    assert invoke(env, body) == []
    got = env.sink.wait_for(2)
    assert sorted(r.rcpt_tos[0] for r in got) == ["bob@example.org", "later@example.org"]


def test_smtp_server_away_is_retryable(env: SimpleNamespace,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from fmn.local.stack import free_port

    monkeypatch.setenv("FMN_SMTP_URL", f"smtp://127.0.0.1:{free_port()}")
    env.app.reset()
    body = payload("email", [note("bob", "bob@example.org")], id=mid(env))
    assert invoke(env, body) == ["m0"]
    assert dead_letters(env) == []


def test_an_unreadable_payload_is_dead_lettered_at_once(env: SimpleNamespace) -> None:
    good = payload("email", [note("bob", "bob@example.org")], id=mid(env))
    assert invoke(env, "not json", good) == []
    assert len(env.sink.wait_for(1)) == 1
    got = env.sqs.receive_message(QueueUrl=env.urls.dlq_url, MaxNumberOfMessages=10,
                                  MessageAttributeNames=["All"])["Messages"]
    assert [m["Body"] for m in got] == ["not json"]
    assert "not JSON" in got[0]["MessageAttributes"]["error"]["StringValue"]


def test_ses_through_the_moto_server(env: SimpleNamespace,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from moto.ses.models import ses_backends

    ses = boto3.client("ses")
    ses.verify_email_identity(EmailAddress="notifications@fedoraproject.org")
    monkeypatch.setenv("FMN_MAIL_TRANSPORT", "ses")
    env.app.reset()
    body = payload("email", [note("bob", "bob@example.org")], id=mid(env))
    assert invoke(env, body) == []
    assert invoke(env, body) == []  # a redelivery
    assert env.sink.messages == []
    sent = [m for m in ses_backends["123456789012"]["us-east-1"].sent_messages
            if mid(env).encode() in getattr(m, "raw_data", "").encode()]
    assert len(sent) == 1
    import email
    import email.policy

    msg = email.message_from_string(sent[0].raw_data, policy=email.policy.default)
    assert msg["X-Fedmsg-Id"] == mid(env) and msg["List-Unsubscribe-Post"]
    assert msg["To"] == "bob@example.org"


def test_one_deferred_recipient_does_not_hold_the_others_up(env: SimpleNamespace) -> None:
    env.sink.refuse["full@example.org"] = "452 4.2.2 mailbox full"
    body = payload("email", [note("full", "full@example.org"), note("bob", "bob@example.org"),
                             note("carol", "carol@example.org")], id=mid(env))
    assert invoke(env, body) == ["m0"]  # comes back for the deferred one
    assert sorted(r.rcpt_tos[0] for r in env.sink.wait_for(2)) == [
        "bob@example.org", "carol@example.org"]
    env.sink.refuse.clear()
    assert invoke(env, body) == []
    got = env.sink.wait_for(3)
    assert sorted(r.rcpt_tos[0] for r in got) == [
        "bob@example.org", "carol@example.org", "full@example.org"]  # each exactly once
    assert dead_letters(env) == []


def test_a_4xx_at_the_end_of_data_defers_that_recipient_alone(env: SimpleNamespace) -> None:
    """A server that checks the mailbox only after DATA: the payload's other recipients
    went untried (the whole record retried, then dead-lettered with them in it)."""
    env.sink.refuse_data["full@example.org"] = "452 4.2.2 mailbox full"
    body = payload("email", [note("alice", "alice@example.org"),
                             note("full", "full@example.org"), note("bob", "bob@example.org"),
                             note("carol", "carol@example.org")], id=mid(env))
    assert invoke(env, body) == ["m0"]  # comes back for the deferred one
    assert sorted(r.rcpt_tos[0] for r in env.sink.wait_for(3)) == [
        "alice@example.org", "bob@example.org", "carol@example.org"]
    env.sink.refuse_data.clear()
    assert invoke(env, body) == []
    assert sorted(r.rcpt_tos[0] for r in env.sink.wait_for(4)) == [
        "alice@example.org", "bob@example.org", "carol@example.org",
        "full@example.org"]  # each exactly once
    assert dead_letters(env) == []


def test_a_server_wide_4xx_at_the_end_of_data_stops_the_payload(env: SimpleNamespace) -> None:
    """Insufficient storage is the server's state, not one mailbox's: the payload stops
    there rather than push every other mail through DATA to be refused."""
    for user in ("alice", "bob", "carol"):
        env.sink.refuse_data[f"{user}@example.org"] = "452 4.3.1 insufficient system storage"
    body = payload("email", [note(u, f"{u}@example.org") for u in ("alice", "bob", "carol")],
                   id=mid(env))
    assert invoke(env, body) == ["m0"]
    assert env.sink.count == 0 and env.sink.data_refused == 1  # one tried, then stopped
    env.sink.refuse_data.clear()
    assert invoke(env, body) == []
    assert sorted(r.rcpt_tos[0] for r in env.sink.wait_for(3)) == [
        "alice@example.org", "bob@example.org", "carol@example.org"]


def test_an_unforeseen_failure_dead_letters_that_item_alone(
        env: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    sender = env.app.function.get("send")
    real = sender.render

    def render(item: Any) -> Any:
        if item.user == "odd":
            raise KeyError("a case nobody foresaw")
        return real(item)

    monkeypatch.setattr(sender, "render", render)
    body = payload("email", [note("odd", "odd@example.org"), note("bob", "bob@example.org")],
                   id=mid(env))
    assert invoke(env, body) == []
    assert [r.rcpt_tos for r in env.sink.wait_for(1)] == [["bob@example.org"]]
    [dead] = dead_letters(env)
    assert dead["body"]["notifications"][0]["user"] == "odd" and "KeyError" in dead["error"]
