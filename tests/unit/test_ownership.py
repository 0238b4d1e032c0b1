"""The ownership core without I/O: source shapes, differences, plausibility, bus messages,
and an ownership change applied to an in-memory snapshot through its change log."""

from __future__ import annotations

import json
from typing import Any

import pytest
from shared_data import MESSAGES

from fmn.matcher import IndexedMatcher
from fmn.message import Message
from fmn.metadata import parse
from fmn.ownership.data import (
    InvalidSource,
    parse_account,
    parse_members_page,
    parse_nick,
    parse_owner_map,
    project_owners,
)
from fmn.ownership.diff import (
    OwnershipDelta,
    affected_users,
    diff_groups,
    diff_owners,
    implausible,
)
from fmn.ownership.live import classify
from fmn.prefs import Owners, parse_document
from fmn.snapshot import compile_snapshot
from fmn.snapshot.live import LiveSnapshot
from fmn.snapshot.store import MemorySnapshotStore

pytestmark = pytest.mark.unit


def test_owner_map_users_groups_orphans_and_unknown_namespaces() -> None:
    data = parse_owner_map({"rpms": {"kernel": ["jforbes", "@kernel-maint", "orphan"],
                                     "dead": ["orphan"], "bad\nname": ["x"],
                                     "ok": ["a", 7, "a", "b\x00c", "c\u2066d"],
                                     # read as "fmnexe.jpg" where shown
                                     "fmn\u202egpj.exe": ["x"]},
                            "container": {"toolbox": ["debarshir"]},
                            "tests": {"x": ["y"]}})
    assert data.owners["rpms"]["kernel"] == Owners(("jforbes",), ("kernel-maint",))
    assert "dead" not in data.owners["rpms"]  # nobody maintains it
    assert data.owners["rpms"]["ok"].users == ("a",)
    assert data.owners["containers"]["toolbox"].users == ("debarshir",)
    assert data.skipped == 5
    with pytest.raises(InvalidSource):
        parse_owner_map({"tests": {}})
    with pytest.raises(InvalidSource):
        parse_owner_map(["rpms"])


def test_pagure_project_access_levels() -> None:
    project = {"access_users": {"owner": ["a"], "admin": ["b"], "commit": ["c"],
                                "collaborator": ["d"], "ticket": ["e"]},
               "access_groups": {"admin": [], "commit": ["g"], "ticket": ["h"]}}
    assert project_owners(project) == Owners(("a", "b", "c", "d"), ("g",))


@pytest.mark.parametrize("uri,expected", [
    ("irc:/nick", ("irc", "nick")), ("irc://irc.libera.chat/nick", ("irc", "nick")),
    ("matrix:/Someone", ("matrix", "@someone:fedora.im")),
    ("matrix://matrix.org/someone", ("matrix", "@someone:matrix.org")),
    ("plainnick", ("irc", "plainnick")), ("irc:/bad nick", None), ("mailto:/x", None),
    ("matrix:/a\nb", None)])
def test_nicks(uri: str, expected: Any) -> None:
    assert parse_nick(uri) == expected


def test_fasjson_user_and_members_page() -> None:
    account = parse_account({"result": {"username": "alice", "emails": ["a@x.org", "not mail"],
                                        "ircnicks": ["irc:/al", "bad nick uri:/"],
                                        "locked": False}}, "alice")
    assert account.emails == ("a@x.org",) and account.ircnicks == ("irc:/al",)
    with pytest.raises(InvalidSource):
        parse_account({"result": {"username": "mallory"}}, "alice")
    names, nxt = parse_members_page({"result": [{"username": "a"}, {"username": "b\n"}],
                                     "page": {"next_page": "http://x/?page_number=2"}}, "g")
    assert names == ["a"] and nxt == "http://x/?page_number=2"


def test_diff_and_affected_users() -> None:
    old = {"rpms": {"a": Owners(("x",)), "b": Owners(("y", "z")), "gone": Owners(("w",))}}
    new = {"rpms": {"a": Owners(("x",)), "b": Owners(("z", "v")), "new": Owners((), ("g",))}}
    delta = OwnershipDelta()
    diff_owners(old, new, delta)
    assert delta.owners["rpms"] == {"b": Owners(("z", "v")), "new": Owners((), ("g",)),
                                    "gone": None}
    diff_groups({"g": ("m",), "h": ("n",)}, {"g": ("m", "o")}, delta)
    assert delta.groups == {"g": ("m", "o"), "h": None}
    assert affected_users(delta, old, {"g": ("m",), "h": ("n",)}) == {"y", "v", "w", "o", "n"}
    assert len(delta.changes(chunk=2)) == 3


def test_implausible() -> None:
    assert implausible("map", 100, 0, 0.1) is not None
    assert implausible("map", 100, 89, 0.1) is not None
    assert implausible("map", 100, 91, 0.1) is None
    assert implausible("map", 10, 5, 0.1) is None  # five may always go
    assert implausible("map", 0, 3, 0.1) is None


def _record(file: str, topic: str) -> Message:
    for line in (MESSAGES / file).read_text().splitlines():
        if json.loads(line)["topic"] == topic:
            return parse(line.encode())
    raise LookupError(topic)


