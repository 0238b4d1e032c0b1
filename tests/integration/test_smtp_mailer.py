"""The SMTP mailer against a real sink: one kept connection per thread.

In Lambda each concurrent invocation has an execution environment and so a
connection of its own; under the local runner the invocations are threads
of one process, and a connection shared behind a lock made them queue.
"""

from __future__ import annotations

import threading
from email.message import EmailMessage
from typing import Any

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


def test_the_envelope_comes_from_the_parsed_headers_as_send_message_would_make_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import email.utils

    def no_parse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the addresses were parsed from text again")

    # send_message parses From/To/Bcc/Cc with getaddresses unless given the envelope
    monkeypatch.setattr(email.utils, "getaddresses", no_parse)
    msg = mail("to@example.org")
    msg["Cc"] = "Cee <cc@example.org>, dd@example.org"
    msg["Bcc"] = "hidden@example.org"
    with MailSink() as sink:
        mailer = SmtpMailer(sink.url)
        mailer.send(msg)
        (got,) = sink.wait_for(1)
        mailer.close()
    assert got.mail_from == "notifications@example.org"
    # send_message's order: To, Bcc, Cc; and Bcc is not in what is sent
    assert got.rcpt_tos == ["to@example.org", "hidden@example.org", "cc@example.org",
                            "dd@example.org"]
    assert b"hidden@" not in got.raw and "Bcc" not in got.message


@pytest.mark.parametrize("how", ["compat32 strings", "Sender header"])
def test_mails_without_plain_parsed_headers_still_go_through_send_message(how: str) -> None:
    import email.policy

    if how == "compat32 strings":  # header values kept as text: parsed as before
        msg = EmailMessage(policy=email.policy.compat32)
        msg["From"] = "notifications@example.org"
        msg["To"] = "Someone <to@example.org>"
        msg["Subject"] = "hello"
        msg.set_payload("body\n")
        sender = "notifications@example.org"
    else:  # send_message takes the envelope sender from Sender when there is one
        msg = mail("to@example.org")
        msg["Sender"] = "bounces@example.org"
        sender = "bounces@example.org"
    with MailSink() as sink:
        mailer = SmtpMailer(sink.url)
        mailer.send(msg)
        (got,) = sink.wait_for(1)
        mailer.close()
    assert got.mail_from == sender and got.rcpt_tos == ["to@example.org"]


@pytest.mark.parametrize("cc", ["Broken <cc@example.org", "a@example.org, , cc@example.org"])
def test_a_header_with_parse_defects_leaves_the_envelope_to_send_message(cc: str) -> None:
    from fmn.delivery.mailers import _envelope

    msg = mail("to@example.org")
    msg["Cc"] = cc
    assert _envelope(msg) == (None, None)  # the two parsers could disagree here
    with MailSink() as sink:
        mailer = SmtpMailer(sink.url)
        mailer.send(msg)
        (got,) = sink.wait_for(1)
        mailer.close()
    assert got.rcpt_tos[0] == "to@example.org" and "cc@example.org" in got.rcpt_tos


def test_a_verification_mail_to_an_idn_address_reaches_its_ascii_domain(tmp_path: Any) -> None:
    """Through the real sink: the envelope and To carry the IDNA domain; set as a plain
    string it went out as an encoded word inside the address, which reaches nobody."""
    from fmn import db
    from fmn.snapshot.store import MemorySnapshotStore
    from fmn.web.service import PreferencesService
    from fmn.web.verify import MemoryKeys, Verifier

    engine = db.make_engine(f"sqlite:///{tmp_path / 'prefs.sqlite'}")
    db.upgrade(engine)
    service = PreferencesService(engine, MemorySnapshotStore())
    service.login("ana", "ana@example.org")
    dest = service.add_destination("ana", {"protocol": "email", "address": "ana@bücher.example"})
    with MailSink() as sink:
        mailer = SmtpMailer(sink.url)
        verifier = Verifier(service, MemoryKeys(), "s3cret", web_url="https://fmn.test",
                            mailer=mailer, mail_from="fmn@example.org", channels={})
        assert verifier.start("ana", dest.id) == "link"
        (got,) = sink.wait_for(1)
        mailer.close()
    assert got.rcpt_tos == ["ana@xn--bcher-kva.example"]
    assert b"\nTo: ana@xn--bcher-kva.example\r\n" in got.raw and b"=?" not in got.raw


def test_a_relay_that_cannot_be_reached_sent_nothing() -> None:
    from fmn.errors import NotSent
    from fmn.local.stack import free_port

    mailer = SmtpMailer(f"smtp://127.0.0.1:{free_port()}")
    with pytest.raises(NotSent):
        mailer.send(mail("a@example.org"))


def test_a_relay_gone_after_the_message_may_have_sent_it() -> None:
    """A relay that takes the whole message, then hangs up before saying 250 (a timeout
    under load looks the same): the mail may be on its way, so this is no NotSent, and
    the verification rate limit keeps its count (fmn.web.verify)."""
    import socket

    from fmn.errors import NotSent, RetryableError

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    received: list[bytes] = []

    def relay() -> None:
        for _ in range(2):  # the mailer tries a fresh connection once
            conn, _addr = server.accept()
            with conn, conn.makefile("rwb") as f:
                f.write(b"220 relay\r\n")
                f.flush()
                while line := f.readline():
                    if line.upper().startswith(b"DATA"):
                        f.write(b"354 go on\r\n")
                        f.flush()
                        while (data := f.readline()) not in (b".\r\n", b""):
                            received.append(data)
                        break  # the whole mail: hang up without an answer
                    f.write(b"250 ok\r\n")
                    f.flush()

    thread = threading.Thread(target=relay, daemon=True)
    thread.start()
    try:
        mailer = SmtpMailer(f"smtp://127.0.0.1:{server.getsockname()[1]}")
        with pytest.raises(RetryableError) as failed:
            mailer.send(mail("a@example.org"))
        assert not isinstance(failed.value, NotSent)
        assert b"body\r\n" in received
    finally:
        thread.join(5)
        server.close()
