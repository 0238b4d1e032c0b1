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

import functools
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from fnmatch import translate
from typing import Any

import orjson

from fmn.fields import MISSING, ValueSet, lookup_path
from fmn.gcpause import gc_paused
from fmn.message import ARTIFACT_TYPES, SEVERITIES, Message
from fmn.prefs import Destination, Filters, Preferences, User

FORMAT_VERSION = 2
#: Versions a reader accepts: version 1 lacks rule names and digests
#: (senders then show rule ids and send at once).
READABLE_VERSIONS = (1, 2)
DEBUG = SEVERITIES["DEBUG"]
#: Distinct topics whose matching topic rules are remembered.
TOPIC_CACHE_SIZE = 20_000

_intern = sys.intern

# A user's entry, JSON-ready:
#   {"rev": int, "dests": {dest_id: [protocol, address(, interval_s, max_count)]},
#    "rules": [[rule_id, kind, params, [[filter, my_actions, [dest_id, ...]], ...], name], ...]}
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
    if f.severities is not None:
        out["sev"] = sorted({SEVERITIES[s] for s in f.severities})
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


class FilterTable:
    """The distinct filters of one compile, so that entries refer to them by number.

    A 100,000-user snapshot has some 300,000 generation rules but only a few
    thousand distinct filters: the table keeps the document small and lets a
    reader build each filter once.
    """

    def __init__(self) -> None:
        self.specs: list[dict[str, Any]] = []
        self._by_id: dict[int, int] = {}
        self._by_json: dict[bytes, int] = {}

    def ref(self, f: Filters) -> int:
        # Preferences built in memory share Filters objects; those loaded from
        # the database do not, and are matched on their canonical JSON.
        found = self._by_id.get(id(f))
        if found is None:
            spec = compile_filters(f)
            key = orjson.dumps(spec, option=orjson.OPT_SORT_KEYS)
            found = self._by_json.get(key)
            if found is None:
                found = self._by_json[key] = len(self.specs)
                self.specs.append(spec)
            self._by_id[id(f)] = found
        return found


def compile_user(user: User, revision: int = 0, table: FilterTable | None = None) -> UserEntry:
    """A user's entry; its ``rules`` are empty when nothing of theirs can fire.

    With a ``table``, filters are numbers into it (a full snapshot); without,
    they are written out in full (a change-log entry stands alone).
    """
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
                spec = table.ref(gen.filters) if table is not None else compile_filters(gen.filters)
                gens.append([spec, bool(gen.filters.my_actions), dests])
                used.update(dests)
        if gens:
            params = _params(rule.tracking.kind, user, rule.tracking)
            rules.append([rule.id, rule.tracking.kind, params, gens, rule.name])
    dests_out = {d: _dest(verified[d], user.name) for d in sorted(used)}
    return {"rev": revision, "dests": dests_out, "rules": rules}


def _dest(dest: Destination, user: str) -> list[Any]:
    out: list[Any] = [dest.protocol, dest.address_for(user)]
    if dest.digest is not None:
        out += (dest.digest.interval_s, dest.digest.max_count)
    return out


@dataclass
class SnapshotData:
    """The serialisable snapshot: entries, filters, ownership and groups.

    Encoded as JSON Lines: a header object, then one ``[name, entry]`` line per
    user, so that a reader indexes users one at a time instead of decoding the
    whole document first (which, at 100,000 users, costs more memory than the
    indexes themselves).
    """

    id: str
    created_at: str
    #: artifact type -> name -> [owner users, owner groups]
    owners: dict[str, dict[str, list[list[str]]]]
    groups: dict[str, list[str]]
    #: the distinct filters, referred to by number in the entries
    filters: list[dict[str, Any]] = field(default_factory=list)
    users: dict[str, UserEntry] = field(default_factory=dict)
    #: the revisions of users left out (nothing of theirs can fire)
    absent: dict[str, int] = field(default_factory=dict)

    def header(self) -> dict[str, Any]:
        return {
            "format": "fmn-snapshot",
            "version": FORMAT_VERSION,
            "id": self.id,
            "created_at": self.created_at,
            "owners": self.owners,
            "groups": self.groups,
            "filters": self.filters,
            "absent": self.absent,
            "users": len(self.users),
        }

    def encode(self) -> bytes:
        dumps = orjson.dumps
        with gc_paused():
            return b"\n".join([dumps(self.header()),
                                *(dumps([name, entry]) for name, entry in self.users.items())])


