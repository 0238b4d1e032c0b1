"""The preferences UI in headless Chromium against the fake API and the real feed endpoint."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fake_api import HOSTILE_SUMMARY, VERIFY_CODE
from harness import ARTIFACTS, PageProbe, Stack

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

SCREENSHOT = ARTIFACTS / "rules-editor-preview-feed.png"

#: Every form control without an accessible name (label, aria-label, aria-labelledby).
UNLABELLED_JS = """() => [...document.querySelectorAll('input, select, textarea, button')]
  .filter((el) => el.offsetParent !== null || el.getClientRects().length)
  .filter((el) => {
    if (el.tagName === 'BUTTON') return !(el.getAttribute('aria-label') || el.textContent.trim());
    if (el.labels && [...el.labels].some((l) => l.textContent.trim())) return false;
    if ((el.getAttribute('aria-label') || '').trim()) return false;
    const by = (el.getAttribute('aria-labelledby') || '').split(' ').filter(Boolean);
    return !by.some((id) => (document.getElementById(id)?.textContent || '').trim());
  })
  .map((el) => el.outerHTML.slice(0, 120))"""


def sign_in(page: Any, stack: Stack, user: str = "alice") -> None:
    """The development login, with the keyboard."""
    page.goto(stack.url)
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(page.get_by_role("link", name="Sign in with Fedora")).to_have_attribute("href",
                                                                                    "/login")
    demo = page.get_by_label("Demo user")
    expect(demo).to_be_visible()
    demo.focus()
    page.keyboard.press("Control+A")
    page.keyboard.type(user)
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Sign in as this user")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#account-name")).to_have_text(user)
    expect(page.locator("body")).to_have_attribute("data-ready", "true")


def unlabelled(page: Any) -> list[str]:
    return page.evaluate(UNLABELLED_JS)


def clean(probe: PageProbe) -> None:
    assert probe.dialogs == []
    assert probe.errors == []


def test_sign_in_add_rule_see_preview_and_live_notification(
        page: Any, stack: Stack, probe: PageProbe) -> None:
    sign_in(page, stack)
    expect(page.locator("#rule-list > li")).to_have_count(1)
    expect(page.locator("#feed-state")).to_have_text("live")
    # The feed's history: the two seeded notifications.
    expect(page.locator("#feed-list > li")).to_have_count(2)

    # A new rule, with the keyboard: name, tracking kind, artifact search and pick.
    page.get_by_role("button", name="New rule").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_label("Rule name")).to_be_focused()
    page.keyboard.type("Kernel news")
    page.keyboard.press("Tab")  # Enabled
    page.keyboard.press("Tab")  # Tracking kind
    expect(page.get_by_label("Tracking kind")).to_be_focused()
    page.get_by_label("Tracking kind").select_option("artifacts-followed")
    search = page.get_by_label("Find an artifact")
    search.focus()
    page.keyboard.type("kern")
    expect(page.get_by_role("button", name="Follow rpms/kernel", exact=True)).to_be_visible()
    page.keyboard.press("ArrowDown")
    expect(page.get_by_role("button", name="Follow rpms/kernel", exact=True)).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#artifact-chosen")).to_contain_text("rpms/kernel")
    expect(search).to_be_focused()

    # The preview follows the rule: kernel messages not by alice (DEBUG excluded).
    summary = page.locator("#preview-summary")
    expect(summary).to_contain_text("2 of the last 9 messages match")
    expect(page.locator("#preview-list")).to_contain_text("bob commented on bodhi update kernel")
    page.get_by_label("Include my own actions").check()
    expect(summary).to_contain_text("3 of the last 9 messages match")
    page.get_by_label("Topic pattern").fill("*.bodhi.update.comment")
    expect(summary).to_contain_text("1 of the last 9 messages match")
    page.get_by_label("Topic pattern").fill("")
    page.get_by_label("Include my own actions").uncheck()
    page.get_by_label("WARNING").check()
    expect(summary).to_contain_text("1 of the last 9 messages match")  # the hostile one
    page.get_by_label("WARNING").uncheck()
    page.locator("#generation-rules").get_by_label("bodhi", exact=True).check()
    expect(summary).to_contain_text("1 of the last 9 messages match")

    # Destinations: the live feed is ticked for a new rule; add the e-mail too; save.
    sends_to = page.locator("#generation-rules")
    expect(sends_to.get_by_label("Live feed")).to_be_checked()
    sends_to.get_by_label("E-mail: alice@example.org").check()
    page.get_by_role("button", name="Save rule").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#editor")).to_be_hidden()
    new_rule = page.locator("#rule-list > li", has_text="Kernel news")
    expect(new_rule).to_be_visible()
    expect(new_rule.get_by_role("heading", name="Kernel news")).to_be_focused()
    expect(page.locator("#status")).to_contain_text("Rule Kernel news saved")
    saved = [r for r in stack.api.users["alice"].rules if r["name"] == "Kernel news"][0]
    assert saved["tracking"] == {"kind": "artifacts-followed",
                                 "params": {"artifacts": [{"type": "rpms", "name": "kernel"}]}}
    assert saved["generation_rules"][0]["filters"] == {"applications": ["bodhi"]}
    assert len(saved["generation_rules"][0]["destinations"]) == 2

    # A matching message goes out: it arrives on the live feed, newest first.
    stack.api.push("alice", summary="bob commented on kernel-6.9.4-200.fc40",
                   url="https://bodhi.fedoraproject.org/updates/FEDORA-2024-1",
                   rules=[saved["id"]], rule_names=["Kernel news"])
    first = page.locator("#feed-list > li").first
    expect(first).to_contain_text("bob commented on kernel-6.9.4-200.fc40")
    expect(first).to_contain_text("Rule: Kernel news")
    expect(first.get_by_role("link")).to_have_attribute(
        "href", "https://bodhi.fedoraproject.org/updates/FEDORA-2024-1")

    # Every non-GET request carried the CSRF token.
    writes = [r for r in stack.api.requests if r[0] != "GET" and r[1] != "/dev/login"]
    assert writes and all(csrf for _, _, csrf in writes)

    # The README's screenshot: the rule open in the editor, its preview, the live feed.
    new_rule.get_by_role("button", name="Edit Kernel news").click()
    expect(summary).to_contain_text("1 of the last 9 messages match")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))  # the editor with its preview and the live feed
    clean(probe)


def test_recent_notifications_and_enable_toggle_and_delete(
        page: Any, stack: Stack, probe: PageProbe) -> None:
    stack.api.push("alice", summary="A third notification", rule_names=["My packages"])
    sign_in(page, stack)
    page.get_by_role("link", name="Recent notifications").click()
    expect(page.get_by_role("heading", name="Recent notifications")).to_be_focused()
    items = page.locator("#notification-list > li")
    expect(items).to_have_count(3)
    expect(items.first).to_contain_text("A third notification")
    expect(items.nth(1)).to_contain_text("bob commented on bodhi update")
    expect(items.nth(2)).to_contain_text("alice's kernel-6.9.3-200.fc40 completed")
    # live-feed events and the window's matches in one order, by the time received (a
    # match's time in another offset sorted by its text, ahead of newer events)
    from datetime import UTC, datetime, timedelta, timezone

    # an hour before the oldest event, written two hours east: its text sorts later
    oldest = min(datetime.fromisoformat(e["received_at"]) for e in stack.api.feed_events("alice"))
    at = (oldest - timedelta(hours=1)).astimezone(timezone(timedelta(hours=2))).isoformat()
    assert at > max(e["received_at"] for e in stack.api.feed_events("alice"))
    assert datetime.fromisoformat(at) < oldest.astimezone(UTC)
    stack.api.window_matches = [{
        "message_id": "w-1", "topic": "org.fedoraproject.prod.buildsys.build.state.change",
        "app": "koji", "summary": "An older match", "url": None, "severity": "INFO",
        "rules": ["r1"], "rule_names": ["My packages"], "sent_at": at, "received_at": at}]
    page.get_by_role("button", name="Refresh").click()
    expect(items).to_have_count(4)
    expect(items.last).to_contain_text("An older match")
    stack.api.window_matches = []

    # Refresh reads the list again (it did nothing)
    stack.api.push("alice", summary="A fourth notification", rule_names=["My packages"])
    page.get_by_role("button", name="Refresh").click()
    expect(items).to_have_count(4)
    expect(items.first).to_contain_text("A fourth notification")
    note = page.locator("#notifications-incomplete")
    expect(note).to_be_hidden()
    # the rules' search ran out of time: the list says it may miss some
    stack.api.complete = False
    page.get_by_role("button", name="Refresh").click()
    expect(note).to_be_visible()
    expect(note).to_contain_text("some recent notifications may be missing")
    stack.api.complete = True
    page.get_by_role("button", name="Refresh").click()
    expect(note).to_be_hidden()

    page.get_by_role("link", name="Rules").click()
    expect(page.get_by_role("heading", name="Rules", exact=True)).to_be_focused()
    toggle = page.locator("#rule-list > li", has_text="My packages").get_by_label("Enabled")
    expect(toggle).to_be_checked()
    toggle.focus()
    page.keyboard.press("Space")
    expect(page.locator("#status")).to_contain_text("My packages disabled")
    assert stack.api.users["alice"].rules[0]["enabled"] is False

    page.get_by_role("button", name="Delete My packages").click()
    confirm = page.get_by_role("button", name="Yes, delete")
    expect(confirm).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#rule-list > li")).to_have_count(0)
    expect(page.get_by_role("heading", name="Rules")).to_be_focused()
    assert stack.api.users["alice"].rules == []
    clean(probe)


def test_links_in_mails_and_chat_summaries_open_their_view(
        page: Any, stack: Stack, probe: PageProbe) -> None:
    """The UI is one page with #/ routes: the links the senders write land there."""
    from fmn.delivery.email import rule_url
    from fmn.delivery.irc import summary_line
    from fmn.delivery.matrix import summary_notice

    sign_in(page, stack)
    rule = stack.api.users["alice"].rules[0]
    item = page.locator("#rule-list > li", has_text=rule["name"])
    # a mail's "why you got this" link, opened afresh (a click in a mail client)
    page.goto("about:blank")
    page.goto(rule_url(stack.url, rule["id"]))
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    expect(page.get_by_role("heading", name="Rules", exact=True)).to_be_visible()
    expect(item).to_have_attribute("aria-current", "true")
    # IRC's and Matrix's "N more notifications" links
    for link in (summary_line(3, stack.url, "alice").rsplit(" ", 1)[1],
                 summary_notice(3, stack.url)[0].rsplit(" ", 1)[1]):
        page.goto("about:blank")
        page.goto(link)
        expect(page.locator("body")).to_have_attribute("data-ready", "true")
        expect(page.get_by_role("heading", name="Recent notifications")).to_be_visible()
    # and the rule link within the page (a hash change) focuses the rule
    page.goto(rule_url(stack.url, rule["id"]))
    expect(item.locator(".item-title")).to_be_focused()
    clean(probe)


