"""The preferences database on PostgreSQL: the shared contract on a real server.

The tests create a database of their own (``fmn_test_<random>``) through
``$FMN_TEST_POSTGRES_URL`` (default: the ``test`` database on 127.0.0.1, user
``postgres``), give each test a fresh schema in it, and drop the database at
the end.  No server: the tests skip locally and fail in CI (``CI`` set).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from db_contract import DbContract, golden, same_json
from services import postgres_database, postgres_schema
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL

from fmn import db

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def database() -> Iterator[Any]:
    yield from postgres_database()


@pytest.fixture
def engine(database: Any) -> Iterator[Engine]:
    yield from postgres_schema(database)


class TestPostgres(DbContract):
    pass


def test_filters_are_kept_as_json_text_not_jsonb(engine: Engine) -> None:
    with engine.connect() as conn:
        kind = conn.execute(text(
            "SELECT data_type FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = 'generation_rules' "
            "AND column_name = 'filters'")).scalar_one()
    assert kind == "json"


def test_a_bare_postgresql_url_works(database: URL) -> None:
    engine = db.make_engine(database.set(drivername="postgresql").render_as_string(
        hide_password=False))
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar_one() == 1
        assert engine.dialect.driver == "psycopg"
    finally:
        engine.dispose()


def test_round_trip_through_a_separate_engine(engine: Engine) -> None:
    # What the CLI does: import in one process, export from another.
    db.import_document(engine, golden())
    with engine.connect() as conn:
        schema = conn.execute(text("SELECT current_schema()")).scalar_one()
    other = db.make_engine(engine.url, connect_args={"options": f"-c search_path={schema}"})
    try:
        assert same_json(db.export_document(other), golden())
    finally:
        other.dispose()


def test_live_ownership_stamps_move_only_forward(engine: Engine) -> None:
    from datetime import UTC, datetime, timedelta, timezone

    from fmn.ownership import store as ostore

    t = datetime(2024, 1, 2, 18, 20, tzinfo=UTC)
    ostore.stamp_live(engine, "artifact", {"rpms/foo": t, "rpms/bar": t})
    # an older stamp (another zone, the same instant minus an hour) never moves one back
    ostore.stamp_live(engine, "artifact", {
        "rpms/foo": (t - timedelta(hours=1)).astimezone(timezone(timedelta(hours=2))),
        "rpms/bar": t + timedelta(minutes=1)})
    assert ostore.live_stamps(engine, "artifact", ["rpms/foo", "rpms/bar", "rpms/baz"]) == {
        "rpms/foo": t, "rpms/bar": t + timedelta(minutes=1)}
    assert ostore.live_stamps(engine, "member", ["rpms/foo"]) == {}
