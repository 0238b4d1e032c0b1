"""Where mail goes: the :class:`Mailer` port, SMTP and SES adapters, and an in-memory fake.

``send(msg)`` delivers one rendered mail to its ``To`` address and maps every
failure onto the error tree, so the sender knows what to do with it:

* :class:`~fmn.errors.PermanentError`: this mail can never go (the server
  refused the recipient or the content with a 5xx, SES rejected it): the
  notification is dead-lettered and counted;
* :class:`~fmn.errors.RetryableError`: try again later (a 4xx, throttling, the
  server away or refusing *us*, e.g. the sender address or the login): the
  notification stays on its queue.

:class:`SmtpMailer` keeps one connection per thread across sends and warm
invocations (in Lambda, one per execution environment; under the local
runner, whose concurrent invocations are threads of one process, one per
invocation thread, so that they do not queue behind one socket) and
reconnects when the server drops it.  :func:`make_mailer` picks the
adapter from the settings.
"""

from __future__ import annotations

import contextlib
import smtplib
import ssl
import threading
from email.message import EmailMessage
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from fmn.errors import Deferred, NotSent, PermanentError, RetryableError
from fmn.settings import Settings


class Mailer(Protocol):
    def send(self, msg: EmailMessage) -> None:
        """Deliver ``msg`` to its ``To`` address (PermanentError / RetryableError)."""
        ...


class MemoryMailer:
    """Keeps what it is given (tests); ``fail`` makes every send raise it."""

    def __init__(self) -> None:
        self.sent: list[EmailMessage] = []
        self.fail: Exception | None = None

    def send(self, msg: EmailMessage) -> None:
        if self.fail is not None:
            raise self.fail
        self.sent.append(msg)


class SmtpMailer:
    """SMTP (``smtp://``, ``smtps://``, ``?starttls=1``, optional login), one kept
    connection per thread (module docstring)."""

    def __init__(self, url: str, timeout_s: float = 20.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError(f"not an smtp:// or smtps:// URL: {url!r}")
        self.host = parts.hostname
        self.tls = parts.scheme == "smtps"
        self.port = parts.port or (465 if self.tls else 25)
        self.user = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.starttls = parse_qs(parts.query).get("starttls", ["0"])[0] in ("1", "true", "yes")
        self.timeout_s = timeout_s
        self._local = threading.local()
        #: every thread's open connection (close() ends them all)
        self._open: set[smtplib.SMTP] = set()
        self._lock = threading.Lock()

    @property
    def _conn(self) -> smtplib.SMTP | None:
        conn: smtplib.SMTP | None = getattr(self._local, "conn", None)
        return conn

    @_conn.setter
    def _conn(self, conn: smtplib.SMTP | None) -> None:
        old = self._conn
        with self._lock:
            if old is not None:
                self._open.discard(old)
            if conn is not None:
                self._open.add(conn)
        self._local.conn = conn

    def _connect(self) -> smtplib.SMTP:
        context = ssl.create_default_context()
        conn: smtplib.SMTP
        if self.tls:
            conn = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout_s, context=context)
        else:
            conn = smtplib.SMTP(self.host, self.port, timeout=self.timeout_s)
            if self.starttls:
                conn.starttls(context=context)
        if self.user:
            conn.login(self.user, self.password or "")
        return conn

    def close(self) -> None:
        """End every thread's connection (a thread's next send opens a fresh one)."""
        with self._lock:
            conns, self._open = list(self._open), set()
        for conn in conns:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                conn.quit()
        self._local = threading.local()

    def send(self, msg: EmailMessage) -> None:
        # this thread's own connection: no lock held across the conversation
        # A kept connection may have been dropped by the server while idle:
        # one fresh attempt before calling it a failure.
        # until the conversation about this mail starts, nothing of it went out (NotSent)
        started = False
        envelope = _envelope(msg)
        for attempt in (1, 2):
            try:
                if self._conn is None:
                    self._conn = self._connect()
                started = True
                self._conn.send_message(msg, *envelope)
                return
            except smtplib.SMTPRecipientsRefused as exc:
                self._reset_after_refusal()
                code, text = next(iter(exc.recipients.values()))
                raise _by_code(code, text, "recipient refused",
                               deferred=RecipientDeferred) from exc
            except smtplib.SMTPNotSupportedError as exc:  # e.g. needs SMTPUTF8: never
                self._reset_after_refusal()
                raise PermanentError(f"SMTP server cannot take this mail: {exc}") from exc
            except smtplib.SMTPDataError as exc:
                self._reset_after_refusal()
                # a mail to one recipient (every notification's): a 4xx at the end of
                # DATA that names the mailbox or a policy (4.2.x full, 4.7.x greylisting)
                # is about this one, as at RCPT; others (4.3.x storage, 421) the server's
                one = envelope[1] is not None and len(envelope[1]) == 1
                deferred = RecipientDeferred if one and _about_recipient(
                    exc.smtp_code, exc.smtp_error) else RetryableError
                raise _by_code(exc.smtp_code, exc.smtp_error, "message refused",
                               deferred=deferred) from exc
            except smtplib.SMTPSenderRefused as exc:
                # our sender address: a configuration problem, not this mail's
                self._drop()
                raise RetryableError(f"SMTP sender refused ({exc.smtp_code})") from exc
            except smtplib.SMTPAuthenticationError as exc:
                self._drop()
                raise _unsent(started)(f"SMTP login refused ({exc.smtp_code})") from exc
            except (smtplib.SMTPServerDisconnected, ConnectionError) as exc:
                self._drop()
                if attempt == 2:
                    raise _unsent(started)(f"SMTP server {self.host}:{self.port}: {exc}") \
                        from exc
            except (smtplib.SMTPException, OSError) as exc:
                self._drop()
                raise _unsent(started)(f"SMTP {self.host}:{self.port}: {exc!r}") from exc

    def _reset_after_refusal(self) -> None:
        # The session stays usable after a refused recipient or message.
        try:
            if self._conn is not None:
                self._conn.rset()
        except (smtplib.SMTPException, OSError):
            self._drop()

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.close()
        self._conn = None


