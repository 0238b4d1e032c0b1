"""The notification payload (fmn.pipeline.notifications) and the match core (fmn.pipeline.match).

Packing: a message followed by 10,000 users packs into a handful of bodies,
each under the SQS limit, that unpack to exactly the same notifications;
hostile message fields travel safely as capped JSON; bad bodies are
refused.  The core: typed errors for a bad envelope, a bad record, a claim
that does not verify and a dependency that fails.
"""

from __future__ import annotations

import hashlib
import json

import orjson
import pytest

from fmn.errors import PermanentError, RetryableError, SnapshotUnavailable
from fmn.matcher.base import Notification
from fmn.message import Message
from fmn.pipeline.envelope import Claim, Envelope, InvalidEnvelope, make_claim
from fmn.pipeline.match import InvalidClaim, match_record, send_batches
from fmn.pipeline.notifications import (
    MAX_BODY_BYTES,
    MAX_NAMES,
    MAX_TEXT_CHARS,
    SQS_MAX_BYTES,
    InvalidPayload,
    pack,
    unpack,
)

pytestmark = pytest.mark.unit

MESSAGE = Message(id="2024-abc", topic="org.fedoraproject.prod.buildsys.build.state.change",
                  app_name="koji", agent_name="alice", usernames=frozenset({"alice", "bob"}),
                  rpms=frozenset({"kernel"}), modules=frozenset({"kernel-mod"}), severity=20,
                  summary="alice's kernel-6.1 completed", url="https://koji.example/1",
                  sent_at="2024-01-01T00:00:00+00:00")


def followers(n: int, protocol: str = "email") -> list[Notification]:
    return [Notification(MESSAGE.id, f"user{i:05d}", protocol, f"user{i:05d}@example.org",
                         "d1", ("r1", f"rule-{i % 7}")) for i in range(n)]


def as_tuples(bodies: list[str]) -> list[tuple[str, str, str, str, tuple[str, ...]]]:
    out = []
    for body in bodies:
        info, items = unpack(body)
        out += [(info["id"], n["user"], n["address"], n["destination"], tuple(n["rules"]))
                for n in items]
    return out


def test_ten_thousand_followers_pack_into_a_few_bodies_and_back() -> None:
    notes = followers(10_000)
    bodies = pack(MESSAGE, notes, "email")
    assert 1 < len(bodies) <= 6
    assert all(len(b.encode()) <= MAX_BODY_BYTES < SQS_MAX_BYTES for b in bodies)
    assert as_tuples(bodies) == [(n.message_id, n.user, n.address, n.destination, n.rules)
                                 for n in notes]
    parts = [json.loads(b) for b in bodies]
    assert [(p["part"], p["parts"]) for p in parts] == [(i, len(bodies))
                                                        for i in range(1, len(bodies) + 1)]
    info, _ = unpack(bodies[0], backend="email")
    assert info == {"id": MESSAGE.id, "topic": MESSAGE.topic, "app": "koji", "agent": "alice",
                    "summary": MESSAGE.summary, "url": MESSAGE.url, "sent_at": MESSAGE.sent_at,
                    "severity": "INFO", "usernames": ["alice", "bob"], "num_usernames": 2,
                    "packages": ["kernel", "kernel-mod"], "num_packages": 2}


def test_each_body_is_as_full_as_the_limit_allows() -> None:
    bodies = pack(MESSAGE, followers(10_000), "irc", max_bytes=20_000)
    sizes = [len(b.encode()) for b in bodies]
    assert all(s <= 20_000 for s in sizes)
    assert all(s > 19_000 for s in sizes[:-1])  # greedy: only the last one is short


def test_a_cap_per_body_and_no_notifications() -> None:
    assert [len(unpack(b)[1]) for b in pack(MESSAGE, followers(25), "sse",
                                            max_notifications=10)] == [10, 10, 5]
    assert pack(MESSAGE, [], "email") == []
    with pytest.raises(ValueError):
        pack(MESSAGE, followers(1), "pigeon")


