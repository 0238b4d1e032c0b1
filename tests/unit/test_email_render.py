"""Email rendering: the headers Fedora filters on, and hostile content made harmless."""

from __future__ import annotations

import email
import email.policy
from dataclasses import replace

import pytest
from delivery_data import HOSTILE_SUMMARY, payload
from delivery_data import notification as note

from fmn.delivery.base import deliveries
from fmn.delivery.email import InvalidAddress, check_address, render, render_digest
from fmn.delivery.text import clean

pytestmark = pytest.mark.unit

KW = {"sender": "notifications@fedoraproject.org", "web_url": "https://notif.example",
      "list_id": "notifications.fedoraproject.org",
      "unsubscribe_url": "https://notif.example/unsubscribe/TOKEN"}


def parsed(raw: bytes) -> email.message.EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


def one(**over: object) -> bytes:
    notes = [note(names=("My packages", "Kernel stuff"), rules=("r1", "r/2"))]
    [item] = deliveries(payload("email", notes, **over), "email")
    return render(item, **KW).as_bytes()


def test_headers_fedora_filters_on() -> None:
    msg = parsed(one())
    assert msg["Subject"] == "alice's kernel-6.1-1.fc40 completed"
    assert msg["To"] == "bob@example.org"
    assert msg["From"] == "notifications@fedoraproject.org"
    assert msg["X-Fedmsg-Topic"] == "org.fedoraproject.prod.buildsys.build.state.change"
    assert msg["X-Fedmsg-Category"] == "buildsys"
    assert msg["X-Fedmsg-Username"] == "alice"
    assert msg["X-Fedmsg-Id"] == "2024-0001"
    assert msg.get_all("X-Fedmsg-Package") == [f"pkg{i:02d}" for i in range(10)]
    assert msg["X-Fedmsg-Num-Packages"] == "12"
    assert msg["Precedence"] == "bulk"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["List-Id"] == "Fedora notifications <notifications.fedoraproject.org>"
    assert msg["List-Unsubscribe"] == "<https://notif.example/unsubscribe/TOKEN>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg["Date"] == "Mon, 01 Jan 2024 12:30:00 +0000"
    body = msg.get_content()
    assert "https://koji.fedoraproject.org/koji/buildinfo?buildID=1" in body
    assert "My packages: https://notif.example/#/rules/r1" in body
    assert "Kernel stuff: https://notif.example/#/rules/r%2F2" in body


def test_hostile_summary_yields_a_safe_mail() -> None:
    raw = one(summary=HOSTILE_SUMMARY, agent="eve\r\nX-Injected: 1",
              packages=["a\nb", "\x1b[2Jc"], topic="t\r\nBcc: x@y")
    # every line is short and ASCII (non-ASCII is encoded), nothing was injected
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    raw.decode("ascii")
    assert b"\x1b" not in raw and b"\x00" not in raw
    msg = parsed(raw)
    names = [k.lower() for k in msg]
    assert "bcc" not in names and "x-injected" not in names
    assert len(msg["Subject"]) <= 200 and "\n" not in msg["Subject"]
    assert msg["Subject"].startswith("evil Bcc: victim@example.org <script>alert(1)</script>red")
    assert msg["X-Fedmsg-Username"] == "eve X-Injected: 1"
    assert msg.get_all("X-Fedmsg-Package") == ["a b", "c"]
    body = msg.get_content()
    assert "\x1b" not in body and "\u202e" not in body and "\r" not in body.replace("\r\n", "")
    assert len(body) < 4_000  # the 10,000 characters were cut


def test_non_ascii_is_encoded_and_round_trips() -> None:
    raw = one(summary="Zbyněk's přehled — ✓ done", agent="zbyněk")
    raw.decode("ascii")
    msg = parsed(raw)
    assert msg["Subject"] == "Zbyněk's přehled — ✓ done"
    assert msg["X-Fedmsg-Username"] == "zbyněk"
    assert "Zbyněk's přehled — ✓ done" in msg.get_content()


