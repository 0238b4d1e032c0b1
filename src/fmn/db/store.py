"""Writing preferences to the database (spec sections 2 and 4).

:func:`import_document` validates a preferences export with
:func:`fmn.prefs.parse_document` before touching the database, then makes it
the whole content in one transaction: a failure half-way leaves the previous
content as it was.  Users whose preferences the import leaves unchanged keep
their rows and revision, so a re-import only rewrites what changed.
:func:`save_user` and :func:`delete_user` change one user, for the web UI;
given the revision the change was made from, :func:`save_user` writes only
if the user is still at it (:class:`StaleUser` otherwise: two concurrent
edits never silently undo each other).
Every write transaction bumps the global change sequence first; a user's
revision is that sequence's value when their preferences last changed.  Rows
go in by bulk INSERT (executemany), or by COPY on PostgreSQL with psycopg.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Connection,
    Engine,
    Table,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError

from fmn.db import pending
from fmn.db.engine import json_dumps
from fmn.db.models import (
    OWNERSHIP_TABLES,
    USER_CONTENT_TABLES,
    DestinationRow,
    GenerationRuleDestinationRow,
    GenerationRuleRow,
    GroupMemberRow,
    GroupRow,
    OwnedArtifactRow,
    OwnerGroupRow,
    OwnerUserRow,
    RuleArtifactRow,
    RuleGroupRow,
    RulePatternRow,
    RuleRow,
    RuleUsernameRow,
    StateRow,
    UserRow,
)
from fmn.gcpause import gc_paused
from fmn.message import ARTIFACT_TYPES
from fmn.prefs import (
    Preferences,
    User,
    dump_document,
    dump_filters,
    dump_user,
    parse_document,
    parse_user,
)

#: users written per round of bulk inserts: bounds the memory of a big import
IMPORT_CHUNK = 5000


# --------------------------------------------------------------------------
# hashing: what counts as a change


def _canonical_json(value: Any) -> bytes:
    # Key order is kept (it is part of the document) and true stays apart
    # from 1, so equal bytes mean an identical export.
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


def user_hash(user: User) -> str:
    """sha256 of the user's export: equal hashes, identical preferences."""
    return hashlib.sha256(_canonical_json(dump_user(user))).hexdigest()


def ownership_hash(prefs: Preferences) -> str:
    doc = dump_document(Preferences(owners=prefs.owners, groups=prefs.groups))
    return hashlib.sha256(_canonical_json([doc["owners"], doc["groups"]])).hexdigest()


# --------------------------------------------------------------------------
# transactions


def _lock_writers(conn: Connection) -> None:
    """Take the writers' lock, changing nothing: the first statement of a write
    that reads before it writes and is no preference change (no :func:`_bump`).

    On SQLite a transaction that reads first and then writes fails at once
    ("database is locked") when another writer committed in between, the busy
    timeout notwithstanding; on PostgreSQL two such transactions would both
    act on what they read.  Writing first makes the others wait instead.
    """
    conn.execute(update(StateRow).where(StateRow.id == 1).values(id=StateRow.id))


def _bump(conn: Connection) -> int:
    """Advance the change sequence; the first statement of every write.

    Updating the one state row first also serialises writers (a row lock on
    PostgreSQL, the write lock on SQLite) before they read anything.
    """
    now = datetime.now(UTC)
    result = conn.execute(update(StateRow).where(StateRow.id == 1)
                          .values(change_seq=StateRow.change_seq + 1, updated_at=now))
    if result.rowcount == 0:
        # A schema made by metadata.create_all rather than the migration.
        conn.execute(insert(StateRow).values(id=1, change_seq=1, ownership_revision=0,
                                             ownership_hash=None, updated_at=now))
        return 1
    return int(conn.execute(select(StateRow.change_seq).where(StateRow.id == 1)).scalar_one())


# --------------------------------------------------------------------------
# writing


