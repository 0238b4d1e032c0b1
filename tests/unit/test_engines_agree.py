"""Property tests: the indexed engine agrees exactly with the naive oracle.

Hypothesis generates preferences whose names, artifacts, topics, application
names and ``fields`` paths are drawn from the real shared messages (so that
rules do fire), and the messages are the golden Fedora messages.  A second
property checks the snapshot's incremental path: applying per-user changes
to an indexed snapshot gives the same answers as indexing the changed
preferences from scratch.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shared_data import golden_messages, golden_prefs_doc

from fmn.matcher import IndexedMatcher, NaiveMatcher
from fmn.message import ARTIFACT_TYPES
from fmn.prefs import (
    MAX_STRING_CHARS,
    PROTOCOLS,
    TEXT_PATTERN,
    Preferences,
    parse_document,
)
from fmn.snapshot import Snapshot, build_snapshot, compile_snapshot, compile_user

pytestmark = [pytest.mark.unit, pytest.mark.slow]

MESSAGES = golden_messages()


def _storable(value: Any) -> bool:
    """Whether a preference may hold ``value`` (the parser refuses the other strings)."""
    return not isinstance(value, str) or (len(value) <= MAX_STRING_CHARS
                                          and re.fullmatch(TEXT_PATTERN, value) is not None)


def _vocab() -> dict[str, list[Any]]:
    names: set[str] = set()
    arts: dict[str, set[str]] = {t: set() for t in ARTIFACT_TYPES}
    topics: set[str] = set()
    apps: set[str] = set()
    fields: set[tuple[str, Any]] = set()
    for m in MESSAGES:
        names |= {n for n in m.usernames if isinstance(n, str)}
        if m.agent_name:
            names.add(m.agent_name)
        for t in ARTIFACT_TYPES:
            arts[t] |= m.artifacts(t)
        topics.add(m.topic)
        if m.app_name:
            apps.add(m.app_name)
        for key, value in m.body.items():
            if "." in key:
                continue  # a dotted path cannot name it
            if isinstance(value, (str, int, float, bool)) or value is None:
                if _storable(value):
                    fields.add((key, value))
            elif isinstance(value, dict):
                for k2, v2 in value.items():
                    if ("." not in k2 and isinstance(v2, (str, int, bool)) or v2 is None) \
                            and _storable(v2):
                        fields.add((f"{key}.{k2}", v2))
    return {
        "names": sorted(names) + ["nobody", "ghost"],
        **{t: sorted(arts[t]) + [f"no-such-{t}"] for t in ARTIFACT_TYPES},
        "topics": sorted(topics),
        "apps": sorted(apps) + ["NoSuchApp"],
        "fields": sorted(fields, key=repr),
        "groups": ["g0", "g1", "g2", "g3"],
    }


V = _vocab()
names = st.sampled_from(V["names"])


def globs() -> st.SearchStrategy[str]:
    # A real topic, the same with one segment wildcarded, or a broad glob.
    def wildcard(topic: str, i: int) -> str:
        parts = topic.split(".")
        parts[i % len(parts)] = "*"
        return ".".join(parts)

    return st.one_of(
        st.sampled_from(V["topics"]),
        st.builds(wildcard, st.sampled_from(V["topics"]), st.integers(0, 8)),
        st.sampled_from(["*", "*.bodhi.*", "org.fedoraproject.prod.*", "*.git.receive",
                         "*build*", "org.release-monitoring.*"]),
    )


artifact = st.sampled_from(ARTIFACT_TYPES).flatmap(
    lambda t: st.builds(lambda n: {"type": t, "name": n}, st.sampled_from(V[t])))

tracking = st.one_of(
    st.just({"kind": "artifacts-owned", "params": {}}),
    st.just({"kind": "related-events", "params": {}}),
    st.builds(lambda g: {"kind": "artifacts-group-owned", "params": {"groups": g}},
              st.lists(st.sampled_from(V["groups"]), min_size=1, max_size=2)),
    st.builds(lambda a: {"kind": "artifacts-followed", "params": {"artifacts": a}},
              st.lists(artifact, min_size=1, max_size=3)),
    st.builds(lambda u: {"kind": "users-followed", "params": {"usernames": u}},
              st.lists(names, min_size=1, max_size=3)),
    st.builds(lambda p: {"kind": "topics", "params": {"patterns": p}},
              st.lists(globs(), min_size=1, max_size=2)),
)


@st.composite
def field_filter(draw: st.DrawFn) -> dict[str, list[Any]]:
    path, value = draw(st.sampled_from(V["fields"]))
    # the real value, a look-alike of another JSON type (True vs 1), or something else
    other = draw(st.sampled_from([True, 1, 0, "x", None]))
    values = draw(st.lists(st.sampled_from([value, other]), min_size=1, max_size=2))
    return {path: values}


apps = st.lists(st.sampled_from(V["apps"]).map(
    lambda a: a.upper() if len(a) % 2 else a.lower()), max_size=3)

filters = st.fixed_dictionaries({}, optional={
    "applications": apps,
    "excluded_applications": apps,
    "severities": st.lists(st.sampled_from(["DEBUG", "INFO", "WARNING", "ERROR"]), max_size=3),
    "topic": globs(),
    "my_actions": st.booleans(),
    "fields": field_filter(),
})


@st.composite
def user_doc(draw: st.DrawFn, name: str) -> dict[str, Any]:
    dests = []
    for i in range(draw(st.integers(1, 3))):
        protocol = draw(st.sampled_from(PROTOCOLS))
        dests.append({"id": f"d{i}", "protocol": protocol,
                      "address": None if protocol == "sse" else f"{name}-{i}",
                      "verified": draw(st.booleans() | st.just(True)), "digest": None})
    ids = [d["id"] for d in dests]
    rules = []
    for i in range(draw(st.integers(0, 4))):
        gens = [{"filters": draw(filters),
                 "destinations": draw(st.lists(st.sampled_from(ids), max_size=3, unique=True))}
                for _ in range(draw(st.integers(1, 3)))]
        rules.append({"id": f"r{i}", "name": f"rule {i}", "enabled": draw(st.booleans()
                                                                           | st.just(True)),
                      "tracking": draw(tracking), "generation_rules": gens})
    return {"name": name, "enabled": draw(st.booleans() | st.just(True)),
            "destinations": dests, "rules": rules}


@st.composite
def prefs_doc(draw: st.DrawFn) -> dict[str, Any]:
    user_names = draw(st.lists(names, min_size=1, max_size=8, unique=True))
    owners: dict[str, dict[str, Any]] = {t: {} for t in ARTIFACT_TYPES}
    for t in ARTIFACT_TYPES:
        for art in draw(st.lists(st.sampled_from(V[t]), max_size=12, unique=True)):
            owners[t][art] = {
                "users": draw(st.lists(st.sampled_from(user_names), max_size=2, unique=True)),
                "groups": draw(st.lists(st.sampled_from(V["groups"]), max_size=2, unique=True)),
            }
    return {"version": 1, "users": [draw(user_doc(n)) for n in user_names],
            "owners": owners, "groups": {g: user_names[:2] for g in V["groups"]}}


message_samples = st.lists(st.sampled_from(MESSAGES), min_size=5, max_size=25)


def assert_agree(prefs: Preferences, snapshot: Snapshot, messages: list[Any]) -> None:
    naive, indexed = NaiveMatcher(prefs), IndexedMatcher(snapshot)
    for m in messages:
        assert indexed.match(m) == naive.match(m), m.topic


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=prefs_doc(), messages=message_samples)
def test_indexed_agrees_with_naive(doc: dict[str, Any], messages: list[Any]) -> None:
    prefs = parse_document(doc)
    assert_agree(prefs, build_snapshot(prefs), messages)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before=prefs_doc(), after=prefs_doc(), messages=message_samples)
def test_per_user_changes_equal_a_rebuild(before: dict[str, Any], after: dict[str, Any],
                                         messages: list[Any]) -> None:
    # Same ownership on both sides: per-user changes do not carry ownership.
    after = {**after, "owners": before["owners"], "groups": before["groups"]}
    old, new = parse_document(before), parse_document(after)
    snapshot = Snapshot.from_data(compile_snapshot(old))
    for user in old.users:
        if new.user(user.name) is None:
            snapshot.apply_user(user.name, None)
    for user in new.users:
        snapshot.apply_user(user.name, compile_user(user, revision=1))
    assert_agree(new, snapshot, messages)


def test_every_golden_message_agrees_on_the_golden_prefs() -> None:
    prefs = parse_document(json.loads(golden_prefs_doc()))
    assert_agree(prefs, build_snapshot(prefs), list(MESSAGES))
