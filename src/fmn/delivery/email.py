"""Notifications as plain-text email: one per notification, or one digest for many.

:func:`render` builds the mail of one :class:`~fmn.delivery.base.Delivery`:
the message's summary as subject, its summary and link in the body, and why
it came (the names of the rules that fired, each with its link in the web
UI), with the headers Fedora contributors filter on (``X-Fedmsg-Topic``,
``-Category``, ``-Username``, ``-Package`` (the first ten, one header each),
``-Num-Packages``, ``-Id``), ``Precedence: bulk``, ``Auto-Submitted:
auto-generated``, ``List-Id`` and a one-click ``List-Unsubscribe`` (RFC 8058)
pointing at the web app, and ``Date`` from the message's sent-at.
:func:`render_digest` builds one mail for many.

Every message field is untrusted.  Text goes through
:func:`fmn.delivery.text.clean` (no CR/LF, escapes or controls, so no header
injection), header values are capped, and :mod:`email` with the SMTP policy
encodes non-ASCII (RFC 2047 words in headers, UTF-8 bodies) and folds long
lines.  A recipient that is not exactly one plain address is refused with
:class:`InvalidAddress` (a PermanentError: that notification is dead-lettered).
"""

from __future__ import annotations

import email.policy
import email.utils
import re
import unicodedata
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from email.headerregistry import (
    Address,
    Group,
    HeaderRegistry,
    MessageIDHeader,
    UniqueAddressHeader,
    UnstructuredHeader,
)
from email.message import EmailMessage
from typing import Any
from urllib.parse import quote

from fmn.delivery.base import Delivery
from fmn.delivery.text import clean, shorten
from fmn.errors import PermanentError
from fmn.message import sent_time_utc
from fmn.pipeline.notifications import MAX_TEXT_CHARS, hashed_id

#: Subject lines are cut here (characters); mail clients show far fewer.
MAX_SUBJECT_CHARS = 200
#: Other header values taken from a message (topic, names) are cut here.
MAX_HEADER_CHARS = 200
#: The body repeats a summary or link up to this many characters.
MAX_BODY_TEXT_CHARS = 2000
#: ``X-Fedmsg-Package`` headers per mail (``X-Fedmsg-Num-Packages`` has the count).
MAX_PACKAGE_HEADERS = 10
#: Digest entries show this much of each summary.
MAX_DIGEST_SUMMARY_CHARS = 300


#: RFC 5322's limit on a header line, CRLF excluded
MAX_LINE_OCTETS = 998


class _UrlListHeader(UnstructuredHeader):
    """``List-Unsubscribe``: written on one line as it is, never as RFC 2047 words.

    The standard fold turns a line longer than 78 characters with no space to
    break at (``<https://.../unsubscribe/TOKEN>`` always is one) into encoded
    words, which RFC 2369 does not allow there and which mail providers do not
    decode: their one-click unsubscribe would not see the link.  RFC 5322
    allows lines up to 998 octets, so an ASCII value that fits goes out
    verbatim; anything else folds the standard way.
    """

    name: str  # the registry mixes in BaseHeader, which sets it

    def fold(self, *, policy: email.policy.Policy) -> str:
        line = f"{self.name}: {self}"
        if line.isascii() and len(line) <= MAX_LINE_OCTETS:
            return line + policy.linesep
        return str(super().fold(policy=policy))  # type: ignore[misc]


_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
#: ``local@domain``, both plain ASCII: the parser's result for it is known
_PLAIN_ADDRESS = re.compile(rf"({_ATOM}(?:\.{_ATOM})*)@({_LABEL}(?:\.{_LABEL})*)\Z")
#: a ``Message-ID`` as :func:`email.utils.make_msgid` makes it for a plain domain
_PLAIN_MSGID = re.compile(rf"<[0-9]+\.[0-9]+\.[0-9]+@{_LABEL}(?:\.{_LABEL})*>\Z")


class _ParsedOnDemand:
    """A header whose plain value needs no parser (set ``_parse_tree`` None in
    ``parse``): it is written as it is when its line fits, which is what the
    standard fold gives such a value; a longer line is parsed and folded the
    standard way.  The parser was a quarter of a mail's CPU for ``To`` and
    ``Message-ID``, which differ in every mail and so are not remembered."""

    name: str
    _parse_tree: Any
    value_parser: Any

    def fold(self, *, policy: email.policy.Policy) -> str:
        if self._parse_tree is None:
            line = f"{self.name}: {self}"
            if policy.max_line_length and len(line) <= policy.max_line_length:
                return line + policy.linesep
            self._parse_tree = self.value_parser(str(self))
        return str(super().fold(policy=policy))  # type: ignore[misc]