def test_missing_fields_still_render() -> None:
    raw = one(summary=None, url=None, agent=None, packages=[], num_packages=0,
              sent_at="not a date")
    msg = parsed(raw)
    assert msg["Subject"] == "koji: org.fedoraproject.prod.buildsys.build.state.change"
    assert msg["X-Fedmsg-Username"] is None and msg["X-Fedmsg-Num-Packages"] == "0"
    assert msg["Date"]


@pytest.mark.parametrize("address", [
    "a@x, b@y", "a b@example.org", "<a@example.org>", "a@example.org\r\nBcc: c@d",
    '"a b"@example.org', "ü@example.org", "a@x@y", "a@-bad-.org", "", "@example.org",
    "a@", "a@exa mple.org",
    # an RFC 2047 word is atext, but the parser decodes it: a line break, a second address
    "=?utf-8?q?a=0D=0ABcc=3A=20eve=40evil.example?=." + "p" * 60 + "@example.org",
    "=?utf-8?q?eve=40evil.example=2C=20?=." + "p" * 60 + "@example.org",
    "=?utf-8?q?x?=@example.org",
    # IDNA maps a one-dot leader to a dot: one label would be mailed as two
    "a@ex\u2024ample.org", "a@example\ufe52org",
    # 252 characters, but 1,000 as sent (each label in its xn-- form)
    "a@" + ".".join(["\u00e9" * 20] * 11) + ".org"])
def test_bad_addresses_are_refused(address: str) -> None:
    with pytest.raises(InvalidAddress):
        check_address(address)
    [item] = deliveries(payload("email", [note(address=address)]), "email")
    with pytest.raises(InvalidAddress):
        render(item, **KW)


@pytest.mark.parametrize("address", ["bob@example.org", "first.last+tag@sub.example.org",
                                     "bob@bücher.example", "o'neil@example.org",
                                     "bob@example\u3002org",
                                     "a@" + ".".join(["b" * 63] * 3) + "." + "b" * 60])
def test_good_addresses_pass(address: str) -> None:
    assert check_address(address) == address
    [item] = deliveries(payload("email", [note(address=address)]), "email")
    assert parsed(render(item, **KW).as_bytes())["To"]


def test_digest_lists_every_item_and_the_rest() -> None:
    items = [deliveries(payload("email", [note(digest=(60, 5))], id=f"m{i}",
                                summary=f"build {i} \x1b[1mdone"), "email")[0]
             for i in range(3)]
    msg = parsed(render_digest(items, more=7, **KW).as_bytes())
    assert msg["Subject"] == "Fedora notifications: 3 new (7 more)"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    body = msg.get_content()
    assert all(f"build {i} done" in body for i in range(3))
    assert "7 more notifications follow" in body and "\x1b" not in body


def test_clean_removes_what_changes_meaning() -> None:
    assert clean("a\r\nb\tc\u2028d") == "a b c d"
    assert clean("\x1b[31mred\x1b[0m \x9b1mx") == "red x"
    assert clean("\x1b]8;;http://evil\x07link\x1b]8;;\x07") == "link"
    assert clean("abc\u202edef\u2066g\ud800") == "abcdefg\ufffd"
    # what shows as nothing goes: a name that reads as another's is another's
    assert clean("fedora\u200b-ad\u00admin\u2060") == "fedora-admin"
    assert clean("\U0001f468\u200d\U0001f469") == "\U0001f468\u200d\U0001f469"  # joiners stay
    # tag characters, deprecated and musical format characters, the combining grapheme
    # joiner and the Hangul fillers show as nothing too (the last two are printable)
    for hidden in ("\U000e0061\U000e0064", "\u206a", "\U0001d173", "\U0001bca0", "\u034f",
                   "\u115f", "\u3164", "\uffa0"):
        assert clean(f"fedora{hidden}-admin") == "fedora-admin", ascii(hidden)
    assert clean("<b>&amp;</b>") == "<b>&amp;</b>"  # HTML is escaped where HTML is made
    assert clean(None) == ""


