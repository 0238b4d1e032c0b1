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
one; ``refuse_data`` does the same at the end of DATA (a server that checks
the mailbox or the content only then).

:class:`ProcessMailSink` is the same server in a process of its own, which
keeps no mail in memory, only the Maildir and a count: the load test's
sink, so that taking a quarter of a million mails neither competes with the
senders for one interpreter's lock nor holds them all in memory.
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
        for address in envelope.rcpt_tos:
            reply = self.sink.refuse_data.get(address)
            if reply:
                self.sink.data_refused += 1
                return reply
        raw = envelope.original_content or envelope.content
        got = Received(envelope.mail_from, list(envelope.rcpt_tos), bytes(raw))
        with self.sink.lock:
            self.sink.count += 1
            if self.sink.keep:
                self.sink.messages.append(got)
            if self.sink.maildir is not None:
                self.sink.write(got.raw)
            self.sink.lock.notify_all()
        return "250 Message accepted for delivery"


class MailSink:
    """An SMTP server on 127.0.0.1 that keeps every message (module docstring)."""

    def __init__(self, port: int | None = None, maildir: Path | None = None,
                 keep: bool = True) -> None:
        from aiosmtpd.controller import Controller

        self.port = port or free_port()
        #: keep every mail in :attr:`messages` (else only the Maildir and the count)
        self.keep = keep
        #: mails accepted so far
        self.count = 0
        self.messages: list[Received] = []
        self.refuse: dict[str, str] = {}
        self.refuse_data: dict[str, str] = {}
        #: mails refused at the end of DATA
        self.data_refused = 0
        self.lock = threading.Condition()
        self.maildir = mailbox.Maildir(str(maildir), create=True) if maildir else None
        self._names = itertools.count()
        self._controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port)

    def write(self, raw: bytes) -> None:
        """One mail into the Maildir's ``new/`` (module docstring: no fsync)."""
        assert self.maildir is not None
        root = Path(self.maildir._path)
        now = time.time()  # the standard name: the load test reads the receipt time off it
        name = (f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{next(self._names)}."
                f"{socket.gethostname()}")
        tmp = root / "tmp" / name
        tmp.write_bytes(raw)
        os.rename(tmp, root / "new" / name)

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def samples(self, limit: int) -> list[Received]:
        """Up to ``limit`` of the mails received, spread over them."""
        with self.lock:
            kept = list(self.messages)
        return kept[::max(1, len(kept) // max(1, limit))][:limit]

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


class ProcessMailSink:
    """A :class:`MailSink` in a process of its own (``python -m fmn.local.mailsink``),
    with a Maildir and no mail in memory (module docstring); :attr:`count` is read
    from a counter the process keeps in a shared file."""

    def __init__(self, maildir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.maildir = maildir
        self._counter = maildir.parent / f"{maildir.name}.count"
        self._map: Any = None
        self._process: Any = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    @property
    def count(self) -> int:
        return int.from_bytes(self._map[:8], "little") if self._map is not None else 0

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> ProcessMailSink:
        import mmap
        import subprocess
        import sys

        self.maildir.parent.mkdir(parents=True, exist_ok=True)
        self._counter.write_bytes(bytes(8))
        with self._counter.open("r+b") as f:
            self._map = mmap.mmap(f.fileno(), 8)
        self._process = subprocess.Popen(
            [sys.executable, "-m", "fmn.local.mailsink", str(self.port), str(self.maildir),
             str(self._counter)])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if self._process.poll() is not None:
                    break
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("the mail sink process did not start")

    def stop(self) -> None:
        from fmn.local.stack import end_process

        process, self._process = self._process, None
        end_process(process)

    def samples(self, limit: int) -> list[Received]:
        """Up to ``limit`` of the mails received, read back from the Maildir."""
        out: list[Received] = []
        with os.scandir(self.maildir / "new") as entries:
            for entry in entries:
                if len(out) >= limit:
                    break
                raw = Path(entry.path).read_bytes()
                msg = email.message_from_bytes(raw, policy=email.policy.default)
                out.append(Received(str(msg.get("From", "")), [str(msg.get("To", ""))], raw))
        return out

    def __enter__(self) -> ProcessMailSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _serve(port: int, maildir: str, counter: str) -> None:
    """The sink process: serve until SIGTERM, counting into the shared file."""
    import mmap
    import signal

    with open(counter, "r+b") as f:
        shared = mmap.mmap(f.fileno(), 8)

    class Counting(MailSink):
        def write(self, raw: bytes) -> None:
            super().write(raw)
            shared[:8] = self.count.to_bytes(8, "little")

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # Ctrl-C reaches the whole process group: the parent stops the sink once the
    # email sender has finished what it was sending
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sink = Counting(port=port, maildir=Path(maildir), keep=False).start()
    parent = os.getppid()
    try:
        while not stop.wait(1):
            if os.getppid() != parent:  # the stack died without stopping it
                break
    finally:
        sink.stop()


if __name__ == "__main__":
    import sys

    _serve(int(sys.argv[1]), sys.argv[2], sys.argv[3])
