"""The preferences web app (Chalice): the API of docs/web-api.md, sign-in, and the UI's files.

A thin edge around :mod:`fmn.web`: each route is declared once as an
:class:`fmn.web.openapi.Operation` (which also makes its OpenAPI
description), reads the session and checks the CSRF token through
:class:`fmn.web.http.Sessions`, calls
:class:`fmn.web.service.PreferencesService` or :class:`fmn.web.verify.Verifier`,
and turns what they answer or raise into a response (``{"error", "detail",
"field"}`` for every error, the framework's own 405/415/500 included).
Clients, the database engine and the OIDC client are built on first use
(:func:`configure` injects them in tests and the local stack); nothing does
I/O at import.  A configuration unsafe to serve with (the development login
with ``FMN_ENV=production``, the development secret in production) makes
every request fail with that message, and :func:`serve_local` refuse to start.

``serve_local(settings, port)`` runs this app on a real local HTTP port and
returns a handle with ``url`` and ``stop()``.
"""

from __future__ import annotations

import html
import logging
import mimetypes
import re
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chalice.app import Chalice, Request, Response
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from fmn.errors import RetryableError
from fmn.prefs import dump_destination
from fmn.settings import Settings
from fmn.web import UnsafeConfiguration, http, schema
from fmn.web import check as check_settings
from fmn.web.openapi import FORM, JSON, MULTIPART, Operation, document
from fmn.web.service import (
    Invalid,
    NotFound,
    PreferencesService,
    WebError,
    known_applications,
    rule_answer,
)

app = Chalice(app_name="fmn-webapp")
app.api.binary_types.extend(["image/*", "font/*", "application/octet-stream"])
log = logging.getLogger("fmn.webapp")

STATIC = Path(__file__).resolve().parent / "static"
_STATIC_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
#: On ``/api/v1/notifications``: ``false`` when some matches may be missing
COMPLETE_HEADER = "FMN-Complete"

#: Every route, in the order declared: the OpenAPI description is made from it.
OPERATIONS: list[Operation] = []

_state: dict[str, Any] = {}
_lock = threading.Lock()


# --------------------------------------------------------------------------
# state


def reset() -> None:
    _state.clear()


def configure(settings: Settings | None = None, **overrides: Any) -> None:
    """Build the state now from explicit settings; ``overrides`` replace parts of it
    (``engine``, ``store``, ``service``, ``verifier``, ``oidc``, ``feed``, ``mailer``,
    ``irc_link``, ``keys``, ``clock``; ``demo_users``: the names the development
    login offers first, its default first).  Raises UnsafeConfiguration."""
    with _lock:
        _state.clear()
        _build(settings or Settings.from_env(), overrides)


def _get(name: str) -> Any:
    if not _state:
        with _lock:
            if not _state:
                _build(Settings.from_env(), {})
    return _state[name]


def _build(s: Settings, o: dict[str, Any]) -> None:
    import time

    from fmn import db
    from fmn.web.verify import IrcCodeChannel, RedisKeys, Verifier

    check_settings(s)
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
        engine, store, admins=s.admins, feed=feed,
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
    matrix = o.get("matrix") or _matrix_channel(s)
    keys = o.get("keys") or RedisKeys.from_url(s.redis_url)
    verifier = o.get("verifier") or Verifier(
        service, keys, s.secret_key,
        web_url=s.web_url, mailer=mailer, mail_from=s.mail_from,
        channels={"irc": IrcCodeChannel(irc_link), "matrix": matrix}, clock=clock)
    oidc = o.get("oidc")
    if oidc is None and s.oidc_issuer and s.oidc_client_id:
        from fmn.web.oidc import OidcClient

        oidc = OidcClient(s.oidc_issuer, s.oidc_client_id, s.oidc_client_secret,
                          f"{s.web_url}/oidc/callback", clock=clock,
                          trust_email=s.oidc_trust_email)
    from fmn.web.atom import AtomFeeds

    _state.update(settings=s, engine=engine, store=store, feed=feed, service=service,
                  verifier=verifier, oidc=oidc, matrix=matrix, clock=clock,
                  sessions=http.Sessions(s, clock),
                  atom=AtomFeeds(keys, s.secret_key, s.web_url),
                  demo_users=tuple(o.get("demo_users", ())))