def test_clean_of_printable_text_is_the_full_cleaning() -> None:
    """Printable text skips the patterns (nothing in it can match): same result, for
    any text, hostile or plain, every code point the interpreter knows."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from fmn.delivery import text

    special = st.sampled_from([" ", "  ", "\t", "\r\n", "\x1b[31m", "\x1b]8;;x\x07", "\x9b1m",
                               "\x03" "4,5", "\x02", "\u2028", "\u202e", "\u00a0", "\u3000",
                               "\ufeff", "\uffff", "\ud800", "\x85", "\x1c", "\u034f",
                               "\u3164", "\U000e0061"])
    anything = st.characters(exclude_categories=())
    pieces = st.lists(st.one_of(special, st.text(anything, max_size=8),
                                st.text("ab c-./:", max_size=12)), max_size=8)

    @settings(max_examples=2000, deadline=None)
    @given(pieces)
    def same(parts: list[str]) -> None:
        value = "".join(parts)
        assert text.clean(value) == (text._clean_all(value) if value else "")

    same()
    assert text.clean("  a  b ") == "a b" and text.clean("é ☃  日本") == "é ☃ 日本"


@pytest.mark.parametrize("field", ["summary", "topic", "agent", "id"])
def test_encoded_words_cannot_smuggle_a_line_break(field: str) -> None:
    """RFC 2047 words are decoded when a header is set: "=0D=0A" must stay text."""
    hostile = "=?utf-8?q?hello=0D=0ABcc:_evil@x.org=0D=0A=0D=0A<b>forged</b>?="
    raw = one(**{field: hostile})
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nBcc:" not in head and b"forged" not in raw.split(b"\r\n\r\n", 1)[0]
    msg = parsed(raw)
    assert "bcc" not in [k.lower() for k in msg]
    assert all("\n" not in str(v) and "\r" not in str(v) for v in msg.values())


def test_a_package_count_that_is_not_a_count_is_ignored() -> None:
    # a payload with such a count is refused when read; the renderer does not rely on it
    notes = [note(names=("My packages",), rules=("r1",))]
    [item] = deliveries(payload("email", notes), "email")
    for bad in ("x", [1], True, -5, None):
        odd = replace(item, message={**item.message, "num_packages": bad})
        assert parsed(render(odd, **KW).as_bytes())["X-Fedmsg-Num-Packages"] == "12"


def test_an_idn_domain_goes_out_in_ascii() -> None:
    [item] = deliveries(payload("email", [note(address="bob@bücher.example")]), "email")
    raw = render(item, **KW).as_bytes()
    assert b"To: bob@xn--bcher-kva.example\r\n" in raw


# -- header values parsed and folded once (the policy's memory) ----------------------

VARIED = [{}, {"summary": HOSTILE_SUMMARY}, {"summary": "é" * 150 + " =?utf-8?q?x?= ünïcode"},
          {"summary": "word " * 60, "topic": "org.fedoraproject.prod." + "x" * 150},
          {"agent": "eve\r\nX-Injected: 1", "packages": ["a\nb", "\x1b[2Jc", "ç" * 90]}]


def mails(policy_name: str, monkeypatch: pytest.MonkeyPatch, **serialize: object) -> list[bytes]:
    """Each varied message to three recipients, serialized, Message-IDs blanked."""
    import re

    from fmn.delivery import email as rendering

    if policy_name == "plain":  # the stdlib's policy: parses and folds every time
        monkeypatch.setattr(rendering, "POLICY",
                            email.policy.SMTP.clone(max_line_length=78))
    got = []
    for over in VARIED * 2:
        notes = [note(user=f"u{n}", address=f"u{n}@example.org", names=(f"rule {n}",),
                      rules=(f"r{n}",)) for n in range(3)]
        for item in deliveries(payload("email", notes, **over), "email"):
            raw = render(item, **KW).as_bytes(**serialize)  # type: ignore[arg-type]
            got.append(re.sub(rb"Message-ID:(\r\n)? <[^>]*>", b"", raw))
    monkeypatch.undo()
    return got


def test_remembered_headers_give_the_same_bytes_as_the_stdlib_policy(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from fmn.delivery import email as rendering

    rendering._STORED.clear()
    rendering._FOLDED.clear()
    assert mails("remembering", monkeypatch) == mails("plain", monkeypatch)
    assert rendering._STORED  # the second round and the other recipients reused them
    # folded again for another policy (smtplib clones it for SMTPUTF8): that policy's lines
    utf8 = {"policy": rendering.POLICY.clone(utf8=True)}
    plain_utf8 = {"policy": email.policy.SMTP.clone(max_line_length=78, utf8=True)}
    assert mails("remembering", monkeypatch, **utf8) == mails("plain", monkeypatch, **plain_utf8)


def test_a_remembered_policy_still_refuses_line_breaks_and_stays_bounded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from email.message import EmailMessage

    from fmn.delivery import email as rendering

    for _ in range(2):
        msg = EmailMessage(policy=rendering.POLICY)
        msg["Subject"] = "fine"
        with pytest.raises(ValueError):
            msg["Subject"] = "a\r\nBcc: x@example.org"
        assert msg.get_all("Subject") == ["fine"]
    monkeypatch.setattr(rendering, "MAX_REMEMBERED_HEADERS", 10)
    msg = EmailMessage(policy=rendering.POLICY)
    for n in range(50):
        msg[f"X-Test-{n}"] = f"value {n}"
    assert len(rendering._STORED) <= 10 and len(rendering._FOLDED) <= 10
    assert [str(v) for v in msg.values()] == [f"value {n}" for n in range(50)]


def unsubscribing(url: str) -> bytes:
    [item] = deliveries(payload("email", [note()]), "email")
    return render(item, **{**KW, "unsubscribe_url": url}).as_bytes()


def test_a_long_unsubscribe_link_goes_out_on_one_line_not_as_encoded_words() -> None:
    """Mail providers read List-Unsubscribe as RFC 2369 links: an RFC 2047 word there
    (what the standard fold makes of any line over 78 characters without a space) hides
    the one-click link from them."""
    from fmn.auth import unsubscribe_url

    url = unsubscribe_url("https://notifications.fedoraproject.org", "a-rather-long-fas-name",
                          "0b6f3a52-9a9e-4e1b-8f53-1d2c3e4f5a6b", "s" * 32)
    assert len(f"List-Unsubscribe: <{url}>") > 78
    raw = unsubscribing(url)
    assert f"\r\nList-Unsubscribe: <{url}>\r\n".encode() in raw
    assert parsed(raw)["List-Unsubscribe"] == f"<{url}>"
    digest = render_digest(deliveries(payload("email", [note()]), "email"),
                           **{**KW, "unsubscribe_url": url}).as_bytes()
    assert f"\r\nList-Unsubscribe: <{url}>\r\n".encode() in digest


def test_an_unsubscribe_link_longer_than_a_mail_line_is_still_folded_validly() -> None:
    url = "https://notif.example/unsubscribe/" + "x" * 1200
    raw = unsubscribing(url)
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    assert parsed(raw)["List-Unsubscribe"] == f"<{url}>"
    with pytest.raises(ValueError):
        unsubscribing("https://notif.example/u\r\nBcc: x@example.org")


def test_remembered_values_are_bounded_by_their_characters_too(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A summary of one-letter words parses into a token per letter (some 100 KB for 200
    characters): the count alone would let hostile summaries hold about 100 MB."""
    from email.message import EmailMessage

    from fmn.delivery import email as rendering

    monkeypatch.setattr(rendering, "MAX_REMEMBERED_CHARS", 2_000)
    rendering._STORED.clear()
    rendering._FOLDED.clear()
    rendering._SIZE["chars"] = 0
    for n in range(100):
        msg = EmailMessage(policy=rendering.POLICY)
        msg["Subject"] = " ".join("a" * 98) + f" {n:03d}"
        msg.as_bytes()
        assert sum(len(key[1]) for key in rendering._STORED) == rendering._SIZE["chars"] <= 2_000
    assert 0 < len(rendering._STORED) <= 10
    msg = EmailMessage(policy=rendering.POLICY)
    msg["Subject"] = "b" * 2_001  # longer than the whole budget: parsed, not remembered
    assert str(msg["Subject"]) == "b" * 2_001
    assert not any(key[1] == "b" * 2_001 for key in rendering._STORED)


