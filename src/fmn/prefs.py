"""Preferences: users, destinations, rules and ownership (spec sections 2 and 4).

These frozen value types are what the matcher, the snapshot builder, the
database layer and the CLI pass around.  :func:`parse_document` turns a
preferences export (spec section 4) into a :class:`Preferences`, refusing an
invalid document with an :class:`InvalidPreferences` that names the offending
user, rule and field; :func:`dump_document` is its exact inverse.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from fmn.message import ARTIFACT_TYPES, SEVERITIES

DOCUMENT_VERSION = 1
PROTOCOLS: tuple[str, ...] = ("email", "irc", "matrix", "sse")
TRACKING_KINDS: tuple[str, ...] = (
    "artifacts-owned",
    "artifacts-group-owned",
    "artifacts-followed",
    "related-events",
    "users-followed",
    "topics",
)
FILTER_NAMES: tuple[str, ...] = (
    "applications",
    "excluded_applications",
    "severities",
    "topic",
    "my_actions",
    "fields",
)
# One rule for every string a preference holds (names, addresses, ids, globs,
# filter paths, the keys and strings of a filter's JSON values): no C0 or C1
# controls, DEL, Unicode line and paragraph separators (nothing that can end a
# mail header or an IRC line), no lone surrogates (no UTF-8 encodes them, so the
# snapshot cannot hold them) and no non-characters U+FFFE/U+FFFF (which SQS
# refuses to carry).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff\ufffe\uffff]")
#: The same rule as a JSON Schema pattern (surrogates cannot be written there).
TEXT_PATTERN = "^[^\\x00-\\x1f\\x7f-\\x9f\\u2028\\u2029\\ufffe\\uffff]*$"
# Up to 32 dotted parts, none of them empty.
_FIELD_PATH = re.compile("[^.]{1,256}(?:\\.[^.]{1,256}){0,31}")
FIELD_PATH_PATTERN = ("^[^.\\x00-\\x1f\\x7f-\\x9f\\u2028\\u2029\\ufffe\\uffff]{1,256}"
                      "(\\.[^.\\x00-\\x1f\\x7f-\\x9f\\u2028\\u2029\\ufffe\\uffff]{1,256})"
                      "{0,31}$")
#: The deepest JSON value a ``fields`` filter may list.
MAX_JSON_DEPTH = 32
_INT64 = (-(2**63), 2**63 - 1)

# Limits (docs/web-api.md lists them): each bounds what one user can make the
# snapshot, the matcher, the preview and the stats carry.
#: The longest string (name, address, id, glob, filter path or value).
MAX_STRING_CHARS = 512
#: The most items of one list (groups, people, artifacts, topic globs, applications,
#: destinations of a generation rule, a filter's values, any list inside them), and
#: the most keys of one object (a ``fields`` filter, an object among its values).
MAX_LIST_ITEMS = 200
#: The most generation rules in one rule.
MAX_GENERATION_RULES = 20
#: The largest rule, as compact JSON.
MAX_RULE_BYTES = 64 * 1024
#: The most destinations and rules of one user, and the largest user as compact JSON.
MAX_DESTINATIONS = 20
MAX_RULES = 100
MAX_USER_BYTES = 512 * 1024
#: Upper bounds of a digest: a week, and ten thousand notifications.
MAX_DIGEST_INTERVAL_S = 7 * 24 * 3600
MAX_DIGEST_COUNT = 10_000


class InvalidPreferences(ValueError):
    """A preferences document that does not follow the spec.

    ``where`` locates the problem (``users[3] (alice) > rules[0] (r1) >
    tracking.params.groups``) and ``reason`` says what is wrong with it.
    """

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}" if where else reason)
        self.where = where
        self.reason = reason


# --------------------------------------------------------------------------
# value types


@dataclass(frozen=True, slots=True)
class Digest:
    interval_s: int
    max_count: int


@dataclass(frozen=True, slots=True)
class Destination:
    id: str
    protocol: str
    address: str | None
    verified: bool
    digest: Digest | None = None

    def address_for(self, user: str) -> str:
        """The address printed in a notification (the user's name for ``sse``)."""
        if self.protocol == "sse" or self.address is None:
            return user
        return self.address


@dataclass(frozen=True, slots=True)
class Artifact:
    type: str
    name: str


@dataclass(frozen=True, slots=True)
class Tracking:
    """What a rule follows.  Only the params of ``kind`` are non-empty."""

    kind: str
    groups: tuple[str, ...] = ()
    artifacts: tuple[Artifact, ...] = ()
    usernames: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Filters:
    """A generation rule's filters; ``None`` means the filter is absent."""

    applications: tuple[str, ...] | None = None
    excluded_applications: tuple[str, ...] | None = None
    severities: tuple[str, ...] | None = None
    topic: str | None = None
    my_actions: bool | None = None
    #: (dotted path, allowed JSON values) pairs, in document order.
    fields: tuple[tuple[str, tuple[Any, ...]], ...] | None = None


@dataclass(frozen=True, slots=True)
class GenerationRule:
    filters: Filters
    destinations: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    name: str
    enabled: bool
    tracking: Tracking
    generation_rules: tuple[GenerationRule, ...]


@dataclass(frozen=True, slots=True)
class User:
    name: str
    enabled: bool
    destinations: tuple[Destination, ...] = ()
    rules: tuple[Rule, ...] = ()

    def destination(self, dest_id: str) -> Destination | None:
        for dest in self.destinations:
            if dest.id == dest_id:
                return dest
        return None


@dataclass(frozen=True, slots=True)
class Owners:
    """Who owns an artifact: users directly, and groups."""

    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Preferences:
    users: tuple[User, ...] = ()
    #: artifact type -> artifact name -> owners
    owners: Mapping[str, Mapping[str, Owners]] = field(
        default_factory=lambda: {t: {} for t in ARTIFACT_TYPES}
    )
    #: group name -> member user names
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def user(self, name: str) -> User | None:
        for user in self.users:
            if user.name == name:
                return user
        return None


# --------------------------------------------------------------------------
# parsing


def _where(*parts: str) -> str:
    return " > ".join(p for p in parts if p)


def _check_keys(obj: Mapping[str, Any], where: str, required: Sequence[str],
                optional: Sequence[str] = ()) -> None:
    missing = [k for k in required if k not in obj]
    if missing:
        raise InvalidPreferences(where, f"missing field {missing[0]!r}")
    unknown = sorted(set(obj) - set(required) - set(optional))
    if unknown:
        raise InvalidPreferences(where, f"unknown field {unknown[0]!r}")


def _obj(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidPreferences(where, f"must be an object, not {type(value).__name__}")
    return value


def _list(value: Any, where: str, limit: int | None = MAX_LIST_ITEMS,
          what: str = "items per list") -> list[Any]:
    if not isinstance(value, list):
        raise InvalidPreferences(where, f"must be a list, not {type(value).__name__}")
    if limit is not None and len(value) > limit:
        raise InvalidPreferences(where, f"has {len(value)} items; the limit is {limit} {what}")
    return value


def _text(value: str, where: str) -> str:
    """The rule every string of a preference follows, empty or not (see ``_CONTROL``)."""
    if len(value) > MAX_STRING_CHARS:
        raise InvalidPreferences(where, f"is {len(value)} characters long; the limit is "
                                        f"{MAX_STRING_CHARS} characters per string")
    # Names, addresses and ids end up in mail headers, IRC lines and web
    # pages (and the snapshot joins them with NUL): no control characters.
    bad = _CONTROL.search(value)
    if bad:
        what = ("a lone surrogate (not Unicode text)" if "\ud800" <= bad.group() <= "\udfff"
                else f"{bad.group()!r}")
        raise InvalidPreferences(where, f"must not contain control characters, lone "
                                        f"surrogates or U+FFFE/U+FFFF (found {what} at "
                                        f"{bad.start()})")
    return value


def _str(value: Any, where: str) -> str:
    """A name, address, id or glob: a string following :func:`_text`, not blank."""
    if not isinstance(value, str):
        raise InvalidPreferences(where, f"must be a string, not {type(value).__name__}")
    _text(value, where)
    if not value.strip():
        raise InvalidPreferences(where, "must not be empty or blank")
    return value


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidPreferences(where, f"must be true or false, not {value!r}")
    return value


def _str_list(value: Any, where: str, *, allowed: Sequence[str] | None = None,
              limit: int | None = MAX_LIST_ITEMS) -> tuple[str, ...]:
    items = _list(value, where, limit)
    out = []
    for i, item in enumerate(items):
        s = _str(item, f"{where}[{i}]")
        if allowed is not None and s not in allowed:
            raise InvalidPreferences(f"{where}[{i}]", f"{s!r} is not one of {', '.join(allowed)}")
        out.append(s)
    return tuple(out)


def _positive_int(value: Any, where: str, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= maximum:
        raise InvalidPreferences(where, f"must be an integer from 1 to {maximum}, not {value!r}")
    return value


def _json_value(value: Any, where: str, depth: int = 0) -> Any:
    """A JSON value a filter may compare with: finite numbers, 64-bit integers,
    valid Unicode, bounded depth (the snapshot must encode it exactly)."""
    if depth > MAX_JSON_DEPTH:
        raise InvalidPreferences(where, f"is nested deeper than {MAX_JSON_DEPTH} levels")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not _INT64[0] <= value <= _INT64[1]:
            raise InvalidPreferences(where, f"integer {value} is outside the 64-bit range")
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise InvalidPreferences(where, f"{value!r} is not a JSON number")
        return value
    if isinstance(value, str):
        return _text(value, where)
    if isinstance(value, list):
        return [_json_value(v, f"{where}[{i}]", depth + 1)
                for i, v in enumerate(_list(value, where))]
    if isinstance(value, Mapping):
        if len(value) > MAX_LIST_ITEMS:
            raise InvalidPreferences(where, f"has {len(value)} keys; the limit is "
                                            f"{MAX_LIST_ITEMS} keys per object")
        for k in value:
            if not isinstance(k, str):
                raise InvalidPreferences(where, f"object key {k!r} is not a string")
            _text(k, f"{where}[{_key(k)}]")
        return {k: _json_value(v, f"{where}[{_key(k)}]", depth + 1) for k, v in value.items()}
    raise InvalidPreferences(where, f"{type(value).__name__} is not a JSON value")


def _key(key: str) -> str:
    """An object key as a location: quoted, and printable whatever it holds."""
    return ascii(key) if _CONTROL.search(key) else repr(key)


def parse_destination(data: Any, where: str) -> Destination:
    d = _obj(data, where)
    _check_keys(d, where, ("id", "protocol", "verified"), ("address", "digest"))
    dest_id = _str(d["id"], _where(where, "id"))
    where = f"{where} ({dest_id})"
    protocol = _str(d["protocol"], _where(where, "protocol"))
    if protocol not in PROTOCOLS:
        raise InvalidPreferences(_where(where, "protocol"),
                                 f"{protocol!r} is not one of {', '.join(PROTOCOLS)}")
    address = d.get("address")
    if protocol == "sse":
        if address is not None:
            address = _str(address, _where(where, "address"))
    else:
        address = _str(address, _where(where, "address"))
    digest = None
    if d.get("digest") is not None:
        dg = _obj(d["digest"], _where(where, "digest"))
        _check_keys(dg, _where(where, "digest"), ("interval_s", "max_count"))
        digest = Digest(
            interval_s=_positive_int(dg["interval_s"], _where(where, "digest.interval_s"),
                                     MAX_DIGEST_INTERVAL_S),
            max_count=_positive_int(dg["max_count"], _where(where, "digest.max_count"),
                                    MAX_DIGEST_COUNT),
        )
    return Destination(id=dest_id, protocol=protocol, address=address,
                       verified=_bool(d["verified"], _where(where, "verified")), digest=digest)


def parse_tracking(data: Any, where: str) -> Tracking:
    t = _obj(data, where)
    _check_keys(t, where, ("kind",), ("params",))
    kind = _str(t["kind"], _where(where, "kind"))
    if kind not in TRACKING_KINDS:
        raise InvalidPreferences(_where(where, "kind"),
                                 f"{kind!r} is not one of {', '.join(TRACKING_KINDS)}")
    params = _obj(t.get("params", {}), _where(where, "params"))
    pw = _where(where, "params")
    if kind in ("artifacts-owned", "related-events"):
        _check_keys(params, pw, ())
        return Tracking(kind=kind)
    if kind == "artifacts-group-owned":
        _check_keys(params, pw, ("groups",))
        return Tracking(kind=kind, groups=_nonempty(_str_list(params["groups"], f"{pw}.groups"),
                                                    f"{pw}.groups"))
    if kind == "users-followed":
        _check_keys(params, pw, ("usernames",))
        return Tracking(kind=kind, usernames=_nonempty(
            _str_list(params["usernames"], f"{pw}.usernames"), f"{pw}.usernames"))
    if kind == "topics":
        _check_keys(params, pw, ("patterns",))
        return Tracking(kind=kind, patterns=_nonempty(
            _str_list(params["patterns"], f"{pw}.patterns"), f"{pw}.patterns"))
    # artifacts-followed
    _check_keys(params, pw, ("artifacts",))
    arts = []
    for i, a in enumerate(_list(params["artifacts"], f"{pw}.artifacts")):
        aw = f"{pw}.artifacts[{i}]"
        ao = _obj(a, aw)
        _check_keys(ao, aw, ("type", "name"))
        atype = _str(ao["type"], f"{aw}.type")
        if atype not in ARTIFACT_TYPES:
            raise InvalidPreferences(f"{aw}.type",
                                     f"{atype!r} is not one of {', '.join(ARTIFACT_TYPES)}")
        arts.append(Artifact(type=atype, name=_str(ao["name"], f"{aw}.name")))
    return Tracking(kind=kind, artifacts=_nonempty(tuple(arts), f"{pw}.artifacts"))


def _nonempty(items: tuple[Any, ...], where: str) -> tuple[Any, ...]:
    if not items:
        raise InvalidPreferences(where, "must not be empty")
    return items


def parse_filters(data: Any, where: str) -> Filters:
    f = _obj(data, where)
    _check_keys(f, where, (), FILTER_NAMES)
    kwargs: dict[str, Any] = {}
    for name in ("applications", "excluded_applications"):
        if name in f:
            kwargs[name] = _str_list(f[name], f"{where}.{name}")
    if "severities" in f:
        kwargs["severities"] = _str_list(f["severities"], f"{where}.severities",
                                         allowed=tuple(SEVERITIES))
    if "topic" in f:
        kwargs["topic"] = _str(f["topic"], f"{where}.topic")
    if "my_actions" in f:
        kwargs["my_actions"] = _bool(f["my_actions"], f"{where}.my_actions")
    if "fields" in f:
        fields = _obj(f["fields"], f"{where}.fields")
        if len(fields) > MAX_LIST_ITEMS:
            raise InvalidPreferences(f"{where}.fields", f"has {len(fields)} paths; the limit "
                                                        f"is {MAX_LIST_ITEMS} keys per object")
        pairs = []
        for path, values in fields.items():
            if not isinstance(path, str):
                raise InvalidPreferences(f"{where}.fields", f"key {path!r} is not a string")
            pw = f"{where}.fields[{_key(path)}]"
            _text(path, pw)
            if not _FIELD_PATH.fullmatch(path):
                raise InvalidPreferences(pw, "must be a dotted path such as 'update.status' "
                                             "(at most 32 parts of 256 characters)")
            pairs.append((path, tuple(_json_value(v, f"{pw}[{i}]")
                                      for i, v in enumerate(_list(values, pw)))))
        kwargs["fields"] = tuple(pairs)
    return Filters(**kwargs)


def parse_rule(data: Any, where: str, dest_ids: set[str]) -> Rule:
    r = _obj(data, where)
    _check_keys(r, where, ("id", "name", "enabled", "tracking", "generation_rules"))
    rule_id = _str(r["id"], _where(where, "id"))
    where = f"{where} ({rule_id})"
    gens = []
    glist = _list(r["generation_rules"], _where(where, "generation_rules"),
                  MAX_GENERATION_RULES, "generation rules per rule")
    if not glist:
        raise InvalidPreferences(_where(where, "generation_rules"), "must not be empty")
    for i, g in enumerate(glist):
        gw = _where(where, f"generation_rules[{i}]")
        go = _obj(g, gw)
        _check_keys(go, gw, ("filters", "destinations"))
        dests = _str_list(go["destinations"], f"{gw}.destinations")
        for j, dest in enumerate(dests):
            if dest not in dest_ids:
                raise InvalidPreferences(f"{gw}.destinations[{j}]",
                                         f"{dest!r} is not one of this user's destinations")
        # a set (spec section 2): each listed once, or each copy was a row of its own
        # that every save of the user deleted and wrote again
        gens.append(GenerationRule(filters=parse_filters(go["filters"], f"{gw}.filters"),
                                   destinations=tuple(dict.fromkeys(dests))))
    rule = Rule(
        id=rule_id,
        name=_str(r["name"], _where(where, "name")),
        enabled=_bool(r["enabled"], _where(where, "enabled")),
        tracking=parse_tracking(r["tracking"], _where(where, "tracking")),
        generation_rules=tuple(gens),
    )
    size = len(orjson.dumps(dump_rule(rule)))
    if size > MAX_RULE_BYTES:
        raise InvalidPreferences(where, f"is {size} bytes as JSON; the limit is "
                                        f"{MAX_RULE_BYTES} bytes per rule")
    return rule


def parse_user(data: Any, where: str) -> User:
    u = _obj(data, where)
    _check_keys(u, where, ("name", "enabled"), ("destinations", "rules"))
    name = _str(u["name"], _where(where, "name"))
    where = f"{where} ({name})"
    dests: list[Destination] = []
    seen: set[str] = set()
    for i, d in enumerate(_list(u.get("destinations", []), _where(where, "destinations"),
                                MAX_DESTINATIONS, "destinations per user")):
        dest = parse_destination(d, _where(where, f"destinations[{i}]"))
        if dest.id in seen:
            raise InvalidPreferences(_where(where, f"destinations[{i}]"),
                                     f"duplicate destination id {dest.id!r}")
        seen.add(dest.id)
        dests.append(dest)
    rules: list[Rule] = []
    rule_ids: set[str] = set()
    for i, r in enumerate(_list(u.get("rules", []), _where(where, "rules"), MAX_RULES,
                                "rules per user")):
        rule = parse_rule(r, _where(where, f"rules[{i}]"), seen)
        if rule.id in rule_ids:
            raise InvalidPreferences(_where(where, f"rules[{i}]"), f"duplicate rule id {rule.id!r}")
        rule_ids.add(rule.id)
        rules.append(rule)
    user = User(name=name, enabled=_bool(u["enabled"], _where(where, "enabled")),
                destinations=tuple(dests), rules=tuple(rules))
    size = len(orjson.dumps(dump_user(user)))
    if size > MAX_USER_BYTES:
        raise InvalidPreferences(where, f"is {size} bytes as JSON; the limit is "
                                        f"{MAX_USER_BYTES} bytes per user")
    return user


def parse_owners(data: Any, where: str = "owners") -> dict[str, dict[str, Owners]]:
    o = _obj(data, where)
    _check_keys(o, where, (), ARTIFACT_TYPES)
    out: dict[str, dict[str, Owners]] = {}
    for atype in ARTIFACT_TYPES:
        tw = f"{where}.{atype}"
        table = _obj(o.get(atype, {}), tw)
        entries: dict[str, Owners] = {}
        for name, own in table.items():
            ow = f"{tw}[{_key(name)}]"
            _str(name, ow)
            own_o = _obj(own, ow)
            _check_keys(own_o, ow, (), ("users", "groups"))
            entries[name] = Owners(
                users=_str_list(own_o.get("users", []), f"{ow}.users", limit=None),
                groups=_str_list(own_o.get("groups", []), f"{ow}.groups", limit=None))
        out[atype] = entries
    return out


def parse_groups(data: Any, where: str = "groups") -> dict[str, tuple[str, ...]]:
    g = _obj(data, where)
    return {_str(name, f"{where}[{_key(name)}]"): _str_list(members, f"{where}[{_key(name)}]",
                                                            limit=None)
            for name, members in g.items()}


def parse_document(data: Any) -> Preferences:
    """Validate a preferences export and build the value types.

    Raises :class:`InvalidPreferences` naming the offending user, rule and field.
    """
    doc = _obj(data, "document")
    _check_keys(doc, "document", ("version", "users"), ("owners", "groups"))
    if type(doc["version"]) is not int or doc["version"] != DOCUMENT_VERSION:
        raise InvalidPreferences("version", f"unsupported version {doc['version']!r}, "
                                            f"expected {DOCUMENT_VERSION}")
    users: list[User] = []
    names: set[str] = set()
    for i, u in enumerate(_list(doc["users"], "users", limit=None)):
        user = parse_user(u, f"users[{i}]")
        if user.name in names:
            raise InvalidPreferences(f"users[{i}]", f"duplicate user name {user.name!r}")
        names.add(user.name)
        users.append(user)
    return Preferences(
        users=tuple(users),
        owners=parse_owners(doc.get("owners", {})),
        groups=parse_groups(doc.get("groups", {})),
    )


# --------------------------------------------------------------------------
# dumping


def dump_destination(d: Destination) -> dict[str, Any]:
    return {
        "id": d.id,
        "protocol": d.protocol,
        "address": d.address,
        "verified": d.verified,
        "digest": None if d.digest is None
        else {"interval_s": d.digest.interval_s, "max_count": d.digest.max_count},
    }


def dump_tracking(t: Tracking) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if t.kind == "artifacts-group-owned":
        params["groups"] = list(t.groups)
    elif t.kind == "artifacts-followed":
        params["artifacts"] = [{"type": a.type, "name": a.name} for a in t.artifacts]
    elif t.kind == "users-followed":
        params["usernames"] = list(t.usernames)
    elif t.kind == "topics":
        params["patterns"] = list(t.patterns)
    return {"kind": t.kind, "params": params}


def dump_filters(f: Filters) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if f.applications is not None:
        out["applications"] = list(f.applications)
    if f.excluded_applications is not None:
        out["excluded_applications"] = list(f.excluded_applications)
    if f.severities is not None:
        out["severities"] = list(f.severities)
    if f.topic is not None:
        out["topic"] = f.topic
    if f.my_actions is not None:
        out["my_actions"] = f.my_actions
    if f.fields is not None:
        out["fields"] = {path: list(values) for path, values in f.fields}
    return out


def dump_rule(r: Rule) -> dict[str, Any]:
    return {
        "id": r.id,
        "name": r.name,
        "enabled": r.enabled,
        "tracking": dump_tracking(r.tracking),
        "generation_rules": [
            {"filters": dump_filters(g.filters), "destinations": list(g.destinations)}
            for g in r.generation_rules
        ],
    }


def dump_user(u: User) -> dict[str, Any]:
    return {
        "name": u.name,
        "enabled": u.enabled,
        "destinations": [dump_destination(d) for d in u.destinations],
        "rules": [dump_rule(r) for r in u.rules],
    }


def dump_document(prefs: Preferences) -> dict[str, Any]:
    """The preferences export (spec section 4); the inverse of :func:`parse_document`."""
    return {
        "version": DOCUMENT_VERSION,
        "users": [dump_user(u) for u in prefs.users],
        "owners": {
            atype: {
                name: {"users": list(o.users), "groups": list(o.groups)}
                for name, o in prefs.owners.get(atype, {}).items()
            }
            for atype in ARTIFACT_TYPES
        },
        "groups": {name: list(members) for name, members in prefs.groups.items()},
    }