def _matrix_channel(s: Settings) -> Any:
    """Verification codes through the Matrix bot, or only recorded without its token."""
    from fmn.web.verify import MatrixCodeChannel, RecordingChannel

    if not s.matrix_token:
        return RecordingChannel("matrix", log_codes=not s.production)
    from fmn.delivery.matrix_client import make_notifier

    return MatrixCodeChannel(make_notifier(s))


def _previewer(engine: Any, s: Settings) -> Any:
    from fmn.preview.window import window_key
    from fmn.web.service import engine_previewer

    return engine_previewer(engine, s.redis_url, window_key(s.queue_prefix))


def _service() -> PreferencesService:
    service: PreferencesService = _get("service")
    return service


def _sessions() -> http.Sessions:
    sessions: http.Sessions = _get("sessions")
    return sessions


# --------------------------------------------------------------------------
# requests and answers


def _request() -> Request:
    request = app.current_request
    assert request is not None
    return request


def _response(answer: http.Answer) -> Response:
    return Response(body=answer.body, status_code=answer.status, headers=answer.headers)


def _jar() -> dict[str, str]:
    return http.cookies(_request().headers.get("cookie"))


def _body() -> Any:
    request = _request()
    return http.read_body(request.raw_body, request.headers.get("content-type"))


def _form() -> Any:
    """The body when it is a form (its ``csrf`` field stands for the CSRF header)."""
    request = _request()
    if request.headers.get("content-type", "").startswith(FORM):
        return _body()
    return None


def api(op: Operation) -> Callable[[Callable[..., http.Answer]], Callable[..., Response]]:
    """Declare a route: registered with Chalice and described in the OpenAPI document.

    The view returns an :class:`fmn.web.http.Answer`; the CSRF token of an unsafe
    method is checked first, then the session (``user`` is passed to the view of a
    signed-in route), and errors become the documented JSON errors, or pages on the
    routes that answer pages (the links of mails, opened by people).
    """
    def wrap(view: Callable[..., http.Answer]) -> Callable[..., Response]:
        def run(**params: Any) -> Response:
            request = _request()
            try:
                if op.csrf:
                    _sessions().check_csrf(_jar(), request.headers, _form())
                if op.access == "user":
                    params["user"] = _sessions().user(_jar())
                return _response(view(**params))
            except WebError as exc:
                return _response(http.error_page(exc) if op.error_pages else http.error(exc))
            except UnsafeConfiguration as exc:
                log.error("refusing to serve: %s", exc)
                return _response(http.error_json(500, "misconfigured", str(exc)))
            # DBAPIError: the database away; PoolTimeout: every connection busy
            except (RetryableError, DBAPIError, PoolTimeout) as exc:
                log.warning("dependency failed: %s", exc)
                return _response(http.unavailable_page() if op.error_pages
                                 else http.unavailable())

        run.__name__ = view.__name__
        run.__doc__ = view.__doc__
        OPERATIONS.append(op)
        app.route(op.path, methods=[op.method], content_types=op.content_types)(run)
        return run

    return wrap


@app.middleware("http")
def documented_errors(event: Any, get_response: Callable[[Any], Response]) -> Response:
    """The framework's own answers (405, 415, an unhandled error's 500) in the documented
    error format, and ``nosniff`` on every answer."""
    try:
        response = get_response(event)
    except Exception:
        log.exception("unhandled error")
        response = _response(http.internal_error())
    fixed = http.framework_error(response.status_code, response.body)
    if fixed is not None:
        keep = {k: v for k, v in response.headers.items() if k.lower() in ("allow",)}
        response = _response(fixed)
        response.headers.update(keep)
    for name, value in http.COMMON_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


# --------------------------------------------------------------------------
# sign-in


@api(Operation("GET", "/login", "sign in: to the account system (OpenID Connect), or to the "
               "development login", answer="redirect", ok=302, access="public"))
def login() -> http.Answer:
    oidc = _get("oidc")
    if oidc is None:
        if _get("settings").dev_login:
            return http.redirect("/dev/login")
        return http.error_json(503, "no-login", "no account system is configured "
                                                "(FMN_OIDC_ISSUER, FMN_OIDC_CLIENT_ID)")
    from fmn.web.oidc import seal

    url, pending = oidc.begin("/")
    sealed = seal(pending, _get("settings").secret_key)
    return http.redirect(url, [_sessions().cookie(http.OIDC_COOKIE, sealed, max_age=600)])


