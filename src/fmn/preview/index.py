"""The preview index: which recent messages a rule would have matched.

A :class:`PreviewIndex` holds the message window in memory, indexed by what
rules look up: artifact (type, name) and username to messages, and each
message's *class*, its (topic, application, severity).  :meth:`refresh`
reads only the entries appended since the last one it saw and drops those
beyond the window's count and age, so a warm web API pays for new messages
only.

:meth:`PreviewIndex.preview` answers for one rule of one user what the naive
matcher (:mod:`fmn.matcher.naive`) would have decided on each message in the
window, exactly, with three differences that suit a rule being edited: the
rule's and the user's ``enabled`` flags and the generation rules'
destinations are ignored (a message matches when the rule tracks it and one
generation rule's filters pass).  It evaluates only candidate messages: the
ones under the rule's artifacts or names, or, for ``topics`` tracking, the
classes whose topic one of the globs matches (each distinct topic is matched
once per preview, not each message).  Filters that depend on nothing but the
class (applications, severities, topic) are decided once per class; then
each candidate costs a ``my_actions`` comparison and, only for ``fields``
filters, a body decode.

Ownership (``artifacts-owned``, ``artifacts-group-owned``) comes from an
:class:`Ownership`: user -> artifacts and group -> artifacts, as inverted
from the preferences' ownership data.
"""

from __future__ import annotations

import heapq
import sys
import time
import zlib
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

import orjson

from fmn.fields import MISSING, ValueSet, lookup_path
from fmn.message import ARTIFACT_TYPES, SEVERITY_NAMES, Message
from fmn.prefs import Owners, Rule
from fmn.preview.window import (
    DEFAULT_MAX_AGE_S,
    DEFAULT_MAX_COUNT,
    START,
    WindowEntry,
    WindowStore,
    decode_meta,
    position_ms,
    read_all,
)
from fmn.snapshot.compiled import CompiledFilter, compile_filters

_intern = sys.intern
#: An artifact as the index keys it: (type, name).
ArtifactKey = tuple[str, str]


@dataclass(frozen=True)
class Ownership:
    """Who owns what: user -> artifacts they own directly, group -> artifacts it owns.

    A preview needs only the previewing user's entry and the entries of the
    groups a rule names, so a caller may pass just those.
    """

    by_user: Mapping[str, Sequence[ArtifactKey]] = field(default_factory=dict)
    by_group: Mapping[str, Sequence[ArtifactKey]] = field(default_factory=dict)

    @classmethod
    def from_owners(cls, owners: Mapping[str, Mapping[str, Owners]]) -> Ownership:
        """Invert the preferences' ownership data (spec section 4)."""
        by_user: dict[str, list[ArtifactKey]] = {}
        by_group: dict[str, list[ArtifactKey]] = {}
        for atype in ARTIFACT_TYPES:
            for name, own in owners.get(atype, {}).items():
                key = (atype, name)
                for u in dict.fromkeys(own.users):
                    by_user.setdefault(u, []).append(key)
                for g in dict.fromkeys(own.groups):
                    by_group.setdefault(g, []).append(key)
        return cls(by_user, by_group)


@dataclass(frozen=True, slots=True)
class PreviewMatch:
    """A matched message, as a preview shows it."""

    id: str
    topic: str
    app_name: str | None
    summary: str | None
    url: str | None
    sent_at: str | None
    severity: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "topic": self.topic, "app_name": self.app_name,
                "summary": self.summary, "url": self.url, "sent_at": self.sent_at,
                "severity": self.severity}


#: What a web request's preview may spend walking candidates (the target is
#: an answer within 200 ms, refresh and serialisation included).
DEFAULT_BUDGET_MS = 120.0


@dataclass(frozen=True)
class PreviewResult:
    """What a rule would have matched in the window."""

    #: how many messages of the window it matches
    count: int
    #: the most recent matches, newest first (at most the ``limit`` asked for)
    matches: list[PreviewMatch]
    #: messages in the window, and the positions of its oldest and newest
    window_size: int
    #: candidate messages evaluated (those the rule's tracking selects)
    candidates: int
    #: candidates a ``fields`` filter could not be decided on (body not kept):
    #: counted as not matching
    undecided: int
    elapsed_ms: float
    #: False when the time budget ran out first: ``count`` and ``matches`` then
    #: cover the newest ``candidates`` of ``total_candidates``
    complete: bool = True
    total_candidates: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "matches": [m.to_json() for m in self.matches],
                "window_size": self.window_size, "candidates": self.candidates,
                "total_candidates": self.total_candidates, "complete": self.complete,
                "undecided": self.undecided, "elapsed_ms": round(self.elapsed_ms, 3)}


