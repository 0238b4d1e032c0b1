"""Pending publishes and store markers: what Redis alone must not hold.

``pending_publish``: users whose saved change may not be in the snapshot yet.
``store_markers``: the generation token of each Redis-held store last seen,
to notice a Redis restarted empty.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "pending_publish",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_pending_publish")),
    )
    op.create_table(
        "store_markers",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("token", sa.String(), nullable=False),
        sa.Column("items", sa.BigInteger(), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_store_markers")),
    )


def downgrade() -> None:
    op.drop_table("store_markers")
    op.drop_table("pending_publish")
