"""The snapshot: preferences compiled for matching, and the indexes over them.

Two layers:

* :class:`SnapshotData` is the serialisable form (spec: docs/snapshot-format.md).
  It holds, per user, a compact *entry* with only what can ever produce a
  notification (the user is enabled, the rule is enabled, the destination is
  verified and referenced), plus the ownership tables and group membership.
  :func:`compile_preferences` makes one from :class:`fmn.prefs.Preferences`.
* :class:`Snapshot` is the in-memory, indexed form the indexed matcher reads:
  artifact -> rules, owner user -> rules, owner group -> rules, username ->
  rules, topic pattern -> rules.  It is built from a :class:`SnapshotData` in
  one linear pass, and :meth:`Snapshot.apply_user` replaces one user's part
  without touching anybody else's.

Identical filters are interned (one object however many rules share it), and
so are destination-id tuples and generation rules: that keeps a 100,000-user
snapshot small, and lets the matcher evaluate each distinct filter once per
message.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from fnmatch import translate
from typing import Any

import orjson

from fmn.fields import MISSING, json_equal, lookup_path
from fmn.message import ARTIFACT_TYPES, SEVERITIES, Message
from fmn.prefs import Filters, Preferences, User

FORMAT_VERSION = 1
DEFAULT_SEVERITIES: tuple[int, ...] = (SEVERITIES["INFO"], SEVERITIES["WARNING"],
                                       SEVERITIES["ERROR"])
#: Distinct topics whose matching topic rules are remembered.
TOPIC_CACHE_SIZE = 20_000

_intern = sys.intern

# A user's entry, JSON-ready:
#   {"rev": int, "dests": {dest_id: [protocol, address]},
#    "rules": [[rule_id, kind, params, [[filter, my_actions, [dest_id, ...]], ...]], ...]}
UserEntry = dict[str, Any]


# --------------------------------------------------------------------------
# compiling preferences into entries


def compile_filters(f: Filters) -> dict[str, Any]:
    """The user-independent part of a filter set, normalised (``my_actions`` aside)."""
    out: dict[str, Any] = {}
    if f.applications is not None:
        out["apps"] = sorted({a.lower() for a in f.applications})
    if f.excluded_applications is not None:
        out["xapps"] = sorted({a.lower() for a in f.excluded_applications})
    out["sev"] = (sorted({SEVERITIES[s] for s in f.severities}) if f.severities is not None
                  else list(DEFAULT_SEVERITIES))
    if f.topic is not None:
        out["topic"] = f.topic
    if f.fields is not None:
        out["fields"] = [[path, list(values)] for path, values in f.fields]
    return out


def _params(kind: str, user: User, tracking: Any) -> Any:
    if kind == "artifacts-group-owned":
        return sorted(set(tracking.groups))
    if kind == "artifacts-followed":
        return sorted({(a.type, a.name) for a in tracking.artifacts})
    if kind == "users-followed":
        return sorted(set(tracking.usernames))
    if kind == "topics":
        return sorted(set(tracking.patterns))
    return None


def compile_user(user: User, revision: int = 0) -> UserEntry:
    """A user's entry; its ``rules`` are empty when nothing of theirs can fire."""
    if not user.enabled:
        return {"rev": revision, "dests": {}, "rules": []}
    verified = {d.id: d for d in user.destinations if d.verified}
    rules = []
    used: set[str] = set()
    for rule in user.rules:
        if not rule.enabled:
            continue
        gens = []
        for gen in rule.generation_rules:
            dests = sorted({d for d in gen.destinations if d in verified})
            if dests:
                gens.append([compile_filters(gen.filters), bool(gen.filters.my_actions), dests])
                used.update(dests)
        if gens:
            params = _params(rule.tracking.kind, user, rule.tracking)
            rules.append([rule.id, rule.tracking.kind, params, gens])
    dests_out = {
        d: [verified[d].protocol, verified[d].address_for(user.name)] for d in sorted(used)
    }
    return {"rev": revision, "dests": dests_out, "rules": rules}


@dataclass
class SnapshotData:
    """The serialisable snapshot: entries, ownership and groups."""

    id: str
    created_at: str
    #: artifact type -> name -> [owner users, owner groups]
    owners: dict[str, dict[str, list[list[str]]]]
    groups: dict[str, list[str]]
    users: dict[str, UserEntry] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": "fmn-snapshot",
            "version": FORMAT_VERSION,
            "id": self.id,
            "created_at": self.created_at,
            "owners": self.owners,
            "groups": self.groups,
            "users": self.users,
        }

    def encode(self) -> bytes:
        return orjson.dumps(self.to_json())

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> SnapshotData:
        if doc.get("format") != "fmn-snapshot" or doc.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"not an fmn snapshot of version {FORMAT_VERSION}: "
                f"format={doc.get('format')!r} version={doc.get('version')!r}"
            )
        return cls(id=doc["id"], created_at=doc["created_at"], owners=doc["owners"],
                   groups=doc["groups"], users=doc["users"])

    @classmethod
    def decode(cls, blob: bytes) -> SnapshotData:
        return cls.from_json(orjson.loads(blob))