@api(Operation("GET", "/oidc/callback", "the account system's answer: signs in, then "
               "redirects to /", answer="redirect", ok=302, access="public",
               query=schema.OidcCallbackQuery, errors_html=True))
def oidc_callback() -> http.Answer:
    from fmn.web.oidc import OidcError, unseal

    request = _request()
    oidc = _get("oidc")
    if oidc is None:
        raise NotFound("no account system is configured")
    schema.query(schema.OidcCallbackQuery, request.query_params)
    try:
        pending = unseal(_sessions().get(_jar(), http.OIDC_COOKIE),
                         _get("settings").secret_key)
        account = oidc.finish(pending, dict(request.query_params or {}))
    except OidcError as exc:
        return http.page("Sign-in failed", f"<p>{html.escape(str(exc))}</p>"
                                           "<p><a href=/login>Try again</a></p>", 401)
    _service().login(account.name, account.email)
    cookies = [*_sessions().sign_in(account.name),
               _sessions().cookie(http.OIDC_COOKIE, "", max_age=0)]
    return http.redirect("/", cookies)


@api(Operation("POST", "/logout", "sign out: clears the session cookies", ok=204,
               body_types=(JSON, FORM), access="public"))
def logout() -> http.Answer:
    return http.empty(204).with_cookies(_sessions().sign_out())


def _dev_login_on() -> None:
    if not _get("settings").dev_login:
        raise NotFound("the development login is off (FMN_DEV_LOGIN)")


@api(Operation("GET", "/dev/login", "the development login's form (FMN_DEV_LOGIN=1 only)",
               answer="html", access="public"))
def dev_login_page() -> http.Answer:
    _dev_login_on()
    from fmn import db

    suggested = list(_get("demo_users"))  # the local stack's: those the replay notifies
    names = (suggested + [n for n in db.user_revisions(_get("engine"))
                          if n not in suggested])[:20]
    token = _sessions().get(_jar(), http.CSRF_COOKIE)
    if not re.fullmatch(r"[0-9a-f]{64}", token):  # only ever reuse one we could have set
        token = secrets.token_hex(32)
    options = "".join(f"<option>{html.escape(n)}</option>" for n in names)
    body = ("<p>Development login: no password. Never enabled in production.</p>"
            "<form method=post action=/dev/login>"
            f'<input type=hidden name=csrf value="{html.escape(token)}">'
            "<input name=user list=users required autofocus>"
            f"<datalist id=users>{options}</datalist> <button>Sign in</button></form>")
    return http.page("Sign in (development)", body).with_cookies(
        [_sessions().cookie(http.CSRF_COOKIE, token, max_age=3600, http_only=False)])


@api(Operation("POST", "/dev/login", "sign in as anyone, no password (FMN_DEV_LOGIN=1 only): "
               "JSON answers the user, a form redirects to /", body=schema.DevLogin,
               body_types=(JSON, FORM), answer=schema.Me, access="public", redirects=True))
def dev_login() -> http.Answer:
    _dev_login_on()
    form = _body()
    if isinstance(form, dict) and not isinstance(form.get("user"), str):
        raise Invalid("name the user to sign in as", "user")
    name = schema.check(schema.DevLogin, form).user
    _service().login(name, f"{name}@example.org")
    cookies = _sessions().sign_in(name)
    if _request().headers.get("content-type", "").startswith(JSON):
        return http.json_answer(_service().me(name)).with_cookies(cookies)
    return http.redirect("/", cookies)


# --------------------------------------------------------------------------
# the API


@api(Operation("GET", "/api/v1/me", "the signed-in user", answer=schema.Me))
def me(user: str) -> http.Answer:
    from fmn.auth import feed_url

    s = _get("settings")
    # the live feed (another origin on AWS): a signed link the page's EventSource opens
    live = feed_url(s.feed_url, user, s.secret_key) if s.feed_url else None
    return http.json_answer({**_service().me(user), "feed_url": live})


