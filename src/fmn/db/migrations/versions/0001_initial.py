"""Initial schema: users, destinations, rules and their parts, ownership, groups.

Revision ID: 0001
Revises:
Create Date: 2026-11-27

The lists in the CHECK constraints are the spec v1 values, written out here on
purpose: a migration is a snapshot and must not follow later code changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ARTIFACT_TYPES_CHECK = "artifact_type IN ('rpms', 'containers', 'modules', 'flatpaks')"


def _rule_key() -> list[sa.Column[object]]:
    return [
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("rule_id", sa.String(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
    ]


def _rule_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["user_id", "rule_id"], ["rules.user_id", "rules.rule_id"],
        name=op.f(f"fk_{table}_user_id_rules"), ondelete="CASCADE")


def _artifact_owner_table(table: str, column: str) -> None:
    op.create_table(
        table,
        sa.Column("artifact_type", sa.String(), nullable=False),
        sa.Column("artifact_name", sa.String(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column(column, sa.String(), nullable=False),
        sa.ForeignKeyConstraint(
            ["artifact_type", "artifact_name"],
            ["owned_artifacts.artifact_type", "owned_artifacts.name"],
            name=op.f(f"fk_{table}_artifact_type_owned_artifacts"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("artifact_type", "artifact_name", "position",
                                name=op.f(f"pk_{table}")),
    )
    op.create_index(f"ix_{table}_{column}", table, [column])


def upgrade() -> None:
    state = op.create_table(
        "fmn_state",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("change_seq", sa.BigInteger(), nullable=False),
        sa.Column("ownership_revision", sa.BigInteger(), nullable=False),
        sa.Column("ownership_hash", sa.String(length=64), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_fmn_state_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fmn_state")),
    )
    op.bulk_insert(state, [{"id": 1, "change_seq": 0, "ownership_revision": 0,
                            "ownership_hash": None, "updated_at": datetime.now(UTC)}])

    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("name", name=op.f("uq_users_name")),
    )
    op.create_table(
        "destinations",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("dest_id", sa.String(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("protocol", sa.String(), nullable=False),
        sa.Column("address", sa.String(), nullable=True),
        sa.Column("verified", sa.Boolean(), nullable=False),
        sa.Column("digest_interval_s", sa.BigInteger(), nullable=True),
        sa.Column("digest_max_count", sa.BigInteger(), nullable=True),
        sa.CheckConstraint("protocol IN ('email', 'irc', 'matrix', 'sse')",
                           name=op.f("ck_destinations_protocol")),
        sa.CheckConstraint("(digest_interval_s IS NULL) = (digest_max_count IS NULL)",
                           name=op.f("ck_destinations_digest_complete")),
        sa.CheckConstraint("digest_interval_s > 0 AND digest_max_count > 0",
                           name=op.f("ck_destinations_digest_positive")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"],
                                name=op.f("fk_destinations_user_id_users"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_id", "dest_id", name=op.f("pk_destinations")),
    )
    op.create_table(
        "rules",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("rule_id", sa.String(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("tracking_kind", sa.String(), nullable=False),
        sa.CheckConstraint(
            "tracking_kind IN ('artifacts-owned', 'artifacts-group-owned', "
            "'artifacts-followed', 'related-events', 'users-followed', 'topics')",
            name=op.f("ck_rules_tracking_kind")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"],
                                name=op.f("fk_rules_user_id_users"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_id", "rule_id", name=op.f("pk_rules")),
    )

    op.create_table(
        "rule_groups", *_rule_key(),
        sa.Column("group_name", sa.String(), nullable=False),
        _rule_fk("rule_groups"),
        sa.PrimaryKeyConstraint("user_id", "rule_id", "position", name=op.f("pk_rule_groups")),
    )
    op.create_index("ix_rule_groups_group_name", "rule_groups", ["group_name"])
    op.create_table(
        "rule_artifacts", *_rule_key(),
        sa.Column("artifact_type", sa.String(), nullable=False),
        sa.Column("artifact_name", sa.String(), nullable=False),
        sa.CheckConstraint(ARTIFACT_TYPES_CHECK, name=op.f("ck_rule_artifacts_artifact_type")),
        _rule_fk("rule_artifacts"),
        sa.PrimaryKeyConstraint("user_id", "rule_id", "position",
                                name=op.f("pk_rule_artifacts")),
    )
    op.create_index("ix_rule_artifacts_artifact", "rule_artifacts",
                    ["artifact_type", "artifact_name"])
    op.create_table(
        "rule_usernames", *_rule_key(),
        sa.Column("username", sa.String(), nullable=False),
        _rule_fk("rule_usernames"),
        sa.PrimaryKeyConstraint("user_id", "rule_id", "position",
                                name=op.f("pk_rule_usernames")),
    )
    op.create_index("ix_rule_usernames_username", "rule_usernames", ["username"])
    op.create_table(
        "rule_patterns", *_rule_key(),
        sa.Column("pattern", sa.String(), nullable=False),
        _rule_fk("rule_patterns"),
        sa.PrimaryKeyConstraint("user_id", "rule_id", "position",
                                name=op.f("pk_rule_patterns")),
    )

    op.create_table(
        "generation_rules", *_rule_key(),
        sa.Column("filters", sa.JSON(), nullable=False),
        _rule_fk("generation_rules"),
        sa.PrimaryKeyConstraint("user_id", "rule_id", "position",
                                name=op.f("pk_generation_rules")),
    )
    op.create_table(
        "generation_rule_destinations",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("rule_id", sa.String(), nullable=False),
        sa.Column("gen_position", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("dest_id", sa.String(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id", "rule_id", "gen_position"],
            ["generation_rules.user_id", "generation_rules.rule_id", "generation_rules.position"],
            name=op.f("fk_generation_rule_destinations_user_id_generation_rules"),
            ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["user_id", "dest_id"], ["destinations.user_id", "destinations.dest_id"],
            name=op.f("fk_generation_rule_destinations_user_id_destinations")),
        sa.PrimaryKeyConstraint("user_id", "rule_id", "gen_position", "position",
                                name=op.f("pk_generation_rule_destinations")),
    )
    op.create_index("ix_generation_rule_destinations_dest", "generation_rule_destinations",
                    ["user_id", "dest_id"])

    op.create_table(
        "owned_artifacts",
        sa.Column("artifact_type", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.CheckConstraint(ARTIFACT_TYPES_CHECK, name=op.f("ck_owned_artifacts_artifact_type")),
        sa.PrimaryKeyConstraint("artifact_type", "name", name=op.f("pk_owned_artifacts")),
    )
    _artifact_owner_table("owned_artifact_users", "username")
    _artifact_owner_table("owned_artifact_groups", "group_name")

    op.create_table(
        "fas_groups",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_fas_groups")),
    )
    op.create_table(
        "fas_group_members",
        sa.Column("group_name", sa.String(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(), nullable=False),
        sa.ForeignKeyConstraint(["group_name"], ["fas_groups.name"],
                                name=op.f("fk_fas_group_members_group_name_fas_groups"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("group_name", "position", name=op.f("pk_fas_group_members")),
    )
    op.create_index("ix_fas_group_members_username", "fas_group_members", ["username"])


def downgrade() -> None:
    # Children first; dropping a table drops its indexes.
    for table in ("fas_group_members", "fas_groups", "owned_artifact_groups",
                  "owned_artifact_users", "owned_artifacts", "generation_rule_destinations",
                  "generation_rules", "rule_patterns", "rule_usernames", "rule_artifacts",
                  "rule_groups", "rules", "destinations", "users", "fmn_state"):
        op.drop_table(table)
