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

import gc
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


#: The filter part of a rule's generation rules: ((filter, my_actions), ...),
#: interned.  Rules that share one share its verdict for a message.
FilterSig = tuple[tuple[CompiledFilter, bool], ...]
#: Where a notification goes: ``user NUL protocol NUL address NUL destination
#: id``, one interned string per (user, destination).  The matcher uses it as
#: its dict key (a string caches its hash) and sorts by it (one memcmp orders
#: by user, protocol, address and destination, since names hold no control
#: characters); :attr:`Snapshot.targets` gives back the four parts.
Target = str
TargetParts = tuple[str, str, str, str]
#: The destination part of a rule: one tuple of targets per generation rule.
TargetSets = tuple[tuple[Target, ...], ...]
#: A rule in a bucket: (user, rule id, targets per generation rule).
Member = tuple[str, str, TargetSets]


class CompiledRule:
    __slots__ = ("user", "id", "kind", "params", "sig", "targets")

    def __init__(self, user: str, rule_id: str, kind: str, params: Any, sig: FilterSig,
                 targets: TargetSets) -> None:
        self.user = user
        self.id = rule_id
        self.kind = kind
        self.params = params
        self.sig = sig
        self.targets = targets


class UserPart:
    __slots__ = ("rev", "dests", "rules")

    def __init__(self, rev: int, dests: dict[str, Target],
                 rules: tuple[CompiledRule, ...]) -> None:
        self.rev = rev
        self.dests = dests
        self.rules = rules


#: The rules under one index key, grouped by their filter signature: the
#: matcher decides a group's filters once per message, then only walks its
#: members.
Bucket = dict[FilterSig, list[Member]]
_Index = dict[Any, Bucket]


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
        self.targets: dict[Target, TargetParts] = {}
        self.by_owner: _Index = {}
        self.by_owner_group: _Index = {}
        self.by_artifact: dict[str, _Index] = {atype: {} for atype in ARTIFACT_TYPES}
        self.by_related: _Index = {}
        self.by_followed_user: _Index = {}
        self.by_topic_pattern: _Index = {}
        self._topic_matchers: dict[str, Any] = {}
        self._topic_cache: dict[str, tuple[Bucket, ...]] = {}
        self._filters: dict[bytes, CompiledFilter] = {}
        self._dest_tuples: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._sigs: dict[tuple[int, ...], FilterSig] = {}
        # Building makes millions of long-lived objects; the cyclic GC would
        # rescan them again and again while they are being made.
        paused = gc.isenabled()
        gc.disable()
        try:
            for name, entry in data.users.items():
                self._add_user(name, entry)
        finally:
            if paused:
                gc.enable()


    # -- building ---------------------------------------------------------

    def _filter(self, spec: Mapping[str, Any]) -> CompiledFilter:
        key = orjson.dumps(spec, option=orjson.OPT_SORT_KEYS)
        cf = self._filters.get(key)
        if cf is None:
            cf = self._filters[key] = CompiledFilter(spec)
        return cf

    def _signature(self, specs: list[Any]) -> FilterSig:
        sig = tuple((self._filter(spec[0]), bool(spec[1])) for spec in specs)
        key = tuple(id(cf) * 2 + mine for cf, mine in sig)
        return self._sigs.setdefault(key, sig)

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
        targets: dict[str, Target] = {}
        for d, (p, a) in entry["dests"].items():
            parts = (name, _intern(p), _intern(a), _intern(d))
            target = _intern("\0".join(parts))
            self.targets[target] = parts
            targets[parts[3]] = target
        # one tuple per distinct destination list of this user
        target_tuples: dict[tuple[str, ...], tuple[Target, ...]] = {}
        rules = []
        for rule_id, kind, params, gens in entry["rules"]:
            if kind == "artifacts-followed":
                params = tuple((a, _intern(n)) for a, n in params)
            elif params is not None:
                params = tuple(_intern(p) for p in params)
            sig = self._signature(gens)
            target_sets = tuple(
                target_tuples.setdefault(tuple(g[2]), tuple(targets[d] for d in g[2]))
                for g in gens)
            rule = CompiledRule(name, _intern(rule_id), kind, params, sig, target_sets)
            rules.append(rule)
            member = (name, rule.id, target_sets)
            for index, key in self._index_keys(rule):
                bucket = index.get(key)
                if bucket is None:
                    index[key] = {sig: [member]}
                else:
                    members = bucket.get(sig)
                    if members is None:
                        bucket[sig] = [member]
                    else:
                        members.append(member)
                if index is self.by_topic_pattern:
                    if key not in self._topic_matchers:
                        self._topic_matchers[key] = re.compile(translate(key)).match
                    # cached topic -> rules tuples do not hold this rule yet
                    self._topic_cache.clear()
        self.users[name] = UserPart(int(entry.get("rev", 0)), targets, tuple(rules))

    def _remove_user(self, name: str) -> None:
        part = self.users.pop(name, None)
        if part is None:
            return
        for target in part.dests.values():
            self.targets.pop(target, None)
        for rule in part.rules:
            for index, key in self._index_keys(rule):
                bucket = index.get(key)
                members = bucket.get(rule.sig) if bucket is not None else None
                if bucket is None or members is None:
                    continue
                members[:] = [m for m in members if m[0] != rule.user or m[1] != rule.id]
                if not members:
                    del bucket[rule.sig]
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

    def buckets_for_topic(self, topic: str) -> tuple[Bucket, ...]:
        found = self._topic_cache.get(topic)
        if found is None:
            found = tuple(self.by_topic_pattern[pattern]
                          for pattern, match in self._topic_matchers.items()
                          if match(topic) is not None)
            if len(self._topic_cache) >= TOPIC_CACHE_SIZE:
                self._topic_cache.clear()
            self._topic_cache[topic] = found
        return found

    def buckets(self, m: Message) -> list[Bucket]:
        """The buckets of every rule whose tracking matches ``m``.

        A rule may be in more than one of them (two of its followed artifacts
        in one message, say); the matcher's output is a set, so that is safe.
        """
        out: list[Bucket] = []
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
                bucket = followed.get(name)
                if bucket:
                    out.append(bucket)
        by_owner, by_group = self.by_owner, self.by_owner_group
        out.extend(by_owner[u] for u in owner_users if u in by_owner)
        out.extend(by_group[g] for g in owner_groups if g in by_group)
        by_related, by_followed = self.by_related, self.by_followed_user
        for user in m.usernames:
            bucket = by_related.get(user)
            if bucket:
                out.append(bucket)
            bucket = by_followed.get(user)
            if bucket:
                out.append(bucket)
        if self._topic_matchers:
            out.extend(self.buckets_for_topic(m.topic))
        return out

    def candidates(self, m: Message) -> Iterator[tuple[FilterSig, Member]]:
        """(filter signature, member) of every rule whose tracking matches ``m``."""
        for bucket in self.buckets(m):
            for sig, members in bucket.items():
                for member in members:
                    yield sig, member

    def stats(self) -> dict[str, int]:
        return {
            "users": len(self.users),
            "rules": sum(len(p.rules) for p in self.users.values()),
            "distinct_filters": len(self._filters),
            "distinct_filter_signatures": len(self._sigs),
            "artifacts_owned": sum(len(v) for v in self.owners.values()),
            "topic_patterns": len(self._topic_matchers),
        }