def test_a_policy_with_another_header_factory_gets_its_own_header_objects() -> None:
    from email.headerregistry import HeaderRegistry
    from email.message import EmailMessage

    from fmn.delivery import email as rendering

    plain = rendering.POLICY.clone(header_factory=HeaderRegistry(use_default_map=False))
    ours, theirs = EmailMessage(policy=rendering.POLICY), EmailMessage(policy=plain)
    ours["Date"] = theirs["Date"] = "Mon, 01 Jan 2024 12:30:00 +0000"
    assert hasattr(ours["Date"], "datetime")  # the registry's DateHeader
    assert not hasattr(theirs["Date"], "datetime")  # that factory's unstructured header


@pytest.mark.parametrize("sender", ["notifications@fedoraproject.org",
                                    "Fedora Notifications <notifications@fedoraproject.org>",
                                    '"Fédora, notifications" <n@fedoraproject.org>',
                                    "山田\u3000太郎 <n@fedoraproject.org>",
                                    "Fedora\u00a0Notifications <n@fedoraproject.org>",
                                    "n@xn--bcher-kva.fedoraproject.org"])
def test_a_sender_with_one_address_is_taken(sender: str) -> None:
    from fmn.delivery.email import check_sender

    assert check_sender(sender) == sender
    [item] = deliveries(payload("email", [note()]), "email")
    assert parsed(render(item, **{**KW, "sender": sender}).as_bytes())["From"].addresses[
        0].addr_spec.endswith("fedoraproject.org")