class _ToHeader(_ParsedOnDemand, UniqueAddressHeader):
    """``To``: one plain ASCII address (as :func:`to_address` makes) is read without
    the parser; anything else goes through it."""

    @classmethod
    def parse(cls, value: Any, kwds: dict[str, Any]) -> None:
        text = value.addr_spec if isinstance(value, Address) and not value.display_name \
            else value
        # no "=?": the parser would decode an encoded word (to_address refuses one)
        plain = _PLAIN_ADDRESS.match(text) if isinstance(text, str) and "=?" not in text \
            else None
        if plain is None:
            UniqueAddressHeader.parse.__func__(cls, value, kwds)  # type: ignore[attr-defined]
            return
        address = Address(username=plain[1], domain=plain[2])
        kwds["groups"] = (Group(None, (address,)),)
        kwds["decoded"] = text
        kwds["parse_tree"] = None


class _MessageIdHeader(_ParsedOnDemand, MessageIDHeader):
    """``Message-ID``: one that :func:`email.utils.make_msgid` made is read without the
    parser; anything else goes through it."""

    @classmethod
    def parse(cls, value: Any, kwds: dict[str, Any]) -> None:
        if not (isinstance(value, str) and _PLAIN_MSGID.match(value)):
            MessageIDHeader.parse.__func__(cls, value, kwds)  # type: ignore[attr-defined]
            return
        kwds["decoded"] = value
        kwds["parse_tree"] = None


class _HeaderClasses(HeaderRegistry):
    """The standard header registry, making each header's class once: the standard one
    builds a new class on every lookup (twice per header set), which was a third of
    the time to render a mail."""

    def __init__(self) -> None:
        super().__init__()
        self.map_to_type("list-unsubscribe", _UrlListHeader)  # type: ignore[arg-type]
        self.map_to_type("to", _ToHeader)  # type: ignore[arg-type]
        self.map_to_type("message-id", _MessageIdHeader)  # type: ignore[arg-type]
        self._made: dict[str, type] = {}

    def __getitem__(self, name: str) -> type:
        key = name.lower()
        made = self._made.get(key)
        if made is None:
            made = self._made[key] = super().__getitem__(name)
        return made


#: Headers whose value differs in every mail: not worth remembering.
_PER_MAIL_HEADERS = frozenset({"to", "message-id", "list-unsubscribe"})
#: Header values remembered (parsed, and folded per policy) before starting over, and
#: their characters: a payload groups a message's recipients together, so a few
#: messages' worth is enough.  A parsed value holds a token tree: ordinary values cost
#: about 5 KB each (1 MB for the shared messages' 218), and a hostile summary made of
#: one-letter words about 500 bytes a character, so the characters bound the memory
#: (some 17 MB at worst, against about 100 MB with the count alone).
MAX_REMEMBERED_HEADERS = 1024
MAX_REMEMBERED_CHARS = 32_768


class _RememberingPolicy(email.policy.EmailPolicy):
    """The SMTP policy, parsing and folding each header value once while it repeats.

    A bus message that touches many rules becomes as many mails, all with the
    same ``From``, ``Subject``, ``Date`` and ``X-Fedmsg-*`` values; parsing a
    value into its header object and folding that object back into a line
    were most of the CPU a mail cost.  Both are pure functions of the name,
    the value and the policy, and the stdlib's header objects are never
    changed once made, so the one made first serves every later mail.  The
    checks stay: a value goes through :meth:`EmailPolicy.header_store_parse`
    (which refuses CR/LF) before it is remembered, and a folded line is reused
    only for the very header object it was folded from.
    """

    def header_store_parse(self, name: str, value: str) -> tuple[str, str]:
        if type(value) is not str or name.lower() in _PER_MAIL_HEADERS:
            return super().header_store_parse(name, value)
        # a policy cloned with another header factory makes other header objects
        key = (name, value, self.header_factory)
        stored = _STORED.get(key)
        if stored is None:
            stored = super().header_store_parse(name, value)
            if len(value) > MAX_REMEMBERED_CHARS:  # longer than the whole budget: not kept
                return stored
            if len(_STORED) >= MAX_REMEMBERED_HEADERS \
                    or _SIZE["chars"] + len(value) > MAX_REMEMBERED_CHARS:
                _STORED.clear()
                _FOLDED.clear()
                _SIZE["chars"] = 0
            _STORED[key] = stored
            _FOLDED[id(stored[1])] = (stored[1], {})
            _SIZE["chars"] += len(value)
        return stored

    def fold_binary(self, name: str, value: str) -> bytes:
        known = _FOLDED.get(id(value))
        if known is None or known[0] is not value:
            return super().fold_binary(name, value)
        how = (name, self.max_line_length, self.linesep, self.utf8, self.cte_type)
        folded = known[1].get(how)
        if folded is None:
            folded = known[1][how] = super().fold_binary(name, value)
        return folded


