"""An in-memory stand-in for the web API (docs/web-api.md), for the browser tests.

It serves the real UI (``webapp/static``) at ``/`` and ``/static/...`` and
implements the contract the UI uses: the development login with real
``fmn_session`` cookies (``fmn.auth.sign``) and double-submit CSRF,
destinations (IRC and Matrix codes are ``123456``), rules validated by
``fmn.prefs.parse_rule``, applications, artifacts, a preview over a few
sample messages, and recent notifications read from the same
:class:`~fmn.delivery.feed.MemoryFeed` the real feed endpoint
(``functions/sse/stream.py``) streams from.  ``GET /api/v1/me`` answers
``feed_url``: the feed endpoint's address with a feed token.

Usage: ``FakeApi(feed, feed_base_url).app`` (Starlette), then
:meth:`FakeApi.push` appends a notification to a user's live feed.
"""

from __future__ import annotations

import fnmatch
import itertools
import json
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from fmn import auth
from fmn.delivery.feed import MemoryFeed, encode_event
from fmn.prefs import InvalidPreferences, dump_rule, parse_rule

STATIC = Path(__file__).resolve().parents[2] / "webapp" / "static"
SECRET = "browser-tests-secret-key"
CSRF_COOKIE = "fmn_csrf"
VERIFY_CODE = "123456"
HOSTILE_SUMMARY = "<img src=x onerror=alert(1)>"

DEMO_USERS = {
    "alice": "alice@example.org",
    "bob": "bob@example.org",
    "carol": "carol@example.org",
}
APPLICATIONS = ["anitya", "bodhi", "copr", "distgit", "fas", "koji", "pagure", "fedora_elections"]
ARTIFACTS = [("rpms", n) for n in ("kernel", "kernel-headers", "kexec-tools", "python3",
                                   "python3-requests", "python-rpm-macros", "firefox", "gcc")]
ARTIFACTS += [("containers", "fedora-toolbox"), ("modules", "nodejs"), ("flatpaks", "firefox")]
OWNERS = {("rpms", "kernel"): ["alice"], ("rpms", "python3"): ["alice"],
          ("rpms", "firefox"): ["bob"]}
GROUP_OWNERS = {("rpms", "python3-requests"): ["python-packagers-sig"]}


def _message(n: int, topic: str, app: str, summary: str, severity: str = "INFO",
             agent: str | None = None, rpms: tuple[str, ...] = (),
             usernames: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"id": f"2024-{n:04d}", "topic": f"org.fedoraproject.prod.{topic}", "app": app,
            "summary": summary, "url": f"https://apps.fedoraproject.org/msg/{n}",
            "sent_at": f"2024-06-01T12:{n:02d}:00+00:00", "severity": severity,
            "agent": agent, "rpms": list(rpms), "usernames": list(usernames or (agent,))}


#: what the preview matches against (newest first)
SAMPLE_MESSAGES = [
    _message(9, "bodhi.update.comment", "bodhi",
             "bob commented on bodhi update kernel-6.9.3-200.fc40", agent="bob",
             rpms=("kernel",), usernames=("bob", "alice")),
    _message(8, "buildsys.build.state.change", "koji",
             "alice's kernel-6.9.3-200.fc40 completed", agent="alice", rpms=("kernel",)),
    _message(7, "git.receive", "distgit", "carol pushed to rpms/python3 (f40)", agent="carol",
             rpms=("python3",)),
    _message(6, "anitya.project.version.update.v2", "anitya",
             "A new version of python3-requests has been detected: 2.32.3", agent="anitya",
             rpms=("python3-requests",)),
    _message(5, "copr.build.start", "copr", HOSTILE_SUMMARY, severity="WARNING", agent="bob",
             rpms=("kernel",)),
    _message(4, "copr.build.end", "copr", "Copr build 7301 of bob/firefox-nightly failed",
             severity="ERROR", agent="bob", rpms=("firefox",)),
    _message(3, "fas.group.member.sponsor", "fas", "carol sponsored dave into packager",
             agent="carol", usernames=("carol", "dave")),
    _message(2, "buildsys.tag", "koji", "gcc-14.1.1-5.fc41 tagged into f41", severity="DEBUG",
             agent="releng", rpms=("gcc",)),
    _message(1, "pagure.pull-request.new", "pagure", "alice opened PR #12 on fedora-infra/fmn",
             agent="alice"),
]


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail, self.field = status, error, detail, field

    def response(self) -> Response:
        return JSONResponse({"error": self.error, "detail": self.detail, "field": self.field},
                            status_code=self.status)


