"""The ownership data, accounts and sync state in the preferences database.

Everything here changes only what differs: :func:`apply_delta` rewrites the
rows of the artifacts and groups in an :class:`~fmn.ownership.diff.OwnershipDelta`
and nothing else, in one transaction that bumps the change sequence and the
ownership revision.  :func:`apply_accounts` stores FASJSON's view of some
accounts and bumps the revision of every user whose account became locked,
deleted or usable again, so that their snapshot entry is published anew.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, bindparam, delete, func, insert, select, update

from fmn.db.load import _load_groups, _load_owners, _snapshot
from fmn.db.models import (
    AccountRow,
    GroupMemberRow,
    GroupRow,
    LiveStampRow,
    OwnedArtifactRow,
    OwnerGroupRow,
    OwnerUserRow,
    StateRow,
    SyncStateRow,
    UserRow,
)
from fmn.db.store import _bump, _lock_writers
from fmn.ownership.data import Account, Ownership
from fmn.ownership.diff import OwnershipDelta

SOURCES = ("ownership", "accounts", "live")


def load_ownership(engine: Engine) -> Ownership:
    with _snapshot(engine) as conn:
        return Ownership(owners=_load_owners(conn), groups=_load_groups(conn))


def apply_delta(engine: Engine, delta: OwnershipDelta) -> int:
    """Write the delta; the change sequence it was written at."""
    with engine.begin() as conn:
        seq = _bump(conn)
        for atype, names in delta.owners.items():
            if not names:
                continue
            keys = [{"b_type": atype, "b_name": n} for n in names]
            for model in (OwnerUserRow, OwnerGroupRow):
                conn.execute(delete(model).where(
                    model.artifact_type == bindparam("b_type"),
                    model.artifact_name == bindparam("b_name")), keys)
            gone = [k for k in keys if names[k["b_name"]] is None]
            if gone:
                conn.execute(delete(OwnedArtifactRow).where(
                    OwnedArtifactRow.artifact_type == bindparam("b_type"),
                    OwnedArtifactRow.name == bindparam("b_name")), gone)
            present = [n for n, o in names.items() if o is not None]
            existing: set[str] = set()
            for start in range(0, len(present), 500):
                existing.update(conn.execute(select(OwnedArtifactRow.name).where(
                    OwnedArtifactRow.artifact_type == atype,
                    OwnedArtifactRow.name.in_(present[start:start + 500]))).scalars())
            last = conn.execute(select(func.max(OwnedArtifactRow.position))
                                .where(OwnedArtifactRow.artifact_type == atype)).scalar()
            pos = -1 if last is None else last
            new_rows = []
            for name in present:
                if name not in existing:
                    pos += 1
                    new_rows.append({"artifact_type": atype, "name": name, "position": pos})
            if new_rows:
                conn.execute(insert(OwnedArtifactRow), new_rows)
            users: list[dict[str, Any]] = []
            groups: list[dict[str, Any]] = []
            for name in present:
                owners = names[name]
                assert owners is not None
                key = {"artifact_type": atype, "artifact_name": name}
                users.extend({**key, "position": i, "username": u}
                             for i, u in enumerate(owners.users))
                groups.extend({**key, "position": i, "group_name": g}
                              for i, g in enumerate(owners.groups))
            if users:
                conn.execute(insert(OwnerUserRow), users)
            if groups:
                conn.execute(insert(OwnerGroupRow), groups)
        if delta.groups:
            names_ = list(delta.groups)
            conn.execute(delete(GroupMemberRow).where(GroupMemberRow.group_name.in_(names_)))
            existing_groups = set(conn.execute(select(GroupRow.name).where(
                GroupRow.name.in_(names_))).scalars())
            gone_groups = [g for g, m in delta.groups.items() if m is None]
            if gone_groups:
                conn.execute(delete(GroupRow).where(GroupRow.name.in_(gone_groups)))
            last = conn.execute(select(func.max(GroupRow.position))).scalar()
            pos = -1 if last is None else last
            fresh = []
            for group, members in delta.groups.items():
                if members is not None and group not in existing_groups:
                    pos += 1
                    fresh.append({"name": group, "position": pos})
            if fresh:
                conn.execute(insert(GroupRow), fresh)
            rows = [{"group_name": g, "position": i, "username": u}
                    for g, m in delta.groups.items() if m is not None
                    for i, u in enumerate(m)]
            if rows:
                conn.execute(insert(GroupMemberRow), rows)
        # The stored hash no longer describes the data: the next whole-document
        # import rewrites ownership rather than trusting it.
        conn.execute(update(StateRow).values(ownership_revision=seq, ownership_hash=None))
    return seq


# --------------------------------------------------------------------------
# accounts


def _account(row: AccountRow | Any) -> Account:
    return Account(username=row.username, emails=tuple(row.emails or ()),
                   ircnicks=tuple(row.ircnicks or ()), locked=bool(row.locked),
                   deleted=bool(row.deleted))


def load_accounts(engine: Engine, names: Iterable[str] | None = None) -> dict[str, Account]:
    query = select(AccountRow.username, AccountRow.emails, AccountRow.ircnicks,
                   AccountRow.locked, AccountRow.deleted)
    wanted = None if names is None else list(names)
    out: dict[str, Account] = {}
    with engine.connect() as conn:
        if wanted is None:
            for row in conn.execute(query):
                out[row.username] = _account(row)
        else:
            for start in range(0, len(wanted), 500):
                for row in conn.execute(query.where(
                        AccountRow.username.in_(wanted[start:start + 500]))):
                    out[row.username] = _account(row)
    return out


def account_of(engine: Engine, name: str) -> Account | None:
    return load_accounts(engine, [name]).get(name)


def _blocked() -> Any:
    """The accounts locked or deleted: their users receive nothing."""
    return select(AccountRow.username).where(
        (AccountRow.locked.is_(True)) | (AccountRow.deleted.is_(True)))


def blocked_users(engine: Engine) -> set[str]:
    """Users whose account is locked or deleted: they receive nothing."""
    with engine.connect() as conn:
        return set(conn.execute(_blocked()).scalars())


def is_blocked(engine: Engine, name: str) -> bool:
    """Whether ``name``'s account is locked or deleted (:func:`blocked_users`, for one)."""
    with engine.connect() as conn:
        return conn.execute(_blocked().where(AccountRow.username == name)).first() is not None


