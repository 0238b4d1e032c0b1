"""Reading preferences from the database (spec sections 2 and 4).

:func:`load_preferences` and :func:`load_user` build the :mod:`fmn.prefs`
value types with a fixed number of bulk queries (one per table, never one per
user or rule), all inside one read-only transaction so that a concurrent
import is seen entirely or not at all.  :func:`export_document` is the
preferences export of the whole database: for a document in the canonical form
that :func:`fmn.prefs.dump_document` writes, exactly what was imported.
:func:`user_revisions` and :func:`db_state` are what the snapshot builder polls
to find what changed.  Engines must come from :func:`fmn.db.make_engine` (it
makes SQLite reads transactional).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, select

from fmn.db.models import (
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
    Artifact,
    Destination,
    Digest,
    Filters,
    GenerationRule,
    Owners,
    Preferences,
    Rule,
    Tracking,
    User,
    dump_document,
)


@dataclass(frozen=True, slots=True)
class DbState:
    """The global change sequence and when it last moved."""

    change_seq: int
    #: ``change_seq`` when the ownership data or group membership last changed
    ownership_revision: int
    updated_at: datetime | None


@contextmanager
def _snapshot(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction that sees one consistent state across queries."""
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            # READ COMMITTED would let an import commit between two queries.
            conn.execution_options(isolation_level="REPEATABLE READ",
                                   postgresql_readonly=True)
        with conn.begin():
            yield conn


# --------------------------------------------------------------------------
# queries


def export_document(engine: Engine) -> dict[str, Any]:
    """The preferences export (spec section 4) of the whole database."""
    with gc_paused():
        return dump_document(load_preferences(engine))


def load_preferences(engine: Engine) -> Preferences:
    """Every user, in export order, with the ownership data and groups."""
    with gc_paused(), _snapshot(engine) as conn:
        users = _load_users(conn, None)
        owners = _load_owners(conn)
        groups = _load_groups(conn)
    return Preferences(users=tuple(users), owners=owners, groups=groups)


def load_user(engine: Engine, name: str) -> User | None:
    """The user ``name``, or None if there is none."""
    with _snapshot(engine) as conn:
        users = _load_users(conn, name)
    return users[0] if users else None


def load_user_revision(engine: Engine, name: str) -> tuple[User, int] | None:
    """The user ``name`` and the revision they are at (read together), or None: what an
    edit passes back to :func:`fmn.db.save_user` as ``expected_revision``."""
    with _snapshot(engine) as conn:
        revision = conn.execute(select(UserRow.revision).where(UserRow.name == name)).scalar()
        users = _load_users(conn, name)
    return (users[0], revision) if users and revision is not None else None


def user_revisions(engine: Engine) -> dict[str, int]:
    """User name -> revision, in export order."""
    with _snapshot(engine) as conn:
        rows = conn.execute(select(UserRow.name, UserRow.revision).order_by(UserRow.position))
        return {name: revision for name, revision in rows}


def db_state(engine: Engine) -> DbState:
    """The global change sequence (0 and no time for a database never written)."""
    with _snapshot(engine) as conn:
        row = conn.execute(select(StateRow.change_seq, StateRow.ownership_revision,
                                  StateRow.updated_at)).first()
    if row is None:
        return DbState(change_seq=0, ownership_revision=0, updated_at=None)
    updated_at = row[2]
    if updated_at is not None and updated_at.tzinfo is None:
        # SQLite keeps no time zone; we always write UTC.
        updated_at = updated_at.replace(tzinfo=UTC)
    return DbState(change_seq=row[0], ownership_revision=row[1], updated_at=updated_at)