def test_destinations_verify_digest_and_errors_next_to_fields(
        page: Any, stack: Stack, probe: PageProbe) -> None:
    sign_in(page, stack)
    page.get_by_role("link", name="Destinations").click()
    expect(page.locator("#destination-list > li")).to_have_count(3)

    # A bad Matrix ID: the error sits next to the address field.
    page.get_by_label("Destination kind").select_option("matrix")
    address = page.get_by_label("Address", exact=True)
    address.fill("alice")
    page.get_by_role("button", name="Add destination").click()
    expect(address).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#dest-address-field .field-error")).to_contain_text("@name:server")
    expect(address).to_be_focused()
    address.fill("@alice:fedora.im")
    page.keyboard.press("Enter")
    matrix = page.locator("#destination-list > li", has_text="@alice:fedora.im")
    expect(matrix).to_contain_text("not verified")
    expect(address).not_to_have_attribute("aria-invalid", "true")

    # Verification: a wrong code, then the right one.
    code = matrix.get_by_label("Verification code for Matrix: @alice:fedora.im")
    code.fill("000000")
    code.press("Enter")
    expect(code).to_have_attribute("aria-invalid", "true")
    expect(matrix.locator(".field-error:visible")).to_have_text("wrong or expired code")
    code.fill(VERIFY_CODE)
    code.press("Enter")
    matrix = page.locator("#destination-list > li", has_text="@alice:fedora.im")
    expect(matrix.locator(".badge")).to_have_text("verified")

    # The digest setting.
    irc = page.locator("#destination-list > li", has_text="IRC: alice_f")
    irc.get_by_label("Batch into digests").check()
    irc.get_by_label("Send at most every (minutes)").fill("30")
    irc.get_by_label("or when this many wait").fill("20")
    irc.get_by_role("button", name="Save digest setting").click()
    expect(page.locator("#status")).to_contain_text("Digest setting saved")
    dest = [d for d in stack.api.users["alice"].destinations if d["protocol"] == "irc"][0]
    assert dest["digest"] == {"interval_s": 1800, "max_count": 20}

    # Removing a destination a rule uses: refused, said next to it.
    mail = page.locator("#destination-list > li", has_text="E-mail: alice@example.org")
    mail.get_by_role("button", name="Remove E-mail: alice@example.org").click()
    page.get_by_role("button", name="Yes, delete").click()
    expect(mail.locator(".form-error")).to_contain_text("a rule still sends to this destination")
    # ...and one no rule uses goes.
    irc.get_by_role("button", name="Remove IRC: alice_f").click()
    page.get_by_role("button", name="Yes, delete").press("Enter")
    expect(page.locator("#destination-list > li", has_text="alice_f")).to_have_count(0)
    clean(probe)


