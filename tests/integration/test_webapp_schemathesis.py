"""schemathesis against the real web app: no 5xx, and every answer as described.

The app runs on a real local port (``serve_local``) over SQLite and the
in-memory snapshot store, feed, mailer, IRC link and verification keys;
schemathesis reads its OpenAPI description (the one ``/api/v1/openapi.json``
serves) and sends, per operation, a bounded number of generated requests,
valid and invalid, once signed in (session cookie and CSRF header) and once
not.  Each answer must be no server error, have a documented status and
content type, and match its schema; a request the description refuses must
be refused.  ``FMN_SCHEMATHESIS_EXAMPLES`` (default 2) sets the number of
examples per operation and mode: `make test-api` raises it for a longer hunt.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, settings  # noqa: E402

from fmn.local.stack import load_module  # noqa: E402
from fmn.web.openapi import document  # noqa: E402

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = int(os.environ.get("FMN_SCHEMATHESIS_EXAMPLES", "2"))
webapp = load_module(ROOT / "webapp" / "app.py", "fmn_webapp_schemathesis")


class Live:
    def __init__(self, url: str, document: dict[str, Any]) -> None:
        self.url = url
        self.document = document
        self.headers: dict[str, dict[str, str]] = {"anonymous": {}}

    def sign_in(self, name: str) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as c:
            c.get("/dev/login")
            r = c.post("/dev/login", json={"user": name},
                       headers={"x-csrf-token": c.cookies["fmn_csrf"]})
            assert r.status_code == 200, r.text
            jar = {k: c.cookies[k] for k in ("fmn_session", "fmn_csrf")}
        self.headers["signed-in"] = {
            "Cookie": "; ".join(f"{k}={v}" for k, v in jar.items()),
            "X-CSRF-Token": jar["fmn_csrf"]}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    from fmn import db
    from fmn.delivery.feed import MemoryFeed
    from fmn.delivery.irc_client import MemoryIrcLink
    from fmn.delivery.mailers import MemoryMailer
    from fmn.prefs import Preferences
    from fmn.settings import Settings
    from fmn.snapshot import compile_snapshot
    from fmn.snapshot.store import MemorySnapshotStore
    from fmn.web.service import unavailable_preview
    from fmn.web.verify import MemoryKeys

    engine = db.make_engine(f"sqlite:///{tmp_path_factory.mktemp('st') / 'fmn.sqlite'}")
    db.upgrade(engine)
    store = MemorySnapshotStore()
    store.publish(compile_snapshot(Preferences()))
    settings_ = Settings(secret_key="schemathesis-secret", dev_login=True,
                         admins=frozenset({"root"}))
    server = webapp.serve_local(settings_, 0, engine=engine, store=store, feed=MemoryFeed(),
                                previewer=unavailable_preview, mailer=MemoryMailer(),
                                irc_link=MemoryIrcLink(), keys=MemoryKeys())
    try:
        here = Live(server.url, document(webapp.OPERATIONS))
        assert httpx.get(f"{server.url}/api/v1/openapi.json").json() == here.document
        here.sign_in("root")  # an admin: the admin routes are reached too
        yield here
    finally:
        server.stop()
        webapp.reset()


# The description is made from the app's declarations, without serving it (no I/O);
# the live server must then serve exactly this one.
schema = schemathesis.openapi.from_dict(document(webapp.OPERATIONS))
# The session cookie and CSRF header are the test's to send (signed in, or not at all):
# not parameters to generate or leave out.
schema.config.generation.update(with_security_parameters=False)


# "A schema-valid request is accepted" cannot hold: the server also checks what JSON
# Schema cannot say (a rule names the user's own destinations, a rule's size in bytes,
# a signed token's signature), and refuses those with 400.  Every other check runs:
# no server error, documented status, content type and headers, answers matching their
# schema, schema-invalid requests refused, undeclared methods answered 405.
EXCLUDED = [schemathesis.checks.positive_data_acceptance]
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck),
                    phases=[Phase.explicit, Phase.generate])


@schema.parametrize()
@SETTINGS
def test_the_api_keeps_its_description_signed_out(case: Any, live: Live) -> None:
    case.call_and_validate(base_url=live.url, headers=live.headers["anonymous"], timeout=30,
                           excluded_checks=EXCLUDED)


@schema.parametrize()
@SETTINGS
def test_the_api_keeps_its_description_signed_in(case: Any, live: Live) -> None:
    case.call_and_validate(base_url=live.url, headers=live.headers["signed-in"], timeout=30,
                           excluded_checks=EXCLUDED)
