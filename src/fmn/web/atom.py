"""An Atom feed of a person's recent notifications, at a signed, revocable address.

Feed readers cannot sign in, so the address itself is the credential:
``{web_url}/atom/<token>``, where the token (:func:`fmn.auth.seal`, purpose
``atom``) names the user and the user's current *feed key*, a random value
kept in the :class:`~fmn.web.verify.Keys` store (Redis).  The token does not
expire with time (a reader keeps its URL); :meth:`AtomFeeds.revoke` replaces
the key, so every address given out before stops working at once, and the
next :meth:`AtomFeeds.url` is a new one.  A token that does not verify, or
names a key that is not the user's current one (revoked, or expired from the
store after a year unused: each issued URL, and each read of the feed at
most once a day, makes it live a year from then), is :class:`FeedNotFound`: the same answer as for
a user who does not exist, so the feed tells nothing to someone guessing.

The feed (:func:`render`, built with feedgen) holds the notifications the web
API's ``/api/v1/notifications`` shows for that user, newest first.  Their
text comes from the bus and is untrusted: each string is cleaned
(:func:`fmn.delivery.text.clean`: no control, escape or bidi characters, which
would also make the XML invalid) and written as XML text (escaped by the
library), entries link only to ``http(s)`` URLs, and entry ids are derived
from a hash, never from message text.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from fmn.auth import InvalidToken, seal, unseal
from fmn.delivery.email import OLDEST_DATE
from fmn.delivery.text import clean, shorten
from fmn.message import sent_time_utc
from fmn.web.service import WebError
from fmn.web.verify import Keys

#: how long a feed key lives unused in the store (each issued URL refreshes it, and
#: each read of the feed, at most once per ``REFRESH_EVERY_S``)
KEY_TTL_S = 366 * 24 * 3600
REFRESH_EVERY_S = 24 * 3600
#: tokens do not expire by age: only a new key revokes them
TOKEN_MAX_AGE_S = 100 * 365 * 24 * 3600
ENTRIES = 50
CONTENT_TYPE = "application/atom+xml; charset=utf-8"


class FeedNotFound(WebError):
    status, code = 404, "not-found"


class AtomFeeds:
    """Issues, checks and revokes the feed addresses of users."""

    def __init__(self, keys: Keys, secret: str | list[str], web_url: str,
                 prefix: str = "fmn:atom:") -> None:
        self.keys = keys
        self.secrets = [secret] if isinstance(secret, str) else list(secret)
        self.web_url = web_url.rstrip("/")
        self.prefix = prefix

    def _key_name(self, user: str) -> str:
        return f"{self.prefix}key:{user}"

    def url(self, user: str) -> str:
        """The user's feed address (the same until revoked)."""
        current = self.keys.get(self._key_name(user))
        if current is None:
            candidate = secrets.token_urlsafe(16)
            if not self.keys.add(self._key_name(user), candidate, KEY_TTL_S):
                current = self.keys.get(self._key_name(user))  # another request made one
            current = current or candidate
        # in use: keep it.  Never by writing back the key read: a revocation that ran
        # in between would be undone, and the revoked address would work again.  Only
        # if there is none (it expired meanwhile, or ours lost to one already gone),
        # else by its expiry.
        if not self.keys.add(self._key_name(user), current, KEY_TTL_S):
            self.keys.touch(self._key_name(user), KEY_TTL_S)
        return f"{self.web_url}/atom/{seal({'u': user, 'k': current}, self.secrets, 'atom')}"

    def revoke(self, user: str) -> str:
        """Invalidate every address given out so far; the new address."""
        self.keys.put(self._key_name(user), secrets.token_urlsafe(16), KEY_TTL_S)
        return self.url(user)

    def user_of(self, token: str) -> str:
        """The user a feed token belongs to; FeedNotFound if it is not (or no longer) valid."""
        try:
            doc = unseal(token, self.secrets, "atom", TOKEN_MAX_AGE_S)
        except InvalidToken as exc:
            raise FeedNotFound("no such feed") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("u"), str) \
                or not isinstance(doc.get("k"), str):
            raise FeedNotFound("no such feed")
        user = str(doc["u"])
        current = self.keys.get(self._key_name(user))
        if current is None or not hmac.compare_digest(current.encode(), doc["k"].encode()):
            raise FeedNotFound("no such feed")
        # A feed reader polling the address keeps it alive: the key's expiry moves
        # on, at most once a day.  Only its expiry: a revocation racing this read
        # must not be undone by writing the old key back.
        if self.keys.add(f"{self.prefix}seen:{user}", "1", REFRESH_EVERY_S):
            self.keys.touch(self._key_name(user), KEY_TTL_S)
        return user


def _when(value: Any) -> datetime:
    """A time of an item in UTC, or the epoch when it has none readable: Atom's dates
    are RFC 3339's, which has no offset with seconds (Python reads one)."""
    return sent_time_utc(value) or datetime.fromtimestamp(0, UTC)


def _published(sent_at: Any, received: datetime) -> datetime:
    """When the publisher says it sent the message, unless that is unreadable, before
    2000 or after it was received (an untrusted field): then when it was received."""
    sent = _when(sent_at) if sent_at else None
    return sent if sent is not None and OLDEST_DATE <= sent <= received else received


def _http_url(value: Any) -> str | None:
    url = clean(value)
    if url.startswith(("https://", "http://")) and " " not in url and len(url) <= 2000:
        return url
    return None


def render(user: str, items: Iterable[Mapping[str, Any]], self_url: str,
           web_url: str) -> bytes:
    """The Atom document (UTF-8 XML) of ``user``'s notifications (newest first)."""
    from feedgen.feed import FeedGenerator

    items = list(items)[:ENTRIES]
    gen = FeedGenerator()
    owner = hashlib.sha256(user.encode()).hexdigest()[:32]
    gen.id(f"tag:fedoraproject.org,2016:fmn/{owner}")
    gen.title(f"Fedora Notifications for {shorten(clean(user), 80)}")
    gen.author({"name": "Fedora Notifications"})
    gen.link(href=self_url, rel="self", type="application/atom+xml")
    gen.link(href=f"{web_url.rstrip('/')}/", rel="alternate", type="text/html")
    # the time received, never the publisher's word alone (None: not believable)
    gen.updated(max((_when(i.get("received_at")) for i in items),
                    default=datetime.fromtimestamp(0, UTC)))
    # feedgen puts the last added entry first: add the oldest first
    for item in reversed(items):
        entry = gen.add_entry()
        digest = hashlib.sha256(f"{user}\0{item.get('message_id')}".encode()).hexdigest()[:40]
        entry.id(f"tag:fedoraproject.org,2016:fmn/{owner}/{digest}")
        app = shorten(clean(item.get("app")) or "fedora", 40)
        summary = shorten(clean(item.get("summary")) or clean(item.get("topic")), 500)
        entry.title(f"[{app}] {summary}" if summary else f"[{app}]")
        received = _when(item.get("received_at"))
        entry.updated(received)
        entry.published(_published(item.get("sent_at"), received))
        url = _http_url(item.get("url"))
        if url:
            entry.link(href=url, rel="alternate")
        names = [shorten(clean(n), 60) for n in item.get("rule_names") or () if clean(n)]
        topic = shorten(clean(item.get("topic")), 200)
        details = [f"topic: {topic}"] if topic else []
        if names:
            details.append(f"{'rule' if len(names) == 1 else 'rules'}: {', '.join(names[:5])}")
        # plain text (type "text"): a reader shows it as is, never as markup
        entry.content(" · ".join(details) or app, type="text")
    atom: bytes = gen.atom_str(pretty=True)
    return atom
