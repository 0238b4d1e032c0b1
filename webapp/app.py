"""The preferences web app (Chalice): the API of docs/web-api.md, sign-in, and the UI's files.

A thin edge around :mod:`fmn.web`: each route reads the session, checks the
CSRF token of a state-changing request, calls
:class:`fmn.web.service.PreferencesService` or :class:`fmn.web.verify.Verifier`
and maps what they raise to JSON errors (``{"error", "detail", "field"}``).
Clients, the database engine and the OIDC client are built on first use
(:func:`configure` injects them in tests and the local stack); nothing does
I/O at import.  A configuration unsafe to serve with (the development login
with ``FMN_ENV=production``, the development secret in production) makes
every request fail with that message, and :func:`serve_local` refuse to start.

``serve_local(settings, port)`` runs this app on a real local HTTP port and
returns a handle with ``url`` and ``stop()``.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import logging
import mimetypes
import re
import secrets
import threading
from collections.abc import Callable
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from chalice.app import Chalice, Request, Response
from sqlalchemy.exc import DBAPIError

from fmn import auth
from fmn.errors import RetryableError
from fmn.prefs import dump_destination, dump_rule
from fmn.settings import Settings
from fmn.web import UnsafeConfiguration, WebSettings
from fmn.web.service import (
    Forbidden,
    Invalid,
    NotFound,
    NotSignedIn,
    PreferencesService,
    RateLimited,
    WebError,
    known_applications,
)

app = Chalice(app_name="fmn-webapp")
app.api.binary_types.extend(["image/*", "font/*", "application/octet-stream"])
log = logging.getLogger("fmn.webapp")

STATIC = Path(__file__).resolve().parent / "static"
CSRF_COOKIE = "fmn_csrf"
CSRF_HEADER = "x-csrf-token"
OIDC_COOKIE = "fmn_oidc"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
JSON_TYPES = ["application/json"]
FORM_TYPES = ["application/json", "application/x-www-form-urlencoded"]
_DEV_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_STATIC_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")

_state: dict[str, Any] = {}
_lock = threading.Lock()


# --------------------------------------------------------------------------
# state


def reset() -> None:
    _state.clear()


def configure(settings: Settings | None = None, web: WebSettings | None = None,
              **overrides: Any) -> None:
    """Build the state now from explicit settings; ``overrides`` replace parts of it
    (``engine``, ``store``, ``service``, ``verifier``, ``oidc``, ``feed``, ``mailer``,
    ``irc_link``, ``keys``, ``clock``; ``demo_users``: the names the development
    login offers first, its default first).  Raises UnsafeConfiguration."""
    with _lock:
        _state.clear()
        _build(settings or Settings.from_env(), web or WebSettings.from_env(), overrides)


def _get(name: str) -> Any:
    if not _state:
        with _lock:
            if not _state:
                _build(Settings.from_env(), WebSettings.from_env(), {})
    return _state[name]


def _build(s: Settings, web: WebSettings, o: dict[str, Any]) -> None:
    import time

    from fmn import db
    from fmn.web.verify import IrcCodeChannel, RecordingChannel, RedisKeys, Verifier

    web.check(s.secret_key)
    clock = o.get("clock", time.time)
    engine = o.get("engine") or db.make_engine(s.database_url)
    if "store" in o:
        store = o["store"]
    else:
        from fmn.snapshot.store import RedisSnapshotStore

        store = RedisSnapshotStore.from_url(s.redis_url, s.snapshot_prefix)
    if "feed" in o:
        feed = o["feed"]
    else:
        from fmn.delivery.feed import RedisFeed

        feed = RedisFeed.from_url(s.redis_url, s.feed_prefix, s.feed_maxlen, s.feed_max_age_s)
    service = o.get("service") or PreferencesService(
        engine, store, admins=web.admins, feed=feed,
        previewer=o.get("previewer") or _previewer(engine, s), clock=clock)
    mailer = o.get("mailer")
    if mailer is None:
        from fmn.delivery.mailers import make_mailer

        mailer = make_mailer(s)
    irc_link = o.get("irc_link")
    if irc_link is None:
        from fmn.delivery.irc import TokenBucket
        from fmn.delivery.irc_client import IrcClientLink

        irc_link = IrcClientLink.from_url(s.irc_url, TokenBucket(s.irc_burst, s.irc_rate))
    matrix = o.get("matrix") or RecordingChannel("matrix", log_codes=not web.production)
    verifier = o.get("verifier") or Verifier(
        service, o.get("keys") or RedisKeys.from_url(s.redis_url), s.secret_key,
        web_url=s.web_url, mailer=mailer, mail_from=s.mail_from,
        channels={"irc": IrcCodeChannel(irc_link), "matrix": matrix}, clock=clock)
    oidc = o.get("oidc")
    if oidc is None and web.oidc_issuer and web.oidc_client_id:
        from fmn.web.oidc import OidcClient

        oidc = OidcClient(web.oidc_issuer, web.oidc_client_id, web.oidc_client_secret,
                          f"{s.web_url}/oidc/callback", clock=clock)
    _state.update(settings=s, web=web, engine=engine, store=store, feed=feed, service=service,
                  verifier=verifier, oidc=oidc, matrix=matrix, clock=clock,
                  demo_users=tuple(o.get("demo_users", ())))


def _previewer(engine: Any, s: Settings) -> Any:
    from fmn.preview.window import window_key
    from fmn.web.service import engine_previewer

    return engine_previewer(engine, s.redis_url, window_key(s.queue_prefix))


# --------------------------------------------------------------------------
# requests and answers


def _request() -> Request:
    request = app.current_request
    assert request is not None
    return request


def _cookies(request: Request) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(request.headers.get("cookie", ""))
    except Exception:  # http.cookies.CookieError: a garbled header counts as no cookies
        return {}
    return {k: m.value for k, m in jar.items()}


def _cookie(name: str, value: str, *, max_age: int | None, http_only: bool = True,
            path: str = "/") -> str:
    parts = [f"{name}={value}", f"Path={path}", "SameSite=Lax"]
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    if http_only:
        parts.append("HttpOnly")
    s, web = _get("settings"), _get("web")
    if s.web_url.startswith("https://") or web.production:
        parts.append("Secure")
    return "; ".join(parts)


def _json(body: Any, status: int = 200, headers: dict[str, Any] | None = None) -> Response:
    return Response(body=json.dumps(body), status_code=status,
                    headers={"Content-Type": "application/json", "Cache-Control": "no-store",
                             **(headers or {})})


def _html(title: str, body: str, status: int = 200) -> Response:
    page = (f"<!doctype html><html lang=en><meta charset=utf-8><title>{html.escape(title)}"
            f"</title><body><h1>{html.escape(title)}</h1>{body}</body></html>")
    return Response(body=page, status_code=status,
                    headers={"Content-Type": "text/html; charset=utf-8",
                             "Cache-Control": "no-store",
                             "Content-Security-Policy": "default-src 'self'",
                             "X-Frame-Options": "DENY"})


def _redirect(location: str, cookies: list[str] | None = None) -> Response:
    headers: dict[str, Any] = {"Location": location, "Cache-Control": "no-store"}
    if cookies:
        headers["Set-Cookie"] = cookies
    return Response(body="", status_code=302, headers=headers)


def _error(exc: WebError) -> Response:
    headers = {}
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(exc.retry_after_s)
    return _json(exc.as_json(), exc.status, headers)


def _body(request: Request) -> Any:
    raw = request.raw_body or b""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("application/x-www-form-urlencoded"):
        return {k: v[-1] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: hostile nesting
        raise Invalid(f"the body is not JSON: {str(exc)[:200]}") from exc


def csrf_for(session: str) -> str:
    """The CSRF token bound to a session (double-submit, and forgeable by no one else)."""
    key = _get("settings").secret_key.encode()
    return hmac.new(key, b"csrf\0" + session.encode(), hashlib.sha256).hexdigest()


def _check_csrf(request: Request, form: Any = None) -> None:
    cookie = _cookies(request).get(CSRF_COOKIE, "")
    sent = request.headers.get(CSRF_HEADER, "")
    if not sent and isinstance(form, dict):
        sent = str(form.get("csrf", ""))
    if not cookie or not sent or not hmac.compare_digest(cookie.encode(), sent.encode()):
        raise Forbidden("missing or wrong CSRF token: send the fmn_csrf cookie's value in "
                        "the X-CSRF-Token header", "X-CSRF-Token")
    session = _cookies(request).get(auth.SESSION_COOKIE)
    if session and not hmac.compare_digest(csrf_for(session).encode(), sent.encode()):
        raise Forbidden("the CSRF token belongs to another session", "X-CSRF-Token")


def _user(request: Request) -> str:
    session = _cookies(request).get(auth.SESSION_COOKIE)
    if not session:
        raise NotSignedIn("sign in first (GET /login)")
    try:
        return auth.verify(session, _get("settings").secret_key, "session",
                           auth.SESSION_MAX_AGE_S, clock=_get("clock"))
    except auth.InvalidToken as exc:
        raise NotSignedIn(f"your session is not valid ({exc.reason}); sign in again") from exc


def _session_cookies(name: str) -> list[str]:
    session = auth.sign(name, _get("settings").secret_key, "session", clock=_get("clock"))
    return [_cookie(auth.SESSION_COOKIE, session, max_age=auth.SESSION_MAX_AGE_S),
            _cookie(CSRF_COOKIE, csrf_for(session), max_age=auth.SESSION_MAX_AGE_S,
                    http_only=False)]


def endpoint(*, signed_in: bool = True) -> Callable[[Callable[..., Response]],
                                                     Callable[..., Response]]:
    """Wrap a view: CSRF for unsafe methods, the user, errors mapped to JSON."""

    def wrap(view: Callable[..., Response]) -> Callable[..., Response]:
        def run(**params: Any) -> Response:
            request = _request()
            try:
                if request.method in UNSAFE_METHODS:
                    _check_csrf(request)
                if signed_in:
                    params["user"] = _user(request)
                return view(**params)
            except WebError as exc:
                return _error(exc)
            except UnsafeConfiguration as exc:
                log.error("refusing to serve: %s", exc)
                return _json({"error": "misconfigured", "detail": str(exc), "field": None}, 500)
            except (RetryableError, DBAPIError) as exc:  # DBAPIError: the database away
                log.warning("dependency failed: %s", exc)
                return _json({"error": "unavailable", "detail": "a service we depend on is "
                              "unavailable; try again shortly", "field": None}, 503,
                             {"Retry-After": "5"})

        run.__name__ = view.__name__
        run.__doc__ = view.__doc__
        return run

    return wrap


def _service() -> PreferencesService:
    service: PreferencesService = _get("service")
    return service


def _int_param(name: str, default: int) -> int:
    value = (_request().query_params or {}).get(name)
    if value is None:
        return default
    if not (value.isascii() and value.isdigit()) or len(value) > 6:
        raise Invalid("must be a positive integer", name)
    return int(value)


# --------------------------------------------------------------------------
# sign-in


@app.route("/login", methods=["GET"])
@endpoint(signed_in=False)
def login() -> Response:
    oidc = _get("oidc")
    if oidc is None:
        if _get("web").dev_login:
            return _redirect("/dev/login")
        return _json({"error": "no-login", "detail": "no account system is configured "
                      "(FMN_OIDC_ISSUER, FMN_OIDC_CLIENT_ID)", "field": None}, 503)
    from fmn.web.oidc import seal

    url, pending = oidc.begin("/")
    sealed = seal(pending, _get("settings").secret_key)
    return _redirect(url, [_cookie(OIDC_COOKIE, sealed, max_age=600, path="/oidc")])


@app.route("/oidc/callback", methods=["GET"])
@endpoint(signed_in=False)
def oidc_callback() -> Response:
    from fmn.web.oidc import OidcError, unseal

    request = _request()
    oidc = _get("oidc")
    if oidc is None:
        raise NotFound("no account system is configured")
    try:
        pending = unseal(_cookies(request).get(OIDC_COOKIE, ""), _get("settings").secret_key)
        account = oidc.finish(pending, dict(request.query_params or {}))
    except OidcError as exc:
        return _html("Sign-in failed", f"<p>{html.escape(str(exc))}</p>"
                                       "<p><a href=/login>Try again</a></p>", 401)
    _service().login(account.name, account.email)
    cookies = [*_session_cookies(account.name),
               _cookie(OIDC_COOKIE, "", max_age=0, path="/oidc")]
    return _redirect("/", cookies)


@app.route("/logout", methods=["POST"], content_types=FORM_TYPES)
@endpoint(signed_in=False)
def logout() -> Response:
    return Response(body="", status_code=204, headers={"Set-Cookie": [
        _cookie(auth.SESSION_COOKIE, "", max_age=0),
        _cookie(CSRF_COOKIE, "", max_age=0, http_only=False)]})


def _dev_login_on() -> None:
    if not _get("web").dev_login:
        raise NotFound("the development login is off (FMN_DEV_LOGIN)")


@app.route("/dev/login", methods=["GET"])
@endpoint(signed_in=False)
def dev_login_page() -> Response:
    _dev_login_on()
    from fmn import db

    suggested = list(_get("demo_users"))  # the local stack's: those the replay notifies
    names = (suggested + [n for n in db.user_revisions(_get("engine"))
                          if n not in suggested])[:20]
    token = _cookies(_request()).get(CSRF_COOKIE, "")
    if not re.fullmatch(r"[0-9a-f]{64}", token):  # only ever reuse one we could have set
        token = secrets.token_hex(32)
    options = "".join(f"<option>{html.escape(n)}</option>" for n in names)
    body = ("<p>Development login: no password. Never enabled in production.</p>"
            "<form method=post action=/dev/login>"
            f'<input type=hidden name=csrf value="{html.escape(token)}">'
            "<input name=user list=users required autofocus>"
            f"<datalist id=users>{options}</datalist> <button>Sign in</button></form>")
    page = _html("Sign in (development)", body)
    page.headers["Set-Cookie"] = _cookie(CSRF_COOKIE, token, max_age=3600, http_only=False)
    return page


@app.route("/dev/login", methods=["POST"], content_types=FORM_TYPES)
def dev_login() -> Response:
    request = _request()
    try:
        _dev_login_on()
        form = _body(request)
        _check_csrf(request, form)
        if not isinstance(form, dict) or not isinstance(form.get("user"), str):
            raise Invalid("name the user to sign in as", "user")
        name = form["user"].strip()
        if not _DEV_NAME.fullmatch(name):
            raise Invalid("not an account name (lowercase letters, digits, _ . -)", "user")
        _service().login(name, f"{name}@example.org")
    except WebError as exc:
        return _error(exc)
    except UnsafeConfiguration as exc:
        return _json({"error": "misconfigured", "detail": str(exc), "field": None}, 500)
    cookies = _session_cookies(name)
    if request.headers.get("content-type", "").startswith("application/json"):
        me = _service().me(name)
        return _json(me, 200, {"Set-Cookie": cookies})
    return _redirect("/", cookies)


# --------------------------------------------------------------------------
# the API


@app.route("/api/v1/me", methods=["GET"])
@endpoint()
def me(user: str) -> Response:
    from fmn.auth import feed_url

    s = _get("settings")
    # the live feed (another origin on AWS): a signed link the page's EventSource opens
    live = feed_url(s.feed_url, user, s.secret_key) if s.feed_url else None
    return _json({**_service().me(user), "feed_url": live})


@app.route("/api/v1/destinations", methods=["GET"])
@endpoint()
def list_destinations(user: str) -> Response:
    return _json([dump_destination(d) for d in _service().destinations(user)])


@app.route("/api/v1/destinations", methods=["POST"], content_types=JSON_TYPES)
@endpoint()
def add_destination(user: str) -> Response:
    dest = _service().add_destination(user, _body(_request()))
    sent = _get("verifier").start(user, dest.id) if not dest.verified else "verified"
    return _json({**dump_destination(dest), "verification": sent}, 201)


@app.route("/api/v1/destinations/{dest_id}", methods=["PATCH"], content_types=JSON_TYPES)
@endpoint()
def patch_destination(user: str, dest_id: str) -> Response:
    return _json(dump_destination(_service().patch_destination(user, dest_id,
                                                               _body(_request()))))


@app.route("/api/v1/destinations/{dest_id}", methods=["DELETE"])
@endpoint()
def delete_destination(user: str, dest_id: str) -> Response:
    _service().delete_destination(user, dest_id)
    return Response(body="", status_code=204)


@app.route("/api/v1/destinations/{dest_id}/verify", methods=["POST"], content_types=JSON_TYPES)
@endpoint()
def verify_destination(user: str, dest_id: str) -> Response:
    dest = _get("verifier").confirm_code(user, dest_id, _body(_request()))
    return _json(dump_destination(dest))


@app.route("/api/v1/destinations/{dest_id}/resend", methods=["POST"], content_types=JSON_TYPES)
@endpoint()
def resend_verification(user: str, dest_id: str) -> Response:
    return _json({"verification": _get("verifier").start(user, dest_id)}, 202)


@app.route("/verify/email/{token}", methods=["GET"])
def verify_email(token: str) -> Response:
    from fmn.web.verify import VerificationFailed

    try:
        _user_name, dest = _get("verifier").confirm_email(token)
    except VerificationFailed as exc:
        return _html("Address not confirmed", f"<p>{html.escape(exc.detail)}</p>"
                     "<p><a href=/>Your settings</a></p>", 400)
    except RetryableError:
        return _html("Try again shortly", "<p>A service we depend on is unavailable.</p>", 503)
    return _html("Address confirmed", f"<p>Notifications may now go to "
                 f"{html.escape(dest.address or '')}.</p><p><a href=/>Your settings</a></p>")


def _unsubscribe_target(token: str) -> tuple[str, str] | Response:
    from fmn.auth import InvalidToken, verify_unsubscribe

    try:
        return verify_unsubscribe(token, _get("settings").secret_key)
    except InvalidToken:
        return _html("Link not valid", "<p>This unsubscribe link is not valid (altered or "
                     "too old).</p><p><a href=/>Your settings</a></p>", 400)


@app.route("/unsubscribe/{token}", methods=["GET"])
def unsubscribe_page(token: str) -> Response:
    """What a person clicking the link sees: one button (the POST does it)."""
    target = _unsubscribe_target(token)
    if isinstance(target, Response):
        return target
    return _html("Stop these emails", "<form method=post><p>Stop the notifications sent to "
                 "this address? You can turn them on again by verifying it in your "
                 "settings.</p><button type=submit>Stop these emails</button></form>")


@app.route("/unsubscribe/{token}", methods=["POST"],
           content_types=[*FORM_TYPES, "multipart/form-data"])  # RFC 8058 allows both
def unsubscribe(token: str) -> Response:
    """RFC 8058 one-click unsubscribe: the signed token is the credential (no session,
    no CSRF token: mail clients POST ``List-Unsubscribe=One-Click`` themselves)."""
    target = _unsubscribe_target(token)
    if isinstance(target, Response):
        return target
    user, dest_id = target
    try:
        _get("service").unsubscribe(user, dest_id)
    except RetryableError:
        return _html("Try again shortly", "<p>A service we depend on is unavailable.</p>", 503)
    return _html("Unsubscribed", "<p>No more notifications go to this address until you "
                 "verify it again in <a href=/>your settings</a>.</p>")


@app.route("/api/v1/rules", methods=["GET"])
@endpoint()
def list_rules(user: str) -> Response:
    return _json([dump_rule(r) for r in _service().rules(user)])


@app.route("/api/v1/rules", methods=["POST"], content_types=JSON_TYPES)
@endpoint()
def create_rule(user: str) -> Response:
    return _json(dump_rule(_service().create_rule(user, _body(_request()))), 201)


@app.route("/api/v1/rules/{rule_id}", methods=["GET"])
@endpoint()
def get_rule(user: str, rule_id: str) -> Response:
    return _json(dump_rule(_service().rule(user, rule_id)))


@app.route("/api/v1/rules/{rule_id}", methods=["PUT"], content_types=JSON_TYPES)
@endpoint()
def replace_rule(user: str, rule_id: str) -> Response:
    return _json(dump_rule(_service().replace_rule(user, rule_id, _body(_request()))))


@app.route("/api/v1/rules/{rule_id}", methods=["PATCH"], content_types=JSON_TYPES)
@endpoint()
def patch_rule(user: str, rule_id: str) -> Response:
    return _json(dump_rule(_service().patch_rule(user, rule_id, _body(_request()))))


@app.route("/api/v1/rules/{rule_id}", methods=["DELETE"])
@endpoint()
def delete_rule(user: str, rule_id: str) -> Response:
    _service().delete_rule(user, rule_id)
    return Response(body="", status_code=204)


@app.route("/api/v1/applications", methods=["GET"])
@endpoint()
def applications(user: str) -> Response:
    return _json(known_applications())


@app.route("/api/v1/artifacts", methods=["GET"])
@endpoint()
def artifacts(user: str) -> Response:
    params = _request().query_params or {}
    return _json(_service().artifacts(params.get("q", ""), params.get("type"),
                                      _int_param("limit", 20)))


@app.route("/api/v1/preview", methods=["POST"], content_types=JSON_TYPES)
@endpoint()
def preview(user: str) -> Response:
    return _json(_service().preview(user, _body(_request())))


@app.route("/api/v1/notifications", methods=["GET"])
@endpoint()
def notifications(user: str) -> Response:
    return _json(_service().notifications(user, _int_param("limit", 50)))


@app.route("/api/v1/stats", methods=["GET"])
@endpoint()
def stats(user: str) -> Response:
    return _json(_service().stats(user))


@app.route("/api/v1/admin/users/{name}/disable", methods=["POST"], content_types=JSON_TYPES)
@endpoint()
def admin_disable_user(user: str, name: str) -> Response:
    target = _service().disable_user(user, name)
    return _json({"name": target.name, "enabled": target.enabled})


@app.route("/api/v1/admin/users/{name}/rules/{rule_id}/disable", methods=["POST"],
           content_types=JSON_TYPES)
@endpoint()
def admin_disable_rule(user: str, name: str, rule_id: str) -> Response:
    return _json(dump_rule(_service().disable_rule(user, name, rule_id)))


@app.route("/api/v1/openapi.json", methods=["GET"])
def openapi() -> Response:
    return _json(OPENAPI)


# --------------------------------------------------------------------------
# the UI's files


def _static(relative: str) -> Response:
    path = STATIC / relative
    if not path.is_file():
        raise NotFound(f"no file {relative!r}")
    ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if ctype.startswith("text/") or ctype in ("application/javascript", "application/json"):
        return Response(body=path.read_text("utf-8"), status_code=200,
                        headers={"Content-Type": f"{ctype}; charset=utf-8",
                                 "Cache-Control": "no-cache"})
    return Response(body=path.read_bytes(), status_code=200,
                    headers={"Content-Type": ctype, "Cache-Control": "no-cache"})


@app.route("/", methods=["GET"])
@endpoint(signed_in=False)
def index() -> Response:
    if (STATIC / "index.html").is_file():
        return _static("index.html")
    return _html("Fedora Notifications", "<p>The UI is not installed. The API is at "
                 "<a href=/api/v1/openapi.json>/api/v1</a>; <a href=/login>sign in</a>.</p>")


@app.route("/static/{name}", methods=["GET"])
@endpoint(signed_in=False)
def static_file(name: str) -> Response:
    if not _STATIC_NAME.fullmatch(name):
        raise NotFound("no such file")
    return _static(name)


@app.route("/static/{folder}/{name}", methods=["GET"])
@endpoint(signed_in=False)
def static_file_in(folder: str, name: str) -> Response:
    if not _STATIC_NAME.fullmatch(folder) or not _STATIC_NAME.fullmatch(name):
        raise NotFound("no such file")
    return _static(f"{folder}/{name}")


# --------------------------------------------------------------------------
# running locally


class LocalServer:
    """A running local server: ``url`` and ``stop()``."""

    def __init__(self, url: str, server: Any, thread: threading.Thread) -> None:
        self.url = url
        self._server = server
        self._thread = thread

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server.server_close()
        self._thread.join(timeout=5)


class _OneAtATime:
    """The app for a threaded local server, one request at a time.

    Chalice keeps the request being handled on the app object
    (``app.current_request``), as Lambda runs one request per container at a
    time; a threaded server running two at once would let one handler read the
    other's request (cookies included).  Connections are still threads, so a
    kept-alive connection does not hold the others up between requests.
    """

    def __init__(self, target: Chalice) -> None:
        self._target = target
        self._lock = threading.Lock()

    def __call__(self, event: Any, context: Any) -> Any:
        with self._lock:
            return self._target(event, context)

    def __getattr__(self, name: str) -> Any:  # routes, api, ... as the app's
        return getattr(self._target, name)


def serve_local(settings: Settings, port: int, web: WebSettings | None = None,
                host: str = "127.0.0.1", **overrides: Any) -> LocalServer:
    """Serve this app on http://host:port in a thread (local stack, browser tests).

    The state is built now from ``settings`` (and ``web``, default from the
    environment), so a refused configuration raises here, before listening.
    """
    from chalice.config import Config
    from chalice.local import LocalDevServer

    configure(settings, web, **overrides)
    server = LocalDevServer(_OneAtATime(app), Config.create(app_name=app.app_name), host, port)
    thread = threading.Thread(target=server.server.serve_forever, name="fmn-webapp",
                              daemon=True)
    thread.start()
    return LocalServer(f"http://{host}:{server.server.server_port}", server, thread)


# --------------------------------------------------------------------------
# the OpenAPI description (hand-written; docs/web-api.md is the prose)


def _op(summary: str, body: str | None = None, ok: str = "200") -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {
        ok: {"description": "success"},
        "default": {"description": "error",
                    "content": {"application/json": {"schema": {"$ref": "#/components/"
                                                                          "schemas/Error"}}}}}}
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{body}"}}}}
    return op


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Fedora Notifications preferences API", "version": "1"},
    "components": {
        "securitySchemes": {
            "session": {"type": "apiKey", "in": "cookie", "name": auth.SESSION_COOKIE},
            "csrf": {"type": "apiKey", "in": "header", "name": "X-CSRF-Token"}},
        "schemas": {
            "Error": {"type": "object", "required": ["error", "detail", "field"],
                      "properties": {"error": {"type": "string"}, "detail": {"type": "string"},
                                     "field": {"type": ["string", "null"]}}},
            "NewDestination": {"type": "object", "required": ["protocol"],
                               "additionalProperties": False, "properties": {
                                   "protocol": {"enum": ["email", "irc", "matrix", "sse"]},
                                   "address": {"type": ["string", "null"]}}},
            "DestinationPatch": {"type": "object", "additionalProperties": False,
                                 "properties": {"digest": {"type": ["object", "null"],
                                                           "properties": {
                                                               "interval_s": {"type": "integer"},
                                                               "max_count": {"type": "integer"}}}}},
            "Code": {"type": "object", "required": ["code"], "additionalProperties": False,
                     "properties": {"code": {"type": "string", "pattern": "^[0-9]{6}$"}}},
            "Rule": {"type": "object", "additionalProperties": False,
                     "required": ["name", "enabled", "tracking", "generation_rules"],
                     "properties": {"name": {"type": "string"}, "enabled": {"type": "boolean"},
                                    "tracking": {"type": "object"},
                                    "generation_rules": {"type": "array", "minItems": 1}}},
            "RulePatch": {"type": "object", "additionalProperties": False,
                          "properties": {"enabled": {"type": "boolean"},
                                         "name": {"type": "string"}}},
            "Preview": {"type": "object", "required": ["rule"], "additionalProperties": False,
                        "properties": {"rule": {"$ref": "#/components/schemas/Rule"},
                                       "limit": {"type": "integer", "minimum": 1,
                                                 "maximum": 200}}},
        }},
    "security": [{"session": [], "csrf": []}],
    "paths": {
        "/api/v1/me": {"get": _op("the signed-in user")},
        "/api/v1/destinations": {"get": _op("my destinations"),
                                 "post": _op("add a destination (sends its verification)",
                                             "NewDestination", "201")},
        "/api/v1/destinations/{id}": {"patch": _op("set the digest", "DestinationPatch"),
                                      "delete": _op("delete (409 while a rule uses it)",
                                                    ok="204")},
        "/api/v1/destinations/{id}/verify": {"post": _op("type back a code", "Code")},
        "/api/v1/destinations/{id}/resend": {"post": _op("send the verification again",
                                                         ok="202")},
        "/api/v1/rules": {"get": _op("my rules"), "post": _op("create a rule", "Rule", "201")},
        "/api/v1/rules/{id}": {"get": _op("one rule"), "put": _op("replace a rule", "Rule"),
                               "patch": _op("enable or disable, rename", "RulePatch"),
                               "delete": _op("delete a rule", ok="204")},
        "/api/v1/applications": {"get": _op("application names")},
        "/api/v1/artifacts": {"get": _op("artifacts by name prefix (q, type, limit)")},
        "/api/v1/preview": {"post": _op("what a rule would have matched lately", "Preview")},
        "/api/v1/notifications": {"get": _op("my latest notifications (limit)")},
        "/api/v1/stats": {"get": _op("notifications per rule, last 7 days")},
        "/api/v1/admin/users/{name}/disable": {"post": _op("admin: disable a user")},
        "/api/v1/admin/users/{name}/rules/{id}/disable": {"post": _op("admin: disable a rule")},
        "/verify/email/{token}": {"get": {**_op("confirm an e-mail address (HTML)"),
                                          "security": []}},
    },
}

