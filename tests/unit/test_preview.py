"""The rule preview agrees with the naive matcher, on the fake window.

The oracle: a message is in a rule's preview exactly when the naive matcher
gives a notification for it to a single enabled user whose only rule is that
rule (enabled, every generation rule sent to one verified destination).
Rules come from the preferences generator (every tracking kind and filter,
with its ownership data) and from a truth table of edge cases; messages are
the golden Fedora messages.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest
from shared_data import golden_messages

from fmn.generate import generate_preferences
from fmn.matcher import NaiveMatcher
from fmn.message import Message
from fmn.prefs import (
    FILTER_NAMES,
    TRACKING_KINDS,
    Artifact,
    Destination,
    Filters,
    GenerationRule,
    Owners,
    Preferences,
    Rule,
    Tracking,
    User,
)
from fmn.preview import MemoryWindowStore, Ownership, PreviewIndex, record, record_many
from fmn.preview.window import MAX_BODY_BYTES, encode

pytestmark = pytest.mark.unit

MESSAGES = golden_messages()
PREFS = generate_preferences(300, seed=7)
OWNERSHIP = Ownership.from_owners(PREFS.owners)


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _oracle(rule: Rule, user: str, messages: Sequence[Message],
            prefs: Preferences = PREFS) -> list[str]:
    """The ids the naive matcher notifies the rule's user of, newest first."""
    dest = Destination(id="d", protocol="sse", address=None, verified=True)
    only = dataclasses.replace(rule, enabled=True, generation_rules=tuple(
        GenerationRule(g.filters, ("d",)) for g in rule.generation_rules))
    single = Preferences(users=(User(user, True, (dest,), (only,)),), owners=prefs.owners,
                         groups=prefs.groups)
    naive = NaiveMatcher(single)
    return [m.id for m in reversed(messages) if naive.match(m)]


def _index(messages: Sequence[Message], clock: Clock | None = None) -> PreviewIndex:
    clock = clock or Clock()
    store = MemoryWindowStore(clock=clock)
    record_many(store, messages)
    index = PreviewIndex(clock=clock)
    index.refresh(store)
    return index


INDEX = _index(MESSAGES)
RULES = [(u.name, r) for u in PREFS.users for r in u.rules]


def test_the_generated_rules_cover_every_kind_and_filter() -> None:
    kinds = {r.tracking.kind for _, r in RULES}
    assert kinds == set(TRACKING_KINDS)
    used = {name for _, r in RULES for g in r.generation_rules
            for name in FILTER_NAMES if getattr(g.filters, name) is not None}
    assert used == set(FILTER_NAMES)


@pytest.mark.parametrize("kind", TRACKING_KINDS)
def test_preview_agrees_with_the_naive_matcher_on_generated_rules(kind: str) -> None:
    rules = [(u, r) for u, r in RULES if r.tracking.kind == kind]
    fired = 0
    for user, rule in rules:
        expected = _oracle(rule, user, MESSAGES)
        got = INDEX.preview(rule, user, OWNERSHIP, limit=len(MESSAGES))
        assert [m.id for m in got.matches] == expected, (user, rule)
        assert got.count == len(expected)
        assert got.undecided == 0
        fired += bool(expected)
    assert fired, f"no generated {kind} rule matched anything: the test proves nothing"


def _rule(tracking: Tracking, *filters: Filters) -> Rule:
    return Rule("r", "edited", True, tracking,
                tuple(GenerationRule(f, ("d",)) for f in filters or (Filters(),)))


def _busiest(attr: str) -> str:
    counts: dict[str, int] = {}
    for m in MESSAGES:
        for name in getattr(m, attr):
            counts[name] = counts.get(name, 0) + 1
    return max(counts, key=lambda n: (counts[n], n))


