"""Proving that a destination belongs to its user, without letting anyone spam strangers.

* **E-mail**: a link ``{web_url}/verify/email/<token>``.  The token is signed
  (itsdangerous, salt ``fmn.verify-email``, the app's secret), names the user,
  the destination and its address, expires after ``link_ttl_s`` (24 h), and
  is single use: its random id is recorded with ``SET NX`` until it would
  expire anyway, so a second use is refused.  Opening the link only looks
  (:meth:`Verifier.check_email`: a page with a button); the button's POST
  verifies (:meth:`Verifier.confirm_email`): mail systems' link scanners
  open every link of a mail, and must neither confirm an address someone
  else added nor use up the owner's link.
* **IRC and Matrix**: a 6-digit code sent through that network, typed back
  in the UI.  Only an HMAC of the code is stored, for ``code_ttl_s``
  (10 min); it is compared in constant time; after ``max_attempts`` wrong
  guesses the code is destroyed and a new one must be asked for.  IRC goes
  through an :class:`~fmn.delivery.irc_client.IrcLink`, Matrix through the
  bot's :class:`~fmn.delivery.matrix.MatrixNotifier` (:class:`MatrixCodeChannel`:
  a notice in the person's direct room).  Without a bot token,
  :class:`RecordingChannel` keeps the code and logs that it was made (the
  code itself only outside production).
* **Rate limits**: every request to send a verification counts against the
  user (``per_user`` an hour), against the address as asked by that user
  (``per_address`` an hour) and against the address whoever asks
  (``per_address_all`` an hour), in counters that expire (an e-mail address
  counted as its mailbox, its ``+tag`` off: :func:`mailbox_key`).  Over any,
  :class:`~fmn.web.service.RateLimited`.  The address's own limit is per
  account, so one account adding a stranger's address cannot use up the
  stranger's tries; the higher limit over all accounts still bounds what the
  stranger receives (it takes several accounts to reach it).  A send that certainly did not go
  out (:class:`~fmn.errors.NotSent`: an SMTP relay or the IRC server that
  could not be reached, SES refusing at its first try) takes its counts
  back, so an outage does not use up a person's tries; one that may have
  gone (a relay that timed out after the message, SES failing after a
  retry) keeps them, or a slow relay would lift the per-address limit.

A destination stays unverified in the database until proven, and the
snapshot never routes to an unverified one.  State lives behind the small
:class:`Keys` port: :class:`RedisKeys` in production, :class:`MemoryKeys` in
tests.  Failures: the refusals are :class:`VerificationFailed` (a
:class:`~fmn.web.service.WebError` whose ``reason`` is ``expired``, ``used``,
``forged``, ``wrong-code``, ``no-code``, ``too-many-attempts``,
``revoked`` (sent before a one-click unsubscribe: :meth:`Verifier.revoke`) or
``gone``); a mailer or IRC link that is away raises its
:class:`~fmn.errors.RetryableError`, and one that refuses the address for
good (a homeserver that will not invite that user) becomes
:class:`~fmn.web.service.Invalid` on ``address``, naming who refused (their
own words go to the log only).  Adding a destination whose
verification does not go out keeps nothing; a link whose destination could
not be marked verified (the database away) can be followed again.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, Protocol

from fmn.auth import InvalidToken, seal, unseal
from fmn.delivery.email import check_sender
from fmn.delivery.irc_client import IrcLink
from fmn.delivery.mailers import Mailer
from fmn.errors import NotSent, PermanentError, RetryableError
from fmn.prefs import Destination
from fmn.web.service import (
    Invalid,
    NotFound,
    PreferencesService,
    RateLimited,
    WebError,
    address_key,
    check_fields,
)

log = logging.getLogger(__name__)

Clock = Callable[[], float]


#: Who refuses a verification, by protocol, in the answer that says so.
_REFUSER = {"email": "mail server", "irc": "IRC server", "matrix": "Matrix homeserver"}


class VerificationFailed(WebError):
    """A verification that proves nothing; ``reason`` says why."""

    status, code = 400, "verification-failed"

    def __init__(self, reason: str, detail: str, field: str | None = None) -> None:
        super().__init__(detail, field)
        self.reason = reason


class TooManyAttempts(VerificationFailed):
    """Too many wrong codes: the code is gone.  ``Retry-After`` is the code's lifetime (a
    new code asked for meanwhile may be typed at once)."""

    status, code = 429, "rate-limited"

    def __init__(self, reason: str, detail: str, retry_after_s: int,
                 field: str | None = None) -> None:
        super().__init__(reason, detail, field)
        self.retry_after_s = retry_after_s


#: domains whose mailboxes ignore dots in the local part (``v.ictim@`` is ``victim@``),
#: and the one they count as (googlemail.com is gmail.com)
DOTLESS_DOMAINS = {"gmail.com": "gmail.com", "googlemail.com": "gmail.com"}


def mailbox_key(protocol: str, address: str | None) -> str:
    """:func:`~fmn.web.service.address_key`, and for an e-mail address without the
    ``+tag`` of its local part (and its dots at Gmail): ``victim+1@`` and ``victim+2@``
    reach one mailbox, and its verification limits count them as one (only those: they
    are two destinations).  Other providers' conventions (a ``-tag``) are not known
    here, so such spellings count apart."""
    key = address_key(protocol, address)
    if protocol == "email" and "@" in key:
        local, _, domain = key.rpartition("@")
        local = local.split("+", 1)[0] or local
        if domain in DOTLESS_DOMAINS:
            local, domain = local.replace(".", "") or local, DOTLESS_DOMAINS[domain]
        key = f"{local}@{domain}"
    return key


# --------------------------------------------------------------------------
# the state port


class Keys(Protocol):
    """The few Redis operations verification needs; every key expires."""

    def add(self, key: str, value: str, ttl_s: int) -> bool:
        """Set ``key`` unless it exists (``SET NX EX``); False if it did."""
        ...

    def put(self, key: str, value: str, ttl_s: int) -> None: ...

    def get(self, key: str) -> str | None: ...

    def delete(self, key: str) -> None: ...

    def incr(self, key: str, ttl_s: int) -> int:
        """Add one; the first increment starts the key's ``ttl_s``."""
        ...

    def decr(self, key: str) -> None:
        """Take one back, its expiry untouched (nothing if gone)."""
        ...

    def touch(self, key: str, ttl_s: int) -> None:
        """Make ``key`` expire ``ttl_s`` from now, its value untouched (nothing if gone)."""
        ...