def test_a_hostile_message_is_carried_as_capped_json() -> None:
    summary = ("Subject: pwned\r\nBcc: everyone@example.org\r\n\x00\x1b[31m" * 400)[:20_000]
    hostile = Message(id="evil", topic="t", summary=summary, url="https://x/" + "\n" * 20_000,
                      usernames=frozenset(f"u{i}" for i in range(5_000)),
                      rpms=frozenset(f"p{i}" * 300 for i in range(5_000)),
                      agent_name="\ud800lone surrogate\uffff")
    bodies = pack(hostile, followers(3), "email")
    assert len(bodies) == 1
    body = bodies[0]
    assert "\r" not in body and "\n" not in body and "\x00" not in body  # escaped by JSON
    body.encode()  # valid UTF-8: no lone surrogate left
    info, items = unpack(body)
    assert len(items) == 3
    assert info["summary"] is not None and info["summary"] == summary[: len(info["summary"])]
    assert len(info["summary"]) <= MAX_TEXT_CHARS and "\r\nBcc:" in info["summary"]
    assert len(info["usernames"]) <= MAX_NAMES and info["num_usernames"] == 5_000
    assert len(info["packages"]) <= MAX_NAMES and info["num_packages"] == 5_000
    assert info["agent"] == "\ufffdlone surrogate\ufffd"
    assert len(body.encode()) <= 80 * 1024  # the header stays bounded


@pytest.mark.parametrize("body", [
    "not json", "[]", "{}", '{"v": 2}',
    '{"v": 1, "backend": "pigeon", "message": {}, "notifications": []}',
    '{"v": 1, "backend": "email", "message": {"id": "x"}, "notifications": []}',
    '{"v": 1, "backend": "email", "message": MSG, "notifications": {}}',
    '{"v": 1, "backend": "email", "message": MSG, "notifications": [{"user": "a"}]}',
    '{"v": 1, "backend": "email", "message": MSG, "notifications": [{"user": "a", '
    '"address": "a@x", "destination": "d1", "rules": "r1"}]}',
    # every field a sender reads has its type: a sender writes the message again
    '{"v": 1, "backend": "email", "message": MSG_summary=[[1]], "notifications": []}',
    '{"v": 1, "backend": "email", "message": MSG_agent={"a": 1}, "notifications": []}',
    '{"v": 1, "backend": "email", "message": MSG_sent_at=12, "notifications": []}',
    '{"v": 1, "backend": "email", "message": MSG_num_packages=true, "notifications": []}',
    '{"v": 1, "backend": "email", "message": MSG_num_usernames=-1, "notifications": []}',
    '{"v": 1, "backend": "email", "message": MSG_num_usernames=1.5, "notifications": []}',
])
def test_bad_bodies_are_refused(body: str) -> None:
    msg = json.loads(pack(MESSAGE, followers(1), "email")[0])["message"]
    if "MSG_" in body:  # MSG_<field>=<JSON value>: the message with that field changed
        start, _, rest = body.partition("MSG_")
        field, _, rest = rest.partition("=")
        value, _, end = rest.partition(", ")
        body = start + json.dumps({**msg, field: json.loads(value)}) + ", " + end
    with pytest.raises(InvalidPayload) as info:
        unpack(body.replace("MSG", json.dumps(msg)))
    assert isinstance(info.value, PermanentError)


def test_a_message_field_no_sender_reads_does_not_travel_on() -> None:
    """A sender writes the message again (a dead letter, a digest item): a field it
    does not know, however deep, is dropped on reading, never written again."""
    doc = json.loads(pack(MESSAGE, followers(1), "email")[0])
    nested: object = "deep"
    for _ in range(600):  # orjson reads 1,024 levels and writes only 255
        nested = [nested]
    doc["message"]["extra"] = nested
    info, items = unpack(json.dumps(doc))
    assert "extra" not in info and len(items) == 1
    assert set(info) == set(json.loads(pack(MESSAGE, followers(1), "email")[0])["message"])


def test_a_payload_for_another_backend_is_refused() -> None:
    body = pack(MESSAGE, followers(1, "irc"), "irc")[0]
    assert len(unpack(body, backend="irc")[1]) == 1
    with pytest.raises(InvalidPayload):
        unpack(body, backend="email")


def test_send_batches_respect_the_sqs_request_limits() -> None:
    small = ["x" * 1000] * 25
    assert send_batches(small) == [list(range(10)), list(range(10, 20)), list(range(20, 25))]
    big = ["y" * 200_000] * 3
    assert [len(b) for b in send_batches(big)] == [1, 1, 1]
    assert send_batches([]) == []


# --- the match core, on one golden-like record and a fake matcher ---

