"""Ownership and membership changes from the bus, applied as they arrive.

:func:`classify` reads one message and says what it changes (pure);
:class:`LiveUpdater` applies that to the database and appends the change to
the snapshot's log, so that the next message about the artifact is matched
on the new owners (the match function refreshes its snapshot right after).

Messages understood (topic suffixes, any environment prefix):

* dist-git (pagure on src.fedoraproject.org): ``pagure.project.new``,
  ``.deleted``, ``.user.added``, ``.user.access.updated``, ``.user.removed``,
  ``.group.added``, ``.group.access.updated``, ``.group.removed``.  The
  message's ``project`` carries the access lists; the change it announces is
  applied on top (so a project serialised before or after the change gives
  the same result).  Only dist-git namespaces count (``rpms``, ``container``,
  ``modules``, ``flatpaks``) and only dist-git's topics (``org.fedoraproject.*``,
  or no prefix): pagure.io's projects (``io.pagure.*``) are not packages, and
  neither is a fork (a ``parent``, or a ``fullname`` under ``forks/``), whose
  messages carry the package's namespace and name: forks are ignored (logged).
* pkgdb (Fedora's package database until 2017; the shared data has it):
  ``pkgdb.package.new`` (the point of contact owns it), ``pkgdb.acl.user.remove``
  and ``pkgdb.package.update.status`` to ``Retired`` on the development branch.
* FAS / noggin: ``fas.group.member.sponsor`` (added), ``fas.group.member.removed``
  and ``.remove`` (removed), FreeIPA's ``ipa.group_add_member.v1`` and
  ``ipa.group_remove_member.v1``: group membership, for groups the database
  tracks; ``fas.user.update``: the account is fetched again from FASJSON
  (destinations, locked) when a FASJSON client is configured.

Messages arrive out of order (SQS reorders, a failed record is retried after
a back-off of up to half an hour, a dead-letter redrive replays messages
days old), and a project message states its whole access lists: applied
late, it would bring back a maintainer removed since.  So each change is
applied only if its message is not older (``sent_at``) than the last one
applied to the same artifact, or to the same member of the same group, nor
than the last full reconcile's fetch (which already holds it); the newest
``sent_at`` applied is kept per artifact and per member (``live_stamps``).
A message without a ``sent_at`` cannot be placed and is applied as before; one
stamped more than :data:`MAX_CLOCK_SKEW` ahead of this clock is taken as sent
now (its stamp would make every genuine message after it stale), and a full
reconcile brings every stamp newer than its fetch back to the fetch's time.
Updates are applied one at a time, across processes, and apart from a
reconcile's comparison and write (:func:`applying_alone`): the check, the read,
the write and the stamps of one are done before the next one checks.  An
account's FASJSON request is made after, holding nothing up.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, Engine, text

from fmn.errors import FmnError, RetryableError
from fmn.message import Message, sent_time
from fmn.ownership import store as ostore
from fmn.ownership.data import (
    DISTGIT_NAMESPACES,
    MAINTAINER_ACCESS,
    ORPHAN,
    is_fork,
    project_artifact,
    project_owners,
    valid_name,
)
from fmn.ownership.diff import OwnershipDelta
from fmn.prefs import Owners

log = logging.getLogger(__name__)

_DEV_BRANCHES = ("master", "devel", "rawhide", "main")


@dataclass
class ArtifactChange:
    #: the owners the message states (its project's access lists), or None: the database's
    base: Owners | None = None
    add_users: set[str] = field(default_factory=set)
    remove_users: set[str] = field(default_factory=set)
    add_groups: set[str] = field(default_factory=set)
    remove_groups: set[str] = field(default_factory=set)
    deleted: bool = False

    def apply(self, current: Owners | None) -> Owners | None:
        if self.deleted:
            return None
        base = self.base if self.base is not None else current or Owners()
        users = [u for u in base.users if u not in self.remove_users]
        users += sorted(u for u in self.add_users if u not in users and u != ORPHAN)
        groups = [g for g in base.groups if g not in self.remove_groups]
        groups += sorted(g for g in self.add_groups if g not in groups)
        return Owners(users=tuple(users), groups=tuple(groups))


@dataclass
class LiveUpdate:
    """What one message changes."""

    kind: str
    artifacts: dict[tuple[str, str], ArtifactChange] = field(default_factory=dict)
    #: group -> (members added, members removed)
    members: dict[str, tuple[set[str], set[str]]] = field(default_factory=dict)
    #: accounts to fetch again
    accounts: set[str] = field(default_factory=set)


def _suffix(topic: str, *candidates: str) -> str | None:
    for c in candidates:
        if topic == c or topic.endswith("." + c):
            return c
    return None


def _body(message: Message) -> Mapping[str, Any]:
    body = message.body
    inner = body.get("msg") if isinstance(body, Mapping) else None
    # noggin wraps its fields in "msg"; fedmsg and pagure do not
    return inner if isinstance(inner, Mapping) else body


def _user_name(value: Any) -> str | None:
    if isinstance(value, Mapping):
        value = value.get("username") or value.get("name")
    return value if valid_name(value) else None


PAGURE = ("pagure.project.new", "pagure.project.deleted", "pagure.project.user.added",
          "pagure.project.user.access.updated", "pagure.project.user.removed",
          "pagure.project.group.added", "pagure.project.group.access.updated",
          "pagure.project.group.removed")
FAS = ("fas.group.member.sponsor", "fas.group.member.removed", "fas.group.member.remove",
       "ipa.group_add_member.v1", "ipa.group_remove_member.v1", "fas.user.update")
PKGDB = ("pkgdb.package.new", "pkgdb.acl.user.remove", "pkgdb.package.update.status")


def classify(message: Message, namespaces: Mapping[str, str] | None = None
             ) -> LiveUpdate | None:
    """What ``message`` changes in ownership, membership or accounts; None if nothing.

    ``namespaces`` maps extra Pagure namespaces to artifact types (tests).
    """
    topic = message.topic
    body = _body(message)
    kind = _suffix(topic, *PAGURE)
    if kind is not None:
        if not _dist_git_topic(topic, kind):
            return None  # pagure.io (io.pagure.*): its projects are not packages
        return _pagure(kind, body, namespaces or {})
    kind = _suffix(topic, *FAS)
    if kind is not None:
        return _fas(kind, body)
    kind = _suffix(topic, *PKGDB)
    if kind is not None:
        return _pkgdb(kind, body)
    return None


#: the topic prefix of dist-git's messages (src.fedoraproject.org publishes as
#: Fedora, ``org.fedoraproject.<env>.pagure.*``; pagure.io as ``io.pagure.<env>.pagure.*``)
DIST_GIT_PREFIX = "org.fedoraproject."


def _dist_git_topic(topic: str, kind: str) -> bool:
    """Whether a pagure topic comes from dist-git (or carries no prefix at all)."""
    return topic == kind or topic.startswith(DIST_GIT_PREFIX)


def _pagure(kind: str, body: Mapping[str, Any], extra: Mapping[str, str]) -> LiveUpdate | None:
    project = body.get("project")
    if isinstance(project, Mapping) and is_fork(project):
        log.info("live %s: %r is a fork, not a package: ignored", kind,
                 str(project.get("fullname"))[:200])
        return None
    key = project_artifact(project)
    if key is None and isinstance(project, Mapping):
        atype = extra.get(project.get("namespace") or "")
        if atype is not None and valid_name(project.get("name")):
            key = (atype, project["name"])
    if key is None or not isinstance(project, Mapping):
        return None
    change = ArtifactChange()
    if "access_users" in project or "access_groups" in project:
        change.base = project_owners(project)
    update = LiveUpdate(kind=kind, artifacts={key: change})
    if kind == "pagure.project.deleted":
        change.deleted = True
    elif kind in ("pagure.project.user.added", "pagure.project.user.access.updated"):
        user = _user_name(body.get("new_user"))
        access = body.get("new_access") or body.get("access") or "commit"
        if user is not None:
            (change.add_users if access in MAINTAINER_ACCESS else change.remove_users).add(user)
    elif kind == "pagure.project.user.removed":
        user = _user_name(body.get("removed_user"))
        if user is not None:
            change.remove_users.add(user)
    elif kind in ("pagure.project.group.added", "pagure.project.group.access.updated"):
        group = body.get("new_group")
        access = body.get("new_access") or body.get("access") or "commit"
        if valid_name(group):
            (change.add_groups if access in MAINTAINER_ACCESS else change.remove_groups).add(group)
    elif kind == "pagure.project.group.removed":
        removed = body.get("removed_groups")
        for group in removed if isinstance(removed, list) else [removed]:
            if valid_name(group):
                change.remove_groups.add(group)
    return update


def _ipa_params(body: Mapping[str, Any]) -> tuple[str | None, list[str]]:
    if body.get("IPA_API_RESULT") != "SUCCESS":
        return None, []
    try:
        params = json.loads(body.get("IPA_API_PARAMS") or "{}")
    except (TypeError, ValueError):
        return None, []
    if not isinstance(params, dict):
        return None, []
    group = params.get("cn")
    users = params.get("user")  # nested groups ("group") are not people
    names = [u for u in (users if isinstance(users, list) else [users]) if valid_name(u)]
    return (group if valid_name(group) else None), names


def _fas(kind: str, body: Mapping[str, Any]) -> LiveUpdate | None:
    if kind == "fas.user.update":
        user = _user_name(body.get("user"))
        return LiveUpdate(kind=kind, accounts={user}) if user else None
    if kind.startswith("ipa."):
        group, users = _ipa_params(body)
        if group is None or not users:
            return None
        added = kind == "ipa.group_add_member.v1"
    else:
        g = body.get("group")
        group = _user_name(g) if isinstance(g, Mapping) else (g if valid_name(g) else None)
        user = _user_name(body.get("user"))
        if group is None or user is None:
            return None
        users = [user]
        added = kind == "fas.group.member.sponsor"
    return LiveUpdate(kind=kind, members={group: (set(users), set()) if added
                                          else (set(), set(users))})


def _pkgdb(kind: str, body: Mapping[str, Any]) -> LiveUpdate | None:
    update = LiveUpdate(kind=kind)
    if kind == "pkgdb.acl.user.remove":
        user = _user_name(body.get("username"))
        listings = body.get("package_listings")
        for listing in listings if isinstance(listings, list) and user else ():
            name = ((listing or {}).get("package") or {}).get("name")
            branch = ((listing or {}).get("collection") or {}).get("branchname")
            if valid_name(name) and branch in _DEV_BRANCHES:
                update.artifacts[("rpms", name)] = ArtifactChange(remove_users={user or ""})
        return update if update.artifacts else None
    listing = body.get("package_listing")
    if not isinstance(listing, Mapping):
        return None
    name = (listing.get("package") or {}).get("name")
    branch = (listing.get("collection") or {}).get("branchname")
    if not valid_name(name) or branch not in _DEV_BRANCHES:
        return None
    if kind == "pkgdb.package.new":
        poc = _user_name(listing.get("point_of_contact"))
        if poc is None or poc == ORPHAN:
            return None
        update.artifacts[("rpms", name)] = ArtifactChange(add_users={poc})
    elif body.get("status") == "Retired":
        update.artifacts[("rpms", name)] = ArtifactChange(deleted=True)
    else:
        return None
    return update


# --------------------------------------------------------------------------
# applying


@dataclass
class LiveResult:
    kind: str
    delta: OwnershipDelta
    users_affected: set[str]
    snapshot_changes: int
    seconds: float
    accounts: int = 0
    #: artifacts and group members left alone: the message is older than what is known
    stale: int = 0


#: how far ahead of this machine's clock a publisher's clock may be
MAX_CLOCK_SKEW = timedelta(minutes=5)
#: the oldest stamp kept as is (every database stores it; older is "the oldest")
_OLDEST = datetime(1970, 1, 1, tzinfo=UTC)


def sent_at(message: Message, now: datetime | None = None) -> datetime | None:
    """When the message was sent (UTC), or None if it does not say (or not readably).

    The publisher wrote it: a time further ahead than :data:`MAX_CLOCK_SKEW`
    (a wrong clock, a crafted header, the calendar's last second with an offset
    that puts it in year 10000, which PostgreSQL stores and Python cannot read
    back) is taken as now, or the stamp it leaves would make every genuine
    message after it stale; one before 1970 is taken as 1970.
    """
    when = sent_time(message.sent_at)
    if when is None:
        return None
    now = now or datetime.now(UTC)
    try:
        when = when.astimezone(UTC)
    except OverflowError:  # beyond the calendar once in UTC
        when = now + timedelta(days=1) if when.year > 1 else _OLDEST
    if when > now + MAX_CLOCK_SKEW:
        log.warning("message %s is stamped %s, ahead of this clock (%s): taken as sent now",
                    message.id, str(message.sent_at)[:64], now.isoformat())
        return now
    return max(when, _OLDEST)


def _member_key(group: str, user: str) -> str:
    return f"{group}/{user}"


def _artifact_key(key: tuple[str, str]) -> str:
    return f"{key[0]}/{key[1]}"


#: the PostgreSQL advisory lock live updates take (any number: only they use it)
LIVE_LOCK_KEY = 0x666D6E6C697665  # "fmnlive"
#: live updates of one process, on a database without advisory locks (SQLite)
_process_lock = threading.Lock()


class _InOneTransaction:
    """An engine's stand-in whose every ``begin()`` and ``connect()`` is the one
    transaction of ``conn``: the store's functions, each written as a transaction of
    its own, then commit together, or not at all."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.dialect = conn.dialect

    def begin(self) -> Any:
        return nullcontext(self._conn)

    def connect(self) -> Any:
        return nullcontext(self)

    def execution_options(self, **options: Any) -> _InOneTransaction:
        return self  # a read-only snapshot's options: this transaction is the snapshot

    def __getattr__(self, name: str) -> Any:  # execute, scalars, ... of the connection
        return getattr(self._conn, name)


