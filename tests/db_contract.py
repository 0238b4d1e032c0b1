"""The preferences database's contract, one test body for SQLite and PostgreSQL.

:class:`DbContract` holds the tests; ``tests/unit/test_db_sqlite.py`` and
``tests/integration/test_db_postgres.py`` subclass it and provide the
``engine`` fixture: a freshly migrated, empty database of their backend.
Documents are compared with :func:`same_json`, which tells ``true`` from
``1`` and sees key order, as a user reading the export would.
"""

from __future__ import annotations

import copy
import json
import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from shared_data import golden_prefs_doc
from sqlalchemy import Column, Engine, Integer, MetaData, event, func, inspect, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, selectinload

from fmn import db
from fmn.db import store
from fmn.db.models import (
    Base,
    GenerationRuleRow,
    RuleArtifactRow,
    RuleRow,
    UserRow,
)
from fmn.generate import generate_preferences
from fmn.prefs import (
    Destination,
    Filters,
    GenerationRule,
    InvalidPreferences,
    Rule,
    Tracking,
    User,
    dump_document,
    dump_user,
    parse_document,
)

EMPTY = {"version": 1, "users": [],
         "owners": {"rpms": {}, "containers": {}, "modules": {}, "flatpaks": {}}, "groups": {}}


def golden() -> dict[str, Any]:
    """A fresh copy of the golden preferences document."""
    doc: dict[str, Any] = json.loads(golden_prefs_doc())
    return doc


def same_json(a: Any, b: Any) -> bool:
    """Equal as JSON text: ``true`` is not ``1``, ``1.0`` is not ``1``, key order counts."""
    return json.dumps(a) == json.dumps(b)


def generated(users: int, seed: int) -> dict[str, Any]:
    return dump_document(generate_preferences(users, seed))


def edge_document() -> dict[str, Any]:
    """Shapes the golden file lacks: odd strings, duplicates, empty lists, odd JSON."""
    # COPY and SQL quoting meet backslashes, \N, quotes and %; no string of a
    # preference holds control characters (fields values neither), but their
    # escaped spellings must come back as they went in.
    odd = "back \\ slash \\N \"quote\" 'single' %s %(x)s {}, é, 🚀"
    control = "tab\\t new\\n line nul\\x00 bell\\x07 \\\\. end"
    return {
        "version": 1,
        "users": [
            {"name": "zed", "enabled": False, "destinations": [], "rules": []},
            {"name": odd, "enabled": True,
             "destinations": [
                 {"id": "z", "protocol": "sse", "address": odd, "verified": True,
                  "digest": {"interval_s": 7 * 24 * 3600, "max_count": 1}},
                 {"id": "a", "protocol": "email", "address": "a@example.org",
                  "verified": False, "digest": None},
                 {"id": odd, "protocol": "sse", "address": None, "verified": True,
                  "digest": None},
             ],
             "rules": [
                 {"id": "r9", "name": " spaced ", "enabled": False,
                  "tracking": {"kind": "artifacts-group-owned",
                               "params": {"groups": ["g", "g", odd]}},
                  "generation_rules": [
                      {"filters": {}, "destinations": []},
                      {"filters": {"applications": [], "excluded_applications": ["x", "X"],
                                   "severities": ["DEBUG", "ERROR", "DEBUG"],
                                   "topic": "*.a.[bc]?", "my_actions": True,
                                   "fields": {"z.y": [odd, control, 2**62, -0.5, 1e300,
                                                      -1, ""],
                                              "a": [[], {}, {"k": None}, False]}},
                       # a set: listed twice, kept once (the test below)
                       "destinations": ["z", "a", odd]},
                  ]},
                 {"id": "r1", "name": odd, "enabled": True,
                  "tracking": {"kind": "artifacts-followed", "params": {"artifacts": [
                      {"type": "flatpaks", "name": "b"}, {"type": "rpms", "name": "a"},
                      {"type": "flatpaks", "name": "b"}]}},
                  "generation_rules": [{"filters": {"my_actions": False},
                                        "destinations": ["a"]}]},
                 {"id": "r0", "name": "t", "enabled": True,
                  "tracking": {"kind": "topics", "params": {"patterns": ["b.*", "a.*"]}},
                  "generation_rules": [{"filters": {}, "destinations": ["a"]}]},
                 {"id": "r5", "name": "u", "enabled": True,
                  "tracking": {"kind": "users-followed", "params": {"usernames": ["y", "x"]}},
                  "generation_rules": [{"filters": {}, "destinations": ["a"]}]},
             ]},
            {"name": "aaa", "enabled": True, "destinations": [], "rules": []},
        ],
        "owners": {"rpms": {"z": {"users": ["b", "a", "b"], "groups": []},
                            "a": {"users": [], "groups": ["g2", "g1"]}},
                   "containers": {}, "modules": {odd: {"users": [odd], "groups": [odd]}},
                   "flatpaks": {}},
        "groups": {"zz": ["b", "a"], "aa": [], odd: [odd, odd]},
    }