def check_header(header: Any) -> Mapping[str, Any]:
    if not isinstance(header, Mapping) or header.get("format") != "fmn-snapshot" \
            or type(header.get("version")) is not int \
            or header.get("version") not in READABLE_VERSIONS:
        found = header if not isinstance(header, Mapping) else {
            k: header.get(k) for k in ("format", "version")}
        raise ValueError(f"not an fmn snapshot of a version in {READABLE_VERSIONS}: {found!r}")
    return header


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"a name must be a string, not {type(value).__name__}")
    return value


def decode_lines(document: bytes) -> tuple[Mapping[str, Any], Iterator[tuple[str, UserEntry]]]:
    """The header of an encoded snapshot, and its users decoded one by one."""
    end = document.find(b"\n")
    header = check_header(orjson.loads(document if end < 0 else document[:end]))

    def users() -> Iterator[tuple[str, UserEntry]]:
        # memoryview slices: no copy of the document, no list of its lines
        # (those would sit in the allocator's arenas between the index's
        # objects and keep the process large after they are freed)
        view = memoryview(document)
        start = end + 1 if end >= 0 else len(document)
        while start < len(document):
            stop = document.find(b"\n", start)
            if stop < 0:
                stop = len(document)
            name, entry = orjson.loads(view[start:stop])
            yield name, entry
            start = stop + 1

    return header, users()


def compile_preferences(prefs: Preferences, snapshot_id: str, created_at: str,
                        revisions: Mapping[str, int] | None = None) -> SnapshotData:
    """Compile a whole preferences set (optionally with each user's revision)."""
    revisions = revisions or {}
    users: dict[str, UserEntry] = {}
    absent: dict[str, int] = {}
    table = FilterTable()
    with gc_paused():
        for user in prefs.users:
            entry = compile_user(user, revisions.get(user.name, 0), table)
            if entry["rules"]:  # the snapshot keeps only users who can receive something
                users[user.name] = entry
            elif entry["rev"]:
                absent[user.name] = entry["rev"]
        owners = {
            atype: {name: [list(o.users), list(o.groups)]
                    for name, o in prefs.owners.get(atype, {}).items()}
            for atype in ARTIFACT_TYPES
        }
        groups = {g: list(m) for g, m in prefs.groups.items()}
    return SnapshotData(id=snapshot_id, created_at=created_at, owners=owners, groups=groups,
                        filters=table.specs, users=users, absent=absent)


# --------------------------------------------------------------------------
# the indexed, in-memory form


@functools.lru_cache(maxsize=65536)
def glob_matcher(pattern: str) -> Callable[[str], re.Match[str] | None]:
    """A case-sensitive shell-glob matcher (compiled once per distinct glob)."""
    return re.compile(translate(pattern)).match


class CompiledFilter:
    """One distinct filter set, evaluated at most once per message."""

    __slots__ = ("apps", "xapps", "severities", "topic_match", "fields")

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.apps: frozenset[str] | None = (frozenset(spec["apps"]) if "apps" in spec
                                            else None)
        self.xapps: frozenset[str] | None = (frozenset(spec["xapps"]) if "xapps" in spec
                                             else None)
        # absent: every severity but DEBUG passes (spec section 2)
        self.severities: frozenset[int] | None = (frozenset(spec["sev"]) if "sev" in spec
                                                  else None)
        self.topic_match = glob_matcher(spec["topic"]) if "topic" in spec else None
        self.fields: tuple[tuple[tuple[str, ...], ValueSet], ...] | None = (
            tuple((tuple(path.split(".")), ValueSet(values)) for path, values in spec["fields"])
            if "fields" in spec else None
        )

    def passes(self, m: Message, app: str | None) -> bool:
        """Whether ``m`` passes; ``app`` is ``m.app_name`` lowercased."""
        if self.severities is None:
            if m.severity == DEBUG:
                return False
        elif m.severity not in self.severities:
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
                if value is MISSING or not values.matches(value):
                    return False
        return True


#: The filter part of a rule's generation rules: ((filter, my_actions), ...),
#: interned.  Rules that share one share its verdict for a message.
FilterSig = tuple[tuple[CompiledFilter, bool], ...]
#: Where a notification goes: ``user NUL protocol NUL address NUL destination
#: id``, one interned string per (user, destination).  The matcher uses it as
#: its dict key (a string caches its hash), sorts by it (one memcmp orders by
#: user, protocol, address and destination, since names hold no control
#: characters) and splits it for the notification: keeping the four parts
#: apart as well would cost a 100,000-user snapshot some 35 MB.
Target = str
#: The destination part of a rule: one tuple of targets per generation rule.
TargetSets = tuple[tuple[Target, ...], ...]
#: A rule in a bucket: (user, rule id, targets per generation rule).
Member = tuple[str, str, TargetSets]


