"""The real :class:`~fmn.delivery.matrix.MatrixLink`: the bot's session through matrix-nio.

Why matrix-nio: it is the maintained Python client of the client-server API
whose answers are typed values rather than exceptions (``RoomSendError`` with
``status_code`` and ``retry_after_ms``), so errors translate here in one
place; its retries can be switched off (``max_limit_exceeded=0``,
``max_timeouts=0``), leaving rate limits to the notifier, which knows the
invocation's deadline; and it installs without libolm (end-to-end
encryption is an extra we do not use: notices go to unencrypted direct
rooms).  mautrix, the other maintained choice, retries rate-limited
requests on its own and is built around long-running bridges and bots.

nio is asynchronous and the senders are not: :class:`NioLink` runs one event
loop on a thread of its own and submits each call to it, so it can be used
from any thread (the local runner's, Lambda's).  Nothing connects before the
first call.  Translation: ``M_LIMIT_EXCEEDED`` is
:class:`~fmn.delivery.matrix.LimitExceeded`; a room the bot cannot post in
(``M_FORBIDDEN``, ``M_NOT_FOUND``) is :class:`~fmn.delivery.matrix.RoomGone`;
an invitation the server refuses (no such user, another server with
federation off) is a :class:`~fmn.errors.PermanentError`; a bad token, a 5xx,
a timeout or a connection error is a :class:`~fmn.errors.RetryableError`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

from fmn.delivery.matrix import LimitExceeded, MatrixNotifier, RedisRooms, RoomGone
from fmn.errors import PermanentError, RetryableError

T = TypeVar("T")

#: seconds a single request to the homeserver may take
REQUEST_TIMEOUT_S = 20.0


def _status(resp: Any) -> int | None:
    transport = getattr(resp, "transport_response", None)
    status = getattr(transport, "status", None)
    return status if isinstance(status, int) else None


def _raise_for(resp: Any, what: str) -> None:
    """Translate an nio error response (module docstring); return if it is none."""
    from nio import ErrorResponse

    if not isinstance(resp, ErrorResponse):
        return
    code, status = resp.status_code, _status(resp)
    detail = f"{what}: {code or status} {str(resp.message)[:200]}"
    if code == "M_LIMIT_EXCEEDED" or status == 429:
        raise LimitExceeded((resp.retry_after_ms or 1000) / 1000, detail)
    if status is None or status >= 500 or status in (401, 408) or \
            code in ("M_UNKNOWN_TOKEN", "M_MISSING_TOKEN"):
        raise RetryableError(f"homeserver failed ({detail})")
    raise PermanentError(detail)


class NioLink:
    """A bot's Matrix session (homeserver URL and access token)."""

    #: a request is given up after twice the client's own timeout (:meth:`_run`)
    longest_request_s = 2 * REQUEST_TIMEOUT_S

    def __init__(self, homeserver: str, access_token: str) -> None:
        if not access_token:
            raise ValueError("the Matrix bot needs an access token (FMN_MATRIX_TOKEN)")
        self.homeserver = homeserver.rstrip("/")
        self.access_token = access_token
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: Any = None
        self._lock = threading.Lock()

    # -- the loop ------------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=_serve, args=(loop,), daemon=True,
                                 name="matrix-nio").start()
                self._loop = loop
            loop = self._loop
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(REQUEST_TIMEOUT_S * 2)
        except (concurrent.futures.TimeoutError, TimeoutError) as exc:
            future.cancel()
            raise RetryableError("the homeserver did not answer in time") from exc

    async def _call(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        from aiohttp import ClientError
        from nio import AsyncClient, AsyncClientConfig

        if self._client is None:
            config = AsyncClientConfig(max_limit_exceeded=0, max_timeouts=0,
                                       request_timeout=REQUEST_TIMEOUT_S,
                                       encryption_enabled=False, store_sync_tokens=False)
            self._client = AsyncClient(self.homeserver, config=config)
            self._client.access_token = self.access_token
        try:
            return await getattr(self._client, method)(*args, **kwargs)
        except (ClientError, TimeoutError, OSError) as exc:
            raise RetryableError(f"homeserver unreachable: {type(exc).__name__}: {exc}") \
                from exc

    # -- MatrixLink --------------------------------------------------------------

    def create_direct_room(self, user_id: str) -> str:
        from nio import RoomPreset

        resp = self._run(self._call("room_create", is_direct=True, invite=[user_id],
                                    preset=RoomPreset.trusted_private_chat,
                                    name="Fedora Notifications", federate=False))
        _raise_for(resp, f"creating a room for {user_id}")
        return str(resp.room_id)

    def membership(self, room_id: str, user_id: str) -> str | None:
        from nio import ErrorResponse

        resp = self._run(self._call("room_get_state_event", room_id, "m.room.member",
                                    user_id))
        if isinstance(resp, ErrorResponse):
            if resp.status_code == "M_NOT_FOUND":
                return None
            if resp.status_code == "M_FORBIDDEN":
                raise RoomGone(f"the bot cannot see {room_id}")
            _raise_for(resp, "reading a membership")
        state = resp.content.get("membership")
        return state if isinstance(state, str) else None

    def send(self, room_id: str, content: Mapping[str, Any], txn: str) -> str:
        from nio import ErrorResponse

        resp = self._run(self._call("room_send", room_id, "m.room.message", dict(content),
                                    tx_id=txn))
        if isinstance(resp, ErrorResponse) and resp.status_code in ("M_FORBIDDEN",
                                                                     "M_NOT_FOUND"):
            raise RoomGone(f"cannot post in {room_id}: {resp.status_code}")
        _raise_for(resp, "sending a notice")
        return str(resp.event_id)

    def whoami(self) -> str:
        resp = self._run(self._call("whoami"))
        _raise_for(resp, "whoami")
        return str(resp.user_id)

    def close(self) -> None:
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is None:
            return
        if self._client is not None:
            client, self._client = self._client, None
            with contextlib.suppress(Exception):  # closing is best effort
                asyncio.run_coroutine_threadsafe(client.close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)


def _serve(loop: asyncio.AbstractEventLoop) -> None:
    """The session's loop, on its own thread, until :meth:`NioLink.close` stops it."""
    try:
        loop.run_forever()
    finally:
        loop.close()


def make_notifier(settings: Any) -> MatrixNotifier:
    """The bot's notifier from :class:`~fmn.settings.Settings`: its session, and each
    person's room remembered in Redis under a key per stage and homeserver (the sender
    and the web app's verification codes share the rooms)."""
    from fmn.redisconn import connect

    link = NioLink(settings.matrix_url, settings.matrix_token or "")
    client = connect(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
    rooms = RedisRooms(client, f"{settings.queue_prefix}matrix:{settings.matrix_url}:")
    return MatrixNotifier(link, rooms, settings.web_url, per_user=settings.matrix_per_user)