@dataclass
class UserState:
    destinations: list[dict[str, Any]] = field(default_factory=list)
    rules: list[dict[str, Any]] = field(default_factory=list)
    resent: int = 0
    enabled: bool = True  # False: an administrator turned the account off
    publish_pending: bool = False
    account_blocked: bool = False  # the Fedora account locked or deleted


def _field_path(where: str) -> str:
    """``rule (new) > generation_rules[0].filters.topic`` -> ``generation_rules[0]...``."""
    parts = [p for p in where.split(" > ") if not p.startswith("rule")]
    return ".".join(parts)


def _check_keys(body: Any, allowed: set[str], required: set[str] = frozenset()) -> dict:
    if not isinstance(body, dict):
        raise ApiError(400, "invalid", "the body must be a JSON object")
    for key in body:
        if key not in allowed:
            raise ApiError(400, "invalid", f"unknown field {key!r}", key)
    for key in sorted(required - set(body)):
        raise ApiError(400, "invalid", "this field is required", key)
    return body


class FakeApi:
    def __init__(self, feed: MemoryFeed, feed_base_url: str | None) -> None:
        self.feed = feed
        self.feed_base_url = feed_base_url
        self.users: dict[str, UserState] = {name: UserState() for name in DEMO_USERS}
        self.ids = itertools.count(1)
        #: the last event's receipt time: each later by a millisecond at least, as the
        #: list orders by it (two pushes in one millisecond came out in either order)
        self._received = datetime.min.replace(tzinfo=UTC)
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, csrf header
        #: False: the searches behind previews and the recent list "ran out of time"
        self.complete = True
        #: the preview window's matches the recent list adds to the feed's events (no id)
        self.window_matches: list[dict[str, Any]] = []
        self.app = self._build()

    # -- state helpers ------------------------------------------------------------------

    def new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self.ids)}"

    def add_destination(self, user: str, protocol: str, address: str | None,
                        verified: bool = False) -> dict[str, Any]:
        dest = {"id": self.new_id("d"), "protocol": protocol, "address": address,
                "verified": verified or protocol == "sse", "digest": None}
        self.users[user].destinations.append(dest)
        return dest

    def add_rule(self, user: str, rule: dict[str, Any]) -> dict[str, Any]:
        saved = self._validate_rule(user, rule, self.new_id("r"))
        self.users[user].rules.append(saved)
        return saved

    def feed_events(self, user: str) -> list[dict[str, Any]]:
        """``user``'s live-feed events, as the recent list gets them."""
        return [json.loads(e.data) for e in self.feed.latest(user, 1000)]

    def _received_now(self) -> datetime:
        self._received = max(datetime.now(UTC), self._received + timedelta(milliseconds=1))
        return self._received

    def push(self, user: str, **fields: Any) -> str:
        """Append a notification to ``user``'s live feed (what the sse sender would do)."""
        event = {"v": 1, "message_id": f"live-{next(self.ids)}",
                 "topic": "org.fedoraproject.prod.bodhi.update.comment", "app": "bodhi",
                 "agent": "bob", "summary": "A notification", "url": None,
                 "sent_at": "2024-06-01T13:00:00+00:00", "severity": "INFO",
                 "rules": [], "rule_names": [],
                 "received_at": self._received_now().isoformat(timespec="milliseconds")}
        event.update(fields)
        return self.feed.append(user, encode_event(event))

    def _validate_rule(self, user: str, body: Any, rule_id: str,
                       need_destinations: bool = True) -> dict[str, Any]:
        body = _check_keys(body, {"name", "enabled", "tracking", "generation_rules"},
                           {"name", "enabled", "tracking", "generation_rules"})
        dest_ids = {d["id"] for d in self.users[user].destinations}
        try:
            rule = parse_rule({"id": rule_id, **body}, "rule", dest_ids)
        except InvalidPreferences as exc:
            raise ApiError(400, "invalid", exc.reason, _field_path(exc.where)) from exc
        for i, gen in enumerate(rule.generation_rules):
            if need_destinations and not gen.destinations:
                raise ApiError(400, "invalid", "choose at least one destination",
                               f"generation_rules[{i}].destinations")
        return dump_rule(rule)

    # -- matching for the preview -----------------------------------------------------------

    def _tracks(self, user: str, tracking: dict[str, Any], m: dict[str, Any]) -> bool:
        kind, params = tracking["kind"], tracking.get("params", {})
        arts = [("rpms", n) for n in m["rpms"]]
        if kind == "artifacts-owned":
            return any(user in OWNERS.get(a, ()) for a in arts)
        if kind == "artifacts-group-owned":
            return any(set(params["groups"]) & set(GROUP_OWNERS.get(a, ())) for a in arts)
        if kind == "artifacts-followed":
            return any((a["type"], a["name"]) in arts for a in params["artifacts"])
        if kind == "related-events":
            return user in m["usernames"]
        if kind == "users-followed":
            return bool(set(params["usernames"]) & set(m["usernames"]))
        return any(fnmatch.fnmatchcase(m["topic"], p) for p in params["patterns"])

    @staticmethod
    def _passes(user: str, f: dict[str, Any], m: dict[str, Any]) -> bool:
        if "applications" in f and m["app"].lower() not in {a.lower() for a in f["applications"]}:
            return False
        severities = f.get("severities", ["INFO", "WARNING", "ERROR"])
        if m["severity"] not in severities:
            return False
        if "topic" in f and not fnmatch.fnmatchcase(m["topic"], f["topic"]):
            return False
        return f.get("my_actions") is True or m["agent"] != user

    # -- the app ----------------------------------------------------------------------------

    def _build(self) -> Starlette:
        def user_of(request: Request) -> str:
            try:
                user = auth.verify(request.cookies.get(auth.SESSION_COOKIE, ""), SECRET,
                                   "session", auth.SESSION_MAX_AGE_S)
            except auth.InvalidToken as exc:
                raise ApiError(401, "unauthorized", "sign in first") from exc
            if request.method not in ("GET", "HEAD"):
                header = request.headers.get("x-csrf-token")
                cookie = request.cookies.get(CSRF_COOKIE)
                if not header or header != cookie:
                    raise ApiError(403, "csrf", "missing or wrong X-CSRF-Token")
            return user

        async def body_of(request: Request) -> Any:
            raw = await request.body()
            if not raw:
                return {}
            try:
                return await request.json()
            except ValueError as exc:
                raise ApiError(400, "invalid", "the body is not JSON") from exc

        def endpoint(fn: Any) -> Any:
            async def run(request: Request) -> Response:
                self.requests.append((request.method, request.url.path,
                                      request.headers.get("x-csrf-token")))
                try:
                    return await fn(request)
                except ApiError as exc:
                    return exc.response()
            return run

        async def index(request: Request) -> Response:
            return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

        async def dev_users(request: Request) -> Response:
            return JSONResponse(list(DEMO_USERS))

        async def dev_login(request: Request) -> Response:
            body = await body_of(request)
            name = body.get("user") if isinstance(body, dict) else None
            if name not in DEMO_USERS:
                raise ApiError(400, "invalid", "not a demo user", "user")
            response = JSONResponse({"name": name})
            response.set_cookie(auth.SESSION_COOKIE, auth.sign(name, SECRET, "session"),
                                httponly=True, samesite="lax", path="/")
            response.set_cookie(CSRF_COOKIE, secrets.token_urlsafe(24), samesite="lax", path="/")
            return response

        async def logout(request: Request) -> Response:
            user_of(request)
            response = Response(status_code=204)
            response.delete_cookie(auth.SESSION_COOKIE, path="/")
            response.delete_cookie(CSRF_COOKIE, path="/")
            return response

        async def oidc_login(request: Request) -> Response:
            return PlainTextResponse("OpenID Connect is not configured here", status_code=501)

        async def me(request: Request) -> Response:
            user = user_of(request)
            feed_url = (auth.feed_url(self.feed_base_url, user, SECRET)
                        if self.feed_base_url else None)
            state = self.users[user]
            return JSONResponse({"name": user, "email": DEMO_USERS[user], "is_admin": False,
                                 "enabled": state.enabled,
                                 "publish_pending": state.publish_pending,
                                 "account_blocked": state.account_blocked,
                                 "feed_url": feed_url})

        async def destinations(request: Request) -> Response:
            user = user_of(request)
            if request.method == "GET":
                return JSONResponse(self.users[user].destinations)
            body = _check_keys(await body_of(request), {"protocol", "address"}, {"protocol"})
            protocol, address = body["protocol"], (body.get("address") or "").strip()
            if protocol not in ("email", "irc", "matrix", "sse"):
                raise ApiError(400, "invalid", "must be email, irc, matrix or sse", "protocol")
            if protocol == "sse":
                address = None
            elif not address:
                raise ApiError(400, "invalid", "an address is needed", "address")
            elif protocol == "email" and "@" not in address:
                raise ApiError(400, "invalid", "not an e-mail address", "address")
            elif protocol == "matrix" and not (address.startswith("@") and ":" in address):
                raise ApiError(400, "invalid", "a Matrix ID looks like @name:server", "address")
            return JSONResponse(self.add_destination(user, protocol, address), status_code=201)

        def find_dest(user: str, dest_id: str) -> dict[str, Any]:
            for d in self.users[user].destinations:
                if d["id"] == dest_id:
                    return d
            raise ApiError(404, "not_found", "no such destination")

        async def destination(request: Request) -> Response:
            user = user_of(request)
            d = find_dest(user, request.path_params["id"])
            if request.method == "DELETE":
                state = self.users[user]
                if any(d["id"] in g["destinations"] for r in state.rules
                       for g in r["generation_rules"]):
                    raise ApiError(409, "in_use", "a rule still sends to this destination")
                state.destinations.remove(d)
                return Response(status_code=204)
            body = _check_keys(await body_of(request), {"digest"}, {"digest"})
            digest = body["digest"]
            if digest is not None:
                digest = _check_keys(digest, {"interval_s", "max_count"},
                                     {"interval_s", "max_count"})
                for key in ("interval_s", "max_count"):
                    if not isinstance(digest[key], int) or digest[key] < 1:
                        raise ApiError(400, "invalid", "must be a positive integer",
                                       f"digest.{key}")
            d["digest"] = digest
            return JSONResponse(d)

        async def verify(request: Request) -> Response:
            user = user_of(request)
            d = find_dest(user, request.path_params["id"])
            body = _check_keys(await body_of(request), {"code"}, {"code"})
            if body["code"] != VERIFY_CODE:
                raise ApiError(400, "invalid", "wrong or expired code", "code")
            d["verified"] = True
            return JSONResponse(d)

        async def resend(request: Request) -> Response:
            user = user_of(request)
            dest = find_dest(user, request.path_params["id"])
            if dest["verified"]:  # as fmn.web.verify: nothing sent
                return JSONResponse({"verification": "verified"}, status_code=202)
            self.users[user].resent += 1
            return JSONResponse({"verification": "link" if dest["protocol"] == "email"
                                 else "code"}, status_code=202)

        async def rules(request: Request) -> Response:
            user = user_of(request)
            if request.method == "GET":
                return JSONResponse(self.users[user].rules)
            return JSONResponse(self.add_rule(user, await body_of(request)), status_code=201)

        async def rule(request: Request) -> Response:
            user = user_of(request)
            state = self.users[user]
            found = [r for r in state.rules if r["id"] == request.path_params["id"]]
            if not found:
                raise ApiError(404, "not_found", "no such rule")
            r = found[0]
            if request.method == "GET":
                return JSONResponse(r)
            if request.method == "DELETE":
                state.rules.remove(r)
                return Response(status_code=204)
            body = await body_of(request)
            if request.method == "PATCH":
                body = _check_keys(body, {"enabled"}, {"enabled"})
                if not isinstance(body["enabled"], bool):
                    raise ApiError(400, "invalid", "must be true or false", "enabled")
                r["enabled"] = body["enabled"]
                return JSONResponse(r)
            saved = self._validate_rule(user, body, r["id"])
            state.rules[state.rules.index(r)] = saved
            return JSONResponse(saved)

        async def applications(request: Request) -> Response:
            user_of(request)
            return JSONResponse(APPLICATIONS)

        async def artifacts(request: Request) -> Response:
            user_of(request)
            q = request.query_params.get("q", "").lower()
            atype = request.query_params.get("type")
            limit = int(request.query_params.get("limit", "20"))
            found = [{"type": t, "name": n} for t, n in ARTIFACTS
                     if q in n.lower() and (not atype or t == atype)]
            return JSONResponse(found[:limit])

        async def ownership(request: Request) -> Response:
            user_of(request)
            return JSONResponse({
                "direct": [{"type": t, "name": n} for t, n in ARTIFACTS[:3]],
                "groups": [{"name": "kernel-maint", "artifacts": [
                    {"type": t, "name": n} for t, n in ARTIFACTS[3:5]]}],
                "refreshed": {"reconcile": "2026-12-02T07:00:00+00:00",
                              "live": "2026-12-02T07:59:00+00:00", "accounts": None},
                "account": None})

        async def preview(request: Request) -> Response:
            user = user_of(request)
            body = _check_keys(await body_of(request), {"rule", "limit"}, {"rule"})
            started = time.perf_counter()
            unnamed = body["rule"]  # the editor previews before the rule is named
            if isinstance(unnamed, dict) and isinstance(unnamed.get("name"), str) \
                    and not unnamed["name"].strip():
                unnamed = {**unnamed, "name": "preview"}
            rule = self._validate_rule(user, unnamed, "preview", need_destinations=False)
            messages = [m for m in SAMPLE_MESSAGES
                        if self._tracks(user, rule["tracking"], m)
                        and any(self._passes(user, g["filters"], m)
                                for g in rule["generation_rules"])]
            shown = [{k: m[k] for k in ("id", "topic", "app", "summary", "url", "sent_at",
                                        "severity")} for m in messages]
            return JSONResponse({"window": len(SAMPLE_MESSAGES), "matched": len(messages),
                                 "messages": shown[:int(body.get("limit", 50))],
                                 "took_ms": (time.perf_counter() - started) * 1000,
                                 "complete": self.complete})

        async def notifications(request: Request) -> Response:
            # As fmn.web.service: oldest first, each with its feed id.
            user = user_of(request)
            limit = int(request.query_params.get("limit", "50"))
            return JSONResponse([{"id": e.id, **json.loads(e.data)}
                                 for e in self.feed.latest(user, limit)]
                                + self.window_matches,
                                headers={"FMN-Complete": "true" if self.complete else "false"})

        routes = [
            Route("/", endpoint(index)),
            Route("/dev/login", endpoint(dev_users), methods=["GET"]),
            Route("/dev/login", endpoint(dev_login), methods=["POST"]),
            Route("/login", endpoint(oidc_login)),
            Route("/logout", endpoint(logout), methods=["POST"]),
            Route("/api/v1/me", endpoint(me)),
            Route("/api/v1/destinations", endpoint(destinations), methods=["GET", "POST"]),
            Route("/api/v1/destinations/{id}", endpoint(destination),
                  methods=["PATCH", "DELETE"]),
            Route("/api/v1/destinations/{id}/verify", endpoint(verify), methods=["POST"]),
            Route("/api/v1/destinations/{id}/resend", endpoint(resend), methods=["POST"]),
            Route("/api/v1/rules", endpoint(rules), methods=["GET", "POST"]),
            Route("/api/v1/rules/{id}", endpoint(rule), methods=["GET", "PUT", "PATCH", "DELETE"]),
            Route("/api/v1/applications", endpoint(applications)),
            Route("/api/v1/artifacts", endpoint(artifacts)),
            Route("/api/v1/ownership", endpoint(ownership)),
            Route("/api/v1/preview", endpoint(preview), methods=["POST"]),
            Route("/api/v1/notifications", endpoint(notifications)),
            Mount("/static", StaticFiles(directory=STATIC)),
        ]
        return Starlette(routes=routes)


def seed_demo(api: FakeApi) -> None:
    """Demo data: alice has her live feed, a verified e-mail, an IRC nick to verify and a rule;
    her feed already holds a few notifications."""
    sse = api.add_destination("alice", "sse", None)
    mail = api.add_destination("alice", "email", "alice@example.org", verified=True)
    api.add_destination("alice", "irc", "alice_f")
    api.add_rule("alice", {
        "name": "My packages", "enabled": True,
        "tracking": {"kind": "artifacts-owned", "params": {}},
        "generation_rules": [{"filters": {}, "destinations": [sse["id"], mail["id"]]}]})
    for m in SAMPLE_MESSAGES[:2][::-1]:
        api.push("alice", message_id=m["id"], topic=m["topic"], app=m["app"], agent=m["agent"],
                 summary=m["summary"], url=m["url"], sent_at=m["sent_at"],
                 severity=m["severity"], rules=["r-demo"], rule_names=["My packages"])
