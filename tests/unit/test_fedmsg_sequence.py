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
    assert gap is not None and (gap.expected, gap.got, gap.missing) == (3, 5, 2)
    assert t.see("p", 1, A) is None and t.restarts == 1 and t.missing == 2


def test_a_record_forwarded_unread_is_no_gap() -> None:
    # its i is not known (too complex to read): the next rise by two is that record
    t = SequenceTracker()
    t.see("p", 1, A)
    t.forwarded_unread(A)
    assert t.see("p", 3, A) is None
    assert t.gaps == [] and t.missing == 0
    # taken once: a later rise by two is a gap again
    gap = t.see("p", 5, A)
    assert gap is not None and gap.missing == 1


def test_an_unread_record_takes_only_its_own_number() -> None:
    t = SequenceTracker()
    t.see("p", 1, A)
    t.forwarded_unread(A)
    gap = t.see("p", 5, A)  # 2, 3, 4 missing: one of them is the unread record
    assert gap is not None and (gap.expected, gap.missing) == (3, 2) and t.missing == 2


def test_an_unread_record_of_another_endpoint_explains_nothing() -> None:
    t = SequenceTracker()
    t.see("p", 1, A)
    t.forwarded_unread(B)
    gap = t.see("p", 3, A)
    assert gap is not None and gap.missing == 1


def test_an_unread_record_lapses_after_its_window() -> None:
    t = SequenceTracker()
    t.see("p", 1, A)
    t.forwarded_unread(A)
    for i in range(UNREAD_WINDOW):
        t.see("q", i, B)
    gap = t.see("p", 3, A)
    assert gap is not None and gap.missing == 1


def test_unread_records_are_kept_for_one_window_only() -> None:
    t = SequenceTracker()
    for _ in range(3 * UNREAD_WINDOW):
        t.forwarded_unread(A)
    assert len(t.unread[A]) == UNREAD_WINDOW


def test_at_an_endpoint_of_many_publishers_an_unread_record_explains_nothing() -> None:
    # a relay carries koji and bodhi: koji's unread i=11 must not hide bodhi's lost 51
    t = SequenceTracker()
    t.see("koji", 10, A)
    t.see("bodhi", 50, A)
    t.forwarded_unread(A)  # koji's 11
    gap = t.see("bodhi", 52, A)
    assert gap is not None and gap.missing == 1  # bodhi's 51: lost, and said so
    gap = t.see("koji", 12, A)  # a gap all the same: whose the record was is not known
    assert gap is not None and gap.missing == 1


def test_an_unread_record_before_a_publishers_first_explains_nothing_later() -> None:
    t = SequenceTracker()
    t.forwarded_unread(A)
    assert t.see("p", 2, A) is None  # its first record: nothing to compare with
    gap = t.see("p", 4, A)  # 3 lost: not hidden by the earlier unread record
    assert gap is not None and gap.missing == 1