def compile_preferences(prefs: Preferences, snapshot_id: str, created_at: str,
                        revisions: Mapping[str, int] | None = None) -> SnapshotData:
    """Compile a whole preferences set (optionally with each user's revision)."""
    revisions = revisions or {}
    users: dict[str, UserEntry] = {}
    for user in prefs.users:
        entry = compile_user(user, revisions.get(user.name, 0))
        if entry["rules"]:  # the blob keeps only users who can receive something
            users[user.name] = entry
    owners = {
        atype: {name: [list(o.users), list(o.groups)]
                for name, o in prefs.owners.get(atype, {}).items()}
        for atype in ARTIFACT_TYPES
    }
    groups = {g: list(m) for g, m in prefs.groups.items()}
    return SnapshotData(id=snapshot_id, created_at=created_at, owners=owners, groups=groups,
                        users=users)


# --------------------------------------------------------------------------
# the indexed, in-memory form


class CompiledFilter:
    """One distinct filter set, evaluated at most once per message."""

    __slots__ = ("apps", "xapps", "severities", "topic_match", "fields")

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.apps: frozenset[str] | None = (frozenset(spec["apps"]) if "apps" in spec
                                            else None)
        self.xapps: frozenset[str] | None = (frozenset(spec["xapps"]) if "xapps" in spec
                                             else None)
        self.severities = frozenset(spec["sev"])
        self.topic_match = (re.compile(translate(spec["topic"])).match if "topic" in spec
                            else None)
        self.fields: tuple[tuple[tuple[str, ...], tuple[Any, ...]], ...] | None = (
            tuple((tuple(path.split(".")), tuple(values)) for path, values in spec["fields"])
            if "fields" in spec else None
        )

    def passes(self, m: Message, app: str | None) -> bool:
        """Whether ``m`` passes; ``app`` is ``m.app_name`` lowercased."""
        if m.severity not in self.severities:
            return False
        if self.apps is not None and app not in self.apps:
            return False
        if self.xapps is not None and app in self.xapps:
            return False
        if self.topic_match is not None and self.topic_match(m.topic) is None:
            return False
        if self.fields is not None:
            for path, values in self.fields:
                value = lookup_path(m.body, path)
                if value is MISSING or not any(json_equal(value, v) for v in values):
                    return False
        return True


#: One generation rule: (filter, my_actions, destination ids)
CompiledGen = tuple[CompiledFilter, bool, tuple[str, ...]]


class CompiledRule:
    __slots__ = ("user", "id", "kind", "params", "gens")

    def __init__(self, user: str, rule_id: str, kind: str, params: Any,
                 gens: tuple[CompiledGen, ...]) -> None:
        self.user = user
        self.id = rule_id
        self.kind = kind
        self.params = params
        self.gens = gens


class UserPart:
    __slots__ = ("rev", "dests", "rules")

    def __init__(self, rev: int, dests: dict[str, tuple[str, str]],
                 rules: tuple[CompiledRule, ...]) -> None:
        self.rev = rev
        self.dests = dests
        self.rules = rules


_Index = dict[Any, list[CompiledRule]]