class _Entry:
    """One message of the window (only what matching and display read)."""

    __slots__ = ("seq", "ms", "id", "agent", "cls", "summary", "url", "sent_at", "body",
                 "users", "arts")

    def __init__(self, seq: int, ms: int, doc: list[Any], cls: int,
                 body: bytes | None) -> None:
        self.seq = seq
        self.ms = ms
        self.id: str = doc[1]
        self.agent: str | None = doc[4]
        self.cls = cls
        self.summary: str | None = doc[11]
        self.url: str | None = doc[12]
        self.sent_at: str | None = doc[13]
        self.body = body
        self.users: tuple[str, ...] = tuple(_intern(u) for u in doc[5])
        self.arts: tuple[ArtifactKey, ...] = tuple(
            (atype, _intern(name))
            for atype, names in zip(ARTIFACT_TYPES, doc[6:10], strict=True) for name in names)


#: A message class: (topic, app_name, lowercased app_name, severity).
_ClassKey = tuple[str, str | None, str | None, int]
_Fields = tuple[tuple[tuple[str, ...], ValueSet], ...]
#: Byte strings that the JSON text of a body passing a ``fields`` filter must
#: contain: each key of a path (``"key":``), and one of the values when they
#: are all strings.  The bodies were encoded by orjson, which writes no
#: whitespace and escapes a string one way only, so a missing needle proves
#: the filter fails without decoding the body.
_Needles = tuple[tuple[bytes, ...], ...]
#: A generation rule as a preview evaluates it: (filter without ``fields``,
#: my_actions, ``fields`` pairs or None, their needles).
_Gen = tuple[CompiledFilter, bool, _Fields | None, _Needles]


def _needles(fields: _Fields) -> _Needles:
    values_first: list[tuple[bytes, ...]] = []
    keys: list[tuple[bytes, ...]] = []
    for path, values in fields:
        if values and all(isinstance(v, str) for v in values):
            values_first.append(tuple(orjson.dumps(v) for v in values))
        # a decimal part may index a list, whose items have no key; the last
        # key is the rarest, so it is looked for first
        keys += [(orjson.dumps(part) + b":",) for part in reversed(path)
                 if not (part.isascii() and part.isdigit())]
    return tuple(values_first + keys)


def _may_pass(needles: _Needles, raw: bytes) -> bool:
    for alts in needles:
        for needle in alts:
            if needle in raw:
                break
        else:
            return False
    return True


def _compile_gen(rule: Rule) -> list[_Gen]:
    gens = []
    for gen in rule.generation_rules:
        spec = compile_filters(gen.filters)
        fields = CompiledFilter(spec).fields
        spec.pop("fields", None)
        gens.append((CompiledFilter(spec), bool(gen.filters.my_actions), fields,
                     _needles(fields) if fields is not None else ()))
    return gens


def _fields_pass(fields: _Fields, body: Any) -> bool:
    for path, values in fields:
        value = lookup_path(body, path)
        if value is MISSING or not values.matches(value):
            return False
    return True


def _pop_first(index: dict[Any, deque[int]], key: Any) -> None:
    d = index[key]
    d.popleft()
    if not d:
        del index[key]