RECORD = orjson.dumps({
    "topic": "org.fedoraproject.prod.buildsys.build.state.change",
    "msg_id": "2024-0001", "timestamp": 1704067200, "i": 1, "username": "apache",
    "msg": {"name": "kernel", "owner": "alice", "new": 1, "old": 0, "version": "6.1",
            "release": "1.fc40", "build_id": 1, "task_id": 2, "attribute": "state",
            "instance": "primary", "epoch": None},
})


class FakeMatcher:
    name = "fake"

    def __init__(self, fail: Exception | None = None) -> None:
        self.fail = fail
        self.seen: list[Message] = []

    def describe(self, n: Notification) -> tuple[tuple[str, ...], tuple[int, int] | None]:
        return tuple(f"rule {r}" for r in n.rules), (60, 5) if n.protocol == "email" else None

    def match(self, message: Message) -> list[Notification]:
        self.seen.append(message)
        if self.fail is not None:
            raise self.fail
        return [Notification(message.id, "alice", "email", "alice@example.org", "d1", ("r1",)),
                Notification(message.id, "alice", "irc", "alice", "d2", ("r1",)),
                Notification(message.id, "bob", "irc", "bob", "d1", ("r2",))]


def no_claims(claim: Claim) -> bytes:
    raise AssertionError("no claim expected")


def test_match_record_groups_and_packs_by_backend() -> None:
    matcher = FakeMatcher()
    body = Envelope.wrap("fedmsg", "tcp://hub", RECORD).encode()
    result = match_record(body, matcher, no_claims)
    assert len(matcher.seen) == 1 and result.message_id == "2024-0001"
    assert result.notifications == {"email": 1, "irc": 2} and result.total == 3
    assert [n["user"] for b in result.bodies["irc"] for n in unpack(b, "irc")[1]] == ["alice",
                                                                                      "bob"]
    # what the sender needs beyond routing: rule names, the digest setting
    [email] = unpack(result.bodies["email"][0], "email")[1]
    assert email["rule_names"] == ["rule r1"]
    assert email["digest"] == {"interval_s": 60, "max_count": 5}
    assert all("digest" not in n for b in result.bodies["irc"] for n in unpack(b, "irc")[1])


def test_a_claim_is_fetched_and_verified() -> None:
    claim = make_claim("bucket", "key", RECORD)
    body = Envelope.wrap("fedmsg", "tcp://hub", RECORD).with_claim(claim).encode()
    result = match_record(body, FakeMatcher(), lambda c: RECORD)
    assert result.claimed and result.total == 3
    with pytest.raises(InvalidClaim):
        match_record(body, FakeMatcher(), lambda c: RECORD + b" ")
    with pytest.raises(InvalidClaim):
        match_record(body, FakeMatcher(), lambda c: RECORD.replace(b"alice", b"alicf"))
    bad = Claim("bucket", "key", len(RECORD), hashlib.sha256(b"other").hexdigest())
    with pytest.raises(PermanentError):
        match_record(Envelope("fedmsg", "", "", None, bad).encode(), FakeMatcher(),
                     lambda c: RECORD)


def test_dependencies_failing_are_retryable() -> None:
    claim = make_claim("bucket", "key", RECORD)
    body = Envelope.wrap("fedmsg", "tcp://hub", RECORD).with_claim(claim).encode()

    def s3_down(c: Claim) -> bytes:
        raise ConnectionError("S3 is away")

    with pytest.raises(RetryableError):
        match_record(body, FakeMatcher(), s3_down)
    inline = Envelope.wrap("fedmsg", "tcp://hub", RECORD).encode()
    with pytest.raises(SnapshotUnavailable):
        match_record(inline, FakeMatcher(SnapshotUnavailable("no snapshot")), no_claims)
    with pytest.raises(RetryableError):
        match_record(inline, FakeMatcher(OSError("redis reset")), no_claims)


@pytest.mark.parametrize("body", [
    "not json at all",
    '{"v": 1, "bus": "carrier-pigeon", "record": {}}',
    Envelope.wrap("fedmsg", "tcp://hub", b"\x00not a record").encode(),
    Envelope.wrap("fedmsg", "tcp://hub", b'{"no": "topic"}').encode(),
])
def test_bad_input_is_permanent(body: str) -> None:
    with pytest.raises(PermanentError):
        match_record(body, FakeMatcher(), no_claims)
    with pytest.raises(InvalidEnvelope):
        match_record("[]", FakeMatcher(), no_claims)