#: (name, value, header factory) -> (name, header object), for values that repeat
_STORED: dict[tuple[str, str, object], tuple[str, str]] = {}
#: characters of the values in :data:`_STORED` (approximate when threads race: a bound)
_SIZE = {"chars": 0}
#: id(header object) -> (that object, {(name, policy's folding settings): folded line});
#: the object is held, so its id cannot be reused while it is here
_FOLDED: dict[int, tuple[str, dict[tuple[object, ...], bytes]]] = {}

#: :data:`email.policy.SMTP` (CRLF), lines folded at 78
POLICY = _RememberingPolicy(linesep="\r\n", max_line_length=78, header_factory=_HeaderClasses())
_LOCAL_PART = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*\Z")
_DOMAIN_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")
#: What IDNA takes for the dot between labels (RFC 3490, 3.1)
_IDNA_DOTS = re.compile("[.\u3002\uff0e\uff61]")


class InvalidAddress(PermanentError):
    """A destination address that is not one plain e-mail address."""


def ascii_address(address: str) -> str:
    """``address`` with its domain as mail is sent to it: in ASCII, the IDNA way (which
    also maps look-alikes such as full-width letters to plain ones); UnicodeError if
    IDNA refuses the domain."""
    local, at, domain = address.rpartition("@")
    return f"{local}{at}{domain.encode('idna').decode('ascii')}"


def check_address(address: str) -> str:
    """``address`` if it is one ``local@domain`` (IDN domains allowed), else InvalidAddress."""
    local, at, domain = address.rpartition("@")
    if not at or not _LOCAL_PART.match(local) or len(address) > 254:
        raise InvalidAddress(f"not a plain e-mail address: {address[:100]!r}")
    if "=?" in local:
        # atext allows it, but the mail parser decodes an RFC 2047 word even here (a
        # long To is parsed to be folded): "=?utf-8?q?a=0D=0ABcc...?=" became a line
        raise InvalidAddress(f"an encoded word in an e-mail address: {address[:100]!r}")
    try:
        # label by label: IDNA maps look-alikes, and one of them is a dot ("ex\u2024ample"
        # is "ex.ample"), so encoding the whole name could turn one label into two
        labels = [label.encode("idna").decode("ascii") for label in _IDNA_DOTS.split(domain)]
    except UnicodeError as exc:
        raise InvalidAddress(f"bad domain in {address[:100]!r}") from exc
    if not all(_DOMAIN_LABEL.match(label) for label in labels):
        raise InvalidAddress(f"bad domain in {address[:100]!r}")
    if len(local) + 1 + len(".".join(labels)) > 254:
        # the limit is on the address as sent: an IDN domain grows in its xn-- form
        raise InvalidAddress(f"too long as sent (its domain in ASCII): {address[:100]!r}")
    return address


def check_sender(sender: str) -> str:
    """``sender`` if ``From`` can carry it: one plain address, with or without a display
    name (``Fedora Notifications <notifications@fedoraproject.org>``); else ValueError
    naming ``FMN_MAIL_FROM``, so that a wrong setting stops a sender at its start, not
    every mail (smtplib would send ``MAIL FROM:<>`` for an empty one)."""
    try:
        if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in sender):
            raise InvalidAddress("a control, format or line-break character")
        if "=?" in sender:  # an encoded word may decode to anything, address syntax too
            raise InvalidAddress("an RFC 2047 encoded word: write the name as it is")
        header = POLICY.header_factory("From", sender)
        groups = header.groups
        if len(groups) != 1 or groups[0].display_name is not None \
                or len(groups[0].addresses) != 1 or header.defects \
                or sender.strip().startswith(",") or sender.strip().endswith(","):
            raise InvalidAddress("not one address")
        addr_spec = groups[0].addresses[0].addr_spec
        check_address(addr_spec)
        if not addr_spec.isascii():  # From would carry it as encoded words: no address
            raise InvalidAddress("the address must be ASCII (an IDN domain in its xn-- "
                                 "form)")
    except Exception as exc:  # noqa: BLE001 - the parser raises IndexError on some
        raise ValueError(f"FMN_MAIL_FROM must be one e-mail address, such as 'Fedora "
                         f"Notifications <notifications@fedoraproject.org>': got "
                         f"{sender[:100]!r} ({exc})") from exc
    return sender