class MemoryKeys:
    """In-memory :class:`Keys` with an injectable clock (tests)."""

    def __init__(self, clock: Clock = time.time) -> None:
        self.clock = clock
        self._data: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def _live(self, key: str) -> str | None:
        item = self._data.get(key)
        if item is None or item[1] <= self.clock():
            self._data.pop(key, None)
            return None
        return item[0]

    def add(self, key: str, value: str, ttl_s: int) -> bool:
        with self._lock:
            if self._live(key) is not None:
                return False
            self._data[key] = (value, self.clock() + ttl_s)
            return True

    def put(self, key: str, value: str, ttl_s: int) -> None:
        with self._lock:
            self._data[key] = (value, self.clock() + ttl_s)

    def get(self, key: str) -> str | None:
        with self._lock:
            return self._live(key)

    def delete(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)

    def incr(self, key: str, ttl_s: int) -> int:
        with self._lock:
            current = self._live(key)
            if current is None:
                self._data[key] = ("1", self.clock() + ttl_s)
                return 1
            value = int(current) + 1
            self._data[key] = (str(value), self._data[key][1])
            return value

    def decr(self, key: str) -> None:
        with self._lock:
            current = self._live(key)
            if current is not None:
                self._data[key] = (str(int(current) - 1), self._data[key][1])

    def touch(self, key: str, ttl_s: int) -> None:
        with self._lock:
            current = self._live(key)
            if current is not None:
                self._data[key] = (current, self.clock() + ttl_s)