@api(Operation("GET", "/api/v1/destinations", "my destinations",
               answer=list[schema.Destination]))
def list_destinations(user: str) -> http.Answer:
    return http.json_answer([dump_destination(d) for d in _service().destinations(user)])


@api(Operation("POST", "/api/v1/destinations", "add a destination (unverified: its "
               "verification is sent; over the rate limit nothing is added)",
               body=schema.NewDestination, ok=201, answer=schema.CreatedDestination))
def add_destination(user: str) -> http.Answer:
    dest, sent = _get("verifier").add(user, _body())
    return http.json_answer({**dump_destination(dest), "verification": sent}, 201)


@api(Operation("PATCH", "/api/v1/destinations/{dest_id}", "set or clear the digest",
               body=schema.DestinationPatch, answer=schema.Destination))
def patch_destination(user: str, dest_id: str) -> http.Answer:
    return http.json_answer(dump_destination(_service().patch_destination(user, dest_id,
                                                                          _body())))


@api(Operation("DELETE", "/api/v1/destinations/{dest_id}", "delete a destination (409 while "
               "a rule uses it)", ok=204))
def delete_destination(user: str, dest_id: str) -> http.Answer:
    _service().delete_destination(user, dest_id)
    return http.empty(204)


@api(Operation("POST", "/api/v1/destinations/{dest_id}/verify", "type back a code (IRC, "
               "Matrix)", body=schema.Code, answer=schema.Destination))
def verify_destination(user: str, dest_id: str) -> http.Answer:
    dest = _get("verifier").confirm_code(user, dest_id, _body())
    return http.json_answer(dump_destination(dest))


@api(Operation("POST", "/api/v1/destinations/{dest_id}/resend", "send the verification "
               "again", ok=202, answer=schema.Verification))
def resend_verification(user: str, dest_id: str) -> http.Answer:
    return http.json_answer({"verification": _get("verifier").start(user, dest_id)}, 202)


@api(Operation("GET", "/verify/email/{token}", "the link of the verification mail: a page "
               "with one button (which POSTs); opening it confirms nothing, so that a mail "
               "system's link scanner neither confirms the address nor uses the link up",
               answer="html", access="token"))
def verify_email_page(token: str) -> http.Answer:
    from fmn.web.verify import VerificationFailed

    try:
        user, dest = _get("verifier").check_email(token)
    except VerificationFailed as exc:
        return _not_confirmed(exc)
    address = html.escape(dest.address or "")
    return http.page("Confirm your address", "<form method=post>"
                     "<input type=hidden name=confirm value=yes>"
                     f"<p>Send Fedora Notifications for the account {html.escape(user)} to "
                     f"{address}?</p><p>If you did not ask for this, close this page: "
                     "nothing will be sent to you.</p>"
                     "<button type=submit>Confirm this address</button></form>")


@api(Operation("POST", "/verify/email/{token}", "confirm an e-mail address (the verification "
               "page's button; the signed token is the credential, no session or CSRF token; "
               "an HTML page says whether it worked)", body=schema.ConfirmAddress,
               body_types=(FORM, MULTIPART), answer="html", access="token"))
def verify_email(token: str) -> http.Answer:
    from fmn.web.verify import VerificationFailed

    try:
        _user_name, dest = _get("verifier").check_email(token)  # a bad link first: its page
        schema.check(schema.ConfirmAddress, _body())
        _user_name, dest = _get("verifier").confirm_email(token)
    except VerificationFailed as exc:
        return _not_confirmed(exc)
    return http.page("Address confirmed", f"<p>Notifications may now go to "
                     f"{html.escape(dest.address or '')}.</p><p><a href=/>Your settings</a></p>")


def _not_confirmed(exc: WebError) -> http.Answer:
    return http.page("Address not confirmed", f"<p>{html.escape(exc.detail)}</p>"
                     "<p><a href=/>Your settings</a></p>", 400)


def _unsubscribe_target(token: str) -> tuple[str, str] | http.Answer:
    from fmn.auth import InvalidToken, verify_unsubscribe

    try:
        return verify_unsubscribe(token, _get("settings").secret_key)
    except InvalidToken:
        return http.page("Link not valid", "<p>This unsubscribe link is not valid (altered or "
                         "too old).</p><p><a href=/>Your settings</a></p>", 400)