class Snapshot:
    """Indexes from what a message offers to the rules it can touch."""

    def __init__(self, data: SnapshotData) -> None:
        self.id = data.id
        self.created_at = data.created_at
        self.owners: dict[str, dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
            atype: {
                _intern(name): (tuple(_intern(u) for u in o[0]), tuple(_intern(g) for g in o[1]))
                for name, o in data.owners.get(atype, {}).items()
            }
            for atype in ARTIFACT_TYPES
        }
        self.groups = {g: tuple(m) for g, m in data.groups.items()}
        self.users: dict[str, UserPart] = {}
        self.by_owner: _Index = {}
        self.by_owner_group: _Index = {}
        self.by_artifact: dict[str, _Index] = {atype: {} for atype in ARTIFACT_TYPES}
        self.by_related: _Index = {}
        self.by_followed_user: _Index = {}
        self.by_topic_pattern: _Index = {}
        self._topic_matchers: dict[str, Any] = {}
        self._topic_cache: dict[str, tuple[CompiledRule, ...]] = {}
        self._filters: dict[bytes, CompiledFilter] = {}
        self._dest_tuples: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._gens: dict[tuple[int, bool, tuple[str, ...]], CompiledGen] = {}
        for name, entry in data.users.items():
            self._add_user(name, entry)

    # -- building ---------------------------------------------------------

    def _filter(self, spec: Mapping[str, Any]) -> CompiledFilter:
        key = orjson.dumps(spec, option=orjson.OPT_SORT_KEYS)
        cf = self._filters.get(key)
        if cf is None:
            cf = self._filters[key] = CompiledFilter(spec)
        return cf

    def _gen(self, spec: list[Any]) -> CompiledGen:
        cf = self._filter(spec[0])
        dests = tuple(_intern(d) for d in spec[2])
        dests = self._dest_tuples.setdefault(dests, dests)
        key = (id(cf), bool(spec[1]), dests)
        gen = self._gens.get(key)
        if gen is None:
            gen = self._gens[key] = (cf, bool(spec[1]), dests)
        return gen

    def _index_keys(self, rule: CompiledRule) -> Iterator[tuple[_Index, Any]]:
        kind, params = rule.kind, rule.params
        if kind == "artifacts-owned":
            yield self.by_owner, rule.user
        elif kind == "artifacts-group-owned":
            for group in params:
                yield self.by_owner_group, group
        elif kind == "artifacts-followed":
            for atype, name in params:
                yield self.by_artifact[atype], name
        elif kind == "related-events":
            yield self.by_related, rule.user
        elif kind == "users-followed":
            for name in params:
                yield self.by_followed_user, name
        elif kind == "topics":
            for pattern in params:
                yield self.by_topic_pattern, pattern
        else:
            raise ValueError(f"unknown tracking kind {kind!r} in snapshot")

    def _add_user(self, name: str, entry: UserEntry) -> None:
        name = _intern(name)
        rules = []
        for rule_id, kind, params, gens in entry["rules"]:
            if kind == "artifacts-followed":
                params = tuple((a, _intern(n)) for a, n in params)
            elif params is not None:
                params = tuple(_intern(p) for p in params)
            rule = CompiledRule(name, _intern(rule_id), kind, params,
                                tuple(self._gen(g) for g in gens))
            rules.append(rule)
            for index, key in self._index_keys(rule):
                bucket = index.get(key)
                if bucket is None:
                    index[key] = [rule]
                else:
                    bucket.append(rule)
                if index is self.by_topic_pattern:
                    if key not in self._topic_matchers:
                        self._topic_matchers[key] = re.compile(translate(key)).match
                    # cached topic -> rules tuples do not hold this rule yet
                    self._topic_cache.clear()
        dests = {_intern(d): (p, a) for d, (p, a) in entry["dests"].items()}
        self.users[name] = UserPart(int(entry.get("rev", 0)), dests, tuple(rules))

    def _remove_user(self, name: str) -> None:
        part = self.users.pop(name, None)
        if part is None:
            return
        for rule in part.rules:
            for index, key in self._index_keys(rule):
                bucket = index.get(key)
                if bucket is None:
                    continue
                bucket[:] = [r for r in bucket if r is not rule]
                if not bucket:
                    del index[key]
                    if index is self.by_topic_pattern:
                        self._topic_matchers.pop(key, None)
        if any(r.kind == "topics" for r in part.rules):
            self._topic_cache.clear()

    def apply_user(self, name: str, entry: UserEntry | None) -> bool:
        """Replace one user's part (``None`` removes it).

        A change older than what the snapshot holds (by ``rev``) is ignored, so
        replaying a change log is harmless.  Returns whether anything changed.
        """
        current = self.users.get(name)
        if entry is not None and current is not None and int(entry.get("rev", 0)) < current.rev:
            return False
        self._remove_user(name)
        if entry is not None:
            self._add_user(name, entry)
        return True

    # -- reading ----------------------------------------------------------

    def rules_for_topic(self, topic: str) -> tuple[CompiledRule, ...]:
        found = self._topic_cache.get(topic)
        if found is None:
            rules: list[CompiledRule] = []
            for pattern, match in self._topic_matchers.items():
                if match(topic) is not None:
                    rules.extend(self.by_topic_pattern[pattern])
            found = tuple(rules)
            if len(self._topic_cache) >= TOPIC_CACHE_SIZE:
                self._topic_cache.clear()
            self._topic_cache[topic] = found
        return found

    def candidates(self, m: Message) -> Iterable[CompiledRule]:
        """Every rule whose tracking matches ``m`` (a rule may appear more than once)."""
        out: list[CompiledRule] = []
        owner_users: set[str] = set()
        owner_groups: set[str] = set()
        for atype in ARTIFACT_TYPES:
            names = getattr(m, atype)
            if not names:
                continue
            owners = self.owners[atype]
            followed = self.by_artifact[atype]
            for name in names:
                own = owners.get(name)
                if own is not None:
                    owner_users.update(own[0])
                    owner_groups.update(own[1])
                rules = followed.get(name)
                if rules:
                    out.extend(rules)
        for user in owner_users:
            rules = self.by_owner.get(user)
            if rules:
                out.extend(rules)
        for group in owner_groups:
            rules = self.by_owner_group.get(group)
            if rules:
                out.extend(rules)
        for user in m.usernames:
            rules = self.by_related.get(user)
            if rules:
                out.extend(rules)
            rules = self.by_followed_user.get(user)
            if rules:
                out.extend(rules)
        if self._topic_matchers:
            out.extend(self.rules_for_topic(m.topic))
        return out

    def stats(self) -> dict[str, int]:
        return {
            "users": len(self.users),
            "rules": sum(len(p.rules) for p in self.users.values()),
            "distinct_filters": len(self._filters),
            "distinct_generation_rules": len(self._gens),
            "artifacts_owned": sum(len(v) for v in self.owners.values()),
            "topic_patterns": len(self._topic_matchers),
        }
