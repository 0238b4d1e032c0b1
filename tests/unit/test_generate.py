"""The preferences generator: valid, deterministic, Fedora-shaped and long-tailed."""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import sys
from collections import Counter

import pytest

from fmn.generate import UNIVERSE_SIZES, fedora_names, generate_preferences
from fmn.prefs import (
    FILTER_NAMES,
    PROTOCOLS,
    TRACKING_KINDS,
    Preferences,
    dump_document,
    parse_document,
)

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def prefs() -> Preferences:
    return generate_preferences(1_000, 42)


@pytest.fixture(scope="module")
def prefs_2k() -> Preferences:
    return generate_preferences(2_000, 7)


def _doc_hash(p: Preferences) -> str:
    return hashlib.sha256(json.dumps(dump_document(p)).encode()).hexdigest()


# -- validity and determinism --------------------------------------------


def test_round_trip_through_json_is_exact(prefs: Preferences) -> None:
    doc = json.loads(json.dumps(dump_document(prefs)))
    assert parse_document(doc) == prefs


@pytest.mark.parametrize("users", [0, 1])
def test_tiny_documents_are_valid(users: int) -> None:
    # No one to own the packages or to follow but oneself: still a valid document.
    p = generate_preferences(users, 1)
    assert len(p.users) == users
    assert parse_document(json.loads(json.dumps(dump_document(p)))) == p


def test_negative_user_count_is_refused() -> None:
    with pytest.raises(ValueError):
        generate_preferences(-1, 0)


def test_same_seed_same_document_different_seed_different() -> None:
    a, b, c = (generate_preferences(300, s) for s in (5, 5, 6))
    assert a == b
    assert a.users != c.users and a.owners != c.owners


def test_output_does_not_depend_on_the_hash_seed() -> None:
    # The classic way to lose determinism is iterating over a set of strings.
    code = ("import hashlib, json; from fmn.generate import generate_preferences as g; "
            "from fmn.prefs import dump_document as d; "
            "print(hashlib.sha256(json.dumps(d(g(200, 3))).encode()).hexdigest())")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONHASHSEED": hs})
             for hs in ("1", "2")]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert outs[0] == outs[1] == _doc_hash(generate_preferences(200, 3))


# -- the artifact universe and its owners ---------------------------------


def test_universe_size_is_fedora_scale_and_independent_of_users(prefs: Preferences) -> None:
    assert len(prefs.owners["rpms"]) == UNIVERSE_SIZES["rpms"] == 25_000
    for atype in ("containers", "modules", "flatpaks"):
        assert 300 <= len(prefs.owners[atype]) <= 2_000
    small = generate_preferences(10, 42)
    assert {t: list(o) for t, o in small.owners.items()} == \
        {t: list(o) for t, o in prefs.owners.items()}


def test_every_message_artifact_is_in_the_universe(prefs: Preferences) -> None:
    names = fedora_names()
    assert len(names.artifacts["rpms"]) > 100  # the embedded list is really there
    for atype, wanted in names.artifacts.items():
        missing = [n for n in wanted if n not in prefs.owners[atype]]
        assert not missing, (atype, missing)


def test_owners_and_members_are_generated_users(prefs: Preferences) -> None:
    users = {u.name for u in prefs.users}
    for atype, table in prefs.owners.items():
        for name, owners in table.items():
            assert owners.users, (atype, name)
            assert set(owners.users) <= users
            assert set(owners.groups) <= set(prefs.groups)
    for members in prefs.groups.values():
        assert members and set(members) <= users
    # Whole ecosystems are co-owned by their SIG.
    rust = [o for n, o in prefs.owners["rpms"].items() if n.startswith("rust-")]
    assert sum("rust-sig" in o.groups for o in rust) > 0.8 * len(rust)


def test_rpm_names_look_like_fedora(prefs: Preferences) -> None:
    rpms = list(prefs.owners["rpms"])
    for prefix in ("python-", "rust-", "golang-github-", "perl-", "nodejs-", "R-", "ghc-"):
        assert sum(n.startswith(prefix) for n in rpms) > 200, prefix
    assert {"kernel", "glibc", "python3", "systemd", "firefox"} <= set(rpms)


# -- users, destinations and rules ----------------------------------------


def test_message_usernames_come_first_then_unique_synthetic_names(prefs: Preferences) -> None:
    names = [u.name for u in prefs.users]
    real = list(fedora_names().usernames)
    assert names[: len(real)] == real
    assert "ralph" in names and "http://zlopez.id.fedoraproject.org/" in names
    assert len(set(names)) == len(names) == 1_000
    assert generate_preferences(5, 0).users[0].name == real[0]


