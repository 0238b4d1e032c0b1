"""The Atom feed's dates are RFC 3339's, whatever a publisher put in ``sent_at``."""

from __future__ import annotations

import re

import pytest
from lxml import etree

from fmn.web.atom import render

pytestmark = pytest.mark.unit

ATOM = "{http://www.w3.org/2005/Atom}"
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)\Z")
RECEIVED = "2026-12-06T03:00:00+00:00"


@pytest.mark.parametrize(("sent_at", "published"), [
    ("2024-01-01T00:00:00+05:30:15", "2023-12-31T18:29:45+00:00"),  # offset with seconds
    ("2024-01-01T00:00:00+01:00", "2023-12-31T23:00:00+00:00"),
    ("0001-01-01T00:00:00+01:00", RECEIVED),  # year 1, with an offset
    ("1970-01-01T00:00:00+00:00", RECEIVED),  # before 2000: not believable
    ("9999-12-31T23:59:59-01:00", RECEIVED),  # after it was received
    ("not a date", RECEIVED),
])
def test_published_is_rfc_3339_in_utc(sent_at: str, published: str) -> None:
    item = {"message_id": "m1", "app": "koji", "summary": "s", "topic": "t",
            "url": "https://x/", "received_at": RECEIVED, "sent_at": sent_at}
    doc = etree.fromstring(render("bob", [item], "https://n/atom/t", "https://n"))
    dates = [e.text or "" for e in doc.iter(f"{ATOM}published", f"{ATOM}updated")]
    assert dates and all(RFC3339.match(d) for d in dates), dates
    assert doc.find(f".//{ATOM}published").text == published
