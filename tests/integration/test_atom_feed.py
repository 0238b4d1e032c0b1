"""The Atom feed of a person's notifications, through the web app, read by a feed library.

The web app (``webapp/app.py``, Chalice's test client) runs on a SQLite
preferences database, a live feed holding each person's notifications, and
real Redis for the feed keys.  A person signs in (the development login),
asks for their feed's address, and a feed reader with no session fetches it:
feedparser must read it as well-formed Atom 1.0 with only its owner's
notifications; hostile text stays text; a revoked address stops working.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from xml.etree import ElementTree

import feedparser
import pytest
from chalice.test import Client
from delivery_data import HOSTILE_SUMMARY, message, notification
from services import REDIS_URL, prefixed_keys, redis_client

from fmn import db
from fmn.delivery.base import Delivery
from fmn.delivery.feed import MemoryFeed, event_data
from fmn.delivery.irc_client import MemoryIrcLink
from fmn.delivery.mailers import MemoryMailer
from fmn.local.stack import load_module
from fmn.ownership.data import Account
from fmn.ownership.publish import publish_accounts
from fmn.settings import Settings
from fmn.snapshot import sync
from fmn.snapshot.store import MemorySnapshotStore

pytestmark = pytest.mark.integration

APP_PATH = Path(__file__).resolve().parents[2] / "webapp" / "app.py"
WEB = "http://testserver"
ATOM = "{http://www.w3.org/2005/Atom}"


@pytest.fixture(scope="module")
def webapp() -> ModuleType:
    return load_module(APP_PATH, "fmn_webapp_atom")


@pytest.fixture
def web(webapp: ModuleType, tmp_path: Path) -> Iterator[Any]:
    client = redis_client()
    prefix = f"fmn-test:{uuid.uuid4().hex}:"
    engine = db.make_engine(f"sqlite:///{tmp_path / 'prefs.sqlite'}")
    db.upgrade(engine)
    feed = MemoryFeed()
    store = MemorySnapshotStore()
    sync.publish_full(engine, store)
    webapp.configure(Settings(redis_url=REDIS_URL, web_url=WEB, secret_key="atom-secret",
                              dev_login=True, admins=frozenset({"root"})),
                     engine=engine, store=store,
                     feed=feed, mailer=MemoryMailer(), irc_link=MemoryIrcLink(),
                     keys=prefixed_keys(client, prefix))
    yield feed
    webapp.reset()
    engine.dispose()
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)


def signed_in(webapp: ModuleType, user: str) -> tuple[Any, dict[str, str]]:
    """A test client signed in as ``user``, and the headers it sends."""
    http = Client(webapp.app).http
    cookies: dict[str, str] = {}

    def keep(response: Any) -> Any:
        lines = response.headers.get("Set-Cookie") or []
        for line in [lines] if isinstance(lines, str) else lines:
            name, _, rest = line.partition("=")
            cookies[name] = rest.split(";", 1)[0]
        return response

    keep(http.get("/dev/login"))
    keep(http.post("/dev/login", headers={"content-type": "application/json",
                                          "cookie": f"fmn_csrf={cookies['fmn_csrf']}",
                                          "x-csrf-token": cookies["fmn_csrf"]},
                   body=json.dumps({"user": user}).encode()))
    headers = {"cookie": "; ".join(f"{k}={v}" for k, v in cookies.items()),
               "x-csrf-token": cookies["fmn_csrf"], "content-type": "application/json"}
    return http, headers


def notify(feed: MemoryFeed, user: str, message_id: str, at: int = 0, **over: Any) -> None:
    item = notification(user, user, "sse", names=("My builds",))
    feed.append(user, event_data(Delivery("sse", message(id=message_id, **over), user, user,
                                          "sse", tuple(item["rules"]),
                                          tuple(item["rule_names"])), 1_704_067_200.0 + at))


def test_the_feed_is_atom_with_only_its_owners_notifications(
        webapp: ModuleType, web: MemoryFeed) -> None:
    for i in range(3):
        notify(web, "alice", f"a-{i}", at=i, summary=f"alice's build {i}")
    notify(web, "bob", "b-0", summary="bob's secret build")
    http, headers = signed_in(webapp, "alice")
    got = http.get("/api/v1/atom-url", headers=headers)
    assert got.status_code == 200
    url = json.loads(got.body)["url"]
    assert url.startswith(f"{WEB}/atom/")
    reader = Client(webapp.app).http  # a feed reader: no cookie at all
    answer = reader.get(url.removeprefix(WEB))
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("application/atom+xml")
    # the address is the credential: a linked page must not learn it from the Referer
    assert answer.headers["Referrer-Policy"] == "no-referrer"
    parsed = feedparser.parse(answer.body)
    assert not parsed.bozo, parsed.get("bozo_exception")
    assert parsed.version == "atom10"
    assert [e.title for e in parsed.entries] == [
        f"[koji] alice's build {i}" for i in (2, 1, 0)]
    assert all(e.link.startswith("https://koji.fedoraproject.org/") for e in parsed.entries)
    assert "bob" not in answer.body.decode()
    assert len({e.id for e in parsed.entries}) == 3
    # bob's own address shows bob's, and never alice's
    http_b, headers_b = signed_in(webapp, "bob")
    bob_url = json.loads(http_b.get("/api/v1/atom-url", headers=headers_b).body)["url"]
    bob = feedparser.parse(reader.get(bob_url.removeprefix(WEB)).body)
    assert [e.title for e in bob.entries] == ["[koji] bob's secret build"]


def test_hostile_text_stays_text(webapp: ModuleType, web: MemoryFeed) -> None:
    notify(web, "mallory", "h-1", app="<script>alert(1)</script>", url="javascript:alert(2)",
           summary="<img src=x onerror=alert(3)>" + HOSTILE_SUMMARY)
    http, headers = signed_in(webapp, "mallory")
    url = json.loads(http.get("/api/v1/atom-url", headers=headers).body)["url"]
    body = Client(webapp.app).http.get(url.removeprefix(WEB)).body
    root = ElementTree.fromstring(body)  # well-formed XML despite the control characters
    (entry,) = root.findall(f"{ATOM}entry")
    title = entry.find(f"{ATOM}title")
    assert title is not None and title.text is not None and not list(title)  # no markup
    assert title.text.startswith("[<script>alert(1)</script>] <img src=x onerror=alert(3)>")
    assert not any(c in title.text for c in "\r\n\x00\x07\x1b\u202e")
    assert len(title.text) <= 600
    assert b"<script" not in body and b"javascript:" not in body
    assert entry.find(f"{ATOM}link") is None  # a javascript: URL is no link
    parsed = feedparser.parse(body)
    assert not parsed.bozo and parsed.entries[0].title.startswith("[<script>")


def test_a_revoked_address_stops_working_and_a_forged_one_never_did(
        webapp: ModuleType, web: MemoryFeed) -> None:
    notify(web, "carol", "c-1")
    http, headers = signed_in(webapp, "carol")
    old = json.loads(http.get("/api/v1/atom-url", headers=headers).body)["url"]
    assert json.loads(http.get("/api/v1/atom-url", headers=headers).body)["url"] == old
    new = json.loads(http.post("/api/v1/atom-url/revoke", headers=headers,
                               body=b"{}").body)["url"]
    assert new != old
    reader = Client(webapp.app).http
    assert reader.get(old.removeprefix(WEB)).status_code == 404
    assert reader.get(new.removeprefix(WEB)).status_code == 200
    assert reader.get(new.removeprefix(WEB)[:-4] + "AAAA").status_code == 404
    # the revocation needs the session (and its CSRF token)
    assert reader.post("/api/v1/atom-url/revoke", body=b"{}",
                       headers={"content-type": "application/json"}).status_code in (401, 403)


def test_reading_the_feed_keeps_its_address_alive(webapp: ModuleType, web: MemoryFeed) -> None:
    notify(web, "dave", "d-1")
    http, headers = signed_in(webapp, "dave")
    url = json.loads(http.get("/api/v1/atom-url", headers=headers).body)["url"]
    keys = webapp._get("atom").keys
    name = f"{keys.prefix}fmn:atom:key:dave"
    keys.client.expire(name, 3600)  # a year since the address was shown: almost gone
    assert Client(webapp.app).http.get(url.removeprefix(WEB)).status_code == 200
    assert keys.client.ttl(name) > 365 * 24 * 3600  # the reader keeps it a year longer


def test_nothing_is_delivered_to_a_disabled_user_or_a_locked_account(
        webapp: ModuleType, web: MemoryFeed) -> None:
    """The feed is a delivery channel: an admin's disable, or a locked or deleted Fedora
    account, stops it as it stops the mails (a valid, empty feed: a reader keeps polling,
    and the entries are back once the user receives again)."""
    reader = Client(webapp.app).http
    urls = {}
    for name in ("erin", "frank"):
        notify(web, name, f"{name}-1", summary=f"{name}'s build")
        http, headers = signed_in(webapp, name)
        urls[name] = json.loads(http.get("/api/v1/atom-url", headers=headers).body)["url"]
        assert len(feedparser.parse(reader.get(urls[name].removeprefix(WEB)).body).entries) == 1
    root, root_headers = signed_in(webapp, "root")
    assert root.post("/api/v1/admin/users/erin/disable", headers=root_headers,
                     body=b"{}").status_code == 200
    publish_accounts(webapp._get("engine"), webapp._get("store"),
                     [Account("frank", locked=True)])
    for name in ("erin", "frank"):
        answer = reader.get(urls[name].removeprefix(WEB))
        assert answer.status_code == 200
        parsed = feedparser.parse(answer.body)
        assert not parsed.bozo and parsed.version == "atom10"
        assert parsed.entries == [], name
        assert f"{name}'s build" not in answer.body.decode()
    publish_accounts(webapp._get("engine"), webapp._get("store"),
                     [Account("frank", locked=False)])
    assert len(feedparser.parse(reader.get(urls["frank"].removeprefix(WEB)).body).entries) == 1
