"""The live feed without sockets: events and frames, the memory feed, tokens, the endpoint.

What a user would notice: a hostile summary (CR/LF, HTML, ANSI escapes,
10,000 characters) arrives as one safe SSE event that still says exactly
what the message said; a feed keeps its newest events and resumes after
any of them; a forged, expired, wrong-purpose or someone else's token gets
nothing.  The endpoint (functions/sse/stream.py) runs in-process on the
memory feed through httpx's ASGI transport, with responses that end after
a moment so their whole body can be read.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from fakes import FakeClock

from fmn import auth
from fmn.delivery.base import Delivery
from fmn.delivery.feed import (
    EVENT_VERSION,
    MAX_SUMMARY_CHARS,
    MAX_URL_CHARS,
    START,
    FeedEvent,
    InvalidEventId,
    MemoryFeed,
    cursor_frame,
    event_data,
    feed_message_id,
    live_frame,
    parse_event_id,
    retry_frame,
    sse_frame,
)
from fmn.delivery.text import clean, shorten
from fmn.errors import PermanentError
from fmn.local.stack import load_module
from fmn.pipeline.notifications import MAX_TEXT_CHARS
from fmn.settings import Settings

pytestmark = pytest.mark.unit

SECRET = "unit-test-secret"
STREAM_PATH = Path(__file__).resolve().parents[2] / "functions" / "sse" / "stream.py"
HOSTILE = ("line one\r\nid: 999-0\nevent: admin\r\ndata: {\"forged\": true}\r"
           "<script>alert('x')</script><img src=x onerror=alert(1)>"
           "\x1b[31mred\x1b[0m\x1b]0;title\x07\x00\u2028\u2029\u0085")
HOSTILE_SUMMARY = (HOSTILE * (MAX_TEXT_CHARS // len(HOSTILE) + 1))[:MAX_TEXT_CHARS]


def delivery(summary: Any = "alice's kernel-6.1-1.fc40 completed", user: str = "alice",
             msg_id: str = "2024-0001", **message: Any) -> Delivery:
    info: dict[str, Any] = {
        "id": msg_id, "topic": "org.fedoraproject.prod.buildsys.build.state.change",
        "app": "koji", "agent": "alice", "summary": summary,
        "url": "https://koji.fedoraproject.org/koji/buildinfo?buildID=1",
        "sent_at": "2024-01-01T00:00:00+00:00", "severity": "INFO",
        "usernames": ["alice"], "num_usernames": 1, "packages": ["kernel"],
        "num_packages": 1}
    info.update(message)
    return Delivery(backend="sse", message=info, user=user, address=user, destination="d1",
                    rules=("r1", "r7"), rule_names=("My builds", "Kernel"))


def frame_lines(frame: bytes) -> list[str]:
    text = frame.decode()
    assert "\r" not in text
    assert text.endswith("\n\n")
    return text[:-2].split("\n")


# -- the event and its frame ------------------------------------------------------


def test_an_event_carries_what_the_feed_shows() -> None:
    doc = json.loads(event_data(delivery(), received_at=1704067200.5))
    assert doc == {
        "v": EVENT_VERSION, "message_id": "2024-0001",
        "topic": "org.fedoraproject.prod.buildsys.build.state.change", "app": "koji",
        "agent": "alice", "summary": "alice's kernel-6.1-1.fc40 completed",
        "url": "https://koji.fedoraproject.org/koji/buildinfo?buildID=1",
        "sent_at": "2024-01-01T00:00:00+00:00", "severity": "INFO",
        "rules": ["r1", "r7"], "rule_names": ["My builds", "Kernel"],
        "received_at": "2024-01-01T00:00:00.500+00:00"}


def test_a_hostile_summary_is_one_safe_event_that_says_the_same() -> None:
    data = event_data(delivery(HOSTILE_SUMMARY, msg_id=HOSTILE_SUMMARY), received_at=0)
    for raw in ("\r", "\n", "\x1b", "\x00", "\x07", "\u2028", "\u2029", "\u0085"):
        assert raw not in data
    lines = frame_lines(sse_frame(FeedEvent("1704067200000-0", data)))
    # id, event, one data line: the text's "id:"/"event:" starts no field
    assert [line.split(":", 1)[0] for line in lines] == ["id", "event", "data"]
    assert lines[:2] == ["id: 1704067200000-0", "event: notification"]
    doc = json.loads(lines[2].removeprefix("data: "))
    # an id like that is carried as what is left of its start and a hash of the whole
    assert doc["message_id"] == feed_message_id(HOSTILE_SUMMARY) != HOSTILE_SUMMARY
    assert doc["message_id"].endswith(
        "#sha256:" + hashlib.sha256(HOSTILE_SUMMARY.encode()).hexdigest()[:32])
    assert len(HOSTILE_SUMMARY) == 10_000 and len(data.encode()) < 5_000
    # what a person reads is cleaned as mail and IRC are, and capped
    assert doc["summary"] == shorten(clean(HOSTILE_SUMMARY), MAX_SUMMARY_CHARS)
    assert doc["summary"].startswith("line one id: 999-0 event: admin data:")


def test_text_a_person_reads_has_no_bidi_overrides_and_stays_small() -> None:
    doc = json.loads(event_data(delivery(
        "FEDORA-2024-1 \u202e\u2066gnp.exe\u2069 was \u200fapproved\x1b[8m hidden",
        topic="org.\u202efedora\x01", agent="al\u2066ice", app="ko\x01ji"), 0))
    assert doc["summary"] == "FEDORA-2024-1 gnp.exe was approved hidden"
    assert (doc["topic"], doc["agent"], doc["app"]) == ("org.fedora", "alice", "koji")
    # 10,000 control characters (six bytes each in JSON) were a 60 kB event, a feed
    # of 1000 of them 60 MB a person in Redis
    for text in ("\x01" * 10_000, "\U0001F600" * 10_000, '"\\' * 5_000, "\u2028" * 10_000,
                 "\x85" * 10_000):
        assert len(event_data(delivery(text), 0).encode()) < 5_000
        assert len(event_data(delivery(msg_id=text), 0).encode()) < 5_000
    # Fedora's ids are carried as they are
    for plain_id in ("2024-0001", "4064cf6b-ab57-5af1-85e7-af7b9188328b", "a\"b\\c é"):
        assert json.loads(event_data(delivery(msg_id=plain_id), 0))["message_id"] == plain_id


def test_untrusted_fields_are_capped_typed_and_links_are_web_links() -> None:
    doc = json.loads(event_data(delivery(
        summary="x" * 50_000, agent=["not", "a", "name"], app="a" * 1000,
        url="javascript:alert(1)", severity={"not": "hashable"}, sent_at=12), received_at=0))
    assert len(doc["summary"]) == MAX_SUMMARY_CHARS and len(doc["app"]) == 255
    assert doc["agent"] is None and doc["url"] is None
    assert doc["severity"] is None and doc["sent_at"] is None
    # the time is shown as text when it is not a date: cleaned like every shown field
    shown = json.loads(event_data(delivery(
        sent_at="\u202e\u2066yesterday,\r\nsigned by admin\x1b[31m"), 0))["sent_at"]
    assert shown == "yesterday, signed by admin"
    assert json.loads(event_data(delivery(url="HTTP://example.org/x"), 0))["url"] \
        == "HTTP://example.org/x"
    # a link is carried as it is, or not at all: never cut or cleaned into another
    for bad in ("data:text/html,<script>", " javascript:x", "//evil.example", "ftp://x",
                "https://example.org/" + "u" * MAX_URL_CHARS, "https://evil.example/\u202egro",
                "https://example.org/\x00", "https://example.org/a\r\nb"):
        assert json.loads(event_data(delivery(url=bad), 0))["url"] is None


    assert json.loads(event_data(delivery(severity="<b>"), 0))["severity"] is None
    assert json.loads(event_data(delivery(summary=None), 0))["summary"] is None
    assert json.loads(event_data(delivery(summary="a\ud800b"), 0))["summary"] == "a\ufffdb"


def test_data_with_line_breaks_never_starts_a_field() -> None:
    # Written to Redis by something other than event_data: still one event.
    lines = frame_lines(sse_frame(FeedEvent("5-1", "a\r\nid: 7-0\revent: x\ndata: y")))
    assert lines == ["id: 5-1", "event: notification", "data: a", "data: id: 7-0",
                     "data: event: x", "data: data: y"]


@pytest.mark.parametrize("bad", ["", "5", "5-", "-1", "a-1", "1-2\nid: 3-0", " 1-2",
                                 "1-2 ", "1-2-3", "99999999999999999999-0", "1-" + "9" * 21,
                                 "\u0661-\u0662", "1\uff10-0"])
def test_malformed_event_ids_are_refused(bad: str) -> None:
    with pytest.raises(InvalidEventId) as caught:
        parse_event_id(bad)
    assert isinstance(caught.value, PermanentError)
    with pytest.raises(InvalidEventId):
        sse_frame(FeedEvent(bad, "{}"))


def test_frames_take_only_plain_event_names_and_cursors_fire_nothing() -> None:
    assert parse_event_id("1704067200000-12") == (1704067200000, 12)
    with pytest.raises(ValueError):
        sse_frame(FeedEvent("1-0", "{}"), name="x\nid: 2-0")
    assert cursor_frame("7-3") == b"id: 7-3\n\n" and retry_frame(1500) == b"retry: 1500\n\n"
    assert cursor_frame(START) == b"id: 0-0\n\n"
    assert live_frame("7-3") == b'event: live\ndata: {"v":1,"after":"7-3"}\n\n'
    with pytest.raises(InvalidEventId):
        live_frame("7-3\nid: 9-0")


# -- the memory feed ---------------------------------------------------------------


def test_the_memory_feed_keeps_the_newest_events_and_resumes_exactly() -> None:
    clock = FakeClock(1000.0)
    feed = MemoryFeed(maxlen=3, max_age_s=60, clock=clock)
    ids = [feed.append("alice", f'{{"n":{n}}}') for n in range(5)]
    feed.append("bob", '{"n":"bob"}')
    assert ids == sorted(ids, key=parse_event_id) and len(set(ids)) == 5
    assert [e.id for e in feed.latest("alice", 10)] == ids[2:]
    assert [e.id for e in feed.latest("alice", 2)] == ids[3:]
    assert [e.id for e in feed.after("alice", ids[2], 10)] == ids[3:]
    assert [e.id for e in feed.after("alice", START, 1)] == ids[2:3]
    assert feed.after("alice", ids[4], 10) == [] and feed.latest("carol", 5) == []
    clock.now += 61  # the age cap: the next append drops what is older than 60 s
    newest = feed.append("alice", '{"n":5}')
    assert [e.id for e in feed.latest("alice", 10)] == [newest]


def test_a_blocked_read_wakes_up_for_a_new_event() -> None:
    feed = MemoryFeed()
    first = feed.append("alice", "{}")
    threading.Timer(0.05, feed.append, ("alice", '{"late":1}')).start()
    got = feed.after("alice", first, 10, block_s=10)
    assert [e.data for e in got] == ['{"late":1}']
    assert feed.after("alice", got[0].id, 10, block_s=0.01) == []


# -- tokens ------------------------------------------------------------------------


def test_a_token_names_its_user_for_its_purpose_only() -> None:
    token = auth.sign("alice", SECRET, "feed")
    assert auth.verify(token, SECRET, "feed", 60) == "alice"
    with pytest.raises(auth.InvalidToken) as caught:
        auth.verify(token, SECRET, "session", 60)
    assert caught.value.reason == "invalid" and isinstance(caught.value, PermanentError)
    session = auth.sign("alice", SECRET, "session")
    with pytest.raises(auth.InvalidToken):
        auth.verify(session, SECRET, "feed", 60)


def tamper(token: str) -> str:
    """The token with one character of its signature changed (a whole base64 digit)."""
    at = len(token) - 10
    return token[:at] + ("A" if token[at] != "A" else "B") + token[at + 1:]


@pytest.mark.parametrize("forge", [
    tamper,
    lambda t: auth.sign("bob", "another-secret", "feed"),          # someone else's key
    lambda t: t.replace(t.split(".")[0], auth.sign("bob", SECRET, "feed").split(".")[0]),
    lambda t: "",
    lambda t: "not-a-token",
])
def test_forged_tokens_are_refused(forge: Any) -> None:
    with pytest.raises(auth.InvalidToken) as caught:
        auth.verify(forge(auth.sign("alice", SECRET, "feed")), SECRET, "feed", 60)
    assert caught.value.reason == "invalid"


def test_an_expired_token_is_refused_and_keys_can_roll() -> None:
    clock = FakeClock(1_700_000_000)
    token = auth.sign("alice", SECRET, "feed", clock=clock)
    clock.now += 60
    assert auth.verify(token, SECRET, "feed", 60, clock=clock) == "alice"
    clock.now += 1
    with pytest.raises(auth.InvalidToken) as caught:
        auth.verify(token, SECRET, "feed", 60, clock=clock)
    assert caught.value.reason == "expired"
    # a new key signs; tokens of the old one still verify while it is listed
    old = auth.sign("alice", SECRET, "feed")
    assert auth.verify(old, [SECRET, "new-secret"], "feed", 60) == "alice"
    with pytest.raises(auth.InvalidToken):
        auth.verify(auth.sign("alice", [SECRET, "new-secret"], "feed"), SECRET, "feed", 60)
    with pytest.raises(ValueError):
        auth.sign("alice", SECRET, "admin")


def test_the_first_credential_present_decides() -> None:
    feed, session = auth.sign("alice", SECRET, "feed"), auth.sign("bob", SECRET, "session")

    def who(**kw: Any) -> str:
        creds = {"authorization": None, "token": None, "session": None, **kw}
        return auth.authenticate(**creds, secret=SECRET)

    assert who(authorization=f"Bearer {feed}", session=session) == "alice"
    assert who(token=feed, session=session) == "alice"
    assert who(session=session) == "bob"
    for bad in ({"authorization": f"Basic {feed}"}, {"authorization": "Bearer "},
                {"authorization": "Bearer x", "token": feed}, {"token": session}):
        with pytest.raises(auth.InvalidToken):
            who(**bad)
    with pytest.raises(auth.InvalidToken) as caught:
        who()
    assert caught.value.reason == "missing"
    url = auth.feed_url("http://127.0.0.1:8001/", "alice", SECRET)
    assert url.startswith("http://127.0.0.1:8001/feed?token=")
    assert auth.verify(url.split("token=")[1], SECRET, "feed", 60) == "alice"


# -- the endpoint, in-process on the memory feed -----------------------------------


@pytest.fixture(scope="module")
def stream() -> ModuleType:
    return load_module(STREAM_PATH, "fmn_sse_stream_unit")


@pytest.fixture
def feed() -> MemoryFeed:
    return MemoryFeed()


class Client:
    """Requests to an ASGI app in-process (httpx's ASGI transport reads responses whole)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        async def call() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://feed") as c:
                return await c.get(path, **kwargs)

        return asyncio.run(call())


@pytest.fixture
def client(stream: ModuleType, feed: MemoryFeed) -> Client:
    # Responses end after 0.3 s, so they can be read whole.
    options = stream.StreamOptions(ping_s=0, block_s=0.05, max_stream_s=0.3, retry_ms=1500)
    return Client(stream.create_app(Settings(secret_key=SECRET), options,
                                    reader=feed.reader(0.01)))


def test_the_endpoint_refuses_the_development_key_in_production(
        stream: ModuleType, feed: MemoryFeed) -> None:
    """It checked nothing: with the public development key anyone could sign a token
    for anyone and read their feed, where the web app refused to start."""
    from fmn.web import UnsafeConfiguration

    with pytest.raises(UnsafeConfiguration, match="FMN_SECRET_KEY"):
        stream.create_app(Settings(env="production"), reader=feed.reader(0.01))
    stream.create_app(Settings(env="production", secret_key=SECRET), reader=feed.reader(0.01))


def parse(body: str) -> list[dict[str, str]]:
    """The frames of an event stream, as field -> value (comments as ':')."""
    frames = []
    for block in body.split("\n\n"):
        if block:
            frames.append(dict(line.split(": ", 1) if not line.startswith(":")
                               else (":", line[1:].strip()) for line in block.split("\n")))
    return frames


def test_the_endpoint_streams_history_then_resumes_after_last_event_id(
        client: Client, feed: MemoryFeed) -> None:
    ids = [feed.append("alice", event_data(delivery(msg_id=f"m{n}"), time.time()))
           for n in range(4)]
    token = auth.sign("alice", SECRET, "feed")
    response = client.get("/feed", params={"token": token, "history": 2})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    frames = parse(response.text)
    assert frames[0] == {"retry": "1500"}
    assert frames[1] == {"id": ids[3]}  # the position: where a reconnect resumes
    assert [(f["id"], f["event"]) for f in frames[2:4]] == [(ids[2], "notification"),
                                                            (ids[3], "notification")]
    assert [json.loads(f["data"])["message_id"] for f in frames[2:4]] == ["m2", "m3"]
    assert frames[4] == {"event": "live", "data": f'{{"v":1,"after":"{ids[3]}"}}'}
    resumed = parse(client.get("/feed", params={"token": token},
                               headers={"Last-Event-ID": ids[0]}).text)
    assert [f.get("id") for f in resumed] == [None, *ids[1:], None]
    assert resumed[-1]["event"] == "live"


def test_the_endpoint_refuses_who_it_cannot_tell_and_other_users(client: Client) -> None:
    alice = auth.sign("alice", SECRET, "feed")
    assert client.get("/healthz").text == "ok"
    for params, headers in [({}, {}), ({"token": "forged"}, {}),
                            ({"token": auth.sign("alice", "wrong-secret", "feed")}, {}),
                            ({"token": auth.sign("alice", SECRET, "session")}, {}),
                            ({}, {"Authorization": "Bearer forged"})]:
        response = client.get("/feed", params=params, headers=headers)
        assert response.status_code == 401, (params, headers)
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert client.get("/feed/bob", params={"token": alice}).status_code == 403
    assert client.get("/feed/alice", params={"token": alice}).status_code == 200
    assert client.get("/feed", headers={"Authorization": f"Bearer {alice}"}).status_code == 200
    session = f"{auth.SESSION_COOKIE}={auth.sign('alice', SECRET, 'session')}"
    assert client.get("/feed/alice", headers={"Cookie": session}).status_code == 200
    assert client.get("/feed/bob", headers={"Cookie": session}).status_code == 403
    assert client.get("/feed", params={"token": alice},
                      headers={"Last-Event-ID": "1-2 id: 3"}).status_code == 400
    assert client.get("/feed", params={"token": alice, "history": "-1"}).status_code == 400
    for history in ("101", "\u00b2", "1.5", ""):
        assert client.get("/feed", params={"token": alice, "history": history}) \
            .status_code == 400


def test_over_https_the_feed_reads_the_host_only_session_cookie(
        stream: ModuleType, feed: MemoryFeed) -> None:
    # a site under a parent domain can set fmn_session beside ours, never __Host-fmn_session
    options = stream.StreamOptions(ping_s=0, block_s=0.05, max_stream_s=0.3, retry_ms=1500)
    client = Client(stream.create_app(
        Settings(secret_key=SECRET, web_url="https://notifications.fedoraproject.org"),
        options, reader=feed.reader(0.01)))
    alice = auth.sign("alice", SECRET, "session")
    mallory = auth.sign("mallory", SECRET, "session")
    ours = f"__Host-{auth.SESSION_COOKIE}={alice}"
    assert client.get("/feed/alice", headers={"Cookie": ours}).status_code == 200
    tossed = f"{auth.SESSION_COOKIE}={mallory}"
    assert client.get("/feed", headers={"Cookie": tossed}).status_code == 401
    assert client.get("/feed/alice", headers={"Cookie": f"{tossed}; {ours}"}).status_code == 200
    # a name the browser does not see as __Host- (a no-break space first) is not ours,
    # whatever comes after it (Starlette's reader strips it and keeps the last value)
    planted = f"\u00a0__Host-{auth.SESSION_COOKIE}={mallory}"
    for header in (planted, f"{ours}; {planted}", f"{planted}; {ours}"):
        got = client.get("/feed/alice", headers={"Cookie": header.encode("latin-1")})
        assert got.status_code == (401 if header == planted else 200), header