def _message(i: int) -> Message:
    return Message(id=f"m{i}", topic=MESSAGE.topic, app_name="koji", agent_name="alice",
                   usernames=frozenset({"alice"}), rpms=frozenset({"kernel"}), severity=20,
                   summary=f"build {i}", url=None, sent_at="2024-01-01T00:00:00+00:00")


def test_a_batch_of_messages_travels_in_few_bodies_that_read_back_the_same() -> None:
    from fmn.delivery.base import deliveries
    from fmn.pipeline.notifications import combine, pack_counted, unpack_all

    parts = []
    for i in range(100):
        notes = [Notification(f"m{i}", f"u{j}", "email", f"u{j}@example.org", "d1", ("r1",))
                 for j in range(i % 4)]
        parts += pack_counted(_message(i), notes, "email")
    assert len(parts) == 75  # a message with no notification has no body
    combined = combine(parts, "email", max_notifications=200)
    assert len(combined) == 1  # 150 notifications, a few KiB: one SQS message
    assert sorted(p for _, positions in combined for p in positions) == list(range(75))
    (body, _), = combined
    assert orjson.loads(body)["v"] == 2
    got = [(info["id"], n["user"]) for info, items in unpack_all(body, "email") for n in items]
    want = [(info["id"], n["user"]) for b, _ in parts for info, items in [unpack(b)]
            for n in items]
    assert got == want
    assert [(d.message_id, d.user) for d in deliveries(body, "email")] == want
    # the caps: notifications per body, and bytes
    assert all(sum(parts[p][1] for p in positions) <= 40
               for _, positions in combine(parts, "email", max_notifications=40))
    small = combine(parts, "email", max_bytes=4000)
    assert len(small) > 1 and all(len(b.encode()) <= 4000 for b, _ in small)


def test_a_batch_body_is_checked_like_its_parts() -> None:
    from fmn.pipeline.notifications import combine, pack_counted, unpack_all

    parts = pack_counted(MESSAGE, followers(3), "email") + \
        pack_counted(_message(1), followers(2), "email")
    (body, _), = combine(parts, "email")
    with pytest.raises(InvalidPayload):
        unpack_all(body, "irc")
    with pytest.raises(InvalidPayload):
        unpack(body)  # a version-1 reader refuses it rather than half-reading it
    bad = orjson.loads(body)
    bad["payloads"][1]["notifications"][0]["user"] = 7
    with pytest.raises(InvalidPayload):
        unpack_all(orjson.dumps(bad))
    bad["payloads"] = []
    with pytest.raises(InvalidPayload):
        unpack_all(orjson.dumps(bad))
    # one part alone stays a version-1 body
    (single, positions), = combine(parts[:1], "email")
    assert positions == [0] and orjson.loads(single)["v"] == 1


def test_a_recipient_with_100_long_rule_names_does_not_sink_the_others() -> None:
    # valid preferences: 100 rules, each named with 512 four-byte characters, all firing
    # on a message with a large (capped) header; the names alone were 205 KB
    from fmn.pipeline.notifications import MAX_RULE_NAMES_CHARS

    rules = tuple(f"r-{i:08x}" for i in range(100))
    name = "\U0001f600" * 512
    message = Message(id="m1", topic="org.fedoraproject.prod.x", summary="\u4e00" * 10_000,
                      usernames=frozenset(f"user{i:03d}" + "x" * 200 for i in range(100)))
    notifications = [Notification("m1", "alice", "email", "alice@example.org", "d1", rules),
                     Notification("m1", "bob", "email", "bob@example.org", "d1", rules[:1])]
    bodies = pack(message, notifications, "email",
                  describe=lambda n: (tuple(name for _ in n.rules), None))
    assert all(len(b.encode()) <= MAX_BODY_BYTES for b in bodies)
    items = [item for b in bodies for item in unpack(b)[1]]
    assert [i["user"] for i in items] == ["alice", "bob"]
    alice, bob = items
    assert alice["rules"] == list(rules)  # routing untouched; only the names shortened
    assert sum(map(len, alice["rule_names"])) <= MAX_RULE_NAMES_CHARS
    assert all(n.endswith("\u2026") and n[0] == "\U0001f600" for n in alice["rule_names"])
    assert bob["rule_names"] == [name]  # one name alone is within the limit
