"""The live feed over HTTP: a user's notifications as Server-Sent Events (Starlette, ASGI).

Routes:

* ``GET /feed``: the feed of the user the credentials name;
* ``GET /feed/{user}``: the same, refused (403) unless they name ``{user}``;
* ``GET /healthz``: ``ok``, without I/O (the Lambda Web Adapter's readiness check).

Credentials (:func:`fmn.auth.authenticate`, the first one present decides):
``Authorization: Bearer <feed token>``, ``?token=<feed token>`` (EventSource
cannot set headers), the web app's ``fmn_session`` cookie (``__Host-fmn_session``
over https, :func:`fmn.auth.cookie_name`).  None, or a bad one: 401.

A feed response (``text/event-stream``) starts with ``retry:`` and, on a
first connection, a data-less frame carrying the feed's current position as
its ``id:`` (EventSource remembers it without firing an event), then:

* without ``Last-Event-ID``: the user's latest ``?history=N`` events (0 to
  :data:`MAX_HISTORY`, default ``history`` of :class:`StreamOptions`), then
  every new one;
* with ``Last-Event-ID`` (the header EventSource sends when it reconnects,
  or ``?last_event_id=``; malformed: 400): exactly the events after it; if
  the feed has since dropped events after it (its length or age cap), an
  ``event: gap`` frame first (``{"v": 1, "after": "<that id>"}``, no id),
  so the client knows to look at the recent notifications page;
* in both cases, once what the feed held at connection time has gone out,
  an ``event: live`` frame (``{"v": 1, "after": "<position>"}``, no id):
  every event after it is new (the web UI shows desktop notifications for
  those only).

Each event is ``id: <feed id>``, ``event: notification``, one ``data:``
line of JSON (``fmn.delivery.feed``).  A ``: keep-alive`` comment goes out
every ``ping_s``.  The response ends after ``max_stream_s`` (below the
Lambda timeout), when Redis fails, or when the server stops: the client
reconnects after ``retry`` with its ``Last-Event-ID`` and loses nothing.

:func:`create_app` builds the app (nothing connects before the first
request); the module's ``app`` builds it from the environment on first use,
for ``uvicorn stream:app`` (``stream/run.sh`` under the Lambda Web Adapter).
"""

# No "from __future__ import annotations": fmn up and the tests load this file
# by path, outside sys.modules, where dataclasses cannot resolve string annotations.
import logging
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from fmn.auth import (
    FEED_TOKEN_MAX_AGE_S,
    SESSION_COOKIE,
    SESSION_MAX_AGE_S,
    InvalidToken,
    authenticate,
    cookie_name,
    parse_cookies,
)
from fmn.delivery.feed import (
    START,
    AsyncRedisFeed,
    FeedReader,
    InvalidEventId,
    cursor_frame,
    gap_frame,
    live_frame,
    parse_event_id,
    retry_frame,
    sse_frame,
)
from fmn.errors import RetryableError
from fmn.settings import Settings
from fmn.web import check as check_settings

log = logging.getLogger("fmn.feed.stream")
MAX_HISTORY = 100


@dataclass(frozen=True)
class StreamOptions:
    """How the feed endpoint streams (environment: :meth:`from_env`)."""

    #: seconds between keep-alive comments
    ping_s: float = 15.0
    #: the longest single wait on Redis: how soon a stream notices its end
    block_s: float = 1.0
    #: what EventSource waits before reconnecting (``retry:``)
    retry_ms: int = 3000
    #: end each response after this long (``None``: never); below the Lambda timeout
    max_stream_s: float | None = None
    #: events a first connection gets from before it connected
    history: int = 20
    #: most events per Redis read
    batch: int = 100
    feed_token_max_age_s: int = FEED_TOKEN_MAX_AGE_S
    session_max_age_s: int = SESSION_MAX_AGE_S
    #: the feeds' key prefix (``None``: the settings' ``FMN_FEED_PREFIX``)
    prefix: str | None = None
    #: origins allowed to read the feed from a page (``None``: the web UI's)
    allow_origins: tuple[str, ...] | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "StreamOptions":
        """``FMN_SSE_PING_S``, ``FMN_SSE_MAX_STREAM_S``, ``FMN_SSE_RETRY_MS``,
        ``FMN_SSE_HISTORY``, ``FMN_SSE_ALLOW_ORIGINS``
        (comma-separated)."""
        env = os.environ if environ is None else environ
        d = cls()
        max_stream = env.get("FMN_SSE_MAX_STREAM_S")
        origins = env.get("FMN_SSE_ALLOW_ORIGINS")
        return cls(
            ping_s=float(env.get("FMN_SSE_PING_S", d.ping_s)),
            retry_ms=int(env.get("FMN_SSE_RETRY_MS", d.retry_ms)),
            max_stream_s=float(max_stream) if max_stream else None,
            history=int(env.get("FMN_SSE_HISTORY", d.history)),
            allow_origins=tuple(o.strip() for o in origins.split(",") if o.strip())
            if origins else None)


def _unauthorized(exc: InvalidToken) -> Response:
    return JSONResponse({"error": "unauthorized", "reason": exc.reason}, status_code=401,
                        headers={"WWW-Authenticate": 'Bearer realm="fmn-feed"'})


