"""Signed, expiring tokens that name a user: the feed's credentials and the web app's session.

:func:`sign` turns a user name into a URL-safe token for one *purpose*
(``"feed"``: a link to the live feed; ``"session"``: the web app's session
cookie); :func:`verify` gives the user back, or raises :class:`InvalidToken`
(a :class:`~fmn.errors.PermanentError`) when the token was not signed with
this secret for this purpose, was altered, or is older than ``max_age_s``.
A token signed for one purpose never verifies for another: each purpose is
its own itsdangerous salt.  The secret may be a list (oldest first, the last
one signs) so that a new key can be rolled out without logging everyone out.

Tokens are signed, not encrypted: the user name inside is readable.  They
carry no server-side state, so one cannot be revoked before it expires
except by changing the secret.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlencode

from itsdangerous import BadData, SignatureExpired, TimestampSigner, URLSafeTimedSerializer

from fmn.errors import PermanentError

#: What a token may be used for; each purpose signs with a salt of its own.
PURPOSES: tuple[str, ...] = ("feed", "session", "unsubscribe", "verify-email", "oidc", "atom")
#: The feed endpoint's default lifetimes of the two kinds of credentials.
FEED_TOKEN_MAX_AGE_S = 7 * 24 * 3600
SESSION_MAX_AGE_S = 14 * 24 * 3600
#: The cookie the web app keeps its session in (the feed endpoint reads it too), by
#: :func:`cookie_name`.
SESSION_COOKIE = "fmn_session"
#: The prefix of the web app's cookie names over https: a browser keeps a ``__Host-``
#: cookie only if it is Secure, host-only (no Domain) and on ``Path=/``, so no other
#: site under a parent domain (``*.fedoraproject.org``) can set one beside ours.
HOST_PREFIX = "__Host-"
#: Fedora account names are short; anything longer in a token is not one of ours.
MAX_USER_CHARS = 255

Secret = str | bytes | Sequence[str | bytes]
Clock = Callable[[], float]


class InvalidToken(PermanentError):
    """Credentials that prove no user; ``reason``: ``expired``, ``invalid`` or ``missing``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason} token: {detail}")
        self.reason = reason