def import_document(engine: Engine, doc: Mapping[str, Any]) -> Preferences:
    """Validate ``doc`` and make it the whole content of the database.

    Raises :class:`fmn.prefs.InvalidPreferences` (nothing written) when the
    document does not follow the spec.  Returns the parsed preferences.
    """
    with gc_paused():
        prefs = parse_document(doc)
        _replace_all(engine, prefs)
    return prefs


def import_preferences(engine: Engine, prefs: Preferences) -> None:
    """Make ``prefs`` the whole content of the database, without validating it.

    For preferences that :func:`fmn.prefs.parse_document` built, or that are
    valid by construction (:func:`fmn.generate.generate_preferences`): it
    saves a second parse of a big document.  The database's constraints catch
    some invalid values (a generation rule naming another user's destination,
    an unknown protocol or tracking kind), not all; the transaction is still
    all or nothing.
    """
    with gc_paused():
        _replace_all(engine, prefs)


def _replace_all(engine: Engine, prefs: Preferences) -> None:
    hashes = [user_hash(u) for u in prefs.users]
    owners_hash = ownership_hash(prefs)
    with engine.begin() as conn:
        seq = _bump(conn)
        old = {name: (uid, pos, h) for uid, name, pos, h in conn.execute(
            select(UserRow.id, UserRow.name, UserRow.position, UserRow.content_hash))}
        # A user whose preferences did not change keeps their rows and their
        # revision (at most their position moves); every other user is
        # written afresh.
        kept: set[str] = set()
        moved: list[dict[str, Any]] = []
        fresh: list[tuple[int, User, str]] = []
        for pos, (user, h) in enumerate(zip(prefs.users, hashes, strict=True)):
            previous = old.get(user.name)
            if previous is not None and previous[2] == h:
                kept.add(user.name)
                if previous[1] != pos:
                    moved.append({"b_id": previous[0], "b_position": pos})
            else:
                fresh.append((pos, user, h))
        stale = [uid for name, (uid, _, _) in old.items() if name not in kept]
        _delete_users(conn, stale, everyone=not kept)
        if moved:
            conn.execute(update(UserRow).where(UserRow.id == bindparam("b_id"))
                         .values(position=bindparam("b_position")), moved)
        for start in range(0, len(fresh), IMPORT_CHUNK):
            _insert_users(conn, fresh[start:start + IMPORT_CHUNK], seq)

        if conn.execute(select(StateRow.ownership_hash)).scalar_one() != owners_hash:
            for shared in OWNERSHIP_TABLES:
                conn.execute(delete(shared))
            _insert_ownership(conn, prefs)
            conn.execute(update(StateRow).values(ownership_revision=seq,
                                                 ownership_hash=owners_hash))


def _delete_users(conn: Connection, ids: Sequence[int], *, everyone: bool = False,
                  keep_user_rows: bool = False) -> None:
    """Delete the preferences (and the rows, unless ``keep_user_rows``) of users ``ids``.

    Children first and explicitly, rather than by ON DELETE CASCADE: it does
    not depend on SQLite's foreign_keys pragma, and costs one statement per
    table instead of one per row.
    """
    models: tuple[Any, ...] = USER_CONTENT_TABLES if keep_user_rows else (
        *USER_CONTENT_TABLES, UserRow)
    if everyone:
        for model in models:
            conn.execute(delete(model))
        return
    for start in range(0, len(ids), IMPORT_CHUNK):
        chunk = list(ids[start:start + IMPORT_CHUNK])
        for model in models:
            key = UserRow.id if model is UserRow else model.user_id
            conn.execute(delete(model).where(key.in_(chunk)))