class UserPart:
    """What the snapshot holds of one user, enough to take them out of the indexes.

    ``rules`` is flat, ``(kind, params, sig, member, name)`` five items per
    rule: a tuple per rule (or an object) would cost a 100,000-user snapshot
    12 MB.  ``digests`` maps the destinations with a digest setting to
    ``(interval_s, max_count)`` (``None`` when none has one, the usual case).
    """

    __slots__ = ("rev", "rules", "digests")

    def __init__(self, rev: int, rules: tuple[Any, ...],
                 digests: dict[str, tuple[int, int]] | None = None) -> None:
        self.rev = rev
        self.rules = rules
        self.digests = digests

    def __len__(self) -> int:
        return len(self.rules) // 5

    def each(self) -> Iterator[tuple[str, Any, FilterSig, Member]]:
        """(kind, params, filter signature, member) of each rule."""
        r = self.rules
        for i in range(0, len(r), 5):
            yield r[i], r[i + 1], r[i + 2], r[i + 3]

    def rule_name(self, rule_id: str) -> str:
        """A rule's name (its id when the snapshot has none or no such rule)."""
        r = self.rules
        i = 3
        while i < len(r):
            if r[i][1] == rule_id:
                name: str = r[i + 1]
                return name
            i += 5
        return rule_id


#: The rules under one index key, grouped by their filter signature, as one
#: flat tuple ``(sig, members, sig, members, ...)``: the matcher decides a
#: group's filters once per message, then only walks its members.  Immutable
#: (a change to one user builds the few buckets it touches anew): most keys
#: hold one or two rules, and this is a third of the memory of a dict of lists.
Bucket = tuple[Any, ...]
_Index = dict[Any, Any]  # key -> Bucket (a _Draft while building)
#: A bucket being built or changed.
_Draft = dict[FilterSig, list[Member]]
#: Where to put a rule's member: the draft bucket of (index, key).
_DraftOf = Callable[[_Index, Any], _Draft]


def _thaw(bucket: Bucket | None) -> _Draft:
    return {sig: list(members) for sig, members in pairs(bucket or ())}


def _freeze(draft: _Draft) -> Bucket:
    return tuple(x for sig, members in draft.items() if members for x in (sig, tuple(members)))


def pairs(bucket: Bucket) -> Iterator[tuple[FilterSig, tuple[Member, ...]]]:
    """A bucket's (filter signature, members) groups."""
    it = iter(bucket)
    return zip(it, it, strict=True)


def _draft_in_place(index: _Index, key: Any) -> _Draft:
    draft: _Draft = index.setdefault(key, {})
    return draft


