"""The indexed engine: only the rules a message can touch.

The snapshot's indexes give the candidate rules of a message (by artifact,
owner, owner group, username and topic); only those are evaluated.  Each
distinct filter is evaluated at most once per message (filters are interned
in the snapshot), and ``my_actions``, the only user-dependent filter, is
checked apart.  The cost per message follows the number of rules that can
fire for it, not the number of users or rules in total.
"""

from __future__ import annotations

from collections.abc import Callable

from fmn.matcher.base import Notification
from fmn.message import Message
from fmn.snapshot.compiled import CompiledFilter, Snapshot


class IndexedMatcher:
    name = "indexed"

    def __init__(self, snapshot: Snapshot | Callable[[], Snapshot]) -> None:
        # A callable lets a live snapshot refresh itself between messages.
        self._get: Callable[[], Snapshot] = (
            snapshot if callable(snapshot) else (lambda: snapshot)  # type: ignore[assignment]
        )

    @property
    def snapshot(self) -> Snapshot:
        return self._get()

    def match(self, message: Message) -> list[Notification]:
        snap = self._get()
        app = message.app_name.lower() if message.app_name is not None else None
        agent = message.agent_name
        verdicts: dict[CompiledFilter, bool] = {}
        found: dict[tuple[str, str], set[str]] = {}
        for rule in snap.candidates(message):
            user = rule.user
            for cf, my_actions, dests in rule.gens:
                ok = verdicts.get(cf)
                if ok is None:
                    ok = verdicts[cf] = cf.passes(message, app)
                if not ok or (not my_actions and agent == user):
                    continue
                for dest in dests:
                    key = (user, dest)
                    ids = found.get(key)
                    if ids is None:
                        found[key] = {rule.id}
                    else:
                        ids.add(rule.id)
        if not found:
            return []
        users = snap.users
        out = []
        mid = message.id
        for (user, dest), ids in found.items():
            protocol, address = users[user].dests[dest]
            out.append(Notification(mid, user, protocol, address, dest,
                                    tuple(sorted(ids)) if len(ids) > 1 else tuple(ids)))
        out.sort(key=Notification.sort_key)
        return out
