"""What the snapshot cannot hold, and the size limits, refused by the core parser.

The web API and ``fmn prefs import`` share :func:`fmn.prefs.parse_document`
(and ``parse_rule``/``parse_user`` under it): one rule for every string of a
preference (keys included), and documented limits per string, list, rule and
user, each refusal naming the limit.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import orjson
import pytest
from shared_data import golden_prefs_doc

from fmn import prefs
from fmn.prefs import InvalidPreferences, parse_document
from fmn.snapshot import compile_snapshot

pytestmark = pytest.mark.unit


def golden() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(golden_prefs_doc())
    return doc


def _filters(doc: dict[str, Any]) -> dict[str, Any]:
    filters: dict[str, Any] = doc["users"][0]["rules"][0]["generation_rules"][0]["filters"]
    return filters


def _refused(doc: dict[str, Any]) -> InvalidPreferences:
    with pytest.raises(InvalidPreferences) as info:
        parse_document(doc)
    return info.value


@pytest.mark.parametrize("bad", ["\ud800", "\udfff", "a\udc80b", "\ufffe", "\uffff", "x\x00",
                                 "\u2028"])
@pytest.mark.parametrize("where", ["fields key", "fields value", "nested key", "nested value",
                                   "rule name", "topic"])
def test_strings_the_snapshot_cannot_hold_are_refused_everywhere(bad: str, where: str) -> None:
    doc = golden()
    f = _filters(doc)
    if where == "fields key":
        f["fields"] = {bad: [1]}
    elif where == "fields value":
        f["fields"] = {"update.status": [bad]}
    elif where == "nested key":
        f["fields"] = {"update": [{bad: 1}]}
    elif where == "nested value":
        f["fields"] = {"update": [{"a": [bad]}]}
    elif where == "rule name":
        doc["users"][0]["rules"][0]["name"] = bad
    else:
        f["topic"] = bad
    error = _refused(doc)
    assert "control characters, lone surrogates or U+FFFE/U+FFFF" in error.reason
    # the refusal itself can be written as JSON (an API answer, a CLI message)
    orjson.dumps({"where": error.where, "reason": error.reason})


def test_whatever_the_parser_accepts_the_snapshot_encodes() -> None:
    doc = golden()
    _filters(doc)["fields"] = {"a.b": ["\u00e9\U0001f600", "", " "], "c": [{"k\u00e9": [1.5]}]}
    compile_snapshot(parse_document(doc))  # orjson inside: would raise on a surrogate


def test_blank_rule_names_are_refused() -> None:
    for blank in ("", "   ", "\u3000"):
        doc = golden()
        doc["users"][0]["rules"][0]["name"] = blank
        assert "blank" in _refused(doc).reason


@pytest.mark.parametrize(("mutate", "limit"), [
    (lambda d: _filters(d).update(fields={"a": list(range(prefs.MAX_LIST_ITEMS + 1))}),
     "items per list"),
    (lambda d: _filters(d).update(fields={f"k{i}": [1] for i in range(prefs.MAX_LIST_ITEMS + 1)}),
     "keys per object"),
    (lambda d: _filters(d).update(fields={"a": [{f"k{i}": 1
                                                 for i in range(prefs.MAX_LIST_ITEMS + 1)}]}),
     "keys per object"),
    (lambda d: _filters(d).update(fields={"a": ["x" * (prefs.MAX_STRING_CHARS + 1)]}),
     "characters per string"),
    (lambda d: d["users"][0]["rules"][0].update(tracking={"kind": "users-followed", "params": {
        "usernames": [f"u{i}" for i in range(prefs.MAX_LIST_ITEMS + 1)]}}), "items per list"),
    (lambda d: d["users"][0]["rules"][0].update(tracking={"kind": "topics", "params": {
        "patterns": [f"t.{i}.*" for i in range(prefs.MAX_LIST_ITEMS + 1)]}}), "items per list"),
    (lambda d: d["users"][0]["rules"][0].update(
        generation_rules=d["users"][0]["rules"][0]["generation_rules"][:1]
        * (prefs.MAX_GENERATION_RULES + 1)), "generation rules per rule"),
    (lambda d: _filters(d).update(fields={f"k{i}": ["v" * 500] * 150 for i in range(2)}),
     "bytes per rule"),
    (lambda d: d["users"][0].update(rules=[
        {**copy.deepcopy(d["users"][0]["rules"][0]), "id": f"r{i}"}
        for i in range(prefs.MAX_RULES + 1)]), "rules per user"),
])
def test_size_limits_are_refused_naming_the_limit(mutate: Any, limit: str) -> None:
    doc = golden()
    mutate(doc)
    error = _refused(doc)
    assert "the limit is " in error.reason and limit in error.reason, error


def test_a_user_over_the_size_limit_is_refused() -> None:
    doc = golden()
    user = doc["users"][0]
    big = {"a": ["v" * 500] * 100}  # ~50 KB: under the rule limit
    base = user["rules"][0]
    user["rules"] = [{**copy.deepcopy(base), "id": f"r{i}", "generation_rules": [
        {"filters": {"fields": big}, "destinations": base["generation_rules"][0]["destinations"]}
    ]} for i in range(prefs.MAX_USER_BYTES // 50_000 + 1)]
    assert "bytes per user" in _refused(doc).reason


def test_ownership_data_is_not_held_to_the_preference_limits() -> None:
    doc = golden()
    doc["groups"]["packager"] = [f"p{i}" for i in range(5000)]
    parse_document(doc)


def test_a_destination_listed_twice_in_a_generation_rule_is_kept_once() -> None:
    doc = golden()
    gen = doc["users"][0]["rules"][0]["generation_rules"][0]
    listed = list(gen["destinations"])
    gen["destinations"] = listed * 200
    parsed = parse_document(doc)
    assert list(parsed.users[0].rules[0].generation_rules[0].destinations) == listed