@api(Operation("GET", "/unsubscribe/{token}", "the mails' List-Unsubscribe link: a page with "
               "one button (which POSTs)", answer="html", access="token"))
def unsubscribe_page(token: str) -> http.Answer:
    target = _unsubscribe_target(token)
    if isinstance(target, http.Answer):
        return target
    return http.page("Stop these emails", "<form method=post>"
                     "<input type=hidden name=List-Unsubscribe value=One-Click>"
                     "<p>Stop the notifications sent to this address? You can turn them on "
                     "again by verifying it in your settings.</p>"
                     "<button type=submit>Stop these emails</button></form>")


@api(Operation("POST", "/unsubscribe/{token}", "RFC 8058 one-click unsubscribe: the signed "
               "token is the credential (no session, no CSRF token); the destination is "
               "unverified", body=schema.OneClick, body_types=(FORM, MULTIPART),
               answer="html", access="token"))
def unsubscribe(token: str) -> http.Answer:
    target = _unsubscribe_target(token)
    if isinstance(target, http.Answer):
        return target
    schema.check(schema.OneClick, _body())
    user, dest_id = target
    try:  # first: a link confirmed in between would undo the unsubscribe
        _get("verifier").revoke(user, dest_id)
    except Exception:  # Redis away: stopping the mails matters more than old links
        log.exception("could not revoke the verifications sent to %s's %s", user, dest_id)
    _get("service").unsubscribe(user, dest_id)
    return http.page("Unsubscribed", "<p>No more notifications go to this address until you "
                     "verify it again in <a href=/>your settings</a>.</p>")


@api(Operation("GET", "/api/v1/rules", "my rules", answer=list[schema.Rule]))
def list_rules(user: str) -> http.Answer:
    return http.json_answer([rule_answer(r) for r in _service().rules(user)])


@api(Operation("POST", "/api/v1/rules", "create a rule", body=schema.NewRule, ok=201,
               answer=schema.Rule))
def create_rule(user: str) -> http.Answer:
    return http.json_answer(rule_answer(_service().create_rule(user, _body())), 201)


@api(Operation("GET", "/api/v1/rules/{rule_id}", "one rule", answer=schema.Rule))
def get_rule(user: str, rule_id: str) -> http.Answer:
    return http.json_answer(rule_answer(_service().rule(user, rule_id)))


@api(Operation("PUT", "/api/v1/rules/{rule_id}", "replace a rule; with If-Match: \"<its "
               "etag>\", only if nobody changed it since (else 412, nothing saved)",
               body=schema.RuleReplacement, answer=schema.Rule))
def replace_rule(user: str, rule_id: str) -> http.Answer:
    if_match = _request().headers.get("if-match")
    return http.json_answer(rule_answer(_service().replace_rule(user, rule_id, _body(),
                                                                if_match=if_match)))


@api(Operation("PATCH", "/api/v1/rules/{rule_id}", "enable or disable, rename; with "
               "If-Match: \"<its etag>\", only if nobody changed it since (else 412)",
               body=schema.RulePatch, answer=schema.Rule))
def patch_rule(user: str, rule_id: str) -> http.Answer:
    if_match = _request().headers.get("if-match")
    return http.json_answer(rule_answer(_service().patch_rule(user, rule_id, _body(),
                                                              if_match=if_match)))


@api(Operation("DELETE", "/api/v1/rules/{rule_id}", "delete a rule", ok=204))
def delete_rule(user: str, rule_id: str) -> http.Answer:
    _service().delete_rule(user, rule_id)
    return http.empty(204)


@api(Operation("GET", "/api/v1/applications", "application names a rule may filter on",
               answer=list[str]))
def applications(user: str) -> http.Answer:
    return http.json_answer(known_applications())


@api(Operation("GET", "/api/v1/artifacts", "artifacts of the ownership data by name prefix",
               query=schema.ArtifactsQuery, answer=list[schema.ArtifactAnswer]))
def artifacts(user: str) -> http.Answer:
    q = schema.query(schema.ArtifactsQuery, _request().query_params)
    return http.json_answer(_service().artifacts(q.q, q.type, q.limit))


@api(Operation("GET", "/api/v1/ownership",
               "what I own, directly and through my groups, and when that was refreshed",
               answer=schema.Ownership))
