"""Shared pieces of the browser tests: paths, the stack under test, the page probe."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fake_api import FakeApi

from fmn.delivery.feed import MemoryFeed
from fmn.local.http import ServerHandle

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "var" / "test-artifacts"
STREAM_PATH = ROOT / "functions" / "sse" / "stream.py"
CHROMIUM = Path(os.environ.get("FMN_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@dataclass
class Stack:
    url: str
    feed_url: str
    api: FakeApi
    feed: MemoryFeed
    servers: list[ServerHandle] = field(default_factory=list)
    #: set: the feed endpoint ends every open stream; cleared: streams stay open again
    feed_closing: threading.Event | None = None


@dataclass
class PageProbe:
    """What a page did that a test may want to refuse: dialogs, script errors."""

    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


WEBAPP_PATH = ROOT / "webapp" / "app.py"
#: the mail the real web app sent (verification links), by its URL
MAILERS: dict[str, Any] = {}


def start_real_web(port: int, secret: str, feed: MemoryFeed, feed_base_url: str,
                   db_path: Path) -> tuple[str, Any]:
    """The real Chalice app (``webapp/app.py``, ``serve_local``) on in-memory services:
    SQLite, the memory snapshot store, ``feed``, memory mailer/IRC/keys, development login.

    Returns ``(url, server)``; ``GET /api/v1/me`` answers ``feed_url`` on ``feed_base_url``
    (``FMN_FEED_URL``).  The preview is the "unavailable" stand-in (no window here).
    """
    from fmn import db
    from fmn.delivery.irc_client import MemoryIrcLink
    from fmn.delivery.mailers import MemoryMailer
    from fmn.local.stack import load_module
    from fmn.prefs import Preferences
    from fmn.settings import Settings
    from fmn.snapshot import compile_snapshot
    from fmn.snapshot.store import MemorySnapshotStore
    from fmn.web.service import unavailable_preview
    from fmn.web.verify import MemoryKeys

    webapp = load_module(WEBAPP_PATH, "fmn_webapp_browser")
    engine = db.make_engine(f"sqlite:///{db_path}")
    db.upgrade(engine)
    store = MemorySnapshotStore()
    store.publish(compile_snapshot(Preferences()))

    settings = Settings(secret_key=secret, web_url=f"http://127.0.0.1:{port}",
                        feed_url=feed_base_url, env="development", dev_login=True)
    mailer = MemoryMailer()
    server = webapp.serve_local(settings, port,
                                engine=engine, store=store, feed=feed,
                                previewer=unavailable_preview, mailer=mailer,
                                irc_link=MemoryIrcLink(), keys=MemoryKeys())
    MAILERS[server.url] = mailer
    return server.url, server
