"""What senders learn beyond a notification: rule names and digest settings.

The match function packs, with every notification, the names of its rules
and its destination's digest setting (``Matcher.describe``).  Both engines
must describe alike, on full snapshots, after per-user changes, and a
version-1 snapshot (no names, no digests) must still load.
"""

from __future__ import annotations

import orjson
import pytest
from shared_data import golden_messages

from fmn.generate import generate_preferences
from fmn.matcher import IndexedMatcher, NaiveMatcher
from fmn.snapshot import Snapshot, compile_snapshot, compile_user

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def world():  # type: ignore[no-untyped-def]
    prefs = generate_preferences(400, seed=7)
    return prefs, compile_snapshot(prefs), golden_messages()


def test_engines_describe_alike(world) -> None:  # type: ignore[no-untyped-def]
    prefs, data, messages = world
    naive, indexed = NaiveMatcher(prefs), IndexedMatcher(Snapshot.from_data(data))
    described = digests = 0
    for m in messages:
        for n in indexed.match(m):
            assert indexed.describe(n) == naive.describe(n)
            described += 1
            digests += indexed.describe(n)[1] is not None
    assert described > 100 and digests > 0  # the generator gives some destinations a digest


def test_names_are_the_rules_names(world) -> None:  # type: ignore[no-untyped-def]
    prefs, data, messages = world
    indexed = IndexedMatcher(Snapshot.from_data(data))
    users = {u.name: u for u in prefs.users}
    for m in messages[:100]:
        for n in indexed.match(m):
            names, digest = indexed.describe(n)
            rules = {r.id: r.name for r in users[n.user].rules}
            assert names == tuple(rules[r] for r in n.rules)
            dest = users[n.user].destination(n.destination)
            assert dest is not None
            expected = (dest.digest.interval_s, dest.digest.max_count) if dest.digest else None
            assert digest == expected


def test_per_user_change_updates_the_description(world) -> None:  # type: ignore[no-untyped-def]
    import dataclasses

    from fmn.prefs import Digest

    prefs, data, messages = world
    snap = Snapshot.from_data(data)
    indexed = IndexedMatcher(snap)
    n = next(n for m in messages for n in indexed.match(m))
    user = next(u for u in prefs.users if u.name == n.user)
    renamed = dataclasses.replace(
        user,
        rules=tuple(dataclasses.replace(r, name=f"renamed {r.id}") for r in user.rules),
        destinations=tuple(dataclasses.replace(d, digest=Digest(300, 7))
                           for d in user.destinations))
    assert snap.apply_user(user.name, compile_user(renamed, revision=10**9))
    names, digest = indexed.describe(n)
    assert names == tuple(f"renamed {r}" for r in n.rules)
    assert digest == (300, 7)
    # a user gone since the match: their rule ids, no digest
    assert snap.apply_user(user.name, None)
    assert indexed.describe(n) == (n.rules, None)


def test_version_1_snapshot_still_loads(world) -> None:  # type: ignore[no-untyped-def]
    _prefs, data, messages = world
    lines = data.encode().splitlines()
    header = orjson.loads(lines[0])
    header["version"] = 1
    old = [orjson.dumps(header)]
    for line in lines[1:]:
        name, entry = orjson.loads(line)
        entry["rules"] = [rule[:4] for rule in entry["rules"]]
        entry["dests"] = {d: v[:2] for d, v in entry["dests"].items()}
        old.append(orjson.dumps([name, entry]))
    v1 = IndexedMatcher(Snapshot.from_document(b"\n".join(old) + b"\n"))
    v2 = IndexedMatcher(Snapshot.from_data(data))
    for m in messages[:200]:
        assert v1.match(m) == v2.match(m)
        for n in v1.match(m):
            assert v1.describe(n) == (n.rules, None)