def _bad_request(detail: str) -> Response:
    return JSONResponse({"error": "bad request", "detail": detail}, status_code=400)


async def _events(reader: FeedReader, user: str, last_id: str | None, history: int,
                  options: StreamOptions, closing: threading.Event,
                  shutdown: anyio.Event) -> AsyncIterator[bytes]:
    deadline = None if options.max_stream_s is None else time.monotonic() + options.max_stream_s
    # Before any Redis call: if it fails, the client still knows when to come back.
    yield retry_frame(options.retry_ms)
    try:
        if last_id is None:
            recent = await reader.latest(user, max(history, 1))
            cursor = recent[-1].id if recent else START
            yield cursor_frame(cursor)
            for event in recent[-history:] if history else ():
                yield sse_frame(event)
        else:
            cursor = last_id
            if await reader.missed_after(user, last_id):
                # the feed dropped events after the client's position: say so
                yield gap_frame(last_id)
            while True:  # what came while the client was away, without waiting
                missed = await reader.after(user, cursor, options.batch)
                for event in missed:
                    yield sse_frame(event)
                    cursor = event.id
                if len(missed) < options.batch:
                    break
        # caught up: from here on every event is new (desktop notifications)
        yield live_frame(cursor)
        while not (closing.is_set() or shutdown.is_set()):
            wait = options.block_s
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    break
            for event in await reader.after(user, cursor, options.batch, wait):
                yield sse_frame(event)
                cursor = event.id
    except RetryableError as exc:
        log.warning("feed stream ended early: %s", exc)


def create_app(settings: Settings | None = None, options: StreamOptions | None = None,
               reader: FeedReader | None = None) -> Starlette:
    """The feed endpoint; with no ``reader``, one on ``settings.redis_url``, made at startup
    (lifespan) and closed at shutdown.

    ``app.state.close_streams()`` ends every open stream (call it before
    stopping the server, or open streams hold the shutdown up);
    ``app.state.streams_closing`` is the event it sets (cleared, streams stay open
    again: a test that drops the browser's connection and then lets it back).
    """
    settings = settings or Settings.from_env()
    # the web app's refusals: with the public development key in production, anyone
    # could sign a session or feed token for anyone and read their feed here
    check_settings(settings)
    options = options or StreamOptions.from_env()
    closing = threading.Event()
    held: dict[str, FeedReader] = {} if reader is None else {"reader": reader}

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        closing.clear()
        if reader is None:
            held["reader"] = AsyncRedisFeed.from_url(settings.redis_url,
                                                     options.prefix or settings.feed_prefix,
                                                     max_block_s=options.block_s)
        try:
            yield
        finally:
            closing.set()
            if reader is None:  # ours to close
                await held.pop("reader").aclose()

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def feed(request: Request) -> Response:
        try:
            user = authenticate(authorization=request.headers.get("authorization"),
                                token=request.query_params.get("token"),
                                session=parse_cookies(request.headers.get("cookie")).get(
                                    cookie_name(SESSION_COOKIE, settings)),
                                secret=settings.secret_key,
                                feed_max_age_s=options.feed_token_max_age_s,
                                session_max_age_s=options.session_max_age_s)
        except InvalidToken as exc:
            return _unauthorized(exc)
        wanted = request.path_params.get("user")
        if wanted is not None and wanted != user:
            return JSONResponse({"error": "forbidden"}, status_code=403)
        last_id = (request.headers.get("last-event-id")
                   or request.query_params.get("last_event_id") or None)
        if last_id is not None:
            try:
                parse_event_id(last_id)
            except InvalidEventId as exc:
                return _bad_request(str(exc))
        raw_history = request.query_params.get("history")
        history = options.history
        if raw_history is not None:
            if not re.fullmatch("[0-9]{1,3}", raw_history) or int(raw_history) > MAX_HISTORY:
                return _bad_request(f"history must be 0 to {MAX_HISTORY}")
            history = int(raw_history)
        # Set by sse-starlette when uvicorn is told to exit (SIGTERM): the
        # stream then ends at its next wait, completing the response cleanly.
        shutdown = anyio.Event()
        return EventSourceResponse(
            _events(held["reader"], user, last_id, history, options, closing, shutdown),
            ping=options.ping_s, sep="\n",
            ping_message_factory=lambda: ServerSentEvent(comment="keep-alive", sep="\n"),
            shutdown_event=shutdown, shutdown_grace_period=options.block_s + 1.0)

    origins = options.allow_origins if options.allow_origins is not None \
        else (settings.web_url,)
    app = Starlette(
        routes=[Route("/healthz", healthz, methods=["GET"]),
                Route("/feed", feed, methods=["GET"]),
                Route("/feed/{user}", feed, methods=["GET"])],
        middleware=[Middleware(CORSMiddleware, allow_origins=list(origins),
                               allow_credentials=True, allow_methods=["GET"],
                               allow_headers=["Authorization", "Last-Event-ID"])],
        lifespan=lifespan)
    app.state.streams_closing = closing
    app.state.close_streams = closing.set
    return app


class _LazyApp:
    """The ASGI app built from the environment on its first call (no work at import)."""

    def __init__(self) -> None:
        self._app: Starlette | None = None
        self._lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._app is None:
            with self._lock:
                if self._app is None:
                    self._app = create_app()
        await self._app(scope, receive, send)


app = _LazyApp()
