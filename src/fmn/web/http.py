"""The web API's HTTP plumbing, framework-free: cookies, sessions, CSRF, bodies, answers.

The edge (``webapp/app.py``) hands this module plain values (header
mappings, the raw body, query parameters) and turns the :class:`Answer` it
gets back into its framework's response.  Everything here is the contract
of docs/web-api.md:

- signed in = a ``fmn_session`` cookie, :func:`fmn.auth.sign` of the user
  name (HttpOnly, SameSite=Lax, Secure over https or in production);
- every unsafe method carries ``X-CSRF-Token`` equal to the ``fmn_csrf``
  cookie (double-submit), and that token is an HMAC of the session token,
  so one session's token never passes for another's;
- over https or in production every cookie's name starts with ``__Host-``
  (:func:`fmn.auth.cookie_name`), and only those are read: no site under a
  parent domain can set such a cookie beside ours;
- a body is at most :data:`MAX_BODY_BYTES` (413 otherwise), JSON or a form;
- every answer carries ``X-Content-Type-Options: nosniff``; pages (HTML)
  also a Content-Security-Policy with ``frame-ancestors 'none'`` and
  ``X-Frame-Options: DENY``; every error is ``{"error", "detail", "field"}``.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from fmn import auth
from fmn.settings import Settings
from fmn.web.service import Forbidden, Invalid, NotSignedIn, TooLarge, WebError

SESSION_COOKIE = auth.SESSION_COOKIE
#: the cookies of a ``Cookie`` header (:func:`fmn.auth.parse_cookies`)
cookies = auth.parse_cookies
CSRF_COOKIE = "fmn_csrf"
CSRF_HEADER = "x-csrf-token"
OIDC_COOKIE = "fmn_oidc"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: The largest request body the API reads (a rule at its limits fits with room to spare).
MAX_BODY_BYTES = 128 * 1024

#: On every answer: never guess a type other than the one declared.
COMMON_HEADERS: dict[str, str] = {"X-Content-Type-Options": "nosniff",
                                  "Referrer-Policy": "same-origin"}
#: On every page: scripts, styles and connections from this origin only (the live feed
#: may be another origin: ``connect-src`` names it), and no framing (clickjacking).
PAGE_HEADERS: dict[str, str] = {"X-Frame-Options": "DENY"}


def content_security_policy(connect: str | None = None) -> str:
    sources = "'self'" + (f" {connect}" if connect else "")
    return (f"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            f"connect-src {sources}; object-src 'none'; base-uri 'none'; "
            f"form-action 'self'; frame-ancestors 'none'")


@dataclass
class Answer:
    """What to answer: status, headers (a list value: one header line each), body."""

    status: int
    body: str | bytes = ""
    headers: dict[str, str | list[str]] = field(default_factory=dict)

    def with_cookies(self, cookies: list[str]) -> Answer:
        previous = self.headers.get("Set-Cookie", [])
        mine = [previous] if isinstance(previous, str) else list(previous)
        self.headers["Set-Cookie"] = [*mine, *cookies]
        return self


# --------------------------------------------------------------------------
# answers


def json_answer(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Answer:
    return Answer(status, json.dumps(body), {
        "Content-Type": "application/json", "Cache-Control": "no-store", **COMMON_HEADERS,
        **(headers or {})})


def page(title: str, body_html: str, status: int = 200) -> Answer:
    """A small HTML page (``body_html`` is trusted markup; escape what goes into it)."""
    text = (f"<!doctype html><html lang=en><meta charset=utf-8><title>{html.escape(title)}"
            f"</title><body><h1>{html.escape(title)}</h1>{body_html}</body></html>")
    return Answer(status, text, {
        "Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store",
        "Content-Security-Policy": content_security_policy(), **PAGE_HEADERS,
        **COMMON_HEADERS})


def redirect(location: str, cookies: list[str] | None = None) -> Answer:
    answer = Answer(302, "", {"Location": location, "Cache-Control": "no-store",
                              **COMMON_HEADERS})
    return answer.with_cookies(cookies) if cookies else answer


def empty(status: int = 204) -> Answer:
    return Answer(status, "", {"Cache-Control": "no-store", **COMMON_HEADERS})


def error(exc: WebError) -> Answer:
    headers = {}
    if exc.retry_after_s is not None:  # RateLimited, too many wrong codes
        headers["Retry-After"] = str(exc.retry_after_s)
    return json_answer(exc.as_json(), exc.status, headers)


#: the title of an error page (a route a person opens from a mail: ``answer="html"``)
ERROR_PAGE_TITLES = {400: "Request not valid", 401: "Sign in first", 403: "Not allowed",
                     404: "Not found", 409: "Changed meanwhile", 413: "Too large",
                     429: "Too many requests"}


def error_page(exc: WebError) -> Answer:
    """:func:`error` as a page, for the routes people open from a mail."""
    said = f"{exc.field}: {exc.detail}" if exc.field else exc.detail
    answer = page(ERROR_PAGE_TITLES.get(exc.status, "Request refused"),
                  f"<p>{html.escape(said)}</p><p><a href=/>Your settings</a></p>", exc.status)
    if exc.retry_after_s is not None:
        answer.headers["Retry-After"] = str(exc.retry_after_s)
    return answer


def unavailable_page() -> Answer:
    """:func:`unavailable` as a page."""
    answer = page("Try again shortly", "<p>A service we depend on is unavailable; nothing "
                                       "was changed. Try this link again shortly.</p>", 503)
    answer.headers["Retry-After"] = "5"
    return answer


def error_json(status: int, code: str, detail: str, headers: Mapping[str, str] | None = None
               ) -> Answer:
    return json_answer({"error": code, "detail": detail, "field": None}, status, headers)


def internal_error() -> Answer:
    return error_json(500, "internal", "the server failed to answer this request; it is "
                                       "logged, and nothing was half-done on your behalf")


def unavailable() -> Answer:
    return error_json(503, "unavailable", "a service we depend on is unavailable; "
                                          "try again shortly", {"Retry-After": "5"})


#: The error codes of the framework's own answers, in the documented format.
FRAMEWORK_ERRORS = {400: "invalid", 403: "forbidden", 404: "not-found",
                    405: "method-not-allowed", 413: "too-large", 414: "too-large",
                    415: "unsupported-media-type", 429: "rate-limited", 431: "too-large",
                    500: "internal", 502: "internal", 503: "unavailable",
                    504: "unavailable"}


def framework_error(status: int, body: Any) -> Answer | None:
    """The documented error for an answer the framework wrote itself (``{"Code",
    "Message"}``); ``None`` when ``body`` is not one of those."""
    if status < 400:
        return None
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    try:
        doc = json.loads(body) if isinstance(body, str) else body
    except ValueError:
        return None
    if not isinstance(doc, dict) or "error" in doc or not ({"Code", "Message"} & set(doc)
                                                             or "message" in doc):
        return None
    message = str(doc.get("Message") or doc.get("message") or "")
    if status >= 500:
        return internal_error() if status == 500 else unavailable()
    return error_json(status, FRAMEWORK_ERRORS.get(status, "invalid"), message)


# --------------------------------------------------------------------------
# requests


def read_body(raw: bytes | None, content_type: str | None) -> Any:
    """The request body: a form as a dict (last value wins), JSON as parsed, or ``None``.

    Raises :class:`TooLarge` past :data:`MAX_BODY_BYTES`, :class:`Invalid` for JSON
    that does not parse.
    """
    raw = raw or b""
    if len(raw) > MAX_BODY_BYTES:
        raise TooLarge(f"the body is {len(raw)} bytes; the limit is {MAX_BODY_BYTES} "
                       "bytes per request (MAX_BODY_BYTES)")
    ctype = (content_type or "").lower()
    if ctype.startswith("application/x-www-form-urlencoded"):
        return {k: v[-1] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}
    if ctype.startswith("multipart/form-data"):  # the boundary as sent: it is case-sensitive
        return _multipart(raw, content_type or "")
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: hostile nesting
        raise Invalid(f"the body is not JSON: {str(exc)[:200]}") from exc


def _multipart(raw: bytes, ctype: str) -> dict[str, str]:
    """The text fields of a ``multipart/form-data`` body (RFC 8058 allows it)."""
    from email.parser import BytesParser
    from email.policy import HTTP

    header = ctype.replace("\r", " ").replace("\n", " ").encode("latin-1", "replace")
    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + header + b"\r\n\r\n" + raw)
    out: dict[str, str] = {}
    if not message.is_multipart():
        return out
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            out[name] = payload.decode("utf-8", "replace").strip()
    return out


def int_param(params: Mapping[str, str] | None, name: str, default: int) -> int:
    """A non-negative integer query parameter (range checks are the service's)."""
    value = (params or {}).get(name)
    if value is None:
        return default
    if not (value.isascii() and value.isdigit()) or len(value) > 6:
        raise Invalid("must be a positive integer", name)
    return int(value)


# --------------------------------------------------------------------------
# sessions and CSRF


class Sessions:
    """Session and CSRF cookies signed with the settings' secret key.

    Cookies are named by their base name (:data:`SESSION_COOKIE`...): over
    https they are Secure and go by ``__Host-`` names (:func:`fmn.auth.cookie_name`),
    and :meth:`get` reads those only.
    """

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.secure = auth.secure_cookies(settings)

    def name(self, base: str) -> str:
        return auth.cookie_name(base, self.settings)

    def get(self, jar: Mapping[str, str], base: str, default: str = "") -> str:
        """The value of our cookie ``base`` in a request's ``jar`` (:func:`cookies`)."""
        return jar.get(self.name(base), default)

    def cookie(self, base: str, value: str, *, max_age: int | None,
               http_only: bool = True) -> str:
        """A ``Set-Cookie`` value (on ``Path=/`` and host-only, as ``__Host-`` needs)."""
        parts = [f"{self.name(base)}={value}", "Path=/", "SameSite=Lax"]
        if max_age is not None:
            parts.append(f"Max-Age={max_age}")
        if http_only:
            parts.append("HttpOnly")
        if self.secure:
            parts.append("Secure")
        return "; ".join(parts)

    def csrf_for(self, session: str) -> str:
        """The CSRF token bound to a session (double-submit, and forgeable by no one else)."""
        key = self.settings.secret_key.encode()
        return hmac.new(key, b"csrf\0" + session.encode(), hashlib.sha256).hexdigest()

    def check_csrf(self, jar: Mapping[str, str], headers: Mapping[str, str],
                   form: Any = None) -> None:
        """Raise :class:`Forbidden` unless the request proves it comes from our pages."""
        cookie = self.get(jar, CSRF_COOKIE)
        sent = headers.get(CSRF_HEADER, "")
        if not sent and isinstance(form, dict):
            sent = str(form.get("csrf", ""))
        if not cookie or not sent or not hmac.compare_digest(cookie.encode(), sent.encode()):
            raise Forbidden(f"missing or wrong CSRF token: send the {self.name(CSRF_COOKIE)} "
                            "cookie's value in the X-CSRF-Token header", "X-CSRF-Token")
        session = self.get(jar, SESSION_COOKIE)
        if session and not hmac.compare_digest(self.csrf_for(session).encode(), sent.encode()):
            raise Forbidden("the CSRF token belongs to another session", "X-CSRF-Token")

    def user(self, jar: Mapping[str, str]) -> str:
        """The signed-in user's name; :class:`NotSignedIn` otherwise."""
        session = self.get(jar, SESSION_COOKIE)
        if not session:
            raise NotSignedIn("sign in first (GET /login)")
        try:
            return auth.verify(session, self.settings.secret_key, "session",
                               auth.SESSION_MAX_AGE_S, clock=self.clock)
        except auth.InvalidToken as exc:
            raise NotSignedIn(f"your session is not valid ({exc.reason}); sign in again") \
                from exc

    def sign_in(self, name: str) -> list[str]:
        """The cookies that sign ``name`` in: the session and its CSRF token."""
        session = auth.sign(name, self.settings.secret_key, "session", clock=self.clock)
        return [self.cookie(SESSION_COOKIE, session, max_age=auth.SESSION_MAX_AGE_S),
                self.cookie(CSRF_COOKIE, self.csrf_for(session), max_age=auth.SESSION_MAX_AGE_S,
                            http_only=False)]

    def sign_out(self) -> list[str]:
        return [self.cookie(SESSION_COOKIE, "", max_age=0),
                self.cookie(CSRF_COOKIE, "", max_age=0, http_only=False)]
