"""Browser tests: Playwright driving Debian's Chromium (``/usr/bin/chromium``), headless.

Never Playwright's own browsers (``playwright install`` needs the network):
the project's setup installs the ``chromium`` Debian package.  Without it, or
without the ``playwright`` package, these tests are skipped.

The stack under test: the fake web API (``fake_api.py``, serving the real UI
from ``webapp/static``) and the real feed endpoint (``functions/sse/stream.py``)
on the same in-memory feed, each under uvicorn on a free port of 127.0.0.1.
Every test saves a screenshot to ``var/test-artifacts/``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_api import SECRET, FakeApi, seed_demo
from harness import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    STREAM_PATH,
    WEBAPP_PATH,
    PageProbe,
    Stack,
    start_real_web,
)

from fmn.delivery.feed import MemoryFeed
from fmn.local.http import ServerHandle, serve
from fmn.local.stack import free_port, load_module
from fmn.settings import Settings


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives the web UI in headless Chromium")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.browser)


def _feed_endpoint() -> tuple[MemoryFeed, int, ServerHandle, threading.Event]:
    """The real feed endpoint on a memory feed, allowing the web UI's future port."""
    stream = load_module(STREAM_PATH, "fmn_sse_stream_browser")
    feed = MemoryFeed()
    web_port = free_port()
    options = stream.StreamOptions(ping_s=5, block_s=0.2, retry_ms=500,
                                   allow_origins=(f"http://127.0.0.1:{web_port}",))
    feed_app = stream.create_app(Settings(secret_key=SECRET), options, reader=feed.reader(0.02))
    return (feed, web_port, serve(feed_app, name="feed", on_stop=feed_app.state.close_streams),
            feed_app.state.streams_closing)


@pytest.fixture
def stack() -> Iterator[Stack]:
    """The fake API with demo data and the real feed endpoint, both running."""
    feed, web_port, feed_server, feed_closing = _feed_endpoint()
    api = FakeApi(feed, feed_server.url)
    seed_demo(api)
    try:
        web_server = serve(api.app, port=web_port, name="web")
    except BaseException:
        feed_server.stop()
        raise
    try:
        yield Stack(web_server.url, feed_server.url, api, feed, [web_server, feed_server],
                    feed_closing=feed_closing)
    finally:
        for server in (web_server, feed_server):
            server.stop()


@pytest.fixture
def real_stack(tmp_path: Path) -> Iterator[Stack]:
    """The real web app (``webapp/app.py``) and the real feed endpoint on one memory feed."""
    if not WEBAPP_PATH.exists():
        pytest.skip("webapp/app.py is not there yet")
    feed, web_port, feed_server, feed_closing = _feed_endpoint()
    try:
        url, web_server = start_real_web(web_port, SECRET, feed, feed_server.url,
                                         tmp_path / "web.sqlite")
    except BaseException:
        feed_server.stop()
        raise
    try:
        yield Stack(url, feed_server.url, None, feed,  # type: ignore[arg-type]
                    feed_closing=feed_closing)
    finally:
        web_server.stop()
        feed_server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium per test module.  Not per session: Playwright's sync API keeps an
    event loop running in this thread while it is open, and later tests (and asyncio.run
    in them) must not run under it."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                      args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def probe() -> PageProbe:
    return PageProbe()


def _artifact_name(nodeid: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid.split("::", 1)[-1])[:120]


@pytest.fixture
def page(browser: Any, probe: PageProbe, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh browser context and page; its screenshot lands in var/test-artifacts/."""
    context = browser.new_context(viewport={"width": 1440, "height": 960}, locale="en-US",
                                  timezone_id="UTC", reduced_motion="reduce")
    context.set_default_timeout(10_000)
    page = context.new_page()

    def on_dialog(dialog: Any) -> None:
        probe.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.on("pageerror", lambda exc: probe.errors.append(str(exc)))
    # An API's 4xx is logged as "Failed to load resource": expected (401 before sign-in,
    # 400 for an incomplete rule); any other console error is not.
    page.on("console", lambda msg: probe.errors.append(msg.text)
            if msg.type == "error" and not msg.text.startswith("Failed to load resource")
            else None)
    try:
        yield page
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        try:
            page.screenshot(path=str(ARTIFACTS / f"{_artifact_name(request.node.nodeid)}.png"),
                            full_page=True)
        finally:
            context.close()
