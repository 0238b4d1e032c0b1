"""The live feed for real: Redis streams, the SSE endpoint under uvicorn, the SQS writer.

* The feed store contract runs against the memory fake and Redis alike
  (order, exclusive resume, length and age caps, blocking reads), and the
  async readers against both too.
* The endpoint (functions/sse/stream.py) runs under uvicorn on a free port
  (:func:`fmn.local.http.serve`) and is read with an httpx streaming client
  parsed the way EventSource parses: events arrive with their ids; after a
  disconnect, events appended meanwhile arrive on reconnect with
  ``Last-Event-ID``, each exactly once; keep-alive comments flow; a hostile
  summary arrives as one event; credentials for someone else, or none, get
  nothing; a response that ends (the Lambda timeout) or a server that stops
  loses nothing either.
* The writer (functions/sse/app.py) is driven with Lambda SQS events and
  Powertools idempotency on the same Redis: a payload delivered twice
  appends once, and the feed's length cap holds.

Every test uses its own key prefix or user names and removes its keys.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from fakes import FakeClock
from lambda_events import context, sqs_event
from services import REDIS_URL, redis_client

from fmn import auth
from fmn.delivery.base import Delivery
from fmn.delivery.feed import (
    ENTRY_FIELD,
    MAX_SUMMARY_CHARS,
    START,
    AsyncRedisFeed,
    FeedStore,
    InvalidEventId,
    MemoryFeed,
    RedisFeed,
    event_data,
    feed_message_id,
)
from fmn.delivery.text import clean, shorten
from fmn.errors import RetryableError
from fmn.local.http import ServerHandle, serve
from fmn.local.stack import free_port, load_module
from fmn.redisconn import connect
from fmn.settings import Settings

pytestmark = pytest.mark.integration

FUNCTION = Path(__file__).resolve().parents[2] / "functions" / "sse"
SECRET = "integration-test-secret"
TIMEOUT = httpx.Timeout(5.0)


def load(name: str) -> ModuleType:
    return load_module(FUNCTION / f"{name}.py", f"fmn_sse_{name}_test")


@pytest.fixture(scope="module")
def stream() -> ModuleType:
    return load("stream")


@pytest.fixture(scope="module")
def sse_app() -> ModuleType:
    return load("app")


@pytest.fixture
def redis() -> Any:
    return redis_client()


@pytest.fixture
def prefix(redis: Any) -> Iterator[str]:
    prefix = f"fmn-test:{uuid.uuid4().hex[:10]}:feed:"
    yield prefix
    keys = list(redis.scan_iter(match=prefix + "*"))
    if keys:
        redis.delete(*keys)


def delivery(msg_id: str, user: str = "alice", summary: str = "a build completed") -> Delivery:
    return Delivery(backend="sse", user=user, address=user, destination="d1",
                    rules=("r1",), rule_names=("My builds",),
                    message={"id": msg_id, "topic": "org.fedoraproject.prod.buildsys.build",
                             "app": "koji", "agent": "alice", "summary": summary,
                             "url": "https://koji.example/1", "sent_at": "2024-01-01T00:00:00Z",
                             "severity": "INFO", "usernames": [user], "num_usernames": 1,
                             "packages": [], "num_packages": 0})


def event(msg_id: str, user: str = "alice") -> str:
    return event_data(delivery(msg_id, user), received_at=1704067200.0)


# -- the store contract: the fake and Redis -----------------------------------------


@pytest.fixture(params=["memory", "redis", "cluster"])
def make_store(request: pytest.FixtureRequest) -> Callable[..., FeedStore]:
    def make(maxlen: int = 1000, max_age_s: int = 3600,
             clock: Callable[[], float] | None = None) -> FeedStore:
        kwargs: dict[str, Any] = {} if clock is None else {"clock": clock}
        if request.param == "memory":
            return MemoryFeed(maxlen, max_age_s, **kwargs)
        if request.param == "cluster":  # keys of its own: the prefix is unique
            client = connect(request.getfixturevalue("redis_cluster_url"))
            return RedisFeed(client, request.getfixturevalue("prefix"), maxlen, max_age_s,
                             **kwargs)
        return RedisFeed(request.getfixturevalue("redis"), request.getfixturevalue("prefix"),
                         maxlen, max_age_s, **kwargs)

    return make


def ids(events: list[Any]) -> list[str]:
    return [e.id for e in events]


def test_a_feed_gives_events_in_order_and_resumes_after_any_of_them(
        make_store: Callable[..., FeedStore]) -> None:
    feed = make_store()
    appended = [feed.append("alice", event(f"m{n}")) for n in range(5)]
    feed.append("bob", event("b0", "bob"))
    assert ids(feed.latest("alice", 10)) == appended
    assert ids(feed.latest("alice", 2)) == appended[3:]
    assert [json.loads(e.data)["message_id"] for e in feed.latest("alice", 2)] == ["m3", "m4"]
    assert ids(feed.after("alice", START, 10)) == appended
    assert ids(feed.after("alice", appended[1], 2)) == appended[2:4]
    assert feed.after("alice", appended[4], 10) == []
    assert feed.latest("carol", 10) == [] and feed.after("carol", START, 10) == []
    with pytest.raises(InvalidEventId):
        feed.after("alice", "$", 10)


def test_a_feed_keeps_at_most_maxlen_events(make_store: Callable[..., FeedStore]) -> None:
    feed = make_store(maxlen=5)
    appended = [feed.append("alice", event(f"m{n}")) for n in range(12)]
    assert ids(feed.latest("alice", 100)) == appended[-5:]
    assert ids(feed.after("alice", START, 100)) == appended[-5:]


def test_a_feed_says_when_a_position_is_older_than_what_it_dropped(
        make_store: Callable[..., FeedStore]) -> None:
    feed = make_store(maxlen=3)
    appended = [feed.append("alice", event(f"m{n}")) for n in range(3)]
    assert not feed.missed_after("alice", appended[0])  # nothing dropped yet
    appended += [feed.append("alice", event(f"m{n}")) for n in range(3, 6)]
    assert feed.missed_after("alice", appended[0])  # m1 and m2 are gone
    assert not feed.missed_after("alice", appended[3])  # m4, m5 kept: nothing missed
    assert not feed.missed_after("alice", START)  # a first connection misses nothing
    assert not feed.missed_after("nobody", appended[0])


def append_at(feed: FeedStore, clock: FakeClock, data: str, at_s: float) -> str:
    """Append as if at ``at_s`` (Redis stamps ids with its own clock: give the id)."""
    if isinstance(feed, RedisFeed):
        new_id = feed.client.xadd(feed.key("alice"), {ENTRY_FIELD: data},
                                  id=f"{int(at_s * 1000)}-0")
        return str(new_id.decode())
    now, clock.now = clock.now, at_s
    try:
        return feed.append("alice", data)
    finally:
        clock.now = now


def test_a_feed_drops_events_older_than_its_age_cap(
        make_store: Callable[..., FeedStore]) -> None:
    clock = FakeClock(time.time())
    feed = make_store(max_age_s=60, clock=clock)
    for n in range(3):
        append_at(feed, clock, event(f"old{n}"), clock.now - 120 + n)
    recent = append_at(feed, clock, event("recent"), clock.now - 30)
    newest = feed.append("alice", event("new"))  # trims what is older than 60 s
    assert ids(feed.latest("alice", 10)) == [recent, newest]


def test_a_blocked_read_returns_the_next_event_or_nothing(
        make_store: Callable[..., FeedStore]) -> None:
    feed = make_store()
    first = feed.append("alice", event("m0"))
    assert feed.after("alice", first, 10, block_s=0.05) == []
    threading.Timer(0.1, feed.append, ("alice", event("m1"))).start()
    got = feed.after("alice", first, 10, block_s=5)
    assert [json.loads(e.data)["message_id"] for e in got] == ["m1"]


def test_a_redis_feed_expires_whole_after_its_age_cap(redis: Any, prefix: str) -> None:
    feed = RedisFeed(redis, prefix, maxlen=10, max_age_s=300)
    feed.append("alice", event("m0"))
    assert 0 < redis.ttl(f"{prefix}alice") <= 300
    assert redis.xlen(f"{prefix}alice") == 1


def test_the_async_readers_agree_with_the_store(redis: Any, prefix: str) -> None:
    memory, real = MemoryFeed(), RedisFeed(redis, prefix)
    for feed in (memory, real):
        for n in range(3):
            feed.append("alice", event(f"m{n}"))

    async def read(reader: Any, feed: FeedStore) -> list[list[str]]:
        latest = await reader.latest("alice", 2)
        after = await reader.after("alice", latest[0].id, 10)
        empty = await reader.after("alice", after[-1].id, 10, block_s=0.05)
        threading.Timer(0.1, feed.append, ("alice", event("m3"))).start()
        woke = await reader.after("alice", after[-1].id, 10, block_s=5)
        await reader.aclose()
        return [[json.loads(e.data)["message_id"] for e in got]
                for got in (latest, after, empty, woke)]

    expected = [["m1", "m2"], ["m2"], [], ["m3"]]
    assert asyncio.run(read(memory.reader(0.01), memory)) == expected
    assert asyncio.run(read(AsyncRedisFeed.from_url(REDIS_URL, prefix), real)) == expected


def test_an_unreachable_redis_is_retryable() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(RetryableError):
        RedisFeed.from_url(url).append("alice", "{}")
    with pytest.raises(RetryableError):
        RedisFeed.from_url(url).after("alice", START, 10)

    async def read() -> None:
        await AsyncRedisFeed.from_url(url).latest("alice", 1)

    with pytest.raises(RetryableError):
        asyncio.run(read())


# -- the endpoint under uvicorn -----------------------------------------------------


@dataclass
class Event:
    id: str | None
    event: str
    data: str
    #: the raw lines of the frame, as received
    lines: list[str]


class EventSourceReader:
    """Reads a response the way EventSource parses it (WHATWG HTML, server-sent events).

    Each read gives up after ``patience_s`` of lines without what it waits
    for (keep-alive comments would otherwise keep it waiting forever).
    """

    def __init__(self, response: httpx.Response, patience_s: float = 10.0) -> None:
        self.response = response
        self._raw_lines = response.iter_lines()
        self.patience_s = patience_s
        #: EventSource's last event ID: what a reconnect sends as Last-Event-ID
        self.last_id: str | None = None
        self.comments: list[str] = []
        self.retry_ms: int | None = None

    def _lines(self, waiting_for: str) -> Iterator[str]:
        deadline = time.monotonic() + self.patience_s
        for line in self._raw_lines:
            yield line
            if time.monotonic() > deadline:
                raise AssertionError(f"no {waiting_for} within {self.patience_s} s")

    def next(self) -> Event | None:
        """The next dispatched event; ``None`` when the response ends."""
        data: list[str] = []
        kind, raw = "", []
        for line in self._lines("event"):
            raw.append(line)
            if line == "":
                if data:
                    return Event(self.last_id, kind or "message", "\n".join(data), raw)
                kind, raw = "", []  # nothing to dispatch (the id, if any, is kept)
                continue
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            elif name == "event":
                kind = value
            elif name == "id" and "\0" not in value:
                self.last_id = value
            elif name == "retry" and value.isdigit():
                self.retry_ms = int(value)
        return None

    def events(self, count: int) -> list[Event]:
        got = []
        for _ in range(count):
            found = self.next()
            assert found is not None, f"the stream ended after {len(got)} of {count} events"
            got.append(found)
        return got

    def next_comment(self) -> str:
        """Read until a comment line arrives (events in between are dropped)."""
        for line in self._lines("comment"):
            if line.startswith(":"):
                return line
        raise AssertionError("the stream ended before a comment")

    def until_position(self) -> str:
        """Read until the stream has told where it stands (its first id)."""
        for line in self._lines("position"):
            if line.startswith("id: "):
                self.last_id = line[4:]
            elif line == "" and self.last_id is not None:
                return self.last_id
        raise AssertionError("the stream ended before giving a position")


@pytest.fixture
def start(stream: ModuleType, prefix: str) -> Iterator[Callable[..., ServerHandle]]:
    handles: list[ServerHandle] = []

    def start_server(**options: Any) -> ServerHandle:
        opts = stream.StreamOptions(**{"ping_s": 30, "block_s": 0.1, "retry_ms": 500,
                                       "prefix": prefix, **options})
        app = stream.create_app(Settings(redis_url=REDIS_URL, secret_key=SECRET), opts)
        handle = serve(app, name="feed", on_stop=app.state.close_streams)
        handles.append(handle)
        return handle

    yield start_server
    for handle in handles:
        handle.stop()


@pytest.fixture
def feed(redis: Any, prefix: str) -> RedisFeed:
    return RedisFeed(redis, prefix, maxlen=100)


def token(user: str = "alice") -> str:
    return auth.sign(user, SECRET, "feed")


def message_ids(events: list[Event]) -> list[str]:
    return [json.loads(e.data)["message_id"] for e in events]


def assert_live_marker(got: Event | None, position: str) -> None:
    """The caught-up marker: ``event: live``, the position it follows, no id."""
    assert got is not None and got.event == "live"
    assert json.loads(got.data) == {"v": 1, "after": position}
    assert not any(line.startswith("id") for line in got.lines)  # the position stays


def test_events_arrive_with_ids_and_a_reconnect_resumes_without_loss_or_repeats(
        start: Callable[..., ServerHandle], feed: RedisFeed) -> None:
    server = start()
    appended = [feed.append("alice", event("m0"))]
    seen: list[Event] = []
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        with client.stream("GET", "/feed", params={"token": token()}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            reader = EventSourceReader(response)
            seen += reader.events(1)  # from before the connection
            assert_live_marker(reader.next(), appended[0])
            appended.append(feed.append("alice", event("m1")))
            seen += reader.events(1)  # live
            assert reader.retry_ms == 500
        # disconnected: these happen while nobody listens
        appended += [feed.append("alice", event(f"m{n}")) for n in (2, 3, 4)]
        last = reader.last_id
        assert last == appended[1]
        with client.stream("GET", "/feed", params={"token": token()},
                           headers={"Last-Event-ID": last}) as response:
            reader = EventSourceReader(response)
            seen += reader.events(3)  # missed while away: caught up before the marker
            assert_live_marker(reader.next(), appended[4])
            appended.append(feed.append("alice", event("m5")))
            seen += reader.events(1)
    assert [e.id for e in seen] == appended  # every event, once, in order
    assert message_ids(seen) == [f"m{n}" for n in range(6)]
    assert {e.event for e in seen} == {"notification"}


def test_a_client_resuming_past_the_trim_gets_a_gap_marker_then_what_is_kept(
        start: Callable[..., ServerHandle], redis: Any, prefix: str) -> None:
    server = start()
    feed = RedisFeed(redis, prefix, maxlen=3)
    seen = feed.append("alice", event("m0"))
    kept = [feed.append("alice", event(f"m{n}")) for n in range(1, 6)][-3:]
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client, \
            client.stream("GET", "/feed", params={"token": token()},
                          headers={"Last-Event-ID": seen}) as response:
        reader = EventSourceReader(response)
        gap, *events = reader.events(4)
    assert gap.event == "gap" and json.loads(gap.data) == {"v": 1, "after": seen}
    assert not any(line.startswith("id") for line in gap.lines)  # the position stays
    assert [e.id for e in events] == kept and {e.event for e in events} == {"notification"}
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client, \
            client.stream("GET", "/feed", params={"token": token()},
                          headers={"Last-Event-ID": kept[0]}) as response:
        assert [e.event for e in EventSourceReader(response).events(2)] == ["notification"] * 2


def test_a_connection_that_saw_no_event_still_resumes_from_where_it_started(
        start: Callable[..., ServerHandle], feed: RedisFeed) -> None:
    server = start()
    old = feed.append("alice", event("old"))
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        with client.stream("GET", "/feed", params={"token": token(), "history": 0}) as response:
            position = EventSourceReader(response).until_position()
        assert position == old
        feed.append("alice", event("new"))  # while disconnected
        with client.stream("GET", "/feed", params={"token": token()},
                           headers={"Last-Event-ID": position}) as response:
            assert message_ids(EventSourceReader(response).events(1)) == ["new"]
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client, \
            client.stream("GET", "/feed", params={"token": token(user="nobody-yet")}) \
            as response:  # an empty feed starts before any event
        assert EventSourceReader(response).until_position() == START


def test_the_live_marker_follows_everything_the_feed_held_at_connection_time(
        start: Callable[..., ServerHandle], feed: RedisFeed) -> None:
    server = start(batch=2)  # a catch-up longer than one read
    old = [feed.append("alice", event(f"old{n}")) for n in range(3)]
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        with client.stream("GET", "/feed", params={"token": token(), "history": 0}) as response:
            reader = EventSourceReader(response)
            assert_live_marker(reader.next(), old[-1])  # no history asked for: at once
        away = [feed.append("alice", event(f"away{n}")) for n in range(5)]
        with client.stream("GET", "/feed", params={"token": token()},
                           headers={"Last-Event-ID": old[-1]}) as response:
            reader = EventSourceReader(response)
            assert [e.id for e in reader.events(5)] == away
            assert_live_marker(reader.next(), away[-1])
            new = feed.append("alice", event("new"))
            (got,) = reader.events(1)
            assert got.id == new and got.event == "notification"
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client, \
            client.stream("GET", "/feed", params={"token": token(user="nobody-yet")}) \
            as response:  # an empty feed: the marker at its start
        assert_live_marker(EventSourceReader(response).next(), START)


def test_keep_alive_comments_flow_while_nothing_happens(
        start: Callable[..., ServerHandle]) -> None:
    server = start(ping_s=0.2)
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client, \
            client.stream("GET", "/feed", params={"token": token()}) as response:
        reader = EventSourceReader(response)
        reader.until_position()
        assert reader.next_comment() == ": keep-alive"
        assert reader.next_comment() == ": keep-alive"


def test_a_hostile_summary_arrives_as_one_safe_event(
        start: Callable[..., ServerHandle], feed: RedisFeed) -> None:
    summary = ("evil\r\nid: 1-0\nevent: admin\rdata: x\u2028<script>alert(1)</script>"
               "\x1b[2J\x1b]0;pwned\x07\u0085\x0b\x1c" * 200)[:10_000]
    server = start()
    # in the message id and the summary too
    appended = feed.append("alice", event_data(delivery(summary, summary=summary), 0))
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client, \
            client.stream("GET", "/feed", params={"token": token()}) as response:
        (got,) = EventSourceReader(response).events(1)
    assert got.id == appended and got.event == "notification"
    assert [line.split(":", 1)[0] for line in got.lines] == ["id", "event", "data", ""]
    doc = json.loads(got.data)
    assert doc["message_id"] == feed_message_id(summary)
    assert doc["summary"] == shorten(clean(summary), MAX_SUMMARY_CHARS)


def test_only_the_user_gets_their_feed(start: Callable[..., ServerHandle],
                                       feed: RedisFeed) -> None:
    feed.append("alice", event("for-alice"))
    feed.append("bob", event("for-bob", "bob"))
    server = start()
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        assert client.get("/feed").status_code == 401
        assert client.get("/feed", params={"token": token()[:-3]}).status_code == 401
        assert client.get("/feed", params={"token": auth.sign("alice", "x", "feed")}) \
            .status_code == 401
        assert client.get("/feed/bob", params={"token": token()}).status_code == 403
        cookie = {"Cookie": f"{auth.SESSION_COOKIE}={auth.sign('bob', SECRET, 'session')}"}
        assert client.get("/feed/alice", headers=cookie).status_code == 403
        with client.stream("GET", "/feed/bob", headers=cookie) as response:
            assert message_ids(EventSourceReader(response).events(1)) == ["for-bob"]
        with client.stream("GET", "/feed", headers={"Authorization": f"Bearer {token()}"}) \
                as response:
            assert message_ids(EventSourceReader(response).events(1)) == ["for-alice"]


def test_a_response_that_ends_loses_nothing(start: Callable[..., ServerHandle],
                                            feed: RedisFeed) -> None:
    server = start(max_stream_s=0.3)  # as before the Lambda timeout
    first = feed.append("alice", event("m0"))
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        with client.stream("GET", "/feed", params={"token": token()}) as response:
            reader = EventSourceReader(response)
            assert message_ids(reader.events(1)) == ["m0"]
            assert_live_marker(reader.next(), first)
            assert reader.next() is None  # the server ended the response
        assert reader.last_id == first
        feed.append("alice", event("m1"))
        with client.stream("GET", "/feed", params={"token": token()},
                           headers={"Last-Event-ID": reader.last_id}) as response:
            assert message_ids(EventSourceReader(response).events(1)) == ["m1"]


def test_stopping_the_server_ends_open_streams(start: Callable[..., ServerHandle]) -> None:
    server = start()
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client, \
            client.stream("GET", "/feed", params={"token": token()}) as response:
        reader = EventSourceReader(response)
        position = reader.until_position()
        assert_live_marker(reader.next(), position)
        server.stop()
        assert not server.running
        assert reader.next() is None


# -- the SQS writer ------------------------------------------------------------------


def payload(msg_id: str, users: list[str]) -> str:
    """One sse payload (docs/notification-payload.md)."""
    return json.dumps({
        "v": 1, "backend": "sse", "part": 1, "parts": 1,
        "message": dict(delivery(msg_id).message),
        "notifications": [{"user": u, "address": u, "destination": f"d-{u}", "rules": ["r1"],
                           "rule_names": ["My builds"]} for u in users]})


@pytest.fixture
def writer(aws_env: str, monkeypatch: pytest.MonkeyPatch, sse_app: ModuleType,
           prefix: str) -> Iterator[dict[str, Any]]:
    tag = uuid.uuid4().hex[:10]
    for name, value in {"REDIS_URL": REDIS_URL, "FMN_FEED_MAXLEN": "3",
                        "FMN_FEED_PREFIX": prefix, "FMN_QUEUE_PREFIX": f"fmn-t{tag}-",
                        "FMN_IDEMPOTENCY_TTL_S": "600"}.items():
        monkeypatch.setenv(name, value)
    sse_app.reset()
    yield {"tag": tag, "users": ["alice", "bob"], "queue": f"fmn-t{tag}-sse"}
    sse_app.reset()
    client = redis_client()
    for key in client.scan_iter(f"fmn-t{tag}-*"):  # the sends it remembered
        client.delete(key)


def invoke(sse_app: ModuleType, bodies: list[str], queue_name: str) -> Any:
    return sse_app.handle_sse(sqs_event(bodies, queue_name), context("sse"))


def test_the_writer_is_chalice_wired_to_the_sse_queue(sse_app: ModuleType) -> None:
    (source,) = sse_app.app.event_sources
    assert source.queue.endswith("sse") and source.batch_size == 100


def test_a_redelivered_payload_appends_once(sse_app: ModuleType, writer: dict[str, Any],
                                            redis: Any, prefix: str) -> None:
    alice, bob = writer["users"]
    body = payload(f"msg-{writer['tag']}", [alice, bob])
    # the same record twice in a batch, then again in a later invocation
    assert invoke(sse_app, [body, body], writer["queue"]) == {"batchItemFailures": []}
    assert invoke(sse_app, [body], writer["queue"]) == {"batchItemFailures": []}
    reader = RedisFeed(redis, prefix)
    for user in (alice, bob):
        (only,) = reader.latest(user, 10)
        doc = json.loads(only.data)
        assert doc["message_id"] == f"msg-{writer['tag']}" and doc["rule_names"] == ["My builds"]
    assert reader.latest("carol", 10) == []


def test_the_writer_keeps_the_length_cap(sse_app: ModuleType, writer: dict[str, Any],
                                         redis: Any, prefix: str) -> None:
    alice = writer["users"][0]
    bodies = [payload(f"msg-{writer['tag']}-{n}", [alice]) for n in range(5)]
    assert invoke(sse_app, bodies, writer["queue"]) == {"batchItemFailures": []}
    kept = RedisFeed(redis, prefix).latest(alice, 10)
    assert [json.loads(e.data)["message_id"] for e in kept] == \
        [f"msg-{writer['tag']}-{n}" for n in (2, 3, 4)]
    assert redis.xlen(f"{prefix}{alice}") == 3


def test_an_unreadable_payload_is_dead_lettered_alone(
        sse_app: ModuleType, writer: dict[str, Any], redis: Any, prefix: str) -> None:
    import boto3

    from fmn.local.aws import ensure_queue
    from fmn.pipeline.queues import queue

    sqs = boto3.client("sqs")
    urls = ensure_queue(sqs, f"fmn-t{writer['tag']}-", queue("sse"))
    alice = writer["users"][0]
    good = payload(f"msg-{writer['tag']}", [alice])
    event_ = sqs_event(["not a payload", good], writer["queue"])
    ctx = context("sse")
    response = sse_app.handle_sse(event_, ctx)
    assert response == {"batchItemFailures": []}  # retrying cannot help: it ends now
    assert len(RedisFeed(redis, prefix).latest(alice, 10)) == 1
    dead = sqs.receive_message(QueueUrl=urls.dlq_url, MaxNumberOfMessages=10)["Messages"]
    assert [m["Body"] for m in dead] == ["not a payload"]
