"""The naive engine: spec section 3 written literally.

For every message it walks every user, every rule and every generation rule,
and asks the spec's questions in the spec's words.  It is slow on purpose,
being the oracle the indexed engine is tested against: keep it a plain
transcription of the spec, with no caches and no indexes.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from fmn.fields import MISSING, json_equal, lookup_path
from fmn.matcher.base import Description, Notification
from fmn.message import ARTIFACT_TYPES, SEVERITIES, Message
from fmn.prefs import Filters, Preferences, Tracking, User


class NaiveMatcher:
    name = "naive"

    def __init__(self, prefs: Preferences) -> None:
        self.prefs = prefs

    def describe(self, n: Notification) -> Description:
        for user in self.prefs.users:
            if user.name == n.user:
                names = {r.id: r.name for r in user.rules}
                dest = user.destination(n.destination)
                digest = dest.digest if dest is not None else None
                return (tuple(names.get(r, r) for r in n.rules),
                        (digest.interval_s, digest.max_count) if digest else None)
        return n.rules, None

    def tracks(self, tracking: Tracking, user: User, m: Message) -> bool:
        kind = tracking.kind
        if kind == "artifacts-owned":
            return any(
                user.name in self.prefs.owners.get(atype, {}).get(name, _NO_OWNERS).users
                for atype in ARTIFACT_TYPES
                for name in m.artifacts(atype)
            )
        if kind == "artifacts-group-owned":
            return any(
                group in tracking.groups
                for atype in ARTIFACT_TYPES
                for name in m.artifacts(atype)
                for group in self.prefs.owners.get(atype, {}).get(name, _NO_OWNERS).groups
            )
        if kind == "artifacts-followed":
            return any(a.name in m.artifacts(a.type) for a in tracking.artifacts)
        if kind == "related-events":
            return user.name in m.usernames
        if kind == "users-followed":
            return any(name in m.usernames for name in tracking.usernames)
        if kind == "topics":
            return any(fnmatchcase(m.topic, pattern) for pattern in tracking.patterns)
        raise ValueError(f"unknown tracking kind {kind!r}")

    @staticmethod
    def filters_pass(f: Filters, user: User, m: Message) -> bool:
        app = m.app_name.lower() if m.app_name is not None else None
        if f.applications is not None and app not in [a.lower() for a in f.applications]:
            return False
        if f.excluded_applications is not None and app in [
            a.lower() for a in f.excluded_applications
        ]:
            return False
        if f.severities is not None:
            if m.severity not in [SEVERITIES[s] for s in f.severities]:
                return False
        elif m.severity == SEVERITIES["DEBUG"]:
            return False
        if f.topic is not None and not fnmatchcase(m.topic, f.topic):
            return False
        if not f.my_actions and m.agent_name == user.name:
            return False
        if f.fields is not None:
            for path, values in f.fields:
                value = lookup_path(m.body, path.split("."))
                if value is MISSING or not any(json_equal(value, v) for v in values):
                    return False
        return True

    def match(self, message: Message) -> list[Notification]:
        found: dict[tuple[str, str], set[str]] = {}
        for user in self.prefs.users:
            if not user.enabled:
                continue
            for rule in user.rules:
                if not rule.enabled or not self.tracks(rule.tracking, user, message):
                    continue
                for gen in rule.generation_rules:
                    if not self.filters_pass(gen.filters, user, message):
                        continue
                    for dest_id in gen.destinations:
                        dest = user.destination(dest_id)
                        if dest is not None and dest.verified:
                            found.setdefault((user.name, dest_id), set()).add(rule.id)
        out = []
        for (user_name, dest_id), rules in found.items():
            owner = self.prefs.user(user_name)
            assert owner is not None
            dest = owner.destination(dest_id)
            assert dest is not None
            out.append(Notification(message.id, user_name, dest.protocol,
                                    dest.address_for(user_name), dest_id, tuple(sorted(rules))))
        out.sort(key=Notification.sort_key)
        return out


class _NoOwners:
    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()


_NO_OWNERS = _NoOwners()
