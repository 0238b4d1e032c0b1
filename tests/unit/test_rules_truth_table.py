"""Rule semantics (spec sections 2 and 3), one row per case, for both engines.

Each case is one user, ``alice``, with one rule, against one generated
message.  The table says whether alice is notified.  Every tracking kind and
every filter has rows that pass and rows that fail, and the three examples
from the original FMN announcement (spec section 3) have their own rows.
"""

from __future__ import annotations

from typing import Any

import pytest

from fmn.matcher import make_matcher
from fmn.message import Message
from fmn.prefs import parse_document

pytestmark = pytest.mark.unit

OWNERS = {
    "rpms": {
        "kernel": {"users": ["alice"], "groups": ["kernel-maint"]},
        "glibc": {"users": ["bob"], "groups": ["toolchain"]},
    },
    "containers": {"httpd": {"users": ["alice"], "groups": []}},
    "modules": {"nodejs": {"users": [], "groups": ["nodejs-sig"]}},
    "flatpaks": {"firefox": {"users": ["alice"], "groups": []}},
}


def prefs(tracking: dict[str, Any], filters: dict[str, Any] | None = None, *,
          user_enabled: bool = True, rule_enabled: bool = True, verified: bool = True,
          protocol: str = "irc") -> dict[str, Any]:
    address = None if protocol == "sse" else "alice"
    return {
        "version": 1,
        "users": [{
            "name": "alice", "enabled": user_enabled,
            "destinations": [{"id": "d1", "protocol": protocol, "address": address,
                              "verified": verified, "digest": None}],
            "rules": [{"id": "r1", "name": "rule", "enabled": rule_enabled,
                       "tracking": tracking,
                       "generation_rules": [{"filters": filters or {}, "destinations": ["d1"]}]}],
        }],
        "owners": OWNERS,
        "groups": {"kernel-maint": ["alice", "bob"]},
    }


def msg(**kw: Any) -> Message:
    base: dict[str, Any] = {"id": "m1",
                            "topic": "org.fedoraproject.prod.buildsys.build.state.change",
                            "app_name": "Koji", "agent_name": None, "severity": 20}
    body = kw.pop("body", {})
    base.update(kw)
    return Message.from_metadata(base, body)


OWNED = {"kind": "artifacts-owned", "params": {}}
RELATED = {"kind": "related-events", "params": {}}
TOPICS_ALL = {"kind": "topics", "params": {"patterns": ["*"]}}