def test_rule_errors_are_shown_next_to_the_field(
        page: Any, stack: Stack, probe: PageProbe) -> None:
    sign_in(page, stack)
    page.get_by_role("button", name="New rule").click()
    page.get_by_label("Rule name").fill("Topics")
    page.get_by_label("Tracking kind").select_option("topics")
    patterns = page.get_by_label("Topic patterns")
    # No pattern yet: the preview's 400 names tracking.params.patterns.
    expect(patterns).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#preview-summary")).to_contain_text("not complete")
    patterns.fill("org.fedoraproject.prod.fas.*")
    expect(page.locator("#preview-summary")).to_contain_text("1 of the last 9 messages match")
    expect(page.locator("#preview-summary")).not_to_contain_text("time limit")
    expect(patterns).not_to_have_attribute("aria-invalid", "true")
    # a search that ran out of time says the count may be short
    stack.api.complete = False
    patterns.fill("org.fedoraproject.prod.fas.user.*")
    expect(page.locator("#preview-summary")).to_contain_text(
        "the search stopped at its time limit, there may be more")
    stack.api.complete = True
    patterns.fill("org.fedoraproject.prod.fas.*")
    expect(page.locator("#preview-summary")).not_to_contain_text("time limit")
    # Saving without a destination: the error is on the destinations group.
    page.locator("#generation-rules").get_by_label("Live feed").uncheck()
    page.get_by_role("button", name="Save rule").click()
    dests = page.locator("#generation-rules [data-field='generation_rules.0.destinations']")
    expect(dests).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#generation-rules")).to_contain_text("choose at least one destination")
    # Escape closes the editor and gives focus back.
    page.get_by_label("Rule name").press("Escape")
    expect(page.locator("#editor")).to_be_hidden()
    expect(page.get_by_role("button", name="New rule")).to_be_focused()
    clean(probe)


