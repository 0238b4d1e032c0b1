"""The preferences database on SQLite: the shared contract, plus SQLite's own setup.

Each test gets a freshly migrated database in its own temporary file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from db_contract import DbContract, golden, same_json
from sqlalchemy import Engine

from fmn import db

pytestmark = pytest.mark.unit


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'fmn.sqlite'}")
    db.upgrade(engine)
    yield engine
    engine.dispose()


class TestSqlite(DbContract):
    pass


def test_engine_turns_foreign_keys_and_wal_on(engine: Engine) -> None:
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_upgrade_by_url_creates_the_directory(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'var' / 'deep' / 'fmn.sqlite'}"
    db.upgrade(url)
    engine = db.make_engine(url)
    try:
        db.import_document(engine, golden())
        assert same_json(db.export_document(engine), golden())
    finally:
        engine.dispose()


def test_default_url_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FMN_DATABASE_URL", raising=False)
    assert db.default_url() == "sqlite:///var/fmn.sqlite"
    monkeypatch.setenv("FMN_DATABASE_URL", "postgresql://db.example.org/fmn")
    assert db.default_url() == "postgresql://db.example.org/fmn"


def test_a_bare_postgresql_url_means_psycopg_3() -> None:
    assert db.normalize_url("postgresql://u@h/d").drivername == "postgresql+psycopg"
    assert db.normalize_url("postgresql+psycopg://u@h/d").drivername == "postgresql+psycopg"
    assert db.normalize_url("sqlite:///x.sqlite").drivername == "sqlite"


def test_relative_default_location_is_under_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FMN_DATABASE_URL", raising=False)
    engine = db.make_engine()
    try:
        db.upgrade(engine)
        assert (tmp_path / "var" / "fmn.sqlite").exists()
    finally:
        engine.dispose()
