"""A local mail server that keeps what it receives: aiosmtpd, for ``fmn up`` and the tests.

:class:`MailSink` runs an aiosmtpd SMTP server in a thread on 127.0.0.1.
Every message it accepts is kept in memory (``messages``: envelope
recipients and the parsed mail) and, with a ``maildir``, written there too,
so ``fmn up`` leaves readable mail under ``var/stack/mail/``.  A mail is
written as Maildir delivers (a file in ``tmp/`` renamed into ``new/``) but
without :mod:`mailbox`'s fsync of every file: this is a test sink, and an
fsync per mail on the server's event loop held every connection up (it
made the sink, not the sender, the limit of the load test).  ``refuse``
maps recipient addresses to SMTP replies (``"550 5.1.1 no such user"``,
``"451 4.3.0 try later"``) so tests can make the server refuse like a real
one.
"""

from __future__ import annotations

import email
import email.policy
import itertools
import mailbox
import os
import socket
import threading
import time
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from fmn.local.stack import free_port


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes

    @property
    def message(self) -> EmailMessage:
        msg: EmailMessage = email.message_from_bytes(self.raw, policy=email.policy.default)
        return msg


class _Handler:
    def __init__(self, sink: MailSink) -> None:
        self.sink = sink

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        reply = self.sink.refuse.get(address) or self.sink.refuse.get("*")
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = envelope.original_content or envelope.content
        got = Received(envelope.mail_from, list(envelope.rcpt_tos), bytes(raw))
        with self.sink.lock:
            self.sink.messages.append(got)
            if self.sink.maildir is not None:
                self.sink.write(got.raw)
            self.sink.lock.notify_all()
        return "250 Message accepted for delivery"


class MailSink:
    """An SMTP server on 127.0.0.1 that keeps every message (module docstring)."""

    def __init__(self, port: int | None = None, maildir: Path | None = None) -> None:
        from aiosmtpd.controller import Controller

        self.port = port or free_port()
        self.messages: list[Received] = []
        self.refuse: dict[str, str] = {}
        self.lock = threading.Condition()
        self.maildir = mailbox.Maildir(str(maildir), create=True) if maildir else None
        self._names = itertools.count()
        self._controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port)

    def write(self, raw: bytes) -> None:
        """One mail into the Maildir's ``new/`` (module docstring: no fsync)."""
        assert self.maildir is not None
        root = Path(self.maildir._path)
        name = f"{time.time():.6f}.P{os.getpid()}Q{next(self._names)}.{socket.gethostname()}"
        tmp = root / "tmp" / name
        tmp.write_bytes(raw)
        os.rename(tmp, root / "new" / name)

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def start(self) -> MailSink:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def __enter__(self) -> MailSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """The messages once at least ``count`` have arrived (or what came by ``timeout``)."""
        with self.lock:
            self.lock.wait_for(lambda: len(self.messages) >= count, timeout)
            return list(self.messages)