CASES: list[tuple[str, dict[str, Any], Message, bool]] = [
    # -- tracking kinds ------------------------------------------------------
    ("owned rpm", prefs(OWNED), msg(rpms=["kernel"]), True),
    ("owned container", prefs(OWNED), msg(containers=["httpd"]), True),
    ("owned flatpak", prefs(OWNED), msg(flatpaks=["firefox"]), True),
    ("owned: someone else's rpm", prefs(OWNED), msg(rpms=["glibc"]), False),
    ("owned: same name, other type", prefs(OWNED), msg(modules=["kernel"]), False),
    ("owned: group ownership is not direct ownership", prefs(OWNED),
     msg(modules=["nodejs"]), False),
    ("owned: no artifacts", prefs(OWNED), msg(usernames=["alice"]), False),
    ("group-owned: owner group listed",
     prefs({"kind": "artifacts-group-owned", "params": {"groups": ["kernel-maint"]}}),
     msg(rpms=["kernel"]), True),
    ("group-owned: module of a listed group",
     prefs({"kind": "artifacts-group-owned", "params": {"groups": ["x", "nodejs-sig"]}}),
     msg(modules=["nodejs"]), True),
    ("group-owned: owner group not listed",
     prefs({"kind": "artifacts-group-owned", "params": {"groups": ["toolchain"]}}),
     msg(rpms=["kernel"]), False),
    ("group-owned: membership is not ownership",
     prefs({"kind": "artifacts-group-owned", "params": {"groups": ["kernel-maint"]}}),
     msg(rpms=["glibc"]), False),
    ("followed: same type and name",
     prefs({"kind": "artifacts-followed",
            "params": {"artifacts": [{"type": "rpms", "name": "glibc"}]}}),
     msg(rpms=["glibc", "gcc"]), True),
    ("followed: same name, other type",
     prefs({"kind": "artifacts-followed",
            "params": {"artifacts": [{"type": "containers", "name": "glibc"}]}}),
     msg(rpms=["glibc"]), False),
    ("followed: unowned artifacts count too",
     prefs({"kind": "artifacts-followed",
            "params": {"artifacts": [{"type": "flatpaks", "name": "gimp"}]}}),
     msg(flatpaks=["gimp"]), True),
    ("related: my name in usernames", prefs(RELATED), msg(usernames=["bob", "alice"]), True),
    ("related: not mine", prefs(RELATED), msg(usernames=["bob"]), False),
    ("related: agent alone is not usernames", prefs(RELATED, {"my_actions": True}),
     msg(agent_name="alice"), False),
    ("users-followed: one of them",
     prefs({"kind": "users-followed", "params": {"usernames": ["carol", "bob"]}}),
     msg(usernames=["bob"]), True),
    ("users-followed: none of them",
     prefs({"kind": "users-followed", "params": {"usernames": ["carol"]}}),
     msg(usernames=["bob", "alice"]), False),
    ("topics: glob matches",
     prefs({"kind": "topics", "params": {"patterns": ["org.fedoraproject.*.fas.user.*"]}}),
     msg(topic="org.fedoraproject.prod.fas.user.create"), True),
    ("topics: second glob matches",
     prefs({"kind": "topics", "params": {"patterns": ["nope", "*.bodhi.update.*"]}}),
     msg(topic="org.fedoraproject.prod.bodhi.update.comment"), True),
    ("topics: case-sensitive",
     prefs({"kind": "topics", "params": {"patterns": ["*.FAS.*"]}}),
     msg(topic="org.fedoraproject.prod.fas.user.create"), False),
    ("topics: character class",
     prefs({"kind": "topics", "params": {"patterns": ["org.fedoraproject.[ps]*.fas.*"]}}),
     msg(topic="org.fedoraproject.stg.fas.user.create"), True),
    # -- enabled / verified ------------------------------------------------
    ("disabled user", prefs(OWNED, user_enabled=False), msg(rpms=["kernel"]), False),
    ("disabled rule", prefs(OWNED, rule_enabled=False), msg(rpms=["kernel"]), False),
    ("unverified destination", prefs(OWNED, verified=False), msg(rpms=["kernel"]), False),
    # -- filters -------------------------------------------------------------
    ("applications: case-insensitive", prefs(TOPICS_ALL, {"applications": ["koji", "bodhi"]}),
     msg(app_name="Koji"), True),
    ("applications: not listed", prefs(TOPICS_ALL, {"applications": ["bodhi"]}),
     msg(app_name="Koji"), False),
    ("applications: no app name", prefs(TOPICS_ALL, {"applications": ["koji"]}),
     msg(app_name=None), False),
    ("excluded_applications: listed", prefs(TOPICS_ALL, {"excluded_applications": ["KOJI"]}),
     msg(app_name="koji"), False),
    ("excluded_applications: not listed", prefs(TOPICS_ALL, {"excluded_applications": ["x"]}),
     msg(app_name="koji"), True),
    ("excluded_applications: no app name", prefs(TOPICS_ALL, {"excluded_applications": ["x"]}),
     msg(app_name=None), True),
    ("severities absent: DEBUG excluded", prefs(TOPICS_ALL), msg(severity=10), False),
    ("severities absent: INFO passes", prefs(TOPICS_ALL), msg(severity=20), True),
    ("severities absent: ERROR passes", prefs(TOPICS_ALL), msg(severity=40), True),
    ("severities absent: an unknown level passes", prefs(TOPICS_ALL), msg(severity=50), True),
    ("severities: DEBUG listed", prefs(TOPICS_ALL, {"severities": ["DEBUG"]}),
     msg(severity=10), True),
    ("severities: INFO not listed", prefs(TOPICS_ALL, {"severities": ["ERROR", "WARNING"]}),
     msg(severity=20), False),
    ("topic filter: matches", prefs(TOPICS_ALL, {"topic": "*.buildsys.build.state.change"}),
     msg(), True),
    ("topic filter: does not match", prefs(TOPICS_ALL, {"topic": "*.bodhi.*"}), msg(), False),
    ("my_actions absent: my own action", prefs(RELATED),
     msg(usernames=["alice"], agent_name="alice"), False),
    ("my_actions false: my own action", prefs(RELATED, {"my_actions": False}),
     msg(usernames=["alice"], agent_name="alice"), False),
    ("my_actions false: someone else's action", prefs(RELATED, {"my_actions": False}),
     msg(usernames=["alice"], agent_name="bob"), True),
    ("my_actions false: no agent", prefs(RELATED, {"my_actions": False}),
     msg(usernames=["alice"]), True),
    ("my_actions true: my own action", prefs(RELATED, {"my_actions": True}),
     msg(usernames=["alice"], agent_name="alice"), True),
    ("fields: nested path equals", prefs(TOPICS_ALL, {"fields": {"update.status": ["stable"]}}),
     msg(body={"update": {"status": "stable"}}), True),
    ("fields: nested path differs",
     prefs(TOPICS_ALL, {"fields": {"update.status": ["stable"]}}),
     msg(body={"update": {"status": "testing"}}), False),
    ("fields: missing path", prefs(TOPICS_ALL, {"fields": {"update.status": ["stable"]}}),
     msg(body={"update": "stable"}), False),
    ("fields: true is not 1", prefs(TOPICS_ALL, {"fields": {"new": [1]}}),
     msg(body={"new": True}), False),
    ("fields: 1 is not true", prefs(TOPICS_ALL, {"fields": {"new": [True]}}),
     msg(body={"new": 1}), False),
    ("fields: 1 equals 1.0", prefs(TOPICS_ALL, {"fields": {"new": [1]}}),
     msg(body={"new": 1.0}), True),
    ("fields: null listed", prefs(TOPICS_ALL, {"fields": {"x": [None]}}),
     msg(body={"x": None}), True),
    ("fields: object value", prefs(TOPICS_ALL, {"fields": {"x": [{"a": [1]}]}}),
     msg(body={"x": {"a": [1]}}), True),
    ("fields: every path must pass",
     prefs(TOPICS_ALL, {"fields": {"a": [1], "b": [2]}}), msg(body={"a": 1, "b": 3}), False),
    ("fields: array index", prefs(TOPICS_ALL, {"fields": {"builds.0.nvr": ["x-1"]}}),
     msg(body={"builds": [{"nvr": "x-1"}]}), True),
    ("all filters together pass",
     prefs(OWNED, {"applications": ["koji"], "excluded_applications": ["bodhi"],
                   "severities": ["INFO"], "topic": "*.build.*", "my_actions": False,
                   "fields": {"new": [1]}}),
     msg(rpms=["kernel"], agent_name="bob", body={"new": 1}), True),
    # -- the three examples of the original FMN announcement (spec section 3) --
    ("example 1: my package built on koji",
     prefs(OWNED, {"topic": "*.buildsys.build.state.change", "fields": {"new": [1]}}),
     msg(rpms=["kernel"], body={"new": 1, "old": 0}), True),
    ("example 1: my package failed on koji",
     prefs(OWNED, {"topic": "*.buildsys.build.state.change", "fields": {"new": [1]}}),
     msg(rpms=["kernel"], body={"new": 3, "old": 0}), False),
    ("example 2: request against my package",
     prefs(OWNED, {"applications": ["pagure", "distgit"]}, protocol="email"),
     msg(rpms=["kernel"], app_name="Pagure", agent_name="bob",
         topic="org.fedoraproject.prod.pagure.pull-request.new"), True),
    ("example 2: not a request",
     prefs(OWNED, {"applications": ["pagure", "distgit"]}, protocol="email"),
     msg(rpms=["kernel"]), False),
    ("example 3: new upstream version of my package",
     prefs(OWNED, {"applications": ["the-new-hotness", "anitya"]}),
     msg(rpms=["kernel"], app_name="the-new-hotness",
         topic="org.fedoraproject.prod.hotness.update.bug.file"), True),
    ("example 3: upstream release of someone else's package",
     prefs(OWNED, {"applications": ["the-new-hotness", "anitya"]}),
     msg(rpms=["glibc"], app_name="anitya"), False),
]


