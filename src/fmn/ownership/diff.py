"""What changed between the database and a fetch, and whether a fetch is believable.

A reconcile applies only the difference (:class:`OwnershipDelta`), and only
when the fetch passes :func:`implausible` and, for owners, :func:`pairs_dropped`:
an empty answer, or one that lost more than ``max_drop`` of the entries (or of
the artifact-owner pairs) the database holds, is far more likely
a broken upstream (a truncated file, a failing LDAP page) than Fedora losing
a tenth of its packagers overnight, and applying it would unsubscribe
thousands of people.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fmn.message import ARTIFACT_TYPES
from fmn.prefs import Owners

#: the default share of entries a fetch may lose before it is refused
DEFAULT_MAX_DROP = 0.10
#: so many entries may always go (four people of forty leaving a group is life)
MIN_DROP_ALLOWED = 5


@dataclass
class OwnershipDelta:
    """Artifacts whose owners changed (``None``: nobody owns it now) and groups
    whose members changed (``None``: the group is gone)."""

    owners: dict[str, dict[str, Owners | None]] = field(
        default_factory=lambda: {t: {} for t in ARTIFACT_TYPES})
    groups: dict[str, tuple[str, ...] | None] = field(default_factory=dict)

    def artifact_count(self) -> int:
        return sum(len(v) for v in self.owners.values())

    def __bool__(self) -> bool:
        return bool(self.artifact_count() or self.groups)

    def changes(self, chunk: int = 2000) -> list[dict[str, Any]]:
        """The snapshot change-log entries carrying this delta, ``chunk`` entries each."""
        out: list[dict[str, Any]] = []
        current: dict[str, Any] = {"owners": {}, "groups": {}}
        size = 0

        def flush() -> None:
            nonlocal current, size
            if size:
                out.append(current)
            current, size = {"owners": {}, "groups": {}}, 0

        for atype, names in self.owners.items():
            for name, owners in names.items():
                current["owners"].setdefault(atype, {})[name] = (
                    None if owners is None else [list(owners.users), list(owners.groups)])
                size += 1
                if size >= chunk:
                    flush()
        for group, members in self.groups.items():
            current["groups"][group] = None if members is None else list(members)
            size += 1
            if size >= chunk:
                flush()
        flush()
        return out


def diff_owners(old: Mapping[str, Mapping[str, Owners]],
                new: Mapping[str, Mapping[str, Owners]],
                delta: OwnershipDelta) -> None:
    """Fill ``delta.owners`` with what turns ``old`` into ``new`` (order counts as no change)."""
    for atype in ARTIFACT_TYPES:
        before, after = old.get(atype, {}), new.get(atype, {})
        out = delta.owners[atype]
        for name, owners in after.items():
            was = before.get(name)
            if was is None or set(was.users) != set(owners.users) \
                    or set(was.groups) != set(owners.groups):
                out[name] = owners
        for name in before.keys() - after.keys():
            out[name] = None


def diff_groups(old: Mapping[str, Iterable[str]], new: Mapping[str, Iterable[str]],
                delta: OwnershipDelta, *, only: Iterable[str] | None = None) -> None:
    """Fill ``delta.groups``; with ``only``, groups outside it are left alone."""
    names = set(new) | set(old) if only is None else set(only)
    for group in sorted(names):
        after = new.get(group)
        before = old.get(group)
        if after is None:
            if before is not None:
                delta.groups[group] = None
        elif before is None or set(before) != set(after):
            delta.groups[group] = tuple(after)


def affected_users(delta: OwnershipDelta, old_owners: Mapping[str, Mapping[str, Owners]],
                   old_groups: Mapping[str, Iterable[str]]) -> set[str]:
    """Users whose view changed: gained or lost an artifact, joined or left a group."""
    users: set[str] = set()
    for atype, names in delta.owners.items():
        for name, owners in names.items():
            was = old_owners.get(atype, {}).get(name)
            before = set(was.users) if was is not None else set()
            after = set(owners.users) if owners is not None else set()
            users |= before ^ after
    for group, members in delta.groups.items():
        users |= set(old_groups.get(group, ())) ^ set(members or ())
    return users


def too_many_lost(before: int, lost: int, max_drop: float) -> bool:
    """Whether losing ``lost`` of ``before`` entries is more than a fetch may: more than
    ``max_drop`` of them, and more than :data:`MIN_DROP_ALLOWED` (a handful may go)."""
    return before > 0 and lost > max(before * max_drop, MIN_DROP_ALLOWED)


def implausible(what: str, before: int, after: int, max_drop: float) -> str | None:
    """Why a fetch of ``after`` entries, where the database holds ``before``, must not
    be applied; ``None`` when it looks sane."""
    if after == 0:
        return f"the fetched {what} is empty (the database holds {before}): refused"
    if too_many_lost(before, before - after, max_drop):
        return (f"the fetched {what} has {after} entries where the database holds "
                f"{before}: a drop of {1 - after / before:.1%}, more than the "
                f"{max_drop:.0%} allowed: refused")
    return None


def owner_pairs(owners: Mapping[str, Mapping[str, Owners]], *, users_only: bool = False
                ) -> set[tuple[str, str, str]]:
    """Every (artifact type, artifact, owner) of ``owners``; groups as ``@group``
    unless ``users_only``."""
    out: set[tuple[str, str, str]] = set()
    for atype, names in owners.items():
        for name, o in names.items():
            out.update((atype, name, u) for u in o.users)
            if not users_only:
                out.update((atype, name, "@" + g) for g in o.groups)
    return out


def pairs_dropped(what: str, before: set[Any], after: set[Any], max_drop: float) -> str | None:
    """Why a fetch that keeps only part of the (artifact, owner) pairs the database holds
    must not be applied; ``None`` when it keeps enough.  Counting artifacts alone
    accepts an owner map that keeps every package and loses every maintainer."""
    lost = len(before - after)
    if too_many_lost(len(before), lost, max_drop):
        return (f"the fetched {what} loses {lost} of the {len(before)} (artifact, owner) "
                f"pairs the database holds: a drop of {lost / len(before):.1%}, more than "
                f"the {max_drop:.0%} allowed: refused")
    return None