def test_message_content_is_text_never_markup(
        page: Any, stack: Stack, probe: PageProbe) -> None:
    stack.api.push("alice", summary=HOSTILE_SUMMARY, url="javascript:alert(2)",
                   app="<b>bodhi</b>", topic="<script>alert(3)</script>")
    sign_in(page, stack)
    first = page.locator("#feed-list > li").first
    expect(first.locator(".summary")).to_have_text(HOSTILE_SUMMARY)
    expect(first).to_contain_text("<b>bodhi</b>")
    expect(first).to_contain_text("<script>alert(3)</script>")
    assert first.locator("a").count() == 0  # a javascript: URL is no link

    # Live, after the page loaded.
    stack.api.push("alice", summary=HOSTILE_SUMMARY + " live", url="data:text/html,<b>x</b>")
    expect(page.locator("#feed-list > li").first).to_contain_text(HOSTILE_SUMMARY + " live")

    # In the preview (a sample message has the hostile summary) and the recent list.
    page.get_by_role("button", name="New rule").click()
    page.get_by_label("Tracking kind").select_option("artifacts-followed")
    page.get_by_label("Find an artifact").fill("kernel")
    page.get_by_role("button", name="Follow rpms/kernel", exact=True).click()
    page.get_by_label("WARNING").check()
    expect(page.locator("#preview-list")).to_contain_text(HOSTILE_SUMMARY)
    page.get_by_role("link", name="Recent notifications").click()
    expect(page.locator("#notification-list")).to_contain_text(HOSTILE_SUMMARY)

    page.wait_for_timeout(300)  # give a would-be onerror handler time to fire
    assert page.locator("img, script:not([src]), b").count() == 0
    assert page.locator("a[href^='javascript:'], a[href^='data:']").count() == 0
    clean(probe)


def test_every_control_is_labelled(page: Any, stack: Stack, probe: PageProbe) -> None:
    page.goto(stack.url)
    expect(page.get_by_label("Demo user")).to_be_visible()
    assert unlabelled(page) == []
    sign_in(page, stack)
    page.get_by_role("button", name="New rule").click()
    for kind in ("artifacts-owned", "artifacts-group-owned", "artifacts-followed",
                 "related-events", "users-followed", "topics"):
        page.get_by_label("Tracking kind").select_option(kind)
        assert unlabelled(page) == [], kind
    page.get_by_role("button", name="Add another delivery").click()
    expect(page.locator("#generation-rules fieldset")).to_have_count(2)
    assert unlabelled(page) == []
    for view in ("Destinations", "Recent notifications"):
        page.get_by_role("link", name=view).click()
        expect(page.get_by_role("heading", name=view, exact=True)).to_be_focused()
        assert unlabelled(page) == [], view
    # Live regions: errors, status and the feed are announced.
    assert page.locator("#alert").get_attribute("role") == "alert"
    assert page.locator("#status").get_attribute("aria-live") == "polite"
    assert page.locator("#feed-list").get_attribute("role") == "log"
    clean(probe)