def ownership(user: str) -> http.Answer:
    from fmn.web.ownership import my_ownership

    return http.json_answer(my_ownership(_service().engine, user))


@api(Operation("POST", "/api/v1/preview", "what a rule would have matched lately",
               body=schema.PreviewRequest, answer=schema.Preview))
def preview(user: str) -> http.Answer:
    return http.json_answer(_service().preview(user, _body()))


@api(Operation("GET", "/api/v1/notifications", "my latest notifications, newest first",
               query=schema.NotificationsQuery, answer=list[schema.Notification],
               answer_headers=((COMPLETE_HEADER, "false when some rule's search of the "
                                "recent messages ran out of time: matches may be missing"),)))
def notifications(user: str) -> http.Answer:
    q = schema.query(schema.NotificationsQuery, _request().query_params)
    found, complete = _service().recent_notifications(user, q.limit)
    return http.json_answer(found, headers={COMPLETE_HEADER: "true" if complete else "false"})


@api(Operation("GET", "/api/v1/atom-url", "my Atom feed's private address",
               answer=schema.AtomUrl))
def atom_url(user: str) -> http.Answer:
    return http.json_answer({"url": _get("atom").url(user)})


@api(Operation("POST", "/api/v1/atom-url/revoke",
               "revoke my Atom feed's address and make a new one", answer=schema.AtomUrl))
def revoke_atom_url(user: str) -> http.Answer:
    return http.json_answer({"url": _get("atom").revoke(user)})


@api(Operation("GET", "/atom/{token}", "my recent notifications as an Atom feed (the signed "
               "token is the credential)", answer="file", access="token"))
def atom_feed(token: str) -> http.Answer:
    from fmn.web import atom

    user = _get("atom").user_of(token)
    body = atom.render(user, _service().delivered_notifications(user, atom.ENTRIES),
                       f"{_get('settings').web_url}/atom/{token}", _get("settings").web_url)
    # the common headers first: the feed's address is its credential, no page it links to
    # may learn it (their same-origin Referrer-Policy must not replace no-referrer)
    return http.Answer(200, body.decode(), {
        **http.COMMON_HEADERS, "Content-Type": atom.CONTENT_TYPE,
        "Cache-Control": "private, max-age=60", "Referrer-Policy": "no-referrer"})


@api(Operation("GET", "/api/v1/stats", "notifications per rule, last 7 days",
               answer=schema.Stats))
def stats(user: str) -> http.Answer:
    return http.json_answer(_service().stats(user))


@api(Operation("POST", "/api/v1/admin/users/{name}/disable", "admin: disable a user",
               answer=schema.UserState))
def admin_disable_user(user: str, name: str) -> http.Answer:
    target = _service().disable_user(user, name)
    return http.json_answer({"name": target.name, "enabled": target.enabled})


@api(Operation("POST", "/api/v1/admin/users/{name}/rules/{rule_id}/disable",
               "admin: disable a rule", answer=schema.Rule))
def admin_disable_rule(user: str, name: str, rule_id: str) -> http.Answer:
    return http.json_answer(rule_answer(_service().disable_rule(user, name, rule_id)))


@api(Operation("GET", "/api/v1/openapi.json", "this description", answer=dict[str, Any],
               access="public"))
def openapi() -> http.Answer:
    key = (len(OPERATIONS), _sessions().name(http.SESSION_COOKIE))
    if _openapi.get("key") != key:  # made once (it takes half a second)
        _openapi.update(key=key, document=document(OPERATIONS, key[1]))
    return http.json_answer(_openapi["document"])


_openapi: dict[str, Any] = {}


# --------------------------------------------------------------------------
# the UI's files


def _static(relative: str) -> http.Answer:
    path = STATIC / relative
    if not path.is_file():
        raise NotFound(f"no file {relative!r}")
    ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    headers: dict[str, str | list[str]] = {"Cache-Control": "no-cache", **http.COMMON_HEADERS}
    if ctype == "text/html":
        feed = _get("settings").feed_url
        headers.update(http.PAGE_HEADERS)
        headers["Content-Security-Policy"] = http.content_security_policy(
            _origin(feed) if feed else None)
    if ctype.startswith("text/") or ctype in ("application/javascript", "application/json"):
        headers["Content-Type"] = f"{ctype}; charset=utf-8"
        return http.Answer(200, path.read_text("utf-8"), headers)
    headers["Content-Type"] = ctype
    return http.Answer(200, path.read_bytes(), headers)