def _insert_users(conn: Connection, users: Sequence[tuple[int, User, str]],
                  revision: int) -> None:
    """Insert (position, user, content hash) triples, with all their preferences."""
    _bulk(conn, UserRow, [
        {"name": user.name, "enabled": user.enabled, "position": pos, "revision": revision,
         "content_hash": h}
        for pos, user, h in users])
    # The ids the database gave; fetched by name, as COPY returns nothing.
    ids = {name: uid for name, uid in conn.execute(
        select(UserRow.name, UserRow.id).where(UserRow.name.in_([u.name for _, u, _ in users])))}
    _insert_user_content(conn, [(ids[user.name], user) for _, user, _ in users])


def _bulk(conn: Connection, model: type[Any], rows: list[dict[str, Any]]) -> None:
    """INSERT ``rows`` (dicts keyed by column name) in one go."""
    if not rows:
        # An empty parameter list would execute the INSERT once, with no values.
        return
    if conn.dialect.driver == "psycopg":
        _copy(conn, model.__table__, rows)
    else:
        conn.execute(insert(model), rows)


def _copy(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    # COPY is 15-20 times faster than psycopg's executemany here.  It runs on
    # the same DBAPI connection, so inside the same transaction.
    from psycopg import Error as PsycopgError
    from psycopg import sql

    names = [c.name for c in table.columns if c.name in rows[0]]
    json_columns = {c.name for c in table.columns if isinstance(c.type, JSON)}
    target = (sql.Identifier(table.schema, table.name) if table.schema
              else sql.Identifier(table.name))
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        target, sql.SQL(", ").join(sql.Identifier(n) for n in names))
    dbapi = conn.connection.driver_connection
    assert dbapi is not None
    try:
        with dbapi.cursor() as cursor, cursor.copy(statement) as copy:
            if json_columns:
                for row in rows:
                    copy.write_row([json_dumps(row[n]) if n in json_columns else row[n]
                                    for n in names])
            else:
                for row in rows:
                    copy.write_row([row[n] for n in names])
    except PsycopgError as exc:
        # Raise what conn.execute would have: sqlalchemy.exc.IntegrityError, ...
        raise DBAPIError.instance(statement.as_string(dbapi), None, exc, PsycopgError,
                                  dialect=conn.dialect) from exc


def _insert_user_content(conn: Connection, users: Iterable[tuple[int, User]]) -> None:
    dests: list[dict[str, Any]] = []
    rules: list[dict[str, Any]] = []
    params: dict[type[Any], list[dict[str, Any]]] = {
        RuleGroupRow: [], RuleArtifactRow: [], RuleUsernameRow: [], RulePatternRow: []}
    gens: list[dict[str, Any]] = []
    links: list[dict[str, Any]] = []
    for uid, user in users:
        for pos, d in enumerate(user.destinations):
            dests.append({
                "user_id": uid, "dest_id": d.id, "position": pos, "protocol": d.protocol,
                "address": d.address, "verified": d.verified,
                "digest_interval_s": d.digest.interval_s if d.digest else None,
                "digest_max_count": d.digest.max_count if d.digest else None,
            })
        for rpos, r in enumerate(user.rules):
            key = {"user_id": uid, "rule_id": r.id}
            t = r.tracking
            rules.append({**key, "position": rpos, "name": r.name, "enabled": r.enabled,
                          "tracking_kind": t.kind})
            params[RuleGroupRow].extend(
                {**key, "position": i, "group_name": g} for i, g in enumerate(t.groups))
            params[RuleArtifactRow].extend(
                {**key, "position": i, "artifact_type": a.type, "artifact_name": a.name}
                for i, a in enumerate(t.artifacts))
            params[RuleUsernameRow].extend(
                {**key, "position": i, "username": n} for i, n in enumerate(t.usernames))
            params[RulePatternRow].extend(
                {**key, "position": i, "pattern": p} for i, p in enumerate(t.patterns))
            for gpos, g in enumerate(r.generation_rules):
                gens.append({**key, "position": gpos, "filters": dump_filters(g.filters)})
                links.extend({**key, "gen_position": gpos, "position": i, "dest_id": dest}
                             for i, dest in enumerate(g.destinations))
    # Parents before children: the foreign keys are checked row by row.
    _bulk(conn, DestinationRow, dests)
    _bulk(conn, RuleRow, rules)
    for model, rows in params.items():
        _bulk(conn, model, rows)
    _bulk(conn, GenerationRuleRow, gens)
    _bulk(conn, GenerationRuleDestinationRow, links)


