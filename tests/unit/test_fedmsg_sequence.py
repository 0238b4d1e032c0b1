"""fedmsg's per-publisher ``i``: gaps, restarts, and records forwarded unread."""

from __future__ import annotations

import pytest

from fmn_bridge.fedmsg_source import UNREAD_WINDOW, SequenceTracker

pytestmark = pytest.mark.unit

A, B = "tcp://a:9940", "tcp://b:9940"


def test_a_rise_by_more_than_one_is_a_gap_and_a_fall_a_restart() -> None:
    t = SequenceTracker()
    assert t.see("p", 1, A) is None and t.see("p", 2, A) is None
    gap = t.see("p", 5, A)
    assert gap is not None and (gap.expected, gap.got, gap.missing, gap.unread) == (3, 5, 2, 0)
    assert t.see("p", 1, A) is None and t.restarts == 1 and t.missing == 2


def test_a_gap_after_a_record_forwarded_unread_is_still_a_gap_that_says_so(
        caplog: pytest.LogCaptureFixture) -> None:
    # whose the unread record was is not known: crediting it to the wrong publisher
    # would hide a real loss, so the gap is counted, and named as perhaps that record
    t = SequenceTracker()
    t.see("p", 1, A)
    t.forwarded_unread(A)
    with caplog.at_level("WARNING"):
        gap = t.see("p", 3, A)
    assert gap is not None and (gap.missing, gap.unread) == (1, 1) and t.missing == 1
    assert "1 record(s) of tcp://a:9940 went on unread" in caplog.text
    gap = t.see("p", 5, A)  # named once: the next gap is a plain one
    assert gap is not None and gap.unread == 0


def test_at_a_relay_an_unread_record_hides_no_publishers_loss() -> None:
    # koji's unread i=11 must not hide bodhi's lost 51, nor a new publisher's record
    # koji's lost 11
    t = SequenceTracker()
    t.see("koji", 10, A)
    t.see("bodhi", 50, A)
    t.forwarded_unread(A)
    gap = t.see("bodhi", 52, A)
    assert gap is not None and gap.missing == 1
    t.forwarded_unread(A)  # a new publisher's first record, too complex to read
    gap = t.see("koji", 12, A)
    assert gap is not None and gap.missing == 1 and t.missing == 2


def test_an_unread_record_of_another_endpoint_is_not_named() -> None:
    t = SequenceTracker()
    t.see("p", 1, A)
    t.forwarded_unread(B)
    gap = t.see("p", 3, A)
    assert gap is not None and gap.unread == 0


def test_an_unread_record_lapses_after_its_window() -> None:
    t = SequenceTracker()
    t.see("p", 1, A)
    t.forwarded_unread(A)
    for i in range(UNREAD_WINDOW):
        t.see("q", i, B)
    gap = t.see("p", 3, A)
    assert gap is not None and gap.unread == 0


def test_unread_records_are_kept_for_one_window_only() -> None:
    t = SequenceTracker()
    for _ in range(3 * UNREAD_WINDOW):
        t.forwarded_unread(A)
    assert len(t.unread[A]) == UNREAD_WINDOW


def test_publishers_invented_without_end_are_not_remembered_without_end() -> None:
    from fmn_bridge.fedmsg_source import publisher_key

    t = SequenceTracker(max_publishers=3)
    for n in range(10):
        t.see(f"p{n}", 1)
    assert list(t.last) == ["p7", "p8", "p9"]
    t.see("p8", 2)  # heard from again: remembered longest
    t.see("p10", 1)
    assert list(t.last) == ["p9", "p8", "p10"]
    assert t.see("p8", 4) is not None  # its gap still reported
    # a username of a megabyte keys its publisher by a hash, not by the whole text
    key = publisher_key("tcp://hub:9940", {"username": "u" * 1_000_000})
    assert len(key) < 120 and key == publisher_key("tcp://hub:9940", {"username": "u" * 1_000_000})
    assert publisher_key("tcp://hub:9940", {"username": "alice"}) == "tcp://hub:9940|alice|unsigned"


def test_a_signer_with_a_lone_surrogate_has_a_key_of_its_own() -> None:
    """JSON may escape a lone surrogate, and Python's json reads it: keying it by a
    strict UTF-8 encode raised, and the fedmsg source's thread died."""
    from fmn_bridge.fedmsg_source import publisher_key

    lone = publisher_key("tcp://hub:9940", {"username": "a", "certificate": "\ud800"})
    other = publisher_key("tcp://hub:9940", {"username": "a", "signer": "\udc80"})
    assert lone == publisher_key("tcp://hub:9940", {"username": "a", "certificate": "\ud800"})
    assert len({lone, other, "tcp://hub:9940|a|unsigned"}) == 3