def test_sign_out_returns_to_the_sign_in_page(
        page: Any, stack: Stack, probe: PageProbe) -> None:
    sign_in(page, stack, "bob")
    expect(page.locator("#rules-empty")).to_be_visible()
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(page.locator("#feed")).to_be_hidden()
    page.reload()
    expect(page.get_by_label("Demo user")).to_be_visible()
    assert re.search(r"Sign in", page.title())
    clean(probe)


def test_a_cookie_named_ours_behind_a_no_break_space_is_not_read(
        page: Any, stack: Stack, probe: PageProbe) -> None:
    # any site under a parent domain can set "\u00a0__Host-fmn_csrf" (the browser checks the
    # __Host- rules only on names that start with it); trim() made it read as ours, and
    # the page sent its value, so every save was refused
    sign_in(page, stack, "bob")
    expect(page.locator("#rules-empty")).to_be_visible()
    ours = next(c["value"] for c in page.context.cookies() if c["name"] == "fmn_csrf")
    sent = page.evaluate("""(ours) => {
        document.cookie = "fmn_csrf=; max-age=0; path=/";
        document.cookie = "\\u00a0fmn_csrf=planted; path=/";
        document.cookie = `fmn_csrf=${ours}; path=/`;  // now the newer: sent second
        return document.cookie;
    }""", ours)
    assert sent.index("\u00a0fmn_csrf=planted") < sent.index(f"fmn_csrf={ours}")
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert [csrf for method, path, csrf in stack.api.requests
            if (method, path) == ("POST", "/logout")] == [ours]
    clean(probe)


def test_the_page_does_what_a_person_means(page: Any, stack: Stack, probe: PageProbe) -> None:
    """Found by reading the page as a newcomer: each of these did something else."""
    sign_in(page, stack)

    # "Skip to content" skips to the content of this view, not to Rules, nor to nothing
    page.get_by_role("link", name="Destinations").click()
    page.get_by_role("link", name="Skip to content").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Destinations")).to_be_visible()
    assert "#main" not in page.url
    page.reload()  # the address is still the view's
    expect(page.get_by_role("heading", name="Destinations")).to_be_visible()

    # a link in a bus message is absolute http(s) or none: a relative one pointed into
    # this app
    stack.api.push("alice", summary="relative link", url="/api/v1/atom-url")
    item = page.locator("#feed-list > li", has_text="relative link")
    expect(item).to_be_visible()
    expect(item.locator("a[href]")).to_have_count(0)

    # "Send again" for an address verified meanwhile (in another tab) says so, sends
    # nothing, and shows it verified
    page.get_by_label("Destination kind").select_option("email")
    page.get_by_label("Address", exact=True).fill("later@example.org")
    page.get_by_role("button", name="Add destination").click()
    row = page.locator("#destination-list > li", has_text="later@example.org")
    expect(row).to_contain_text("not verified")
    for d in stack.api.users["alice"].destinations:
        if d["address"] == "later@example.org":
            d["verified"] = True
    resent = stack.api.users["alice"].resent
    row.get_by_role("button", name="Send again").click()
    expect(page.locator("#status")).to_contain_text("is verified already: nothing was sent")
    expect(row).not_to_contain_text("not verified")
    assert stack.api.users["alice"].resent == resent

    # an error banner stays until it is dismissed (it stayed for good, and moving on
    # must not hide an error nobody read)
    page.route("**/api/v1/destinations", lambda route: route.abort())
    page.get_by_role("link", name="Rules").click()
    page.get_by_role("link", name="Destinations").click()
    alert = page.locator("#alert")
    expect(alert).to_contain_text("Could not load your destinations")
    page.unroute("**/api/v1/destinations")
    page.get_by_role("link", name="Rules").click()
    expect(alert).to_contain_text("Could not load your destinations")
    alert.get_by_role("button", name="Dismiss").click()
    expect(alert).to_be_empty()

    # Escape in a search box with text clears the text, not the whole edit
    page.get_by_role("button", name="New rule").click()
    page.get_by_label("Rule name").fill("Kept")
    apps = page.get_by_label("Filter the applications list")
    apps.fill("bod")
    apps.press("Escape")
    expect(page.locator("#editor")).to_be_visible()
    expect(page.get_by_label("Rule name")).to_have_value("Kept")

    # a double click on Save saves one rule
    before = len(stack.api.users["alice"].rules)
    page.get_by_role("button", name="Save rule").dblclick()
    expect(page.locator("#rule-list > li", has_text="Kept")).to_have_count(1)
    assert len(stack.api.users["alice"].rules) == before + 1

    # the list's Enabled switch and an open editor of the same rule agree
    rule = page.locator("#rule-list > li", has_text="Kept")
    rule.get_by_role("button", name="Edit Kept").click()
    rule.get_by_label("Enabled").uncheck()
    expect(page.locator("#status")).to_contain_text("Kept disabled")
    page.get_by_role("button", name="Save rule").click()
    expect(page.locator("#editor")).to_be_hidden()
    saved = next(r for r in stack.api.users["alice"].rules if r["name"] == "Kept")
    assert saved["enabled"] is False

    # what the server says of the account is shown: it was ignored
    expect(page.locator("#account-note")).to_be_hidden()
    stack.api.users["alice"].enabled = False
    stack.api.users["alice"].publish_pending = True
    stack.api.users["alice"].account_blocked = True
    page.reload()
    note = page.locator("#account-note")
    expect(note).to_contain_text("An administrator has turned your notifications off")
    expect(note).to_contain_text("Your last change is saved but not yet in force")
    expect(note).to_contain_text("Your Fedora account is locked or deleted")
    stack.api.users["alice"].enabled = True
    stack.api.users["alice"].publish_pending = False
    stack.api.users["alice"].account_blocked = False

    # a sign-out that fails says so, and the person stays signed in
    page.route("**/logout", lambda route: route.abort())
    page.get_by_role("button", name="Sign out").click()
    expect(page.locator("#alert")).to_contain_text("Could not sign out")
    expect(page.locator("#account-name")).to_have_text("alice")
    page.unroute("**/logout")
    probe.errors.clear()  # the aborted request, logged by the browser
    clean(probe)