class PreviewIndex:
    """The window in memory, indexed for previews; see the module docstring."""

    def __init__(self, max_count: int = DEFAULT_MAX_COUNT,
                 max_age_s: float = DEFAULT_MAX_AGE_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.max_count = max_count
        self.max_age_s = max_age_s
        self.clock = clock
        #: the position of the last entry read from the store
        self.position = START
        # entries by sequence number: _entries[i] has seq _seq0 + i; the
        # first _head slots are evicted (None) until the list is compacted
        self._entries: list[_Entry | None] = []
        self._seq0 = 0
        self._head = 0
        self._by_artifact: dict[ArtifactKey, deque[int]] = {}
        self._by_user: dict[str, deque[int]] = {}
        self._by_class: dict[int, deque[int]] = {}
        self._classes: dict[_ClassKey, int] = {}
        self._class_keys: list[_ClassKey] = []
        self._topic_classes: dict[str, list[int]] = {}

    def __len__(self) -> int:
        return len(self._entries) - self._head

    # -- loading --------------------------------------------------------------

    def refresh(self, store: WindowStore) -> int:
        """Read what the store appended since the last refresh; the number of new entries."""
        added = self.add(read_all(store, self.position))
        self.evict()
        return added

    def add(self, entries: Iterable[tuple[str, WindowEntry]]) -> int:
        """Append entries read from a store (positions increasing)."""
        added = 0
        for position, entry in entries:
            try:
                doc = decode_meta(entry.meta)
                # kept as JSON text: a fields filter first looks for its keys
                # and string values in it, and decodes only when all are there
                body = zlib.decompress(entry.body) if entry.body is not None else None
                self._append(position_ms(position), doc, body)
            except (ValueError, TypeError, IndexError, zlib.error):
                pass  # an entry of another version or a damaged one: not previewable
            self.position = position
            added += 1
            if len(self) > self.max_count:
                self._evict_one()
        return added

    def _append(self, ms: int, doc: list[Any], body: bytes | None) -> None:
        topic = _intern(doc[2])
        app: str | None = doc[3]
        key: _ClassKey = (topic, app, app.lower() if app is not None else None, int(doc[10]))
        cls = self._classes.get(key)
        if cls is None:
            cls = self._classes[key] = len(self._class_keys)
            self._class_keys.append(key)
            self._topic_classes.setdefault(topic, []).append(cls)
        seq = self._seq0 + len(self._entries)
        e = _Entry(seq, ms, doc, cls, body)
        self._entries.append(e)
        self._by_class.setdefault(cls, deque()).append(seq)
        for u in e.users:
            self._by_user.setdefault(u, deque()).append(seq)
        for a in e.arts:
            self._by_artifact.setdefault(a, deque()).append(seq)

    def evict(self) -> None:
        """Drop entries beyond the count and older than the age (by append time)."""
        while len(self) > self.max_count:
            self._evict_one()
        cutoff = int((self.clock() - self.max_age_s) * 1000)
        while len(self):
            first = self._entries[self._head]
            assert first is not None
            if first.ms >= cutoff:
                break
            self._evict_one()
        if self._head > 1024 and self._head * 2 > len(self._entries):
            del self._entries[:self._head]
            self._seq0 += self._head
            self._head = 0

    def _evict_one(self) -> None:
        e = self._entries[self._head]
        assert e is not None
        self._entries[self._head] = None
        self._head += 1
        # the evicted entry is the oldest, so first in each of its deques
        for u in e.users:
            _pop_first(self._by_user, u)
        for a in e.arts:
            _pop_first(self._by_artifact, a)
        _pop_first(self._by_class, e.cls)

    # -- previewing -----------------------------------------------------------

    def _candidates(self, rule: Rule, user: str, ownership: Ownership,
                    passing: list[list[_Gen]]) -> Collection[int]:
        t = rule.tracking
        kind = t.kind
        if kind == "topics":
            topics = [topic for topic in self._topic_classes
                      if any(fnmatchcase(topic, p) for p in t.patterns)]
            classes = [c for topic in topics for c in self._topic_classes[topic]
                       if passing[c] and c in self._by_class]
            return self._union([self._by_class[c] for c in classes])
        keys: Iterable[Any]
        index: Mapping[Any, deque[int]]
        if kind == "artifacts-owned":
            index, keys = self._by_artifact, ownership.by_user.get(user, ())
        elif kind == "artifacts-group-owned":
            index = self._by_artifact
            keys = [a for g in dict.fromkeys(t.groups) for a in ownership.by_group.get(g, ())]
        elif kind == "artifacts-followed":
            index, keys = self._by_artifact, [(a.type, a.name) for a in t.artifacts]
        elif kind == "related-events":
            index, keys = self._by_user, (user,)
        elif kind == "users-followed":
            index, keys = self._by_user, t.usernames
        else:
            raise ValueError(f"unknown tracking kind {kind!r}")
        found = [d for k in dict.fromkeys(keys) if (d := index.get(k)) is not None]
        return self._union(found)

    @staticmethod
    def _union(seqs: list[deque[int]]) -> Collection[int]:
        if not seqs:
            return ()
        if len(seqs) == 1:
            return seqs[0]
        out: set[int] = set()
        for d in seqs:
            out.update(d)
        return out

    def _passing(self, gens: list[_Gen]) -> list[list[_Gen]]:
        """Per class, the generation rules whose class-level filters pass."""
        out = []
        for topic, app, app_lower, severity in self._class_keys:
            m = Message(id="", topic=topic, app_name=app, severity=severity)
            out.append([g for g in gens if g[0].passes(m, app_lower)])
        return out

    def preview(self, rule: Rule, user: str, ownership: Ownership | None = None,
                limit: int = 20, budget_ms: float | None = None) -> PreviewResult:
        """What ``rule`` of ``user`` would have matched in the window (module docstring).

        Candidates are walked newest first; with ``budget_ms``, the walk stops
        when the budget is spent and the result says it is not complete (a rule
        that reads every message's body, say ``topic *`` with a ``fields``
        filter, still answers in time, on the newest messages).
        """
        started = time.perf_counter()
        stop_at = None if budget_ms is None else started + budget_ms / 1000
        ownership = ownership or Ownership()
        passing = self._passing(_compile_gen(rule))
        entries, seq0 = self._entries, self._seq0
        matched: list[int] = []
        candidates = undecided = 0
        complete = True
        pool = self._candidates(rule, user, ownership, passing)
        total = len(pool)
        newest_first = reversed(pool) if isinstance(pool, deque) else sorted(pool, reverse=True)
        for seq in newest_first:
            # the clock at every candidate: one can cost thousands of substring searches
            # of its body (a fields filter of hundreds of values; milliseconds), so a
            # check every 512 ran 40 times over a 120 ms budget
            if stop_at is not None and candidates and time.perf_counter() > stop_at:
                complete = False
                break
            e = entries[seq - seq0]
            assert e is not None
            candidates += 1
            body: Any = None
            unknown = False
            for _filter, my_actions, fields, needles in passing[e.cls]:
                if not my_actions and e.agent == user:
                    continue
                if fields is not None:
                    raw = e.body
                    if raw is None:
                        unknown = True
                        continue
                    if not _may_pass(needles, raw):
                        continue
                    if body is None:
                        body = orjson.loads(raw)
                    if not _fields_pass(fields, body):
                        continue
                matched.append(seq)
                break
            else:
                undecided += unknown
        recent = heapq.nlargest(limit, matched) if limit > 0 else []
        shown = []
        for seq in recent:
            e = entries[seq - seq0]
            assert e is not None
            topic, app, _low, severity = self._class_keys[e.cls]
            shown.append(PreviewMatch(e.id, topic, app, e.summary, e.url, e.sent_at,
                                      SEVERITY_NAMES.get(severity, "INFO")))
        return PreviewResult(count=len(matched), matches=shown, window_size=len(self),
                             candidates=candidates, undecided=undecided,
                             elapsed_ms=(time.perf_counter() - started) * 1000,
                             complete=complete, total_candidates=total)

    def message_ids(self) -> list[str]:
        """The ids of the window's messages, oldest first (for tests and tools)."""
        return [e.id for e in self._entries[self._head:] if e is not None]


class WindowPreview:
    """A preview index kept current from a store, for a long-lived web API process.

    :meth:`preview` first refreshes the index when the last refresh is older
    than ``refresh_interval`` seconds (one store round trip when nothing is new).
    """

    def __init__(self, store: WindowStore, refresh_interval: float = 2.0,
                 index: PreviewIndex | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.index = index or PreviewIndex()
        self.refresh_interval = refresh_interval
        self.monotonic = monotonic
        self._next = 0.0

    def refresh(self) -> None:
        self.index.refresh(self.store)
        self._next = self.monotonic() + self.refresh_interval

    def preview(self, rule: Rule, user: str, ownership: Ownership | None = None,
                limit: int = 20, budget_ms: float | None = DEFAULT_BUDGET_MS) -> PreviewResult:
        if self.monotonic() >= self._next:
            self.refresh()
        return self.index.preview(rule, user, ownership, limit, budget_ms)
