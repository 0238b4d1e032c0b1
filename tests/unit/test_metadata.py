"""fmn.metadata: bus records to :class:`fmn.message.Message`, checked on the shared data.

Three truths, each from ``../shared/data``:

* ``messages/fedora-messaging*.jsonl``: the schema classes' own properties;
* ``messages/fedmsg*.jsonl``: the fedmsg_meta_fedora_infrastructure fixtures'
  expectations (or fedmsg.meta's ``computed`` output where a fixture is silent);
* ``golden/``: the metadata the golden matcher example was built on, which
  must match field for field.

Account lookups (fasshim's nick/e-mail -> FAS username map) change usernames,
agents and subtitles, and the two truths were made under different maps:

* the fixture expectations under the fedmsg_meta test suite's 4-entry FAS stub
  (``tests/base.py``), so those tests install the same stub through
  :func:`fmn.metadata.set_account_map` (fixture ``fas_stub``);
* the golden metadata under *no* account data: with the stub, 6 golden
  envelopes differ (``threebean`` would become ``ralph``, and the bugzilla
  e-mails ``rbean@redhat.com`` & co. would become usernames).  That is also
  the production default (an empty map), so the golden tests use
  ``no_accounts``.

Differences from the expected files that are deliberate, each asserted where
it applies:

* ``None`` is not a username.  7 fedora-messaging messages (hotness
  ``update.drop``, discourse ``solved``) have schema ``usernames == [None]``,
  in the expected file and in the golden metadata alike; ``Message.usernames``
  is a set of str, so the ``None`` is dropped.  (No user can be called
  ``null``, so no notification changes.)
* ``""`` means "no summary / no link": processors return ``""`` or ``None``
  at random, and ``Message.summary``/``url`` are ``None`` for both.
* Processor methods that raise leave their field empty (koschei
  ``collection.state.change`` packages: NotImplementedError), as do those
  that would need the network (taskotron's packages come from bodhi over
  HTTP: ``network_dependent``); both are counted in ``property_errors``.
* tagger ``anonymous``: the fixtures expect no username, because
  fedmsg_meta tests ``user is 'anonymous'``, which only holds for the
  interned literals of its test module.  On JSON from the wire (what FMN
  always saw) the processor returns ``{"anonymous"}``; we keep the library's
  answer (``computed``).
* fedoracollege: no processor is registered for it and its fixtures never ran,
  so their expectations were never true; fedmsg.meta's default processor
  gives ``computed`` (nothing), and so do we.
* Agent: where fedmsg.meta's ``msg2agent`` would ``set.pop()`` one of several
  usernames (``agent_ambiguous_among``), spec section 1 says no agent.
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shared_data import GOLDEN, MESSAGES, read_jsonl

from fmn import metadata
from fmn.errors import InvalidMessage
from fmn.message import Message
from fmn.metadata import FEDMSG_CONFIG, decode, parse, property_errors, set_account_map
from fmn.metadata.fedmsg_meta import from_envelope

pytestmark = pytest.mark.unit

#: fedmsg_meta_fedora_infrastructure/tests/base.py, the stub its suite runs with.
FAS_STUB = {
    "threebean": "ralph",
    "rbean@redhat.com": "ralph",
    "puiterwijk@gmail.com": "puiterwijk",
    "nicolas.mailhot@laposte.net": "nim",
}


@pytest.fixture
def fas_stub() -> Iterator[None]:
    set_account_map(FAS_STUB)
    yield
    set_account_map({})


@pytest.fixture
def no_accounts() -> None:
    set_account_map({})


def lines(path: Any) -> list[bytes]:
    return [line for line in path.read_bytes().splitlines() if line.strip()]


def usernames(values: list[Any] | None) -> frozenset[str]:
    """An expected list as a set, without the ``None`` that no username can be."""
    return frozenset(v for v in values or () if v is not None)


def no_empty(value: str | None) -> str | None:
    return value or None


# --------------------------------------------------------------------------
# fedora-messaging: the schema classes' properties

FM_LINES = lines(MESSAGES / "fedora-messaging.jsonl")
FM_EXPECTED = read_jsonl(MESSAGES / "fedora-messaging-expected.jsonl")
FM_SETS = (
    ("usernames", "usernames"),
    ("groups", "groups"),
    ("rpms", "packages"),
    ("containers", "containers"),
    ("modules", "modules"),
    ("flatpaks", "flatpaks"),
)


@pytest.mark.parametrize(
    ("line", "expected"),
    zip(FM_LINES, FM_EXPECTED, strict=True),
    ids=[f"{i:03d}-{e['schema']}" for i, e in enumerate(FM_EXPECTED)],
)
def test_fedora_messaging_gives_the_schema_properties(
    line: bytes, expected: dict[str, Any]
) -> None:
    message = parse(line)
    assert (message.id, message.topic) == (expected["id"], expected["topic"])
    for field, key in FM_SETS:
        assert getattr(message, field) == usernames(expected[key]), field
    assert message.app_name == expected["app_name"]
    assert message.agent_name == expected["agent_name"]
    assert message.severity == expected["severity"]
    assert message.summary == no_empty(expected["summary"])
    assert message.url == no_empty(expected["url"])
    assert message.sent_at == orjson.loads(line)["headers"]["sent-at"]
    assert message.body == orjson.loads(line)["body"]


def test_none_is_dropped_from_usernames_and_nothing_else() -> None:
    with_none = [e for e in FM_EXPECTED if None in e["usernames"]]
    assert len(with_none) == 7
    for expected in with_none:
        message = parse(FM_LINES[FM_EXPECTED.index(expected)])
        assert message.usernames == frozenset(expected["usernames"]) - {None}


def test_a_property_that_raises_empties_its_field_only(caplog: pytest.LogCaptureFixture) -> None:
    (index,) = [i for i, e in enumerate(FM_EXPECTED) if "property_errors" in e]
    expected = FM_EXPECTED[index]
    key = (expected["schema"], "summary")
    property_errors.pop(key, None)
    with caplog.at_level(logging.DEBUG, logger="fmn.metadata"):
        message = parse(FM_LINES[index])
        again = parse(FM_LINES[index])
    assert message.summary is None and again.summary is None
    assert message.usernames == frozenset(expected["usernames"])
    assert message.agent_name == expected["agent_name"]
    assert property_errors[key] == 2
    # the first failure is a warning, the next ones debug lines (no flood at bus rate)
    levels = [r.levelno for r in caplog.records if "summary" in r.getMessage()]
    assert levels == [logging.WARNING, logging.DEBUG]


# --------------------------------------------------------------------------
# fedmsg: the fedmsg_meta_fedora_infrastructure fixtures

FEDMSG_LINES = lines(MESSAGES / "fedmsg.jsonl")
FEDMSG_EXPECTED = read_jsonl(MESSAGES / "fedmsg-expected.jsonl")
FEDMSG_KEYS = ("usernames", "packages", "agent", "subtitle", "link")


def fedmsg_expectation(expected: Mapping[str, Any]) -> dict[str, Any]:
    """What we must give for one fixture: stated values, else ``computed``, then the
    deliberate differences of the module docstring."""
    computed = expected["computed"]
    want = {
        key: computed[key] if key in expected["unstated"] else expected[key] for key in FEDMSG_KEYS
    }
    if expected["topic"].startswith("fedoracollege."):
        want = {key: computed[key] for key in FEDMSG_KEYS}
    if ".fedoratagger." in expected["topic"] and "anonymous" in computed["usernames"]:
        want["usernames"] = computed["usernames"]
    for key in expected.get("network_dependent", ()):
        want[key] = []
    if computed["packages"] is None:  # the processor raised
        want["packages"] = []
    if "agent_ambiguous_among" in computed:
        assert computed["agent"] is None
    return {
        "usernames": frozenset(want["usernames"]),
        "rpms": frozenset(want["packages"]),
        "agent_name": want["agent"],
        "summary": no_empty(want["subtitle"]),
        "url": no_empty(want["link"]),
    }


@pytest.mark.parametrize(
    ("line", "expected"),
    zip(FEDMSG_LINES, FEDMSG_EXPECTED, strict=True),
    ids=[f"{e['index']}-{e['topic']}" for e in FEDMSG_EXPECTED],
)
def test_fedmsg_gives_the_fixture_expectations(
    fas_stub: None, line: bytes, expected: dict[str, Any]
) -> None:
    if "config_overrides" in expected:
        # The fixture's setUp changed fedmsg's config (pkgdb's namespace);
        # the processor methods see it, as in the fixture's own test.
        envelope = decode(line)
        message = from_envelope(envelope, config={**FEDMSG_CONFIG, **expected["config_overrides"]})
    else:
        message = parse(line)
    got = {
        key: getattr(message, key) for key in ("usernames", "rpms", "agent_name", "summary", "url")
    }
    assert got == fedmsg_expectation(expected)
    assert message.topic == expected["topic"]
    assert message.severity == 20
    assert message.groups == frozenset()


def test_fedmsg_deliberate_differences_are_the_known_ones() -> None:
    """Where the fixture's stated value is not what we check, it is for a listed reason."""
    overridden = set()
    for expected in FEDMSG_EXPECTED:
        want = fedmsg_expectation(expected)
        for key, field in (("usernames", "usernames"), ("packages", "rpms")):
            if key not in expected["unstated"] and frozenset(expected[key]) != want[field]:
                overridden.add((expected["index"], key))
        if "link" not in expected["unstated"] and no_empty(expected["link"]) != want["url"]:
            overridden.add((expected["index"], "link"))
    fedoracollege = {(i, key) for i in (326, 327, 328) for key in ("usernames", "link")}
    tagger_anonymous = {(525, "usernames"), (527, "usernames")}
    taskotron_needs_bodhi = {(533, "packages")}
    assert overridden == fedoracollege | tagger_anonymous | taskotron_needs_bodhi


