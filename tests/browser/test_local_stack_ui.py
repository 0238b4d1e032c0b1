"""The web UI on the whole local stack (what ``make run`` serves), in Debian's Chromium.

``fmn up``'s stack runs in-process on the real services (moto server, Redis,
RabbitMQ, the bridge, every function, the web app, the feed endpoint).  A
new user signs in with the development login, adds their live feed as a
destination and a rule for koji build messages, watches the preview list
the recent ones, then a matching message is replayed onto the fedmsg bus:
bridge, SQS, match, the sse sender, Redis, the feed endpoint, the page.
Its screenshot is the README's: ``FMN_UPDATE_SCREENSHOT=1`` copies it to
docs/screenshot.png (tests never change tracked files otherwise).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import ARTIFACTS, ROOT, PageProbe
from local_stack import run_local_stack
from shared_data import MESSAGES
from test_ui import clean, sign_in, unlabelled

from fmn.local import replay
from fmn.local.stack import LocalStack
from fmn.metadata import parse

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

TOPIC = "org.fedoraproject.prod.buildsys.build.state.change"


@pytest.fixture
def local(aws_env: str, tmp_path: Path) -> Iterator[LocalStack]:
    yield from run_local_stack(aws_env, tmp_path, "ui", users=50)


class _Url:
    def __init__(self, url: str) -> None:
        self.url = url


def test_a_new_rule_routes_a_replayed_message_to_the_live_feed(
        page: Any, local: LocalStack, probe: PageProbe, tmp_path: Path) -> None:
    lines = [ln for ln in (MESSAGES / "fedmsg.jsonl").read_bytes().splitlines()
             if TOPIC.encode() in ln]
    # the preview window holds what the stack matched: the koji messages, replayed once
    warmup = tmp_path / "warmup.jsonl"
    warmup.write_bytes(b"\n".join(lines[1:]) + b"\n")
    replay.replay_fedmsg(warmup, local.options.fedmsg_endpoint, None)
    deadline = time.monotonic() + 60
    while local.status()["counters"]["matched"] < len(lines) - 1:
        assert time.monotonic() < deadline, local.status()
        time.sleep(0.2)

    sign_in(page, _Url(local.web.url), "dora")  # type: ignore[arg-type]
    expect(page.locator("#feed-state")).to_have_text("live")

    page.get_by_role("link", name="Destinations").click()
    page.get_by_label("Destination kind").select_option("sse")
    page.get_by_role("button", name="Add destination").click()
    expect(page.locator("#destination-list")).to_contain_text("Live feed")

    page.get_by_role("link", name="Rules").click()
    page.get_by_role("button", name="New rule").click()
    page.get_by_label("Rule name").fill("Koji builds")
    page.get_by_label("Tracking kind").select_option("topics")
    page.get_by_label("Topic patterns").fill(TOPIC)
    page.locator("#generation-rules").get_by_label("Live feed").check()
    # the preview: the koji messages the stack has seen
    expect(page.locator("#preview-summary")).to_have_text(
        re.compile(rf"^[1-9]\d* of the last {len(lines) - 1} messages match"))
    assert unlabelled(page) == []
    page.get_by_role("button", name="Save rule").click()
    expect(page.locator("#rule-list > li", has_text="Koji builds")).to_be_visible()

    # a matching message on the bus reaches the page through the whole pipeline
    one = tmp_path / "one.jsonl"
    one.write_bytes(lines[0] + b"\n")
    summary = parse(lines[0]).summary
    assert summary
    replay.replay_fedmsg(one, local.options.fedmsg_endpoint, None)
    expect(page.locator("#feed-list > li").first).to_contain_text(summary, timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "local-stack-live-feed.png"))
    if os.environ.get("FMN_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(ARTIFACTS / "local-stack-live-feed.png",
                        ROOT / "docs" / "screenshot.png")
    clean(probe)