AGENT = next(m.agent_name for m in MESSAGES if m.agent_name and m.agent_name in m.usernames)
RPM = _busiest("rpms")
EDGE_RULES = {
    "related, my actions excluded": _rule(Tracking("related-events")),
    "related, my actions kept": _rule(Tracking("related-events"), Filters(my_actions=True)),
    "related, two generation rules": _rule(
        Tracking("related-events"), Filters(applications=("BODHI",)),
        Filters(my_actions=True, severities=("DEBUG", "INFO"))),
    "followed, case-insensitive apps": _rule(
        Tracking("artifacts-followed", artifacts=(Artifact("rpms", RPM),)),
        Filters(applications=("Bodhi", "KOJI", "pagure"), my_actions=True)),
    "followed, excluded apps": _rule(
        Tracking("artifacts-followed", artifacts=(Artifact("rpms", RPM),
                                                  Artifact("containers", RPM))),
        Filters(excluded_applications=("bodhi",))),
    "topics, everything incl. debug": _rule(
        Tracking("topics", patterns=("*",)), Filters(severities=tuple(
            ("DEBUG", "INFO", "WARNING", "ERROR")), my_actions=True)),
    "topics, default severities": _rule(Tracking("topics", patterns=("*",))),
    "topics, overlapping globs and a topic filter": _rule(
        Tracking("topics", patterns=("*.bodhi.*", "org.fedoraproject.prod.*")),
        Filters(topic="*.update.*")),
    "topics, fields with true vs 1": _rule(
        Tracking("topics", patterns=("*",)),
        Filters(fields=(("new", (1,)),)), Filters(fields=(("new", (True,)),))),
    "topics, nested fields": _rule(
        Tracking("topics", patterns=("*",)),
        Filters(fields=(("update.status", ("stable", "testing")),), my_actions=True)),
    "users followed, unknown and known": _rule(
        Tracking("users-followed", usernames=("ghost", AGENT, AGENT))),
    "group owned, unknown group": _rule(
        Tracking("artifacts-group-owned", groups=("no-such-group",))),
}


@pytest.mark.parametrize("name", sorted(EDGE_RULES))
@pytest.mark.parametrize("user", [AGENT, "nobody"])
def test_preview_agrees_with_the_naive_matcher_on_edge_cases(name: str, user: str) -> None:
    rule = EDGE_RULES[name]
    expected = _oracle(rule, user, MESSAGES)
    got = INDEX.preview(rule, user, OWNERSHIP, limit=len(MESSAGES))
    assert [m.id for m in got.matches] == expected
    assert got.count == len(expected)


def test_owned_artifacts_come_from_the_ownership_data() -> None:
    owners = Preferences(owners={"rpms": {RPM: Owners(users=("alice",), groups=("team",))},
                                 "containers": {}, "modules": {}, "flatpaks": {}})
    ownership = Ownership.from_owners(owners.owners)
    mine = _rule(Tracking("artifacts-owned"))
    team = _rule(Tracking("artifacts-group-owned", groups=("team",)))
    expected = _oracle(mine, "alice", MESSAGES, owners)
    assert expected
    assert [m.id for m in INDEX.preview(mine, "alice", ownership, 1000).matches] == expected
    assert [m.id for m in INDEX.preview(team, "bob", ownership, 1000).matches] == expected
    assert INDEX.preview(mine, "bob", ownership).count == 0
    assert INDEX.preview(mine, "alice").count == 0  # no ownership data: owns nothing


def test_the_limit_keeps_the_most_recent_matches_and_the_display_fields() -> None:
    rule = _rule(Tracking("topics", patterns=("*",)), Filters(my_actions=True))
    got = INDEX.preview(rule, "nobody", limit=3)
    expected = _oracle(rule, "nobody", MESSAGES)
    assert got.count == len(expected) > 3
    assert [m.id for m in got.matches] == expected[:3]
    newest = next(m for m in reversed(MESSAGES) if m.id == expected[0])
    shown = got.matches[0]
    assert (shown.topic, shown.app_name, shown.summary, shown.url, shown.sent_at,
            shown.severity) == (newest.topic, newest.app_name, newest.summary, newest.url,
                                newest.sent_at, newest.severity_name)
    assert got.to_json()["matches"][0]["id"] == expected[0]
    assert INDEX.preview(rule, "nobody", limit=0).matches == []


def test_a_body_too_large_to_keep_leaves_fields_filters_undecided() -> None:
    big = Message(id="big", topic="org.fedoraproject.prod.x", app_name="x",
                  body={"new": 1, "blob": [str(i) * 40 for i in range(40_000)]})
    assert encode(big).body is None or len(encode(big).body or b"") <= MAX_BODY_BYTES
    index = _index([big, dataclasses.replace(big, id="small", body={"new": 1})])
    rule = _rule(Tracking("topics", patterns=("*",)), Filters(fields=(("new", (1,)),)))
    got = index.preview(rule, "nobody")
    assert [m.id for m in got.matches] == ["small"]
    assert got.undecided == 1
    # a rule without a fields filter still decides it
    assert index.preview(_rule(Tracking("topics", patterns=("*",))), "nobody").count == 2


# -- the window: caps and incremental refresh ---------------------------------------