def _header_text(value: object, limit: int = MAX_HEADER_CHARS) -> str:
    return _no_encoded_words(shorten(clean(None if value is None else str(value)), limit))


def _message_id_header(value: object) -> str:
    """``X-Fedmsg-Id``: the id, or when too long for a header, its start and a hash of
    the whole (cut, two messages' ids could read the same)."""
    whole = _header_text(value, MAX_TEXT_CHARS)
    if len(whole) <= MAX_HEADER_CHARS:
        return whole
    return _no_encoded_words(hashed_id(whole, str(value), MAX_HEADER_CHARS))


def _no_encoded_words(text: str) -> str:
    # Setting a header decodes RFC 2047 encoded words ("=?utf-8?q?a=0D=0AB?=") in
    # its value, so cleaned text could turn back into CR/LF on the wire: break
    # every "=?" with a zero-width space (invisible, and no longer an encoded word).
    return text.replace("=?", "=\u200b?")


def _set(msg: EmailMessage, name: str, value: str) -> None:
    """Add a header whose value holds untrusted text, and check what it became."""
    msg[name] = value
    got = (msg.get_all(name) or [""])[-1]
    if "\r" in str(got) or "\n" in str(got):  # should be impossible after the above
        del msg[name]
        raise PermanentError(f"{name} would carry a line break: refused")


def category(topic: str, app: str | None) -> str:
    """The fedmsg category: ``buildsys`` of ``org.fedoraproject.prod.buildsys.build...``."""
    parts = topic.split(".")
    if len(parts) > 3 and parts[0] == "org" and parts[1] == "fedoraproject":
        return parts[3]
    return app or (parts[0] if parts else "")


#: the oldest sent-at a mail's Date takes (Fedora's bus is younger; a year before 1970
#: is read back by mail parsers as another century)
OLDEST_DATE = datetime(2000, 1, 1, tzinfo=UTC)
#: how far ahead of this clock a sent-at may be (a publisher's clock a little fast)
FUTURE_DATE_SLACK = timedelta(days=1)


def mail_date(sent_at: object, now: datetime | None = None) -> str:
    """An RFC 5322 date, in UTC, from the message's RFC 3339 sent-at: now, if unreadable
    or out of range (before 2000, or more than a day ahead: a publisher's clock or an
    untrusted field; an offset with seconds has no RFC 5322 form)."""
    now = now or datetime.now(UTC)
    when = sent_time_utc(sent_at)
    if when is None or not OLDEST_DATE <= when <= now + FUTURE_DATE_SLACK:
        when = now
    return email.utils.format_datetime(when.replace(microsecond=0))


def rule_url(web_url: str, rule_id: str) -> str:
    """The rule in the web UI: a single page whose views are ``#/`` routes (only ``/``
    and the API are paths the web app serves)."""
    return f"{web_url.rstrip('/')}/#/rules/{quote(rule_id, safe='')}"


def to_address(address: str) -> Address:
    """The ``To`` of a mail to ``address`` (checked: InvalidAddress), its domain in
    ASCII (IDNA): set as a string, an IDN domain would be written as an RFC 2047
    encoded word, which is not allowed inside an address and reaches nobody."""
    local, _at, domain = ascii_address(check_address(address)).rpartition("@")
    return Address(username=local, domain=domain)  # checked: no need to parse it again


def _base(to: str, sender: str, list_id: str, unsubscribe_url: str) -> EmailMessage:
    msg = EmailMessage(policy=POLICY)
    msg["From"] = sender
    msg["To"] = to_address(to)
    msg["Precedence"] = "bulk"
    msg["Auto-Submitted"] = "auto-generated"
    msg["List-Id"] = f"Fedora notifications <{list_id}>"
    # RFC 8058: a POST to this URL with "List-Unsubscribe=One-Click" unsubscribes
    msg["List-Unsubscribe"] = f"<{unsubscribe_url}>"
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    return msg