def _unsent(started: bool) -> type[RetryableError]:
    """:class:`NotSent` while no attempt reached the mail's conversation."""
    return RetryableError if started else NotSent


def _envelope(msg: EmailMessage) -> tuple[str | None, list[str] | None]:
    """The envelope sender and recipients, read off ``msg``'s parsed address headers.

    ``smtplib``'s ``send_message`` would parse ``From``, ``To``, ``Cc`` and ``Bcc``
    again from their text with :mod:`email.utils` (a tenth of the sender's CPU a
    mail).  The header objects of a mail made with a modern policy hold, for a
    well-formed header, the addresses that parse would find; where the two parsers
    could disagree (a header with parse defects, an address without an addr-spec),
    or where ``send_message`` reads other headers (``Sender``, ``Resent-*``), or
    there are no such objects: ``(None, None)``, and ``send_message`` parses as usual.
    """
    if any(name in msg for name in ("Sender", "Resent-Date")):
        return None, None
    sender = msg["From"]
    recipients: list[str] = []
    for name in ("To", "Bcc", "Cc"):  # send_message's order, the first of each
        header = msg[name]
        if header is None:
            continue
        addresses = _clean_addresses(header)
        if addresses is None:
            return None, None
        recipients.extend(addresses)
    senders = _clean_addresses(sender)
    if not senders or not recipients:
        return None, None
    return senders[0], recipients


def _clean_addresses(header: object) -> list[str] | None:
    """The addr-specs of a parsed, defect-free address header; ``None`` otherwise."""
    addresses = getattr(header, "addresses", None)
    if addresses is None or getattr(header, "defects", None):
        return None
    specs = [a.addr_spec for a in addresses]
    if not all(spec and spec != "<>" for spec in specs):
        return None
    return specs


class RecipientDeferred(Deferred):
    """This recipient only, for now (a 4xx to RCPT: mailbox full, greylisting): the
    payload's other recipients go on; this one's record comes back later."""


def _about_recipient(code: int, text: bytes | str) -> bool:
    """Whether a 4xx reply is about the recipient's mailbox or a policy (RFC 3463 enhanced
    status 4.2.x or 4.7.x; without one, 450 mailbox unavailable), not the server's state."""
    status = _reply(text).lstrip().split(" ", 1)[0]
    if status[:2] == "4." and status.count(".") == 2:
        return status.startswith(("4.2.", "4.7."))
    return code == 450


def _reply(text: bytes | str) -> str:
    """An SMTP reply's text, as smtplib gives it (bytes), readable."""
    return text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)


def _by_code(code: int, text: bytes | str, what: str,
             deferred: type[RetryableError] = RetryableError) -> Exception:
    message = f"SMTP {what}: {code} {_reply(text)[:300]}"
    return PermanentError(message) if 500 <= code < 600 else deferred(message)


#: SES error codes that say "this mail, never" (everything else is retried).
_SES_PERMANENT = frozenset({"MessageRejected", "InvalidParameterValue"})


class SesMailer:
    """Amazon SES (v1 ``SendRawEmail``), through a boto3 client."""

    def __init__(self, client: Any, sender: str) -> None:
        from email.utils import parseaddr

        self.client = client
        # SES takes Source as an address, or a display name in encoded words only: the
        # envelope sender is the address (the mail's From keeps the name)
        self.sender = parseaddr(sender)[1] or sender

    def send(self, msg: EmailMessage) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.send_raw_email(Source=self.sender, Destinations=[str(msg["To"])],
                                       RawMessage={"Data": msg.as_bytes()})
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            text = f"SES {code}: {exc.response.get('Error', {}).get('Message', '')[:300]}"
            if code in _SES_PERMANENT:
                raise PermanentError(text) from exc
            # Throttling, sending paused, not verified: SES answered, and took nothing,
            # unless botocore had tried before (an earlier attempt may have gone through
            # with its answer lost)
            retried = exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0)
            raise (RetryableError if retried else NotSent)(text) from exc
        except BotoCoreError as exc:  # after a lost answer, say: it may have gone
            raise RetryableError(f"SES: {exc}") from exc


def make_mailer(settings: Settings) -> Mailer:
    """The mailer the settings name (``FMN_MAIL_TRANSPORT``)."""
    if settings.mail_transport == "smtp":
        return SmtpMailer(settings.smtp_url)
    if settings.mail_transport == "ses":
        from fmn.aws import client

        return SesMailer(client("ses", settings), settings.mail_from)
    raise ValueError(f"FMN_MAIL_TRANSPORT must be smtp or ses, not {settings.mail_transport!r}")