def user_names(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(select(UserRow.name).order_by(UserRow.position)).scalars())


def apply_accounts(engine: Engine, accounts: Iterable[Account]) -> tuple[int, dict[str, int]]:
    """Store these accounts (only those that differ are written).

    Returns the change sequence, and ``{user: revision}`` for every user whose
    account became blocked or usable again (their snapshot entry must change).
    """
    fresh = {a.username: a for a in accounts}
    now = datetime.now(UTC)
    with engine.begin() as conn:
        seq = _bump(conn)
        names = list(fresh)
        old: dict[str, Account] = {}
        for start in range(0, len(names), 500):
            for row in conn.execute(select(
                    AccountRow.username, AccountRow.emails, AccountRow.ircnicks,
                    AccountRow.locked, AccountRow.deleted).where(
                    AccountRow.username.in_(names[start:start + 500]))):
                old[row.username] = _account(row)
        changed = [a for n, a in fresh.items() if n not in old or not old[n].same_as(a)]
        if changed:
            keys = [{"b_name": a.username} for a in changed]
            conn.execute(delete(AccountRow).where(AccountRow.username == bindparam("b_name")),
                         keys)
            conn.execute(insert(AccountRow), [
                {"username": a.username, "emails": list(a.emails), "ircnicks": list(a.ircnicks),
                 "locked": a.locked, "deleted": a.deleted, "fetched_at": now}
                for a in changed])
        flipped = [a.username for a in changed
                   if a.blocked != (old[a.username].blocked if a.username in old else False)]
        revisions: dict[str, int] = {}
        for start in range(0, len(flipped), 500):
            part = flipped[start:start + 500]
            conn.execute(update(UserRow).where(UserRow.name.in_(part)).values(revision=seq))
            revisions.update((n, seq) for n in conn.execute(
                select(UserRow.name).where(UserRow.name.in_(part))).scalars())
    return seq, revisions


