"""The preferences document: exact round trip, and refusals that say where and why."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from shared_data import golden_prefs_doc

from fmn.prefs import InvalidPreferences, dump_document, parse_document

pytestmark = pytest.mark.unit


def golden() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(golden_prefs_doc())
    return doc


def test_golden_round_trip_is_exact() -> None:
    doc = golden()
    assert dump_document(parse_document(doc)) == doc


def test_field_values_keep_their_json_types() -> None:
    doc = golden()
    doc["users"][0]["rules"][0]["generation_rules"][0]["filters"]["fields"] = {
        "a": [True], "b": [1], "c": [1.5], "d": [None], "e.f": [{"x": [1]}]}
    assert dump_document(parse_document(doc)) == doc


def _bad(mutate: Any) -> InvalidPreferences:
    doc = golden()
    mutate(doc)
    with pytest.raises(InvalidPreferences) as info:
        parse_document(doc)
    return info.value


def _deep(n: int) -> Any:
    value: Any = 1
    for _ in range(n):
        value = [value]
    return value


def _rule(doc: dict[str, Any]) -> dict[str, Any]:
    rule: dict[str, Any] = doc["users"][0]["rules"][0]
    return rule


@pytest.mark.parametrize(("mutate", "where", "reason"), [
    (lambda d: d.update(version=2), "version", "unsupported version"),
    (lambda d: d.pop("users"), "document", "missing field 'users'"),
    (lambda d: d.update(extra=1), "document", "unknown field 'extra'"),
    (lambda d: d["users"][1].update(name=d["users"][0]["name"]), "users[1]",
     "duplicate user name"),
    (lambda d: d["users"][0].update(enabled="yes"), "users[0] (@python) > enabled",
     "must be true or false"),
    (lambda d: d["users"][0]["destinations"][0].update(protocol="fax"),
     "users[0] (@python) > destinations[0] (d0) > protocol", "'fax' is not one of"),
    (lambda d: d["users"][0]["destinations"][0].update(address=None),
     "users[0] (@python) > destinations[0] (d0) > address", "must be a string"),
    (lambda d: d["users"][0]["destinations"][0].update(digest={"interval_s": 0,
                                                                "max_count": 5}),
     "digest.interval_s", "integer from 1 to"),
    (lambda d: d["users"][0]["destinations"][0].update(digest={"interval_s": 60,
                                                                "max_count": 2**63}),
     "digest.max_count", "integer from 1 to"),
    (lambda d: _rule(d)["tracking"].update(kind="everything"),
     "users[0] (@python) > rules[0] (r0) > tracking > kind", "'everything' is not one of"),
    (lambda d: _rule(d)["tracking"]["params"].update(groups=[]),
     "rules[0] (r0) > tracking > params.groups", "must not be empty"),
    (lambda d: _rule(d)["tracking"]["params"].update(colour="red"),
     "rules[0] (r0) > tracking > params", "unknown field 'colour'"),
    (lambda d: _rule(d).update(generation_rules=[]),
     "rules[0] (r0) > generation_rules", "must not be empty"),
    (lambda d: _rule(d)["generation_rules"][0].update(destinations=["d9"]),
     "generation_rules[0].destinations[0]", "'d9' is not one of this user's destinations"),
    (lambda d: _rule(d)["generation_rules"][0]["filters"].update(severities=["LOUD"]),
     "generation_rules[0].filters.severities[0]", "'LOUD' is not one of"),
    (lambda d: _rule(d)["generation_rules"][0]["filters"].update(my_actions="no"),
     "filters.my_actions", "must be true or false"),
    (lambda d: _rule(d)["generation_rules"][0]["filters"].update(fields={"a..b": [1]}),
     "filters.fields['a..b']", "dotted path"),
    (lambda d: _rule(d)["generation_rules"][0]["filters"].update(colour="red"),
     "generation_rules[0].filters", "unknown field 'colour'"),
    (lambda d: d["users"][0]["rules"].append(copy.deepcopy(_rule(d))),
     "users[0] (@python) > rules[", "duplicate rule id 'r0'"),
    (lambda d: d["users"][0].update(name="bob\r\nBcc: victim@example.org"),
     "users[0] > name", "control characters"),
    (lambda d: d["owners"]["rpms"].update(kernel={"users": "alice"}),
     "owners.rpms['kernel'].users", "must be a list"),
    (lambda d: d["owners"]["rpms"].update({"k\x1b[31m": {"users": []}}),
     "owners.rpms['k\\x1b[31m']", "control characters"),
    (lambda d: d["users"][0]["destinations"][0].update(address="x@y.org\u2028Bcc: v@z.org"),
     "destinations[0] (d0) > address", "control characters"),
    (lambda d: _rule(d)["generation_rules"][0]["filters"].update(fields={"new\n": [1]}),
     "filters.fields['new\\n']", "control characters"),
    (lambda d: _rule(d)["generation_rules"][0]["filters"].update(
        fields={"builds." + "1" * 5000: ["x"]}), "filters.fields[", "characters per string"),
    (lambda d: _rule(d)["generation_rules"][0]["filters"].update(fields={"x": [float("nan")]}),
     "filters.fields['x'][0]", "not a JSON number"),
    (lambda d: _rule(d)["generation_rules"][0]["filters"].update(fields={"x": [2**64]}),
     "filters.fields['x'][0]", "outside the 64-bit range"),
    (lambda d: _rule(d)["generation_rules"][0]["filters"].update(fields={"x": [_deep(40)]}),
     "filters.fields['x'][0]", "nested deeper"),
    (lambda d: _rule(d)["generation_rules"][0]["filters"].update(fields={"x": ["\ud800"]}),
     "filters.fields['x'][0]", "lone surrogate"),
    (lambda d: d.update(version=True), "version", "unsupported version"),
    (lambda d: d["users"][0]["destinations"][0].update(address="m\uffff@x.org"),
     "destinations[0] (d0) > address", "control characters"),
    (lambda d: d["users"][0]["destinations"][0].update(address="a" * 600),
     "destinations[0] (d0) > address", "the limit is 512"),
])
def test_invalid_documents_name_the_culprit(mutate: Any, where: str, reason: str) -> None:
    error = _bad(mutate)
    assert where in error.where, error
    assert reason in error.reason, error


def test_not_an_object() -> None:
    with pytest.raises(InvalidPreferences, match="must be an object"):
        parse_document([1, 2])