class RedisKeys:
    """:class:`Keys` on Redis; failures are :class:`~fmn.errors.RetryableError`."""

    def __init__(self, client: Any) -> None:
        self.client = client

    @classmethod
    def from_url(cls, url: str) -> RedisKeys:
        from fmn.redisconn import connect

        return cls(connect(url, socket_timeout=5, socket_connect_timeout=5,
                                        decode_responses=True))

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        import redis

        try:
            return getattr(self.client, name)(*args, **kwargs)
        except redis.RedisError as exc:
            raise RetryableError(f"Redis failed ({name}): {exc}") from exc

    def add(self, key: str, value: str, ttl_s: int) -> bool:
        return bool(self._call("set", key, value, nx=True, ex=ttl_s))

    def put(self, key: str, value: str, ttl_s: int) -> None:
        self._call("set", key, value, ex=ttl_s)

    def get(self, key: str) -> str | None:
        value = self._call("get", key)
        return None if value is None else (value.decode() if isinstance(value, bytes)
                                           else str(value))

    def delete(self, key: str) -> None:
        self._call("delete", key)

    def incr(self, key: str, ttl_s: int) -> int:
        import redis

        try:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.incr(key)
                pipe.expire(key, ttl_s, nx=True)
                count, _ = pipe.execute()
        except redis.RedisError as exc:
            raise RetryableError(f"Redis failed (incr): {exc}") from exc
        return int(count)

    def decr(self, key: str) -> None:
        # DECR alone would make a gone key -1, for ever
        self._call("eval", _DECR_IF_EXISTS, 1, key)

    def touch(self, key: str, ttl_s: int) -> None:
        self._call("expire", key, ttl_s)


_DECR_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('DECR', KEYS[1])
end
return false
"""


# --------------------------------------------------------------------------
# code channels


class CodeChannel(Protocol):
    def send_code(self, address: str, text: str) -> None: ...


@dataclass
class IrcCodeChannel:
    link: IrcLink

    def send_code(self, address: str, text: str) -> None:
        self.link.send(address, [text])


@dataclass
class MatrixCodeChannel:
    """Codes as notices in the person's direct room with the bot."""

    notifier: Any  # a fmn.delivery.matrix.MatrixNotifier

    def send_code(self, address: str, text: str) -> None:
        self.notifier.send_text(address, text, txn=secrets.token_hex(16))


@dataclass
class RecordingChannel:
    """A channel with no network behind it (Matrix without a bot token): keeps what it
    was given."""

    name: str
    log_codes: bool = False
    sent: list[tuple[str, str]] = field(default_factory=list)

    def send_code(self, address: str, text: str) -> None:
        self.sent.append((address, text))
        if self.log_codes:
            log.warning("no %s sender: would send to %s: %s", self.name, address, text)
        else:
            log.warning("no %s sender: a verification code for %s was not delivered",
                        self.name, address)


# --------------------------------------------------------------------------
# the verifier


@dataclass(frozen=True)
class Limits:
    link_ttl_s: int = 24 * 3600
    code_ttl_s: int = 10 * 60
    max_attempts: int = 5
    window_s: int = 3600
    per_user: int = 10
    per_address: int = 3
    per_address_all: int = 10


#: How much longer than a link lives its revocation is kept.
REVOCATION_MARGIN_S = 3600