def _insert_ownership(conn: Connection, prefs: Preferences) -> None:
    artifacts: list[dict[str, Any]] = []
    users: list[dict[str, Any]] = []
    groups: list[dict[str, Any]] = []
    for atype in ARTIFACT_TYPES:
        for pos, (name, owners) in enumerate(prefs.owners.get(atype, {}).items()):
            key = {"artifact_type": atype, "artifact_name": name}
            artifacts.append({"artifact_type": atype, "name": name, "position": pos})
            users.extend({**key, "position": i, "username": u}
                         for i, u in enumerate(owners.users))
            groups.extend({**key, "position": i, "group_name": g}
                          for i, g in enumerate(owners.groups))
    _bulk(conn, OwnedArtifactRow, artifacts)
    _bulk(conn, OwnerUserRow, users)
    _bulk(conn, OwnerGroupRow, groups)
    _bulk(conn, GroupRow, [{"name": name, "position": pos}
                           for pos, name in enumerate(prefs.groups)])
    _bulk(conn, GroupMemberRow, [
        {"group_name": name, "position": i, "username": member}
        for name, members in prefs.groups.items() for i, member in enumerate(members)])


class StaleUser(Exception):
    """The user is no longer at the revision a change was made from: nothing was written
    (load them again and redo the change)."""


#: :func:`save_user`'s ``expected_revision`` for a user who must not exist yet
#: (every stored user's revision is a change sequence value, 1 or more).
NEW_USER = 0


def save_user(engine: Engine, user: User, expected_revision: int | None = None) -> int:
    """Create ``user`` or replace their settings, destinations and rules.

    The user is validated as :func:`fmn.prefs.parse_user` would (raises
    :class:`fmn.prefs.InvalidPreferences`, nothing written).  With
    ``expected_revision`` (the revision the change was made from, or
    :data:`NEW_USER`), nothing is written and :class:`StaleUser` raised unless
    the stored user is still at it.  A new user goes last in the export order;
    an existing one keeps their place.  Returns the user's new revision.
    """
    parse_user(dump_user(user), "user")
    h = user_hash(user)
    with engine.begin() as conn:
        seq = _bump(conn)  # writers queue here, so the check below cannot race
        row = conn.execute(select(UserRow.id, UserRow.revision)
                           .where(UserRow.name == user.name)).first()
        uid = None if row is None else row[0]
        if expected_revision is not None \
                and (NEW_USER if row is None else row[1]) != expected_revision:
            raise StaleUser(f"{user.name} changed since revision {expected_revision}")
        if uid is None:
            last = conn.execute(select(func.max(UserRow.position))).scalar()
            _insert_users(conn, [(0 if last is None else last + 1, user, h)], seq)
        else:
            _delete_users(conn, [uid], keep_user_rows=True)
            conn.execute(update(UserRow).where(UserRow.id == uid).values(
                enabled=user.enabled, revision=seq, content_hash=h))
            _insert_user_content(conn, [(uid, user)])
        pending.mark(conn, user.name, seq)  # cleared once published (fmn.db.pending)
    return seq


def delete_user(engine: Engine, name: str) -> bool:
    """Delete the user ``name`` and all their preferences; False if there was none."""
    with engine.connect() as conn, conn.begin() as tx:
        seq = _bump(conn)
        uid = conn.execute(select(UserRow.id).where(UserRow.name == name)).scalar()
        if uid is None:
            tx.rollback()
            return False
        _delete_users(conn, [uid])
        pending.mark(conn, name, seq)
    return True
