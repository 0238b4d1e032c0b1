"""The indexed engine: only the rules a message can touch.

The snapshot's indexes give the buckets of candidate rules of a message (by
artifact, owner, owner group, username and topic).  Within a bucket, rules
are grouped by their interned generation rules, so the filters of a group
are decided once per message (and each distinct filter once per message
overall); what is left per rule is ``my_actions``, the one user-dependent
filter, and recording the (user, destination) it reaches.  The cost per
message follows the number of rules that can fire for it, not the number of
users or rules in total.
"""

from __future__ import annotations

from collections.abc import Callable

from fmn.matcher.base import Description, Notification
from fmn.message import Message
from fmn.snapshot.compiled import CompiledFilter, FilterSig, Snapshot, Target

_NOTHING: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())


def _decide(sig: FilterSig, message: Message, app: str | None,
            filters: dict[CompiledFilter, bool]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Which generation rules pass: (all of them, those that pass when the user is the agent)."""
    passing: list[int] = []
    mine: list[int] = []
    for i, (cf, my_actions) in enumerate(sig):
        ok = filters.get(cf)
        if ok is None:
            ok = filters[cf] = cf.passes(message, app)
        if ok:
            passing.append(i)
            if my_actions:
                mine.append(i)
    if not passing:
        return _NOTHING
    return tuple(passing), tuple(mine)


class IndexedMatcher:
    name = "indexed"

    def __init__(self, snapshot: Snapshot | Callable[[], Snapshot]) -> None:
        # A callable lets a live snapshot refresh itself between messages.
        self._get: Callable[[], Snapshot] = (
            snapshot if callable(snapshot) else (lambda: snapshot)
        )

    @property
    def snapshot(self) -> Snapshot:
        return self._get()

    def describe(self, n: Notification) -> Description:
        return self._get().describe(n.user, n.destination, n.rules)

    def match(self, message: Message) -> list[Notification]:
        snap = self._get()
        app = message.app_name.lower() if message.app_name is not None else None
        agent = message.agent_name
        filters: dict[CompiledFilter, bool] = {}
        decided: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        # target -> the first rule that reached it; more[target]: all of them,
        # only when several did (rare, and worth not building a set per target)
        first: dict[Target, str] = {}
        reach = first.setdefault
        more: dict[Target, set[str]] = {}
        for bucket in snap.buckets(message):
            it = iter(bucket)  # (sig, members, sig, members, ...)
            for sig, members in zip(it, it, strict=False):
                verdict = decided.get(id(sig))
                if verdict is None:
                    verdict = decided[id(sig)] = _decide(sig, message, app, filters)
                passing, mine = verdict
                if not passing:
                    continue
                for user, rule_id, target_sets in members:
                    for i in (mine if user == agent else passing):
                        for target in target_sets[i]:
                            seen = reach(target, rule_id)
                            if seen is not rule_id and seen != rule_id:
                                more.setdefault(target, {seen}).add(rule_id)
        if not first:
            return []
        mid = message.id
        new = tuple.__new__
        # a target is "user NUL protocol NUL address NUL destination"
        if not more:  # the common case: every target reached by one rule
            return [new(Notification, (mid, *t.split("\0"), (first[t],))) for t in sorted(first)]
        return [
            new(Notification, (mid, *t.split("\0"),
                               (first[t],) if t not in more else tuple(sorted(more[t]))))
            for t in sorted(first)
        ]