def test_agent_is_none_where_msg2agent_would_pick_at_random(fas_stub: None) -> None:
    ambiguous = [
        (line, e)
        for line, e in zip(FEDMSG_LINES, FEDMSG_EXPECTED, strict=True)
        if "agent_ambiguous_among" in e["computed"]
    ]
    assert len(ambiguous) == 19
    for line, expected in ambiguous:
        message = parse(line)
        assert message.agent_name is None
        assert message.usernames == frozenset(expected["computed"]["agent_ambiguous_among"])


def test_a_processor_that_raises_empties_its_field_only(fas_stub: None) -> None:
    (index,) = [i for i, e in enumerate(FEDMSG_EXPECTED) if ".koschei.collection." in e["topic"]]
    before = property_errors[("koschei", "packages")]
    message = parse(FEDMSG_LINES[index])
    assert message.rpms == frozenset()
    assert message.summary == FEDMSG_EXPECTED[index]["subtitle"]
    assert property_errors[("koschei", "packages")] == before + 1


def test_nothing_leaves_the_machine(monkeypatch: pytest.MonkeyPatch, no_accounts: None) -> None:
    attempts: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(args)
        raise OSError("network use in a unit test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    before = property_errors[("taskotron", "packages")]
    for line in FEDMSG_LINES + FM_LINES:
        parse(line)
    assert attempts == []
    # taskotron's bodhi_update packages would have been an HTTP GET to bodhi
    assert property_errors[("taskotron", "packages")] == before + 1


def test_account_lookups_neither_warn_nor_rebuild(
    caplog: pytest.LogCaptureFixture, no_accounts: None
) -> None:
    with caplog.at_level(logging.DEBUG, logger="moksha.hub"):
        for line in FEDMSG_LINES:
            parse(line)
    assert [r for r in caplog.records if r.name == "moksha.hub" and r.levelno >= logging.INFO] == []


def test_account_map_turns_nicks_and_emails_into_usernames(no_accounts: None) -> None:
    (index,) = [
        i
        for i, e in enumerate(FEDMSG_EXPECTED)
        if e["topic"].endswith("bugzilla.bug.update")
        and "rbean@redhat.com" in FEDMSG_LINES[i].decode()
    ]
    assert parse(FEDMSG_LINES[index]).usernames == {"upstream-release-monitoring"}
    set_account_map({"rbean@redhat.com": "ralph"})
    assert parse(FEDMSG_LINES[index]).usernames == {"upstream-release-monitoring", "ralph"}


def test_fedmsg_envelope_fields() -> None:
    envelope = orjson.loads(FEDMSG_LINES[0])
    envelope.update(timestamp=1344447839.891876, msg_id="2012-abc")
    message = parse(orjson.dumps(envelope))
    assert message.id == "2012-abc"
    assert message.sent_at == "2012-08-08T17:43:59.891876+00:00"
    assert message.app_name == "Wiki"
    assert message.body == envelope["msg"]


def test_fedmsg_without_msg_id_gets_a_stable_derived_id() -> None:
    envelope = {"topic": "org.fedoraproject.prod.wiki.article.edit", "msg": {"user": "ralph"}}
    first, again = parse(orjson.dumps(envelope)), parse(envelope)
    assert first.id == again.id
    assert first.id != parse({**envelope, "msg": {"user": "someone"}}).id
    assert first.sent_at is None


@pytest.mark.parametrize(("one", "other"), [
    (b'{"topic": "t", "msg": {"n": NaN}}', b'{"topic": "t", "msg": {"n": null}}'),
    (b'{"topic": "t", "msg": {"n": 18446744073709551616}}',
     b'{"topic": "t", "msg": {"n": 18446744073709551617}}'),
    (b'{"topic": "t", "msg": {"n": -9223372036854775809}}',
     b'{"topic": "t", "msg": {"n": -9223372036854775810}}'),
], ids=["nan-null", "past-64-bits", "below-64-bits"])
def test_records_that_differ_get_different_derived_ids(one: bytes, other: bytes) -> None:
    # a shared id would make the second record's sends look done already
    assert parse(one).id != parse(other).id


def test_a_derived_id_is_the_same_from_bytes_and_from_what_json_reads() -> None:
    import json

    record = b'{"topic": "t", "msg": {"n": 18446744073709551616, "x": NaN, "d": 1e20}}'
    assert parse(record).id == parse(json.loads(record)).id  # the replay journal's way


@pytest.mark.parametrize("record", [
    b'{"topic": "org.fedoraproject.prod.x", "msg": {"s": "\\ud800 lone"}}',
    b'{"topic": "org.fedoraproject.prod.x", "msg": {"\\udfff": NaN}}',
], ids=["lone-surrogate", "lone-surrogate-key-nan"])
def test_a_lone_surrogate_without_msg_id_still_gets_a_stable_id(record: bytes) -> None:
    # "\ud800" is valid JSON that Python reads as a lone surrogate: no UTF-8 text
    assert parse(record).id == parse(record).id


# --------------------------------------------------------------------------
# golden: the metadata the matcher's golden example rests on

GOLDEN_LINES = lines(GOLDEN / "messages.jsonl")
GOLDEN_EXPECTED = read_jsonl(GOLDEN / "metadata.jsonl")


@pytest.mark.parametrize(
    ("line", "expected"),
    zip(GOLDEN_LINES, GOLDEN_EXPECTED, strict=True),
    ids=[f"{i:03d}-{e['topic']}" for i, e in enumerate(GOLDEN_EXPECTED)],
)
def test_golden_metadata(no_accounts: None, line: bytes, expected: dict[str, Any]) -> None:
    got = parse(line).metadata()
    for key, value in expected.items():
        if isinstance(value, list):
            assert frozenset(got[key]) == usernames(value), key
        else:
            assert got[key] == value, key


# --------------------------------------------------------------------------
# bad input: InvalidMessage, never another exception

FM_RECORD = orjson.loads(FM_LINES[0])
FEDMSG_ENVELOPE = orjson.loads(FEDMSG_LINES[0])


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        pytest.param(b"{not json", "not-json", id="not-json"),
        pytest.param(b"", "not-json", id="empty"),
        pytest.param(b'{"topic": "a.b", "msg": {"x": "\xff"}}', "not-json", id="invalid-utf8"),
        pytest.param('{"topic": "\ud800", "msg": {}}', "not-json", id="lone-surrogate"),
        pytest.param(b"[1, 2]", "not-an-object", id="json-array"),
        pytest.param(b'"topic"', "not-an-object", id="json-string"),
        pytest.param(42, "not-an-object", id="not-bytes-str-or-mapping"),
        pytest.param(b'{"msg": {}}', "missing-topic", id="missing-topic"),
        pytest.param(b'{"topic": 7, "msg": {}}', "missing-topic", id="int-topic"),
        pytest.param(b'{"topic": "", "msg": {}}', "missing-topic", id="empty-topic"),
        pytest.param({**FEDMSG_ENVELOPE, "topic": "a." * 128}, "topic-too-long",
                     id="fedmsg-topic-256"),
        pytest.param({**FM_RECORD, "topic": "x" * 1_000_000}, "topic-too-long",
                     id="fm-topic-megabyte"),
        pytest.param(b'{"topic": "a.b"}', "unknown-format", id="neither-form"),
        pytest.param(b'{"topic": "a.b", "msg": {}, "body": {}}', "unknown-format", id="both-forms"),
        pytest.param({**FM_RECORD, "body": "a string"}, "bad-field", id="fm-body-string"),
        pytest.param({**FM_RECORD, "body": None}, "bad-field", id="fm-body-null"),
        pytest.param({**FM_RECORD, "headers": []}, "bad-field", id="fm-headers-list"),
        pytest.param({**FM_RECORD, "id": 12}, "bad-field", id="fm-id-int"),
        pytest.param({**FEDMSG_ENVELOPE, "msg": "a string"}, "bad-field", id="fedmsg-msg-string"),
        pytest.param({**FEDMSG_ENVELOPE, "msg_id": ["x"]}, "bad-field", id="fedmsg-msg-id-list"),
        pytest.param({"topic": "a.b", "msg": {}, "x": {1, 2}}, "bad-field", id="mapping-not-json"),
    ],
)
def test_bad_input_is_invalid_message(record: Any, reason: str) -> None:
    with pytest.raises(InvalidMessage) as caught:
        parse(record)
    assert caught.value.reason == reason
    assert caught.value.detail