def _why(item: Delivery, web_url: str) -> list[str]:
    lines = ["You get this because of your rule" + ("s:" if len(item.rules) > 1 else ":")]
    for rule_id, name in zip(item.rules, item.rule_names, strict=True):
        lines.append(f"  - {_header_text(name, 200)}: {rule_url(web_url, rule_id)}")
    return lines


def render(item: Delivery, *, sender: str, web_url: str, list_id: str,
           unsubscribe_url: str) -> EmailMessage:
    """The mail for one notification (raises InvalidAddress)."""
    m = item.message
    summary = clean(m.get("summary"))
    topic = _header_text(m.get("topic"))
    app = _header_text(m.get("app"), 100) or None
    msg = _base(item.address, sender, list_id, unsubscribe_url)
    _set(msg, "Subject", _no_encoded_words(shorten(summary, MAX_SUBJECT_CHARS))
         or f"{app or 'Fedora'}: {topic}")
    msg["Date"] = mail_date(m.get("sent_at"))
    msg["Message-ID"] = email.utils.make_msgid(domain=list_id)
    _set(msg, "X-Fedmsg-Id", _message_id_header(m.get("id")))
    _set(msg, "X-Fedmsg-Topic", topic)
    _set(msg, "X-Fedmsg-Category", _header_text(category(str(m.get("topic") or ""), app), 100))
    agent = _header_text(m.get("agent"), 100)
    if agent:
        _set(msg, "X-Fedmsg-Username", agent)
    packages = [p for p in (_header_text(p, 100) for p in m.get("packages") or []) if p]
    for package in packages[:MAX_PACKAGE_HEADERS]:
        _set(msg, "X-Fedmsg-Package", package)
    count = m.get("num_packages")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        count = len(packages)  # untrusted: only a count is a count
    msg["X-Fedmsg-Num-Packages"] = str(count)
    url = shorten(clean(m.get("url")), MAX_BODY_TEXT_CHARS)
    body = [shorten(summary, MAX_BODY_TEXT_CHARS) or topic, ""]
    if url:
        body += [url, ""]
    body += [f"Topic: {topic}", f"Sent: {_header_text(m.get('sent_at'), 60)}", ""]
    body += _why(item, web_url)
    body += _footer(web_url, unsubscribe_url)
    msg.set_content("\n".join(body) + "\n", charset="utf-8", cte="quoted-printable")
    return msg


def render_digest(items: Sequence[Delivery], *, sender: str, web_url: str, list_id: str,
                  unsubscribe_url: str, more: int = 0) -> EmailMessage:
    """One mail for ``items`` (all to the same address), oldest first.

    ``more`` counts notifications left for the next digest (the size cap).
    """
    if not items:
        raise ValueError("a digest needs at least one notification")
    msg = _base(items[0].address, sender, list_id, unsubscribe_url)
    count = len(items)
    msg["Subject"] = f"Fedora notifications: {count} new" + (f" ({more} more)" if more else "")
    msg["Date"] = email.utils.format_datetime(datetime.now(UTC))
    msg["Message-ID"] = email.utils.make_msgid(domain=list_id)
    msg["X-Fedmsg-Digest-Count"] = str(count)
    body = [f"{count} notification{'s' if count > 1 else ''} since the last digest:", ""]
    for item in items:
        m = item.message
        summary = shorten(clean(m.get("summary")), MAX_DIGEST_SUMMARY_CHARS) \
            or _header_text(m.get("topic"))
        body.append(f"* {_header_text(m.get('sent_at'), 40)}  {summary}")
        url = shorten(clean(m.get("url")), MAX_DIGEST_SUMMARY_CHARS)
        if url:
            body.append(f"  {url}")
        names = ", ".join(_header_text(n, 100) for n in item.rule_names)
        body.append(f"  (rule{'s' if len(item.rule_names) > 1 else ''}: {names})")
        body.append("")
    if more:
        body += [f"{more} more notifications follow in the next digest.", ""]
    body += _footer(web_url, unsubscribe_url)
    msg.set_content("\n".join(body) + "\n", charset="utf-8", cte="quoted-printable")
    return msg


def _footer(web_url: str, unsubscribe_url: str) -> list[str]:
    return ["", "-- ", f"Change what you receive: {web_url}/",
            f"Stop these emails: {unsubscribe_url}"]