class Verifier:
    def __init__(self, service: PreferencesService, keys: Keys, secret: str | list[str], *,
                 web_url: str, mailer: Mailer, mail_from: str,
                 channels: dict[str, CodeChannel], limits: Limits = Limits(),
                 prefix: str = "fmn:verify:", clock: Clock = time.time) -> None:
        self.service = service
        self.keys = keys
        self.secrets = [secret] if isinstance(secret, str) else list(secret)
        self.web_url = web_url.rstrip("/")
        self.mailer = mailer
        #: None when FMN_MAIL_FROM is not one address: e-mail verification is then refused
        #: (NotSent, a 503), while the rest of the web app works
        self.mail_from: str | None = None
        try:
            self.mail_from = check_sender(mail_from)
        except ValueError as exc:
            log.error("verification mail cannot be sent: %s", exc)
        self.channels = channels
        self.limits = limits
        self.prefix = prefix
        self.clock = clock

    # -- helpers ------------------------------------------------------------

    def _digest(self, *parts: str) -> str:
        key = self.secrets[-1].encode()
        return hmac.new(key, "\0".join(parts).encode(), hashlib.sha256).hexdigest()

    def _rate_keys(self, user: str, dest: Destination) -> tuple[str, str, str]:
        """The counters of ``user``, of the address as ``user``'s, and of the address
        (one mailbox's: :func:`mailbox_key`)."""
        address = self._digest("address", dest.protocol,
                               mailbox_key(dest.protocol, dest.address))
        return (f"{self.prefix}rate:user:{user}",
                f"{self.prefix}rate:addr:{address}:{user}",
                f"{self.prefix}rate:addr:{address}")

    def _count(self, user: str, dest: Destination) -> None:
        """Count one verification send; RateLimited when the user or the address is over.

        A refused request takes its counts back: otherwise a person retrying while
        other accounts held the address's overall limit used up their own tries, and
        stayed refused for an hour after those accounts' requests had expired."""
        lim = self.limits
        counted: list[str] = []
        for key, limit, what in zip(self._rate_keys(user, dest),
                                    (lim.per_user, lim.per_address, lim.per_address_all),
                                    ("you have asked for too many verification messages",
                                     "you have asked for too many verification messages "
                                     "to this address",
                                     "this address was sent too many verification messages"),
                                    strict=True):
            counted.append(key)
            if self.keys.incr(key, lim.window_s) > limit:
                self._uncount(counted)
                raise RateLimited(f"{what}; try again in an hour", lim.window_s)

    def _uncount(self, keys: Sequence[str]) -> None:
        try:
            for key in keys:
                self.keys.decr(key)
        except Exception:  # the answer stays the refusal or the failure that came first
            log.exception("could not take back verification counts")

    def _code_key(self, user: str, dest_id: str, kind: str) -> str:
        return f"{self.prefix}{kind}:{user}:{dest_id}"

    # -- sending ------------------------------------------------------------

    def add(self, user: str, body: Any) -> tuple[Destination, str]:
        """Add a destination and send its verification: ``(destination, what was sent)``.

        Over a rate limit, nothing stays: the destination is removed again and
        :class:`RateLimited` raised (a refused request changes nothing).  The
        same when the verification cannot be sent for now (the mailer, the IRC
        link or Redis away: :class:`~fmn.errors.RetryableError`, a 503): the
        request can then simply be made again, not answered 409 as a duplicate.
        And the same when the address refuses it for good (a homeserver that
        will not invite that user): :class:`~fmn.web.service.Invalid`, naming
        ``address``.  Should taking it back fail too (the database away as well),
        it stays in the list, unverified (nothing goes to it), where its
        verification can be sent again or it can be deleted; that is logged.
        """
        dest = self.service.add_destination(user, body)
        if dest.verified:
            return dest, "verified"
        try:
            return dest, self.start(user, dest.id)
        except BaseException:
            try:
                self.service.delete_destination(user, dest.id)
            except Exception:  # the answer stays the first failure's
                log.exception("could not take back unverified destination %s of %s",
                              dest.id, user)
            raise

    def start(self, user: str, dest_id: str) -> str:
        """Send the destination's verification (link or code); what was sent: ``link``/``code``.

        RateLimited when over a limit (nothing sent); Conflict-free for an
        already verified destination (nothing sent, ``verified``); Forbidden while
        the user is disabled or their account blocked (nothing sent).
        """
        dest = self.service.destination(user, dest_id)
        if dest.verified:
            return "verified"
        self.service.check_may_reach_others(user)
        if dest.protocol == "sse" or dest.address is None:
            # the user's own live feed (unverified only if imported so): nothing to prove
            self.service.mark_verified(user, dest.id, dest.address)
            return "verified"
        self._count(user, dest)
        try:
            return self._send(user, dest)
        except WebError:
            raise
        except NotSent:  # nothing went out: the request can be made again
            self._uncount(self._rate_keys(user, dest))
            raise
        except PermanentError as exc:  # the relay, IRC or the homeserver refused the address
            # its words stay in the log: a remote homeserver's or relay's text is theirs to
            # choose, and the answer would carry it into the person's page as ours
            log.warning("verification of %s's %s destination %s refused: %s", user,
                        dest.protocol, dest.id, exc)
            raise Invalid(f"the verification cannot be delivered to this address: the "
                          f"{_REFUSER.get(dest.protocol, 'server')} refused it", "address") \
                from exc

    def _send(self, user: str, dest: Destination) -> str:
        assert dest.address is not None
        if dest.protocol == "email":
            if self.mail_from is None:
                raise NotSent("verification mail cannot be sent now: the server's sender "
                              "address (FMN_MAIL_FROM) is not one e-mail address")
            self.mailer.send(self._mail(user, dest, self.email_link(user, dest)))
            return "link"
        code = f"{secrets.randbelow(10**6):06d}"
        self.keys.put(self._code_key(user, dest.id, "code"),
                      self._digest("code", user, dest.id, dest.address, code),
                      self.limits.code_ttl_s)
        self.keys.delete(self._code_key(user, dest.id, "tries"))
        minutes = self.limits.code_ttl_s // 60
        self.channels[dest.protocol].send_code(
            dest.address, f"Fedora Notifications: your verification code is {code} (valid "
                          f"{minutes} minutes). Ignore this if you did not ask for it.")
        return "code"

    def email_link(self, user: str, dest: Destination) -> str:
        token = seal({"u": user, "d": dest.id, "a": dest.address,
                      "j": secrets.token_urlsafe(12), "t": self.clock()}, self.secrets,
                     "verify-email", clock=self.clock)
        return f"{self.web_url}/verify/email/{token}"

    def _mail(self, user: str, dest: Destination, link: str) -> EmailMessage:
        from fmn.delivery.email import to_address

        msg = EmailMessage()
        msg["From"] = self.mail_from or ""
        # an IDN domain in ASCII, as notifications (start() checked there is an address)
        msg["To"] = to_address(dest.address or "")
        msg["Subject"] = "Confirm your address for Fedora Notifications"
        hours = self.limits.link_ttl_s // 3600
        msg.set_content(
            f"Someone (hopefully you, Fedora account {user}) asked Fedora Notifications to "
            f"send notifications to this address.\n\nTo confirm, open this link within "
            f"{hours} hours and press its Confirm button:\n\n{link}\n\nIf it was not you, "
            f"ignore this message: nothing will be sent to you.\n")
        return msg

    def revoke(self, user: str, dest_id: str) -> None:
        """Make every verification sent so far for a destination worthless: after a
        one-click unsubscribe, a link or code still in the mailbox must not turn its
        notifications back on (only one asked for afterwards does)."""
        # kept past the last covered link's expiry: a link's own time is in whole
        # seconds, and the web servers' clocks may differ a little
        self.keys.put(self._code_key(user, dest_id, "revoked"), repr(self.clock()),
                      self.limits.link_ttl_s + REVOCATION_MARGIN_S)
        self.keys.delete(self._code_key(user, dest_id, "code"))

    # -- proving ------------------------------------------------------------

    def check_email(self, token: str) -> tuple[str, Destination]:
        """The (user, destination) a link would verify, changing nothing (the page the
        link opens); VerificationFailed when it would not, as :meth:`confirm_email`."""
        user, dest, used = self._email_target(token)
        if self.keys.get(used) is not None:
            raise VerificationFailed("used", "this link was used already")
        return user, dest

    def _email_target(self, token: str) -> tuple[str, Destination, str]:
        """The link's (user, destination, used-key); VerificationFailed when not valid."""
        try:
            doc = unseal(token, self.secrets, "verify-email", self.limits.link_ttl_s,
                         clock=self.clock)
        except InvalidToken as exc:
            if exc.reason == "expired":
                raise VerificationFailed("expired", "this link has expired; ask for a new one "
                                                    "from your settings") from exc
            raise VerificationFailed("forged", "this link is not one we sent (or it was "
                                               "cut short)") from exc
        if not isinstance(doc, dict) or not all(isinstance(doc.get(k), str)
                                                for k in ("u", "d", "a", "j")):
            raise VerificationFailed("forged", "this link is not one we sent")
        user, dest_id, address = doc["u"], doc["d"], doc["a"]
        try:
            dest = self.service.destination(user, dest_id)
        except WebError as exc:
            raise VerificationFailed("gone", "this destination was deleted since") from exc
        if dest.address != address:
            raise VerificationFailed("gone", "this destination was changed since")
        # read after the destination: a confirm racing an unsubscribe (which revokes
        # first) either sees the revocation or still finds the destination verified
        revoked = self.keys.get(self._code_key(user, dest_id, "revoked"))
        sent_at = doc.get("t")  # links from before it was written down: as old as can be
        if revoked is not None and not (isinstance(sent_at, int | float)
                                        and not isinstance(sent_at, bool)
                                        and sent_at > float(revoked)):
            raise VerificationFailed("revoked", "this link was sent before the address was "
                                                "unsubscribed; ask for a new one from your "
                                                "settings")
        return user, dest, f"{self.prefix}used:{doc['j']}"

    def confirm_email(self, token: str) -> tuple[str, Destination]:
        """The (user, destination) a link verifies; VerificationFailed when it does not."""
        user, dest, used = self._email_target(token)
        if not self.keys.add(used, user, self.limits.link_ttl_s):
            raise VerificationFailed("used", "this link was used already")
        if dest.verified:
            return user, dest
        try:
            return user, self.service.mark_verified(user, dest.id, dest.address)
        except NotFound as exc:
            raise VerificationFailed("gone", exc.detail) from exc
        except BaseException:  # not verified (the database away): the link still works
            try:
                self.keys.delete(used)
            except Exception:  # the answer stays the first failure's
                log.exception("could not make a verification link usable again")
            raise

    def confirm_code(self, user: str, dest_id: str, body: Any) -> Destination:
        """Check a typed-back code for one of ``user``'s own destinations."""
        from fmn.web import schema

        schema.check(schema.Code, body)
        b = check_fields(body, ("code",), ("code",))
        code = b["code"]
        if not isinstance(code, str) or len(code) != 6 or not code.isascii() \
                or not code.isdigit():
            raise VerificationFailed("wrong-code", "the code is six digits", "code")
        dest = self.service.destination(user, dest_id)
        if dest.verified:
            return dest
        if dest.protocol not in self.channels:
            raise VerificationFailed("no-code", "this destination is verified by e-mail link")
        key = self._code_key(user, dest_id, "code")
        expected = self.keys.get(key)
        if expected is None:
            raise VerificationFailed("no-code", "no valid code: it expired or was never "
                                                "sent; ask for a new one", "code")
        tries = self.keys.incr(self._code_key(user, dest_id, "tries"), self.limits.code_ttl_s)
        if tries > self.limits.max_attempts:
            self.keys.delete(key)
            raise TooManyAttempts("too-many-attempts", "too many wrong codes; ask for a new one",
                                  self.limits.code_ttl_s, "code")
        given = self._digest("code", user, dest.id, dest.address or "", code)
        if not hmac.compare_digest(given, expected):
            raise VerificationFailed("wrong-code", "wrong code", "code")
        # the code goes once the destination is saved verified: a failed save (a lost
        # race, the database away) leaves it for another try, not a resend to spend
        verified = self.service.mark_verified(user, dest_id, dest.address)
        self.keys.delete(key)
        return verified
