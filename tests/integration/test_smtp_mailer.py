"""The SMTP mailer against a real sink: one kept connection per thread.

In Lambda each concurrent invocation has an execution environment and so a
connection of its own; under the local runner the invocations are threads
of one process, and a connection shared behind a lock made them queue.
"""

from __future__ import annotations

import threading
from email.message import EmailMessage

import pytest

from fmn.delivery.mailers import SmtpMailer
from fmn.local.mailsink import MailSink

pytestmark = pytest.mark.integration


def mail(to: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "notifications@example.org"
    msg["To"] = to
    msg["Subject"] = "hello"
    msg.set_content("body\n")
    return msg


def test_each_thread_keeps_its_own_connection_and_close_ends_them_all() -> None:
    with MailSink() as sink:
        mailer = SmtpMailer(sink.url)
        ready = threading.Barrier(3)

        def send_two(n: int) -> None:
            mailer.send(mail(f"u{n}a@example.org"))
            ready.wait(5)  # all three connections open at once
            mailer.send(mail(f"u{n}b@example.org"))

        threads = [threading.Thread(target=send_two, args=(n,)) for n in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert len(mailer._open) == 3  # one per thread, each used for both its mails
        assert len(sink.wait_for(6)) == 6
        mailer.close()
        assert not mailer._open
        mailer.send(mail("again@example.org"))  # a fresh connection after close()
        assert len(sink.wait_for(7)) == 7
        assert sink.count == 7
