"""Alembic environment of the preferences database.

Runs the migrations on the connection that :func:`fmn.db.upgrade` put in
``config.attributes["connection"]``, or else on an engine for the configured
URL (``sqlalchemy.url``, ``$FMN_DATABASE_URL`` or the default SQLite file), in
one transaction.  ``target_metadata`` is :data:`fmn.db.models.Base.metadata`, so
``alembic revision --autogenerate`` and ``alembic check`` compare against the
models.  It configures no logging: a program that migrates keeps its own.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from fmn.db.engine import default_url, make_engine, normalize_url
from fmn.db.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    return config.get_main_option("sqlalchemy.url") or default_url()


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite can only ALTER a table by copying it: let future migrations
        # use op.batch_alter_table transparently.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(url=normalize_url(_url()), target_metadata=target_metadata,
                      literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        return
    engine = make_engine(_url())
    try:
        with engine.connect() as connection:
            _configure(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