class Alone:
    """What :func:`applying_alone` yields: the engine to read and write with, and the
    snapshot publishes to run once those writes are committed."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._after: list[Callable[[], None]] = []

    def after_commit(self, publish: Callable[[], None]) -> None:
        """Run ``publish`` once the writes are committed, still alone: the snapshot's
        log must never hold a change the database might yet lose (a full publish
        meanwhile would take it for published), and gets the changes in the order the
        database did."""
        self._after.append(publish)

    def _committed(self) -> None:
        for publish in self._after:
            publish()


@contextmanager
def applying_alone(engine: Engine) -> Iterator[Alone]:
    """One live update at a time: its staleness check, its read of the owners, its
    write and its stamps, which an older message that passed its check could
    otherwise write after a newer one had committed.

    Within a process, a lock of the process (the local runner's threads): on
    SQLite, which local runs use, that is all, and the engine is the engine.  On
    PostgreSQL, across processes too (match invocations run in many): an advisory
    lock of the database session, and the update written in one transaction of that
    same session (the engine yielded stands for it), so that a connection lost half
    way loses the lock and the writes together, never the lock alone.  The
    publishes run after the commit, before the lock is let go; the writers' row
    lock (:func:`fmn.db.store._bump`) is not held across them.  The process lock
    comes first, so that a process's waiting threads hold no connection of the pool
    that the one applying needs.
    """
    with _process_lock:
        if engine.dialect.name != "postgresql":
            alone = Alone(engine)
            yield alone
            alone._committed()
            return
        with engine.connect() as conn:
            try:
                conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": LIVE_LOCK_KEY})
                conn.commit()
                alone = Alone(cast(Engine, _InOneTransaction(conn)))
                with conn.begin():
                    yield alone
                alone._committed()
            except BaseException:
                # whatever stopped it (an error, an interrupt, the generator closed), the
                # session lock must not go back to the pool: closing the connection
                # lets it go whether it was taken or not
                conn.invalidate()
                raise
            _unlock(conn)


def _unlock(conn: Connection) -> None:
    """Let the session's advisory lock go; a connection that cannot is closed, which
    lets it go too (a pooled connection must never keep it)."""
    try:
        conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": LIVE_LOCK_KEY})
        conn.commit()
    except BaseException:
        conn.invalidate()
        raise


class LiveUpdater:
    """Applies :func:`classify`'s answer to the database and the snapshot's change log.

    ``fasjson`` (a :class:`~fmn.ownership.sources.FasJson`) lets an account
    update be fetched at once; without it the next ``fmn sync accounts`` does.
    A database that fails raises :class:`~fmn.errors.RetryableError`: the
    message comes back and is applied then.
    """

    def __init__(self, engine: Engine, store: Any, *, fasjson: Any = None,
                 namespaces: Mapping[str, str] | None = None) -> None:
        self.engine = engine
        self.store = store
        self.fasjson = fasjson
        self.namespaces = {k: v for k, v in (namespaces or {}).items()
                           if k not in DISTGIT_NAMESPACES}

    def handle(self, message: Message) -> LiveResult | None:
        update = classify(message, self.namespaces)
        if update is None:
            return None
        started = time.perf_counter()
        try:
            with applying_alone(self.engine) as alone:
                result = self._apply(alone, update, sent_at(message))
            # accounts are no owners: their FASJSON requests hold no other update up
            self._accounts(update, result)
        except FmnError:
            raise
        except Exception as exc:  # SQLAlchemy's errors: the database is away
            raise RetryableError(f"applying {update.kind} of {message.id}: {exc!r}") from exc
        result.seconds = time.perf_counter() - started
        ostore.record_sync(self.engine, "live", ok=True, error=None, detail={
            "topic": message.topic, "message_id": message.id,
            "artifacts": result.delta.artifact_count(), "groups": len(result.delta.groups),
            "users_affected": len(result.users_affected), "accounts": result.accounts,
            "snapshot_changes": result.snapshot_changes, "stale": result.stale,
            "seconds": round(result.seconds, 4)})
        log.info("live %s: %d artifacts, %d groups, %d users affected, %d snapshot changes"
                 "%s", update.kind, result.delta.artifact_count(), len(result.delta.groups),
                 len(result.users_affected), result.snapshot_changes,
                 f" ({result.stale} left alone: {message.id} is older than what is known)"
                 if result.stale else "")
        return result

    def _drop_stale(self, engine: Engine, update: LiveUpdate, when: datetime) -> int:
        """Take out of ``update`` what a newer message or the last reconcile already
        set; how many artifacts and group members were taken out."""
        reconciled = ostore.live_stamps(engine, "reconcile", ("ownership", "members"))
        stale = 0
        if update.artifacts:
            known = ostore.live_stamps(engine, "artifact",
                                       (_artifact_key(k) for k in update.artifacts))
            since = reconciled.get("ownership")
            for key in list(update.artifacts):
                last = known.get(_artifact_key(key))
                if (last is not None and when < last) or (since is not None and when < since):
                    del update.artifacts[key]
                    stale += 1
        if update.members:
            keys = [_member_key(g, u) for g, (added, removed) in update.members.items()
                    for u in added | removed]
            known = ostore.live_stamps(engine, "member", keys)
            since = reconciled.get("members")
            for group, (added, removed) in list(update.members.items()):
                for users in (added, removed):
                    for user in list(users):
                        last = known.get(_member_key(group, user))
                        if (last is not None and when < last) or \
                                (since is not None and when < since):
                            users.discard(user)
                            stale += 1
                if not added and not removed:
                    del update.members[group]
        return stale

    def _apply(self, alone: Alone, update: LiveUpdate,
               when: datetime | None = None) -> LiveResult:
        from fmn.ownership.publish import publish_delta

        engine = alone.engine
        stale = 0 if when is None else self._drop_stale(engine, update, when)
        delta = OwnershipDelta()
        affected: set[str] = set()
        if update.artifacts:
            current = ostore.owners_of(engine, update.artifacts)
            for key, change in update.artifacts.items():
                was = current.get(key)
                new = change.apply(was)
                if new is not None and not (new.users or new.groups):
                    new = None
                if new is None and was is None:
                    continue
                if was is not None and new is not None and set(was.users) == set(new.users) \
                        and set(was.groups) == set(new.groups):
                    continue
                delta.owners[key[0]][key[1]] = new
                affected |= set(was.users if was else ()) ^ set(new.users if new else ())
        tracked: set[str] = set()
        if update.members:
            known = ostore.members_of(engine, update.members)
            tracked = set(known)
            for group, (added, removed) in update.members.items():
                if group not in known:
                    continue  # a group nobody here cares about
                before = known[group]
                after = tuple(m for m in before if m not in removed) + tuple(
                    sorted(u for u in added if u not in before))
                if set(after) != set(before):
                    delta.groups[group] = after
                    affected |= set(before) ^ set(after)
        result = LiveResult(kind=update.kind, delta=delta, users_affected=affected,
                            snapshot_changes=0, seconds=0.0, stale=stale)
        if delta:
            ostore.apply_delta(engine, delta)

            def publish() -> None:
                result.snapshot_changes += publish_delta(self.store, delta)

            alone.after_commit(publish)
        if when is not None:  # what this message said is now the newest known
            ostore.stamp_live(engine, "artifact",
                              {_artifact_key(k): when for k in update.artifacts})
            ostore.stamp_live(engine, "member", {
                _member_key(g, u): when for g, (added, removed) in update.members.items()
                if g in tracked for u in added | removed})
        return result

    def _accounts(self, update: LiveUpdate, result: LiveResult) -> None:
        """Fetch and store the accounts ``update`` names (with ``fasjson``), into ``result``."""
        from fmn.ownership.publish import publish_accounts

        if not update.accounts or self.fasjson is None:
            return
        names = [n for n in update.accounts if n in set(ostore.user_names_in(
            self.engine, update.accounts))]
        fetched = [self.fasjson.user(n) for n in names]
        if fetched:
            result.accounts = len(fetched)
            result.snapshot_changes += publish_accounts(self.engine, self.store, fetched)
