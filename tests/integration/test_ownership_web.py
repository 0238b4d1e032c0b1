"""The "My packages" view of the web API: what a person owns, through which group, how fresh.

Through Chalice's test client on PostgreSQL and the real Redis (the web API
tests' fixtures).  Ownership arrives the way it does in production: a
reconcile writes it (here from an owner map in dist-git's shape, with group
members), the account sync stores what FAS offers as destinations.
"""

from __future__ import annotations

from typing import Any

import pytest
from test_webapp_api import App, Session, app, database, engine  # noqa: F401

from fmn.ownership.data import Account, Ownership, parse_owner_map
from fmn.ownership.publish import publish_accounts
from fmn.ownership.reconcile import reconcile_ownership

pytestmark = pytest.mark.integration


@pytest.fixture
def web(request: pytest.FixtureRequest) -> App:
    """The web API tests' configured app (their ``app`` fixture)."""
    found: App = request.getfixturevalue("app")
    return found


def test_my_packages_shows_direct_and_group_ownership_and_freshness(web: App) -> None:
    alice = Session("alice")
    before = alice.get("/api/v1/ownership").json_body
    assert before["direct"] == [] and before["refreshed"]["reconcile"] is None

    def fetch() -> Ownership:
        data = parse_owner_map({"rpms": {"kernel": ["alice", "@kernel-maint"],
                                         "glibc": ["bob"], "perf": ["@kernel-maint"]},
                                "container": {"toolbox": ["alice"]}})
        data.groups = {"kernel-maint": ("alice", "bob")}
        return data

    assert reconcile_ownership(web.engine, web.store, fetch).ok
    got: dict[str, Any] = alice.get("/api/v1/ownership").json_body
    assert got["direct"] == [{"type": "containers", "name": "toolbox"},
                             {"type": "rpms", "name": "kernel"}]
    assert got["groups"] == [{"name": "kernel-maint", "artifacts": [
        {"type": "rpms", "name": "kernel"}, {"type": "rpms", "name": "perf"}]}]
    assert got["refreshed"]["reconcile"] is not None and got["account"] is None
    assert Session("carol").get("/api/v1/ownership").json_body["direct"] == []


def test_an_email_fas_vouches_for_is_verified_at_once_not_a_nick(web: App) -> None:
    alice = Session("alice")
    publish_accounts(web.engine, web.store, [Account(
        "alice", emails=("alice@fedoraproject.org",), ircnicks=("irc:/alice_",))])
    offered = alice.get("/api/v1/ownership").json_body["account"]["destinations"]
    assert offered == [{"protocol": "email", "address": "alice@fedoraproject.org"},
                       {"protocol": "irc", "address": "alice_"}]
    r = alice.post("/api/v1/destinations", {"protocol": "email",
                                            "address": "alice@fedoraproject.org"})
    assert r.status_code == 201 and r.json_body["verification"] == "verified"
    assert r.json_body["verified"] is True
    # an IRC nick in the account is free text anyone may type: it proves itself
    r = alice.post("/api/v1/destinations", {"protocol": "irc", "address": "alice_"})
    assert r.status_code == 201 and r.json_body["verification"] == "code"
    assert r.json_body["verified"] is False
    assert web.irc.sent  # a code went out
