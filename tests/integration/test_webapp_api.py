"""The web API through Chalice's test client, on PostgreSQL and real Redis.

Sessions come from the development login; mail and IRC are the in-memory
fakes (their real adapters have tests of their own).  The last tests show
the point of it all: a rule changed through the API changes what a matcher
reading the same Redis snapshot routes, within a second.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from chalice.test import Client
from services import (
    REDIS_URL,
    postgres_database,
    postgres_schema,
    prefixed_keys,
    redis_client,
)
from sqlalchemy import Engine

from fmn.delivery.feed import RedisFeed, encode_event
from fmn.delivery.irc_client import MemoryIrcLink
from fmn.delivery.mailers import MemoryMailer
from fmn.local.stack import load_module
from fmn.matcher import IndexedMatcher
from fmn.message import Message
from fmn.settings import Settings
from fmn.snapshot import sync
from fmn.snapshot.live import LiveSnapshot
from fmn.snapshot.store import RedisSnapshotStore
from fmn.web import UnsafeConfiguration, check

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
webapp = load_module(ROOT / "webapp" / "app.py", "fmn_webapp_under_test")

FORM = {"content-type": "application/x-www-form-urlencoded"}
ONE_CLICK = b"List-Unsubscribe=One-Click"
TOPIC_RULE: dict[str, Any] = {
    "name": "Koji builds", "enabled": True,
    "tracking": {"kind": "topics", "params": {"patterns": ["*.buildsys.build.state.change"]}},
    "generation_rules": [{"filters": {}, "destinations": ["email"]}]}


@pytest.fixture(scope="module")
def database() -> Iterator[Any]:
    yield from postgres_database()


@pytest.fixture
def engine(database: Any) -> Iterator[Engine]:
    yield from postgres_schema(database)


class App:
    """The configured app, its fakes, and one test client per signed-in user."""

    def __init__(self, engine: Engine, prefix: str) -> None:
        self.redis = redis_client()
        self.prefix = prefix
        self.settings = Settings(redis_url=REDIS_URL, web_url="http://testserver",
            secret_key="test-secret", snapshot_prefix=f"{prefix}snap:",
            feed_prefix=f"{prefix}feed:", queue_prefix=prefix, dev_login=True,
            admins=frozenset({"root"}))
        self.store = RedisSnapshotStore(self.redis, f"{prefix}snap:")
        self.feed = RedisFeed(self.redis, f"{prefix}feed:")
        self.mailer = MemoryMailer()
        self.irc = MemoryIrcLink()
        self.engine = engine
        sync.publish_full(engine, self.store)  # the matchers' starting point
        webapp.configure(self.settings, engine=engine, store=self.store, feed=self.feed,
                         mailer=self.mailer, irc_link=self.irc,
                         keys=prefixed_keys(self.redis, f"{prefix}v:"))

    def client(self, user: str) -> Session:
        return Session(user)


class Session:
    """A browser: keeps cookies, sends the CSRF header like the UI does."""

    def __init__(self, user: str | None) -> None:
        self.http = Client(webapp.app).http
        self.cookies: dict[str, str] = {}
        if user is not None:
            page = self.request("GET", "/dev/login")
            assert page.status_code == 200
            r = self.request("POST", "/dev/login", {"user": user})
            assert r.status_code == 200, r.body

    def request(self, method: str, path: str, body: Any = None, *, csrf: bool = True,
                headers: dict[str, str] | None = None) -> Any:
        h = {"cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items()),
             **(headers or {})}
        if body is not None:
            h.setdefault("content-type", "application/json")
        if csrf and "fmn_csrf" in self.cookies:
            h.setdefault("x-csrf-token", self.cookies["fmn_csrf"])
        raw = b"" if body is None else json.dumps(body).encode()
        r = self.http.request(method, path, headers=h, body=raw)
        set_cookie = r.headers.get("Set-Cookie") or r.headers.get("set-cookie") or []
        for line in [set_cookie] if isinstance(set_cookie, str) else set_cookie:
            name, _, rest = line.partition("=")
            self.cookies[name] = rest.split(";", 1)[0]
        return r

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.request("POST", path, {} if body is None else body, **kw)


@pytest.fixture
def app(engine: Engine) -> Iterator[App]:
    prefix = f"fmn-test:{uuid.uuid4().hex}:"
    a = App(engine, prefix)
    yield a
    keys = list(a.redis.scan_iter(match=prefix + "*"))
    keys += list(a.redis.scan_iter(match="{" + prefix + "*"))  # the snapshot's hash tag
    if keys:
        a.redis.delete(*keys)
    webapp.reset()


# -- sessions, CSRF, validation ---------------------------------------------------


def test_first_login_sets_a_safe_session_and_the_defaults(app: App) -> None:
    s = Session(None)
    s.get("/dev/login")
    r = s.post("/dev/login", {"user": "alice"})
    cookies = r.headers["Set-Cookie"]
    session = next(c for c in cookies if c.startswith("fmn_session="))
    assert "HttpOnly" in session and "SameSite=Lax" in session
    assert "HttpOnly" not in next(c for c in cookies if c.startswith("fmn_csrf="))
    assert s.get("/api/v1/me").json_body == {"name": "alice", "email": "alice@example.org",
                                             "is_admin": False, "enabled": True,
                                             "publish_pending": False, "feed_url": None,
                                             "account_blocked": False}
    rules = s.get("/api/v1/rules").json_body
    assert {(r["name"], r["tracking"]["kind"], r["enabled"]) for r in rules} == {
        ("My packages", "artifacts-owned", True), ("My events", "related-events", True)}
    events = next(r for r in rules if r["name"] == "My events")
    assert events["generation_rules"] == [{"filters": {"my_actions": False},
                                           "destinations": ["email"]}]
    assert s.get("/api/v1/destinations").json_body == [
        {"id": "email", "protocol": "email", "address": "alice@example.org",
         "verified": True, "digest": None}]


def test_not_signed_in_is_401(app: App) -> None:
    r = Session(None).get("/api/v1/rules")
    assert r.status_code == 401 and r.json_body["error"] == "not-signed-in"
    forged = Session(None)
    forged.cookies["fmn_session"] = "alice.forged.signature"
    assert forged.get("/api/v1/me").status_code == 401


def test_state_changes_without_the_csrf_token_are_refused(app: App) -> None:
    s = app.client("alice")
    for method, path in (("POST", "/api/v1/rules"), ("DELETE", "/api/v1/rules/my-events"),
                         ("PATCH", "/api/v1/rules/my-events"), ("POST", "/logout")):
        r = s.request(method, path, {"enabled": False}, csrf=False)
        assert r.status_code == 403 and r.json_body["field"] == "X-CSRF-Token", (method, path)
        r = s.request(method, path, {"enabled": False}, headers={"x-csrf-token": "guess"})
        assert r.status_code == 403
    assert all(r["enabled"] for r in s.get("/api/v1/rules").json_body)


def test_a_csrf_token_of_another_session_is_refused(app: App) -> None:
    alice, mallory = app.client("alice"), app.client("mallory")
    alice.cookies["fmn_csrf"] = mallory.cookies["fmn_csrf"]
    r = alice.request("PATCH", "/api/v1/rules/my-events", {"enabled": False})
    assert r.status_code == 403


@pytest.mark.parametrize(("body", "field"), [
    ({**TOPIC_RULE, "surprise": 1}, "surprise"),
    ({**TOPIC_RULE, "tracking": {"kind": "artifacts-followed", "params": {
        "artifacts": [{"type": "rpm", "name": "kernel"}]}}},
     "tracking.params.artifacts[0].type"),
    ({**TOPIC_RULE, "generation_rules": []}, "generation_rules"),
])
def test_validation_errors_name_the_field(app: App, body: dict[str, Any], field: str) -> None:
    r = app.client("alice").post("/api/v1/rules", body)
    assert r.status_code == 400
    assert r.json_body["error"] == "invalid" and r.json_body["field"] == field
    assert r.json_body["detail"]


def test_bad_json_is_a_400(app: App) -> None:
    s = app.client("alice")
    r = s.http.request("POST", "/api/v1/rules", body=b"{not json", headers={
        "content-type": "application/json", "x-csrf-token": s.cookies["fmn_csrf"],
        "cookie": "; ".join(f"{k}={v}" for k, v in s.cookies.items())})
    assert r.status_code == 400 and r.json_body["error"] == "invalid"


# -- one user, another's data ---------------------------------------------------


def test_nobody_reads_or_changes_another_users_data(app: App) -> None:
    alice, bob = app.client("alice"), app.client("bob")
    bobs = bob.post("/api/v1/rules", TOPIC_RULE).json_body
    dest = bob.post("/api/v1/destinations", {"protocol": "irc", "address": "bobby"}).json_body
    for method, path, body in (
            ("GET", f"/api/v1/rules/{bobs['id']}", None),
            ("PUT", f"/api/v1/rules/{bobs['id']}", TOPIC_RULE),
            ("PATCH", f"/api/v1/rules/{bobs['id']}", {"enabled": False}),
            ("DELETE", f"/api/v1/rules/{bobs['id']}", None),
            ("PATCH", f"/api/v1/destinations/{dest['id']}", {"digest": None}),
            ("DELETE", f"/api/v1/destinations/{dest['id']}", None),
            ("POST", f"/api/v1/destinations/{dest['id']}/verify", {"code": "123456"}),
            ("POST", f"/api/v1/destinations/{dest['id']}/resend", {})):
        r = alice.request(method, path, body)
        assert r.status_code == 404, (method, path, r.body)
    # alice's own rules cannot point at bob's destination either
    r = alice.post("/api/v1/rules", {**TOPIC_RULE, "generation_rules": [
        {"filters": {}, "destinations": [dest["id"]]}]})
    assert r.status_code == 400 and r.json_body["field"] == "generation_rules[0].destinations[0]"
    assert bob.get(f"/api/v1/rules/{bobs['id']}").json_body == bobs
    assert [d["id"] for d in bob.get("/api/v1/destinations").json_body] == ["email", dest["id"]]


def test_each_user_sees_only_their_own_feed(app: App) -> None:
    rule_doc = {"v": 1, "message_id": "m1", "topic": "t", "summary": "for bob",
                "rules": ["my-events"], "received_at": "2000-01-01T00:00:00+00:00"}  # too old
    app.feed.append("bob", encode_event(rule_doc))
    alice, bob = app.client("alice"), app.client("bob")
    assert alice.get("/api/v1/notifications").json_body == []
    assert [e["summary"] for e in bob.get("/api/v1/notifications").json_body] == ["for bob"]
    assert alice.get("/api/v1/stats").json_body["rules"] == {"my-packages": 0, "my-events": 0}
    app.feed.append("bob", encode_event({**rule_doc, "received_at": time.strftime(
        "%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())}))
    assert bob.get("/api/v1/stats").json_body == {
        "days": 7, "rules": {"my-packages": 0, "my-events": 1}, "source": "feed",
        "complete": True}


def test_admin_routes(app: App) -> None:
    alice, root = app.client("alice"), app.client("root")
    app.client("bob")
    assert alice.post("/api/v1/admin/users/bob/disable").status_code == 403
    assert alice.post("/api/v1/admin/users/bob/rules/my-events/disable").status_code == 403
    r = root.post("/api/v1/admin/users/bob/rules/my-events/disable")
    assert r.status_code == 200 and r.json_body["enabled"] is False
    assert root.post("/api/v1/admin/users/bob/disable").json_body == {"name": "bob",
                                                                      "enabled": False}
    assert root.get("/api/v1/me").json_body["is_admin"] is True
    assert app.client("bob").get("/api/v1/me").json_body["enabled"] is False
    gone = root.post("/api/v1/admin/users/bob/rules/no-such-rule/disable")
    assert gone.status_code == 404 and gone.json_body["detail"] == "bob has no rule 'no-such-rule'"


def test_a_rule_an_admin_disabled_stays_disabled(app: App) -> None:
    root, bob = app.client("root"), app.client("bob")
    assert root.post("/api/v1/admin/users/bob/rules/my-events/disable").status_code == 200
    r = bob.request("PATCH", "/api/v1/rules/my-events", {"enabled": True})
    assert r.status_code == 409 and r.json_body["error"] == "conflict"
    assert r.json_body["field"] == "enabled" and "administrator" in r.json_body["detail"]
    rule = {k: v for k, v in bob.get("/api/v1/rules/my-events").json_body.items()
            if k != "id"}
    assert bob.request("PUT", "/api/v1/rules/my-events",
                       {**rule, "enabled": True}).status_code == 409
    assert bob.get("/api/v1/rules/my-events").json_body["enabled"] is False
    r = bob.request("PATCH", "/api/v1/rules/my-events", {"name": "Still off"})
    assert r.status_code == 200 and r.json_body["enabled"] is False


def r_etag(session: Session) -> str:
    return str(session.get("/api/v1/rules/my-events").json_body["etag"])


def test_a_rule_replaced_from_a_stale_copy_is_refused(app: App) -> None:
    """PUT replaced the whole rule with no precondition: an editor open on another
    device undid a rename and a disable made meanwhile.  With the rule's etag (If-Match,
    or sent back in the body as read) a stale copy gets 412 and nothing is saved."""
    phone, laptop = app.client("bob"), app.client("bob")
    opened = laptop.get("/api/v1/rules/my-events").json_body
    assert opened["etag"] and all(r["etag"] for r in laptop.get("/api/v1/rules").json_body)
    changed = phone.request("PATCH", "/api/v1/rules/my-events",
                            {"name": "Muted", "enabled": False})
    assert changed.status_code == 200 and changed.json_body["etag"] != opened["etag"]

    stale = {**opened, "name": "Laptop's edit"}  # as read, etag included
    r = laptop.request("PUT", "/api/v1/rules/my-events", stale)
    assert r.status_code == 412 and r.json_body["error"] == "precondition-failed"
    no_etag = {k: v for k, v in stale.items() if k != "etag"}
    r = laptop.request("PUT", "/api/v1/rules/my-events", no_etag,
                       headers={"if-match": f'"{opened["etag"]}"'})
    assert r.status_code == 412
    kept = laptop.get("/api/v1/rules/my-events").json_body
    assert (kept["name"], kept["enabled"]) == ("Muted", False)

    # the current version, by header (also weak or among others) or in the body, is saved
    for headers in ({"if-match": f'W/"x", "{kept["etag"]}"'}, {"if-match": "*"}):
        r = laptop.request("PUT", "/api/v1/rules/my-events", {**no_etag, "enabled": False},
                           headers=headers)
        assert r.status_code == 200, r.body
    current = laptop.get("/api/v1/rules/my-events").json_body
    r = laptop.request("PUT", "/api/v1/rules/my-events", {**current, "name": "Fresh"})
    assert r.status_code == 200 and r.json_body["name"] == "Fresh"
    # and a client that sends none replaces as before
    r = laptop.request("PUT", "/api/v1/rules/my-events", {**no_etag, "name": "Blind"})
    assert r.status_code == 200 and r.json_body["name"] == "Blind"

    # a switch (PATCH) takes the version it was drawn from the same way
    assert laptop.get("/api/v1/rules/my-events").json_body["enabled"] is True
    r = laptop.request("PATCH", "/api/v1/rules/my-events",
                       {"enabled": False, "etag": opened["etag"]})
    assert r.status_code == 412
    assert laptop.get("/api/v1/rules/my-events").json_body["enabled"] is True
    r = laptop.request("PATCH", "/api/v1/rules/my-events", {"enabled": False},
                       headers={"if-match": f'"{r_etag(laptop)}"'})
    assert r.status_code == 200 and r.json_body["enabled"] is False


# -- verification ---------------------------------------------------------------


def test_email_verification_through_the_api(app: App) -> None:
    s = app.client("alice")
    r = s.post("/api/v1/destinations", {"protocol": "email", "address": "a2@example.org"})
    assert r.status_code == 201 and r.json_body["verified"] is False
    link = next(w for w in app.mailer.sent[-1].get_content().split() if "/verify/email/" in w)
    path = link.removeprefix("http://testserver")
    # opening the link (a person, or a mail system's link scanner) confirms nothing
    for _ in range(3):
        page = Session(None).get(path)  # no session needed: the link is the proof
        assert page.status_code == 200 and b"<form method=post>" in page.body
        assert b"a2@example.org" in page.body and b"Confirm this address" in page.body
    assert s.get("/api/v1/destinations").json_body[1]["verified"] is False
    # its button does (a form POST; no session, no CSRF token)
    form = {"content-type": "application/x-www-form-urlencoded"}
    done = Session(None).http.request("POST", path, headers=form, body=b"confirm=yes")
    assert done.status_code == 200 and b"Address confirmed" in done.body
    assert s.get("/api/v1/destinations").json_body[1]["verified"] is True
    again = Session(None).get(path)
    assert again.status_code == 400 and b"used already" in again.body
    again = Session(None).http.request("POST", path, headers=form, body=b"confirm=yes")
    assert again.status_code == 400 and b"used already" in again.body
    forged = Session(None).get(path[:-3] + "abc")
    assert forged.status_code == 400 and b"not one we sent" in forged.body


def test_a_verification_post_without_its_button_confirms_nothing(app: App) -> None:
    s = app.client("alice")
    s.post("/api/v1/destinations", {"protocol": "email", "address": "a3@example.org"})
    link = next(w for w in app.mailer.sent[-1].get_content().split() if "/verify/email/" in w)
    path = link.removeprefix("http://testserver")
    form = {"content-type": "application/x-www-form-urlencoded"}
    r = Session(None).http.request("POST", path, headers=form, body=b"")
    assert r.status_code == 400
    assert s.get("/api/v1/destinations").json_body[1]["verified"] is False
    ok = Session(None).http.request("POST", path, headers=form, body=b"confirm=yes")
    assert ok.status_code == 200  # the link was not used up


def test_irc_verification_wrong_code_then_right(app: App) -> None:
    s = app.client("alice")
    dest = s.post("/api/v1/destinations", {"protocol": "irc", "address": "alice_irc"}).json_body
    line = app.irc.lines_to("alice_irc")[-1]
    code = next(w for w in line.split() if w.isdigit() and len(w) == 6)
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    r = s.post(f"/api/v1/destinations/{dest['id']}/verify", {"code": wrong})
    assert r.status_code == 400 and r.json_body["field"] == "code"
    r = s.post(f"/api/v1/destinations/{dest['id']}/verify", {"code": code, "x": 1})
    assert r.status_code == 400 and r.json_body["field"] == "x"
    r = s.post(f"/api/v1/destinations/{dest['id']}/verify", {"code": code})
    assert r.status_code == 200 and r.json_body["verified"] is True


def test_verification_requests_are_rate_limited(app: App) -> None:
    s = app.client("alice")
    dest = s.post("/api/v1/destinations", {"protocol": "irc", "address": "victim"}).json_body
    statuses = [s.post(f"/api/v1/destinations/{dest['id']}/resend").status_code
                for _ in range(4)]
    assert statuses == [202, 202, 429, 429]  # 3 an hour per address, the first included
    r = s.post(f"/api/v1/destinations/{dest['id']}/resend")
    assert r.json_body["error"] == "rate-limited" and r.headers["Retry-After"] == "3600"
    assert len(app.irc.lines_to("victim")) == 3


# -- configuration --------------------------------------------------------------


def test_the_dev_login_refuses_to_run_in_production(app: App) -> None:
    with pytest.raises(UnsafeConfiguration, match="FMN_DEV_LOGIN"):
        webapp.configure(replace(app.settings, env="production"),
                         engine=app.engine, store=app.store)
    with pytest.raises(UnsafeConfiguration):
        webapp.serve_local(replace(app.settings, env="production"), 0,
                           engine=app.engine, store=app.store)


def test_the_dev_login_is_off_unless_asked(app: App) -> None:
    webapp.configure(replace(app.settings, dev_login=False), engine=app.engine, store=app.store,
                     feed=app.feed, mailer=app.mailer, irc_link=app.irc)
    s = Session(None)
    assert s.get("/dev/login").status_code == 404
    s.cookies["fmn_csrf"] = "x"
    assert s.post("/dev/login", {"user": "alice"}).status_code == 404


def test_openapi_and_the_ui_route(app: App) -> None:
    doc = Session(None).get("/api/v1/openapi.json").json_body
    assert doc["openapi"].startswith("3.1") and "/api/v1/rules/{rule_id}" in doc["paths"]
    assert Session(None).get("/").status_code == 200
    assert Session(None).get("/static/..").status_code == 404


def test_serve_local_answers_on_a_real_port(app: App) -> None:
    import httpx

    handle = webapp.serve_local(app.settings, 0, engine=app.engine,
                                store=app.store, feed=app.feed, mailer=app.mailer,
                                irc_link=app.irc)
    try:
        r = httpx.get(f"{handle.url}/api/v1/me", timeout=5)
        assert r.status_code == 401
        # Two people at once: each answer is about its own request (Chalice keeps the
        # current request on the app; the local server must not mix them up).
        from concurrent.futures import ThreadPoolExecutor

        clients = {}
        for name in ("alice", "bob"):
            c = httpx.Client(base_url=handle.url, timeout=10)
            c.get("/dev/login")
            c.post("/dev/login", json={"user": name},
                   headers={"x-csrf-token": c.cookies["fmn_csrf"]})
            clients[name] = c

        def me(name: str) -> str:
            return str(clients[name].get("/api/v1/me").json()["name"])

        import sys

        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)  # interleave the server's threads as much as possible
        try:
            with ThreadPoolExecutor(16) as pool:
                names = ["alice", "bob"] * 150
                assert list(pool.map(me, names)) == names
        finally:
            sys.setswitchinterval(interval)
    finally:
        handle.stop()


# -- propagation -------------------------------------------------------------------


def _routed(matcher: IndexedMatcher, message: Message, user: str) -> set[str]:
    return {n.destination for n in matcher.match(message) if n.user == user}


def _eventually(check: Any, timeout_s: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def test_a_rule_changed_through_the_api_reroutes_the_next_message(app: App) -> None:
    alice = app.client("alice")
    matcher = IndexedMatcher(LiveSnapshot(app.store, poll_interval=0.1))
    bobs_comment = Message(id="m1", topic="org.fedoraproject.prod.bodhi.update.comment",
                           app_name="bodhi", agent_name="bob",
                           usernames=frozenset({"alice", "bob"}))
    build = Message(id="m2", topic="org.fedoraproject.prod.buildsys.build.state.change",
                    app_name="koji", agent_name="carol")
    # the default "My events" routes bob's comment on alice's update to her address
    assert _eventually(lambda: _routed(matcher, bobs_comment, "alice") == {"email"})
    assert _routed(matcher, build, "alice") == set()

    r = alice.request("PATCH", "/api/v1/rules/my-events", {"enabled": False})
    assert r.status_code == 200
    assert _eventually(lambda: _routed(matcher, bobs_comment, "alice") == set())

    assert alice.post("/api/v1/rules", TOPIC_RULE).status_code == 201
    assert _eventually(lambda: _routed(matcher, build, "alice") == {"email"})
    # a full rebuild agrees with what the incremental path delivered
    sync.publish_full(app.engine, app.store)
    assert _eventually(lambda: _routed(matcher, build, "alice") == {"email"})


def test_one_click_unsubscribe_from_a_mail(app: App) -> None:
    """The List-Unsubscribe link of every mail: signed, no session, no CSRF token."""
    from fmn.auth import unsubscribe_url

    alice = Session("alice")
    url = unsubscribe_url("http://web.test", "alice", "email", app.settings.secret_key)
    path = "/" + url.split("/", 3)[3]
    outsider = Session(None)
    page = outsider.get(path)
    assert page.status_code == 200 and b"<form method=post>" in page.body
    assert b'name=List-Unsubscribe value=One-Click' in page.body  # the button sends it too
    # RFC 8058: the POST carries List-Unsubscribe=One-Click; anything else changes nothing
    # (a link checker or a mail scanner POSTing to the URL)
    for body in (b"", b"List-Unsubscribe=Yes", b"other=One-Click"):
        r = outsider.http.request("POST", path, body=body, headers=FORM)
        assert r.status_code == 400 and b"List-Unsubscribe: " in r.body, body  # a page
    assert alice.get("/api/v1/destinations").json_body[0]["verified"] is True
    r = outsider.http.request("POST", path, body=ONE_CLICK, headers=FORM)
    assert r.status_code == 200, r.body
    [dest] = alice.get("/api/v1/destinations").json_body
    assert dest["verified"] is False  # receives nothing until verified again
    assert outsider.http.request("POST", path, body=ONE_CLICK,
                                 headers=FORM).status_code == 200  # idempotent
    forged = path[:-3] + ("abc" if not path.endswith("abc") else "xyz")
    assert outsider.get(forged).status_code == 400


def test_an_unsubscribe_outlasts_the_verification_links_sent_before_it(app: App) -> None:
    """A second verification link still in the mailbox turned an unsubscribed address
    back on; after the one-click unsubscribe it is refused, and a new one works."""
    from fmn.auth import unsubscribe_url

    s = app.client("alice")
    dest = s.post("/api/v1/destinations", {"protocol": "email",
                                           "address": "a4@example.org"}).json_body
    assert s.post(f"/api/v1/destinations/{dest['id']}/resend").status_code == 202
    first, second = (
        next(w for w in m.get_content().split() if "/verify/email/" in w)
        .removeprefix("http://testserver") for m in app.mailer.sent[-2:])
    form = {"content-type": "application/x-www-form-urlencoded"}
    outsider = Session(None)
    assert outsider.http.request("POST", first, headers=form,
                                 body=b"confirm=yes").status_code == 200
    url = unsubscribe_url("http://web.test", "alice", dest["id"], app.settings.secret_key)
    r = outsider.http.request("POST", "/" + url.split("/", 3)[3], body=ONE_CLICK, headers=FORM)
    assert r.status_code == 200
    for r in (outsider.get(second),
              outsider.http.request("POST", second, headers=form, body=b"confirm=yes")):
        assert r.status_code == 400 and b"before the address was unsubscribed" in r.body
    mine = [d for d in s.get("/api/v1/destinations").json_body if d["id"] == dest["id"]]
    assert mine[0]["verified"] is False
    assert s.post(f"/api/v1/destinations/{dest['id']}/resend").status_code == 202
    third = next(w for w in app.mailer.sent[-1].get_content().split() if "/verify/email/" in w)
    r = outsider.http.request("POST", third.removeprefix("http://testserver"), headers=form,
                              body=b"confirm=yes")
    assert r.status_code == 200 and b"Address confirmed" in r.body


def test_an_unsubscribe_goes_through_with_redis_away(
        app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    """Revoking the old links needs Redis; stopping the mails must not."""
    import redis

    from fmn.auth import unsubscribe_url
    from fmn.web.verify import Verifier

    def away(self: Verifier, user: str, dest_id: str) -> None:
        raise redis.ConnectionError("Redis is away")

    monkeypatch.setattr(Verifier, "revoke", away)
    alice = app.client("alice")
    url = unsubscribe_url("http://web.test", "alice", "email", app.settings.secret_key)
    r = Session(None).http.request("POST", "/" + url.split("/", 3)[3], body=ONE_CLICK,
                                   headers=FORM)
    assert r.status_code == 200
    assert alice.get("/api/v1/destinations").json_body[0]["verified"] is False


def test_the_preview_shows_what_a_rule_would_have_matched(app: App) -> None:
    """The real preview engine over the window the match function fills."""
    from shared_data import golden_messages

    from fmn.matcher import NaiveMatcher
    from fmn.prefs import Preferences, parse_rule
    from fmn.preview.window import RedisWindowStore, record_many, window_key

    messages = golden_messages()
    record_many(RedisWindowStore(app.redis, key=window_key(app.prefix)), messages)
    alice = Session("alice")
    draft = {"name": "koji stuff", "enabled": True,
             "tracking": {"kind": "topics", "params": {"patterns": ["*buildsys*"]}},
             "generation_rules": [{"filters": {}, "destinations": ["email"]}]}
    got = alice.post("/api/v1/preview", {"rule": draft, "limit": 5})
    assert got.status_code == 200, got.body
    body = got.json_body
    assert body["window"] == len(messages) and body["complete"] is True
    # the same as the naive matcher for that one rule
    from fmn.prefs import Destination, User

    rule = parse_rule({**draft, "id": "r"}, "rule", {"email"})
    user = User("alice", True, (Destination("email", "email", "a@example.org", True),), (rule,))
    naive = NaiveMatcher(Preferences(users=(user,)))
    expected = [m.id for m in messages if naive.match(m)]
    assert body["matched"] == len(expected) > 0
    assert [m["id"] for m in body["messages"]] == list(reversed(expected))[:5]
    # saved, the rule's matches are the user's recent notifications, whatever the channel,
    # and its count over the window is its figure for the last 7 days
    saved = alice.post("/api/v1/rules", draft).json_body
    stats = alice.get("/api/v1/stats").json_body
    assert stats["source"] == "window" and stats["rules"][saved["id"]] == len(expected)
    recent = alice.get("/api/v1/notifications?limit=5").json_body
    assert [n["message_id"] for n in recent] == list(reversed(expected))[:5]
    assert all("koji stuff" in n["rule_names"] for n in recent)
    # an invalid draft names the field, as everywhere
    bad = alice.post("/api/v1/preview", {"rule": {**draft, "tracking": {"kind": "nope"}}})
    assert bad.status_code == 400 and bad.json_body["field"]


def test_notifications_say_when_the_search_ran_out_of_time(
        app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    # the list was cut silently: a person with many broad rules saw fewer notifications
    # and no sign of it (the stats said "complete": false, the list nothing)
    from shared_data import golden_messages

    from fmn.preview.window import RedisWindowStore, record_many, window_key
    from fmn.web import service

    record_many(RedisWindowStore(app.redis, key=window_key(app.prefix)), golden_messages())
    alice = Session("alice")
    alice.post("/api/v1/rules", {
        "name": "koji stuff", "enabled": True,
        "tracking": {"kind": "topics", "params": {"patterns": ["*buildsys*"]}},
        "generation_rules": [{"filters": {}, "destinations": ["email"]}]})
    whole = alice.get("/api/v1/notifications")
    assert whole.json_body and whole.headers["FMN-Complete"] == "true"
    monkeypatch.setattr(service, "WINDOW_BUDGET_MS", 0.0)  # no time for any rule
    cut = alice.get("/api/v1/notifications")
    assert cut.status_code == 200 and cut.headers["FMN-Complete"] == "false"
    assert len(cut.json_body) < len(whole.json_body)
    doc = alice.get("/api/v1/openapi.json").json_body
    assert "FMN-Complete" in doc["paths"]["/api/v1/notifications"]["get"]["responses"][
        "200"]["headers"]


def test_hostile_requests_get_a_400_not_a_500(app: App) -> None:
    alice = Session("alice")
    assert alice.get("/api/v1/notifications?limit=%C2%B2").status_code == 400  # "²".isdigit()
    assert alice.get("/api/v1/artifacts?q=a%00b").status_code == 400
    deep = alice.request("POST", "/api/v1/rules", None, headers={
        "content-type": "application/json"})
    assert deep.status_code in (400, 415)
    r = alice.http.request("POST", "/api/v1/rules", body=b"[" * 100_000, headers={
        "cookie": "; ".join(f"{k}={v}" for k, v in alice.cookies.items()),
        "content-type": "application/json", "x-csrf-token": alice.cookies["fmn_csrf"]})
    assert r.status_code == 400 and json.loads(r.body)["error"] == "invalid"


def test_unsubscribe_edge_cases(app: App) -> None:
    from fmn.auth import unsubscribe_url

    outsider = Session(None)
    ghost = unsubscribe_url("http://t", "ghost", "email", app.settings.secret_key)
    r = outsider.http.request("POST", "/" + ghost.split("/", 3)[3], body=ONE_CLICK,
                              headers=FORM)
    assert r.status_code == 200  # an account that is gone: nothing to stop, no error
    Session("alice")
    url = unsubscribe_url("http://t", "alice", "email", app.settings.secret_key)
    for boundary in ("x", "----WebKitFormBoundary7MA4YWxkTrZu0gW"):  # case-sensitive
        r = outsider.http.request("POST", "/" + url.split("/", 3)[3], headers={
            "content-type": f"multipart/form-data; boundary={boundary}"},
            body=f'--{boundary}\r\nContent-Disposition: form-data; name="List-Unsubscribe"'
                 f"\r\n\r\nOne-Click\r\n--{boundary}--\r\n".encode())
        assert r.status_code == 200, r.body  # RFC 8058 lets mail clients send multipart


def test_oidc_with_the_development_key_is_refused() -> None:
    web = Settings(oidc_issuer="https://id.fedoraproject.org", oidc_client_id="fmn")
    with pytest.raises(UnsafeConfiguration):
        check(web)
    check(replace(web, secret_key="a-real-secret"))
