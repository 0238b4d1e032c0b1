"""IRC lines from untrusted bus content (fmn.delivery.irc): what reaches the wire is safe.

Hostile summaries (CR/LF, HTML, ANSI escapes, IRC formatting, bidi overrides,
10,000 characters) become at most three lines, each a valid UTF-8 PRIVMSG
within 512 bytes once the server prefixes it, with no control character.
Splitting never cuts a character; an address that is not a nick is a
PermanentError; the token bucket holds its limit on a fake clock, also at a
paced socket; a backlog for one nick collapses into one summary line.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from typing import Any

import pytest
from fakes import FakeClock
from hypothesis import given, settings
from hypothesis import strategies as st

from fmn.delivery.backlog import BatchPlan, RecentLines, plan_batch
from fmn.delivery.base import Delivery
from fmn.delivery.irc import (
    MAX_LINE_BYTES,
    MAX_LINES_PER_NOTIFICATION,
    RELAY_PREFIX_BYTES,
    InvalidNick,
    TokenBucket,
    check_nick,
    check_wire,
    irc_lower,
    payload_budget,
    render_lines,
    split_utf8,
    summary_line,
    truncate_utf8,
    valid_nick,
)
from fmn.delivery.irc_client import IrcServer, MemoryIrcLink, PacedSocket
from fmn.delivery.text import clean
from fmn.errors import PermanentError

pytestmark = pytest.mark.unit

URL = "https://koji.fedoraproject.org/koji/buildinfo?buildID=1"
BIDI = {chr(c) for c in [0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F),
                         *range(0x2066, 0x206A)]}


def item(summary: Any = "alice's kernel-6.1-1.fc40 completed", *, nick: str = "alice",
         message_id: str = "m1", url: Any = URL, app: Any = "koji",
         rule_names: tuple[str, ...] = ("My builds",)) -> Delivery:
    message = {"id": message_id, "topic": "org.fedoraproject.prod.buildsys.build.state.change",
               "app": app, "agent": "alice", "summary": summary, "url": url,
               "sent_at": "2024-01-01T00:00:00+00:00", "severity": "INFO",
               "usernames": ["alice"], "packages": ["kernel"]}
    rules = tuple(f"r{i}" for i in range(len(rule_names)))
    return Delivery(backend="irc", message=message, user=nick.lower(), address=nick,
                    destination=f"d-{nick}", rules=rules, rule_names=rule_names)


def assert_safe_on_the_wire(nick: str, lines: list[str]) -> None:
    assert 1 <= len(lines) <= MAX_LINES_PER_NOTIFICATION
    for line in lines:
        wire = check_wire(nick, line)
        relayed = f":{nick}!~fmn@some.host.example.org ".encode() + wire
        assert len(wire) + RELAY_PREFIX_BYTES <= MAX_LINE_BYTES
        assert len(relayed) <= MAX_LINE_BYTES
        assert wire.decode("utf-8") == f"PRIVMSG {nick} :{line}\r\n"  # valid UTF-8
        assert line == line.strip() and "  " not in line
        for c in line:
            assert unicodedata.category(c) not in ("Cc", "Cs"), repr(c)
            assert c not in BIDI and c not in "\u2028\u2029\ufeff", repr(c)


# -- sanitising ------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), [
    ("line one\r\nPRIVMSG #fedora :spam", "line one PRIVMSG #fedora :spam"),
    ("a\rb\nc\td\x0bE\x0cF", "a b c d E F"),
    ("\x1b[31mred\x1b[0m and \x1b[1;4;38;5;208mfancy\x1b[m", "red and fancy"),
    ("\x9b31mC1 CSI\x9b0m", "C1 CSI"),
    ("before\x1b]0;window title\x07after", "beforeafter"),
    ("before\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\", "beforelink"),
    ("\x1bPdevice control\x1b\\text", "text"),
    ("\x1b(Bcharset \x1bM reverse index", "charset reverse index"),
    ("\x1b]unterminated osc", "unterminated osc"),
    ("\x0304,12red on blue\x03 \x02bold\x02 \x1funder\x1f \x1ditalic\x1d \x0freset",
     "red on blue bold under italic reset"),
    ("\x0399x \x03,5 \x04FF0000hex\x04", "x ,5 hex"),  # a comma alone is no colour
    ("\x01ACTION waves\x01", "ACTION waves"),  # no CTCP
    ("nul\x00byte del\x7f c1\x85next\x9fend", "nulbyte del c1 nextend"),
    ("para\u2028graph\u2029end", "para graph end"),
    ("\u202egnp.exe\u202c \u2066iso\u2069 \u200fmark\ufeff", "gnp.exe iso mark"),
    ("lone \ud800 surrogate", "lone \ufffd surrogate"),
    ("<script>alert('x')</script> &amp;", "<script>alert('x')</script> &amp;"),
    ("  many   spaces \u00a0\u3000 here  ", "many spaces here"),
    ("ünïcödé 😀 漢字", "ünïcödé 😀 漢字"),
    (None, ""),
    (12, ""),
])
def test_clean_leaves_one_line_of_printable_text(raw: Any, expected: str) -> None:
    assert clean(raw) == expected


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec=None), max_size=300))
def test_clean_never_lets_a_control_character_through(text: str) -> None:
    out = clean(text)
    out.encode("utf-8")  # no lone surrogate
    assert not any(unicodedata.category(c) == "Cc" or c in BIDI for c in out)
    assert out == out.strip()


# -- hostile content, end to end of the renderer ---------------------------------


HOSTILE = ("\x1b[2J\x1b[31mPWNED\x1b[0m\r\nPRIVMSG #fedora-admin :hi\r\nQUIT :bye\n"
           "<b onmouseover=alert(1)>bold</b> <a href='javascript:x'>x</a> "
           "\x0304colour\x03 \u202eevil\u202c \x00\x01\x7f ")


@pytest.mark.parametrize("summary", [
    HOSTILE + "x" * 10_000,
    HOSTILE + "é" * 10_000,
    HOSTILE + "😀" * 10_000,
    HOSTILE + "word " * 2_000,
    ("\x1b[31m" + "a" * 50 + "\r\n") * 200,
    "\r\n" * 5_000,
])
@pytest.mark.parametrize("nick", ["alice", "a" * 32, "[weird]_nick|^"])
def test_a_hostile_summary_yields_a_few_safe_irc_lines(summary: str, nick: str) -> None:
    hostile = item(summary, nick=nick, url=URL + "\r\nQUIT", app="ko\x1b[1mji\r\n",
                   rule_names=("rule\r\nQUIT :x", "\x1b[31mred", "third"))
    lines = render_lines(hostile)
    assert_safe_on_the_wire(nick, lines)
    text = " ".join(lines)
    assert text.startswith("[koji] ")
    if summary.startswith(HOSTILE):  # kept, inline, as harmless text
        assert "PWNED PRIVMSG #fedora-admin :hi QUIT :bye <b onmouseover=alert(1)>" in text
    assert "\r" not in text and "\n" not in text and "\x1b" not in text


def test_a_normal_notification_is_one_line_with_its_link_and_rule() -> None:
    assert render_lines(item()) == [
        f"[koji] alice's kernel-6.1-1.fc40 completed {URL} (rule: My builds)"]
    two = render_lines(item(rule_names=("A", "B", "C", "D")))
    assert two[0].endswith("(rules: A, B +2)")


def test_the_link_and_rules_survive_a_long_summary() -> None:
    lines = render_lines(item("word " * 2_000))
    assert len(lines) <= MAX_LINES_PER_NOTIFICATION
    assert lines[-1].endswith(f"\u2026 {URL} (rule: My builds)")


@pytest.mark.parametrize("url", ["javascript:alert(1)", "ftp://x", "https://a b",
                                 "https://x/" + "a" * 400, None, 5])
def test_only_a_whole_web_link_is_shown(url: Any) -> None:
    assert render_lines(item(url=url)) == [
        "[koji] alice's kernel-6.1-1.fc40 completed (rule: My builds)"]


def test_no_summary_falls_back_to_the_topic_and_no_app_to_fedora() -> None:
    assert render_lines(item(None, url=None, app=None, rule_names=())) == [
        "[fedora] org.fedoraproject.prod.buildsys.build.state.change"]


# -- splitting -------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(["a", " ", "é", "漢", "😀", "\u0301"]), max_size=400),
       st.integers(min_value=4, max_value=60))
def test_splitting_never_breaks_a_character_and_keeps_every_word(text: str, limit: int) -> None:
    pieces = split_utf8(text, limit)
    for piece in pieces:
        assert piece and len(piece.encode()) <= limit
        piece.encode().decode("utf-8")  # whole characters only
    assert "".join(pieces).replace(" ", "") == text.replace(" ", "")


def test_splitting_prefers_a_space_in_the_second_half() -> None:
    assert split_utf8("aaaa bbbb cccc", 10) == ["aaaa bbbb", "cccc"]
    assert split_utf8("a bbbbbbbbbbbb", 10) == ["a bbbbbbbb", "bbbb"]  # too early: hard cut
    assert split_utf8("😀😀😀", 9) == ["😀😀", "😀"]  # 8 bytes, not 9


def test_truncate_cuts_on_a_character_and_marks_it() -> None:
    assert truncate_utf8("short", 10) == "short"
    cut = truncate_utf8("é" * 10, 10)
    assert cut == "é" * 3 + "\u2026" and len(cut.encode()) <= 10


def test_the_payload_budget_leaves_room_for_the_relay_prefix() -> None:
    for nick in ("a", "alice", "a" * 32):
        budget = payload_budget(nick)
        assert budget <= 400
        assert len(f"PRIVMSG {nick} :".encode()) + budget + 2 + RELAY_PREFIX_BYTES <= 512


# -- nicks -----------------------------------------------------------------------


@pytest.mark.parametrize("nick", ["alice", "Alice_", "[m]", "a-1", "`^{|}\\", "a" * 32])
def test_valid_nicks_pass(nick: str) -> None:
    assert check_nick(nick) == nick


@pytest.mark.parametrize("nick", ["", "has space", "a,b", "#fedora", "&chan", "1abc", "-x",
                                  "alice\r\nQUIT", "alice\x00", "a:b", "a!b@c", "a" * 33,
                                  "älice", "alice@example.org"])
def test_an_address_that_is_not_a_nick_is_a_permanent_error(nick: str) -> None:
    with pytest.raises(InvalidNick) as err:
        check_nick(nick)
    assert isinstance(err.value, PermanentError)
    assert "\r" not in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("line", ["", "a\rb", "a\nb", "a\x00b", "x" * 400])
def test_check_wire_refuses_what_could_break_out_of_a_privmsg(line: str) -> None:
    with pytest.raises(PermanentError):
        check_wire("alice", line)


def test_the_fake_link_guards_the_wire_as_the_real_one_does() -> None:
    link = MemoryIrcLink()
    with pytest.raises(PermanentError):
        link.send("#fedora", ["hi"])
    with pytest.raises(PermanentError):
        link.send("alice", ["hi\r\nQUIT"])
    assert link.sent == []


# -- the server URL --------------------------------------------------------------


def test_irc_urls() -> None:
    plain = IrcServer.from_url("irc://fmn@127.0.0.1:6667")
    assert (plain.host, plain.port, plain.nick, plain.tls, plain.password) == \
        ("127.0.0.1", 6667, "fmn", False, None)
    tls = IrcServer.from_url("ircs://fmn-bot:s%40cret@irc.libera.chat?account=fmnacct")
    assert (tls.port, tls.tls, tls.password, tls.account) == (6697, True, "s@cret", "fmnacct")
    assert "s@cret" not in repr(tls)
    assert plain.alternates()[:3] == ["fmn_", "fmn__", "fmn1"]
    for bad in ("http://fmn@host", "irc://host:6667", "irc://1bad@host", "irc://fmn@:6667"):
        with pytest.raises(ValueError):
            IrcServer.from_url(bad)


# -- the flood limit -------------------------------------------------------------


def test_the_bucket_allows_a_burst_then_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(burst=5, rate=2.0, clock=clock)
    assert [bucket.reserve() for _ in range(5)] == [0.0] * 5
    assert bucket.reserve() == pytest.approx(0.5)  # the 6th waits for one token
    assert bucket.reserve() == pytest.approx(1.0)  # the 7th for two
    clock.now += 1.0
    assert bucket.available() == pytest.approx(0.0)
    clock.now += 100
    assert bucket.available() == 5  # never more than the burst
    with pytest.raises(ValueError):
        TokenBucket(0, 1.0)


class FakeRawSocket:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.writes: list[tuple[float, bytes]] = []

    def sendall(self, data: bytes) -> None:
        self.writes.append((self.clock.now, data))


@pytest.mark.parametrize(("burst", "rate"), [(5, 2.0), (1, 1.0), (3, 10.0)])
def test_a_paced_socket_never_writes_faster_than_the_limit(burst: int, rate: float) -> None:
    clock = FakeClock(1000.0)
    raw = FakeRawSocket(clock)

    def sleep(seconds: float) -> None:
        clock.now += seconds

    sock = PacedSocket(raw, TokenBucket(burst, rate, clock), sleep)
    for i in range(40):
        assert sock.send(b"PRIVMSG a :%d\r\n" % i) == len(b"PRIVMSG a :%d\r\n" % i)
        if i % 7 == 6:
            clock.now += 0.3  # idle time between sends refills the bucket
    times = [t for t, _ in raw.writes]
    assert len(times) == 40 and times[:burst] == [1000.0] * burst
    for i in range(len(times)):
        for j in range(i, len(times)):
            assert j - i + 1 <= burst + rate * (times[j] - times[i]) + 1e-9


# -- backlogs --------------------------------------------------------------------


def irc_plan(items: list[Delivery], allowance: Callable[[str], int]) -> BatchPlan:
    return plan_batch(items, allowance, valid=valid_nick, fold=irc_lower)


def test_a_backlog_for_one_nick_collapses_after_the_first_few() -> None:
    items = [item(nick="alice", message_id=f"a{i}") for i in range(12)]
    items += [item(nick="bob", message_id=f"b{i}") for i in range(4)]
    items += [item(nick="carol", message_id=f"c{i}") for i in range(3)]
    plan = irc_plan(items, lambda nick: 3)
    assert [plan.group(i) is None for i in items[:12]] == [True] * 3 + [False] * 9
    group = plan.group(items[3])
    assert group is not None and group.nick == "alice" and len(group.keys) == 9
    # one left over is sent on its own: one line either way
    assert all(plan.group(i) is None for i in items[12:])


def test_nicks_group_case_insensitively_and_bad_nicks_stay_out() -> None:
    items = [item(nick="Alice", message_id="1"), item(nick="alice", message_id="2"),
             item(nick="ALICE", message_id="3"), item(nick="has space", message_id="4"),
             item(nick="has space", message_id="5"), item(nick="has space", message_id="6")]
    plan = irc_plan(items, lambda nick: 0)
    assert plan.group(items[0]) is plan.group(items[2]) is not None
    assert all(plan.group(i) is None for i in items[3:])


def test_lines_in_the_last_window_reduce_the_allowance() -> None:
    clock = FakeClock()
    recent = RecentLines(per_nick=3, window_s=60, fold=irc_lower, clock=clock)
    assert recent.allowance("alice") == 3
    recent.note("Alice")
    recent.note("alice")
    assert recent.allowance("ALICE") == 1
    items = [item(nick="alice", message_id=f"a{i}") for i in range(4)]
    plan = irc_plan(items, recent.allowance)
    assert [plan.group(i) is None for i in items] == [True, False, False, False]
    clock.now += 61
    assert recent.allowance("alice") == 3


def test_the_summary_line_links_to_the_web_ui() -> None:
    line = summary_line(12, "https://notifications.example.org/", "alice")
    assert line == "12 more notifications: https://notifications.example.org/#/notifications"
    check_wire("alice", line)


def test_the_same_notification_twice_in_a_batch_is_planned_once() -> None:
    items = [item(nick="alice", message_id=f"a{i % 3}") for i in range(9)]  # a0 a1 a2 thrice
    plan = irc_plan(items, lambda nick: 1)
    group = plan.group(items[1])
    assert group is not None and len(group.keys) == 2 and plan.group(items[0]) is None