def test_unknown_schema_gets_base_message_behaviour() -> None:
    record = {
        **FM_RECORD,
        "headers": {**FM_RECORD["headers"], "fedora_messaging_schema": "nope.v1"},
    }
    message = parse(orjson.dumps(record))
    assert message.id == FM_RECORD["id"]
    assert message.app_name is None
    assert message.usernames == frozenset()
    assert message.summary == FM_RECORD["topic"]  # the base class's summary is the topic
    assert message.severity == FM_RECORD["headers"]["fedora_messaging_severity"]


def test_an_overlong_schema_name_is_read_as_unknown_and_not_remembered(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from fmn.metadata import fedora_messaging_meta

    looked_up: list[str | None] = []
    cached = fedora_messaging_meta.schema_class

    def schema_class(name: str | None) -> Any:
        looked_up.append(name)
        return cached(name)

    monkeypatch.setattr(fedora_messaging_meta, "schema_class", schema_class)
    name = "x" * 1_000_000
    record = {**FM_RECORD, "headers": {**FM_RECORD["headers"], "fedora_messaging_schema": name}}
    message = parse(record)
    assert message.summary == FM_RECORD["topic"]  # the base class, as for an unknown name
    assert looked_up and name not in looked_up  # no megabyte key in the cache


def test_record_without_headers_or_id_still_parses() -> None:
    record = {"topic": "org.fedoraproject.prod.x.y", "body": {}}
    message = parse(record)
    assert message.id == parse(orjson.dumps(record)).id  # derived, stable
    assert (message.app_name, message.sent_at, message.severity) == (None, None, 20)


def test_schema_whose_properties_raise_on_this_body(caplog: pytest.LogCaptureFixture) -> None:
    record = next(
        r
        for r in map(orjson.loads, FM_LINES)
        if r["headers"]["fedora_messaging_schema"] == "pagure.git.receive"
    )
    record["body"] = {"unexpected": True}
    before = sum(property_errors.values())
    with caplog.at_level(logging.WARNING, logger="fmn.metadata"):
        message = parse(record)
    assert message.topic == record["topic"] and message.app_name == "Pagure"
    assert message.usernames == frozenset() and message.summary is None
    assert sum(property_errors.values()) > before
    assert caplog.records


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    topic=st.sampled_from(
        sorted({e["topic"] for e in FEDMSG_EXPECTED} | {e["topic"] for e in FM_EXPECTED})
    ),
    schema=st.sampled_from(sorted({e["schema"] for e in FM_EXPECTED}) + ["nope"]),
    payload=st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=5),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
        ),
        max_leaves=8,
    ),
    form=st.sampled_from(["fedmsg", "fedora-messaging"]),
)
def test_any_json_gives_a_message_or_invalid_message(
    topic: str, schema: str, payload: Any, form: str
) -> None:
    if form == "fedmsg":
        record: dict[str, Any] = {"topic": topic, "msg": payload, "timestamp": payload}
    else:
        record = {
            "topic": topic,
            "body": payload,
            "id": "x",
            "headers": {"fedora_messaging_schema": schema, "sent-at": payload},
        }
    logging.disable(logging.WARNING)  # every property raising on noise is expected here
    try:
        result = parse(json.dumps(record))  # stdlib: any int, unlike orjson
    except InvalidMessage:
        assert not isinstance(payload, dict)
    else:
        assert isinstance(result, Message)
    finally:
        logging.disable(logging.NOTSET)


def test_import_loads_no_bus_library() -> None:
    code = (
        "import sys, fmn.metadata\n"
        "print(sorted(m for m in ('fedmsg', 'fedora_messaging', 'pika') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_parse_accepts_str_bytes_and_mappings_alike() -> None:
    line = FM_LINES[0]
    assert (
        parse(line) == parse(line.decode()) == parse(bytearray(line)) == parse(orjson.loads(line))
    )
    assert metadata.parse is parse


def test_a_topic_of_the_longest_length_a_bus_allows_is_read() -> None:
    from fmn.metadata import MAX_TOPIC_LENGTH

    topic = "org.fedoraproject.prod." + "x" * (MAX_TOPIC_LENGTH - 23)
    assert len(topic) == MAX_TOPIC_LENGTH
    assert parse({**FEDMSG_ENVELOPE, "topic": topic}).topic == topic
