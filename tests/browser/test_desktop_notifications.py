"""Opt-in desktop notifications: each live-feed event asks the browser to show one.

Chromium runs headless with the notifications permission granted to the page's
origin (``context.grant_permissions``).  A spy installed before the page's
scripts wraps the real ``Notification`` constructor (the real one still runs)
and records what the page asked to show.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fake_api import HOSTILE_SUMMARY
from harness import PageProbe, Stack

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

SPY_JS = """(() => {
  const Real = window.Notification;
  if (!Real) return;
  window.__shown = [];
  class Spy extends Real {
    constructor(title, options) {
      super(title, options);
      window.__shown.push({title, body: (options || {}).body, tag: (options || {}).tag});
    }
  }
  Object.defineProperty(Spy, 'permission', {get: () => Real.permission});
  Spy.requestPermission = (...args) => Real.requestPermission(...args);
  window.Notification = Spy;
})();"""


@pytest.fixture
def granted(browser: Any, stack: Stack, probe: PageProbe) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-US")
    context.grant_permissions(["notifications"], origin=stack.url.rstrip("/"))
    context.add_init_script(SPY_JS)
    context.set_default_timeout(10_000)
    page = context.new_page()
    page.on("pageerror", lambda exc: probe.errors.append(str(exc)))
    try:
        yield page
    finally:
        context.close()


def sign_in(page: Any, stack: Stack, user: str = "alice") -> None:
    page.goto(stack.url)
    page.get_by_label("Demo user").fill(user)
    page.get_by_role("button", name="Sign in as this user").click()
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    expect(page.locator("#feed-state")).to_have_text("live")


def shown(page: Any) -> list[dict[str, Any]]:
    return list(page.evaluate("() => window.__shown"))


def test_a_live_event_asks_for_a_desktop_notification_once_opted_in(
        granted: Any, stack: Stack, probe: PageProbe) -> None:
    page = granted
    sign_in(page, stack)
    toggle = page.get_by_label("Desktop notifications while this page is open")
    expect(toggle).to_be_visible()
    expect(toggle).not_to_be_checked()
    # Off by default: a live event shows in the feed only
    stack.api.push("alice", summary="before opting in")
    expect(page.locator("#feed-list > li").first).to_contain_text("before opting in")
    assert shown(page) == []

    toggle.check()
    stack.api.push("alice", summary="a build completed", app="koji")
    expect(page.locator("#feed-list > li").first).to_contain_text("a build completed")
    page.wait_for_function("() => window.__shown.length === 1")
    (note,) = shown(page)
    assert note["title"] == "[koji] Fedora Notifications"
    assert note["body"] == "a build completed"
    assert note["tag"].startswith("live-")

    # hostile text is handed over as text (the API never renders markup), cut short
    stack.api.push("alice", summary=HOSTILE_SUMMARY, app="<b>x</b>")
    page.wait_for_function("() => window.__shown.length === 2")
    assert shown(page)[1]["title"] == "[<b>x</b>] Fedora Notifications"
    assert shown(page)[1]["body"] == HOSTILE_SUMMARY[:300]

    # the choice is remembered across a reload; turning it off stops them.  The feed
    # replays its history before its "live" marker: only what follows is news, at once
    # (no clock is compared).
    page.reload()
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    expect(page.get_by_label("Desktop notifications while this page is open")).to_be_checked()
    expect(page.locator("#feed-state")).to_have_text("live")
    expect(page.locator("#feed-list > li")).not_to_have_count(0)  # the history, replayed
    page.wait_for_timeout(500)
    assert shown(page) == []  # history is no news
    stack.api.push("alice", summary="after the reload")
    page.wait_for_function("() => window.__shown.length === 1")
    assert shown(page)[0]["body"] == "after the reload"
    page.get_by_label("Desktop notifications while this page is open").uncheck()
    stack.api.push("alice", summary="after opting out")
    expect(page.locator("#feed-list > li").first).to_contain_text("after opting out")
    assert len(shown(page)) == 1
    assert probe.errors == []


def drop_feed_connection(page: Any, stack: Stack) -> None:
    """End the page's feed response and refuse its reconnections (the network gone)
    until :func:`restore_feed_connection`: the browser then resumes from its last event."""
    page.route(lambda url: url.startswith(stack.feed_url), lambda route: route.abort())
    closing = stack.feed_closing
    assert closing is not None
    closing.set()
    expect(page.locator("#feed-state")).to_have_text("reconnecting")
    closing.clear()


def restore_feed_connection(page: Any, stack: Stack) -> None:
    page.unroute_all()
    expect(page.locator("#feed-state")).to_have_text("live")


def test_events_missed_while_the_connection_was_down_are_news_a_few_or_one_summary(
        granted: Any, stack: Stack, probe: PageProbe) -> None:
    page = granted
    sign_in(page, stack)
    page.get_by_label("Desktop notifications while this page is open").check()
    stack.api.push("alice", summary="live before the drop")
    page.wait_for_function("() => window.__shown.length === 1")

    # a few missed: each its own notification, once the feed has caught up
    drop_feed_connection(page, stack)
    for n in range(2):
        stack.api.push("alice", summary=f"missed {n}")
    restore_feed_connection(page, stack)
    page.wait_for_function("() => window.__shown.length === 3")
    assert [s["body"] for s in shown(page)[1:]] == ["missed 0", "missed 1"]

    # many missed: one summary, not a burst
    drop_feed_connection(page, stack)
    for n in range(5):
        stack.api.push("alice", summary=f"away {n}")
    restore_feed_connection(page, stack)
    expect(page.locator("#feed-list > li").first).to_contain_text("away 4")
    page.wait_for_function("() => window.__shown.length === 4")
    summary = shown(page)[3]
    assert summary["title"] == "Fedora Notifications"
    assert summary["body"] == "5 new notifications while the connection was down"

    # and what comes after is live again, one by one
    stack.api.push("alice", summary="live after")
    page.wait_for_function("() => window.__shown.length === 5")
    assert shown(page)[4]["body"] == "live after"
    assert probe.errors == []