@pytest.mark.parametrize("sender", ["", "notifications", "a@example.org, b@example.org",
                                    "<a@example.org", "a@example.org\r\nBcc: x@example.org",
                                    "a@exa mple.org", "<", '"', "Fedora\u2028 <a@example.org>",
                                    "a@example.org\x85", "grp: a@example.org;",
                                    "a@example.org,", "n@bücher.example",
                                    "n@ｆｅｄｏｒａ.org",
                                    "=?utf-8?q?a=2C_b=40evil.org?= <n@example.org>",
                                    "a\u200e <n@example.org>"])
def test_a_sender_that_is_not_one_address_stops_the_sender_at_its_start(sender: str) -> None:
    # smtplib sent an empty one as MAIL FROM:<>, every mail; a list as it was
    from fmn.delivery.email import check_sender
    from fmn.delivery.email_sender import EmailSender

    with pytest.raises(ValueError, match="FMN_MAIL_FROM must be one e-mail address"):
        check_sender(sender)
    with pytest.raises(ValueError, match="FMN_MAIL_FROM"):
        EmailSender(object(), None, sender=sender, web_url="https://x",  # type: ignore[arg-type]
                    unsubscribe_url=lambda user, dest: "https://x/u")


ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+/=?^_`{|}~-"


def _header_bytes(made_with: email.policy.Policy, name: str, value: object,
                  **serialize: object) -> tuple[bytes, str, tuple[object, ...]]:
    msg = email.message.EmailMessage(policy=made_with)
    msg[name] = value
    header = msg[name]
    addresses = tuple((a.display_name, a.username, a.domain)
                      for a in getattr(header, "addresses", ()))
    return msg.as_bytes(**serialize), str(header), addresses  # type: ignore[arg-type]


def _outcome(made_with: email.policy.Policy, name: str, value: object) -> object:
    try:
        return _header_bytes(made_with, name, value)
    except Exception as exc:  # noqa: BLE001 - the same failure is the same outcome
        return type(exc)


def test_to_and_message_id_read_without_the_parser_are_what_the_parser_gives() -> None:
    """To and Message-ID differ in every mail, so they skip the parser when plain: the
    bytes, the value and the addresses must be the stdlib's, short lines and long."""
    from email.headerregistry import Address

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from fmn.delivery import email as rendering

    plain = email.policy.SMTP.clone(max_line_length=78)
    atom = st.text(ATEXT, min_size=1, max_size=30)
    label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
    local = st.lists(atom, min_size=1, max_size=6).map(".".join)
    domain = st.lists(label, min_size=1, max_size=6).map(".".join)

    @settings(max_examples=400, deadline=None)
    @given(local, domain, st.booleans(), st.booleans())
    def same(local: str, domain: str, as_address: bool, utf8: bool) -> None:
        value = Address(username=local, domain=domain) if as_address else f"{local}@{domain}"
        serialize = {"policy": rendering.POLICY.clone(utf8=True)} if utf8 else {}
        plain_serialize = {"policy": plain.clone(utf8=True)} if utf8 else {}
        assert _header_bytes(rendering.POLICY, "To", value, **serialize) \
            == _header_bytes(plain, "To", value, **plain_serialize)
        msgid = email.utils.make_msgid(domain=domain)
        assert _header_bytes(rendering.POLICY, "Message-ID", msgid, **serialize) \
            == _header_bytes(plain, "Message-ID", msgid, **plain_serialize)

    same()
    # and what is not plain goes through the parser, as before
    for value in ["Bob <bob@example.org>", '"a b"@example.org', "a@b, c@d", "bob@exämple.org",
                  "bob@example.org\u200b", "<x@y> junk", "bob@-bad-.org", "a..b@example.org"]:
        for name in ("To", "Message-ID"):
            assert _outcome(rendering.POLICY, name, value) == _outcome(plain, name, value)
    with pytest.raises(ValueError):
        _header_bytes(rendering.POLICY, "To", "bob@example.org\r\nBcc: eve@example.org")


def test_a_sender_with_a_display_name_gives_a_plain_list_id_and_message_id() -> None:
    """The list's domain was the text after the last "@": "...fedoraproject.org>"."""
    from fmn.delivery.email_sender import EmailSender
    from fmn.delivery.mailers import MemoryMailer

    mailer = MemoryMailer()
    sender = EmailSender(mailer, None,
                         sender="Fedora Notifications <notifications@fedoraproject.org>",
                         web_url="https://notif.example",
                         unsubscribe_url=lambda user, dest: "https://notif.example/u/T")
    [item] = deliveries(payload("email", [note()]), "email")
    sender(item)
    msg = parsed(mailer.sent[0].as_bytes())
    assert msg["List-Id"] == "Fedora notifications <notifications.fedoraproject.org>"
    assert msg["Message-ID"].endswith("@notifications.fedoraproject.org>")
    assert not msg["Message-ID"].defects


@pytest.mark.parametrize(("sent_at", "expected"), [
    ("2024-01-02T03:04:05+05:30", "Mon, 01 Jan 2024 21:34:05 +0000"),  # in UTC
    # an offset with seconds: no RFC 5322 form ("+053015.500000" was written)
    ("2024-01-02T03:04:05+05:30:15.5", "Mon, 01 Jan 2024 21:33:49 +0000"),
    ("2024-01-02T03:04:05.999", "Tue, 02 Jan 2024 03:04:05 +0000"),
    ("0001-01-01T00:00:00+23:59", "now"),  # read back by parsers as 2001
    ("1969-12-31T23:59:59Z", "now"),
    ("2999-01-01T00:00:00Z", "now"),  # beyond a fast clock's day
    ("9999-12-31T23:59:59-23:59", "now"),  # past datetime's range in UTC
    ("yesterday", "now"), (None, "now"),
])
def test_a_mail_date_is_in_utc_and_in_range(sent_at: object, expected: str) -> None:
    from datetime import UTC, datetime

    from fmn.delivery.email import mail_date

    now = datetime(2026, 12, 5, 17, 0, 0, 123456, tzinfo=UTC)
    assert mail_date(sent_at, now=now) == (
        "Sat, 05 Dec 2026 17:00:00 +0000" if expected == "now" else expected)


def test_a_long_message_id_keeps_what_tells_it_apart_in_its_header() -> None:
    first, second = ("build-" + "x" * 300 + end for end in ("-1", "-2"))
    got = [parsed(one(id=i))["X-Fedmsg-Id"] for i in (first, second)]
    assert got[0] != got[1]
    assert all(g.startswith("build-xxx") and len(g) <= 200 for g in got)
    assert parsed(one(id="2024-abc"))["X-Fedmsg-Id"] == "2024-abc"
