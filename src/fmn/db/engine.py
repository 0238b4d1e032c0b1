"""Engines and schema migrations for the preferences database.

:func:`make_engine` builds an engine configured the way :mod:`fmn.db.store`
relies on: on SQLite, foreign keys on, write-ahead logging, and a real
``BEGIN`` for every transaction (Python's sqlite3 otherwise starts none for
``SELECT``, so a multi-query read would not see one consistent snapshot); on
PostgreSQL, the psycopg 3 driver.  JSON is written with ``allow_nan=False``
because NaN and infinities are not JSON and PostgreSQL would refuse them.
:func:`upgrade` runs the in-package Alembic migrations up to ``head``;
:func:`alembic_config` gives the same configuration for other Alembic commands
(``command.revision(alembic_config(url), "msg", autogenerate=True)``).  Nothing
here touches the disk or the network until called.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

#: how JSON columns are written: NaN and infinities are not JSON
json_dumps = functools.partial(json.dumps, allow_nan=False)


def default_url() -> str:
    """``$FMN_DATABASE_URL``, else a SQLite file ``var/fmn.sqlite`` under the cwd.

    Read through :class:`fmn.settings.Settings`, the one place that knows the
    environment; call this at the edge, never at import.
    """
    from fmn.settings import Settings

    return Settings.from_env().database_url


def normalize_url(url: str | URL) -> URL:
    """Parse ``url``; a bare ``postgresql://`` means psycopg 3, the driver we ship."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take transaction control away from the sqlite3 module; _sqlite_begin
    # emits BEGIN instead, for reads too.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA journal_mode = WAL")
        # Safe with WAL: a crash may lose the last commits, never corrupt.
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA busy_timeout = 30000")
    finally:
        cursor.close()


def _sqlite_begin(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN")


def make_engine(url: str | URL | None = None, **kwargs: Any) -> Engine:
    """An engine for ``url`` (default :func:`default_url`); ``kwargs`` go to
    :func:`sqlalchemy.create_engine`.

    For a SQLite file the parent directory is created, since SQLite cannot.
    """
    parsed = normalize_url(url if url is not None else default_url())
    kwargs.setdefault("json_serializer", json_dumps)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, **kwargs)
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(parsed, **kwargs)


def alembic_config(url: str | URL | None = None) -> Config:
    """The Alembic configuration of the in-package migrations, for ``url``."""
    config = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        rendered = normalize_url(url).render_as_string(hide_password=False)
        # ConfigParser interpolation would read a '%' in a password.
        config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return config


def upgrade(url_or_engine: str | URL | Engine | None = None, revision: str = "head") -> None:
    """Migrate the database to ``revision`` (``alembic upgrade head``)."""
    _run(url_or_engine, command.upgrade, revision)


def downgrade(url_or_engine: str | URL | Engine | None, revision: str) -> None:
    """Migrate the database down to ``revision`` (``base`` drops everything)."""
    _run(url_or_engine, command.downgrade, revision)


def _run(url_or_engine: str | URL | Engine | None,
         alembic_command: Callable[[Config, str], None], revision: str) -> None:
    if isinstance(url_or_engine, Engine):
        engine, owned = url_or_engine, False
    else:
        engine, owned = make_engine(url_or_engine), True
    try:
        config = alembic_config()
        with engine.connect() as connection:
            # env.py runs the migrations on this connection, in one transaction.
            config.attributes["connection"] = connection
            alembic_command(config, revision)
    finally:
        if owned:
            engine.dispose()