class Snapshot:
    """Indexes from what a message offers to the rules it can touch."""

    def __init__(self, header: Mapping[str, Any],
                 users: Iterable[tuple[str, UserEntry]]) -> None:
        """Index a snapshot from its header and its users (see :meth:`from_data`)."""
        with gc_paused():
            self._build(header, users)

    def _build(self, header: Mapping[str, Any], users: Iterable[tuple[str, UserEntry]]) -> None:
        check_header(header)
        self.id: str = header["id"]
        self.created_at: str = header["created_at"]
        self.owners: dict[str, dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
            atype: {
                _intern(name): (tuple(_intern(u) for u in o[0]), tuple(_intern(g) for g in o[1]))
                for name, o in header["owners"].get(atype, {}).items()
            }
            for atype in ARTIFACT_TYPES
        }
        self.groups = {g: tuple(m) for g, m in header["groups"].items()}
        self.users: dict[str, UserPart] = {}
        self.by_owner: _Index = {}
        self.by_owner_group: _Index = {}
        self.by_artifact: dict[str, _Index] = {atype: {} for atype in ARTIFACT_TYPES}
        self.by_related: _Index = {}
        self.by_followed_user: _Index = {}
        self.by_topic_pattern: _Index = {}
        self._topic_matchers: dict[str, Any] = {}
        self._topic_cache: dict[str, tuple[Bucket, ...]] = {}
        self._filters: dict[str, CompiledFilter] = {}
        self._sigs: dict[tuple[int, ...], FilterSig] = {}
        self._table = [self._filter(spec) for spec in header.get("filters", ())]
        #: revisions of users the snapshot holds no line for (nothing of theirs
        #: can fire): an older change must not bring them back
        self.absent_revisions: dict[str, int] = dict(header.get("absent", {}))
        # While building, the indexes hold drafts; each is frozen in place at
        # the end (freed as the next is made, so the peak stays low).
        for name, entry in users:
            self.users[_intern(name)] = self._add_user(name, entry, _draft_in_place)
        for index in self._indexes():
            for key in index:
                index[key] = _freeze(index[key])
        self._topic_matchers = {pattern: glob_matcher(pattern)
                                for pattern in self.by_topic_pattern}

    @classmethod
    def from_data(cls, data: SnapshotData) -> Snapshot:
        return cls(data.header(), data.users.items())

    @classmethod
    def from_document(cls, document: bytes) -> Snapshot:
        """Index an encoded snapshot (:meth:`SnapshotData.encode`), one user at a time."""
        header, users = decode_lines(document)
        return cls(header, users)

    # -- building ---------------------------------------------------------

    def _filter(self, spec: Mapping[str, Any]) -> CompiledFilter:
        # decoded: orjson's bytes can carry kilobytes of spare capacity, and
        # thousands of these keys live as long as the snapshot
        key = orjson.dumps(spec, option=orjson.OPT_SORT_KEYS).decode()
        cf = self._filters.get(key)
        if cf is None:
            cf = self._filters[key] = CompiledFilter(spec)
        return cf

    def _signature(self, specs: list[Any]) -> FilterSig:
        # a number into the snapshot's filter table, or (change log) the filter itself
        table = self._table
        sig = tuple((table[spec[0]] if isinstance(spec[0], int) else self._filter(spec[0]),
                     bool(spec[1])) for spec in specs)
        key = tuple(id(cf) * 2 + mine for cf, mine in sig)
        return self._sigs.setdefault(key, sig)

    def _index_keys(self, kind: str, params: Any, user: str) -> Iterator[tuple[_Index, Any]]:
        if kind == "artifacts-owned":
            yield self.by_owner, user
        elif kind == "artifacts-group-owned":
            for group in params:
                yield self.by_owner_group, group
        elif kind == "artifacts-followed":
            for i in range(0, len(params), 2):
                yield self.by_artifact[params[i]], params[i + 1]
        elif kind == "related-events":
            yield self.by_related, user
        elif kind == "users-followed":
            for name in params:
                yield self.by_followed_user, name
        elif kind == "topics":
            for pattern in params:
                yield self.by_topic_pattern, pattern
        else:
            raise ValueError(f"unknown tracking kind {kind!r} in snapshot")

    def _indexes(self) -> list[_Index]:
        return [self.by_owner, self.by_owner_group, *self.by_artifact.values(),
                self.by_related, self.by_followed_user, self.by_topic_pattern]

    def _commit(self, drafts: dict[tuple[int, Any], tuple[_Index, _Draft]]) -> None:
        topics_changed = False
        for (_, key), (index, draft) in drafts.items():
            bucket = _freeze(draft)
            if bucket:
                index[key] = bucket
            else:
                index.pop(key, None)
            if index is self.by_topic_pattern:
                topics_changed = True
                if not bucket:
                    self._topic_matchers.pop(key, None)
                elif key not in self._topic_matchers:
                    self._topic_matchers[key] = glob_matcher(key)
        if topics_changed:
            # cached topic -> buckets tuples hold the buckets replaced here
            self._topic_cache.clear()

    def _add_user(self, name: str, entry: UserEntry, draft_of: _DraftOf) -> UserPart:
        """Put a user's rules into draft buckets; the caller stores the returned part."""
        name = _intern(name)
        targets: dict[str, Target] = {}
        digests: dict[str, tuple[int, int]] | None = None
        for d, (p, a, *digest) in entry["dests"].items():
            targets[d] = _intern("\0".join((name, p, a, d)))
            if digest:
                digests = digests or {}
                digests[d] = (int(digest[0]), int(digest[1]))
        # one tuple per distinct destination list of this user
        target_tuples: dict[tuple[str, ...], tuple[Target, ...]] = {}
        rules: list[Any] = []
        for rule_id, kind, params, gens, *rest in entry["rules"]:
            rule_name = _intern(rest[0]) if rest else rule_id  # version 1 has no names
            if kind == "artifacts-followed":  # flat: (type, name, type, name, ...)
                params = tuple(_intern(x) for pair in params for x in pair)
            elif params is not None:
                params = tuple(_intern(p) for p in params)
            sig = self._signature(gens)
            target_sets = tuple(
                target_tuples.setdefault(tuple(g[2]), tuple(targets[d] for d in g[2]))
                for g in gens)
            member = (name, _intern(rule_id), target_sets)
            rules += (kind, params, sig, member, rule_name)
            for index, key in self._index_keys(kind, params, name):
                draft_of(index, key).setdefault(sig, []).append(member)
        return UserPart(int(entry.get("rev", 0)), tuple(rules), digests)

    def _remove_rules(self, name: str, part: UserPart, draft_of: _DraftOf) -> None:
        for kind, params, sig, member in part.each():
            for index, key in self._index_keys(kind, params, name):
                members = draft_of(index, key).get(sig)
                if members:
                    members[:] = [m for m in members if m is not member]

    def apply_user(self, name: str, entry: UserEntry | None) -> bool:
        """Replace one user's part (``None`` removes it).

        A change older than what the snapshot holds (by ``rev``) is ignored, so
        replaying a change log is harmless.  Returns whether anything changed.
        """
        current = self.users.get(name)
        known = current.rev if current is not None else self.absent_revisions.get(name, -1)
        if entry is not None and int(entry.get("rev", 0)) < known:
            return False
        # Everything below works on drafts (copies) until _commit: an entry
        # that fails half-way leaves the indexes and the users as they were.
        drafts: dict[tuple[int, Any], tuple[_Index, _Draft]] = {}

        def draft_of(index: _Index, key: Any) -> _Draft:
            found = drafts.get((id(index), key))
            if found is None:
                found = drafts[(id(index), key)] = (index, _thaw(index.get(key)))
            return found[1]

        if current is not None:
            self._remove_rules(name, current, draft_of)
        part = self._add_user(name, entry, draft_of) if entry is not None else None
        self._commit(drafts)
        if part is None:
            self.users.pop(name, None)
        else:
            self.users[_intern(name)] = part
            self.absent_revisions.pop(name, None)
        return True

    def apply_ownership(self, change: Mapping[str, Any]) -> int:
        """Apply an ownership change (docs/snapshot-format.md); how many entries moved.

        ``change["owners"][type][name]`` is ``[owner users, owner groups]``,
        or ``None`` for an artifact nobody owns any more; ``change["groups"]
        [name]`` is the member list or ``None``.  Owners are looked up per
        message, not indexed per rule, so nothing else has to be rebuilt.
        Validated whole before anything is applied.
        """
        owners_in = change.get("owners") or {}
        groups_in = change.get("groups") or {}
        if not isinstance(owners_in, Mapping) or not isinstance(groups_in, Mapping):
            raise TypeError("an ownership change holds objects")
        owners: list[tuple[str, str, tuple[tuple[str, ...], tuple[str, ...]] | None]] = []
        for atype, names in owners_in.items():
            if atype not in self.owners or not isinstance(names, Mapping):
                raise ValueError(f"unknown artifact type {atype!r}")
            for name, own in names.items():
                if own is None:
                    owners.append((atype, name, None))
                    continue
                users, groups = own
                owners.append((atype, _intern(name), (
                    tuple(_intern(_text(u)) for u in users),
                    tuple(_intern(_text(g)) for g in groups))))
        members = [(name, None if m is None else tuple(_text(u) for u in m))
                   for name, m in groups_in.items()]
        if change.get("replace"):
            # the whole ownership data: what it does not name is gone
            for table in self.owners.values():
                table.clear()
            self.groups.clear()
        for atype, name, value in owners:
            if value is None or not (value[0] or value[1]):
                self.owners[atype].pop(name, None)
            else:
                self.owners[atype][name] = value
        for name, m in members:
            if m is None:
                self.groups.pop(name, None)
            else:
                self.groups[name] = m
        return len(owners) + len(members)

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

    def describe(self, user: str, destination: str, rules: Iterable[str]
                 ) -> tuple[tuple[str, ...], tuple[int, int] | None]:
        """What a sender needs beyond a notification: the rules' names and the
        destination's digest setting ``(interval_s, max_count)`` or ``None``."""
        part = self.users.get(user)
        if part is None:  # gone since the match: ids, and send at once
            return tuple(rules), None
        names = tuple(map(part.rule_name, rules))
        digests = part.digests
        return names, digests.get(destination) if digests is not None else None

    def stats(self) -> dict[str, int]:
        return {
            "users": len(self.users),
            "rules": sum(len(p) for p in self.users.values()),
            "distinct_filters": len(self._filters),
            "distinct_filter_signatures": len(self._sigs),
            "artifacts_owned": sum(len(v) for v in self.owners.values()),
            "topic_patterns": len(self._topic_matchers),
        }