# --------------------------------------------------------------------------
# sync state


def record_sync(engine: Engine, source: str, *, ok: bool, error: str | None,
                detail: Mapping[str, Any]) -> None:
    now = datetime.now(UTC)
    values: dict[str, Any] = {"attempted_at": now, "error": None if ok else error,
                              "detail": dict(detail)}
    if ok:
        values["succeeded_at"] = now
    with engine.begin() as conn:
        done = conn.execute(update(SyncStateRow).where(SyncStateRow.source == source)
                            .values(**values)).rowcount
        if not done:
            conn.execute(insert(SyncStateRow).values(
                source=source, succeeded_at=values.get("succeeded_at"), **{
                    k: v for k, v in values.items() if k != "succeeded_at"}))


def sync_detail(engine: Engine, source: str) -> dict[str, Any]:
    """The figures the last attempt of ``source`` recorded (``{}`` when there was none)."""
    with engine.connect() as conn:
        detail = conn.execute(select(SyncStateRow.detail)
                              .where(SyncStateRow.source == source)).scalar()
    return dict(detail or {})


def _utc(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite keeps no time zone; we always write UTC
        value = value.replace(tzinfo=UTC)
    return value.isoformat(timespec="seconds")


def sync_states(engine: Engine) -> dict[str, dict[str, Any]]:
    """``{source: {"attempted_at", "succeeded_at", "error", "detail"}}`` (ISO times)."""
    with engine.connect() as conn:
        rows = conn.execute(select(SyncStateRow.source, SyncStateRow.attempted_at,
                                   SyncStateRow.succeeded_at, SyncStateRow.error,
                                   SyncStateRow.detail)).all()
    return {r.source: {"attempted_at": _utc(r.attempted_at), "succeeded_at": _utc(r.succeeded_at),
                       "error": r.error, "detail": r.detail or {}} for r in rows}


def owned_by(engine: Engine, name: str) -> dict[str, Any]:
    """What ``name`` owns directly, and through each group they are a member of."""
    with engine.connect() as conn:
        direct = conn.execute(select(OwnerUserRow.artifact_type, OwnerUserRow.artifact_name)
                              .where(OwnerUserRow.username == name)
                              .order_by(OwnerUserRow.artifact_type,
                                        OwnerUserRow.artifact_name)).all()
        groups = list(conn.execute(select(GroupMemberRow.group_name)
                                   .where(GroupMemberRow.username == name)
                                   .order_by(GroupMemberRow.group_name)).scalars())
        by_group: dict[str, list[dict[str, str]]] = {g: [] for g in groups}
        if groups:
            for t, n, g in conn.execute(
                    select(OwnerGroupRow.artifact_type, OwnerGroupRow.artifact_name,
                           OwnerGroupRow.group_name)
                    .where(OwnerGroupRow.group_name.in_(groups))
                    .order_by(OwnerGroupRow.artifact_type, OwnerGroupRow.artifact_name)):
                by_group[g].append({"type": t, "name": n})
    return {"direct": [{"type": t, "name": n} for t, n in direct],
            "groups": [{"name": g, "artifacts": a} for g, a in by_group.items()]}


def owners_of(engine: Engine, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Any]:
    """``{(type, name): Owners}`` of the given artifacts that the database holds."""
    from fmn.prefs import Owners

    wanted = set(keys)
    users: dict[tuple[str, str], list[str]] = {}
    groups: dict[tuple[str, str], list[str]] = {}
    present: set[tuple[str, str]] = set()
    with engine.connect() as conn:
        for atype, name in wanted:
            if conn.execute(select(OwnedArtifactRow.name).where(
                    OwnedArtifactRow.artifact_type == atype,
                    OwnedArtifactRow.name == name)).first() is None:
                continue
            present.add((atype, name))
            users[(atype, name)] = list(conn.execute(
                select(OwnerUserRow.username).where(
                    OwnerUserRow.artifact_type == atype, OwnerUserRow.artifact_name == name)
                .order_by(OwnerUserRow.position)).scalars())
            groups[(atype, name)] = list(conn.execute(
                select(OwnerGroupRow.group_name).where(
                    OwnerGroupRow.artifact_type == atype, OwnerGroupRow.artifact_name == name)
                .order_by(OwnerGroupRow.position)).scalars())
    return {k: Owners(users=tuple(users[k]), groups=tuple(groups[k])) for k in present}


def members_of(engine: Engine, groups: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """``{group: members}`` of the given groups that the database holds."""
    wanted = list(set(groups))
    out: dict[str, list[str]] = {}
    with engine.connect() as conn:
        for name in conn.execute(select(GroupRow.name).where(GroupRow.name.in_(wanted))).scalars():
            out[name] = []
        for group, user in conn.execute(
                select(GroupMemberRow.group_name, GroupMemberRow.username)
                .where(GroupMemberRow.group_name.in_(wanted))
                .order_by(GroupMemberRow.group_name, GroupMemberRow.position)):
            out[group].append(user)
    return {g: tuple(m) for g, m in out.items()}


def user_names_in(engine: Engine, names: Iterable[str]) -> list[str]:
    """Those of ``names`` that are users of the preferences database."""
    wanted = list(set(names))
    with engine.connect() as conn:
        return list(conn.execute(select(UserRow.name).where(UserRow.name.in_(wanted))).scalars())


def tracked_groups(engine: Engine) -> set[str]:
    """Groups whose members a reconcile fetches besides the owning ones: those the
    database holds and those the users' rules name."""
    from fmn.db.models import RuleGroupRow

    with engine.connect() as conn:
        held = set(conn.execute(select(GroupRow.name)).scalars())
        named = set(conn.execute(select(RuleGroupRow.group_name).distinct()).scalars())
    return held | named


# --------------------------------------------------------------------------
# how recent the ownership data is (live messages are applied in bus order)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def live_stamps(engine: Engine, scope: str, keys: Iterable[str]) -> dict[str, datetime]:
    """``{key: sent_at}`` of the keys of ``scope`` that have a stamp (UTC)."""
    wanted = list(set(keys))
    out: dict[str, datetime] = {}
    with engine.connect() as conn:
        for start in range(0, len(wanted), 500):
            for key, at in conn.execute(select(LiveStampRow.key, LiveStampRow.sent_at).where(
                    LiveStampRow.scope == scope,
                    LiveStampRow.key.in_(wanted[start:start + 500]))):
                out[key] = _aware(at)
    return out


def stamp_live(engine: Engine, scope: str, stamps: Mapping[str, datetime]) -> None:
    """Record ``sent_at`` for these keys of ``scope``, never moving a stamp back."""
    if not stamps:
        return
    with engine.begin() as conn:
        _lock_writers(conn)  # concurrent match invocations stamp too: read, then write
        keys = list(stamps)
        current: dict[str, datetime] = {}
        for start in range(0, len(keys), 500):
            for key, at in conn.execute(select(LiveStampRow.key, LiveStampRow.sent_at).where(
                    LiveStampRow.scope == scope,
                    LiveStampRow.key.in_(keys[start:start + 500]))):
                current[key] = _aware(at)
        newer = {k: v for k, v in stamps.items() if k not in current or v > current[k]}
        if not newer:
            return
        conn.execute(delete(LiveStampRow).where(
            LiveStampRow.scope == scope, LiveStampRow.key == bindparam("b_key")),
            [{"b_key": k} for k in newer])
        conn.execute(insert(LiveStampRow), [{"scope": scope, "key": k, "sent_at": v}
                                            for k, v in newer.items()])


def reset_live_stamps(engine: Engine, scopes: Iterable[str], at: datetime) -> int:
    """Bring the stamps of ``scopes`` newer than ``at`` back to ``at`` (a reconcile
    fetched as of ``at`` has replaced what they stood for); how many.  Done in
    SQL: a stamp PostgreSQL holds beyond Python's calendar is never read."""
    with engine.begin() as conn:
        _lock_writers(conn)
        result = conn.execute(update(LiveStampRow).where(
            LiveStampRow.scope.in_(list(scopes)), LiveStampRow.sent_at > at)
            .values(sent_at=at))
    return int(result.rowcount or 0)
