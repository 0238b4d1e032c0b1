"""Which users' saved changes may not have reached the snapshot: a durable to-do list.

Saving a user (:func:`fmn.db.save_user`, :func:`fmn.db.delete_user`) writes a
row in ``pending_publish`` in the same transaction as the change, naming the
revision to publish; whoever publishes that revision (or a later one) clears
it with :func:`clear`.  So a publish that fails (Redis away, a crash between
saving and publishing) leaves a row behind, never a silent disagreement
between the database and the snapshot: :func:`fmn.snapshot.sync.publish_pending`
(called by the next saving request and by every full publish) drains them,
and the web API reports a user's pending publish (:func:`is_pending`).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, and_, delete, insert, select

from fmn.db.models import DestinationRow, PendingPublishRow, StoreMarkerRow, UserRow


def mark(conn: Connection, name: str, revision: int) -> None:
    """Record, inside the caller's transaction, that ``name`` must be published at
    ``revision``."""
    conn.execute(delete(PendingPublishRow).where(PendingPublishRow.name == name))
    conn.execute(insert(PendingPublishRow).values(name=name, revision=revision,
                                                  since=datetime.now(UTC)))


def pending(engine: Engine, limit: int = 1000) -> list[tuple[str, int]]:
    """``(name, revision)`` of users waiting to be published, oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(select(PendingPublishRow.name, PendingPublishRow.revision)
                            .order_by(PendingPublishRow.since, PendingPublishRow.name)
                            .limit(limit)).all()
    return [(str(name), int(rev)) for name, rev in rows]


def is_pending(engine: Engine, name: str) -> bool:
    with engine.connect() as conn:
        return conn.execute(select(PendingPublishRow.revision)
                            .where(PendingPublishRow.name == name)).first() is not None


def clear(engine: Engine, done: list[tuple[str, int]]) -> None:
    """Forget each ``(name, revision)`` published; a newer pending change of the user stays."""
    if not done:
        return
    with engine.begin() as conn:
        for name, revision in done:
            conn.execute(delete(PendingPublishRow).where(and_(
                PendingPublishRow.name == name, PendingPublishRow.revision <= revision)))


def user_revision(engine: Engine, name: str) -> int | None:
    """The user's current revision (None: no such user)."""
    with engine.connect() as conn:
        found = conn.execute(select(UserRow.revision).where(UserRow.name == name)).scalar()
    return None if found is None else int(found)


def destination_live(engine: Engine, user: str, dest_id: str, address: str) -> bool:
    """Whether ``user`` (enabled) still has destination ``dest_id``, verified, at ``address``:
    what an unsubscribe, a deletion or a change of address ends."""
    with engine.connect() as conn:
        row = conn.execute(
            select(DestinationRow.address, DestinationRow.verified, UserRow.enabled)
            .join(UserRow, UserRow.id == DestinationRow.user_id)
            .where(UserRow.name == user, DestinationRow.dest_id == dest_id)).first()
    return row is not None and bool(row.verified) and bool(row.enabled) \
        and row.address == address


def marker(engine: Engine, name: str) -> tuple[str, int] | None:
    """The generation token last seen in the Redis-held store ``name`` and how many
    items it held then (None: never checked)."""
    with engine.connect() as conn:
        found = conn.execute(select(StoreMarkerRow.token, StoreMarkerRow.items)
                             .where(StoreMarkerRow.name == name)).first()
    return None if found is None else (str(found[0]), int(found[1]))


def set_marker(engine: Engine, name: str, token: str, items: int) -> None:
    with engine.begin() as conn:
        conn.execute(delete(StoreMarkerRow).where(StoreMarkerRow.name == name))
        conn.execute(insert(StoreMarkerRow).values(name=name, token=token, items=items,
                                                   since=datetime.now(UTC)))