def test_an_earlier_users_late_answers_change_nothing_for_the_next(
        page: Any, stack: Stack, probe: PageProbe) -> None:
    """alice's destination add is answered only after she signed out and bob signed in.

    Its answer, a 401, signed bob out of the page (his session still valid), and its error
    was written into bob's destination form; her form also stayed blocked for him.
    """
    sign_in(page, stack)
    held: list[Any] = []
    page.route("**/api/v1/destinations",
               lambda route: held.append(route) if route.request.method == "POST"
               else route.continue_())
    page.get_by_role("link", name="Destinations").click()
    page.get_by_label("Destination kind").select_option("email")
    page.get_by_label("Address", exact=True).fill("slow@example.org")
    add = page.get_by_role("button", name="Add destination")
    add.click()
    while not held:
        page.wait_for_timeout(20)
    expect(add).to_have_attribute("aria-disabled", "true")  # busy, and says so
    add.click(force=True)  # a second press while the first is out sends nothing
    page.wait_for_timeout(200)
    assert len(held) == 1

    # one form busy leaves the other free: a rule saves meanwhile
    page.get_by_role("link", name="Rules").click()
    page.get_by_role("button", name="New rule").click()
    page.get_by_label("Rule name").fill("Meanwhile")
    page.get_by_role("button", name="Save rule").click()
    expect(page.locator("#rule-list > li", has_text="Meanwhile")).to_have_count(1)

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_label("Demo user").fill("bob")
    page.get_by_role("button", name="Sign in as this user").click()
    expect(page.locator("#account-name")).to_have_text("bob")
    held[0].fulfill(status=401, content_type="application/json",
                    body='{"error": "not_signed_in", "detail": "Sign in first.",'
                         ' "field": "address"}')
    page.unroute("**/api/v1/destinations")
    page.wait_for_timeout(300)
    expect(page.locator("#account-name")).to_have_text("bob")
    expect(page.get_by_role("heading", name="Sign in")).to_be_hidden()
    page.get_by_role("link", name="Destinations").click()
    expect(page.locator("#destination-form-error")).to_be_hidden()
    expect(page.locator("#destination-form .field-error:visible")).to_have_count(0)

    # bob's own add goes through: alice's request left the form free
    page.get_by_label("Destination kind").select_option("email")
    page.get_by_label("Address", exact=True).fill("bob@example.org")
    page.get_by_role("button", name="Add destination").click()
    expect(page.locator("#destination-list > li", has_text="bob@example.org")).to_have_count(1)
    assert not any(d["address"] == "slow@example.org"
                   for d in stack.api.users["bob"].destinations)
    clean(probe)


