"""Tables of the preferences database (spec sections 2 and 4).

One row per user, destination, rule, tracking parameter, generation rule and
generation-rule destination, plus the ownership data (who owns which artifact)
and group membership.  Child rows carry their parent's *natural* key (the
user's surrogate ``users.id`` plus the rule id or destination id the user
chose, plus a ``position``), so that every list in the preferences keeps its
order, a generation rule can only name destinations of its own user (a
composite foreign key enforces it), and a bulk import needs no round trip for
ids beyond one ``RETURNING`` for the users.  Tracking parameters live in one
narrow table per kind, indexed on what a web UI or the snapshot builder looks
up ("who follows rpm X", "who tracks group G", "who follows user U").  A
generation rule's filters are one JSON column: they are validated at the edge
by :func:`fmn.prefs.parse_filters` and read and written whole; the column is
plain ``JSON`` (``json`` on PostgreSQL, never ``jsonb``) so the text is kept
verbatim: ``fields`` values keep ``true`` apart from ``1`` and ``fields`` paths
keep their document order.

Revisions: ``fmn_state.change_seq`` is a global counter bumped by every write
transaction; a user's ``revision`` is the counter's value when that user's
preferences last changed (so it only grows, even across delete and re-create).
``content_hash`` lets a whole-document import keep the revision of users whose
preferences did not change.  The schema is created by the Alembic migrations in
:mod:`fmn.db.migrations`, which must stay in step with these classes (a test
compares them).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from fmn.message import ARTIFACT_TYPES
from fmn.prefs import PROTOCOLS, TRACKING_KINDS

# Deterministic constraint names, so that migrations can refer to them and
# SQLite's batch mode can rebuild tables.  Foreign keys are named after their
# first column and the referred table: short enough for PostgreSQL's 63-char
# identifier limit.
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def _in_list(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


# --------------------------------------------------------------------------
# global state


class StateRow(Base):
    """The single row (id 1) holding the global change sequence."""

    __tablename__ = "fmn_state"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    #: bumped by every write transaction
    change_seq: Mapped[int] = mapped_column(BigInteger)
    #: ``change_seq`` when the ownership data or group membership last changed
    ownership_revision: Mapped[int] = mapped_column(BigInteger)
    #: sha256 of the ownership data and group membership, to spot a no-op import
    ownership_hash: Mapped[str | None] = mapped_column(String(64))
    #: when ``change_seq`` was last bumped (UTC)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


# --------------------------------------------------------------------------
# users and what they own


class UserRow(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String, unique=True)
    enabled: Mapped[bool] = mapped_column(Boolean)
    #: order of the users in an export
    position: Mapped[int] = mapped_column(Integer)
    #: ``fmn_state.change_seq`` when this user's preferences last changed
    revision: Mapped[int] = mapped_column(BigInteger)
    #: sha256 of the user's canonical JSON (see :func:`fmn.db.store.user_hash`)
    content_hash: Mapped[str] = mapped_column(String(64))

    destinations: Mapped[list[DestinationRow]] = relationship(
        order_by="DestinationRow.position", cascade="all, delete-orphan",
        passive_deletes=True)
    rules: Mapped[list[RuleRow]] = relationship(
        order_by="RuleRow.position", cascade="all, delete-orphan", passive_deletes=True)


class DestinationRow(Base):
    __tablename__ = "destinations"
    __table_args__ = (
        CheckConstraint(_in_list("protocol", PROTOCOLS), name="protocol"),
        CheckConstraint("(digest_interval_s IS NULL) = (digest_max_count IS NULL)",
                        name="digest_complete"),
        CheckConstraint("digest_interval_s > 0 AND digest_max_count > 0",
                        name="digest_positive"),
    )

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    dest_id: Mapped[str] = mapped_column(String, primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    protocol: Mapped[str] = mapped_column(String)
    address: Mapped[str | None] = mapped_column(String)
    verified: Mapped[bool] = mapped_column(Boolean)
    digest_interval_s: Mapped[int | None] = mapped_column(BigInteger)
    digest_max_count: Mapped[int | None] = mapped_column(BigInteger)


class RuleRow(Base):
    __tablename__ = "rules"
    __table_args__ = (
        CheckConstraint(_in_list("tracking_kind", TRACKING_KINDS), name="tracking_kind"),
    )

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    rule_id: Mapped[str] = mapped_column(String, primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String)
    enabled: Mapped[bool] = mapped_column(Boolean)
    tracking_kind: Mapped[str] = mapped_column(String)

    groups: Mapped[list[RuleGroupRow]] = relationship(
        order_by="RuleGroupRow.position", cascade="all, delete-orphan", passive_deletes=True)
    artifacts: Mapped[list[RuleArtifactRow]] = relationship(
        order_by="RuleArtifactRow.position", cascade="all, delete-orphan",
        passive_deletes=True)
    usernames: Mapped[list[RuleUsernameRow]] = relationship(
        order_by="RuleUsernameRow.position", cascade="all, delete-orphan",
        passive_deletes=True)
    patterns: Mapped[list[RulePatternRow]] = relationship(
        order_by="RulePatternRow.position", cascade="all, delete-orphan",
        passive_deletes=True)
    generation_rules: Mapped[list[GenerationRuleRow]] = relationship(
        order_by="GenerationRuleRow.position", cascade="all, delete-orphan",
        passive_deletes=True)


def _rule_fk() -> ForeignKeyConstraint:
    return ForeignKeyConstraint(["user_id", "rule_id"], ["rules.user_id", "rules.rule_id"],
                                ondelete="CASCADE")


class RuleGroupRow(Base):
    """``artifacts-group-owned``: one of the groups whose artifacts a rule tracks."""

    __tablename__ = "rule_groups"
    __table_args__ = (_rule_fk(), Index("ix_rule_groups_group_name", "group_name"))

    user_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rule_id: Mapped[str] = mapped_column(String, primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    group_name: Mapped[str] = mapped_column(String)


class RuleArtifactRow(Base):
    """``artifacts-followed``: one artifact a rule follows."""

    __tablename__ = "rule_artifacts"
    __table_args__ = (
        _rule_fk(),
        Index("ix_rule_artifacts_artifact", "artifact_type", "artifact_name"),
        CheckConstraint(_in_list("artifact_type", ARTIFACT_TYPES), name="artifact_type"),
    )

    user_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rule_id: Mapped[str] = mapped_column(String, primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    artifact_type: Mapped[str] = mapped_column(String)
    artifact_name: Mapped[str] = mapped_column(String)


class RuleUsernameRow(Base):
    """``users-followed``: one user name a rule follows."""

    __tablename__ = "rule_usernames"
    __table_args__ = (_rule_fk(), Index("ix_rule_usernames_username", "username"))

    user_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rule_id: Mapped[str] = mapped_column(String, primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String)


class RulePatternRow(Base):
    """``topics``: one topic glob of a rule (globs are not looked up, so no index)."""

    __tablename__ = "rule_patterns"
    __table_args__ = (_rule_fk(),)

    user_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rule_id: Mapped[str] = mapped_column(String, primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    pattern: Mapped[str] = mapped_column(String)


class GenerationRuleRow(Base):
    __tablename__ = "generation_rules"
    __table_args__ = (_rule_fk(),)

    user_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rule_id: Mapped[str] = mapped_column(String, primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: what :func:`fmn.prefs.dump_filters` gives, stored verbatim
    filters: Mapped[dict[str, Any]] = mapped_column(JSON)

    destinations: Mapped[list[GenerationRuleDestinationRow]] = relationship(
        order_by="GenerationRuleDestinationRow.position", cascade="all, delete-orphan",
        passive_deletes=True)


class GenerationRuleDestinationRow(Base):
    """One destination id listed by a generation rule, in the list's order."""

    __tablename__ = "generation_rule_destinations"
    __table_args__ = (
        ForeignKeyConstraint(
            ["user_id", "rule_id", "gen_position"],
            ["generation_rules.user_id", "generation_rules.rule_id",
             "generation_rules.position"],
            ondelete="CASCADE"),
        # No ON DELETE: removing a destination that a generation rule still
        # names is an error the caller must resolve, not something to hide.
        ForeignKeyConstraint(["user_id", "dest_id"],
                             ["destinations.user_id", "destinations.dest_id"]),
        Index("ix_generation_rule_destinations_dest", "user_id", "dest_id"),
    )

    user_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rule_id: Mapped[str] = mapped_column(String, primary_key=True)
    gen_position: Mapped[int] = mapped_column(Integer, primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    dest_id: Mapped[str] = mapped_column(String)

    destination: Mapped[DestinationRow] = relationship(viewonly=True)


# --------------------------------------------------------------------------
# ownership and groups (shared by every user)


class OwnedArtifactRow(Base):
    """An artifact of the ownership data; ``position`` keeps the export's order."""

    __tablename__ = "owned_artifacts"
    __table_args__ = (
        CheckConstraint(_in_list("artifact_type", ARTIFACT_TYPES), name="artifact_type"),
    )

    artifact_type: Mapped[str] = mapped_column(String, primary_key=True)
    name: Mapped[str] = mapped_column(String, primary_key=True)
    position: Mapped[int] = mapped_column(Integer)

    users: Mapped[list[OwnerUserRow]] = relationship(
        order_by="OwnerUserRow.position", cascade="all, delete-orphan", passive_deletes=True)
    groups: Mapped[list[OwnerGroupRow]] = relationship(
        order_by="OwnerGroupRow.position", cascade="all, delete-orphan", passive_deletes=True)


def _artifact_fk() -> ForeignKeyConstraint:
    return ForeignKeyConstraint(
        ["artifact_type", "artifact_name"],
        ["owned_artifacts.artifact_type", "owned_artifacts.name"], ondelete="CASCADE")


class OwnerUserRow(Base):
    __tablename__ = "owned_artifact_users"
    __table_args__ = (_artifact_fk(), Index("ix_owned_artifact_users_username", "username"))

    artifact_type: Mapped[str] = mapped_column(String, primary_key=True)
    artifact_name: Mapped[str] = mapped_column(String, primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String)


class OwnerGroupRow(Base):
    __tablename__ = "owned_artifact_groups"
    __table_args__ = (_artifact_fk(), Index("ix_owned_artifact_groups_group_name", "group_name"))

    artifact_type: Mapped[str] = mapped_column(String, primary_key=True)
    artifact_name: Mapped[str] = mapped_column(String, primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    group_name: Mapped[str] = mapped_column(String)


class GroupRow(Base):
    __tablename__ = "fas_groups"

    name: Mapped[str] = mapped_column(String, primary_key=True)
    position: Mapped[int] = mapped_column(Integer)

    members: Mapped[list[GroupMemberRow]] = relationship(
        order_by="GroupMemberRow.position", cascade="all, delete-orphan",
        passive_deletes=True)


class GroupMemberRow(Base):
    __tablename__ = "fas_group_members"
    __table_args__ = (Index("ix_fas_group_members_username", "username"),)

    group_name: Mapped[str] = mapped_column(
        ForeignKey("fas_groups.name", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String)


# --------------------------------------------------------------------------
# Fedora accounts and the state of the ownership sync


class AccountRow(Base):
    """A Fedora account as FASJSON last described it (``fmn sync accounts``).

    ``emails`` and ``ircnicks`` are FASJSON's lists, kept verbatim (nicks are
    ``irc:/nick`` or ``matrix:/nick`` URIs); the account's own addresses count
    as verified destinations.  A ``locked`` or ``deleted`` account receives
    nothing (its snapshot entry is compiled empty).
    """

    __tablename__ = "fas_accounts"

    username: Mapped[str] = mapped_column(String, primary_key=True)
    emails: Mapped[list[str]] = mapped_column(JSON)
    ircnicks: Mapped[list[str]] = mapped_column(JSON)
    locked: Mapped[bool] = mapped_column(Boolean)
    deleted: Mapped[bool] = mapped_column(Boolean)
    fetched_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SyncStateRow(Base):
    """One row per kind of update: ``ownership``, ``accounts`` (full reconciles), ``live``."""

    __tablename__ = "sync_state"

    source: Mapped[str] = mapped_column(String, primary_key=True)
    #: when the last attempt ended, and whether it changed the database
    attempted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    succeeded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: why the last attempt changed nothing (``None`` when it succeeded)
    error: Mapped[str | None] = mapped_column(String)
    #: the last attempt's figures (entries fetched, changed, users published, seconds)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)


class LiveStampRow(Base):
    """When the ownership data was last known as of (the bus's ``sent_at``, UTC).

    ``scope`` ``artifact`` (key ``type/name``) and ``member`` (key
    ``group/user``): the newest live message applied about it;
    ``reconcile`` (key ``ownership``, ``members``): when the last full
    reconcile began fetching.  A live message older than either is stale
    (SQS reorders, retries and dead-letter redrives replay old messages) and
    is skipped (:mod:`fmn.ownership.live`).
    """

    __tablename__ = "live_stamps"

    scope: Mapped[str] = mapped_column(String, primary_key=True)
    key: Mapped[str] = mapped_column(String, primary_key=True)
    sent_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class PendingPublishRow(Base):
    """A user whose saved preferences may not have reached the snapshot yet.

    Written in the same transaction as the change (:func:`fmn.db.save_user`),
    deleted once that revision is published (:mod:`fmn.db.pending`): while a row
    exists, the database and the snapshot may disagree, and someone must publish.
    """

    __tablename__ = "pending_publish"

    name: Mapped[str] = mapped_column(String, primary_key=True)
    #: the user's revision (or the change sequence of their deletion) to publish
    revision: Mapped[int] = mapped_column(BigInteger)
    #: when the change was saved (UTC)
    since: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class StoreMarkerRow(Base):
    """The generation token last seen in a Redis-held store (digests): a token Redis
    no longer holds means Redis restarted empty and that store's content is lost."""

    __tablename__ = "store_markers"

    name: Mapped[str] = mapped_column(String, primary_key=True)
    token: Mapped[str] = mapped_column(String)
    #: how many items the store held at the last check (what a loss loses, at least)
    items: Mapped[int] = mapped_column(BigInteger)
    #: when this was last checked (UTC)
    since: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AdminDisabledRuleRow(Base):
    """A rule an admin disabled (``POST /api/v1/admin/users/{name}/rules/{id}/disable``).

    Kept apart from the rule's own rows, which every save of the user rewrites:
    while this row exists the rule's owner cannot enable it again (the web API
    answers 409); deleting the rule deletes the row.
    """

    __tablename__ = "admin_disabled_rules"

    user_name: Mapped[str] = mapped_column(String, primary_key=True)
    rule_id: Mapped[str] = mapped_column(String, primary_key=True)
    #: the admin who disabled it, and when (UTC)
    admin: Mapped[str] = mapped_column(String)
    since: Mapped[datetime] = mapped_column(DateTime(timezone=True))


#: child tables first: the order in which to empty them
USER_CONTENT_TABLES = (
    GenerationRuleDestinationRow, GenerationRuleRow, RuleGroupRow, RuleArtifactRow,
    RuleUsernameRow, RulePatternRow, RuleRow, DestinationRow,
)
OWNERSHIP_TABLES = (OwnerUserRow, OwnerGroupRow, OwnedArtifactRow, GroupMemberRow, GroupRow)