def fields_document(values: list[Any]) -> dict[str, Any]:
    """One user whose one generation rule filters on ``fields`` paths with ``values``."""
    return {
        "version": 1,
        "users": [{
            "name": "alice", "enabled": True,
            "destinations": [{"id": "d1", "protocol": "irc", "address": "alice",
                              "verified": True, "digest": None}],
            "rules": [{
                "id": "r1", "name": "fields", "enabled": True,
                "tracking": {"kind": "artifacts-owned", "params": {}},
                "generation_rules": [{
                    # "z" before "a": a jsonb column would sort them.
                    "filters": {"fields": {"z": values, "a": [1], "m.n": [True]}},
                    "destinations": ["d1"]}],
            }],
        }],
        "owners": {"rpms": {}, "containers": {}, "modules": {}, "flatpaks": {}},
        "groups": {},
    }


@contextmanager
def counting_statements(engine: Engine) -> Iterator[list[str]]:
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", count)


class DbContract:
    """What both backends must do.  Subclasses provide the ``engine`` fixture."""

    # ------------------------------------------------------------------
    # round trips

    def test_empty_database_exports_an_empty_document(self, engine: Engine) -> None:
        assert same_json(db.export_document(engine), EMPTY)
        assert db.user_revisions(engine) == {}
        assert db.db_state(engine).change_seq == 0

    def test_golden_preferences_round_trip_exactly(self, engine: Engine) -> None:
        doc = golden()
        prefs = db.import_document(engine, doc)
        assert same_json(db.export_document(engine), doc)
        assert db.load_preferences(engine) == prefs

    @pytest.mark.parametrize("values", [
        [True], [1], [1.5], [None], [{"a": [1]}], [1.0], [0, False, "0", None, [], {}],
    ], ids=repr)
    def test_fields_values_round_trip_exactly(self, engine: Engine, values: list[Any]) -> None:
        doc = fields_document(values)
        db.import_document(engine, doc)
        assert same_json(db.export_document(engine), doc)
        loaded = db.load_user(engine, "alice")
        assert loaded is not None
        fields = loaded.rules[0].generation_rules[0].filters.fields
        assert fields is not None and [path for path, _ in fields] == ["z", "a", "m.n"]
        assert [type(v) for v in fields[0][1]] == [type(v) for v in values]

    @pytest.mark.parametrize("seed", [1, 2])
    def test_generated_preferences_round_trip_exactly(self, engine: Engine, seed: int) -> None:
        doc = generated(300, seed)
        db.import_document(engine, doc)
        assert same_json(db.export_document(engine), doc)

    def test_import_preferences_takes_them_already_parsed(self, engine: Engine) -> None:
        prefs = generate_preferences(200, 7)
        db.import_preferences(engine, prefs)
        assert db.load_preferences(engine) == prefs
        assert same_json(db.export_document(engine), dump_document(prefs))

    def test_edge_cases_round_trip_exactly(self, engine: Engine) -> None:
        doc = edge_document()
        assert same_json(dump_document(parse_document(doc)), doc)  # canonical, as meant
        twice = copy.deepcopy(doc)  # a destination listed twice is one row, exported once
        gen = twice["users"][1]["rules"][0]["generation_rules"][1]
        gen["destinations"] = gen["destinations"][:1] + gen["destinations"]
        db.import_document(engine, twice)
        assert same_json(db.export_document(engine), doc)
        odd = doc["users"][1]["name"]
        loaded = db.load_user(engine, odd)
        assert loaded is not None and same_json(dump_user(loaded), doc["users"][1])

    def test_load_user_of_an_unknown_name_is_none(self, engine: Engine) -> None:
        db.import_document(engine, golden())
        assert db.load_user(engine, "nobody-by-that-name") is None

    # ------------------------------------------------------------------
    # all or nothing

    @pytest.mark.parametrize(("mutate", "where"), [
        (lambda d: d["users"][7]["rules"][0]["tracking"].update(kind="owned-by-me"),
         "users[7] (astepano) > rules[0] (r0) > tracking > kind"),
        (lambda d: d["users"][5]["rules"][0]["generation_rules"][1].update(
            destinations=["d0", "d9"]),
         "users[5] (anitya) > rules[0] (r0) > generation_rules[1].destinations[1]"),
        (lambda d: d["users"][3]["rules"][0]["generation_rules"][0]["filters"].update(
            severities=["LOUD"]),
         "users[3] (adamwill) > rules[0] (r0) > generation_rules[0].filters.severities[0]"),
        (lambda d: d["users"][3]["rules"].append(copy.deepcopy(d["users"][3]["rules"][0])),
         "users[3] (adamwill) > rules[1]"),
        (lambda d: d["users"].append({"name": "anitya", "enabled": True}), "users[224]"),
    ], ids=["tracking-kind", "unknown-destination", "severity", "duplicate-rule",
            "duplicate-user"])
    def test_invalid_document_is_refused_and_nothing_changes(
            self, engine: Engine, mutate: Callable[[dict[str, Any]], None], where: str) -> None:
        db.import_document(engine, golden())
        state, revisions = db.db_state(engine), db.user_revisions(engine)
        bad = golden()
        bad["users"][0]["enabled"] = False  # a change that must not land either
        mutate(bad)
        with pytest.raises(InvalidPreferences) as raised:
            db.import_document(engine, bad)
        assert raised.value.where == where
        assert same_json(db.export_document(engine), golden())
        assert db.db_state(engine) == state
        assert db.user_revisions(engine) == revisions

    def test_failure_half_way_through_an_import_changes_nothing(
            self, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
        db.import_document(engine, golden())
        state, revisions = db.db_state(engine), db.user_revisions(engine)
        new = generated(200, 4)
        # Small chunks, and the database "fails" on the 20th bulk write: by
        # then the golden users are deleted and some new ones are written.
        monkeypatch.setattr(store, "IMPORT_CHUNK", 20)
        real_bulk = store._bulk
        written: list[int] = []

        def failing_bulk(conn: Any, model: Any, rows: list[dict[str, Any]]) -> None:
            real_bulk(conn, model, rows)
            written.append(len(rows))
            if len(written) == 20:
                seen = conn.execute(select(UserRow.name)).scalars().all()
                written.append(len(seen))
                raise OperationalError("INSERT ...", {}, RuntimeError("disk full"))

        monkeypatch.setattr(store, "_bulk", failing_bulk)
        with pytest.raises(OperationalError):
            db.import_document(engine, new)
        users_seen_inside = written[-1]
        assert 0 < users_seen_inside < len(new["users"])  # it did fail half-way
        assert same_json(db.export_document(engine), golden())
        assert db.db_state(engine) == state
        assert db.user_revisions(engine) == revisions

    def test_database_constraint_violation_changes_nothing(self, engine: Engine) -> None:
        db.import_document(engine, golden())
        state = db.db_state(engine)
        prefs = parse_document(golden())
        # What parse_document would refuse, passed unvalidated: a generation
        # rule naming a destination the user does not have.  The composite
        # foreign key catches it after other rows are already written.
        mallory = User("mallory", True,
                       destinations=(Destination("d1", "email", "m@example.org", True),),
                       rules=(Rule("r1", "x", True, Tracking("related-events"),
                                   (GenerationRule(Filters(), ("d1", "elsewhere")),)),))
        bad = replace(prefs, users=(*reversed(prefs.users[1:]), mallory))
        with pytest.raises(IntegrityError):
            db.import_preferences(engine, bad)
        assert same_json(db.export_document(engine), golden())
        assert db.db_state(engine) == state
        assert db.load_user(engine, "mallory") is None

    def test_values_that_are_not_json_are_refused_before_writing(self, engine: Engine) -> None:
        db.import_document(engine, golden())
        doc = fields_document([math.nan])  # json.loads accepts NaN; JSON does not
        with pytest.raises(ValueError, match="JSON"):
            db.import_document(engine, doc)
        assert same_json(db.export_document(engine), golden())

    def test_a_reader_sees_the_import_entirely_or_not_at_all(
            self, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
        db.import_document(engine, golden())
        new = generated(100, 5)
        monkeypatch.setattr(store, "IMPORT_CHUNK", 20)
        half_way, resume = threading.Event(), threading.Event()
        real_bulk = store._bulk
        calls: list[int] = []

        def pausing_bulk(conn: Any, model: Any, rows: list[dict[str, Any]]) -> None:
            real_bulk(conn, model, rows)
            calls.append(1)
            if len(calls) == 10:
                half_way.set()
                assert resume.wait(30)

        monkeypatch.setattr(store, "_bulk", pausing_bulk)
        errors: list[BaseException] = []

        def run() -> None:
            try:
                db.import_document(engine, new)
            except BaseException as exc:  # reported below
                errors.append(exc)

        writer = threading.Thread(target=run)
        writer.start()
        try:
            assert half_way.wait(30)
            assert same_json(db.export_document(engine), golden())
        finally:
            resume.set()
            writer.join(60)
        assert not errors
        assert same_json(db.export_document(engine), new)

    # ------------------------------------------------------------------
    # revisions

    def test_reimport_keeps_the_revision_of_unchanged_users(self, engine: Engine) -> None:
        db.import_document(engine, golden())
        before = db.user_revisions(engine)
        doc = golden()
        doc["users"].reverse()
        changed = doc["users"][10]
        changed["enabled"] = not changed["enabled"]
        removed = doc["users"].pop(20)["name"]
        doc["users"].insert(5, {"name": "newcomer", "enabled": True, "destinations": [],
                                "rules": []})
        db.import_document(engine, doc)
        after = db.user_revisions(engine)
        seq = db.db_state(engine).change_seq
        assert list(after) == [u["name"] for u in doc["users"]]
        assert removed not in after
        assert after["newcomer"] == seq and after[changed["name"]] == seq
        assert before[changed["name"]] < seq
        unchanged = set(after) - {"newcomer", changed["name"]}
        assert {n: after[n] for n in unchanged} == {n: before[n] for n in unchanged}
        assert same_json(db.export_document(engine), doc)

    def test_ownership_revision_moves_only_when_ownership_changes(self, engine: Engine) -> None:
        doc = golden()
        db.import_document(engine, doc)
        first = db.db_state(engine)
        doc["users"][0]["enabled"] = False
        db.import_document(engine, doc)
        second = db.db_state(engine)
        assert second.change_seq > first.change_seq
        assert second.ownership_revision == first.ownership_revision
        doc["groups"]["group0"].reverse()
        db.import_document(engine, doc)
        third = db.db_state(engine)
        assert third.ownership_revision == third.change_seq > second.change_seq
        assert same_json(db.export_document(engine), doc)

    def test_save_user_bumps_that_users_revision_only(self, engine: Engine) -> None:
        doc = golden()
        db.import_document(engine, doc)
        before = db.user_revisions(engine)
        user = db.load_user(engine, "astepano")
        assert user is not None
        edited = replace(user, enabled=False, destinations=user.destinations[:1],
                         rules=(replace(user.rules[0], name="renamed",
                                        generation_rules=(GenerationRule(
                                            Filters(fields=(("new", (True, 1)),)),
                                            (user.destinations[0].id,)),)),))
        revision = db.save_user(engine, edited)
        after = db.user_revisions(engine)
        assert revision == after["astepano"] > before["astepano"]
        assert revision == db.db_state(engine).change_seq
        assert list(after) == list(before)
        assert {n: r for n, r in after.items() if n != "astepano"} == {
            n: r for n, r in before.items() if n != "astepano"}
        assert db.load_user(engine, "astepano") == edited
        doc["users"][7] = dump_user(edited)
        assert same_json(db.export_document(engine), doc)

    def test_save_user_adds_a_new_user_last(self, engine: Engine) -> None:
        doc = golden()
        db.import_document(engine, doc)
        newcomer = User("newcomer", True, destinations=(
            Destination("live", "sse", None, True),), rules=(
            Rule("r1", "mine", True, Tracking("artifacts-owned"),
                 (GenerationRule(Filters(), ("live",)),)),))
        revision = db.save_user(engine, newcomer)
        assert db.user_revisions(engine)["newcomer"] == revision
        assert list(db.user_revisions(engine))[-1] == "newcomer"
        doc["users"].append(dump_user(newcomer))
        assert same_json(db.export_document(engine), doc)

    def test_save_user_against_a_revision_writes_only_if_still_there(
            self, engine: Engine) -> None:
        db.import_document(engine, golden())
        found = db.load_user_revision(engine, "anitya")
        assert found is not None
        user, read_at = found
        assert read_at == db.user_revisions(engine)["anitya"]
        first = db.save_user(engine, replace(user, enabled=False), read_at)
        state, exported = db.db_state(engine), db.export_document(engine)
        # a second edit made from the same read lost the race: nothing written
        with pytest.raises(db.StaleUser):
            db.save_user(engine, replace(user, rules=()), read_at)
        with pytest.raises(db.StaleUser):  # "new" for a user who exists
            db.save_user(engine, user, db.NEW_USER)
        assert db.db_state(engine) == state
        assert same_json(db.export_document(engine), exported)
        assert db.save_user(engine, replace(user, rules=()), first) > first
        newcomer = User("newcomer", True)
        assert db.save_user(engine, newcomer, db.NEW_USER) > 0
        assert db.load_user_revision(engine, "nobody") is None

    def test_save_user_refuses_an_invalid_user(self, engine: Engine) -> None:
        db.import_document(engine, golden())
        state = db.db_state(engine)
        user = db.load_user(engine, "anitya")
        assert user is not None
        bad = replace(user, rules=(replace(user.rules[0], generation_rules=(
            GenerationRule(Filters(), ("nowhere",)),)),))
        with pytest.raises(InvalidPreferences) as raised:
            db.save_user(engine, bad)
        assert raised.value.where == (
            "user (anitya) > rules[0] (r0) > generation_rules[0].destinations[0]")
        assert db.db_state(engine) == state
        assert same_json(db.export_document(engine), golden())

    def test_delete_user(self, engine: Engine) -> None:
        doc = golden()
        db.import_document(engine, doc)
        before = db.user_revisions(engine)
        assert db.delete_user(engine, "anitya") is True
        state = db.db_state(engine)
        assert db.delete_user(engine, "anitya") is False
        assert db.db_state(engine) == state  # nothing deleted, nothing bumped
        after = db.user_revisions(engine)
        assert "anitya" not in after
        assert after == {n: r for n, r in before.items() if n != "anitya"}
        del doc["users"][5]
        assert same_json(db.export_document(engine), doc)

    # ------------------------------------------------------------------
    # efficiency and the schema

    def test_loading_takes_the_same_queries_for_ten_users_or_many(self, engine: Engine) -> None:
        small = generated(10, 6)
        db.import_document(engine, small)
        with counting_statements(engine) as few:
            db.load_preferences(engine)
        db.import_document(engine, golden())
        with counting_statements(engine) as many:
            db.load_preferences(engine)
        with counting_statements(engine) as one:
            db.load_user(engine, "anitya")
        assert len(few) == len(many)
        assert len(one) <= len(many)

    def test_indexes_answer_who_follows_an_artifact(self, engine: Engine) -> None:
        prefs = db.import_document(engine, golden())
        expected = sorted({u.name for u in prefs.users for r in u.rules
                           for a in r.tracking.artifacts
                           if (a.type, a.name) == ("containers", "dummyrepo")})
        with engine.connect() as conn:
            found = conn.execute(
                select(UserRow.name).distinct()
                .join(RuleArtifactRow, RuleArtifactRow.user_id == UserRow.id)
                .where(RuleArtifactRow.artifact_type == "containers",
                       RuleArtifactRow.artifact_name == "dummyrepo")
                .order_by(UserRow.name)).scalars().all()
        assert len(expected) > 5 and found == expected

    def test_orm_relationships_read_what_load_user_reads(self, engine: Engine) -> None:
        db.import_document(engine, golden())
        user = db.load_user(engine, "@python")
        assert user is not None
        with Session(engine) as session:
            row = session.scalars(
                select(UserRow).where(UserRow.name == "@python").options(
                    selectinload(UserRow.destinations),
                    selectinload(UserRow.rules).selectinload(RuleRow.generation_rules)
                    .selectinload(GenerationRuleRow.destinations))).one()
            assert [d.dest_id for d in row.destinations] == [d.id for d in user.destinations]
            assert [r.rule_id for r in row.rules] == [r.id for r in user.rules]
            assert [[[link.dest_id for link in g.destinations] for g in r.generation_rules]
                    for r in row.rules] == [
                [list(g.destinations) for g in r.generation_rules] for r in user.rules]

    def test_migrated_schema_matches_the_models(self, engine: Engine) -> None:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
            # The comparison does see a difference when there is one.
            changed = MetaData()
            for table in Base.metadata.tables.values():
                table.to_metadata(changed)
            changed.tables["users"].append_column(Column("extra", Integer))
            assert compare_metadata(context, changed) != []

    def test_downgrade_to_base_and_upgrade_again(self, engine: Engine) -> None:
        db.import_document(engine, golden())
        db.downgrade(engine, "base")
        with engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) == {"alembic_version"}
        db.upgrade(engine)
        assert same_json(db.export_document(engine), EMPTY)
        db.import_document(engine, golden())
        assert same_json(db.export_document(engine), golden())

    def test_schema_made_by_create_all_works_too(self, engine: Engine) -> None:
        # Tests elsewhere may use metadata.create_all: the state row appears.
        db.downgrade(engine, "base")
        Base.metadata.create_all(engine)
        db.import_document(engine, golden())
        assert db.db_state(engine).change_seq == 1
        assert same_json(db.export_document(engine), golden())
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(UserRow)).scalar_one() == 224