def _origin(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@api(Operation("GET", "/", "the web UI", answer="html", access="public"))
def index() -> http.Answer:
    if (STATIC / "index.html").is_file():
        return _static("index.html")
    return http.page("Fedora Notifications", "<p>The UI is not installed. The API is at "
                     "<a href=/api/v1/openapi.json>/api/v1</a>; <a href=/login>sign in</a>.</p>")


@api(Operation("GET", "/static/{name}", "the UI's files", answer="file", access="public"))
def static_file(name: str) -> http.Answer:
    if not _STATIC_NAME.fullmatch(name):
        raise NotFound("no such file")
    return _static(name)


@api(Operation("GET", "/static/{folder}/{name}", "the UI's files", answer="file",
               access="public"))
def static_file_in(folder: str, name: str) -> http.Answer:
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


def _allowed(path: str) -> list[str]:
    """The methods the routes of ``path`` take."""
    path = path.split("?", 1)[0]
    for template, methods in app.routes.items():
        if re.fullmatch(re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)), path):
            return sorted(methods)
    return []


#: What the local server's own refusals say (http.server's words are an HTML page's).
_SERVER_ERRORS = {
    400: "the request could not be read (not HTTP/1.x)",
    414: "the request line is over 64 KiB",
    431: "a request header is over 64 KiB, or there are over 100 of them",
}


def _documented_gateway_errors(handler_cls: Any) -> Any:
    """The local gateway's own refusals in the documented format: an unknown path (404),
    a method no route has (405: TRACE, CONNECT...), and whatever http.server refuses
    before any route runs (414, 431, 400...)."""

    class Handler(handler_cls):  # type: ignore[misc,valid-type]
        def _send_error_response(self, error: Any) -> None:
            self._send(http.error_json(404, "not-found", "no such path"))

        def send_error(self, code: int, message: str | None = None,
                       explain: str | None = None) -> None:
            """http.server's refusals (a request line or headers over its limits, a
            request it cannot parse) as the documented JSON error, not its HTML page."""
            self.log_error("code %d, message %s", code, message)
            detail = _SERVER_ERRORS.get(code) or explain or message \
                or self.responses.get(code, ("refused",))[0]
            answer = http.error_json(code, http.FRAMEWORK_ERRORS.get(
                code, "invalid" if code < 500 else "internal"), detail)
            answer.headers["Connection"] = "close"
            self.close_connection = True
            self._send(answer)

        def _send(self, answer: http.Answer) -> None:
            body = answer.body if isinstance(answer.body, bytes) else answer.body.encode()
            self.send_response(answer.status)
            for name, value in answer.headers.items():
                self.send_header(name, str(value))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _no_such_method(self) -> None:
            answer = http.error_json(405, "method-not-allowed",
                                     f"unsupported method: {self.command}",
                                     {"Allow": ", ".join(_allowed(self.path))})
            self._send(answer)

        do_TRACE = do_CONNECT = do_PROPFIND = _no_such_method

        def __getattr__(self, name: str) -> Any:  # any other method: 405
            if name.startswith("do_"):
                return self._no_such_method
            raise AttributeError(name)

    return Handler


def serve_local(settings: Settings, port: int, host: str = "127.0.0.1",
                **overrides: Any) -> LocalServer:
    """Serve this app on http://host:port in a thread (local stack, browser tests).

    The state is built now from ``settings``, so a refused configuration raises
    here, before listening.
    """
    from chalice.config import Config
    from chalice.local import ChaliceRequestHandler, LocalDevServer

    configure(settings, **overrides)
    server = LocalDevServer(_OneAtATime(app), Config.create(app_name=app.app_name), host, port,
                            handler_cls=_documented_gateway_errors(ChaliceRequestHandler))
    thread = threading.Thread(target=server.server.serve_forever, name="fmn-webapp",
                              daemon=True)
    thread.start()
    return LocalServer(f"http://{host}:{server.server.server_port}", server, thread)