class _ClockSigner(TimestampSigner):
    """itsdangerous' timestamp signer with an injectable clock (tests move time)."""

    def __init__(self, *args: Any, clock: Clock = time.time, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._clock = clock

    def get_timestamp(self) -> int:
        return int(self._clock())


def _serializer(secret: Secret, purpose: str, clock: Clock) -> URLSafeTimedSerializer:
    if purpose not in PURPOSES:
        raise ValueError(f"unknown token purpose {purpose!r}; known: {', '.join(PURPOSES)}")
    keys = [k.encode() if isinstance(k, str) else k
            for k in ([secret] if isinstance(secret, str | bytes) else secret)]
    if not keys or not all(keys):
        raise ValueError("a token secret must not be empty")
    return URLSafeTimedSerializer(keys, salt=f"fmn.{purpose}", signer=_ClockSigner,
                                  signer_kwargs={"clock": clock,
                                                 "digest_method": hashlib.sha256})


def sign(user: str, secret: Secret, purpose: str, *, clock: Clock = time.time) -> str:
    """A token naming ``user``, good for ``purpose`` only."""
    if not user or len(user) > MAX_USER_CHARS:
        raise ValueError(f"not a user name: {user[:80]!r}")
    token: str = _serializer(secret, purpose, clock).dumps({"u": user})
    return token


def seal(value: Any, secret: Secret, purpose: str, *, clock: Clock = time.time) -> str:
    """``value`` (JSON-able) as a signed, timestamped token good for ``purpose`` only."""
    token: str = _serializer(secret, purpose, clock).dumps(value)
    return token


def unseal(token: str, secret: Secret, purpose: str, max_age_s: float, *,
           clock: Clock = time.time) -> Any:
    """What :func:`seal` sealed; :class:`InvalidToken` (``expired`` or ``invalid``) if the
    token was not sealed for ``purpose`` with this secret, was altered, or is too old."""
    return _load(token, secret, purpose, max_age_s, clock)


def _load(token: str, secret: Secret, purpose: str, max_age_s: float, clock: Clock) -> Any:
    """What a token signed for ``purpose`` carries; InvalidToken if it does not verify."""
    try:
        return _serializer(secret, purpose, clock).loads(token, max_age=int(max_age_s))
    except SignatureExpired as exc:
        raise InvalidToken("expired", f"older than {max_age_s:.0f} s") from exc
    except BadData as exc:  # forged, altered, truncated, or signed for another purpose
        raise InvalidToken("invalid", f"bad signature or payload ({type(exc).__name__})") \
            from exc


def verify(token: str, secret: Secret, purpose: str, max_age_s: int, *,
           clock: Clock = time.time) -> str:
    """The user a token names; :class:`InvalidToken` if it does not prove it."""
    doc = _load(token, secret, purpose, max_age_s, clock)
    user = doc.get("u") if isinstance(doc, dict) else None
    if not isinstance(user, str) or not user or len(user) > MAX_USER_CHARS:
        raise InvalidToken("invalid", "the payload names no user")
    return user


def feed_url(base_url: str, user: str, secret: Secret, *, clock: Clock = time.time) -> str:
    """The live feed's address for ``user`` with a fresh feed token (what ``fmn`` prints)."""
    query = urlencode({"token": sign(user, secret, "feed", clock=clock)})
    return f"{base_url.rstrip('/')}/feed?{query}"


def authenticate(*, authorization: str | None, token: str | None, session: str | None,
                 secret: Secret, feed_max_age_s: int = FEED_TOKEN_MAX_AGE_S,
                 session_max_age_s: int = SESSION_MAX_AGE_S, clock: Clock = time.time) -> str:
    """The user a request's credentials name, the first one present deciding.

    In order: an ``Authorization: Bearer`` feed token, a ``token`` query
    parameter (a feed token: the browser's EventSource cannot set headers),
    the ``fmn_session`` cookie (a session token).  :class:`InvalidToken` when
    there is none, or the first one present does not verify.
    """
    if authorization is not None:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise InvalidToken("invalid", "the Authorization header is not 'Bearer <token>'")
        return verify(value.strip(), secret, "feed", feed_max_age_s, clock=clock)
    if token:
        return verify(token, secret, "feed", feed_max_age_s, clock=clock)
    if session:
        return verify(session, secret, "session", session_max_age_s, clock=clock)
    raise InvalidToken("missing", "no bearer token, token parameter or session cookie")


#: One-click unsubscribe links stay good this long (old mails keep working).
UNSUBSCRIBE_MAX_AGE_S = 365 * 24 * 3600


def unsubscribe_url(web_url: str, user: str, destination: str, secret: Secret, *,
                    clock: Clock = time.time) -> str:
    """The web app's one-click unsubscribe URL for one of a user's destinations (RFC 8058)."""
    if not user or len(user) > MAX_USER_CHARS:
        raise ValueError(f"not a user name: {user[:80]!r}")
    token: str = _serializer(secret, "unsubscribe", clock).dumps({"u": user, "d": destination})
    return f"{web_url.rstrip('/')}/unsubscribe/{token}"


def verify_unsubscribe(token: str, secret: Secret, *, max_age_s: float = UNSUBSCRIBE_MAX_AGE_S,
                       clock: Clock = time.time) -> tuple[str, str]:
    """The (user, destination) an unsubscribe token names; InvalidToken otherwise."""
    doc = _load(token, secret, "unsubscribe", max_age_s, clock)
    user = doc.get("u") if isinstance(doc, dict) else None
    dest = doc.get("d") if isinstance(doc, dict) else None
    if not isinstance(user, str) or not user or not isinstance(dest, str):
        raise InvalidToken("invalid", "the payload names no destination")
    return user, dest


def secure_cookies(settings: Any) -> bool:
    """Whether the web app's cookies are Secure (and ``__Host-`` named): served over
    https (``FMN_WEB_URL``) or in production."""
    return bool(settings.web_url.startswith("https://") or settings.production)


def cookie_name(base: str, settings: Any) -> str:
    """The name of the web app's cookie ``base`` (``fmn_session``...) under ``settings``."""
    return HOST_PREFIX + base if secure_cookies(settings) else base


def parse_cookies(header: str | None) -> dict[str, str]:
    """The cookies of a ``Cookie`` header (``a=1; b=2``), read as browsers send them.

    Each ``name=value`` pair stands alone: one another site or app set on a
    parent domain that is not a valid "cookie" to :mod:`http.cookies`
    (``g={"a":1}``, ``a[b]=1``) is skipped, where ``SimpleCookie`` would stop
    there and lose ours, signing the person out for good.  A value in double
    quotes loses them.  A name given twice keeps its first value, as the UI's
    script reads it (``app.js``), so the two agree on the CSRF token.  Browsers
    send the cookie of the longest path first, then the oldest: a cookie a
    sibling site sets on the parent domain after ours comes second and is
    ignored, but one set with a longer path, or before ours (ours is new at
    each sign-in), still comes first: what rules that out is the ``__Host-``
    names the web app uses over https (:func:`cookie_name`).  Names and values
    lose spaces and tabs around them, nothing else: a browser checks the
    ``__Host-`` rules only on a name that starts with ``__Host-``, so one
    another site sets as ``"\u00a0__Host-fmn_session"`` must not read as ours.
    """
    jar: dict[str, str] = {}
    for part in (header or "").split(";"):
        name, eq, value = part.partition("=")
        name, value = name.strip(" \t"), value.strip(" \t")
        if not eq or not name:
            continue
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        jar.setdefault(name, value)
    return jar
