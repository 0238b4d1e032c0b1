"""The web API against hostile and oversized input, and its description kept exact.

Through Chalice's test client on PostgreSQL and Redis (the fixtures of
``test_webapp_api``): what the snapshot cannot hold is refused before it is
saved, sizes are bounded (413/400 naming the limit), every error has the
documented shape (the framework's own 405/415/500 included), pages carry a
Content-Security-Policy and no JSON answer can be sniffed into something
else, and the OpenAPI description names every route, parameter and body.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from test_webapp_api import TOPIC_RULE, App, Session, app, database, engine, webapp

from fmn import prefs
from fmn.snapshot import sync
from fmn.web.http import MAX_BODY_BYTES

pytestmark = pytest.mark.integration
__all__ = ["app", "database", "engine"]  # the fixtures, shared


def _rule_with_filters(filters: dict[str, Any]) -> dict[str, Any]:
    return {**TOPIC_RULE, "generation_rules": [{"filters": filters,
                                                 "destinations": ["email"]}]}


def _is_error(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.body)
    doc: dict[str, Any] = json.loads(r.body)
    assert set(doc) == {"error", "detail", "field"}, doc
    return doc


# -- defect: one rule stops snapshot publishing for every user ---------------------


@pytest.mark.parametrize("key", ["\ud800", "\udfff", "a\ufffe", "\uffff"])
def test_a_filter_key_the_snapshot_cannot_hold_is_refused_and_publishing_goes_on(
        app: App, key: str) -> None:
    alice = app.client("alice")
    body = json.dumps(_rule_with_filters({"fields": {key: [1]}})).encode()  # \\ud800 escapes
    r = alice.http.request("POST", "/api/v1/rules", body=body, headers={
        "content-type": "application/json", "x-csrf-token": alice.cookies["fmn_csrf"],
        "cookie": "; ".join(f"{k}={v}" for k, v in alice.cookies.items())})
    doc = _is_error(r, 400)
    assert doc["field"].startswith("generation_rules[0].filters.fields")
    assert len(alice.get("/api/v1/rules").json_body) == 2  # nothing saved
    # alice's next edit is published, and a full publish still works for everyone
    assert alice.post("/api/v1/rules", TOPIC_RULE).status_code == 201
    sync.publish_full(app.engine, app.store)


def test_a_failing_publish_answers_a_documented_error(app: App) -> None:
    alice = app.client("alice")

    class Broken(type(app.store)):  # type: ignore[misc]
        def apply_change(self, *args: Any, **kwargs: Any) -> Any:
            raise TypeError("cannot encode")

        publish_user = apply_change

    webapp.configure(app.settings, engine=app.engine, store=Broken(app.redis, app.prefix),
                     feed=app.feed, mailer=app.mailer, irc_link=app.irc)
    r = alice.post("/api/v1/rules", TOPIC_RULE)
    assert r.status_code >= 500 or r.status_code == 201
    if r.status_code >= 500:
        assert _is_error(r, r.status_code)["error"] in ("internal", "unavailable")


# -- defect: no size limits --------------------------------------------------------


def test_a_body_over_the_limit_is_413_naming_it(app: App) -> None:
    alice = app.client("alice")
    huge = _rule_with_filters({"fields": {"a": ["x" * 500] * (MAX_BODY_BYTES // 400)}})
    doc = _is_error(alice.post("/api/v1/rules", huge), 413)
    assert doc["error"] == "too-large" and str(MAX_BODY_BYTES) in doc["detail"]


@pytest.mark.parametrize(("body", "field"), [
    (_rule_with_filters({"fields": {"a": ["x" * (prefs.MAX_STRING_CHARS + 1)]}}),
     "generation_rules[0].filters.fields"),
    (_rule_with_filters({"fields": {"a": list(range(prefs.MAX_LIST_ITEMS + 1))}}),
     "generation_rules[0].filters.fields"),
    ({**TOPIC_RULE, "tracking": {"kind": "users-followed", "params": {
        "usernames": [f"u{i}" for i in range(prefs.MAX_LIST_ITEMS + 1)]}}},
     "tracking.params.usernames"),
    ({**TOPIC_RULE, "generation_rules": TOPIC_RULE["generation_rules"]
      * (prefs.MAX_GENERATION_RULES + 1)}, "generation_rules"),
])
def test_documented_limits_are_400_naming_the_limit(app: App, body: dict[str, Any],
                                                    field: str) -> None:
    doc = _is_error(app.client("alice").post("/api/v1/rules", body), 400)
    assert doc["field"].startswith(field), doc
    assert "limit" in doc["detail"], doc


def test_rules_per_user_are_bounded(app: App) -> None:
    alice = app.client("alice")
    for _ in range(prefs.MAX_RULES - 2):
        assert alice.post("/api/v1/rules", TOPIC_RULE).status_code == 201
    doc = _is_error(alice.post("/api/v1/rules", TOPIC_RULE), 409)
    assert str(prefs.MAX_RULES) in doc["detail"]


# -- defect: the smaller ones --------------------------------------------------------


def test_a_rate_limited_destination_is_not_created(app: App) -> None:
    alice = app.client("alice")
    statuses = []
    for i in range(12):  # 10 verifications an hour per user
        statuses.append(alice.post("/api/v1/destinations",
                                   {"protocol": "irc", "address": f"nick{i}"}).status_code)
    assert statuses[-1] == 429 and 201 in statuses
    kept = [d for d in alice.get("/api/v1/destinations").json_body if d["protocol"] == "irc"]
    assert len(kept) == statuses.count(201)


@pytest.mark.parametrize("name", ["", "   ", "\t"])
def test_blank_rule_names_are_refused(app: App, name: str) -> None:
    alice = app.client("alice")
    assert _is_error(alice.post("/api/v1/rules", {**TOPIC_RULE, "name": name}),
                     400)["field"] == "name"
    rule = alice.post("/api/v1/rules", TOPIC_RULE).json_body
    r = alice.request("PATCH", f"/api/v1/rules/{rule['id']}", {"name": name})
    assert _is_error(r, 400)["field"] == "name"
    # the rule editor previews a rule before it has a name
    r = alice.post("/api/v1/preview", {"rule": {**TOPIC_RULE, "name": name.strip()}})
    assert r.status_code == 200, r.body


def test_the_frameworks_own_errors_have_the_documented_format(app: App) -> None:
    alice = app.client("alice")
    r = alice.request("POST", "/api/v1/rules", TOPIC_RULE, headers={
        "content-type": "text/plain"})
    assert _is_error(r, 415)["error"] == "unsupported-media-type"
    r = alice.request("PUT", "/api/v1/rules", TOPIC_RULE)
    assert _is_error(r, 405)["error"] == "method-not-allowed"

    def boom(*args: Any) -> Any:
        raise RuntimeError("a bug")

    webapp.configure(app.settings, engine=app.engine, store=app.store, feed=app.feed,
                     mailer=app.mailer, irc_link=app.irc, previewer=boom)
    r = alice.post("/api/v1/preview", {"rule": TOPIC_RULE})
    doc = _is_error(r, 500)
    assert doc["error"] == "internal" and "a bug" not in doc["detail"]


def test_the_local_servers_own_refusals_have_the_documented_format(app: App) -> None:
    """A request line or header over http.server's 64 KiB, or one it cannot parse, was
    answered with its HTML error page."""
    import socket

    import httpx

    handle = webapp.serve_local(app.settings, 0, engine=app.engine, store=app.store,
                                feed=app.feed, mailer=app.mailer, irc_link=app.irc)
    host, port = handle.url.removeprefix("http://").split(":")

    def answer(request: bytes) -> bytes:
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(request)
            raw = b""
            while chunk := sock.recv(65536):
                raw += chunk
        return raw

    def send(request: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
        head, _, body = answer(request).partition(b"\r\n\r\n")
        status, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines)}
        return int(status.split()[1]), headers, json.loads(body)

    try:
        for request, status in (
                (b"GET /oidc/callback?code=" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414),
                (b"GET /api/v1/me HTTP/1.1\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", 431)):
            got, headers, doc = send(request)
            assert got == status
            assert headers["content-type"] == "application/json"
            assert headers["x-content-type-options"] == "nosniff"
            assert set(doc) == {"error", "detail", "field"} and doc["error"] == "too-large"
            assert "64 KiB" in doc["detail"]
        # a request line it cannot read: answered as HTTP/0.9 would be (no status line, no
        # headers: http.server cannot know the version), but the body is still ours
        raw = answer(b"GET /<script> HTTP/1.1 x\r\n\r\n")
        assert json.loads(raw)["error"] == "invalid" and b"<script>" not in raw
        r = httpx.request("TRACE", f"{handle.url}/api/v1/me", timeout=5)  # still a 405
        assert r.status_code == 405 and r.json()["error"] == "method-not-allowed"
    finally:
        handle.stop()


def test_pages_cannot_be_framed_and_answers_cannot_be_sniffed(app: App) -> None:
    s = Session(None)
    ui = s.get("/")
    csp = ui.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
    assert ui.headers["X-Frame-Options"] == "DENY"
    for path in ("/", "/api/v1/me", "/api/v1/openapi.json", "/static/app.js", "/dev/login"):
        assert s.get(path).headers["X-Content-Type-Options"] == "nosniff", path
    assert app.client("alice").get("/api/v1/rules").headers[
        "X-Content-Type-Options"] == "nosniff"


# -- defect: the OpenAPI description ------------------------------------------------


def test_the_description_names_every_route_parameter_and_body(app: App) -> None:
    doc = Session(None).get("/api/v1/openapi.json").json_body
    routes = {(path, method.lower()) for path, methods in webapp.app.routes.items()
              for method in methods}
    described = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert routes == described
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == set(webapp.app.routes[path][method.upper()].view_args), path
    for path in ("/unsubscribe/{token}", "/dev/login", "/logout"):
        assert path in doc["paths"]
    for method in ("get", "post"):
        html = doc["paths"]["/verify/email/{token}"][method]["responses"]["200"]["content"]
        assert list(html) == ["text/html"]
    confirm = doc["paths"]["/verify/email/{token}"]["post"]
    assert confirm["security"] == [] and set(confirm["requestBody"]["content"]) == {
        "application/x-www-form-urlencoded", "multipart/form-data"}
    query = {p["name"] for p in doc["paths"]["/api/v1/artifacts"]["get"]["parameters"]}
    assert query == {"q", "type", "limit"}
    assert [p["name"] for p in doc["paths"]["/api/v1/notifications"]["get"]["parameters"]] \
        == ["limit"]
    schemas = doc["components"]["schemas"]
    assert schemas["NewIrc"]["properties"]["address"]["pattern"]
    assert schemas["GenerationRule"]["required"] == ["filters", "destinations"]
    kinds = {k for t in ("OwnedTracking", "GroupTracking", "ArtifactTracking", "UserTracking",
                         "TopicTracking")
             for k in (schemas[t]["properties"]["kind"].get("enum")
                       or [schemas[t]["properties"]["kind"]["const"]])}
    assert kinds == set(prefs.TRACKING_KINDS)


@pytest.mark.parametrize("foreign", ['g={"a":1}', "a[b]=1", "bad cookie=1", "x=\"q;"])
def test_a_foreign_cookie_beside_ours_signs_nobody_out(app: App, foreign: str) -> None:
    # another app on a parent domain may set cookies Python's SimpleCookie cannot read;
    # the browser sends them with ours, and it used to stop reading at the first one
    alice = app.client("alice")
    ours = dict(alice.cookies)
    alice.cookies = {foreign.partition("=")[0]: foreign.partition("=")[2], **ours}
    assert alice.get("/api/v1/me").status_code == 200
    assert alice.post("/api/v1/rules", TOPIC_RULE).status_code == 201  # CSRF read too


def test_a_cookie_of_ours_set_again_by_a_sibling_domain_does_not_replace_ours(
        app: App) -> None:
    # browsers send the oldest first: ours; a tossed fmn_session/fmn_csrf comes after
    # and must neither sign alice in as someone else nor split the CSRF token the
    # page reads (the first fmn_csrf, app.js) from the one the server checks
    alice = app.client("alice")
    mallory = app.client("mallory")
    header = "; ".join([*(f"{k}={v}" for k, v in alice.cookies.items()),
                        *(f"{k}={v}" for k, v in mallory.cookies.items())])
    r = alice.http.request("GET", "/api/v1/me", headers={"cookie": header}, body=b"")
    assert r.status_code == 200 and json.loads(r.body)["name"] == "alice"
    r = alice.http.request("POST", "/api/v1/rules", body=json.dumps(TOPIC_RULE).encode(),
                           headers={"cookie": header, "content-type": "application/json",
                                    "x-csrf-token": alice.cookies["fmn_csrf"]})
    assert r.status_code == 201


def _over_https(app: App) -> None:
    webapp.configure(replace(app.settings, web_url="https://notifications.fedoraproject.org"),
                     engine=app.engine, store=app.store, feed=app.feed, mailer=app.mailer,
                     irc_link=app.irc)


def _send(session: Session, method: str, path: str, cookies: dict[str, str],
          csrf: str | None = None, body: Any = None) -> Any:
    headers = {"cookie": "; ".join(f"{k}={v}" for k, v in cookies.items()),
               "content-type": "application/json"}
    if csrf is not None:
        headers["x-csrf-token"] = csrf
    return session.http.request(method, path, headers=headers,
                                body=b"" if body is None else json.dumps(body).encode())


def test_over_https_cookies_are_host_only_and_named_so(app: App) -> None:
    _over_https(app)
    alice = Session(None)
    assert alice.get("/dev/login").status_code == 200
    r = _send(alice, "POST", "/dev/login", alice.cookies,
              alice.cookies["__Host-fmn_csrf"], {"user": "alice"})
    assert r.status_code == 200, r.body
    set_cookie = r.headers["Set-Cookie"]
    for line in [set_cookie] if isinstance(set_cookie, str) else set_cookie:
        attributes = [a.strip() for a in line.split(";")]
        # what a browser needs to keep a __Host- cookie: Secure, Path=/, no Domain
        assert attributes[0].startswith(("__Host-fmn_session=", "__Host-fmn_csrf="))
        assert "Secure" in attributes and "Path=/" in attributes
        assert not any(a.lower().startswith("domain") for a in attributes)
    for line in [set_cookie] if isinstance(set_cookie, str) else set_cookie:
        name, _, rest = line.partition("=")
        alice.cookies[name] = rest.split(";", 1)[0]
    assert json.loads(_send(alice, "GET", "/api/v1/me", alice.cookies).body)["name"] == "alice"
    r = _send(alice, "POST", "/api/v1/rules", alice.cookies, alice.cookies["__Host-fmn_csrf"],
              TOPIC_RULE)
    assert r.status_code == 201
    r = _send(alice, "GET", "/api/v1/openapi.json", {})
    assert json.loads(r.body)["components"]["securitySchemes"]["session"]["name"] == \
        "__Host-fmn_session"


def test_over_https_a_cookie_tossed_from_a_sibling_site_is_not_read(app: App) -> None:
    # any site under the parent domain can set fmn_session/fmn_csrf (Domain=...), even
    # before ours or with a longer path, so it would come first; none can set __Host-
    mallory = app.client("mallory")  # mallory's own valid session, under the plain names
    tossed = {k: v for k, v in mallory.cookies.items()}
    _over_https(app)
    r = _send(mallory, "GET", "/api/v1/me", tossed)
    assert r.status_code == 401  # not read at all
    r = _send(mallory, "POST", "/api/v1/rules", tossed, tossed["fmn_csrf"], TOPIC_RULE)
    assert r.status_code == 403
    assert "__Host-fmn_csrf" in json.loads(r.body)["detail"]
    # nor with a prefix the browser does not see as one: a no-break space before it,
    # sent first; only spaces and tabs around a name are dropped
    for blank in ("\u00a0", "\u2000", "\u3000", "\x0b"):
        planted = {f"{blank}__Host-fmn_session": tossed["fmn_session"],
                   f"{blank}__Host-fmn_csrf": tossed["fmn_csrf"]}
        r = _send(mallory, "GET", "/api/v1/me", planted)
        assert r.status_code == 401, repr(blank)


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("failure", ["away", "busy"])
def test_a_mail_link_opened_with_the_database_away_answers_a_page(
        app: App, method: str, failure: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # a person clicking the link of a mail gets a page saying to try again, not JSON
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    from fmn.auth import unsubscribe_url

    alice = app.client("alice")
    alice.post("/api/v1/destinations", {"protocol": "email", "address": "a4@example.org"})
    verify = next(w for w in app.mailer.sent[-1].get_content().split()
                  if "/verify/email/" in w).removeprefix("http://testserver")
    unsubscribe = "/" + unsubscribe_url("http://t", "alice", "email",
                                        app.settings.secret_key).split("/", 3)[3]

    form = {"content-type": "application/x-www-form-urlencoded"} if method == "POST" else {}
    if method == "POST":  # a refused request on such a route is a page too
        r = Session(None).http.request("POST", verify, headers=form, body=b"")
        assert r.status_code == 400 and r.headers["Content-Type"].startswith("text/html")

    def away(*args: Any, **kwargs: Any) -> Any:
        if failure == "busy":  # every pooled connection in use, none freed in time
            raise PoolTimeout("QueuePool limit of size 5 overflow 10 reached")
        raise OperationalError("SELECT", {}, Exception("connection refused"))

    monkeypatch.setattr(webapp._get("verifier"), "check_email", away)
    monkeypatch.setattr(webapp._get("service"), "unsubscribe", away)
    monkeypatch.setattr(webapp._get("service"), "rules", away)
    r = alice.get("/api/v1/rules")  # the API answers the same, in JSON
    assert r.status_code == 503 and r.json_body["error"] == "unavailable"
    for path, body in ((verify, b"confirm=yes"), (unsubscribe, b"List-Unsubscribe=One-Click")):
        r = Session(None).http.request(method, path, headers=form,
                                       body=body if method == "POST" else b"")
        if path == unsubscribe and method == "GET":  # its page reads nothing
            assert r.status_code == 200
            continue
        assert r.status_code == 503, (path, r.body)
        assert r.headers["Content-Type"].startswith("text/html")
        assert r.headers["Retry-After"] == "5" and b"Try again shortly" in r.body