def test_the_account_note_follows_each_change(page: Any, stack: Stack, probe: PageProbe) -> None:
    """A change saved but not yet in force was said only at sign-in, not after the change."""
    sign_in(page, stack)
    note = page.locator("#account-note")
    expect(note).to_be_hidden()
    stack.api.users["alice"].publish_pending = True
    page.get_by_role("button", name="New rule").click()
    page.get_by_label("Rule name").fill("Pending")
    page.get_by_role("button", name="Save rule").click()
    expect(note).to_contain_text("Your last change is saved but not yet in force")
    stack.api.users["alice"].publish_pending = False
    rule = page.locator("#rule-list > li", has_text="Pending")
    rule.get_by_label("Enabled").uncheck()
    expect(note).to_be_hidden()
    clean(probe)


def test_an_open_edit_drops_a_destination_removed_meanwhile_and_only_that(
        page: Any, stack: Stack, probe: PageProbe) -> None:
    """A rule edit kept, unseen, a destination removed in the Destinations view, and the
    save was refused.  The pruning drops only what was removed on this page: a list that
    failed to load changes no rule."""
    sign_in(page, stack)
    by_protocol = {d["protocol"]: d["id"] for d in stack.api.users["alice"].destinations}

    page.get_by_role("button", name="New rule").click()
    page.get_by_label("Rule name").fill("Pruned")
    page.get_by_role("checkbox", name="IRC: alice_f (not verified)").check()
    page.get_by_role("checkbox", name="Live feed").check()
    page.get_by_role("link", name="Destinations").click()
    row = page.locator("#destination-list > li", has_text="IRC: alice_f")
    row.get_by_role("button", name="Remove IRC: alice_f").click()
    row.get_by_role("button", name="Yes, delete").click()
    expect(page.locator("#status")).to_contain_text("IRC: alice_f removed")
    page.get_by_role("link", name="Rules").click()
    expect(page.locator("#editor")).to_be_visible()
    expect(page.get_by_role("checkbox", name="IRC: alice_f (not verified)")).to_have_count(0)
    page.get_by_role("button", name="Save rule").click()
    expect(page.locator("#editor")).to_be_hidden()
    saved = next(r for r in stack.api.users["alice"].rules if r["name"] == "Pruned")
    assert saved["generation_rules"][0]["destinations"] == [by_protocol["sse"]]

    # the list fails to load: an open edit keeps what its rule had
    page.get_by_role("button", name="Edit My packages").click()
    page.route("**/api/v1/destinations", lambda route: route.abort())
    page.get_by_role("link", name="Destinations").click()
    expect(page.locator("#alert")).to_contain_text("Could not load your destinations")
    page.unroute("**/api/v1/destinations")
    page.get_by_role("link", name="Rules").click()
    page.get_by_role("button", name="Save rule").click()
    expect(page.locator("#editor")).to_be_hidden()
    kept = next(r for r in stack.api.users["alice"].rules if r["name"] == "My packages")
    assert sorted(kept["generation_rules"][0]["destinations"]) \
        == sorted([by_protocol["sse"], by_protocol["email"]])
    probe.errors.clear()  # the aborted request, logged by the browser
    clean(probe)


def test_a_401_signs_out_and_leaves_no_error_for_the_next_person(
        page: Any, stack: Stack, probe: PageProbe) -> None:
    """alice's session ended on the server; her destination add got a 401: the page
    signed out, then drew her error into the form bob found on signing in."""
    sign_in(page, stack)
    page.route("**/api/v1/destinations", lambda route: route.fulfill(
        status=401, content_type="application/json",
        body='{"error": "not_signed_in", "detail": "Sign in first.", "field": "address"}')
        if route.request.method == "POST" else route.continue_())
    page.get_by_role("link", name="Destinations").click()
    page.get_by_label("Destination kind").select_option("email")
    page.get_by_label("Address", exact=True).fill("x@example.org")
    page.get_by_role("button", name="Add destination").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.unroute("**/api/v1/destinations")
    page.get_by_label("Demo user").fill("bob")
    page.get_by_role("button", name="Sign in as this user").click()
    expect(page.locator("#account-name")).to_have_text("bob")
    page.get_by_role("link", name="Destinations").click()
    expect(page.locator("#destination-form .field-error:visible")).to_have_count(0)
    expect(page.get_by_label("Address", exact=True)).not_to_have_attribute("aria-invalid",
                                                                            "true")
    clean(probe)