@pytest.mark.parametrize("engine", ["naive", "indexed"])
@pytest.mark.parametrize(("doc", "message", "notified"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_truth_table(engine: str, doc: dict[str, Any], message: Message, notified: bool) -> None:
    result = make_matcher(engine, parse_document(doc)).match(message)
    assert bool(result) is notified
    if notified:
        assert [n.to_json() for n in result] == [{
            "message_id": "m1", "user": "alice", "protocol": result[0].protocol,
            "address": "alice", "rules": ["r1"]}]


@pytest.mark.parametrize("engine", ["naive", "indexed"])
def test_one_notification_per_destination_listing_every_rule(engine: str) -> None:
    doc = prefs(OWNED)
    user = doc["users"][0]
    user["destinations"].append({"id": "d2", "protocol": "sse", "address": None,
                                 "verified": True, "digest": None})
    user["rules"] += [
        {"id": "r10", "name": "b", "enabled": True, "tracking": RELATED,
         "generation_rules": [{"filters": {"severities": ["ERROR"]}, "destinations": ["d1"]},
                              {"filters": {}, "destinations": ["d1", "d2"]}]},
        {"id": "r2", "name": "c", "enabled": True, "tracking": TOPICS_ALL,
         "generation_rules": [{"filters": {"topic": "nope"}, "destinations": ["d2"]}]},
    ]
    out = make_matcher(engine, parse_document(doc)).match(msg(rpms=["kernel"],
                                                              usernames=["alice"]))
    assert [n.to_json() for n in out] == [
        {"message_id": "m1", "user": "alice", "protocol": "irc", "address": "alice",
         "rules": ["r1", "r10"]},
        {"message_id": "m1", "user": "alice", "protocol": "sse", "address": "alice",
         "rules": ["r10"]},
    ]


@pytest.mark.parametrize("engine", ["naive", "indexed"])
def test_output_sorted_by_user_protocol_address(engine: str) -> None:
    doc = prefs(TOPICS_ALL)
    for name in ("zoe", "bob"):
        u = {**doc["users"][0], "name": name}
        u["destinations"] = [{"id": "d1", "protocol": "email", "address": f"{name}@x.org",
                              "verified": True, "digest": None},
                             {"id": "d0", "protocol": "email", "address": f"a-{name}@x.org",
                              "verified": True, "digest": None}]
        u["rules"] = [{**u["rules"][0], "generation_rules": [
            {"filters": {}, "destinations": ["d1", "d0"]}]}]
        doc["users"].append(u)
    out = make_matcher(engine, parse_document(doc)).match(msg())
    assert [(n.user, n.protocol, n.address) for n in out] == [
        ("alice", "irc", "alice"), ("bob", "email", "a-bob@x.org"), ("bob", "email", "bob@x.org"),
        ("zoe", "email", "a-zoe@x.org"), ("zoe", "email", "zoe@x.org")]
