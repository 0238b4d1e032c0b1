"""The IRC connection port, its real adapter on the ``irc`` library, and an in-memory fake.

:class:`IrcLink` is what the sender needs: ``send(nick, lines)`` writes one
PRIVMSG per line, ``offline()`` hands over the nicks the server answered
``401 ERR_NOSUCHNICK`` for (logged and counted, never retried: IRC has no
mailbox), ``close()`` hangs up.  Errors: a line or nick that is not safe
(:func:`fmn.delivery.irc.check_wire`) is a :class:`~fmn.errors.PermanentError`
before anything is written; a server that cannot be reached, refuses the
login or drops the connection mid-send is a :class:`~fmn.errors.RetryableError`.

:class:`IrcClientLink` keeps **one** connection (``irc.client.Reactor`` and
``ServerConnection``) for the life of the process, so a warm Lambda reuses
it; it is opened on the first send, from ``irc://nick[:password]@host:port``
(:class:`IrcServer`; ``ircs://`` is TLS with the system's CA and the host
name checked; a password means SASL PLAIN, as the nick or ``?account=``).
A nick in use (433, 432, 437) is retried as ``nick_``, ``nick__``, ``nick1``,
... .  Every line written to the server, registration and PONGs included,
first takes a token from the shared :class:`~fmn.delivery.irc.TokenBucket`
(:class:`PacedSocket`), so the network's flood limit holds whatever is sent.
Nothing reads the socket between sends (a frozen Lambda could not anyway):
each send first reads what waited (PINGs, 401s, a closing ERROR); after
``idle_check_s`` without a word from the server it PINGs and waits for the
PONG before trusting the connection, since a write on a dead TCP connection
succeeds and loses the line.  A connection that is gone is reopened on the
next send; after a failed attempt the next one waits (1, 2, 4, ... up to
60 s), failing fast with a RetryableError meanwhile.  One lock serialises
all of it, so threads (the local runner's invocations) may share one link.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from fmn.delivery.irc import TokenBucket, check_wire, irc_lower, valid_nick
from fmn.errors import NotSent, RetryableError

log = logging.getLogger(__name__)


class IrcLink(Protocol):
    #: the longest one ``send`` can block (a reconnect, then a stalled write): the
    #: sender starts no item with less time than this left in its invocation
    longest_send_s: float

    def send(self, nick: str, lines: Sequence[str]) -> None:
        """Write each line as ``PRIVMSG nick :line``, paced by the flood limit."""
        ...

    def offline(self) -> list[str]:
        """The nicks reported absent (401) since the last call."""
        ...

    def close(self) -> None:
        ...


@dataclass(frozen=True)
class IrcServer:
    """Where and who to be, from ``FMN_IRC_URL``."""

    host: str
    port: int
    nick: str
    tls: bool = False
    password: str | None = field(default=None, repr=False)
    #: the SASL account (defaults to the nick)
    account: str | None = None

    @classmethod
    def from_url(cls, url: str) -> IrcServer:
        parts = urlsplit(url)
        if parts.scheme not in ("irc", "ircs"):
            raise ValueError(f"an IRC URL starts with irc:// or ircs://, not {parts.scheme!r}")
        nick = unquote(parts.username or "")
        if not valid_nick(nick):
            raise ValueError(f"the IRC URL's user must be a valid nick, not {nick!r}")
        if not parts.hostname:
            raise ValueError("the IRC URL names no host")
        tls = parts.scheme == "ircs"
        account = parse_qs(parts.query).get("account", [None])[0]
        return cls(host=parts.hostname, port=parts.port or (6697 if tls else 6667), nick=nick,
                   tls=tls, password=unquote(parts.password) if parts.password else None,
                   account=account)

    def alternates(self, count: int = 5) -> list[str]:
        """Nicks to try after :attr:`nick` is taken."""
        names = [f"{self.nick}_", f"{self.nick}__", *(f"{self.nick}{i}" for i in range(1, 10))]
        return [n for n in names if valid_nick(n)][:count]


class PacedSocket:
    """A connected socket whose every write first waits for a token of the flood limit.

    It offers what ``irc.client.ServerConnection`` and the reactor's
    ``select`` use (``fileno``, ``recv``, ``send``, ``shutdown``, ``close``)
    and writes whole lines (``sendall``): the library ignores a short write.
    """

    def __init__(self, sock: Any, bucket: TokenBucket,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.sock = sock
        self.bucket = bucket
        self.sleep = sleep

    def fileno(self) -> int:
        fileno: int = self.sock.fileno()
        return fileno

    def recv(self, size: int) -> bytes:
        data: bytes = self.sock.recv(size)
        return data

    def send(self, data: bytes) -> int:
        wait = self.bucket.reserve()
        if wait > 0:
            self.sleep(wait)
        self.sock.sendall(data)
        return len(data)

    def pending(self) -> int:
        """Bytes a TLS layer has decrypted but ``select`` cannot see."""
        pending = getattr(self.sock, "pending", None)
        return int(pending()) if pending is not None else 0

    def shutdown(self, how: int) -> None:
        self.sock.shutdown(how)

    def close(self) -> None:
        self.sock.close()


class _Session:
    """What one connection attempt has heard so far (handlers run inside the reactor)."""

    def __init__(self, server: IrcServer, alternates: list[str]) -> None:
        self.server = server
        self.alternates = alternates
        self.welcomed = False
        self.sasl_ok = False
        self.error: str | None = None
        self.pongs = 0


class IrcClientLink:
    """The real :class:`IrcLink`: one long-lived, paced connection (module docstring)."""

    def __init__(self, server: IrcServer, bucket: TokenBucket, *,
                 ssl_context: ssl.SSLContext | None = None,
                 ircname: str = "Fedora Notifications",
                 connect_timeout_s: float = 10.0, register_timeout_s: float = 15.0,
                 io_timeout_s: float = 30.0, idle_check_s: float = 60.0,
                 pong_timeout_s: float = 5.0, backoff_s: float = 1.0,
                 max_backoff_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.server = server
        self.bucket = bucket
        self.ssl_context = ssl_context
        self.ircname = ircname
        self.connect_timeout_s = connect_timeout_s
        self.register_timeout_s = register_timeout_s
        self.io_timeout_s = io_timeout_s
        self.idle_check_s = idle_check_s
        self.pong_timeout_s = pong_timeout_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.clock = clock
        self.sleep = sleep
        #: the nick the server knows us by (None while not connected)
        self.nickname: str | None = None
        #: successful registrations so far (1 + reconnects)
        self.connects = 0
        self._lock = threading.RLock()
        self._reactor: Any = None
        self._conn: Any = None
        self._session: _Session | None = None
        self._last_heard = 0.0
        self._failures = 0
        self._retry_at = 0.0
        self._offline: list[str] = []

    @property
    def longest_send_s(self) -> float:
        """A silent server's PING check, a new connection (and its TLS handshake, which
        runs under the connection's timeout) and its registration, and one write that
        stalls: the most one :meth:`send` blocks before it raises, for a host name
        with one address (``create_connection`` tries each address in turn)."""
        handshake = self.connect_timeout_s if self.server.tls else 0.0
        return (self.pong_timeout_s + self.connect_timeout_s + handshake
                + self.register_timeout_s + self.io_timeout_s)

    @classmethod
    def from_url(cls, url: str, bucket: TokenBucket, **options: Any) -> IrcClientLink:
        return cls(IrcServer.from_url(url), bucket, **options)

    # -- the port ----------------------------------------------------------

    def send(self, nick: str, lines: Sequence[str]) -> None:
        for line in lines:  # nothing unsafe is ever handed to the library
            check_wire(nick, line)
        with self._lock:
            try:
                conn = self._ensure()
            except NotSent:
                raise
            except RetryableError as exc:  # no connection: no line went
                raise NotSent(str(exc)) from exc
            for line in lines:
                conn.privmsg(nick, line)
                if not conn.is_connected():  # the library swallows a failed write
                    self.nickname = None
                    raise RetryableError(f"IRC connection to {self._where()} lost while sending")
            self._pump(0)

    def offline(self) -> list[str]:
        with self._lock:
            if self._connected():
                try:
                    self._pump(0)
                except OSError as exc:  # only a count is at stake: the next send reconnects
                    log.warning("IRC: reading from %s failed: %s", self._where(), exc)
            nicks, self._offline = self._offline, []
            return nicks

    def close(self) -> None:
        with self._lock:
            if self._connected():
                self._conn.disconnect("FMN going away")
            self._conn = self._reactor = self._session = None
            self.nickname = None

    def is_connected(self) -> bool:
        with self._lock:
            return self._connected()

    # -- the connection ----------------------------------------------------

    def _where(self) -> str:
        return f"{'ircs' if self.server.tls else 'irc'}://{self.server.host}:{self.server.port}"

    def _connected(self) -> bool:
        return self._conn is not None and bool(self._conn.is_connected())

    def _ensure(self) -> Any:
        """The registered connection, opened or verified as needed (RetryableError if none)."""
        if self._connected():
            self._pump(0)  # what waited: PINGs, 401s, a closing ERROR or EOF
        if self._connected() and self.clock() - self._last_heard > self.idle_check_s \
                and not self._ping():
            log.warning("IRC server %s silent for %.0fs and no PONG: reconnecting",
                        self._where(), self.clock() - self._last_heard)
            self._conn.disconnect("no PONG")
        if self._connected():
            return self._conn
        self.nickname = None
        if self._failures and self.clock() < self._retry_at:
            raise RetryableError(f"IRC server {self._where()} unreachable; next attempt in "
                                 f"{self._retry_at - self.clock():.1f}s")
        try:
            self._open()
        except RetryableError as exc:
            self._failures += 1
            delay = min(self.max_backoff_s, self.backoff_s * 2 ** (self._failures - 1))
            self._retry_at = self.clock() + delay
            log.warning("IRC connection to %s failed (%s); next attempt in %.1fs",
                        self._where(), exc, delay)
            raise
        self._failures = 0
        return self._conn

    def _socket(self, address: tuple[str, int]) -> PacedSocket:
        sock: Any = socket.create_connection(address, timeout=self.connect_timeout_s)
        try:
            if self.server.tls:
                context = self.ssl_context or ssl.create_default_context()
                sock = context.wrap_socket(sock, server_hostname=self.server.host)
            # A server that stops reading must not block a send for ever.
            sock.settimeout(self.io_timeout_s)
        except BaseException:
            sock.close()
            raise
        return PacedSocket(sock, self.bucket, self.sleep)

    def _open(self) -> None:
        import irc.client
        from jaraco.stream.buffer import LenientDecodingLineBuffer  # the library's own

        self.close()
        server = self.server
        session = _Session(server, server.alternates())
        reactor = irc.client.Reactor()
        for event, handler in self._handlers(session).items():
            reactor.add_global_handler(event, handler)
        conn = reactor.server()
        # Anyone on the network can message the bot, in any encoding: the library's
        # strict UTF-8 buffer raised out of every later read on a Latin-1 line (the
        # next send dead-lettered, the lines read with it lost).  UTF-8, else Latin-1.
        conn.buffer_class = LenientDecodingLineBuffer
        self._reactor, self._conn, self._session = reactor, conn, session
        sasl = server.password is not None
        try:
            conn.connect(server.host, server.port, server.nick, password=server.password,
                         username=server.nick, ircname=self.ircname,
                         connect_factory=self._socket,
                         sasl_login=(server.account or server.nick) if sasl else None)
        except irc.client.ServerConnectionError as exc:
            raise RetryableError(f"cannot connect to {self._where()}: {exc}") from exc
        self._last_heard = self.clock()
        deadline = self.clock() + self.register_timeout_s
        while not session.welcomed:
            if not self._connected():
                raise RetryableError(f"{self._where()} closed the connection while logging in: "
                                     f"{session.error or 'no reason given'}")
            if self.clock() > deadline:
                conn.disconnect("registration timed out")
                raise RetryableError(f"{self._where()} did not welcome us within "
                                     f"{self.register_timeout_s:.0f}s")
            self._pump(0.05)
        if sasl and not session.sasl_ok:
            conn.disconnect("SASL failed")
            raise RetryableError(f"SASL login as {server.account or server.nick!r} failed: "
                                 f"{session.error or 'the server did not confirm it'}")
        self.nickname = conn.get_nickname()
        self.connects += 1
        log.info("IRC: connected to %s as %s", self._where(), self.nickname)

    def _handlers(self, session: _Session) -> dict[str, Callable[[Any, Any], None]]:
        def heard(conn: Any, event: Any) -> None:
            self._last_heard = self.clock()

        def welcome(conn: Any, event: Any) -> None:
            session.welcomed = True

        def nick_taken(conn: Any, event: Any) -> None:
            if session.welcomed:
                return
            if not session.alternates:
                session.error = "every nick we tried is taken or refused"
                conn.disconnect("no nick")
                return
            nick = session.alternates.pop(0)
            log.warning("IRC nick %s refused (%s); trying %s",
                        event.arguments[0] if event.arguments else "?", event.type, nick)
            conn.nick(nick)

        def sasl_ok(conn: Any, event: Any) -> None:
            session.sasl_ok = True

        def sasl_failed(conn: Any, event: Any) -> None:
            session.error = " ".join(str(a) for a in event.arguments) or event.type

        def error(conn: Any, event: Any) -> None:
            session.error = str(event.target or "")

        def no_such_nick(conn: Any, event: Any) -> None:
            nick = str(event.arguments[0]) if event.arguments else ""
            log.info("IRC: %s is not online; notification dropped", nick)
            self._offline.append(nick)

        def pong(conn: Any, event: Any) -> None:
            session.pongs += 1

        return {"all_raw_messages": heard, "welcome": welcome, "nicknameinuse": nick_taken,
                "erroneusnickname": nick_taken, "unavailresource": nick_taken,
                "saslsuccess": sasl_ok, "login_failed": sasl_failed,
                "sasltoolong": sasl_failed, "saslaborted": sasl_failed,
                "error": error, "nosuchnick": no_such_nick, "pong": pong}

    def _pump(self, timeout: float) -> None:
        """Read and handle what the server sent (waiting up to ``timeout`` for it).

        A line the library cannot handle is no reason to fail a notification (it
        came from the server, or from anyone through it, and may follow lines
        already sent): the connection is dropped, what came with it is lost, and
        the next send connects again."""
        try:
            self._reactor.process_once(timeout)
            # TLS may hold decrypted lines that select() does not report.
            while self._connected() and self._conn.socket.pending():
                self._conn.process_data()
        except OSError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever the library's parser raises
            log.warning("IRC: could not read what %s sent (%s: %s): reconnecting",
                        self._where(), type(exc).__name__, str(exc)[:200])
            with contextlib.suppress(Exception):
                self._conn.disconnect("unreadable input")
            self.nickname = None

    def _ping(self) -> bool:
        """True if the server answers a PING within ``pong_timeout_s``."""
        session = self._session
        assert session is not None
        before = session.pongs
        self._conn.ping("fmn-check")
        deadline = self.clock() + self.pong_timeout_s
        while self._connected() and session.pongs == before and self.clock() < deadline:
            self._pump(0.05)
        return session.pongs > before


class MemoryIrcLink:
    """In-memory :class:`IrcLink` for tests: records lines, can be down or miss nicks."""

    longest_send_s = 0.0

    def __init__(self, online: Iterable[str] | None = None) -> None:
        #: (nick, line) in the order written
        self.sent: list[tuple[str, str]] = []
        #: when set, only these nicks are online; the others are reported by offline()
        self.online = None if online is None else {irc_lower(n) for n in online}
        #: while True, every send fails as a dropped connection would
        self.down = False
        #: fail (RetryableError) after this many more lines
        self.fail_after: int | None = None
        self.closed = False
        self._offline: list[str] = []
        self._lock = threading.Lock()

    def send(self, nick: str, lines: Sequence[str]) -> None:
        for line in lines:
            check_wire(nick, line)
        with self._lock:
            if self.down:
                raise NotSent("IRC link down (fake)")
            for line in lines:
                if self.fail_after is not None:
                    if self.fail_after <= 0:
                        raise RetryableError("IRC link lost while sending (fake)")
                    self.fail_after -= 1
                self.sent.append((nick, line))
            if self.online is not None and irc_lower(nick) not in self.online:
                self._offline.append(nick)

    def offline(self) -> list[str]:
        with self._lock:
            nicks, self._offline = self._offline, []
            return nicks

    def close(self) -> None:
        self.closed = True

    def lines_to(self, nick: str) -> list[str]:
        return [line for n, line in self.sent if irc_lower(n) == irc_lower(nick)]
