"""The web API's request models: refusals name the field, and what JSON Schema says
is what they check (the OpenAPI description is made from them)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from fmn import prefs
from fmn.web import http, schema
from fmn.web.service import Invalid, TooLarge

pytestmark = pytest.mark.unit

RULE: dict[str, Any] = {
    "name": "Koji builds", "enabled": True,
    "tracking": {"kind": "topics", "params": {"patterns": ["*.buildsys.build.state.change"]}},
    "generation_rules": [{"filters": {}, "destinations": ["email"]}]}


@pytest.mark.parametrize(("model", "body", "field"), [
    (schema.NewRule, {**RULE, "tracking": {"kind": "nope"}}, "tracking.kind"),
    (schema.NewRule, {**RULE, "generation_rules": [{"filters": {"fields": {"a..b": [1]}},
                                                    "destinations": []}]},
     "generation_rules[0].filters.fields['a..b']"),
    (schema.NewRule, {**RULE, "generation_rules": [{"filters": {"topic": None},
                                                    "destinations": []}]},
     "generation_rules[0].filters.topic"),
    (schema.RulePatch, {"name": None}, "name"),
    (schema.RulePatch, {"name": " "}, "name"),
    (schema.NewDestination, {"protocol": "fax"}, "protocol"),
    (schema.NewDestination, {"protocol": "irc", "address": "bad nick!"}, "address"),
    (schema.NewDestination, {"address": "a@b.org"}, "protocol"),
    (schema.Code, {"code": "12345"}, "code"),
])
def test_refusals_name_the_field(model: Any, body: dict[str, Any], field: str) -> None:
    with pytest.raises(Invalid) as info:
        schema.check(model, body)
    assert info.value.field == field, info.value


def test_what_may_be_null_and_what_may_be_left_out() -> None:
    assert schema.check(schema.DestinationPatch, {"digest": None}).digest is None
    assert schema.check(schema.RulePatch, {}).name is None
    assert schema.check(schema.NewDestination, {"protocol": "sse"}).address is None


def test_the_json_schema_patterns_are_the_core_rules() -> None:
    text = re.compile(schema.NAME_PATTERN)
    for bad in ("", " ", "a\x00", "a\u2028", "\ufffe", "a\x9f"):
        assert not text.fullmatch(bad), repr(bad)
    for good in ("Koji builds", "é", "a b"):
        assert text.fullmatch(good)
    assert re.fullmatch(prefs.FIELD_PATH_PATTERN, "update.status")
    assert not re.fullmatch(prefs.FIELD_PATH_PATTERN, "a..b")


def test_query_numbers_are_digits_only() -> None:
    assert schema.query(schema.NotificationsQuery, {"limit": "7"}).limit == 7
    for bad in ("1.0", "-1", "0x1", "", "1e3"):
        with pytest.raises(Invalid):
            schema.query(schema.NotificationsQuery, {"limit": bad})


def test_bodies_over_the_limit_and_bad_json() -> None:
    with pytest.raises(TooLarge):
        http.read_body(b" " * (http.MAX_BODY_BYTES + 1), "application/json")
    with pytest.raises(Invalid):
        http.read_body(b"[" * 100_000, "application/json")
    assert http.read_body(b"List-Unsubscribe=One-Click", "application/x-www-form-urlencoded") \
        == {"List-Unsubscribe": "One-Click"}
    multipart = (b'--x\r\nContent-Disposition: form-data; name="List-Unsubscribe"\r\n\r\n'
                 b"One-Click\r\n--x--\r\n")
    assert http.read_body(multipart, "multipart/form-data; boundary=x") == {
        "List-Unsubscribe": "One-Click"}
    # a boundary is case-sensitive: browsers' and mail systems' have capitals
    boundary = "----WebKitFormBoundary7MA4YWxkTrZu0gW"
    multipart = multipart.replace(b"--x", b"--" + boundary.encode())
    assert http.read_body(multipart, f"Multipart/Form-Data; boundary={boundary}") == {
        "List-Unsubscribe": "One-Click"}
    # a line break in the header cannot start a header of its own
    assert http.read_body(multipart, f"multipart/form-data; boundary={boundary}\r\n"
                          "Content-Type: text/plain") == {"List-Unsubscribe": "One-Click"}


def test_framework_errors_are_rewritten() -> None:
    fixed = http.framework_error(415, {"Code": "UnsupportedMediaType", "Message": "no"})
    assert fixed is not None and json.loads(fixed.body)["error"] == "unsupported-media-type"
    assert http.framework_error(400, json.dumps({"error": "invalid", "detail": "",
                                                 "field": None})) is None
    assert http.framework_error(200, {"Code": "x"}) is None