def test_a_spent_time_budget_answers_with_the_newest_matches() -> None:
    rule = _rule(Tracking("topics", patterns=("*",)), Filters(my_actions=True))
    full = INDEX.preview(rule, "nobody", limit=5)
    assert full.complete and full.candidates == full.total_candidates > 512
    cut = INDEX.preview(rule, "nobody", limit=5, budget_ms=0.0)  # spent at once
    # the budget is checked at every candidate (one can take milliseconds)
    assert not cut.complete and cut.candidates == 1 < cut.total_candidates
    assert cut.count <= full.count
    # newest first: what it did see are the same most recent matches
    assert [m.id for m in cut.matches] == [m.id for m in full.matches][:cut.count]
    assert cut.to_json()["complete"] is False


def _numbered(n: int, start: int = 0) -> list[Message]:
    base = MESSAGES
    return [dataclasses.replace(base[i % len(base)], id=f"m{i}") for i in range(start, start + n)]


EVERYTHING = _rule(Tracking("topics", patterns=("*",)),
                   Filters(severities=("DEBUG", "INFO", "WARNING", "ERROR"), my_actions=True))


def test_the_store_caps_the_window_by_count() -> None:
    store = MemoryWindowStore(max_count=50, clock=Clock())
    record_many(store, _numbered(120))
    assert len(store) == 50
    index = PreviewIndex(max_count=50, clock=Clock())
    index.refresh(store)
    assert index.message_ids() == [f"m{i}" for i in range(70, 120)]


def test_the_store_and_the_index_drop_messages_older_than_the_age() -> None:
    clock = Clock()
    store = MemoryWindowStore(max_age_s=3600, clock=clock)
    index = PreviewIndex(max_age_s=3600, clock=clock)
    record_many(store, _numbered(10))
    index.refresh(store)
    clock.now += 1800
    record_many(store, _numbered(5, start=10))
    index.refresh(store)
    assert len(index) == 15
    clock.now += 1801  # the first ten are now older than an hour
    index.refresh(store)
    assert index.message_ids() == [f"m{i}" for i in range(10, 15)]
    record(store, _numbered(1, start=15)[0])
    assert [e.meta for _, e in store.read("0-0", 100)] == [
        encode(m).meta for m in _numbered(6, start=10)]


def test_refresh_reads_only_new_entries_and_evicts_consistently() -> None:
    clock = Clock()
    store = MemoryWindowStore(max_count=400, clock=clock)
    index = PreviewIndex(max_count=400, clock=clock)
    record_many(store, _numbered(300))
    assert index.refresh(store) == 300
    assert index.refresh(store) == 0
    for start in range(300, 1500, 150):  # the window slides over every message twice
        clock.now += 1
        record_many(store, _numbered(150, start=start))
        assert index.refresh(store) == 150
        window = _numbered(400, start=start + 150 - 400)
        assert index.message_ids() == [m.id for m in window]
        for user, rule in RULES[::25] + [("nobody", EVERYTHING)]:
            got = index.preview(rule, user, OWNERSHIP, limit=400)
            assert [m.id for m in got.matches] == _oracle(rule, user, window), rule


def test_a_damaged_entry_is_skipped() -> None:
    store = MemoryWindowStore(clock=Clock())
    record_many(store, _numbered(2))
    store._entries.insert(1, ((1, 0), "1-0", dataclasses.replace(  # noqa: SLF001
        encode(MESSAGES[0]), meta=b"[99]")))
    index = PreviewIndex(clock=Clock())
    assert index.refresh(store) == 3
    assert index.message_ids() == ["m0", "m1"]


@pytest.mark.parametrize(("body", "path", "values", "passes"), [
    ({'na"me': "é\n\\"}, 'na"me', ("é\n\\",), True),
    ({'na"me': "é\n"}, 'na"me', ("é",), False),
    ({"a": [{"b": "x"}, {"b": "y"}]}, "a.1.b", ("y",), True),
    ({"a": {"1": {"b": "y"}}}, "a.1.b", ("y",), True),
    ({"a": [{"b": "x"}]}, "a.1.b", ("x",), False),
    ({"a": {"b": 1.0}}, "a.b", (1,), True),
    ({"a": {"b": True}}, "a.b", (1,), False),
    ({"a": {"b": {"c": ["x"]}}}, "a.b", ({"c": ["x"]},), True),
    ({"text": '"b":"x"'}, "b", ("x",), False),  # the needles are only a first sieve
])
def test_fields_filters_on_awkward_bodies(body: dict[str, object], path: str,
                                          values: tuple[object, ...], passes: bool) -> None:
    m = Message(id="m", topic="t", body=body)
    index = _index([m])
    rule = _rule(Tracking("topics", patterns=("*",)), Filters(fields=((path, values),)))
    assert _oracle(rule, "nobody", [m]) == (["m"] if passes else [])
    assert index.preview(rule, "nobody").count == int(passes)
