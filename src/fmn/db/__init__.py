"""The preferences database: users, destinations, rules, ownership and groups.

SQLAlchemy models (:mod:`fmn.db.models`), Alembic migrations shipped in the
package (:func:`upgrade`), and the operations the CLI, the web UI and the
snapshot builder use (:mod:`fmn.db.store` writes, :mod:`fmn.db.load` reads).
Works on SQLite (the default, ``var/fmn.sqlite`` or ``$FMN_DATABASE_URL``) and
PostgreSQL (psycopg 3).
Typical use::

    engine = make_engine()          # or make_engine("postgresql://...")
    upgrade(engine)
    import_document(engine, json.load(f))   # validated, all or nothing
    export_document(engine)                 # == the document imported

Errors: :class:`fmn.prefs.InvalidPreferences` for a document or user that
breaks the spec (nothing is written); SQLAlchemy's own exceptions for the
database, to be translated at the edge.
"""

from fmn.db.engine import (
    alembic_config,
    default_url,
    downgrade,
    make_engine,
    normalize_url,
    upgrade,
)
from fmn.db.load import (
    DbState,
    db_state,
    export_document,
    load_preferences,
    load_user,
    load_user_revision,
    user_revisions,
)
from fmn.db.store import (
    NEW_USER,
    StaleUser,
    delete_user,
    import_document,
    import_preferences,
    save_user,
)

__all__ = [
    "NEW_USER",
    "DbState",
    "StaleUser",
    "alembic_config",
    "db_state",
    "default_url",
    "delete_user",
    "downgrade",
    "export_document",
    "import_document",
    "import_preferences",
    "load_preferences",
    "load_user",
    "load_user_revision",
    "make_engine",
    "normalize_url",
    "save_user",
    "upgrade",
    "user_revisions",
]