def test_a_late_account_read_does_not_undo_a_newer_one(
        page: Any, stack: Stack, probe: PageProbe) -> None:
    sign_in(page, stack)
    held: list[Any] = []

    def first_held(route: Any) -> None:
        if held:
            route.continue_()
        else:  # the first change's read: answered now, delivered after the second's
            held.append((route, route.fetch()))

    note = page.locator("#account-note")
    stack.api.users["alice"].publish_pending = True
    page.route("**/api/v1/me", first_held)
    page.get_by_role("button", name="New rule").click()
    page.get_by_label("Rule name").fill("One")
    page.get_by_role("button", name="Save rule").click()
    while not held:
        page.wait_for_timeout(20)
    stack.api.users["alice"].publish_pending = False  # in force now
    page.locator("#rule-list > li", has_text="One").get_by_label("Enabled").uncheck()
    expect(page.locator("#status")).to_contain_text("One disabled")
    page.wait_for_timeout(200)
    route, answer = held[0]
    route.fulfill(response=answer)
    page.wait_for_timeout(300)
    expect(note).to_be_hidden()
    clean(probe)


def test_a_list_answered_for_the_account_is_not_taken_for_one(
        page: Any, stack: Stack, probe: PageProbe) -> None:
    sign_in(page, stack)
    note = page.locator("#account-note")
    stack.api.users["alice"].publish_pending = True
    page.get_by_role("button", name="New rule").click()
    page.get_by_label("Rule name").fill("One")
    page.get_by_role("button", name="Save rule").click()
    expect(note).to_be_visible()
    # a later read answered with a list: the account, and its note, stay as they were
    page.route("**/api/v1/me", lambda route: route.fulfill(
        status=200, content_type="application/json", body='[{"name": "mallory"}]'))
    page.locator("#rule-list > li", has_text="One").get_by_label("Enabled").uncheck()
    expect(page.locator("#status")).to_contain_text("One disabled")
    page.wait_for_timeout(300)
    expect(note).to_be_visible()
    expect(page.locator("#account-name")).to_have_text("alice")
    # and at start, the page says the server did not say who you are
    page.reload()
    expect(page.locator("#alert")).to_contain_text("did not say who you are")
    expect(page.locator("#account")).to_be_hidden()
    clean(probe)


def test_bus_text_shows_without_bidi_overrides_or_control_characters(
        page: Any, stack: Stack, probe: PageProbe) -> None:
    """Text from the bus (a live event, a stored one, a preview) cannot reorder how it
    reads: "gnp.exe" in a right-to-left override reads "exe.png"."""
    stack.api.push("alice", summary="FEDORA-2024-1 \u202e\u2066gnp.exe\u2069 was\u2028"
                   "\u200fapproved\x1b[8m", app="bo\u202edhi", topic="org.\x00fedora")
    sign_in(page, stack)
    first = page.locator("#feed-list > li").first
    expect(first.locator(".summary")).to_have_text("FEDORA-2024-1 gnp.exe was approved[8m")
    expect(first.locator(".app")).to_have_text("bodhi")
    expect(first.locator(".topic")).to_have_text("org.fedora")
    clean(probe)


def test_artifact_and_group_names_show_without_bidi_overrides(
        page: Any, stack: Stack, probe: PageProbe) -> None:
    """Ownership comes from the bus and Fedora's sources: a package named
    "fmn\u202egpj.exe" must not read "fmnexe.jpg" in the rule editor."""
    sign_in(page, stack)
    body = ('{"direct": [{"type": "rpms", "name": "fmn\\u202egpj.exe"}], "groups": ['
            '{"name": "ops\\u2066x", "artifacts": [{"type": "rpms", "name": "b\\u200fc"}]}], '
            '"refreshed": {"reconcile": null, "live": null, "accounts": null}, "account": null}')
    page.route("**/api/v1/ownership", lambda route: route.fulfill(
        status=200, content_type="application/json", body=body))
    page.route("**/api/v1/artifacts?*", lambda route: route.fulfill(
        status=200, content_type="application/json",
        body='[{"type": "rpms", "name": "ker\\u202enel"}]'))
    page.get_by_role("button", name="New rule").click()
    expect(page.locator("#owned-direct")).to_contain_text("rpms/fmngpj.exe")
    expect(page.locator(".owned-group")).to_contain_text("Through opsx (1): rpms/bc")
    shown = [page.locator(where).first.text_content() or ""
             for where in ("#owned-direct", ".owned-group")]
    page.get_by_label("Tracking kind").select_option("artifacts-followed")
    page.get_by_label("Find an artifact").fill("ker")
    page.get_by_role("button", name="Follow rpms/kernel", exact=True).click()
    expect(page.locator("#artifact-chosen")).to_contain_text("rpms/kernel")
    shown.append(page.locator("#artifact-chosen").text_content() or "")
    assert not any(c in text for text in shown for c in "\u202e\u2066\u200f")
    clean(probe)