def _load_users(conn: Connection, name: str | None) -> list[User]:
    """Users (all, or the one called ``name``) with a fixed number of queries."""
    query = select(UserRow.id, UserRow.name, UserRow.enabled).order_by(UserRow.position)
    if name is not None:
        query = query.where(UserRow.name == name)
    users = conn.execute(query).all()
    if not users:
        return []
    only = users[0][0] if name is not None else None

    def rows(*columns: Any, order_by: Sequence[Any] = ()) -> Sequence[Any]:
        # Default order: the primary key, which ends with the list position.
        model = columns[0].class_
        q = select(*columns).order_by(*(order_by or model.__table__.primary_key.columns))
        if only is not None:
            q = q.where(model.user_id == only)
        return conn.execute(q).all()

    dests: dict[int, list[Destination]] = defaultdict(list)
    for uid, dest_id, protocol, address, verified, interval_s, max_count in rows(
            DestinationRow.user_id, DestinationRow.dest_id, DestinationRow.protocol,
            DestinationRow.address, DestinationRow.verified, DestinationRow.digest_interval_s,
            DestinationRow.digest_max_count,
            order_by=(DestinationRow.user_id, DestinationRow.position)):
        digest = None if interval_s is None else Digest(interval_s, max_count)
        dests[uid].append(Destination(dest_id, protocol, address, verified, digest))

    groups = _grouped(rows(RuleGroupRow.user_id, RuleGroupRow.rule_id,
                           RuleGroupRow.group_name))
    usernames = _grouped(rows(RuleUsernameRow.user_id, RuleUsernameRow.rule_id,
                              RuleUsernameRow.username))
    patterns = _grouped(rows(RulePatternRow.user_id, RulePatternRow.rule_id,
                             RulePatternRow.pattern))
    artifacts: dict[tuple[int, str], list[Artifact]] = defaultdict(list)
    for uid, rule_id, atype, aname in rows(RuleArtifactRow.user_id, RuleArtifactRow.rule_id,
                                           RuleArtifactRow.artifact_type,
                                           RuleArtifactRow.artifact_name):
        artifacts[uid, rule_id].append(Artifact(atype, aname))
    links: dict[tuple[int, str, int], list[str]] = defaultdict(list)
    for uid, rule_id, gpos, dest_id in rows(
            GenerationRuleDestinationRow.user_id, GenerationRuleDestinationRow.rule_id,
            GenerationRuleDestinationRow.gen_position, GenerationRuleDestinationRow.dest_id):
        links[uid, rule_id, gpos].append(dest_id)
    gens: dict[tuple[int, str], list[GenerationRule]] = defaultdict(list)
    for uid, rule_id, gpos, filters in rows(GenerationRuleRow.user_id, GenerationRuleRow.rule_id,
                                            GenerationRuleRow.position,
                                            GenerationRuleRow.filters):
        gens[uid, rule_id].append(GenerationRule(
            filters=_filters(filters), destinations=tuple(links.get((uid, rule_id, gpos), ()))))

    rules: dict[int, list[Rule]] = defaultdict(list)
    for uid, rule_id, rule_name, enabled, kind in rows(
            RuleRow.user_id, RuleRow.rule_id, RuleRow.name, RuleRow.enabled,
            RuleRow.tracking_kind, order_by=(RuleRow.user_id, RuleRow.position)):
        key = (uid, rule_id)
        tracking = Tracking(kind=kind, groups=tuple(groups.get(key, ())),
                            artifacts=tuple(artifacts.get(key, ())),
                            usernames=tuple(usernames.get(key, ())),
                            patterns=tuple(patterns.get(key, ())))
        rules[uid].append(Rule(rule_id, rule_name, enabled, tracking, tuple(gens.get(key, ()))))

    return [User(name=uname, enabled=enabled, destinations=tuple(dests.get(uid, ())),
                 rules=tuple(rules.get(uid, ())))
            for uid, uname, enabled in users]


def _grouped(rows: Iterable[Any]) -> dict[tuple[Any, Any], list[Any]]:
    """(key1, key2, value) rows -> (key1, key2) -> values, in row order."""
    out: dict[tuple[Any, Any], list[Any]] = defaultdict(list)
    for uid, rule_id, value in rows:
        out[uid, rule_id].append(value)
    return out


def _filters(data: Mapping[str, Any]) -> Filters:
    """The inverse of :func:`fmn.prefs.dump_filters` (validated when written)."""

    def strings(key: str) -> tuple[str, ...] | None:
        value = data.get(key)
        return None if value is None else tuple(value)

    fields = data.get("fields")
    return Filters(
        applications=strings("applications"),
        excluded_applications=strings("excluded_applications"),
        severities=strings("severities"),
        topic=data.get("topic"),
        my_actions=data.get("my_actions"),
        fields=None if fields is None else tuple(
            (path, tuple(values)) for path, values in fields.items()),
    )


def _load_owners(conn: Connection) -> dict[str, dict[str, Owners]]:
    owner_users = _grouped(conn.execute(
        select(OwnerUserRow.artifact_type, OwnerUserRow.artifact_name, OwnerUserRow.username)
        .order_by(OwnerUserRow.artifact_type, OwnerUserRow.artifact_name,
                  OwnerUserRow.position)))
    owner_groups = _grouped(conn.execute(
        select(OwnerGroupRow.artifact_type, OwnerGroupRow.artifact_name,
               OwnerGroupRow.group_name)
        .order_by(OwnerGroupRow.artifact_type, OwnerGroupRow.artifact_name,
                  OwnerGroupRow.position)))
    owners: dict[str, dict[str, Owners]] = {atype: {} for atype in ARTIFACT_TYPES}
    for atype, name in conn.execute(
            select(OwnedArtifactRow.artifact_type, OwnedArtifactRow.name)
            .order_by(OwnedArtifactRow.artifact_type, OwnedArtifactRow.position)):
        key = (atype, name)
        owners.setdefault(atype, {})[name] = Owners(users=tuple(owner_users.get(key, ())),
                                                    groups=tuple(owner_groups.get(key, ())))
    return owners


def _load_groups(conn: Connection) -> dict[str, tuple[str, ...]]:
    members: dict[str, list[str]] = defaultdict(list)
    for group, member in conn.execute(
            select(GroupMemberRow.group_name, GroupMemberRow.username)
            .order_by(GroupMemberRow.group_name, GroupMemberRow.position)):
        members[group].append(member)
    return {name: tuple(members.get(name, ())) for name in conn.execute(
        select(GroupRow.name).order_by(GroupRow.position)).scalars()}