def test_every_tracking_kind_filter_and_protocol_is_used(prefs: Preferences) -> None:
    kinds = Counter(r.tracking.kind for u in prefs.users for r in u.rules)
    assert set(kinds) == set(TRACKING_KINDS)
    assert min(kinds.values()) >= 50
    filters = [g.filters for u in prefs.users for r in u.rules for g in r.generation_rules]
    for name in FILTER_NAMES:
        assert sum(getattr(f, name) is not None for f in filters) >= 20, name
    my_actions = Counter(f.my_actions for f in filters)
    assert my_actions[True] and my_actions[False] and my_actions[None]
    assert any(f.topic == "*.buildsys.build.state.change" for f in filters)
    assert any(f.fields and ("new", (1,)) in f.fields for f in filters)
    assert any(f.fields and ("update.status", ("stable", "testing")) in f.fields
               for f in filters)
    apps = {a for f in filters for a in (f.applications or ())}
    assert {"pagure", "distgit", "the-new-hotness", "anitya"} <= apps
    assert any(a != a.lower() for a in apps) and any(a == a.lower() for a in apps)
    protocols = Counter(d.protocol for u in prefs.users for d in u.destinations)
    assert set(protocols) == set(PROTOCOLS)


def test_users_have_few_rules_mostly_the_two_defaults(prefs: Preferences) -> None:
    counts = [len(u.rules) for u in prefs.users]
    assert min(counts) >= 1 and max(counts) == 8
    assert 2.5 <= statistics.mean(counts) <= 4.5
    assert Counter(counts).most_common(1)[0][0] == 2  # long tail above the mode
    with_defaults = [
        u for u in prefs.users
        if len(u.rules) >= 2
        and (u.rules[0].name, u.rules[0].tracking.kind) == ("My packages", "artifacts-owned")
        and (u.rules[1].name, u.rules[1].tracking.kind) == ("My events", "related-events")
        and u.rules[1].generation_rules[0].filters.my_actions is False
    ]
    assert 0.8 <= len(with_defaults) / len(prefs.users) <= 0.95


def test_some_users_rules_and_destinations_are_off(prefs: Preferences) -> None:
    users = prefs.users
    dests = [d for u in users for d in u.destinations]
    rules = [r for u in users for r in u.rules]
    assert 5 <= sum(not u.enabled for u in users) <= 100
    assert 0.01 <= sum(not r.enabled for r in rules) / len(rules) <= 0.1
    assert 0.05 <= sum(not d.verified for d in dests) / len(dests) <= 0.25
    assert 0.03 <= sum(d.digest is not None for d in dests) / len(dests) <= 0.2
    assert all(1 <= len(u.destinations) <= 4 for u in users)
    assert all(d.address is None for d in dests if d.protocol == "sse")


def test_followed_people_include_the_message_people(prefs: Preferences) -> None:
    followed = Counter(n for u in prefs.users for r in u.rules for n in r.tracking.usernames)
    assert set(followed) <= {u.name for u in prefs.users}
    # The people in the messages are active contributors: followed more than most.
    real = [followed[n] for n in fedora_names().usernames if n in followed]
    everyone = [followed[u.name] for u in prefs.users]
    assert real and statistics.median(real) > statistics.median(everyone)


# -- the long tail --------------------------------------------------------


def test_followers_are_long_tailed(prefs_2k: Preferences) -> None:
    followers = Counter(
        (a.type, a.name) for u in prefs_2k.users for r in u.rules for a in r.tracking.artifacts)
    top = followers.most_common(10)
    assert top[0][0] == ("rpms", "kernel") and top[0][1] >= 100
    assert {name for (_, name), _ in top} >= {"kernel", "glibc", "python3", "systemd"}
    # Most of the universe has at most one follower at 2,000 users ...
    every = [followers.get((t, n), 0) for t, table in prefs_2k.owners.items() for n in table]
    assert statistics.median(every) == 0
    assert sum(c <= 1 for c in every) / len(every) > 0.9
    # ... and the message packages sit at random ranks, not in the head: a
    # replayed message fans out like a message about any package would.
    msg = [followers.get(("rpms", n), 0) for n in fedora_names().artifacts["rpms"]
           if n not in {name for (_, name), _ in top}]
    assert statistics.median(msg) <= 2


def test_package_ownership_is_long_tailed(prefs_2k: Preferences) -> None:
    owned = Counter(u for table in prefs_2k.owners.values() for o in table.values()
                    for u in o.users)
    counts = sorted(owned.values())
    assert counts[-1] >= 20 * statistics.median(counts)
    owners_per = [len(o.users) for table in prefs_2k.owners.values() for o in table.values()]
    assert statistics.median(owners_per) == 1 and max(owners_per) >= 8
