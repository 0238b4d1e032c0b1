"""The full reconcile against dist-git and FASJSON served locally, in their real shapes.

dist-git's owner map and Pagure API and FASJSON's members and users come from
a Starlette app under uvicorn (``tests/upstreams.py``), the preferences from
a SQLite database, the snapshot from the real Redis; a ``LiveSnapshot`` reads
it as a warm match function does.  What a person would notice: after a
reconcile the next message about a package goes to its new maintainers and no
longer to the removed ones; a failing, truncated, empty or shrunken upstream
changes nothing at all (database, snapshot, routing) and says why.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from services import redis_client
from upstreams import FASJSON_BASE, Upstreams, fasjson_user

from fmn import db
from fmn.local.http import serve
from fmn.matcher import IndexedMatcher
from fmn.message import Message
from fmn.ownership import store as ostore
from fmn.ownership.reconcile import reconcile_accounts, reconcile_ownership
from fmn.ownership.sources import (
    DistGit,
    FasJson,
    RetryPolicy,
    fetch_ownership,
    make_session,
)
from fmn.snapshot import sync
from fmn.snapshot.live import LiveSnapshot
from fmn.snapshot.store import RedisSnapshotStore

pytestmark = pytest.mark.integration

PEOPLE = ("alice", "bob", "carol", "dave")
FILLER = {f"filler-{i:03d}": ["zed"] for i in range(40)}


def prefs_doc() -> dict[str, Any]:
    """Four users, each with "My packages" on their live feed; no ownership yet."""
    return {"version": 1, "owners": {"rpms": {}, "containers": {}, "modules": {},
                                     "flatpaks": {}}, "groups": {},
            "users": [{"name": n, "enabled": True, "destinations": [
                {"id": "feed", "protocol": "sse", "address": None, "verified": True,
                 "digest": None}],
                "rules": [{"id": "mine", "name": "My packages", "enabled": True,
                           "tracking": {"kind": "artifacts-owned", "params": {}},
                           "generation_rules": [{"filters": {}, "destinations": ["feed"]}]},
                          {"id": "grp", "name": "Kernel team", "enabled": True,
                           "tracking": {"kind": "artifacts-group-owned",
                                        "params": {"groups": ["kernel-maint"]}},
                           "generation_rules": [{"filters": {}, "destinations": ["feed"]}]}
                          if n == "carol" else None]}
                      for n in PEOPLE]}


def owner_map() -> dict[str, dict[str, list[str]]]:
    return {"rpms": {"kernel": ["alice", "@kernel-maint"], "glibc": ["bob"],
                     "python3": ["carol", "orphan", "@python-sig"], **FILLER},
            "container": {"fedora-toolbox": ["alice"]}, "modules": {}, "flatpaks": {}}


@pytest.fixture
def env(tmp_path: Path) -> Iterator[SimpleNamespace]:
    up = Upstreams(owner_map=owner_map(),
                   groups={"kernel-maint": ["alice", "bob", "xavier"],
                           "python-sig": ["carol", "yann", "zoe"]},
                   users={"alice": fasjson_user("alice", ["alice@example.org"],
                                                ["irc:/alice_", "matrix:/alice"]),
                          "bob": fasjson_user("bob", ["bob@example.org"], []),
                          "carol": fasjson_user("carol", ["carol@example.org"],
                                                ["matrix://matrix.org/carol"]),
                          "dave": fasjson_user("dave", ["dave@example.org"], ["dave"])})
    doc = prefs_doc()
    for u in doc["users"]:
        u["rules"] = [r for r in u["rules"] if r is not None]
    engine = db.make_engine(f"sqlite:///{tmp_path / 'prefs.sqlite'}")
    db.upgrade(engine)
    db.import_document(engine, doc)
    client = redis_client()
    prefix = f"fmn-test:{uuid.uuid4().hex}:"
    store = RedisSnapshotStore(client, prefix)
    sync.publish_full(engine, store)
    live = LiveSnapshot(store, poll_interval=0)
    with serve(up.app(), name="upstreams") as server:
        session = make_session("none", RetryPolicy(backoff_s=0))  # retried at once
        yield SimpleNamespace(
            up=up, engine=engine, store=store, live=live, matcher=IndexedMatcher(live),
            distgit=DistGit(server.url, session, 10),
            fasjson=FasJson(server.url + FASJSON_BASE, session, 10))
    keys = list(client.scan_iter(match=store.prefix + "*"))
    if keys:
        client.delete(*keys)


def reconcile(env: SimpleNamespace, **kwargs: Any) -> Any:
    return reconcile_ownership(env.engine, env.store,
                               lambda: fetch_ownership(env.distgit, env.fasjson,
                                                       ostore.tracked_groups(env.engine)),
                               **kwargs)


def routed(env: SimpleNamespace, rpm: str) -> set[str]:
    message = Message(id=f"build-{rpm}", topic="org.fedoraproject.prod.buildsys.build.state."
                      "change", app_name="koji", rpms=frozenset({rpm}))
    return {n.user for n in env.matcher.match(message)}


def log_length(env: SimpleNamespace) -> int:
    sid = env.store.current_id()
    return int(env.store.client.xlen(env.store.prefix + f"{sid}:changes"))


def test_reconcile_applies_only_the_difference_and_reroutes(env: SimpleNamespace) -> None:
    assert routed(env, "glibc") == set()
    first = reconcile(env)
    assert first.ok, first.reason
    assert first.fetched == 44 and first.artifacts_changed == 44 and first.groups_changed == 2
    owners = ostore.load_ownership(env.engine)
    assert owners.owners["rpms"]["python3"].users == ("carol",)  # "orphan" is nobody
    assert owners.owners["rpms"]["kernel"].groups == ("kernel-maint",)
    assert owners.owners["containers"]["fedora-toolbox"].users == ("alice",)
    # three members, two to a page: both pages were read
    assert set(owners.groups["python-sig"]) == {"carol", "yann", "zoe"}
    assert routed(env, "glibc") == {"bob"}
    assert routed(env, "kernel") == {"alice", "carol"}  # carol through kernel-maint's rule

    # A day in dist-git: bob hands glibc to alice, carol gets a new package.
    env.up.owner_map["rpms"]["glibc"] = ["alice"]
    env.up.owner_map["rpms"]["python-newthing"] = ["carol"]
    before = log_length(env)
    second = reconcile(env)
    assert second.ok and second.artifacts_changed == 2 and second.groups_changed == 0
    assert second.users_affected == 3  # alice, bob and carol
    assert log_length(env) - before == second.snapshot_changes == 1
    assert routed(env, "glibc") == {"alice"}
    assert routed(env, "python-newthing") == {"carol"}

    third = reconcile(env)
    assert third.ok and third.artifacts_changed == 0 and third.snapshot_changes == 0
    states = ostore.sync_states(env.engine)
    assert states["ownership"]["error"] is None and states["ownership"]["succeeded_at"]


@pytest.mark.parametrize("mode", ["fail", "cut", "short", "lose-page"])
def test_a_broken_upstream_changes_nothing(env: SimpleNamespace, mode: str) -> None:
    assert reconcile(env).ok
    env.up.owner_map["rpms"]["glibc"] = ["alice"]  # a change that must not land
    env.up.groups["python-sig"] = ["carol", "yann", "zoe", "new-member"]
    before, log_before = ostore.load_ownership(env.engine), log_length(env)
    env.up.mode = mode
    report = reconcile(env)
    assert not report.ok
    assert "fetch failed" in (report.reason or "")
    assert ostore.load_ownership(env.engine) == before
    assert log_length(env) == log_before
    assert routed(env, "glibc") == {"bob"}
    state = ostore.sync_states(env.engine)["ownership"]
    assert state["error"] == report.reason and state["attempted_at"] != state["succeeded_at"] \
        or state["error"] == report.reason
    print(f"{mode}: {report.reason}")


@pytest.mark.parametrize("shrink", ["empty", "half"])
def test_an_implausible_owner_map_is_refused(env: SimpleNamespace, shrink: str) -> None:
    assert reconcile(env).ok
    rpms = env.up.owner_map["rpms"]
    if shrink == "empty":
        env.up.owner_map = {"rpms": {}, "container": {}, "modules": {}, "flatpaks": {}}
    else:
        for name in list(rpms)[: len(rpms) // 2]:
            del rpms[name]
    before = ostore.load_ownership(env.engine)
    report = reconcile(env)
    assert not report.ok and "refused" in (report.reason or "")
    assert ostore.load_ownership(env.engine) == before
    assert routed(env, "glibc") == {"bob"}
    # the same fetch passes when the operator allows the drop
    if shrink == "half":
        assert reconcile(env, max_drop=0.9).ok


def test_one_artifact_from_the_pagure_api(env: SimpleNamespace) -> None:
    owners = env.distgit.project("rpms", "kernel")
    assert owners is not None
    assert owners.users == ("alice",) and owners.groups == ("kernel-maint",)
    assert env.distgit.project("rpms", "no-such-package") is None


def test_accounts_feed_destinations_and_locked_ones_stop_receiving(
        env: SimpleNamespace) -> None:
    assert reconcile(env).ok
    env.up.owner_map["rpms"]["dave-tool"] = ["dave"]
    assert reconcile(env).ok
    assert routed(env, "dave-tool") == {"dave"}

    report = reconcile_accounts(env.engine, env.store, env.fasjson.user, workers=2)
    assert report.ok and report.accounts_changed == 4 and report.users_affected == 0
    alice = ostore.account_of(env.engine, "alice")
    assert alice is not None and alice.destinations() == [
        ("email", "alice@example.org"), ("irc", "alice_"), ("matrix", "@alice:fedora.im")]
    carol = ostore.account_of(env.engine, "carol")
    assert carol is not None and ("matrix", "@carol:matrix.org") in carol.destinations()

    env.up.users["dave"]["result"]["locked"] = True
    report = reconcile_accounts(env.engine, env.store, env.fasjson.user, workers=2)
    assert report.ok and report.accounts_changed == 1 and report.users_affected == 1
    assert report.snapshot_changes == 1
    assert routed(env, "dave-tool") == set()
    # a full publish keeps dave out too
    sync.publish_full(env.engine, env.store)
    assert routed(env, "dave-tool") == set()
    # and so do his own edit in the web app (a session outlives the lock) and a save
    # published late (pending): each used to publish his rules back as they were
    from fmn.web.service import PreferencesService

    service = PreferencesService(env.engine, env.store)
    service.patch_rule("dave", "mine", {"name": "Mine"})
    assert routed(env, "dave-tool") == set()
    assert service.me("dave")["account_blocked"] is True  # the web app says why
    assert service.me("alice")["account_blocked"] is False
    dave = db.load_user(env.engine, "dave")
    assert dave is not None
    db.save_user(env.engine, dave)  # saved, not yet published
    assert sync.publish_pending(env.engine, env.store) == 1
    assert routed(env, "dave-tool") == set()

    env.up.users["dave"]["result"]["locked"] = False
    assert reconcile_accounts(env.engine, env.store, env.fasjson.user).ok
    assert routed(env, "dave-tool") == {"dave"}


def test_accounts_refused_when_upstream_fails_or_most_vanish(env: SimpleNamespace) -> None:
    assert reconcile_accounts(env.engine, env.store, env.fasjson.user).ok
    env.up.mode = "fail"
    report = reconcile_accounts(env.engine, env.store, env.fasjson.user)
    assert not report.ok and "HTTP 500" in (report.reason or "")
    env.up.mode = "ok"
    env.up.users.clear()  # every account a 404: LDAP lost, not four people leaving
    report = reconcile_accounts(env.engine, env.store, env.fasjson.user)
    assert not report.ok and "usable accounts" in (report.reason or "")
    assert not ostore.blocked_users(env.engine)


def test_groups_not_reached_in_time_keep_their_members_and_come_first_next_time(
        env: SimpleNamespace) -> None:
    assert reconcile(env).ok
    members_stamp = ostore.live_stamps(env.engine, "reconcile", ["members"])
    env.up.groups["kernel-maint"].append("newcomer")
    env.up.groups["python-sig"].append("another")
    env.up.owner_map["rpms"]["glibc"] = ["alice"]

    def after(n: int) -> Any:
        asked = iter(range(1_000))
        return lambda: next(asked) >= n  # out of time once n groups were fetched

    def partial(start_at: str | None) -> Any:
        return reconcile_ownership(env.engine, env.store, lambda: fetch_ownership(
            env.distgit, env.fasjson, ostore.tracked_groups(env.engine),
            out_of_time=after(2), start_at=start_at), start_at=start_at)

    first = partial(None)  # kernel-maint fetched (two pages), python-sig not reached
    assert first.ok and first.not_reached == 1 and first.resume_from == "python-sig"
    assert "1 groups not reached in time" in first.summary()
    members = ostore.members_of(env.engine, ["kernel-maint", "python-sig"])
    assert "newcomer" in members["kernel-maint"]
    assert set(members["python-sig"]) == {"carol", "yann", "zoe"}  # as it was, not dropped
    assert routed(env, "glibc") == {"alice"}  # the owner map was applied whole
    # the members' reconcile stamp stays: python-sig's live messages are still news
    assert ostore.live_stamps(env.engine, "reconcile", ["members"]) == members_stamp
    assert ostore.sync_states(env.engine)["ownership"]["detail"]["resume_from"] == "python-sig"

    second = partial("python-sig")  # starts with the group not reached
    assert second.ok and second.resume_from == "kernel-maint"
    assert "another" in ostore.members_of(env.engine, ["python-sig"])["python-sig"]
    assert reconcile(env).resume_from is None  # a whole fetch: nothing left over

    env.up.mode = "fail"  # a refused run keeps where the next one starts
    refused = partial("python-sig")
    assert not refused.ok and refused.resume_from == "python-sig"
    assert ostore.sync_states(env.engine)["ownership"]["detail"]["resume_from"] == "python-sig"


def test_time_is_checked_before_every_page_of_a_group(env: SimpleNamespace) -> None:
    assert reconcile(env).ok
    env.up.groups["kernel-maint"].append("newcomer")  # two pages, two to a page
    looks = iter(range(1_000))
    report = reconcile_ownership(env.engine, env.store, lambda: fetch_ownership(
        env.distgit, env.fasjson, ostore.tracked_groups(env.engine),
        out_of_time=lambda: next(looks) >= 1))  # time for one GET only
    assert report.ok and report.resume_from == "kernel-maint" and report.not_reached == 2
    # its first page was read, not applied: a group is applied whole or not at all
    assert "newcomer" not in ostore.members_of(env.engine, ["kernel-maint"])["kernel-maint"]
