"""The UI against the real web app (``webapp/app.py``) and the real feed endpoint.

Everything runs in this process on in-memory services (SQLite, memory snapshot
store, memory feed); the notification is appended to the feed as the ``sse``
sender would.  The full pipeline (replaying a bus message through the local
stack) is for the local-stack end-to-end tests to wire.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from harness import MAILERS, PageProbe, Stack
from test_ui import clean, sign_in, unlabelled

from fmn.delivery.feed import encode_event

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect

pytestmark = [pytest.mark.browser, pytest.mark.e2e]


def test_real_app_sign_in_add_rule_and_live_feed(
        page: Any, real_stack: Stack, probe: PageProbe) -> None:
    sign_in(page, real_stack, "dora")
    expect(page.locator("#feed-state")).to_have_text("live")

    # The live feed as a destination (no address, no verification).
    page.get_by_role("link", name="Destinations").click()
    page.get_by_label("Destination kind").select_option("sse")
    page.get_by_role("button", name="Add destination").click()
    expect(page.locator("#destination-list")).to_contain_text("Live feed")
    assert unlabelled(page) == []

    # A topics rule to it.
    page.get_by_role("link", name="Rules").click()
    page.get_by_role("button", name="New rule").click()
    page.get_by_label("Rule name").fill("Bodhi comments")
    page.get_by_label("Tracking kind").select_option("topics")
    page.get_by_label("Topic patterns").fill("org.fedoraproject.prod.bodhi.update.comment")
    page.locator("#generation-rules").get_by_label("Live feed").check()
    expect(page.locator("#preview-summary")).not_to_be_empty()
    page.get_by_role("button", name="Save rule").click()
    expect(page.locator("#rule-list > li", has_text="Bodhi comments")).to_be_visible()
    assert unlabelled(page) == []

    # A notification for it arrives on the live feed, then in the recent list.
    real_stack.feed.append("dora", encode_event({
        "v": 1, "message_id": "2024-77", "topic": "org.fedoraproject.prod.bodhi.update.comment",
        "app": "bodhi", "agent": "bob", "summary": "bob commented on FEDORA-2024-77",
        "url": "https://bodhi.fedoraproject.org/updates/FEDORA-2024-77",
        "sent_at": "2024-06-01T13:00:00+00:00", "severity": "INFO", "rules": ["r1"],
        "rule_names": ["Bodhi comments"], "received_at": "2024-06-01T13:00:01.000+00:00"}))
    expect(page.locator("#feed-list > li").first).to_contain_text(
        "bob commented on FEDORA-2024-77")
    page.get_by_role("link", name="Recent notifications").click()
    expect(page.locator("#notification-list")).to_contain_text("bob commented on FEDORA-2024-77")

    # Its Atom feed: a private address that a reader without the session can read,
    # and that stops working once revoked.
    page.get_by_role("button", name="Show my feed address").click()
    address = page.get_by_label("Feed address")
    expect(address).to_have_value(re.compile(r"^http://127\.0\.0\.1:\d+/atom/"))
    first = address.input_value()
    reader = page.context.browser.new_context()  # no cookies: a feed reader
    try:
        atom = reader.request.get(first)
        assert atom.status == 200 and "bob commented on FEDORA-2024-77" in atom.text()
        page.get_by_role("button", name="Revoke and make a new address").click()
        expect(address).to_have_value(first)  # not before it is confirmed
        page.get_by_role("button", name="Yes, make a new one").click()
        expect(address).not_to_have_value(first)
        assert reader.request.get(first).status == 404
        assert reader.request.get(address.input_value()).status == 200
    finally:
        reader.close()

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()

    # the next person on this page sees nothing of dora's: not her live feed, not her
    # feed's private address (which reads her notifications without a session)
    sign_in(page, real_stack, "erin")
    expect(page.locator("#feed-list")).not_to_contain_text("FEDORA-2024-77")
    page.get_by_role("link", name="Recent notifications").click()
    expect(page.get_by_label("Feed address")).to_be_hidden()
    assert page.locator("#atom-url").input_value() == ""
    expect(page.locator("#notification-list")).not_to_contain_text("FEDORA-2024-77")
    clean(probe)


def test_an_email_address_is_confirmed_by_the_pages_button_not_by_opening_the_link(
        page: Any, real_stack: Stack, probe: PageProbe) -> None:
    sign_in(page, real_stack, "erin")
    page.get_by_role("link", name="Destinations").click()
    page.get_by_label("Destination kind").select_option("email")
    page.get_by_label("Address", exact=True).fill("erin2@example.org")
    page.get_by_role("button", name="Add destination").click()
    item = page.locator("#destination-list > li", has_text="erin2@example.org")
    expect(item).to_contain_text("not verified")
    mail = MAILERS[real_stack.url].sent[-1]
    link = next(w for w in mail.get_content().split() if "/verify/email/" in w)

    other = page.context.browser.new_context()  # the mail client: no session
    try:
        scanner = other.request.get(link)  # a link scanner opens it first
        assert scanner.status == 200 and "Confirm this address" in scanner.text()
        page.reload()
        page.get_by_role("link", name="Destinations").click()
        expect(item).to_contain_text("not verified")

        tab = other.new_page()
        tab.goto(link)
        expect(tab.get_by_text("erin2@example.org")).to_be_visible()
        tab.get_by_role("button", name="Confirm this address").click()
        expect(tab.get_by_role("heading", name="Address confirmed")).to_be_visible()
    finally:
        other.close()
    page.reload()
    page.get_by_role("link", name="Destinations").click()
    expect(item.locator(".badge")).to_have_text("verified")
    clean(probe)


def test_an_editor_left_open_does_not_undo_a_change_made_elsewhere(
        page: Any, real_stack: Stack, probe: PageProbe) -> None:
    """The editor PUT the whole rule it had opened: a rename and a disable made meanwhile
    on another device were silently undone.  It now sends the version it opened (the
    rule's etag): the server saves nothing and says why."""
    sign_in(page, real_stack, "gus")
    page.get_by_role("button", name="Edit My packages").click()
    expect(page.locator("#editor")).to_be_visible()

    # the phone: the same account renames and disables the rule
    api = page.context.request
    rules = api.get(f"{real_stack.url}/api/v1/rules").json()
    rule_id = next(r["id"] for r in rules if r["name"] == "My packages")
    csrf = next(c["value"] for c in page.context.cookies() if c["name"].endswith("fmn_csrf"))
    changed = api.patch(f"{real_stack.url}/api/v1/rules/{rule_id}",
                        data={"name": "Muted on the phone", "enabled": False},
                        headers={"X-CSRF-Token": csrf})
    assert changed.status == 200, changed.text()

    page.get_by_role("button", name="Save rule").click()
    expect(page.locator("#rule-form-error")).to_contain_text("changed elsewhere")
    expect(page.locator("#editor")).to_be_visible()
    stored = api.get(f"{real_stack.url}/api/v1/rules/{rule_id}").json()
    assert stored["name"] == "Muted on the phone" and stored["enabled"] is False

    # opened again, the editor has the rule as it is now, and saving works
    page.get_by_role("button", name="Cancel").click()
    page.get_by_role("button", name="Edit Muted on the phone").click()
    expect(page.get_by_label("Rule name")).to_have_value("Muted on the phone")
    page.get_by_label("Rule name").fill("Mine again")
    page.get_by_role("button", name="Save rule").click()
    expect(page.locator("#editor")).to_be_hidden()

    # a switch in the list while its editor is open is this page's own change, even
    # when the save is pressed before the switch's answer is back: the switch's
    # request is held until after the save was pressed
    held: list[Any] = []
    page.route("**/api/v1/rules/*", lambda route: held.append(route)
               if route.request.method == "PATCH" else route.continue_())
    page.get_by_role("button", name="Edit Mine again").click()
    page.locator("#rule-list > li", has_text="Mine again").get_by_role("checkbox").check()
    page.get_by_label("Rule name").fill("Switched on")
    page.get_by_role("button", name="Save rule").click()
    page.wait_for_timeout(300)
    assert len(held) == 1
    held[0].continue_()
    expect(page.locator("#editor")).to_be_hidden()
    page.unroute("**/api/v1/rules/*")
    stored = api.get(f"{real_stack.url}/api/v1/rules/{rule_id}").json()
    assert stored["name"] == "Switched on" and stored["enabled"] is True

    # but a switch after a change elsewhere changes nothing, and the editor opened
    # before it stays refused: the switch must not lend it the newer version
    page.get_by_role("button", name="Edit Switched on").click()
    changed = api.patch(f"{real_stack.url}/api/v1/rules/{rule_id}",
                        data={"name": "Renamed on the phone"}, headers={"X-CSRF-Token": csrf})
    assert changed.status == 200, changed.text()
    page.locator("#rule-list > li", has_text="Switched on").get_by_role("checkbox").uncheck()
    expect(page.locator("#rule-list > li", has_text="Renamed on the phone")).to_contain_text(
        "changed elsewhere")
    page.get_by_role("button", name="Save rule").click()
    expect(page.locator("#rule-form-error")).to_contain_text("changed elsewhere")
    stored = api.get(f"{real_stack.url}/api/v1/rules/{rule_id}").json()
    assert stored["name"] == "Renamed on the phone" and stored["enabled"] is True
    probe.errors.clear()  # the 412s, logged by the browser
    clean(probe)