def test_classify_the_shared_messages() -> None:
    fm, fedmsg = "fedora-messaging.jsonl", "fedmsg.jsonl"
    new = classify(_record(fedmsg, "org.fedoraproject.prod.pagure.project.new"))
    assert new is not None and ("rpms", "arachne-pnr") in new.artifacts
    # pagure.io and the fedora-infra namespace are not dist-git...
    assert classify(_record(fm, "org.fedoraproject.prod.pagure.project.new")) is None
    assert classify(_record(fedmsg, "io.pagure.dev.pagure.project.user.added")) is None
    # ...unless a test maps it
    added = classify(_record(fm, "org.fedoraproject.prod.pagure.project.user.access.updated"),
                     {"fedora-infra": "rpms"})
    assert added is not None
    change = added.artifacts[("rpms", "fedocal-messages")]
    assert change.apply(None) == Owners(("pingou", "newu"))
    removed = classify(_record(fm, "org.fedoraproject.prod.fas.group.member.removed"))
    assert removed is not None and removed.members == {"developers": (set(), {"testuser"})}
    ipa = classify(_record(fm, "org.fedoraproject.prod.ipa.group_add_member.v1"))
    assert ipa is not None and ipa.members == {"developers": ({"testing"}, set())}
    old = classify(_record(fedmsg, "org.fedoraproject.stg.fas.group.member.remove"))
    assert old is not None and old.members == {"ambassadors": (set(), {"ralph"})}
    retired = classify(_record(fedmsg, "org.fedoraproject.prod.pkgdb.package.update.status"))
    assert retired is not None and retired.artifacts[("rpms", "libvmime07")].deleted
    assert classify(_record(fm, "org.fedoraproject.prod.buildsys.build.state.change")) is None


def test_an_ownership_change_reaches_a_live_snapshot() -> None:
    doc = {"version": 1, "owners": {"rpms": {"glibc": {"users": ["bob"], "groups": []}},
                                    "containers": {}, "modules": {}, "flatpaks": {}},
           "groups": {}, "users": [{"name": n, "enabled": True, "destinations": [
               {"id": "f", "protocol": "sse", "address": None, "verified": True,
                "digest": None}], "rules": [
               {"id": "r", "name": "mine", "enabled": True,
                "tracking": {"kind": "artifacts-owned", "params": {}},
                "generation_rules": [{"filters": {}, "destinations": ["f"]}]}]}
               for n in ("alice", "bob")]}
    store = MemorySnapshotStore()
    store.publish(compile_snapshot(parse_document(doc)))
    live = LiveSnapshot(store, poll_interval=0)
    matcher = IndexedMatcher(live)
    build = Message(id="1", topic="t", rpms=frozenset({"glibc"}))
    assert {n.user for n in matcher.match(build)} == {"bob"}
    delta = OwnershipDelta()
    delta.owners["rpms"]["glibc"] = Owners(("alice",))
    for change in delta.changes():
        store.publish_ownership(change)
    assert {n.user for n in matcher.match(build)} == {"alice"}
    store.publish_ownership({"owners": {"rpms": {"glibc": None}}, "groups": {}})
    store.publish_ownership({"owners": {"no-such-type": {}}})  # skipped, loudly
    assert matcher.match(build) == []
    assert live.bad_changes == 1


def _forked_project() -> dict[str, Any]:
    for line in (MESSAGES / "fedmsg.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["topic"] == "org.fedoraproject.stg.pagure.project.forked":
            project: dict[str, Any] = record["msg"]["project"]
            return project
    raise LookupError("forked")


@pytest.mark.parametrize("kind,extra", [
    ("user.added", {"new_user": "friend", "new_access": "commit"}),
    ("deleted", {}),
])
def test_a_fork_of_a_package_is_not_the_package(kind: str, extra: dict[str, Any]) -> None:
    fork = _forked_project()  # the shared data's forks/puiterwijk/rpms/ipsilon
    assert (fork["namespace"], fork["name"], fork["parent"] is not None) == (
        "rpms", "ipsilon", True)
    package = {**fork, "parent": None, "fullname": "rpms/ipsilon"}
    only_parent = {**fork, "fullname": "rpms/ipsilon"}
    only_fullname = {**fork, "parent": None}

    def message(project: dict[str, Any], topic: str = "org.fedoraproject.prod") -> Message:
        return Message(id="m", topic=f"{topic}.pagure.project.{kind}",
                       body={"project": project, "agent": "puiterwijk", **extra})

    for project in (fork, only_parent, only_fullname):
        assert classify(message(project)) is None
        assert classify(message(project), {"rpms": "rpms", "fedora-infra": "rpms"}) is None
    update = classify(message(package))
    assert update is not None and list(update.artifacts) == [("rpms", "ipsilon")]
    # pagure.io publishes as io.pagure.*: a project named like an rpm there is no package
    assert classify(message(package, "io.pagure.prod")) is None


def test_a_fork_answered_for_a_dist_git_project_is_refused() -> None:
    from fmn.ownership.sources import DistGit, SourceError

    class Response:
        status_code = 200

        def __init__(self, doc: Any) -> None:
            self.doc = doc
            self.content = json.dumps(doc).encode()

        def json(self) -> Any:
            return self.doc

    fork = _forked_project()
    session = type("S", (), {"get": lambda self, url, timeout: Response(fork)})()
    with pytest.raises(SourceError, match="fork"):
        DistGit("https://src.example", session).project("rpms", "ipsilon")
    package = {**fork, "parent": None, "fullname": "rpms/ipsilon"}
    session = type("S", (), {"get": lambda self, url, timeout: Response(package)})()
    assert DistGit("https://src.example", session).project("rpms", "ipsilon") is not None
